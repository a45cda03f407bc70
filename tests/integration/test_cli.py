"""The ``vx11`` command in one process: ``token --local`` against a real Redis (how the
first token is made); the client commands against the gateway's app served over HTTP
on a free port, with no worker (the tests move spawns through the ledger and their
event stream as a worker would); and the client's event parsing, exit codes and error
lines. tests/e2e/test_cli.py drives the installed command against a whole stack."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from werkzeug.serving import make_server

from tests.support import TOKEN, free_port
from vx11 import create_app
from vx11.cli import main
from vx11.cli.client import ApiError, ServerEvent, parse_sse
from vx11.cli.common import ExitCode, describe, exit_code_for
from vx11.cli.follow import exit_code_of
from vx11.core.states import SpawnStatus


@pytest.fixture
def runner(redis_url, monkeypatch) -> CliRunner:
    monkeypatch.setenv("VX11_REDIS_URL", redis_url)
    return CliRunner()


def create_local(runner: CliRunner, *args: str) -> dict:
    result = runner.invoke(main, ["token", "create", "--local", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_local_token_is_shown_once_with_its_scopes_and_opens_the_api(runner, test_config):
    created = create_local(runner, "--label", "ci-bot", "--scope", "read", "--max-active", "3")
    assert created["token"].startswith("vx11_")
    assert (created["label"], created["scopes"], created["max_active_spawns"]) == (
        "ci-bot",
        ["read"],
        3,
    )
    client = create_app(test_config).test_client()
    headers = {"X-VX11-Token": created["token"]}
    assert client.get("/vx11/window/status/spawner", headers=headers).status_code == 200
    listed = runner.invoke(main, ["token", "list", "--local"])
    assert listed.exit_code == 0
    assert "ci-bot" in listed.output and created["token_id"] in listed.output
    assert created["token"] not in listed.output


def test_a_local_admin_token_bootstraps_token_management_over_the_api(runner, test_config):
    admin = create_local(runner, "--label", "ops", "--scope", "admin")
    client = create_app(test_config).test_client()
    response = client.get("/vx11/tokens", headers={"X-VX11-Token": admin["token"]})
    assert response.status_code == 200
    assert [t["label"] for t in response.get_json()["tokens"]] == ["ops"]


def test_a_local_token_with_an_expiry_lists_it(runner):
    created = create_local(runner, "--label", "short", "--scope", "spawn", "--expires-in", "2h")
    assert created["expires_at"] is not None
    listed = json.loads(runner.invoke(main, ["token", "list", "--local", "--json"]).stdout)
    assert [t["expires_at"] for t in listed["tokens"]] == [created["expires_at"]]


def test_a_token_needs_a_scope(runner):
    result = runner.invoke(main, ["token", "create", "--local", "--label", "x"])
    assert result.exit_code == ExitCode.USAGE
    assert "--scope" in result.output


def test_a_locally_revoked_token_is_refused(runner, test_config):
    info = create_local(runner, "--label", "x", "--scope", "read")
    revoked = runner.invoke(main, ["token", "revoke", "--local", info["token_id"]])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    client = create_app(test_config).test_client()
    response = client.get("/vx11/window/status/spawner", headers={"X-VX11-Token": info["token"]})
    assert response.status_code == 401
    listed = runner.invoke(main, ["token", "list", "--local", "--json"])
    assert json.loads(listed.stdout) == {"tokens": []}


def test_revoking_an_unknown_id_locally_fails_in_one_line(runner):
    result = runner.invoke(main, ["token", "revoke", "--local", "deadbeefdead"])
    assert result.exit_code == ExitCode.API_ERROR
    assert result.output == "vx11: error: not_found: no single token has id deadbeefdead\n"


def test_an_unreachable_redis_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("VX11_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    result = CliRunner().invoke(main, ["token", "list", "--local"])
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert result.output.startswith("vx11: error: redis_unavailable: cannot reach Redis")
    assert len(result.output.splitlines()) == 1
    assert "Traceback" not in result.output


# --- the client's pieces ------------------------------------------------------------------


def test_server_sent_events_parse_with_comments_multi_line_data_and_ids():
    stream = [
        "event: state",
        'data: {"status": "RUNNING"}',
        "",
        ": keepalive",
        "",
        "id: 1-0",
        "event: stdout",
        'data: {"text":',
        'data: "hi\\n"}',
        "",
        "event: end",
        'data: {"status": "DONE"}',
        "",
    ]
    assert list(parse_sse(stream)) == [
        ServerEvent("state", {"status": "RUNNING"}),
        ServerEvent("stdout", {"text": "hi\n"}, "1-0"),
        ServerEvent("end", {"status": "DONE"}),
    ]


def test_an_event_whose_data_is_not_json_is_a_bad_response():
    with pytest.raises(ApiError) as caught:
        list(parse_sse(["event: stdout", "data: {nope", ""]))
    assert caught.value.code == "bad_response"


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ({"status": "DONE", "exit_code": 0}, 0),
        ({"status": "FAILED", "exit_code": 3}, 3),
        ({"status": "FAILED", "exit_code": -9}, 137),  # killed by SIGKILL, as a shell says
        ({"status": "FAILED", "exit_code": None}, 1),
        ({"status": "TIMEOUT", "exit_code": -9}, 124),
        ({"status": "CANCELLED", "exit_code": None}, 130),
        ({"status": "ERROR", "exit_code": None}, 70),
    ],
)
def test_a_waited_spawn_exits_with_its_own_code_or_its_states(record, code):
    assert exit_code_of(record) == code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ApiError(None, "unreachable", "down"), ExitCode.UNAVAILABLE),
        (ApiError(None, "timeout", "slow"), ExitCode.UNAVAILABLE),
        (ApiError(503, "redis_unavailable", "down"), ExitCode.UNAVAILABLE),
        (ApiError(401, "invalid_token", "no"), ExitCode.REFUSED),
        (ApiError(403, "insufficient_scope", "no"), ExitCode.REFUSED),
        (ApiError(429, "rate_limited", "slow down"), ExitCode.TRY_LATER),
        (ApiError(404, "not_found", "no"), ExitCode.API_ERROR),
        (ApiError(422, "validation_error", "no"), ExitCode.API_ERROR),
    ],
)
def test_api_errors_map_to_documented_exit_codes(error, code):
    assert exit_code_for(error) == code


def test_an_error_line_carries_the_details_that_help():
    fields = {"ttl_seconds": ["too long"], "args": {"0": ["has a NUL"]}}
    invalid = ApiError(
        422, "validation_error", "request failed validation", body={"fields": fields}
    )
    assert describe(invalid) == (
        "validation_error: request failed validation (ttl_seconds: too long; args.0: has a NUL)"
    )
    limited = ApiError(429, "rate_limited", "too many requests", retry_after=2)
    assert describe(limited) == "rate_limited: too many requests (retry after 2 s)"


@pytest.mark.parametrize("command", [["up", "--no-flower"], ["purge", "--dry-run"]])
def test_a_bad_setting_is_one_line_not_a_traceback(command, monkeypatch):
    monkeypatch.setenv("VX11_ENV", "staging")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: bad configuration: VX11_ENV must be development or production, not 'staging'"
    ]


# --- client commands against the gateway's app over HTTP ---------------------------------------


@pytest.fixture
def served(app) -> Iterator[str]:
    """The gateway's app served over HTTP on a free port (threads, as gunicorn's gthread
    does): its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="gateway", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    app.extensions["vx11"].ledger.engine.dispose()


