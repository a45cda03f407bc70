"""The ``vx11`` command in one process: ``token --local`` against a real Redis (how the
first token is made); the client commands against the gateway's app served over HTTP
on a free port, with no worker (the tests move spawns through the ledger and their
event stream as a worker would); and the client's event parsing, exit codes and error
lines. tests/e2e/test_cli.py drives the installed command against a whole stack."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import click
import pytest
import redis
from click.testing import CliRunner, Result
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.support import ROOT, TOKEN, free_port, wait_for
from vx11 import create_app
from vx11.cli import audit, follow, main
from vx11.cli.client import ApiError, ServerEvent, parse_sse
from vx11.cli.common import ExitCode, describe, exit_code_for
from vx11.cli.follow import exit_code_of
from vx11.core.audit import AuditEvent
from vx11.core.states import SpawnStatus
from vx11.core.tokens import TokenStore


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


class QuietHandler(WSGIRequestHandler):
    """Werkzeug's request handler without its request log: the CLI's output is the test's."""

    def log(self, type: str, message: str, *args: object) -> None:
        pass


@pytest.fixture
def app(test_config):
    """The gateway's app, logging warnings only: its log lines would go to the stderr that
    the CLI's runner captures."""
    return create_app({**test_config, "log_level": "WARNING"})


