"""The audit log: every policy decision written with who, from where and why, paged by
``GET /vx11/audit``, windows that run out recorded once by the workers' sweeper, and
``vx11 purge``. Real Redis; the ledger on SQLite, and on PostgreSQL when
VX11_TEST_DATABASE_URL is set."""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import pytest
import redis
import sqlalchemy.exc
from click.testing import CliRunner
from sqlalchemy import func, insert, inspect, select, update

from tests import support
from tests.support import api_page, free_port, wait_for
from vx11 import create_app
from vx11.cli import main
from vx11.core.audit import (
    AuditEntry,
    AuditEvent,
    AuditFilter,
    AuditLog,
    audit,
    page_query,
)
from vx11.core.ledger import Ledger, make_engine
from vx11.core.ledger.schema import spawns
from vx11.core.policy import OPEN_WINDOWS_KEY, OpenWindows
from vx11.core.states import SpawnStatus
from vx11.core.tokens import TokenStore
from workers import sweeper

SPAWN = {"task_type": "python", "code": "print(1)", "ttl_seconds": 30}
CLIENT_ADDR = "203.0.113.7"


@pytest.fixture
def test_config(test_config, database_url):
    return {**test_config, "database_url": database_url}


@pytest.fixture
def svc(app):
    svc = app.extensions["vx11"]
    yield svc
    svc.ledger.engine.dispose()


@pytest.fixture
def ops(redis_url) -> dict[str, str]:
    """The headers of a real token labelled ``ops``, which may also read the audit."""
    token, _ = TokenStore(redis.Redis.from_url(redis_url)).create(
        "ops", ["admin", "window", "spawn"]
    )
    return {"X-VX11-Token": token}


def call(client, method: str, path: str, headers, body=None):
    """A request from :data:`CLIENT_ADDR`."""
    environ = {"REMOTE_ADDR": CLIENT_ADDR}
    response = getattr(client, method)(path, json=body, headers=headers, environ_base=environ)
    return response


def entries(client, auth, query: str = "", status: int = 200) -> dict:
    return api_page(client, auth, "/vx11/audit", query, status)


def events(page: dict) -> list[str]:
    return [entry["event"] for entry in page["entries"]]


# --- every decision is written ---------------------------------------------------------------


def test_the_audit_requires_a_token(client):
    assert client.get("/vx11/audit").status_code == 401
    forbidden = client.get("/vx11/audit", headers={"X-VX11-Token": "not-a-token"})
    assert forbidden.status_code == 401


def test_the_ledgers_schema_includes_the_audit_table(svc):
    with svc.ledger.engine.connect() as conn:
        schema = conn.schema_for_object(audit)
        indexes = {ix["name"] for ix in inspect(conn).get_indexes("audit", schema)}
    assert indexes == {index.name for index in audit.indexes}


def test_opening_and_closing_a_window_records_who_from_where_and_why(client, ops):
    body = {"target": "spawner", "ttl_seconds": 120, "reason": "deploy 42"}
    opened = call(client, "post", "/vx11/window/open", ops, body).json
    body = {"target": "spawner", "reason": "deploy done"}
    assert call(client, "post", "/vx11/window/close", ops, body).json["was_open"] is True

    closed, opening = entries(client, ops)["entries"]
    assert opening["event"] == "window_opened"
    assert opening["target"] == "spawner"
    assert opening["window_id"] == opened["window_id"]
    assert (opening["token_label"], opening["remote_addr"]) == ("ops", CLIENT_ADDR)
    assert opening["token_id"] is not None and len(opening["token_id"]) == 12
    by_id = entries(client, ops, f"token_id={opening['token_id']}")["entries"]
    assert {e["event"] for e in by_id} == {"window_opened", "window_closed"}
    assert opening["reason"] == "deploy 42"
    assert opening["detail"] == {"ttl_seconds": 120, "expires_at": opened["expires_at"]}
    assert opening["at"].endswith("Z") and opening["spawn_id"] is None
    assert closed["event"] == "window_closed"
    assert closed["window_id"] == opened["window_id"]
    assert (closed["token_label"], closed["remote_addr"]) == ("ops", CLIENT_ADDR)
    assert closed["reason"] == "deploy done"
    assert closed["detail"] == {"was_open": True, "cancelled": []}


