"""Task types at the gateway (Flask test client, real Redis; workers' announcements
made as a worker makes them, :mod:`vx11.core.offers`): ``GET /vx11/runtimes``, a
declared task type accepted only while a live worker offers it, its default limits,
the file of its code that no input file may be, and a bad file refused at start."""

from __future__ import annotations

import time

import pytest
import redis

from tests.integration.test_api import open_window, queued_kwargs
from vx11 import create_app
from vx11.core.offers import LIFETIME, Offers
from vx11.core.runtimes import TaskTypeFileError

PERL = """
[perl]
interpreter = ["/usr/bin/perl"]
main = "main.pl"
description = "Perl 5"
limits = { ttl_seconds = 10, memory_limit_mb = 128 }
"""
SPAWN = {"task_type": "perl", "code": 'print "hi\\n";'}


@pytest.fixture
def test_config(test_config, tmp_path):
    path = tmp_path / "task-types.toml"
    path.write_text(PERL)
    return {**test_config, "task_types_file": str(path)}


@pytest.fixture
def offers(redis_url) -> Offers:
    return Offers(redis.Redis.from_url(redis_url))


def runtimes_by_name(client, auth) -> dict[str, dict]:
    response = client.get("/vx11/runtimes", headers=auth)
    assert response.status_code == 200, response.json
    return {runtime["name"]: runtime for runtime in response.json["runtimes"]}


def test_the_runtimes_are_the_built_in_ones_then_the_declared_ones(app, client, auth):
    listed = runtimes_by_name(client, auth)
    assert list(listed) == ["python", "shell", "bash", "perl"]
    perl, python = listed["perl"], listed["python"]
    assert (perl["builtin"], perl["interpreter"], perl["main"]) == (
        False, ["/usr/bin/perl"], "main.pl",
    )  # fmt: skip
    assert (python["builtin"], python["interpreter"], python["main"]) == (
        True, ["python3", "-I", "-u"], "main.py",
    )  # fmt: skip
    settings = app.extensions["vx11"].settings
    assert perl["limits"]["ttl_seconds"] == {"default": 10, "maximum": settings.spawn_max_ttl}
    assert perl["limits"]["memory_limit_mb"]["default"] == 128
    assert python["limits"]["memory_limit_mb"] == {
        "default": settings.memory_limit_mb, "maximum": settings.memory_limit_mb_max,
    }  # fmt: skip
    assert python["limits"]["cpu_time_limit"]["default"] is None  # its ttl
    # no worker: python and shell still queue; bash and a declared one are not accepted
    assert [(r["accepted"], r["workers"], r["version"]) for r in listed.values()] == [
        (True, {}, None), (True, {}, None), (False, {}, None), (False, {}, None),
    ]  # fmt: skip


def test_the_runtimes_show_what_each_live_worker_offers(client, auth, offers):
    offers.announce("w1@a", {"python": "Python 3.11.2", "perl": "v5.36.0"})
    offers.announce("w2@b", {"python": "Python 3.12.1", "perl": "v5.36.0"})
    offers.announce("w3@c", {"python": "Python 3.11.2"})
    listed = runtimes_by_name(client, auth)
    assert listed["perl"]["workers"] == {"w1@a": "v5.36.0", "w2@b": "v5.36.0"}
    assert (listed["perl"]["accepted"], listed["perl"]["version"]) == (True, "v5.36.0")
    assert listed["python"]["version"] == "Python 3.11.2"  # most workers'
    assert listed["shell"]["workers"] == {}


def test_a_declared_task_type_no_live_worker_offers_is_503_and_nothing_is_kept(
    app, client, auth, redis_url
):
    open_window(client, auth)
    response = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert response.status_code == 503, response.json
    assert response.json["error"] == "task_type_unavailable"
    assert "no live worker offers task type 'perl'" in response.json["message"]
    assert response.headers["Retry-After"] == "10"
    svc = app.extensions["vx11"]
    assert svc.ledger.page(limit=10).rows == []
    assert queued_kwargs(redis_url) == []
    assert svc.unpublished.all() == set()  # the admission's note is taken back
    refused = client.get("/vx11/audit?event=spawn_refused", headers=auth).json["entries"]
    assert [e["reason"] for e in refused] == [
        "no live worker offers task type 'perl' (GET /vx11/runtimes)"
    ]


def test_bash_too_needs_a_live_worker_that_offers_it_and_python_and_shell_do_not(
    client, auth, offers
):
    open_window(client, auth)

    def answer(task_type: str) -> int:
        body = {"task_type": task_type, "code": "echo hi"}
        return client.post("/vx11/spawn", json=body, headers=auth).status_code

    assert [answer(t) for t in ("python", "shell", "bash")] == [200, 200, 503]
    offers.announce("w1@a", {"python": "Python 3.11.2", "shell": "dash"})  # no bash there
    assert answer("bash") == 503
    offers.announce("w2@b", {"bash": "GNU bash, version 5.2.15"})
    assert answer("bash") == 200


