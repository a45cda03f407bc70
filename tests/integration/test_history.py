"""``GET /vx11/spawns``, the spawn history, against a real Redis and a SQLite ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from tests import support
from tests.support import api_page
from vx11.core.ledger import Ledger
from vx11.core.states import SpawnStatus

SPAWN = {"task_type": "python", "code": "print(1)", "ttl_seconds": 30}
HEAVY = {"code", "stdin", "stdout", "stderr", "processes", "files", "encoding"}
"""A page leaves out what only one spawn's read gives: the heavy fields, its live
processes, and how its output is encoded."""


@pytest.fixture
def window(client, auth):
    response = client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    assert response.status_code == 200


@pytest.fixture
def ledger(app) -> Ledger:
    return app.extensions["vx11"].ledger


def post_spawn(client, auth, **fields) -> dict:
    response = client.post("/vx11/spawn", json={**SPAWN, **fields}, headers=auth)
    assert response.status_code == 200 and response.json["status"] == "QUEUED", response.json
    return response.json


def history(client, auth, query: str = "", status: int = 200) -> dict:
    return api_page(client, auth, "/vx11/spawns", query, status)


def ids(page: dict) -> list[str]:
    return [record["spawn_id"] for record in page["spawns"]]


def every_page(client, auth, query: str = "", between=None) -> list[str]:
    """The spawn ids of every page, following ``next_cursor``."""
    return support.every_page(client, auth, "/vx11/spawns", ids, query, between)


def test_the_history_requires_a_token(client):
    assert client.get("/vx11/spawns").status_code == 401
    forbidden = client.get("/vx11/spawns", headers={"X-VX11-Token": "not-a-token"})
    assert forbidden.status_code == 401


def test_an_empty_history_is_one_empty_page(client, auth):
    assert history(client, auth) == {"spawns": [], "next_cursor": None}


@pytest.mark.usefixtures("window")
def test_the_history_lists_spawns_newest_first_without_code_stdin_or_output(client, auth, ledger):
    first = post_spawn(client, auth, stdin="secret input", correlation_id="job-1")
    second = post_spawn(client, auth, task_type="shell", code="echo hi")
    ledger.transition(first["spawn_uuid"], SpawnStatus.RUNNING)
    ledger.transition(first["spawn_uuid"], SpawnStatus.DONE, exit_code=0, stdout="1\n")
    page = history(client, auth)
    assert ids(page) == [second["spawn_id"], first["spawn_id"]]
    assert page["next_cursor"] is None
    done = page["spawns"][1]
    assert not HEAVY & set(done)
    full = client.get(f"/vx11/spawn/{first['spawn_id']}", headers=auth).json
    assert done == {key: value for key, value in full.items() if key not in HEAVY}
    assert (done["status"], done["exit_code"], done["correlation_id"]) == ("DONE", 0, "job-1")
    assert done["created_at"].endswith("Z")


@pytest.mark.usefixtures("window")
def test_following_next_cursor_is_stable_while_new_spawns_arrive(client, auth):
    before = [post_spawn(client, auth)["spawn_id"] for _ in range(7)]
    arrived: list[str] = []

    def more_arrive():
        arrived.extend(post_spawn(client, auth)["spawn_id"] for _ in range(2))

    assert every_page(client, auth, "limit=3", between=more_arrive) == before[::-1]
    assert arrived  # spawns did arrive between pages
    assert every_page(client, auth, "limit=4") == (before + arrived)[::-1]


@pytest.mark.usefixtures("window")
def test_each_filter_narrows_the_history(client, auth, ledger):
    python = post_spawn(client, auth, correlation_id="ticket-7")["spawn_id"]
    shell = post_spawn(client, auth, task_type="shell", code="true")["spawn_id"]
    failed = post_spawn(client, auth, task_type="shell", code="false", correlation_id="ticket-7")
    ledger.transition(failed["spawn_uuid"], SpawnStatus.RUNNING)
    ledger.transition(failed["spawn_uuid"], SpawnStatus.FAILED, exit_code=1)
    failed = failed["spawn_id"]
    cases = {
        "status=QUEUED": [shell, python],
        "status=FAILED": [failed],
        "status=RUNNING": [],
        "status=QUEUED&status=FAILED": [failed, shell, python],
        "status=QUEUED,FAILED": [failed, shell, python],
        "task_type=shell": [failed, shell],
        "task_type=python": [python],
        "correlation_id=ticket-7": [failed, python],
        "correlation_id=ticket-7&task_type=shell&status=FAILED": [failed],
        "correlation_id=nobody": [],
    }
    for query, expected in cases.items():
        assert every_page(client, auth, f"{query}&limit=1") == expected, query


def test_since_and_until_bound_the_history_in_utc(client, auth, ledger):
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    made = {}
    for minutes in range(4):
        spawn_id = ledger.add({**SPAWN})["spawn_id"]
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE spawns SET created_at = ? WHERE spawn_id = ?",
                ((t0 + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S.%f"), spawn_id),
            )
        made[minutes] = spawn_id
    cases = {
        "since=2026-03-01T12:01:00Z": [made[3], made[2], made[1]],  # inclusive
        "until=2026-03-01T12:02:00Z": [made[1], made[0]],  # exclusive
        "since=2026-03-01T12:01:00&until=2026-03-01T12:03:00": [made[2], made[1]],  # naive: UTC
        "since=2026-03-01T13:02:00%2B01:00": [made[3], made[2]],  # an offset, + encoded
        "since=2026-03-01 12:03:00": [made[3]],
        "until=2026-03-01": [],
    }
    for query, expected in cases.items():
        assert every_page(client, auth, f"{query}&limit=1") == expected, query


def test_the_page_size_defaults_to_50_and_stops_at_200(client, auth, ledger):
    for _ in range(201):
        ledger.add({**SPAWN})
    first = history(client, auth)
    assert len(first["spawns"]) == 50 and first["next_cursor"]
    largest = history(client, auth, "limit=200")
    assert len(largest["spawns"]) == 200 and largest["next_cursor"]
    rest = history(client, auth, f"limit=200&cursor={largest['next_cursor']}")
    assert len(rest["spawns"]) == 1 and rest["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=5&limit=6", "limit"),
        ("status=finished", "status"),
        ("status=DONE,", "status"),
        ("status=", "status"),
        ("task_type=ruby", "task_type"),
        ("correlation_id=a%0D%0Ab", "correlation_id"),
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("since=2026-03-01T12:00:00 01:00", "since"),  # an unencoded + arrives as a space
        ("since=2026-03-02&until=2026-03-01", "until"),
        ("since=2026-03-01&until=2026-03-01", "until"),
        ("since=0001-01-01T00:00:00%2B01:00", "since"),
    ],
)
def test_a_bad_query_is_422_naming_the_parameter(client, auth, query, field):
    body = history(client, auth, query, status=422)
    assert body["error"] == "validation_error"
    assert field in body["fields"], body


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "",
        "W10",  # []
        "eyJhIjoxfQ",  # {"a":1}
        "WyIyMDI2LTAzLTAxVDEyOjAwOjAwKzAwOjAwIiwieCJd",  # a time and "x"
        # 0001-01-01T00:00:00+01:00 and a uuid: before the first instant once in UTC
        "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzAxOjAwIiwiM2YxYzAwMDAtMDAwMC00MDAwLTgwMDAtMDAwMDAwMDAwMDAwIl0",
        "!" * 80,
    ],
)
def test_a_cursor_the_server_did_not_hand_out_is_400(client, auth, cursor):
    body = history(client, auth, f"cursor={quote(cursor)}", status=400)
    assert body["error"] == "bad_cursor"


def test_a_tampered_cursor_is_400(client, auth, ledger):
    for _ in range(3):
        ledger.add({**SPAWN})
    cursor = history(client, auth, "limit=1")["next_cursor"]
    for tampered in (cursor[:-2], cursor[:10] + "*" + cursor[11:], cursor + "AAAA", cursor * 2):
        assert history(client, auth, f"cursor={quote(tampered)}", 400)["error"] == "bad_cursor"