@pytest.mark.parametrize(("proxies", "recorded"), [(0, CLIENT_ADDR), (1, "198.51.100.9")])
def test_behind_a_trusted_proxy_the_client_address_is_recorded(
    test_config, auth, proxies, recorded, capsys
):
    """The gateway's peer is a proxy at CLIENT_ADDR that says whom it forwards for: with
    VX11_TRUSTED_PROXIES unset that header is not believed, with 1 it is."""
    client = create_app({**test_config, "trusted_proxies": proxies}).test_client()
    forwarded = {**auth, "X-Forwarded-For": "10.9.9.9, 198.51.100.9"}
    call(client, "post", "/vx11/window/open", forwarded, {"target": "hermes"})
    (entry,) = entries(client, auth)["entries"]
    assert entry["remote_addr"] == recorded
    access = [line for line in capsys.readouterr().err.splitlines() if "/window/open" in line]
    assert f"remote_addr={recorded}" in access[0]


def test_closing_a_window_that_is_not_open_is_recorded_too(client, auth):
    client.post("/vx11/window/close", json={"target": "hermes"}, headers=auth)
    (entry,) = entries(client, auth)["entries"]
    assert entry["event"] == "window_closed" and entry["target"] == "hermes"
    assert entry["window_id"] is None and entry["detail"]["was_open"] is False
    assert entry["token_label"] == "development"


def test_an_extended_window_is_recorded_as_such_and_tracked_once_with_its_new_end(
    client, auth, redis_url
):
    first = client.post("/vx11/window/open", json={"target": "switch"}, headers=auth).json
    body = {"target": "switch", "ttl_seconds": 900}
    second = client.post("/vx11/window/open", json=body, headers=auth).json
    latest = entries(client, auth, "limit=1")["entries"][0]
    assert (latest["event"], latest["window_id"]) == ("window_extended", first["window_id"])
    assert latest["detail"]["previous_expires_at"] == first["expires_at"]
    tracked = redis.Redis.from_url(redis_url).hgetall(OPEN_WINDOWS_KEY)
    assert list(tracked) == [first["window_id"].encode()]
    assert json.loads(tracked[first["window_id"].encode()])["expires_at"] == second["expires_at"]


def test_an_accepted_spawn_is_recorded_with_its_ids_and_who_asked(client, ops):
    window = call(client, "post", "/vx11/window/open", ops, {"target": "spawner"}).json
    spawn = {**SPAWN, "correlation_id": "job-7"}
    accepted = call(client, "post", "/vx11/spawn", ops, spawn).json
    (entry,) = entries(client, ops, "event=spawn_accepted")["entries"]
    assert entry["spawn_id"] == accepted["spawn_id"]
    assert entry["spawn_uuid"] == accepted["spawn_uuid"]
    assert entry["window_id"] == window["window_id"]
    assert entry["target"] == "spawner"
    assert (entry["token_label"], entry["remote_addr"]) == ("ops", CLIENT_ADDR)
    assert entry["detail"] == {"task_type": "python", "correlation_id": "job-7"}


def test_a_refused_spawn_is_recorded_off_by_policy_with_its_reason(client, ops):
    refused = call(client, "post", "/vx11/spawn", ops, SPAWN).json
    assert refused["error"] == "off_by_policy"
    (entry,) = entries(client, ops)["entries"]
    assert entry["event"] == "spawn_refused"
    assert entry["reason"] == refused["reason"]
    assert entry["detail"] == {"task_type": "python", "error": "off_by_policy"}
    assert (entry["token_label"], entry["remote_addr"]) == ("ops", CLIENT_ADDR)
    assert entry["spawn_id"] is None and entry["window_id"] is None


def test_a_cancel_is_recorded_once_and_a_repeated_one_not_again(client, ops):
    call(client, "post", "/vx11/window/open", ops, {"target": "spawner"})
    accepted = call(client, "post", "/vx11/spawn", ops, SPAWN).json
    path = f"/vx11/spawn/{accepted['spawn_id']}/cancel"
    assert call(client, "post", path, ops).json["status"] == "CANCELLED"
    assert call(client, "post", path, ops).json["status"] == "CANCELLED"
    (entry,) = entries(client, ops, "event=spawn_cancelled")["entries"]
    assert entry["spawn_uuid"] == accepted["spawn_uuid"]
    assert entry["reason"] == "cancel_requested"
    assert entry["detail"]["status_before"] == "QUEUED"
    assert (entry["token_label"], entry["remote_addr"]) == ("ops", CLIENT_ADDR)


