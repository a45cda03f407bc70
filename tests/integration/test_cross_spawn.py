"""Cross-spawn isolation at the bwrap level (issue 15, "What must not get worse"): a run
shares nothing with the runs before it on the same slot, whatever they tried to leave.

Every run here goes through ``run_sandboxed`` one after another in this test process,
with the configuration a worker chooses (``levels.choose`` with ``VX11_SANDBOX=bwrap``):
the same slot, as a pool process runs its spawns. Today each run is a fresh bubblewrap;
with a per-slot launcher that forks runs (and a warm Python) the same tests must pass.

Each test follows one pattern (:func:`cross_runs`):

1. a *reference* run of the checking code, on the slot before anything was left there:
   what a clean run sees;
2. the *polluting* run: code that tries to leave something behind, followed in the same
   run by the checking code. That it differs from the reference there is the proof the
   check can see the leftover at all (each test must be able to fail);
3. from the host, as soon as the polluting run returned: no process of it is left;
4. the *next* run, of the same task type or of the other one, checks again: it must see
   exactly what the reference run saw.

The tests count processes of the sandbox's uid descended from this process: ``serial``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import RUN_UID, SANDBOX_UIDS, idle_slot_pids, wait_for
from vx11.core.config import Settings
from workers.sandbox import Limits, Outcome, SandboxConfig, SandboxError, levels, run_sandboxed
from workers.sandbox.process import adopting_orphans
from workers.sandbox.slot import SLOTS

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the sandbox switches to its own uid and makes cgroups as root"
    ),
    pytest.mark.serial,  # counts every process of the sandbox's uid
]

MIB = 1 << 20
TMPFS_MB = 64
DRAIN_MB = 4
TEARDOWN_GRACE = 1.0
"""Seconds a killed process may take to disappear (be reaped) on the host."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
TAG = "vx11x"
"""How the command lines of the processes the tests leave behind start."""
SMALL_PEAK_KB = 40 * 1024
SMALL_CPU_MS = 500

COMBOS = [
    pytest.param("python", "python", id="python-then-python"),
    pytest.param("shell", "python", id="shell-then-python"),
    pytest.param("python", "shell", id="python-then-shell"),
]


def code(text: str) -> str:
    return textwrap.dedent(text).strip("\n") + "\n"


# --- processes on the host ------------------------------------------------------------------


def proc_stat(pid: int | str) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks since boot), or None once gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], int(fields[19])


def proc_uid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(re.search(r"^Uid:\s+(\d+)", text, re.M).group(1))


def our_sandbox_processes() -> dict[int, tuple[int, str, int]]:
    """Processes of the sandbox's uid descended from this process (a subreaper, so the
    orphans of runs stay descendants), zombies too, but for idle slots: pid -> (start
    time, state, parent).

    Other sessions may run sandboxes as the same uid at the same time: only our
    descendants are ours."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := proc_stat(name)) is not None:
            table[int(name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    idle = idle_slot_pids(children)  # a slot kept between runs is not a leftover
    found, todo = {}, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if proc_uid(pid) in SANDBOX_UIDS and pid not in idle:
            found[pid] = (table[pid][2], table[pid][1], table[pid][0])
    return found


def cmdline_pids(marker: str) -> list[int]:
    """Pids of the processes on this machine whose command line contains ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path("/proc", name, "cmdline").read_bytes():
                    found.append(int(name))
    return found


def end_our_sandbox_processes() -> None:
    """Kill what a failed test left behind, and reap our own children among it."""
    for pid, (_, _, ppid) in our_sandbox_processes().items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if ppid == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def boot_ticks() -> int:
    """Now, in the clock of ``/proc/<pid>/stat``'s start time (ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLK_TCK)


# --- the slot ---------------------------------------------------------------------------------


def make_limits(**overrides) -> Limits:
    values = {
        "wall_time": 5.0,
        "cpu_time": 10,
        "memory_mb": 256,
        "max_processes": 32,
        "max_file_size_mb": 8,
        "output_bytes": 256 * 1024,
    }
    values.update(overrides)
    return Limits(**values)


def clean(outcome: Outcome) -> bool:
    return (outcome.exit_code, outcome.term_signal, outcome.limit_hit) == (0, None, None)


@dataclass
class Slot:
    """The configuration a worker's pool process runs its spawns with, one after another."""

    config: SandboxConfig

    def run(self, task_type: str, source: str, *, args: tuple[str, ...] = (), **limits) -> Outcome:
        return run_sandboxed(
            task_type, source, limits=make_limits(**limits), config=self.config, args=args
        )

    def run_clean(self, task_type: str, source: str, **kwargs) -> Outcome:
        outcome = self.run(task_type, source, **kwargs)
        assert clean(outcome), outcome
        assert not outcome.stdout_truncated, "the report was cut: raise output_bytes"
        return outcome

    def assert_nothing_left_on_host(
        self, before: dict[int, tuple[int, str, int]], marker: str | None = None
    ) -> dict[int, tuple[int, str, int]]:
        """Nothing of the run that just returned is alive: no process whose command line
        carries ``marker`` (at once), no process of the sandbox's uid descended from this
        process that was not there before the run (a launcher kept between runs was),
        once SIGKILL had a moment to take effect.

        Returns the zombies among them (dead, not yet reaped: they hold a pid and count
        toward the uid's RLIMIT_NPROC, nothing else): :func:`assert_reaped` checks that
        the next run's return reaps them."""
        if marker is not None:
            assert cmdline_pids(marker) == [], "a tagged process outlived its run"
        deadline = time.monotonic() + TEARDOWN_GRACE
        while True:
            new = {
                pid: info
                for pid, info in our_sandbox_processes().items()
                if before.get(pid, (None,))[0] != info[0]
            }
            running = {pid: info for pid, info in new.items() if info[1] not in "ZX"}
            if not running or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert not running, f"processes of the sandbox's uid outlived the run: {describe(running)}"
        return new


