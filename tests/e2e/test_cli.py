"""The installed ``vx11`` command against a real gateway (gunicorn) and a real Celery
worker: status, windows, spawns followed live, the history, tokens, and errors that are
one line and a documented exit code, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.support import ROOT, TOKEN, free_port, http, wait_for, wait_terminal

pytestmark = pytest.mark.e2e

VX11 = Path(sys.executable).parent / "vx11"
"""The console script setup.cfg installs beside the interpreter running the tests."""
DEV_TOKEN = TOKEN["X-VX11-Token"]


def cli_env(stack, token: str | None = DEV_TOKEN, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VX11_")}
    env["VX11_URL"] = stack.base
    if token is not None:
        env["VX11_TOKEN"] = token
    env.update(extra)
    return env


def vx11(
    stack, *args: str, token: str | None = DEV_TOKEN, stdin: str | None = None, cwd=None, **env
):
    """Run ``vx11 ARGS`` to its end (in ``cwd``), ``stdin`` piped in (None: /dev/null,
    as a piped stdin is the spawn's): the CompletedProcess (text)."""
    feed = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
    return subprocess.run(
        [str(VX11), *args],
        cwd=cwd,
        env=cli_env(stack, token, **env),
        capture_output=True,
        text=True,
        timeout=60,
        **feed,
    )


@contextlib.contextmanager
def vx11_running(stack, *args: str) -> Iterator[subprocess.Popen]:
    """``vx11 ARGS`` started and left running (text, stdout and stderr piped); killed at
    the end of the block if it has not ended."""
    proc = subprocess.Popen(
        [str(VX11), *args],
        env=cli_env(stack),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def one_error_line(done: subprocess.CompletedProcess, starts: str) -> None:
    """The command failed with exactly one line on stderr, and no traceback."""
    assert done.stderr.startswith(f"vx11: error: {starts}"), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def spawn_by_correlation(stack, correlation_id: str) -> dict:
    def found():
        status, page = http(
            "GET", f"{stack.base}/vx11/spawns?correlation_id={correlation_id}", headers=TOKEN
        )
        assert status == 200, page
        return page["spawns"][0] if page["spawns"] else None

    return wait_for(found, timeout=20)


def status_of(stack, spawn_id: str) -> str:
    return http("GET", f"{stack.base}/vx11/spawn/{spawn_id}", headers=TOKEN)[1]["status"]


@pytest.fixture
def window(stack):
    stack.open_window()
    yield
    http("POST", f"{stack.base}/vx11/window/close", {"target": "spawner"}, TOKEN)


def test_the_console_script_is_installed():
    assert VX11.exists(), f"{VX11} missing: pip install -e . installs it"


# --- status and windows -------------------------------------------------------------------


def test_status_summarises_the_dependencies_the_workers_with_their_sandbox_and_windows(stack):
    done = vx11(stack, "status")
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert lines["gateway"].startswith(stack.base)
    for service in ("redis", "broker", "results", "ledger"):
        assert lines[service].startswith("ok"), done.stdout
    assert "1 live: worker@" in lines["workers"]
    offered = re.search(r"\((\w+): ([\w ]+)\)", lines["workers"])  # its level, what it offers
    assert offered is not None, lines["workers"]
    assert {"python", "shell", "bash"} <= set(offered.group(2).split())
    assert "sandbox level" in lines["workers"]
    as_json = json.loads(vx11(stack, "status", "--json").stdout)
    assert as_json["policy"] == "SOLO_MADRE" and as_json["services"]["redis"]["ok"] is True


def test_a_window_opens_with_its_ttl_and_reason_shows_and_closes(stack):
    opened = vx11(stack, "window", "open", "spawner", "--ttl", "600", "--reason", "cli test")
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.startswith("spawner open, ") and "cli test" in opened.stdout
    shown = json.loads(vx11(stack, "window", "status", "spawner", "--json").stdout)
    assert (shown["is_open"], shown["reason"]) == (True, "cli test")
    assert 590 <= shown["ttl_remaining_seconds"] <= 600
    assert "spawner open" in vx11(stack, "status").stdout
    closed = vx11(stack, "window", "close", "spawner", "--reason", "done", "--cancel-running")
    assert closed.stdout == "spawner closed (was open); cancelled 0 running spawns\n"
    assert vx11(stack, "window", "status", "spawner").stdout == "spawner closed\n"


# --- spawning and waiting -----------------------------------------------------------------


def test_a_waited_spawn_prints_its_output_and_exits_with_its_exit_code(stack, window):
    done = vx11(stack, "spawn", "python", 'import sys; print("hi"); sys.exit(3)', "--wait")
    assert done.returncode == 3
    assert done.stdout == "hi\n"
    assert "FAILED, exit 3" in done.stderr
    ok = vx11(stack, "spawn", "python", "import sys; print('to err', file=sys.stderr)", "-w")
    assert (ok.returncode, ok.stdout) == (0, "")
    assert ok.stderr.startswith("to err\n") and "DONE, exit 0" in ok.stderr


def test_output_is_streamed_while_the_spawn_still_runs(stack, window):
    code = "import time\nprint('first', flush=True)\ntime.sleep(3)\nprint('second')"
    tag = f"live-{uuid.uuid4().hex[:8]}"
    with vx11_running(stack, "spawn", "python", code, "--wait", "--correlation-id", tag) as proc:
        assert proc.stdout.readline() == "first\n"
        spawn = spawn_by_correlation(stack, tag)
        assert status_of(stack, spawn["spawn_id"]) == "RUNNING"  # "first" came before the end
        assert proc.stdout.readline() == "second\n"
        assert proc.wait(timeout=30) == 0
        assert "DONE" in proc.stderr.read()


def test_a_spinner_shows_on_a_terminal_and_never_in_a_pipe(stack, window):
    code = "import time; time.sleep(1); print('done')"
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(VX11), "spawn", "python", code, "--wait"],
            env=cli_env(stack),
            stdout=subprocess.PIPE,
            stderr=secondary,
        )
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == b"done\n"
        terminal = b""
        while select.select([primary], [], [], 0.2)[0]:
            terminal += os.read(primary, 65536)
    finally:
        os.close(primary)
        os.close(secondary)
    assert re.search(rb"\r[^ ]+ spawn-[0-9a-f]{8} RUNNING \d+\.\ds\x1b\[K", terminal), terminal
    last = terminal.rsplit(b"\x1b[K", 1)[1]  # the spinner cleared, then the outcome
    assert re.fullmatch(rb"vx11: spawn-[0-9a-f]{8} DONE, exit 0, [^\r\n]+\r?\n", last), last
    piped = vx11(stack, "spawn", "python", code, "--wait")
    assert "\r" not in piped.stderr and "RUNNING" not in piped.stderr