def test_closing_with_cancel_running_records_each_cancel(client, ops, svc):
    window = call(client, "post", "/vx11/window/open", ops, {"target": "spawner"}).json
    running = call(client, "post", "/vx11/spawn", ops, SPAWN).json
    svc.ledger.transition(running["spawn_uuid"], SpawnStatus.RUNNING)
    body = {"target": "spawner", "cancel_running": True, "reason": "incident"}
    call(client, "post", "/vx11/window/close", ops, body)
    cancel, close = entries(client, ops, "event=window_closed,spawn_cancelled")["entries"]
    assert close["detail"] == {"was_open": True, "cancelled": [running["spawn_uuid"]]}
    assert cancel["event"] == "spawn_cancelled"
    assert (cancel["spawn_id"], cancel["spawn_uuid"]) == (
        running["spawn_id"],
        running["spawn_uuid"],
    )
    assert cancel["window_id"] == window["window_id"]
    assert cancel["reason"] == "window_closed"
    assert (cancel["token_label"], cancel["remote_addr"]) == ("ops", CLIENT_ADDR)


# --- an entry that cannot be written --------------------------------------------------------


@pytest.fixture
def audit_down(svc):
    """The audit log of ``svc`` on a database that refuses connections."""
    unreachable = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    svc.audit = AuditLog(make_engine(unreachable))


def test_a_spawn_whose_entry_cannot_be_written_is_503_and_never_published(
    client, auth, svc, redis_url
):
    client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    written = svc.audit.record

    def lost_database(*entries, conn=None):  # the entry's write fails inside the insert's
        written(*entries, conn=conn)
        raise sqlalchemy.exc.OperationalError("INSERT INTO audit", {}, Exception("gone"))

    svc.audit.record = lost_database
    try:
        response = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    finally:
        svc.audit.record = written
    assert response.status_code == 503
    assert response.json["error"] == "database_unavailable"
    assert redis.Redis.from_url(redis_url).llen("spawner") == 0
    assert svc.ledger.page().rows == []  # the spawn's record fell with its entry
    assert events(entries(client, auth)) == ["window_opened"]


@pytest.mark.usefixtures("audit_down")
def test_a_refusal_whose_entry_cannot_be_written_is_503(client, auth):
    response = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert response.status_code == 503
    assert response.json["error"] == "database_unavailable"


@pytest.mark.usefixtures("audit_down")
def test_a_window_change_whose_entry_cannot_be_written_is_503(client, auth):
    response = client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    assert response.status_code == 503
    assert response.json["error"] == "database_unavailable"
    # The window did open (Redis is changed first); opening again is harmless.
    assert client.get("/vx11/window/status/spawner", headers=auth).json["is_open"] is True


# --- GET /vx11/audit ------------------------------------------------------------------------


def record_at(audit_log: AuditLog, at: datetime, event=AuditEvent.WINDOW_OPENED, **fields) -> int:
    """An entry written at ``at``: its id."""
    row = {"event": AuditEvent(event).value, "target": "spawner", **fields, "at": at}
    with audit_log.engine.begin() as conn:
        return conn.execute(insert(audit), row).inserted_primary_key[0]


T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def every_page(client, auth, query: str, between=None) -> list[int]:
    """The entry ids of every page, following ``next_cursor``."""
    return support.every_page(client, auth, "/vx11/audit", entry_ids, query, between)


def entry_ids(page: dict) -> list[int]:
    return [entry["id"] for entry in page["entries"]]


def test_pages_run_newest_first_and_following_cursors_repeats_and_skips_nothing(client, auth, svc):
    written = []  # several entries share each instant: their ids order them
    for index in range(11):
        at = T0 + timedelta(seconds=index % 4)
        written.append((at, record_at(svc.audit, at)))
    newest_first = [entry_id for _at, entry_id in sorted(written, reverse=True)]

    def more_arrive():
        record_at(svc.audit, T0 + timedelta(days=1))

    assert every_page(client, auth, "limit=3", between=more_arrive) == newest_first


def test_an_empty_log_is_one_empty_page(client, auth):
    assert entries(client, auth) == {"entries": [], "next_cursor": None}