def describe(processes: dict[int, tuple[int, str, int]]) -> str:
    def name(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return "?"

    return ", ".join(
        f"{pid} ({name(pid)}, state {state}, parent {ppid})"
        for pid, (_, state, ppid) in processes.items()
    )


def assert_reaped(zombies: dict[int, tuple[int, str, int]]) -> None:
    """The zombies a run left are reaped by the time the next run has returned."""
    now = our_sandbox_processes()
    left = {pid: info for pid, info in zombies.items() if now.get(pid, (None,))[0] == info[0]}
    assert not left, f"zombies of an earlier run never reaped: {describe(left)}"


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> Iterator[None]:
    """Orphans of runs are adopted by this process, as by a worker's pool process."""
    with adopting_orphans(None):
        yield
        end_our_sandbox_processes()


@pytest.fixture(scope="module")
def slot(subreaper) -> Iterator[Slot]:
    root = Path(tempfile.mkdtemp(prefix="vx11-cross-spawn-", dir="/tmp"))
    root.chmod(0o711)
    settings = Settings.from_env(
        {
            "VX11_SANDBOX": "bwrap",
            "VX11_SANDBOX_ROOT": str(root),
            "VX11_SANDBOX_TMPFS_MB": str(TMPFS_MB),
            "VX11_OUTPUT_DRAIN_LIMIT_MB": str(DRAIN_MB),
        }
    )
    config = None
    try:
        try:
            config = levels.choose(settings)  # the worker's own choice, its probe included
        except SandboxError as exc:
            pytest.skip(f"the bwrap level does not work here: {exc}")
        assert config.level == "bwrap"
        yield Slot(config)
    finally:
        if config is not None and config.cgroups is not None:
            config.cgroups.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def end_tagged_leftovers() -> Iterator[None]:
    """What a failed test's runs left behind never burdens the next (the tests check
    for it). Only tagged processes: a launcher the slot keeps between runs stays, and
    each test compares against what was there before its own runs."""
    yield
    ours = our_sandbox_processes()
    for pid in cmdline_pids(TAG):
        if pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def token() -> str:
    return f"{TAG}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def needs_cgroups(slot: Slot) -> None:
    if slot.config.cgroups is None:
        pytest.skip("per-spawn cgroups are unavailable here: no cgroup figures to compare")


@dataclass
class Runs:
    reference_first: Outcome
    """The checking code of the first task type, on a slot nothing was left on."""
    reference_second: Outcome
    polluted: Outcome
    """The polluting code, then the checking code in the same run."""
    after: Outcome
    """The checking code of the second task type, after the polluting run."""


def cross_runs(
    slot: Slot,
    first: str,
    second: str,
    pollute: dict[str, str],
    check: dict[str, str],
    *,
    args: tuple[str, ...] = (),
    marker: str | None = None,
    **limits,
) -> Runs:
    """Reference runs, a ``first`` run that pollutes then checks, the host check for its
    processes, then a ``second`` run that checks. All must end cleanly."""
    reference_first = slot.run_clean(first, check[first], args=args)
    reference_second = (
        reference_first if first == second else slot.run_clean(second, check[second], args=args)
    )
    before = our_sandbox_processes()
    polluted = slot.run_clean(first, pollute[first] + check[first], args=args, **limits)
    zombies = slot.assert_nothing_left_on_host(before, marker)
    after = slot.run_clean(second, check[second], args=args)
    assert_reaped(zombies)
    return Runs(reference_first, reference_second, polluted, after)


# --- files --------------------------------------------------------------------------------------

PLACES = ("/work", "/tmp", "/dev/shm")

LIST_FILES = {
    "python": code(
        """
        import json, os
        found = []
        for place in ("/work", "/tmp", "/dev/shm"):
            for top, dirs, files in os.walk(place):
                found += [os.path.join(top, name) for name in dirs + files]
        print(json.dumps(found))
        """
    ),
    "shell": code(
        """
        find /work /tmp /dev/shm -mindepth 1
        """
    ),
}
PLANT_FILES = {
    "python": code(
        """
        import os, sys
        tag = sys.argv[1]
        for place in ("/work", "/tmp", "/dev/shm"):
            with open(os.path.join(place, tag), "w") as f:
                f.write("left behind")
            os.makedirs(os.path.join(place, "." + tag, "deeper"))
            open(os.path.join(place, "." + tag, "deeper", "file"), "w").close()
        with open(os.path.expanduser("~/.profile"), "a") as f:  # HOME is /work
            f.write("export VX11_LEFT=1\\n")
        """
    ),
    "shell": code(
        """
        tag="$1"
        for place in /work /tmp /dev/shm; do
            echo "left behind" > "$place/$tag"
            mkdir -p "$place/.$tag/deeper" && : > "$place/.$tag/deeper/file"
        done
        echo "export VX11_LEFT=1" >> ~/.profile
        """
    ),
}


def listed_files(task_type: str, outcome: Outcome) -> list[str]:
    if task_type == "python":
        return sorted(json.loads(outcome.stdout))
    return sorted(outcome.stdout.splitlines())


@pytest.mark.parametrize(("first", "second"), COMBOS)
def test_no_file_in_work_tmp_or_dev_shm_is_carried_over(slot, token, first, second):
    runs = cross_runs(slot, first, second, PLANT_FILES, LIST_FILES, args=(token,))
    planted = listed_files(first, runs.polluted)
    for place in PLACES:  # the check sees what the polluting run left
        assert f"{place}/{token}" in planted, planted
        assert f"{place}/.{token}/deeper/file" in planted, planted
    assert "/work/.profile" in planted
    assert listed_files(second, runs.after) == listed_files(second, runs.reference_second)
    assert not Path("/tmp", token).exists()  # nor on the host's /tmp, /dev/shm
    assert not Path("/dev/shm", token).exists()


# --- processes ------------------------------------------------------------------------------

SCAN_PROCESSES = {
    "python": code(
        """
        import json, os
        procs = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        stat = f.read().strip()
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        cmdline = f.read().replace(b"\\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                procs.append([stat, cmdline])
        print(json.dumps({"me": os.getpid(), "procs": procs}))
        """
    ),
    # Builtins only for the stat lines: the pids are listed once, before any child
    # (the command substitution, tr) of the scan exists.
    "shell": code(
        """
        for d in /proc/[0-9]*; do
            read -r line < "$d/stat" 2>/dev/null || continue
            echo "stat $line"
            echo "cmdline $(tr '\\0' ' ' < "$d/cmdline" 2>/dev/null)"
        done
        echo "me $$"
        """
    ),
}
LEAVE_PROCESSES = {
    # Three processes tagged "<token>-..." in their command line, and a fork of the
    # interpreter that ignores SIGTERM and holds the run's stdout and stderr.
    "python": code(
        """
        import os, signal, subprocess, sys, time
        tag = sys.argv[1] + "-"
        quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                 "stderr": subprocess.DEVNULL}
        if os.fork() == 0:  # a daemon: double fork, its own session
            os.setsid()
            if os.fork() == 0:
                devnull = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.execv("/bin/sh", ["/bin/sh", "-c", "while :; do sleep 1; done", tag + "daemon"])
            os._exit(0)
        os.symlink("/bin/sleep", "/tmp/" + tag + "nohup")
        subprocess.Popen(["nohup", "/tmp/" + tag + "nohup", "1000"], **quiet)
        subprocess.Popen(
            [sys.executable, "-c",
             "import signal, time\\n"
             "for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\\n"
             "    signal.signal(s, signal.SIG_IGN)\\n"
             "while True: time.sleep(1)\\n",
             tag + "ignores-sigterm"],
            start_new_session=True, **quiet,
        )
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            while True:
                time.sleep(1)

        def tagged():
            alive = 0
            for name in os.listdir("/proc"):
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        if tag.encode() in f.read():
                            alive += 1
                except OSError:
                    pass
            return alive

        deadline = time.monotonic() + 3
        while tagged() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        """
    ),
    "shell": code(
        """
        tag="$1-"
        ln -s /bin/sleep "/tmp/${tag}nohup"
        nohup "/tmp/${tag}nohup" 1000 </dev/null >/dev/null 2>&1 &
        ( setsid sh -c 'while :; do sleep 1; done' "${tag}daemon" & ) </dev/null >/dev/null 2>&1
        ( trap '' TERM HUP INT; exec sh -c 'while :; do sleep 1; done' "${tag}ignores-sigterm" ) &
        tries=0
        while [ $tries -lt 300 ]; do
            alive=0
            for d in /proc/[0-9]*; do
                case "$(tr '\\0' ' ' < "$d/cmdline" 2>/dev/null)" in
                    *"$tag"*) alive=$((alive + 1)) ;;
                esac
            done
            [ $alive -ge 3 ] && break
            sleep 0.01
            tries=$((tries + 1))
        done
        """
    ),
}


@dataclass(frozen=True)
class SeenProcess:
    pid: int
    name: str
    state: str
    ppid: int
    start: int
    """Ticks since boot."""
    cmdline: str


def seen_processes(task_type: str, outcome: Outcome) -> tuple[int, list[SeenProcess]]:
    """What a run's scan of its /proc showed: its own pid, and every process."""
    if task_type == "python":
        report = json.loads(outcome.stdout)
        me, pairs = report["me"], report["procs"]
    else:
        lines = outcome.stdout.splitlines()
        me = int(lines[-1].removeprefix("me "))
        stats = [line.removeprefix("stat ") for line in lines if line.startswith("stat ")]
        cmdlines = [line.removeprefix("cmdline ") for line in lines if line.startswith("cmdline ")]
        pairs = list(zip(stats, cmdlines, strict=True))
    procs = []
    for stat, cmdline in pairs:
        head, tail = stat.rsplit(")", 1)
        pid, name = head.split(" (", 1)
        fields = tail.split()
        procs.append(
            SeenProcess(int(pid), name, fields[0], int(fields[1]), int(fields[19]), cmdline)
        )
    return me, sorted(procs, key=lambda p: p.pid)


def older_than_the_run(seen: list[SeenProcess], started: int) -> list[SeenProcess]:
    """The processes a run sees that started before it, but for its own init (pid 1):
    the slot prepares it, in namespaces of its own, while the run before it still runs
    (docs/security.md, "Slots"), so it is older than the run and never seen by another."""
    return [
        p
        for p in seen
        if p.start < started and not (p.pid == 1 and p.cmdline.startswith("vx11-sandbox-init"))
    ]


@pytest.mark.parametrize(("first", "second"), COMBOS)
def test_no_process_is_carried_over(slot, token, first, second):
    """A daemon (setsid, double fork), a ``nohup sleep``, a process ignoring SIGTERM:
    gone on the host as soon as the run returns, and the next run's /proc shows only
    processes started for it (none of the first run, no launcher kept between runs)."""
    tag = f"{token}-"
    reference = slot.run_clean(second, SCAN_PROCESSES[second])
    before = our_sandbox_processes()
    polluted = slot.run_clean(first, LEAVE_PROCESSES[first] + SCAN_PROCESSES[first], args=(token,))
    _, seen = seen_processes(first, polluted)
    left = [p for p in seen if tag in p.cmdline]
    assert len(left) >= 3 and all(p.state in "RSD" for p in left), seen  # alive in its run
    zombies = slot.assert_nothing_left_on_host(before, tag)

    started = boot_ticks() - 1  # start times are whole ticks
    after = slot.run_clean(second, SCAN_PROCESSES[second])
    assert_reaped(zombies)
    me, seen = seen_processes(second, after)
    reference_me, reference_seen = seen_processes(second, reference)
    assert [p for p in seen if tag in p.cmdline] == []
    older = older_than_the_run(seen, started)
    assert older == [], f"processes older than the run are visible in it: {older}"
    assert me == reference_me  # a fresh pid namespace: no count of earlier runs
    assert [p.name for p in seen] == [p.name for p in reference_seen]
    assert [p.pid for p in seen] == [p.pid for p in reference_seen]


def test_the_process_check_sees_a_process_older_than_the_run(slot):
    """The start-time check above can fail: the host's own processes are older."""
    started = boot_ticks() - 1
    time.sleep(0.05)
    assert proc_stat(os.getpid())[2] < started
    assert proc_stat(1)[2] < started


# --- SysV IPC and POSIX message queues ------------------------------------------------------

IPC_PRELUDE = code(
    """
    import ctypes, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    librt = ctypes.CDLL("librt.so.1", use_errno=True)
    librt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    tag = sys.argv[1]
    KEY = int(tag[-7:], 16)
    QUEUE = ("/" + tag).encode()
    IPC_CREAT = 0o1000

    def call(function, *args):
        result = function(*args)
        return [result, os.strerror(ctypes.get_errno()) if result == -1 else None]
    """
)
MAKE_IPC = {
    "python": IPC_PRELUDE
    + code(
        """
        import struct
        shm = libc.shmget(KEY, 1 << 16, IPC_CREAT | 0o666)
        libc.semget(KEY, 3, IPC_CREAT | 0o666)
        msg = libc.msgget(KEY, IPC_CREAT | 0o666)
        message = struct.pack("l8s", 1, b"leftover")
        assert libc.msgsnd(msg, message, 8, 0) == 0, ctypes.get_errno()
        libc.shmat.restype = ctypes.c_void_p
        address = libc.shmat(shm, None, 0)
        ctypes.memmove(address, b"leftover", 8)
        queue = librt.mq_open(QUEUE, os.O_CREAT | os.O_RDWR, 0o666, None)
        assert queue >= 0, ctypes.get_errno()
        assert librt.mq_send(queue, b"leftover", 8, 0) == 0, ctypes.get_errno()
        """
    ),
    # ipcmk picks its own keys: the check sees them in /proc/sysvipc.
    "shell": code(
        """
        ipcmk -M 65536 >/dev/null && ipcmk -S 3 >/dev/null && ipcmk -Q >/dev/null
        """
    ),
}
CHECK_IPC = {
    "python": IPC_PRELUDE
    + code(
        """
        found = {
            "shm": call(libc.shmget, KEY, 0, 0),
            "sem": call(libc.semget, KEY, 0, 0),
            "msg": call(libc.msgget, KEY, 0),
            "mq": call(librt.mq_open, QUEUE, os.O_RDWR, 0, None),
        }
        for kind in ("shm", "sem", "msg"):
            with open(f"/proc/sysvipc/{kind}") as f:
                found["/proc/sysvipc/" + kind] = f.read().splitlines()[1:]
        print(json.dumps(found))
        """
    ),
    "shell": code(
        """
        cat /proc/sysvipc/shm /proc/sysvipc/sem /proc/sysvipc/msg
        ipcs
        """
    ),
}
ENOENT = os.strerror(2)


@pytest.mark.parametrize(("first", "second"), COMBOS)
def test_no_sysv_ipc_object_or_posix_message_queue_is_carried_over(slot, token, first, second):
    runs = cross_runs(slot, first, second, MAKE_IPC, CHECK_IPC, args=(token,))
    if first == "python":
        polluted = json.loads(runs.polluted.stdout)
        for kind in ("shm", "sem", "msg", "mq"):  # found in its own run
            assert polluted[kind][0] >= 0, polluted
        assert len(polluted["/proc/sysvipc/shm"]) == 1, polluted
        assert f"{int(token[-7:], 16)} " in polluted["/proc/sysvipc/shm"][0]
    else:
        listed = runs.polluted.stdout.count("\n") - runs.reference_first.stdout.count("\n")
        assert listed >= 6, runs.polluted.stdout  # 3 in /proc/sysvipc, 3 by ipcs
    if second == "python":
        after = json.loads(runs.after.stdout)
        for kind in ("shm", "sem", "msg", "mq"):
            assert after[kind] == [-1, ENOENT], (kind, after)
        for kind in ("shm", "sem", "msg"):
            assert after["/proc/sysvipc/" + kind] == [], after
        assert after == json.loads(runs.reference_second.stdout)
    else:
        assert runs.after.stdout == runs.reference_second.stdout
    assert f"{int(token[-7:], 16)} " not in Path("/proc/sysvipc/shm").read_text()  # host's
    assert not Path("/dev/mqueue", token).exists()


# --- the environment ------------------------------------------------------------------------

CHANGE_ENVIRONMENT = {
    "python": code(
        """
        import os
        os.environ["VX11_LEFT"] = "1"
        os.environ["PATH"] = "/tmp:" + os.environ["PATH"]
        os.environ["LANG"] = "C"
        del os.environ["TMPDIR"]
        for name in ("~/.profile", "~/.bashrc"):
            with open(os.path.expanduser(name), "a") as f:
                f.write("export VX11_LEFT=1\\n")
        os.chdir("/tmp")
        """
    ),
    "shell": code(
        """
        export VX11_LEFT=1 PATH="/tmp:$PATH" LANG=C
        unset TMPDIR
        echo "export VX11_LEFT=1" >> ~/.profile
        echo "export VX11_LEFT=1" >> ~/.bashrc
        cd /tmp
        """
    ),
}
SHOW_ENVIRONMENT = {
    "python": code(
        """
        import json, os
        with open("/proc/self/environ", "rb") as f:
            initial = sorted(f.read().decode().split("\\0"))
        print(json.dumps({"environ": dict(os.environ), "initial": initial, "cwd": os.getcwd(),
                          "home": sorted(os.listdir(os.path.expanduser("~")))}))
        """
    ),
    "shell": code(
        """
        env | sort
        echo ---
        tr '\\0' '\\n' < /proc/$$/environ | sort
        echo ---
        pwd
        ls -A ~
        """
    ),
}


def shown_environment(task_type: str, outcome: Outcome) -> Any:
    return json.loads(outcome.stdout) if task_type == "python" else outcome.stdout


@pytest.mark.parametrize(("first", "second"), COMBOS)
def test_no_environment_change_is_carried_over(slot, first, second):
    runs = cross_runs(slot, first, second, CHANGE_ENVIRONMENT, SHOW_ENVIRONMENT)
    polluted = shown_environment(first, runs.polluted)
    if first == "python":
        assert polluted["environ"]["VX11_LEFT"] == "1" and "TMPDIR" not in polluted["environ"]
        assert polluted["cwd"] == "/tmp"
    else:
        exported = polluted.split("---")[0]
        assert "VX11_LEFT=1" in exported and "TMPDIR" not in exported, polluted
    after = shown_environment(second, runs.after)
    assert after == shown_environment(second, runs.reference_second)
    if second == "python":  # and that clean environment is bwrap's, nothing more
        assert after["environ"] == {
            "HOME": "/work", "LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin",
            "PWD": "/work", "TMPDIR": "/tmp",
        }  # fmt: skip
        assert after["cwd"] == "/work"


# --- Python module and interpreter state ----------------------------------------------------

PYTHON_STATE = code(
    """
    _main_globals = sorted(globals())
    import atexit, builtins, gc, json, os, random, signal, sys, threading, warnings

    def _state():
        umask = os.umask(0o022)
        os.umask(umask)
        probe = random.random()
        random.seed(1)
        seeded = random.random()
        with open("/proc/self/status") as f:
            status = dict(line.split(":\\t", 1) for line in f if ":\\t" in line)

        def name(number):
            try:
                return signal.Signals(number).name
            except ValueError:
                return str(number)

        return {
            "main_globals": _main_globals,
            "modules": sorted(sys.modules),
            "json": sorted(vars(json)),
            "builtins": sorted(vars(builtins)),
            "print": repr(builtins.print),
            "path": sys.path,
            "argv": sys.argv,
            "flags": repr(sys.flags),
            "atexit": atexit._ncallbacks(),
            "recursionlimit": sys.getrecursionlimit(),
            "random_seeded_with_1": probe == seeded,
            "umask": umask,
            "signals": {name(n): repr(signal.getsignal(n)) for n in sorted(signal.valid_signals())},
            "signal_masks": {k: status[k].strip() for k in ("SigBlk", "SigIgn", "SigCgt")},
            "gc": [gc.isenabled(), gc.get_threshold()],
            "switchinterval": sys.getswitchinterval(),
            "int_max_str_digits": sys.get_int_max_str_digits(),
            "dont_write_bytecode": sys.dont_write_bytecode,
            "threads": [threading.active_count(), len(os.listdir("/proc/self/task"))],
            "warnings": repr(warnings.filters),
            "hooks": [repr(sys.excepthook), repr(sys.displayhook), repr(sys.breakpointhook),
                      sys.gettrace() is None, sys.getprofile() is None],
            "stdio": [[f.encoding, f.errors, f.line_buffering, f.write_through]
                      for f in (sys.stdin, sys.stdout, sys.stderr)],
            "cwd": os.getcwd(),
        }, probe

    _report, _probe = _state()
    sys.stdout.write(json.dumps({"state": _report, "random": _probe}) + "\\n")
    """
)
MODULE_STATE_KEYS_NO_RUN_CAN_CHANGE = {"flags", "stdio"}
"""sys.flags is read-only; the stdio streams are left to the output tests."""
CHANGE_PYTHON_STATE = code(
    """
    import atexit, builtins, gc, json, os, random, signal, sys, threading, time, types, warnings
    json.X = 1
    sys.modules["evil"] = types.ModuleType("evil")
    builtins.print = lambda *args, **kwargs: None
    builtins.evil = True
    sys.path.insert(0, "/tmp")
    sys.argv.append("evil")
    atexit.register(lambda: None)
    sys.setrecursionlimit(50)
    random.seed(1)
    os.umask(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, lambda *args: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    gc.disable()
    gc.set_threshold(1)
    sys.setswitchinterval(0.5)
    sys.set_int_max_str_digits(1000)
    sys.dont_write_bytecode = True
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    warnings.simplefilter("ignore")
    sys.excepthook = sys.displayhook = sys.breakpointhook = lambda *args: None
    sys.setprofile(lambda *args: None)
    os.chdir("/tmp")
    """
)


def python_state(outcome: Outcome) -> tuple[dict[str, Any], float]:
    report = json.loads(outcome.stdout)
    return report["state"], report["random"]


def test_no_python_module_or_interpreter_state_is_carried_over(slot):
    """Module attributes, sys.modules, builtins, sys.path, atexit, the recursion limit,
    random's state, the umask, signal handlers and masks, gc, threads, warnings, hooks,
    cwd: a run after one that changed them all sees what a fresh run sees."""
    check = {"python": PYTHON_STATE}
    runs = cross_runs(slot, "python", "python", {"python": CHANGE_PYTHON_STATE}, check)
    reference, reference_random = python_state(runs.reference_first)
    polluted, _ = python_state(runs.polluted)
    after, after_random = python_state(runs.after)
    changed = {key for key in reference if polluted[key] != reference[key]}
    assert changed == set(reference) - MODULE_STATE_KEYS_NO_RUN_CAN_CHANGE  # all seen
    assert polluted["random_seeded_with_1"] is True
    differing = {
        key: (after[key], reference[key]) for key in reference if after[key] != reference[key]
    }
    assert differing == {}
    # Not only reseeded: its own random state, not one shared with the runs before it.
    assert after_random != reference_random


def test_a_python_run_starts_as_python3_dash_I_would(slot, tmp_path):
    """A fresh run's interpreter state is that of ``python3 -I -u main.py`` started on the
    host with the sandbox's environment (a warm interpreter must not differ)."""
    sandboxed, _ = python_state(slot.run_clean("python", PYTHON_STATE))
    script = tmp_path / "main.py"
    script.write_text(PYTHON_STATE)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/work", "TMPDIR": "/tmp",
           "LANG": "C.UTF-8"}  # fmt: skip
    python = shutil.which(slot.config.python, path=env["PATH"])
    done = subprocess.run(
        [python, "-I", "-u", "main.py"], cwd=tmp_path, env=env, capture_output=True, check=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    host = json.loads(done.stdout)["state"]
    host["cwd"] = "/work"
    host.pop("umask"), sandboxed.pop("umask")  # inherited from the worker
    # Debian's /etc/python3.X/sitecustomize.py is in the host's /etc, not the sandbox's.
    for state in (host, sandboxed):
        state["modules"] = [name for name in state["modules"] if name != "sitecustomize"]
    assert {k: v for k, v in sandboxed.items() if v != host[k]} == {}


def test_python_runs_share_their_hash_secret_only_within_one_launcher(slot):
    """``python3 -I`` randomizes str and bytes hashes per process; a python run forked
    from the slot's warm interpreter inherits its secret, as it inherits its address
    layout (docs/security.md, "What runs of one launcher share"). That sharing ends with
    the launcher: a renewed one, or a run with ``warm_python`` off, has a secret of its
    own. One run could read the secret and craft colliding keys for a later run's input
    on the same launcher: the renewal bounds how many runs that can reach."""
    source = "print(hash('vx11'), hash(b'vx11'))\n"
    first = slot.run_clean("python", source).stdout
    second = slot.run_clean("python", source).stdout
    assert first == second  # one launcher: documented, not accidental
    SLOTS.close()  # what a renewal does
    renewed = slot.run_clean("python", source).stdout
    assert renewed.split()[0] != first.split()[0] and renewed.split()[1] != first.split()[1]


# --- file descriptors -----------------------------------------------------------------------

OPEN_FDS = {
    "python": code(
        """
        import os, socket
        kept = os.open("/work/kept-open", os.O_CREAT | os.O_RDWR)
        os.set_inheritable(kept, True)
        os.dup2(kept, 42)
        read_end, write_end = os.pipe()
        os.set_inheritable(read_end, True)
        os.set_inheritable(write_end, True)
        one, two = socket.socketpair()
        one.set_inheritable(True)
        os.memfd_create("kept", 0)
        os.dup2(1, 100)
        """
    ),
    "shell": code(
        """
        exec 7>/work/kept-open 8</dev/null 9>&1 3<&0
        """
    ),
}
LIST_FDS = {
    "python": code(
        """
        import json, os
        names = os.listdir("/proc/self/fd")
        fds = {}
        for name in names:
            try:
                fds[name] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:  # the listing's own, closed by now
                fds[name] = None
        print(json.dumps(fds))
        """
    ),
    "shell": code(
        """
        ls -l /proc/$$/fd
        """
    ),
}


def listed_fds(task_type: str, outcome: Outcome) -> dict[str, str | None]:
    """Descriptor -> what it is open on (pipes and sockets without their inode)."""
    if task_type == "python":
        fds = json.loads(outcome.stdout)
    else:
        links = [line.split(" -> ", 1) for line in outcome.stdout.splitlines() if " -> " in line]
        fds = {left.split()[-1]: target for left, target in links}
    return {
        fd: re.sub(r":\[\d+\]$", "", target) if target else target
        for fd, target in sorted(fds.items(), key=lambda item: int(item[0]))
    }


@pytest.mark.parametrize(("first", "second"), COMBOS)
def test_no_open_file_descriptor_is_carried_over(slot, first, second):
    runs = cross_runs(slot, first, second, OPEN_FDS, LIST_FDS)
    polluted = listed_fds(first, runs.polluted)
    assert polluted.get("7" if first == "shell" else "42") == "/work/kept-open", polluted
    after = listed_fds(second, runs.after)
    assert after == listed_fds(second, runs.reference_second)
    own = {"0": "/dev/null", "1": "pipe", "2": "pipe"}
    assert after == (own if second == "shell" else {**own, "3": None})


# --- rlimits --------------------------------------------------------------------------------

LOWER_RLIMITS = {
    "python": code(
        """
        import resource
        MIB = 1 << 20
        for kind, soft, hard in [
            (resource.RLIMIT_NOFILE, 64, 128),
            (resource.RLIMIT_NPROC, 50, 100),
            (resource.RLIMIT_STACK, 4 * MIB, 6 * MIB),
            (resource.RLIMIT_CPU, 5, 6),
            (resource.RLIMIT_FSIZE, 1 * MIB, 2 * MIB),
            (resource.RLIMIT_AS, 600 * MIB, 700 * MIB),
            (resource.RLIMIT_MEMLOCK, 0, 0),
            (resource.RLIMIT_MSGQUEUE, 0, 0),
        ]:
            resource.setrlimit(kind, (soft, hard))
        """
    ),
    "shell": code(
        """
        ulimit -n 64 && ulimit -u 50 && ulimit -s 4096 && ulimit -t 5 && ulimit -f 2048
        ulimit -v 600000 && ulimit -l 0
        """
    ),
}
SHOW_RLIMITS = {
    "python": code(
        """
        import json, resource
        limits = {name: resource.getrlimit(getattr(resource, name))
                  for name in dir(resource) if name.startswith("RLIMIT_")}
        with open("/proc/self/limits") as f:
            print(json.dumps({"getrlimit": limits, "proc": f.read()}))
        """
    ),
    "shell": code(
        """
        cat /proc/self/limits
        """
    ),
}


@pytest.mark.parametrize(("first", "second"), COMBOS)
def test_no_changed_rlimit_is_carried_over(slot, first, second):
    runs = cross_runs(slot, first, second, LOWER_RLIMITS, SHOW_RLIMITS)
    if first == "python":
        lowered = json.loads(runs.polluted.stdout)["getrlimit"]
        assert lowered["RLIMIT_NOFILE"] == [64, 128] and lowered["RLIMIT_NPROC"] == [50, 100]
    else:
        assert re.search(r"Max open files\s+64\s+64", runs.polluted.stdout), runs.polluted.stdout
    assert runs.polluted.stdout != runs.reference_first.stdout
    assert runs.after.stdout == runs.reference_second.stdout


# --- hostname, identity, working directory, namespaces --------------------------------------

TRY_CHANGE_IDENTITY = {
    # Each attempt is refused today (no capability in the run's namespaces): what a run
    # after it sees must in any case be what a fresh run sees.
    "python": code(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sethostname(b"vx11-evil", 9)
        libc.setdomainname(b"evil", 4)
        for attempt in (lambda: os.setgroups([0]), lambda: os.setgid(0), lambda: os.setuid(0)):
            try:
                attempt()
            except OSError:
                pass
        os.chdir("/tmp")
        """
    ),
    "shell": code(
        """
        hostname vx11-evil 2>/dev/null
        cd /tmp
        """
    ),
}
SHOW_IDENTITY = {
    "python": code(
        """
        import json, os, socket
        def read(path):
            with open(path, "rb") as f:
                return f.read().decode(errors="replace")
        print(json.dumps({
            "hostname": socket.gethostname(),
            "uname": list(os.uname()),
            "ids": [os.getresuid(), os.getresgid(), os.getgroups()],
            "cwd": os.getcwd(),
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pid1": read("/proc/1/cmdline"),
            "maps": [read("/proc/self/uid_map"), read("/proc/self/gid_map")],
            "cgroup": read("/proc/self/cgroup"),
            "namespaces": sorted(os.listdir("/proc/self/ns")),
        }))
        """
    ),
    "shell": code(
        """
        id
        uname -a
        pwd
        echo "pid $$ parent $PPID"
        tr '\\0' ' ' < /proc/1/cmdline; echo
        cat /proc/self/uid_map /proc/self/gid_map /proc/self/cgroup
        """
    ),
}


@pytest.mark.parametrize(("first", "second"), COMBOS)
def test_hostname_ids_cwd_and_pid_are_those_of_a_fresh_run(slot, first, second):
    runs = cross_runs(slot, first, second, TRY_CHANGE_IDENTITY, SHOW_IDENTITY)
    if first == "python":
        assert json.loads(runs.polluted.stdout)["cwd"] == "/tmp"  # the check sees a change
    else:
        assert "\n/tmp\n" in runs.polluted.stdout
    assert runs.after.stdout == runs.reference_second.stdout
    if second == "python":
        after = json.loads(runs.after.stdout)
        assert after["hostname"] == "vx11-sandbox" and after["cwd"] == "/work"
        assert after["ids"][0] == [RUN_UID] * 3


# --- cgroup figures -------------------------------------------------------------------------

ALLOCATE_AND_BURN = {
    "python": code(
        """
        import time
        block = b"x" * (100 << 20)
        while time.process_time() < 1.0:
            pass
        """
    ),
    # dash keeps a command substitution's output in memory, in a buffer that grows.
    "shell": code(
        """
        block=$(head -c 50000000 /dev/zero | tr '\\0' x)
        while :; do
            read -r _ _ _ _ _ _ _ _ _ _ _ _ _ utime stime _ < /proc/$$/stat
            [ $((utime + stime)) -ge 110 ] && break
            i=0; while [ $i -lt 1000 ]; do i=$((i + 1)); done
        done
        """
    ),
}
TINY = {"python": "print(1)\n", "shell": "echo 1\n"}


@pytest.mark.usefixtures("needs_cgroups")
@pytest.mark.parametrize(("first", "second"), COMBOS)
def test_peak_memory_and_cpu_time_are_the_runs_own(slot, first, second):
    runs = cross_runs(slot, first, second, ALLOCATE_AND_BURN, TINY)
    polluted = runs.polluted
    assert polluted.peak_memory_kb >= 80 * 1024 and polluted.cpu_time_ms >= 900, polluted
    for outcome in (runs.reference_second, runs.after):
        assert outcome.stdout == "1\n"
        assert outcome.peak_memory_kb is not None and outcome.peak_memory_kb < SMALL_PEAK_KB, (
            outcome
        )
        assert outcome.cpu_time_ms < SMALL_CPU_MS, outcome


# --- after a run killed at a limit ------------------------------------------------------------

KILLED_AT = {
    "memory_limit": ("b = []\nwhile True:\n    b.append(b'x' * (1 << 20))\n", {"memory_mb": 64}),
    "wall_time_limit": ("import time\ntime.sleep(60)\n", {"wall_time": 0.5}),
    "cpu_time_limit": ("while True:\n    pass\n", {"cpu_time": 1}),
    "output_limit": ("while True:\n    print('x' * 4096)\n", {"output_bytes": 1024}),
}


@pytest.mark.usefixtures("needs_cgroups")
@pytest.mark.parametrize("second", ["python", "shell"])
@pytest.mark.parametrize("limit", sorted(KILLED_AT))
def test_a_run_after_one_killed_at_a_limit_works_normally(slot, limit, second):
    reference = slot.run_clean(second, SCAN_PROCESSES[second])
    before = our_sandbox_processes()
    source, limits = KILLED_AT[limit]
    killed = slot.run("python", source, **limits)
    assert killed.limit_hit == limit, killed
    zombies = slot.assert_nothing_left_on_host(before)
    started = boot_ticks() - 1
    after = slot.run_clean(second, SCAN_PROCESSES[second])
    assert_reaped(zombies)
    assert after.stderr == ""
    me, seen = seen_processes(second, after)
    reference_me, reference_seen = seen_processes(second, reference)
    assert older_than_the_run(seen, started) == []
    assert (me, [p.name for p in seen]) == (reference_me, [p.name for p in reference_seen])
    assert after.peak_memory_kb < SMALL_PEAK_KB, after
    assert after.cpu_time_ms < SMALL_CPU_MS, after
    tiny = slot.run_clean(second, TINY[second])
    assert (tiny.stdout, tiny.limit_hit) == ("1\n", None)


# --- a cross-check of the host-side helpers --------------------------------------------------


def test_the_host_check_sees_a_process_of_the_sandbox_uid(slot):
    """``assert_nothing_left_on_host`` can fail: a process of the sandbox's uid started by
    this process after the snapshot is found, and so is its command line's marker."""
    marker = f"{TAG}{uuid.uuid4().hex[:12]}"
    before = our_sandbox_processes()
    child = subprocess.Popen(
        [marker, "30"], executable="/bin/sleep", user=SANDBOX_UIDS[-1], stdin=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: cmdline_pids(marker), timeout=2)
        with pytest.raises(AssertionError, match="tagged process"):
            slot.assert_nothing_left_on_host(before, marker)
        with pytest.raises(AssertionError, match="outlived the run"):
            slot.assert_nothing_left_on_host(before)
        child.kill()
        wait_for(lambda: our_sandbox_processes().get(child.pid, (0, ""))[1] == "Z", timeout=2)
        zombies = slot.assert_nothing_left_on_host(before)
        assert list(zombies) == [child.pid]
        with pytest.raises(AssertionError, match="never reaped"):
            assert_reaped(zombies)
    finally:
        child.kill()
        child.wait()
    assert slot.assert_nothing_left_on_host(before) == {}