def test_a_bash_spawn_runs_with_bash(stack, window):
    done = vx11(stack, "spawn", "bash", 'set -o pipefail; a=(x "$1"); [[ ${a[1]} == y ]] &&'
                " echo $BASH_VERSION; false | cat", "--arg", "y", "--wait")  # fmt: skip
    assert done.returncode == 1, done.stderr  # pipefail: false's status, not cat's
    assert re.fullmatch(r"\d+\.\d+\S*\n", done.stdout), done.stdout


def test_without_wait_the_spawn_id_is_printed_or_the_apis_answer_as_json(stack, window):
    done = vx11(stack, "spawn", "shell", "echo hello")
    assert done.returncode == 0
    spawn_id = done.stdout.strip()
    assert spawn_id.startswith("spawn-")
    assert wait_terminal(stack.base, spawn_id)["stdout"] == "hello\n"
    answer = json.loads(vx11(stack, "spawn", "shell", "true", "--json").stdout)
    assert (answer["status"], answer["error"]) == ("QUEUED", None)


def test_a_shell_script_comes_from_a_file_with_args_and_stdin(stack, window, tmp_path):
    script = tmp_path / "script.sh"
    script.write_text('echo "1=$1 2=$2"\ncat\n')
    stdin = tmp_path / "in.txt"
    stdin.write_text("fed in\n")
    done = vx11(
        stack, "spawn", "shell", "-f", str(script), "--arg", "a", "--arg", "b c",
        "--stdin-file", str(stdin), "--wait",
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "1=a 2=b c\nfed in\n"), done.stderr


def test_a_script_comes_from_standard_input_with_dash(stack, window):
    done = vx11(stack, "spawn", "shell", "-f", "-", "--wait", stdin="echo from-stdin\nexit 5\n")
    assert (done.returncode, done.stdout) == (5, "from-stdin\n")


UPPER = "import sys; print(repr(sys.stdin.read().upper()))"
"""A spawn that prints its stdin, upper-cased."""