def test_each_filter_selects_only_its_entries(client, auth, svc):
    uuid_a = str(uuid.uuid4())
    opened = record_at(svc.audit, T0, token_label="ops", target="switch")
    refused = record_at(svc.audit, T0 + timedelta(seconds=1), AuditEvent.SPAWN_REFUSED)
    accepted = record_at(
        svc.audit,
        T0 + timedelta(seconds=2),
        AuditEvent.SPAWN_ACCEPTED,
        spawn_id=f"spawn-{uuid_a[:8]}",
        spawn_uuid=uuid_a,
        token_label="ci",
    )
    cancelled = record_at(
        svc.audit, T0 + timedelta(seconds=3), AuditEvent.SPAWN_CANCELLED, spawn_uuid=uuid_a
    )

    def ids(query):
        return [entry["id"] for entry in entries(client, auth, query)["entries"]]

    assert ids("event=spawn_refused") == [refused]
    assert ids("event=spawn_refused,window_opened") == [refused, opened]
    assert ids("event=spawn_refused&event=spawn_accepted") == [accepted, refused]
    assert ids("target=switch") == [opened]
    assert ids("token_label=ci") == [accepted]
    assert ids(f"spawn_id=spawn-{uuid_a[:8]}") == [accepted]
    assert ids(f"spawn_id={uuid_a}") == [cancelled, accepted]
    assert ids(f"since={quote((T0 + timedelta(seconds=1)).isoformat())}") == [
        cancelled,
        accepted,
        refused,
    ]
    assert ids("until=2030-01-02T03:04:06") == [opened]
    assert ids("until=2030-01-02T05:04:06%2B02:00") == [opened]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("event=window_reopened", "event"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("since=yesterday", "since"),
        ("since=2030-01-02T00:00:00&until=2030-01-01T00:00:00", "until"),
        ("spawn_id=not-a-spawn", "spawn_id"),
        ("target=a&target=b", "target"),
    ],
)
def test_a_bad_query_is_422_naming_the_field(client, auth, query, field):
    response = entries(client, auth, query, status=422)
    assert field in response["fields"]


@pytest.mark.parametrize(
    "cursor",
    [
        "not-base64!",
        base64.urlsafe_b64encode(b'["2030-01-02T03:04:05+00:00", "1"]').decode(),
        base64.urlsafe_b64encode(b'["2030-01-02T03:04:05", 1]').decode(),
        base64.urlsafe_b64encode(b'["2030-01-02T03:04:05+00:00", true]').decode(),
        base64.urlsafe_b64encode(b"{}").decode(),
        "A" * 200,
    ],
)
def test_a_cursor_the_server_did_not_hand_out_is_400(client, auth, cursor):
    response = entries(client, auth, f"cursor={quote(cursor)}", status=400)
    assert response["error"] == "bad_cursor"


def test_every_filtered_page_walks_an_index_and_sorts_nothing(svc):
    filters = [
        AuditFilter(),
        AuditFilter(events=(AuditEvent.SPAWN_ACCEPTED,)),
        AuditFilter(target="spawner"),
        AuditFilter(token_label="ops"),
        AuditFilter(spawn_uuid=str(uuid.uuid4())),
        AuditFilter(spawn_id="spawn-00000000"),
    ]
    for audit_filter in filters:
        plan = query_plan(svc.audit.engine, page_query(audit_filter, 51, None))
        assert "ix_audit_" in plan, (audit_filter, plan)
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, (audit_filter, plan)


def test_several_events_merge_one_bounded_index_walk_per_event(svc):
    events = (AuditEvent.SPAWN_ACCEPTED, AuditEvent.SPAWN_REFUSED, AuditEvent.WINDOW_OPENED)
    plan = query_plan(svc.audit.engine, page_query(AuditFilter(events=events), 51, None))
    walks = re.findall(r"(?:USING INDEX|Index Scan Backward using) ix_audit_event_at_id", plan)
    assert len(walks) == 3, plan
    assert "SCAN audit" not in plan and "Seq Scan" not in plan, plan


def query_plan(engine, stmt) -> str:
    with engine.connect() as conn:
        sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            return "\n".join(row[-1] for row in rows)
        for method in ("seqscan", "bitmapscan", "sort"):  # an ordered index path, if any
            conn.exec_driver_sql(f"SET LOCAL enable_{method} TO off")
        return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}").all())


# --- windows that run out -------------------------------------------------------------------


