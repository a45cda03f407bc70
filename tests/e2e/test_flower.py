"""Flower behind its login, seen by a real browser: ``vx11 up`` starts Flower with HTTP
basic auth, and Debian's headless chromium, driven by Playwright, is refused without the
login, then logs in and finds the live worker, a finished ``vx11.spawn`` with its
arguments and result, and the spawner queue's depth. Screenshots go to test-artifacts/."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support import (
    ROOT,
    TOKEN,
    UP_SERVICE_UID,
    child_pids,
    free_port,
    http,
    up_directory,
    wait_for,
    wait_terminal,
)
from vx11.cli.stack import FLOWER_PASSWORD_FILE, StackError, flower_login
from vx11.core.config import Settings

VX11 = [sys.executable, "-m", "vx11.cli"]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
FLOWER_HINT = re.compile(
    r"^Flower: (?P<url>\S+), login (?P<user>\S+) / (?P<password>\S+) "
    r"\(password kept in (?P<kept_in>\S+)\)$",
    re.MULTILINE,
)
WAIT_MS = 60_000
"""Longest wait for one page or element, milliseconds (other tests share the two cores)."""


# --- the login ----------------------------------------------------------------------


def test_development_generates_a_flower_password_once_and_keeps_it_private(tmp_path):
    settings = Settings.from_env({"VX11_DATA_DIR": str(tmp_path)})
    first = flower_login(settings)
    kept_in = tmp_path / FLOWER_PASSWORD_FILE
    assert (first.user, first.kept_in) == ("admin", kept_in)
    assert len(first.password) >= 20
    assert kept_in.read_text().strip() == first.password
    assert stat.S_IMODE(kept_in.stat().st_mode) == 0o600
    assert flower_login(settings) == first, "the same password on every start"
    assert first.basic_auth == f"admin:{first.password}"


def test_a_configured_flower_password_is_used_and_nothing_is_written(tmp_path):
    settings = Settings.from_env(
        {"VX11_DATA_DIR": str(tmp_path), "VX11_FLOWER_USER": "ops",
         "VX11_FLOWER_PASSWORD": "pa:ss"}
    )  # fmt: skip
    login = flower_login(settings)
    assert (login.basic_auth, login.kept_in) == ("ops:pa:ss", None)
    assert not (tmp_path / FLOWER_PASSWORD_FILE).exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VX11_FLOWER_USER", "ad:min"), ("VX11_FLOWER_USER", ""), ("VX11_FLOWER_PASSWORD", "a,b")],
)
def test_a_login_flower_would_misread_is_refused(variable, value):
    with pytest.raises(ValueError, match=variable):
        Settings.from_env({variable: value})


def test_production_refuses_to_start_flower_without_a_password(tmp_path):
    settings = Settings.from_env({"VX11_ENV": "production", "VX11_DATA_DIR": str(tmp_path)})
    with pytest.raises(StackError, match="VX11_FLOWER_PASSWORD"):
        flower_login(settings)
    assert not (tmp_path / FLOWER_PASSWORD_FILE).exists()


def test_a_password_that_cannot_be_kept_is_a_clear_error(tmp_path):
    (tmp_path / "file").touch()
    settings = Settings.from_env({"VX11_DATA_DIR": str(tmp_path / "file" / "data")})
    with pytest.raises(StackError, match=r"cannot keep Flower's password .* VX11_FLOWER_PASSWORD"):
        flower_login(settings)


def test_vx11_up_in_production_without_a_flower_password_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VX11_", "FLOWER_"))}
    env.update(
        VX11_ENV="production",
        VX11_DATA_DIR=str(tmp_path / "data"),
        VX11_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: never reached
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [*VX11, "up", "--port", str(free_port()), "--flower-port", str(free_port())],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "Error: Flower needs a password in production: set VX11_FLOWER_PASSWORD, "
        "or start without Flower (--no-flower)"
    ]
    assert not (tmp_path / "data").exists(), "refused before anything started"


# --- the browser --------------------------------------------------------------------


@dataclass
class Up:
    """One ``vx11 up`` and what its quick start printed."""

    base: str
    flower: str
    user: str
    password: str
    kept_in: Path


def stop_up(proc: subprocess.Popen) -> None:
    """Ctrl-C, as an operator stops it; its processes are killed if it does not stop."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        for pid in child_pids(proc.pid):  # each leads a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