@pytest.fixture
def svc(app):
    return app.extensions["vx11"]


def cli(served: str, *args: str, token: str = TOKEN["X-VX11-Token"], **kwargs) -> Result:
    return CliRunner().invoke(main, ["--url", served, "--token", token, *args], **kwargs)


def spawn_in(client, state: SpawnStatus | None = None, **end) -> dict:
    """A spawn submitted through ``client`` (a window open), then moved to ``state``
    through RUNNING as a worker would: its record."""
    opened = client.post("/vx11/window/open", json={"target": "spawner"}, headers=TOKEN)
    assert opened.status_code == 200, opened.json
    body = {"task_type": "shell", "code": "true"}
    accepted = client.post("/vx11/spawn", json=body, headers=TOKEN).json
    assert accepted["status"] == "QUEUED", accepted
    ledger = client.application.extensions["vx11"].ledger
    if state is not None:
        ledger.transition(accepted["spawn_uuid"], SpawnStatus.RUNNING)
        if state is not SpawnStatus.RUNNING:
            ledger.transition(accepted["spawn_uuid"], state, **end)
    return ledger.get(accepted["spawn_uuid"])


def listed_ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [record["spawn_id"] for record in json.loads(result.stdout)["spawns"]]


def test_spawns_ls_takes_states_comma_separated_repeated_and_in_any_case(served, client):
    done = spawn_in(client, SpawnStatus.DONE, exit_code=0)
    failed = spawn_in(client, SpawnStatus.FAILED, exit_code=2)
    cancelled = spawn_in(client, SpawnStatus.CANCELLED, reason="cancelled")
    spawn_in(client, SpawnStatus.RUNNING)
    newest_first = [cancelled["spawn_id"], failed["spawn_id"], done["spawn_id"]]
    comma_separated = cli(served, "spawns", "ls", "--status", "done,FAILED", "--json")
    assert listed_ids(comma_separated) == newest_first[1:]
    repeated = cli(served, "spawns", "ls", "--status", "Done,failed", "--status", "cancelled",
                   "--status", "done", "--json")  # fmt: skip
    assert listed_ids(repeated) == newest_first
    table = cli(served, "spawns", "ls", "--status", " done , failed ")
    assert table.exit_code == 0, table.output
    assert [row.split()[1] for row in table.stdout.splitlines()[1:]] == ["FAILED", "DONE"]


def test_an_unknown_state_is_a_usage_error_naming_it(served):
    result = cli(served, "spawns", "ls", "--status", "done,finished")
    assert result.exit_code == ExitCode.USAGE
    assert "'finished' is not one of QUEUED, RUNNING, DONE" in result.output