def open_briefly(client, ops, target="spawner") -> dict:
    window = call(client, "post", "/vx11/window/open", ops, {"target": target, "ttl_seconds": 1})
    return window.json


def window_gone(client, auth, target="spawner"):
    return wait_for(
        lambda: not client.get(f"/vx11/window/status/{target}", headers=auth).json["is_open"],
        timeout=5,
    )


def test_an_expired_window_is_recorded_exactly_once_by_concurrent_sweeps(
    client, ops, svc, redis_url, database_url
):
    window = open_briefly(client, ops)
    window_gone(client, ops)
    start = threading.Barrier(4)
    recorded: list[list[str]] = []

    def sweep():
        audit_log = AuditLog(make_engine(database_url))  # as each worker has its own
        open_windows = OpenWindows(redis.Redis.from_url(redis_url))
        start.wait()
        recorded.append(open_windows.record_expired(audit_log))
        audit_log.engine.dispose()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(recorded) == [[], [], [], [window["window_id"]]]
    (entry,) = entries(client, ops, "event=window_expired")["entries"]
    assert entry["window_id"] == window["window_id"]
    assert entry["target"] == "spawner"
    assert entry["token_label"] == "ops" and entry["remote_addr"] is None
    assert entry["reason"] == "ttl_elapsed"
    assert entry["detail"] == {"opened_at": window["opened_at"], "expires_at": window["expires_at"]}
    assert not redis.Redis.from_url(redis_url).exists(OPEN_WINDOWS_KEY)


def test_a_closed_or_replaced_window_is_never_recorded_expired(client, ops, svc):
    open_briefly(client, ops, "spawner")
    call(client, "post", "/vx11/window/close", ops, {"target": "spawner"})
    open_briefly(client, ops, "switch")
    replacement = call(client, "post", "/vx11/window/open", ops, {"target": "switch"}).json
    time.sleep(1.2)
    assert svc.open_windows.record_expired(svc.audit) == []
    assert svc.open_windows.record_expired(svc.audit, now=T0) == []  # 2030: all ended
    assert replacement["is_open"]
    assert "window_expired" not in events(entries(client, ops))


def test_a_window_still_open_in_redis_is_not_recorded_expired_early(client, ops, svc):
    open_briefly(client, ops)
    # This host's clock runs ahead of Redis's: the window's key is still there.
    assert svc.open_windows.record_expired(svc.audit, now=T0) == []


def test_an_expiry_that_cannot_be_written_is_kept_for_the_next_sweep(client, ops, svc):
    window = open_briefly(client, ops)
    window_gone(client, ops)
    broken = AuditLog(make_engine(f"sqlite:///{os.devnull}/nowhere.db"))
    with pytest.raises(Exception, match="unable to open database"):
        svc.open_windows.record_expired(broken)
    assert svc.open_windows.record_expired(svc.audit) == [window["window_id"]]


def test_the_workers_sweeper_records_expired_windows(client, ops, svc, monkeypatch):
    window = open_briefly(client, ops)
    monkeypatch.setattr(sweeper, "SWEEP_EVERY", 0.1)
    stop = threading.Event()
    thread = threading.Thread(
        target=sweeper.run_forever, args=(svc.ledger, svc.events, svc.celery, stop)
    )
    thread.start()
    try:
        expired = wait_for(
            lambda: entries(client, ops, "event=window_expired")["entries"], timeout=10
        )
    finally:
        stop.set()
        thread.join()
    assert [entry["window_id"] for entry in expired] == [window["window_id"]]


# --- retention ------------------------------------------------------------------------------

NOW = datetime.now(UTC)


def spawn_at(ledger: Ledger, created_at: datetime, status: SpawnStatus) -> str:
    record = ledger.add({"task_type": "shell", "code": "true", "ttl_seconds": 30})
    if status != SpawnStatus.QUEUED:
        if status != SpawnStatus.CANCELLED:
            ledger.transition(record["spawn_uuid"], SpawnStatus.RUNNING)
        if status != SpawnStatus.RUNNING:
            ledger.transition(record["spawn_uuid"], status)
    stmt = update(spawns).where(spawns.c.spawn_uuid == record["spawn_uuid"])
    with ledger.engine.begin() as conn:
        conn.execute(stmt.values(created_at=created_at))
    return record["spawn_uuid"]


