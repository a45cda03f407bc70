"""A worker started as root gives root up before it starts (:mod:`workers.service`):
nothing of it runs as the host's root, spawns still reach the bwrap level, each as a
uid of the sandbox range, and it stops, or dies, as a worker does.

The stack's worker is started as root (these tests run as root) with a service user
given as a bare uid, so the test needs no account on the machine."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from tests.support import (
    SANDBOX_UIDS,
    refused_worker,
    start_worker,
    wait_for,
    wait_terminal,
)

SERVICE_UID = 10123
"""The service user of these tests: outside the sandbox range, named by no account."""

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="a worker gives root up only if it has it"),
]


def ids(pid: int) -> dict[str, list[int]]:
    """Real, effective, saved and filesystem uids and gids of ``pid``, and its effective
    capabilities, as the host sees them."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid"):
            fields[name] = [int(v) for v in value.split()]
        elif name == "CapEff":
            fields[name] = [int(value, 16)]
    return fields


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [tree for child in children for tree in [child, *descendants(child)]]


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    ledger = Path(tempfile.mkdtemp(prefix="vx11-e2e-ledger-"))
    os.chmod(ledger, 0o755)
    (ledger / "ledger.db").touch()  # the gateway, root here, writes it too; SQLite
    for path in (ledger, ledger / "ledger.db"):  # keeps its journal the file owner's
        os.chown(path, SERVICE_UID, SERVICE_UID)
    yield {
        "service_user": str(SERVICE_UID),
        "database_url": os.environ.get("VX11_TEST_DATABASE_URL")
        or f"sqlite:///{ledger / 'ledger.db'}",
        "sandbox_uids": f"{SANDBOX_UIDS.start}-{SANDBOX_UIDS.stop - 1}",
    }
    shutil.rmtree(ledger, ignore_errors=True)


def test_nothing_of_the_worker_runs_as_root(stack):
    waiter = stack.worker.proc.pid
    worker = descendants(waiter)[0]
    assert ids(waiter) == {
        "Uid": [SERVICE_UID] * 4, "Gid": [SERVICE_UID] * 4, "CapEff": [0],
    }  # fmt: skip
    for pid in descendants(waiter):  # the worker, its pool, their slots
        found = ids(pid)
        assert found["Uid"][0] != 0 and found["Gid"][0] != 0, (pid, found)
    # the worker's namespace: its root is the service user, the rest the sandbox range
    uid_map = Path(f"/proc/{worker}/uid_map").read_text().split()
    first, width = str(SANDBOX_UIDS.start), str(len(SANDBOX_UIDS))
    assert uid_map == ["0", str(SERVICE_UID), "1", first, first, width]


def test_the_cgroups_made_as_root_are_the_workers_own(stack):
    """The service user may not make cgroups: those the worker made while it was root
    reach its sandbox, whose spawns run in them."""
    if not os.access("/sys/fs/cgroup", os.W_OK):
        pytest.skip("no writable cgroup tree here")
    log = stack.worker.log()
    assert "sandbox level bwrap (cgroup v" in log and "cgroups unavailable" not in log, log
    stack.open_window()
    record = wait_terminal(stack.base, stack.spawn("shell", "true")["spawn_id"])
    assert record["status"] == "DONE", record


def test_spawns_reach_the_bwrap_level_each_as_a_sandbox_uid(stack):
    stack.open_window()
    spawn = stack.spawn("python", "import time; print('up', flush=True); time.sleep(3)")

    def run_uids() -> set[int]:
        found = {ids(pid)["Uid"][0] for pid in descendants(stack.worker.proc.pid)}
        return found & set(SANDBOX_UIDS)

    wait_for(run_uids, timeout=30)
    record = wait_terminal(stack.base, spawn["spawn_id"])
    assert (record["status"], record["stdout"], record["sandbox"]) == ("DONE", "up\n", "bwrap")


def test_a_basic_worker_gives_root_up_too(stack, tmp_path):
    stack.worker.stop()
    basic = start_worker({**stack.config, "sandbox": "basic"}, tmp_path, name="basic")
    try:
        assert ids(basic.proc.pid)["Uid"] == [SERVICE_UID] * 4
        stack.open_window()
        spawn = stack.spawn("shell", "id -u; touch made && ls -n made | cut -d' ' -f3")
        record = wait_terminal(stack.base, spawn["spawn_id"])
        assert record["status"] == "DONE", record
        uid, owner = record["stdout"].split()
        assert uid == owner and uid != str(SERVICE_UID)
        assert int(uid) in SANDBOX_UIDS
    finally:
        basic.stop()
    assert basic.proc.returncode == 0, basic.log()


def test_the_worker_dies_with_its_waiter(stack, tmp_path):
    worker = start_worker(stack.config, tmp_path, name="killed")
    inner = descendants(worker.proc.pid)[0]
    os.kill(worker.proc.pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{inner}").exists() or _zombie(inner), timeout=15)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"


@pytest.mark.parametrize(
    ("user", "said"),
    [
        ("no-such-vx11-user", "'no-such-vx11-user' does not exist"),
        ("0", "must not be root"),
        (str(SANDBOX_UIDS.start), "is inside VX11_SANDBOX_UIDS"),
    ],
)
def test_a_service_user_that_cannot_be_is_refused_at_start(stack, tmp_path, user, said):
    line = refused_worker({**stack.config, "service_user": user}, tmp_path)
    assert "the worker does not start: VX11_SERVICE_USER" in line and said in line