def test_a_declared_task_type_is_accepted_while_a_worker_offers_it_with_its_limits(
    app, client, auth, offers, redis_url
):
    open_window(client, auth)
    offers.announce("w1@a", {"perl": "v5.36.0"})
    accepted = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert accepted.status_code == 200, accepted.json
    asked = client.post("/vx11/spawn", json={**SPAWN, "ttl_seconds": 20}, headers=auth)
    records = [
        client.get(f"/vx11/spawn/{answer.json['spawn_id']}", headers=auth).json
        for answer in (accepted, asked)
    ]
    assert [(r["ttl_seconds"], r["limits"]["memory_limit_mb"]) for r in records] == [
        (10, 128), (20, 128),
    ]  # fmt: skip
    assert [k["task_type"] for k in queued_kwargs(redis_url)] == ["perl", "perl"]
    python = client.post("/vx11/spawn", json={**SPAWN, "task_type": "python"}, headers=auth)
    python_record = client.get(f"/vx11/spawn/{python.json['spawn_id']}", headers=auth).json
    assert python_record["ttl_seconds"] == app.extensions["vx11"].settings.spawn_default_ttl


def test_a_worker_that_stops_announcing_is_gone_after_the_lifetime(client, auth, redis_url):
    past = Offers(redis.Redis.from_url(redis_url), clock=lambda: time.time() - LIFETIME - 1)
    past.announce("w1@a", {"perl": "v5.36.0"})
    open_window(client, auth)
    assert client.post("/vx11/spawn", json=SPAWN, headers=auth).status_code == 503
    assert runtimes_by_name(client, auth)["perl"]["workers"] == {}
    assert redis.Redis.from_url(redis_url).hgetall("vx11:offers") == {}  # removed


def test_a_withdrawn_worker_offers_nothing(client, auth, offers):
    offers.announce("w1@a", {"perl": "v5.36.0"})
    offers.withdraw("w1@a")
    open_window(client, auth)
    assert client.post("/vx11/spawn", json=SPAWN, headers=auth).status_code == 503


def test_an_input_file_may_not_be_the_code_s_own_file(client, auth, offers):
    offers.announce("w1@a", {"perl": "v5.36.0"})
    open_window(client, auth)
    for path in ("main.pl", "main.py/x"):
        body = {**SPAWN, "task_type": "perl" if path == "main.pl" else "python",
                "files": [{"path": path, "content": "x"}]}  # fmt: skip
        response = client.post("/vx11/spawn", json=body, headers=auth)
        assert response.status_code == 422, response.json
        main = path.split("/")[0]
        assert response.json["fields"]["files"] == [
            f"files[0] ({path}): collides with the code's own {main}"
        ]


def test_an_unknown_task_type_is_422_and_the_history_filters_by_a_declared_one(
    client, auth, offers
):
    offers.announce("w1@a", {"perl": "v5.36.0"})
    open_window(client, auth)
    unknown = client.post("/vx11/spawn", json={**SPAWN, "task_type": "ruby"}, headers=auth)
    assert unknown.status_code == 422
    assert list(unknown.json["fields"]) == ["task_type"]
    perl = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    client.post("/vx11/spawn", json={**SPAWN, "task_type": "shell"}, headers=auth)
    listed = client.get("/vx11/spawns?task_type=PERL", headers=auth).json["spawns"]
    assert [r["spawn_id"] for r in listed] == [perl["spawn_id"]]
    assert client.get("/vx11/spawns?task_type=ruby", headers=auth).status_code == 422


def test_a_batch_answers_each_item_as_one_spawn_would(client, auth, offers):
    open_window(client, auth)
    batch = {"spawns": [SPAWN, {**SPAWN, "task_type": "python", "code": "print(1)"}]}
    results = client.post("/vx11/spawns/batch", json=batch, headers=auth).json["results"]
    assert [(r["status_code"], r.get("error")) for r in results] == [
        (503, "task_type_unavailable"), (200, None),
    ]  # fmt: skip


def test_the_openapi_document_lists_the_declared_task_type(client):
    spec = client.get("/vx11/openapi.json").json
    request = spec["components"]["schemas"]["SpawnRequest"]["properties"]
    assert request["task_type"]["enum"] == ["python", "shell", "bash", "perl"]
    assert "/vx11/runtimes" in spec["paths"]


def test_a_gateway_does_not_start_on_a_bad_task_types_file(test_config, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[perl]\ninterpreter = ["perl"]\nmain = "m.pl"\nbinds = ["/etc/ssl"]\n')
    with pytest.raises(TaskTypeFileError, match="'/etc/ssl': a bind is an absolute path"):
        create_app({**test_config, "task_types_file": str(bad)})