def test_piped_standard_input_is_the_spawns(stack, window):
    done = subprocess.run(
        [str(VX11), "spawn", "python", UPPER, "--wait"],
        env=cli_env(stack), input=b"data", capture_output=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"'DATA'\n"), done.stderr
    shell = vx11(stack, "spawn", "shell", "tr a-z A-Z", "--wait", stdin="piped\n")
    assert (shell.returncode, shell.stdout) == (0, "PIPED\n"), shell.stderr


def test_a_file_on_standard_input_is_the_spawns_and_a_device_is_never_read(stack, window, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("from a file")
    with data.open("rb") as file:
        done = subprocess.run(
            [str(VX11), "spawn", "python", UPPER, "--wait"],
            env=cli_env(stack), stdin=file, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "'FROM A FILE'\n"), done.stderr
    devnull = vx11(stack, "spawn", "python", UPPER, "--wait")  # stdin is /dev/null
    assert (devnull.returncode, devnull.stdout) == (0, "''\n"), devnull.stderr
    primary, secondary = pty.openpty()  # a terminal nobody types into: never waited on
    try:
        on_terminal = subprocess.run(
            [str(VX11), "spawn", "python", UPPER, "--wait"],
            env=cli_env(stack), stdin=secondary, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        os.close(primary)
        os.close(secondary)
    assert (on_terminal.returncode, on_terminal.stdout) == (0, "''\n"), on_terminal.stderr


def test_no_stdin_leaves_a_pipe_that_never_ends_unread(stack, window):
    proc = subprocess.Popen(
        [str(VX11), "spawn", "python", UPPER, "--wait", "--no-stdin"],
        env=cli_env(stack), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.wait(timeout=30) == 0  # its stdin still open: it never read it
        assert proc.stdout.read() == "''\n"
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
    code_from_stdin = vx11(stack, "spawn", "shell", "-f", "-", "--wait", stdin="cat; echo end\n")
    assert (code_from_stdin.returncode, code_from_stdin.stdout) == (0, "end\n")


def test_request_fields_reach_the_spawn(stack, window):
    done = vx11(
        stack, "spawn", "python", "print(1)", "--ttl", "20", "--correlation-id", "fields-1",
        "--max-retries", "2", "--memory-mb", "128", "--max-processes", "8",
        "--metadata", '{"team": "cli"}', "--json", "--wait",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["ttl_seconds"], record["correlation_id"], record["metadata"]) == (
        20, "fields-1", {"team": "cli"},
    )  # fmt: skip
    assert (record["limits"]["memory_limit_mb"], record["limits"]["max_processes"]) == (128, 8)
    assert record["max_retries"] == 2 and record["stdout"] == "1\n"


def test_the_same_idempotency_key_gives_the_same_spawn(stack, window):
    key = f"cli-{uuid.uuid4().hex}"
    first = vx11(stack, "spawn", "shell", "true", "--idempotency-key", key).stdout
    again = vx11(stack, "spawn", "shell", "true", "--idempotency-key", key).stdout
    assert first == again and first.startswith("spawn-")


def test_a_refusal_by_policy_exits_77_in_one_line(stack):
    http("POST", f"{stack.base}/vx11/window/close", {"target": "spawner"}, TOKEN)
    done = vx11(stack, "spawn", "python", "print(1)", "--wait")
    assert done.returncode == 77
    assert done.stdout == ""
    one_error_line(done, "off_by_policy: ")
    assert "vx11 window open spawner" in done.stderr
    as_json = vx11(stack, "spawn", "python", "print(1)", "--json")
    assert as_json.returncode == 77
    assert json.loads(as_json.stdout)["error"] == "off_by_policy"


def test_a_timeout_exits_124(stack, window):
    done = vx11(stack, "spawn", "shell", "sleep 10", "--ttl", "1", "--wait")
    assert done.returncode == 124
    assert "TIMEOUT" in done.stderr and "wall_time_limit" in done.stderr


def test_a_waited_spawn_cancelled_from_elsewhere_exits_130(stack, window):
    tag = f"cancel-{uuid.uuid4().hex[:8]}"
    with vx11_running(
        stack, "spawn", "shell", "echo started; sleep 60", "-w", "--correlation-id", tag
    ) as proc:
        assert proc.stdout.readline() == "started\n"
        spawn_id = spawn_by_correlation(stack, tag)["spawn_id"]
        cancelled = vx11(stack, "spawn", "cancel", spawn_id)
        assert cancelled.returncode == 0
        assert cancelled.stdout.startswith(f"{spawn_id} CANCELLED")
        assert proc.wait(timeout=30) == 130
        assert "CANCELLED" in proc.stderr.read()
    finished = vx11(stack, "spawn", "shell", "true", "--wait")
    spawn_id = finished.stderr.split()[1]
    again = vx11(stack, "spawn", "cancel", spawn_id)
    assert again.returncode == 1
    one_error_line(again, "already_finished: ")
    assert "status DONE" in again.stderr


def test_ctrl_c_while_waiting_leaves_the_spawn_running_and_says_how_to_cancel(stack, window):
    tag = f"sigint-{uuid.uuid4().hex[:8]}"
    with vx11_running(
        stack, "spawn", "shell", "echo up; sleep 60", "--wait", "--correlation-id", tag
    ) as proc:
        assert proc.stdout.readline() == "up\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        stderr = proc.stderr.read()
    spawn_id = spawn_by_correlation(stack, tag)["spawn_id"]
    assert stderr == (
        f"vx11: error: interrupted; {spawn_id} goes on (vx11 spawn follow {spawn_id} follows "
        f"it again, vx11 spawn cancel {spawn_id} stops it)\n"
    )
    assert status_of(stack, spawn_id) == "RUNNING"
    assert vx11(stack, "spawn", "cancel", spawn_id).returncode == 0


def test_a_spawn_left_by_ctrl_c_is_followed_again_to_its_end_and_its_exit_code(stack, window):
    code = "import sys, time\nfor i in range(5):\n    print('tick', i, flush=True)\n" \
        "    time.sleep(0.8)\nsys.exit(3)"  # fmt: skip
    tag = f"follow-{uuid.uuid4().hex[:8]}"
    with vx11_running(stack, "spawn", "python", code, "-w", "--correlation-id", tag) as waited:
        assert waited.stdout.readline() == "tick 0\n"
        waited.send_signal(signal.SIGINT)
        assert waited.wait(timeout=10) == 130
    spawn_id = spawn_by_correlation(stack, tag)["spawn_id"]
    with vx11_running(stack, "spawn", "follow", spawn_id) as followed:
        assert followed.stdout.readline() == "tick 0\n"  # what it printed before, first
        assert status_of(stack, spawn_id) == "RUNNING"
        assert followed.wait(timeout=30) == 3
        assert followed.stdout.read() == "tick 1\ntick 2\ntick 3\ntick 4\n"
        assert followed.stderr.read().startswith(f"vx11: {spawn_id} FAILED, exit 3, ")
    again = vx11(stack, "spawn", "show", spawn_id, "--wait")
    assert again.returncode == 3
    assert again.stdout == "".join(f"tick {i}\n" for i in range(5))


# --- reading spawns -----------------------------------------------------------------------


def test_spawns_ls_is_an_aligned_table_with_filters_and_json(stack, window):
    tag = f"ls-{uuid.uuid4().hex[:8]}"
    ids = []
    for code in ("exit 0", "exit 2", "exit 0"):
        done = vx11(stack, "spawn", "shell", code, "--correlation-id", tag, "--wait")
        ids.append(done.stderr.split()[1])
    table = vx11(stack, "spawns", "ls", "--correlation-id", tag)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "ID", "STATUS", "TYPE", "EXIT", "CREATED", "(UTC)", "DURATION", "CORRELATION",
    ]  # fmt: skip
    assert [row.split()[:4] for row in rows] == [
        [ids[2], "DONE", "shell", "0"],
        [ids[1], "FAILED", "shell", "2"],
        [ids[0], "DONE", "shell", "0"],
    ]
    assert len({header.index("STATUS"), *(row.index(row.split()[1]) for row in rows)}) == 1
    failed = vx11(stack, "spawns", "ls", "--correlation-id", tag, "--status", "failed", "--json")
    assert [r["spawn_id"] for r in json.loads(failed.stdout)["spawns"]] == [ids[1]]
    api = http("GET", f"{stack.base}/vx11/spawns?correlation_id={tag}", headers=TOKEN)[1]
    assert json.loads(vx11(stack, "spawns", "ls", "--correlation-id", tag, "--json").stdout) == api
    paged = vx11(stack, "spawns", "ls", "--correlation-id", tag, "--limit", "1", "--all", "--json")
    assert [r["spawn_id"] for r in json.loads(paged.stdout)["spawns"]] == ids[::-1]
    one_page = vx11(stack, "spawns", "ls", "--correlation-id", tag, "--limit", "1")
    assert len(one_page.stdout.splitlines()) == 2
    assert "--all" in one_page.stderr
    since = vx11(stack, "spawns", "ls", "--correlation-id", tag, "--since", "1h", "--json")
    assert len(json.loads(since.stdout)["spawns"]) == 3


def test_spawn_show_reads_the_record_and_its_output(stack, window):
    done = vx11(stack, "spawn", "shell", "echo out; echo err >&2", "--correlation-id", "show-1")
    spawn_id = done.stdout.strip()
    record = wait_terminal(stack.base, spawn_id)
    shown = vx11(stack, "spawn", "show", spawn_id)
    assert shown.returncode == 0
    assert shown.stdout.startswith(f"status:      {spawn_id} DONE, exit 0")
    assert "correlation: show-1" in shown.stdout
    assert "--- stdout ---\nout\n--- stderr ---\nerr" in shown.stdout
    assert json.loads(vx11(stack, "spawn", "show", spawn_id, "--json").stdout) == record


# --- errors -------------------------------------------------------------------------------


def test_an_unreachable_gateway_exits_69_in_one_line(stack):
    done = vx11(stack, "--url", f"http://127.0.0.1:{free_port()}", "status")
    assert done.returncode == 69
    one_error_line(done, "unreachable: cannot reach the gateway at http://127.0.0.1:")


def test_a_gateway_that_never_answers_times_out_in_one_line(stack):
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        done = vx11(stack, "--url", url, "--timeout", "0.5", "status")
    assert time.monotonic() - started < 10
    assert done.returncode == 69
    one_error_line(done, "timeout: the gateway at ")


def test_an_answer_that_is_not_json_is_one_line(stack):
    class NotJson(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>a proxy page</html>")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotJson)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = vx11(stack, "--url", f"http://127.0.0.1:{server.server_port}", "status")
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 1
    one_error_line(done, "bad_response: the answer of GET /vx11/status is not JSON")


def test_a_bad_token_exits_77_in_one_line(stack):
    done = vx11(stack, "status", token="vx11_not-a-real-token")
    assert done.returncode == 77
    one_error_line(done, "invalid_token: ")


def test_an_unknown_spawn_is_404_in_one_line(stack):
    done = vx11(stack, "spawn", "show", "spawn-00000000")
    assert done.returncode == 1
    one_error_line(done, "not_found: ")
    assert vx11(stack, "spawn", "cancel", "spawn-00000000").returncode == 1


def test_a_request_the_gateway_rejects_names_the_field(stack, window):
    done = vx11(stack, "spawn", "python", "print(1)", "--memory-mb", "999999")
    assert done.returncode == 1
    one_error_line(done, "validation_error: ")
    assert "memory_limit_mb: must be between 16 and" in done.stderr


def test_without_a_token_development_uses_the_development_token(stack):
    assert vx11(stack, "status", token=None).returncode == 0
    production = vx11(stack, "status", token=None, VX11_ENV="production")
    assert production.returncode == 77
    one_error_line(production, "auth_required: no token: set VX11_TOKEN or pass --token")


# --- tokens over the API ------------------------------------------------------------------


def test_tokens_are_created_listed_used_and_revoked_over_the_api(stack, window):
    created = vx11(
        stack, "token", "create", "--label", "cli-e2e", "--scope", "spawn", "--scope", "read",
        "--expires-in", "30d", "--rate-limit", "50", "--max-active", "10",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("vx11_") and "shown once" in created.stderr
    me = json.loads(vx11(stack, "token", "whoami", "--json", token=token).stdout)
    assert (me["label"], me["scopes"]) == ("cli-e2e", ["spawn", "read"])
    assert (me["rate_limit_per_second"], me["max_active_spawns"]) == (50, 10)
    assert me["expires_at"] is not None
    listed = vx11(stack, "token", "list")
    assert me["token_id"] in listed.stdout and "cli-e2e" in listed.stdout
    assert token not in listed.stdout
    as_json = json.loads(vx11(stack, "token", "list", "--json").stdout)
    assert me["token_id"] in [t["token_id"] for t in as_json["tokens"]]

    ran = vx11(stack, "spawn", "shell", "echo mine", "--wait", token=token)
    assert (ran.returncode, ran.stdout) == (0, "mine\n")
    no_window_scope = vx11(stack, "window", "open", "spawner", token=token)
    assert no_window_scope.returncode == 77
    one_error_line(no_window_scope, "insufficient_scope: this token lacks the window scope")
    not_admin = vx11(stack, "token", "list", token=token)
    assert not_admin.returncode == 77

    revoked = vx11(stack, "token", "revoke", me["token_id"], "--json")
    assert json.loads(revoked.stdout) == {"token_id": me["token_id"], "revoked": True}
    after = vx11(stack, "status", token=token)
    assert after.returncode == 77
    one_error_line(after, "invalid_token: ")
    unknown = vx11(stack, "token", "revoke", me["token_id"])
    assert unknown.returncode == 1
    one_error_line(unknown, "not_found: ")


# --- the README's first token ---------------------------------------------------------------


def readme_first_token_steps() -> list[str]:
    """The commands of the README's block that makes the first token, one per line, as a
    newcomer types them (their comments left out)."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    [block] = [b for b in blocks if b.startswith("vx11 token create --local ")]
    return [re.sub(r"\s+#.*$", "", line) for line in block.splitlines() if line.strip()]


def test_the_readmes_first_token_opens_the_window_and_runs_a_spawn(stack):
    """The README's steps, typed as they are: the token made with --local and exported
    opens the window and runs code, then makes, lists and revokes a second token."""
    http("POST", f"{stack.base}/vx11/window/close", {"target": "spawner"}, TOKEN)
    env = cli_env(stack, token=None, VX11_REDIS_URL=stack.redis.url)
    env["PATH"] = f"{VX11.parent}{os.pathsep}{env['PATH']}"
    steps = readme_first_token_steps()
    assert steps[0].startswith("vx11 token create --local ")
    assert steps[1] == "export VX11_TOKEN=vx11_..."
    assert any(step.startswith("vx11 spawn ") and "--wait" in step for step in steps)
    ran: dict[str, subprocess.CompletedProcess] = {}
    token_id = None
    for step in steps:
        if step.startswith("export VX11_TOKEN="):
            env["VX11_TOKEN"] = ran["vx11 token create"].stdout.strip()
            continue
        command = step.replace("<id>", str(token_id))
        done = subprocess.run(
            ["bash", "-c", command], env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"{step}: exit {done.returncode}: {done.stderr}"
        ran[" ".join(step.split()[:3])] = done
        if step.startswith("vx11 token create"):
            token_id = re.search(r"^id (\w+),", done.stderr, re.M)[1]
    assert env["VX11_TOKEN"].startswith("vx11_")
    spawned = ran["vx11 spawn python"]
    assert spawned.stdout == "it works\n"
    assert re.search(r"spawn-[0-9a-f]{8} DONE, exit 0", spawned.stderr), spawned.stderr
    assert "ci" in ran["vx11 token list"].stdout


def test_files_go_up_and_artifacts_come_down_into_the_out_directory(stack, window, tmp_path):
    """The issue's command: ``vx11 spawn python -f main.py --file data.csv --artifact
    'out/*' --out DIR --wait``."""
    (tmp_path / "main.py").write_text(
        "import os\n"
        "os.makedirs('out')\n"
        "rows = open('data.csv').read().splitlines()\n"
        "open('out/count.txt', 'w').write(str(len(rows)))\n"
        "open('out/raw.bin', 'wb').write(bytes(range(256)))\n"
        "print('rows', len(rows))\n"
    )
    (tmp_path / "data.csv").write_text("a\nb\nc\n")
    done = vx11(
        stack, "spawn", "python", "-f", "main.py", "--file", "data.csv",
        "--artifact", "out/*", "--out", "downloaded", "--wait", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "rows 3\n"
    out = tmp_path / "downloaded" / "out"
    assert (out / "count.txt").read_text() == "3"
    assert (out / "raw.bin").read_bytes() == bytes(range(256))


def test_out_without_wait_is_a_usage_error(stack, window, tmp_path):
    done = vx11(stack, "spawn", "shell", "true", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "--wait" in done.stderr, done


def test_a_waited_spawn_writes_its_output_bytes_exactly(stack, window):
    done = subprocess.run(
        [str(VX11), "spawn", "shell", r"printf '\377\376ok\000'; printf '\303' >&2", "--wait"],
        env=cli_env(stack), stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"\xff\xfeok\x00"
    assert done.stderr.startswith(b"\xc3\n")  # and then vx11's own line, on a line of its own