@pytest.fixture
def served(app) -> Iterator[str]:
    """The gateway's app served over HTTP on a free port (threads, as gunicorn's gthread
    does): its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
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


def test_spawn_bash_submits_a_bash_spawn_and_spawns_ls_finds_it_by_type(served, client, svc):
    assert cli(served, "window", "open", "spawner").exit_code == 0
    svc.offers.announce("w@host", {"bash": "GNU bash, version 5.2.15"})  # as a worker does
    submitted = cli(served, "spawn", "bash", "[[ -n $1 ]] && echo yes", "--arg", "x", "--json")
    assert submitted.exit_code == 0, submitted.output
    spawn_id = json.loads(submitted.stdout)["spawn_id"]
    assert cli(served, "spawn", "shell", "true").exit_code == 0
    assert listed_ids(cli(served, "spawns", "ls", "--type", "bash", "--json")) == [spawn_id]
    record = client.get(f"/vx11/spawn/{spawn_id}", headers=TOKEN).json
    assert (record["task_type"], record["args"]) == ("bash", ["x"])


def test_an_unknown_state_is_a_usage_error_naming_it(served):
    result = cli(served, "spawns", "ls", "--status", "done,finished")
    assert result.exit_code == ExitCode.USAGE
    assert "'finished' is not one of QUEUED, RUNNING, DONE" in result.output


# --- following a spawn --------------------------------------------------------------------------


def run_as_a_worker(svc, record: dict, *outputs: tuple[str, str]) -> None:
    """What a worker writes for a running spawn: its state, then its ``(stream, text)``
    outputs, as events."""
    svc.events.append(record["spawn_uuid"], "state", {"status": "RUNNING"})
    for name, text in outputs:
        svc.events.append(record["spawn_uuid"], name, {"text": text})


def end_as_a_worker(svc, record: dict, status: SpawnStatus, **fields) -> None:
    final = svc.ledger.transition(record["spawn_uuid"], status, **fields)
    svc.events.finish(record["spawn_uuid"], {"spawn_uuid": final["spawn_uuid"], "status": status})


def cli_process(served: str, *args: str) -> subprocess.Popen:
    """``vx11 ARGS`` against ``served`` in a process of its own, its output piped (text)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VX11_")}
    return subprocess.Popen(
        [sys.executable, "-m", "vx11.cli", "--url", served, "--token", TOKEN["X-VX11-Token"],
         *args],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@pytest.mark.parametrize("command", [["spawn", "follow"], ["spawn", "show", "--wait"]])
def test_follow_prints_the_output_so_far_then_the_rest_and_exits_with_the_spawns_code(
    served, client, svc, command
):
    record = spawn_in(client, SpawnStatus.RUNNING)
    run_as_a_worker(svc, record, ("stdout", "before\n"), ("stderr", "warn\n"))
    proc = cli_process(served, *command, record["spawn_id"])
    try:
        assert proc.stdout.readline() == "before\n"
        svc.events.append(record["spawn_uuid"], "stdout", {"text": "after\n"})
        assert proc.stdout.readline() == "after\n"
        end_as_a_worker(svc, record, SpawnStatus.FAILED, exit_code=3, stdout="before\nafter\n",
                        stderr="warn\n")  # fmt: skip
        assert proc.wait(timeout=30) == 3
        assert proc.stdout.read() == ""
        assert proc.stderr.read() == f"warn\nvx11: {record['spawn_id']} FAILED, exit 3\n"
    finally:
        proc.kill()
        proc.wait()


def test_following_a_finished_spawn_prints_its_output_and_exit_code_at_once(served, client):
    record = spawn_in(client, SpawnStatus.TIMEOUT, reason="wall_time_limit", stdout="partial\n")
    result = cli(served, "spawn", "follow", record["spawn_uuid"])
    assert result.exit_code == ExitCode.TIMEOUT, result.output
    assert result.stdout == "partial\n"
    assert f"{record['spawn_id']} TIMEOUT, wall_time_limit" in result.stderr
    as_json = cli(served, "spawn", "show", record["spawn_id"], "--wait", "--json")
    assert as_json.exit_code == ExitCode.TIMEOUT
    assert json.loads(as_json.stdout)["stdout"] == "partial\n"


def test_following_an_unknown_spawn_is_not_found_in_one_line(served):
    result = cli(served, "spawn", "follow", "spawn-00000000")
    assert result.exit_code == ExitCode.API_ERROR
    assert result.output.startswith("vx11: error: not_found: ")
    assert len(result.output.splitlines()) == 1


COMPLETE_STDOUT_EVENT = re.compile(rb"event: stdout\ndata: [^\n]*\n\n\r\n")
"""A stdout event to its blank line, and the end of the HTTP chunk that carries it: a
client reading the chunked body drops a chunk whose closing CRLF never came."""


class CuttingRelay:
    """A TCP relay to the gateway at ``port`` that cuts the first event stream it carries
    right after passing on a piece with a ``stdout`` event, as a proxy or a restarting
    gateway would; ``requests`` keeps the head of every request it relayed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[str] = []
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        streams: list[bool] = []
        threading.Thread(target=self._down, args=(upstream, client, streams), daemon=True).start()
        while data := self._recv(client):
            head = data.decode("latin-1").split("\r\n\r\n", 1)[0]
            if head.startswith("GET "):
                self.requests.append(head)
                streams.append("/events" in head.split("\r\n", 1)[0].split(" ")[1])
            upstream.sendall(data)
        upstream.close()

    def _down(self, upstream: socket.socket, client: socket.socket, streams: list[bool]) -> None:
        passed = b""
        while data := self._recv(upstream):
            client.sendall(data)
            passed += data
            # Cut once a whole stdout event (to its blank line) has gone through: a piece
            # may end inside an event, which the client rightly does not count as had.
            whole = COMPLETE_STDOUT_EVENT.search(passed)
            if streams and streams[-1] and whole and not self.cut.is_set():
                self.cut.set()
                break
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""


def last_event_ids(relay: CuttingRelay) -> list[str | None]:
    """The Last-Event-ID of each event stream request the relay carried (None: none)."""
    found = []
    for head in relay.requests:
        if "/events" in head.split("\r\n", 1)[0].split(" ")[1]:
            match = re.search(r"^Last-Event-ID: (.*)$", head, re.M | re.I)
            found.append(match[1].strip() if match else None)
    return found


def test_a_broken_event_stream_is_resumed_after_the_last_event_with_nothing_twice(
    served, client, svc
):
    record = spawn_in(client, SpawnStatus.RUNNING)
    run_as_a_worker(svc, record, ("stdout", "one\n"))
    relay = CuttingRelay(int(served.rsplit(":", 1)[1]))
    proc = cli_process(relay.url, "spawn", "follow", record["spawn_id"])
    try:
        assert proc.stdout.readline() == "one\n"
        assert relay.cut.wait(timeout=10)
        wait_for(lambda: len(last_event_ids(relay)) == 2)
        svc.events.append(record["spawn_uuid"], "stdout", {"text": "two\n"})
        end_as_a_worker(svc, record, SpawnStatus.DONE, exit_code=0, stdout="one\ntwo\n")
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == "two\n"
        assert proc.stderr.read() == f"vx11: {record['spawn_id']} DONE, exit 0\n"
    finally:
        proc.kill()
        proc.wait()
        relay.close()
    [one] = [e for e in svc.events.read(record["spawn_uuid"]) if e.data.get("text") == "one\n"]
    first, again = last_event_ids(relay)
    assert (first, again) == (None, one.id)


class ReplayingGateway:
    """A stand-in for the client of a gateway whose event stream cannot resume: each
    connection replays the stream from its start, and the first breaks after two events."""

    def __init__(self) -> None:
        self.asked_after: list[str | None] = []

    def events(self, ident: str, last_event_id: str | None = None, encoding: str = "utf8"):
        assert encoding == "base64", "vx11 reads the exact bytes"
        self.asked_after.append(last_event_id)
        yield ServerEvent("state", {"status": "RUNNING"})
        yield ServerEvent("stdout", {"base64": "YQ=="}, "5-0")  # a
        yield ServerEvent("stdout", {"base64": "Yg=="}, "5-1")  # b
        if len(self.asked_after) == 1:
            raise ApiError(None, "unreachable", "the event stream broke off")
        yield ServerEvent("stdout", {"base64": "Yw=="}, "7-0")  # c
        yield ServerEvent("end", {"status": "DONE"}, "8-0")


def test_a_gateway_that_replays_from_the_start_gives_each_event_once(monkeypatch):
    monkeypatch.setattr(follow, "RECONNECT_DELAY", 0)
    gateway = ReplayingGateway()
    inbox: queue.Queue = queue.Queue()
    follow._read_events(gateway, "spawn-1a2b3c4d", inbox)
    got = []
    while (item := inbox.get_nowait()) is not None:
        got.append(
            (
                item.kind,
                base64.b64decode(item.data["base64"]).decode() if item.kind == "stdout" else None,
            )
        )
    assert got == [
        ("state", None), ("stdout", "a"), ("stdout", "b"),
        ("state", None), ("stdout", "c"), ("end", None),
    ]  # fmt: skip
    assert gateway.asked_after == [None, "5-1"]


# --- the audit log ------------------------------------------------------------------------------


@pytest.fixture
def ops(redis_url) -> str:
    """A real token labelled ``ops`` with the three operator scopes."""
    token, _ = TokenStore(redis.Redis.from_url(redis_url)).create(
        "ops", ["admin", "window", "spawn"]
    )
    return token


def decisions(served: str, ops: str) -> dict[str, str]:
    """A window opened, a spawn accepted under it, the window closed and a spawn refused,
    all by ``ops``: the two spawns' ids."""
    assert (
        cli(served, "window", "open", "spawner", "--reason", "deploy 42", token=ops).exit_code == 0
    )
    accepted = cli(served, "spawn", "shell", "true", token=ops)
    assert accepted.exit_code == 0, accepted.output
    assert cli(served, "window", "close", "spawner", "--reason", "done", token=ops).exit_code == 0
    refused = cli(served, "spawn", "shell", "true", "--json", token=ops)
    assert refused.exit_code == ExitCode.REFUSED
    return {"accepted": accepted.stdout.strip()}


def test_audit_is_a_table_of_decisions_newest_first_and_json_is_the_apis_answer(
    served, client, ops
):
    spawn_id = decisions(served, ops)["accepted"]
    shown = cli(served, "audit", token=ops)
    assert shown.exit_code == 0, shown.output
    header, *rows = shown.stdout.splitlines()
    assert header.split() == ["AT", "(UTC)", "EVENT", "TARGET", "SPAWN", "TOKEN", "FROM", "REASON"]
    assert [row.split(None, 7)[2:] for row in rows] == [
        ["spawn_refused", "spawner", "-", "ops", "127.0.0.1",
         "no open policy window for target spawner (policy SOLO_MADRE)"],
        ["window_closed", "spawner", "-", "ops", "127.0.0.1", "done"],
        ["spawn_accepted", "spawner", spawn_id, "ops", "127.0.0.1", "-"],
        ["window_opened", "spawner", "-", "ops", "127.0.0.1", "deploy 42"],
    ]  # fmt: skip
    assert len({header.index("EVENT"), *(row.index(row.split()[2]) for row in rows)}) == 1
    as_json = cli(served, "audit", "--json", token=ops)
    api = client.get("/vx11/audit", headers={"X-VX11-Token": ops}).json
    assert json.loads(as_json.stdout) == api


def test_audit_filters_as_the_api_does(served, ops):
    spawn_id = decisions(served, ops)["accepted"]

    def events(*args: str) -> list[str]:
        result = cli(served, "audit", *args, "--json", token=ops)
        assert result.exit_code == 0, result.output
        return [entry["event"] for entry in json.loads(result.stdout)["entries"]]

    assert events("--event", "window_opened,SPAWN_REFUSED") == ["spawn_refused", "window_opened"]
    assert events("--event", "window_closed", "--event", "Window_Opened") == [
        "window_closed", "window_opened",
    ]  # fmt: skip
    assert events("--spawn", spawn_id) == ["spawn_accepted"]
    assert len(events("--token-label", "ops", "--target", "spawner", "--since", "1h")) == 4
    assert events("--token-label", "someone-else") == []
    assert events("--until", "1h") == []
    unknown = cli(served, "audit", "--event", "window_open", token=ops)
    assert unknown.exit_code == ExitCode.USAGE
    assert "'window_open' is not one of window_opened" in unknown.output


def test_audit_pages_with_limit_and_all(served, ops):
    decisions(served, ops)
    one_page = cli(served, "audit", "--limit", "1", token=ops)
    assert one_page.exit_code == 0
    assert len(one_page.stdout.splitlines()) == 2
    assert one_page.stderr == "vx11: more entries follow: --all lists every page\n"
    every = json.loads(cli(served, "audit", "--limit", "1", "--all", "--json", token=ops).stdout)
    assert [entry["event"] for entry in every["entries"]] == [
        "spawn_refused", "window_closed", "spawn_accepted", "window_opened",
    ]  # fmt: skip
    assert every["next_cursor"] is None


def test_the_audit_needs_an_admin_token(served, redis_url):
    token, _ = TokenStore(redis.Redis.from_url(redis_url)).create("ci", ["spawn", "window"])
    result = cli(served, "audit", token=token)
    assert result.exit_code == ExitCode.REFUSED
    assert result.output == "vx11: error: insufficient_scope: this token lacks the admin scope\n"


def test_the_clis_audit_events_are_the_audit_logs():
    assert tuple(event.value for event in AuditEvent) == audit.EVENTS


# --- docs/cli.md ----------------------------------------------------------------------------------


def commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command below ``group``, with its path (``("spawn", "follow")``)."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def doc_sections() -> dict[tuple[str, ...], str]:
    """Each command docs/cli.md has a section for (``### `vx11 spawn show|follow ID` ``
    names three), with that section's text."""
    text = (ROOT / "docs" / "cli.md").read_text()
    sections = {}
    for section in re.split(r"^### ", text, flags=re.M)[1:]:
        heading = section.split("\n", 1)[0]
        for named in re.findall(r"`vx11 ([a-z]+)(?: ([a-z|]+))?", heading):
            group, subcommands = named
            for name in subcommands.split("|") if subcommands else [""]:
                sections[(group, name) if name else (group,)] = section
    return sections


def long_flags(command: click.Command) -> list[str]:
    flags = [f for p in command.params if isinstance(p, click.Option) for f in p.opts]
    return [f for f in flags if f.startswith("--") and f not in ("--json", "--help")]


def names(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def test_docs_cli_has_a_section_for_every_command_naming_each_of_its_options():
    sections = doc_sections()
    for path, command in commands(main):
        assert path in sections, f"docs/cli.md has no section for vx11 {' '.join(path)}"
        missing = [flag for flag in long_flags(command) if not names(sections[path], flag)]
        assert not missing, f"docs/cli.md's section of vx11 {' '.join(path)} lacks {missing}"
    head = (ROOT / "docs" / "cli.md").read_text().split("## Commands", 1)[0]
    assert [flag for flag in long_flags(main) if not names(head, flag)] == []