@pytest.fixture
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: Debian's chromium (scripts/test installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is missing: install the test extra"
    )
    sync_api.expect.set_options(timeout=WAIT_MS)
    with sync_api.sync_playwright() as playwright:
        # Debian's chromium, never a browser Playwright downloads.
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def up(redis_url, tmp_path) -> Iterator[Up]:
    """``vx11 up`` (what ``./scripts/run`` executes) with no Flower password configured,
    one worker process, on the tests' private Redis."""
    with up_directory() as base:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VX11_", "FLOWER_"))}
        env.update(
            VX11_REDIS_URL=redis_url,
            VX11_DATA_DIR=str(base / "data"),
            VX11_SANDBOX_ROOT=str(base / "sandbox"),
            VX11_SERVICE_USER=str(UP_SERVICE_UID),
            PYTHONPATH=str(ROOT),
        )
        port, flower_port = free_port(), free_port()
        output = tmp_path / "up.log"
        with output.open("wb") as log:
            proc = subprocess.Popen(
                [*VX11, "up", "--port", str(port), "--flower-port", str(flower_port),
                 "--concurrency", "1"],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            try:
                hint = wait_for(
                    lambda: proc.poll() is None and FLOWER_HINT.search(output.read_text()),
                    timeout=120,
                )
            except AssertionError:
                pytest.fail(f"vx11 up did not print Flower's login:\n{output.read_text()}")
            assert Path(hint["kept_in"]) == base / "data" / FLOWER_PASSWORD_FILE
            yield Up(f"http://127.0.0.1:{port}", hint["url"], hint["user"], hint["password"],
                     Path(hint["kept_in"]))  # fmt: skip
        finally:
            stop_up(proc)


def spawn(base: str, task_type: str, code: str, **fields) -> dict:
    body = {"task_type": task_type, "code": code, **fields}
    status, accepted = http("POST", f"{base}/vx11/spawn", body, TOKEN)
    assert status == 200, accepted
    return accepted


def status_of(base: str, spawn_id: str) -> str:
    return http("GET", f"{base}/vx11/spawn/{spawn_id}", headers=TOKEN)[1]["status"]


def statuses_of(browser, url: str, credentials: dict[str, str] | None) -> list[int]:
    """The HTTP statuses the browser received opening ``url`` with ``credentials``.
    (Without any, chromium ends the navigation with ERR_INVALID_AUTH_CREDENTIALS after
    the 401 has arrived, so the statuses are read from the responses, not from goto.)"""
    from playwright.sync_api import Error

    context = browser.new_context(http_credentials=credentials)
    page = context.new_page()
    statuses: list[int] = []
    page.on("response", lambda response: statuses.append(response.status))
    with contextlib.suppress(Error):
        page.goto(url, timeout=WAIT_MS)
    context.close()
    return statuses


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"flower-{name}.png", full_page=True)