@pytest.fixture
def aged(svc):
    """Spawns and audit entries of several ages; what a 30-day purge keeps."""
    old, recent = NOW - timedelta(days=31), NOW - timedelta(days=29)
    kept_spawns = {
        spawn_at(svc.ledger, recent, SpawnStatus.DONE),
        spawn_at(svc.ledger, old, SpawnStatus.QUEUED),
        spawn_at(svc.ledger, old, SpawnStatus.RUNNING),
    }
    for status in (SpawnStatus.DONE, SpawnStatus.FAILED, SpawnStatus.CANCELLED):
        spawn_at(svc.ledger, old, status)
    kept_entries = {record_at(svc.audit, recent), record_at(svc.audit, NOW)}
    for days in (31, 45, 400):
        record_at(svc.audit, NOW - timedelta(days=days))
    return kept_spawns, kept_entries


@pytest.fixture
def runner(database_url, redis_url, monkeypatch) -> CliRunner:
    monkeypatch.setenv("VX11_DATABASE_URL", database_url)
    return CliRunner()


def remaining(svc) -> tuple[set[str], set[int]]:
    with svc.ledger.engine.connect() as conn:
        spawn_uuids = set(conn.execute(select(spawns.c.spawn_uuid)).scalars())
        entry_ids = set(conn.execute(select(audit.c.id)).scalars())
    return spawn_uuids, entry_ids


def test_purge_deletes_old_terminal_spawns_and_old_entries_and_keeps_the_rest(
    runner, svc, aged, monkeypatch
):
    monkeypatch.setattr("vx11.core.ledger.store.PURGE_BATCH", 2)  # several batches
    before = remaining(svc)
    dry = runner.invoke(main, ["purge", "--older-than", "30", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    summary = json.loads(dry.output)
    assert (summary["spawns"], summary["audit_entries"], summary["dry_run"]) == (3, 3, True)
    assert summary["older_than_days"] == 30 and summary["before"].endswith("Z")
    assert remaining(svc) == before

    done = runner.invoke(main, ["purge", "--older-than", "30", "--json"])
    assert done.exit_code == 0, done.output
    assert (json.loads(done.output)["spawns"], json.loads(done.output)["audit_entries"]) == (3, 3)
    assert remaining(svc) == aged


def test_purge_keeps_what_the_retention_setting_covers_by_default(runner, svc, aged, monkeypatch):
    before = remaining(svc)
    result = runner.invoke(main, ["purge"])  # 90 days by default
    assert result.exit_code == 0, result.output
    assert result.output.startswith("deleted 0 spawn records and 1 audit entries from before ")
    assert "(older than 90 days)" in result.output
    monkeypatch.setenv("VX11_RETENTION_DAYS", "30")
    result = runner.invoke(main, ["purge"])
    assert result.output.startswith("deleted 3 spawn records and 2 audit entries")
    assert remaining(svc) == aged
    assert remaining(svc) != before


def test_purge_refuses_a_negative_age(runner):
    result = runner.invoke(main, ["purge", "--older-than", "-1"])
    assert result.exit_code == 2
    assert "--older-than" in result.output


def test_purge_reports_an_unreachable_database_in_one_line(monkeypatch):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    monkeypatch.setenv("VX11_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["purge"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot purge the database")
    assert "Traceback" not in result.output


def test_the_audit_log_purges_by_the_instant_in_any_time_zone(svc):
    kept = record_at(svc.audit, T0)
    record_at(svc.audit, T0 - timedelta(microseconds=1))
    paris = timezone(timedelta(hours=1))
    assert svc.audit.purge(T0.astimezone(paris), dry_run=True) == 1
    assert svc.audit.purge(T0.astimezone(paris)) == 1
    with svc.audit.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit)).scalar() == 1
    assert svc.audit.page().rows[0]["id"] == kept


def test_entries_written_together_share_their_instant(svc):
    first, second = svc.audit.record(
        AuditEntry(AuditEvent.WINDOW_CLOSED, target="spawner"),
        AuditEntry(AuditEvent.SPAWN_CANCELLED, spawn_uuid=str(uuid.uuid4())),
    )
    assert first["at"] == second["at"] and second["id"] > first["id"]
    page = svc.audit.page()
    assert [entry["id"] for entry in page.rows] == [second["id"], first["id"]]
    assert page.rows[0]["at"] == first["at"]