@pytest.mark.e2e
def test_a_browser_logs_into_flower_and_sees_the_worker_the_spawn_and_the_queue(
    browser, up, redis_url
):
    from playwright.sync_api import expect

    # The password printed with the quick start is the one kept in the data directory.
    assert up.kept_in.read_text().strip() == up.password
    assert up.flower.startswith("http://127.0.0.1:")

    # No login, or a wrong one: 401, for the browser as for any client.
    assert statuses_of(browser, up.flower, None) == [401]
    assert statuses_of(browser, up.flower, {"username": up.user, "password": "wrong"}) == [401]
    for path in ("/", "/tasks", f"/task/{'0' * 32}", "/broker", "/api/workers", "/api/tasks"):
        assert http("GET", f"{up.flower}{path}")[0] == 401, path

    context = browser.new_context(
        http_credentials={"username": up.user, "password": up.password},
        viewport={"width": 1400, "height": 900},
    )
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        # The dashboard lists the live worker (from its heartbeat events: Flower's event
        # receiver is running, so it will see the spawn's task events too).
        worker = f"vx11@{socket.gethostname()}"
        assert page.goto(up.flower).status == 200
        row = page.locator("#workers-table tbody tr", has_text=worker)
        expect(row).to_contain_text("Online")

        # A spawn run to DONE through the API...
        status, window = http(
            "POST", f"{up.base}/vx11/window/open", {"target": "spawner", "ttl_seconds": 600},
            TOKEN,
        )  # fmt: skip
        assert status == 200, window
        done = spawn(up.base, "python", 'print("seen by Flower")', correlation_id="flower-e2e")
        record = wait_terminal(up.base, done["spawn_id"])
        assert record["status"] == "DONE", record
        uuid = done["spawn_uuid"]

        # ...is on the tasks page by name, SUCCESS...
        page.goto(f"{up.flower}/tasks")
        task_row = page.locator("#tasks-table tbody tr", has_text=uuid)
        expect(task_row).to_contain_text("vx11.spawn")
        expect(task_row).to_contain_text("SUCCESS")
        screenshot(page, "tasks")

        # ...and counted on the dashboard, against the worker that ran it.
        page.goto(up.flower)
        cells = page.locator("#workers-table tbody tr", has_text=worker).locator("td")
        expect(cells.nth(1)).to_have_text("Online")
        expect(cells.nth(3)).to_have_text("1")  # Processed
        expect(cells.nth(5)).to_have_text("1")  # Succeeded
        screenshot(page, "dashboard")

        # ...and its page shows its arguments and its result (the spawn's summary).
        page.goto(f"{up.flower}/task/{uuid}")

        def field(name: str):
            term = page.locator("dt", has_text=re.compile(f"^{name}$"))
            return page.locator("#task-page .detail-row", has=term).locator("dd")

        expect(field("Name")).to_have_text("vx11.spawn")
        expect(field("Status")).to_have_text("SUCCESS")
        for argument in (
            f"'spawn_uuid': '{uuid}'",
            "'task_type': 'python'",
            """'code': 'print("seen by Flower")'""",
            "'correlation_id': 'flower-e2e'",
        ):
            expect(field("Keyword arguments")).to_contain_text(argument)
        for result in (f"'spawn_id': '{done['spawn_id']}'", "'status': 'DONE'", "'exit_code': 0"):
            expect(field("Result")).to_contain_text(result)
        expect(field("Result")).to_contain_text("'stdout': 'seen by Flower")
        screenshot(page, "task")

        # A spawn that ends FAILED is a FAILURE in Flower, never a SUCCESS: its API and
        # its task page say so, with the spawn's state and exit code (not its output).
        failed = spawn(up.base, "shell", "echo secret-output; exit 3")
        assert wait_terminal(up.base, failed["spawn_id"])["status"] == "FAILED"
        login = {"Authorization": "Basic " + base64.b64encode(
            f"{up.user}:{up.password}".encode()).decode()}  # fmt: skip
        message = f"{failed['spawn_id']} FAILED, exit 3"

        def flower_info() -> dict | None:
            status, info = http(
                "GET", f"{up.flower}/api/task/info/{failed['spawn_uuid']}", headers=login
            )
            return info if status == 200 and info.get("state") == "FAILURE" else None

        info = wait_for(flower_info, timeout=30)
        assert message in info["exception"] and "SpawnFailed" in info["exception"]
        shown = [info.get(key) for key in ("exception", "traceback", "result")]
        assert "secret-output" not in json.dumps(shown), shown
        page.goto(f"{up.flower}/task/{failed['spawn_uuid']}")
        expect(field("Status")).to_have_text("FAILURE")
        expect(field("Exception")).to_contain_text(message)
        screenshot(page, "task-failed")

        # Flower's /metrics needs no login: it names tasks and workers, never a spawn's
        # arguments or output.
        status, metrics = http("GET", f"{up.flower}/metrics")
        assert status == 200 and 'task="vx11.spawn"' in metrics
        assert "seen by Flower" not in metrics and uuid not in metrics

        # The spawner queue's depth: the one worker process runs a long spawn, and the
        # two submitted after it wait in the broker.
        running = spawn(up.base, "shell", "sleep 120", ttl_seconds=150)
        wait_for(lambda: status_of(up.base, running["spawn_id"]) == "RUNNING", timeout=60)
        waiting = [spawn(up.base, "shell", "echo later") for _ in range(2)]
        with redis.Redis.from_url(redis_url) as broker:
            assert broker.llen("spawner") == 2
        page.goto(f"{up.flower}/broker")
        queue = page.locator("#queue-table tbody tr", has_text="spawner")
        expect(queue.locator("td").nth(0)).to_have_text("spawner")
        expect(queue.locator("td").nth(1)).to_have_text("2")  # Messages
        screenshot(page, "broker")
        for accepted in [running, *waiting]:
            status, cancelled = http(
                "POST", f"{up.base}/vx11/spawn/{accepted['spawn_id']}/cancel", headers=TOKEN
            )
            assert status == 200, cancelled
    finally:
        context.close()
