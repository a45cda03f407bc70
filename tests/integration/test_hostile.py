"""The hostile battery (issue 3): code that attacks the sandbox, run at both levels
through the real configuration a worker builds (``base_config``), per-spawn cgroups
included. Every test ends in a documented state and then checks that the worker is
still healthy: a plain run still works and nothing of the sandbox's uid is left behind.

Where the basic level cannot hold something, its parameter is an expected failure that
says why (``basic_cannot_hold``); the test body is the same at both levels. Nothing
here sends a packet to any address but loopback: the outside is judged from the
sandbox's interfaces and routing table.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from tests.support import ROOT, RUN_UID, SANDBOX_UIDS, idle_slot_pids, wait_for
from vx11.core.config import Settings
from workers.sandbox import Limits, Outcome, SandboxConfig, run_sandboxed, slot
from workers.sandbox.levels import base_config, bwrap_problem
from workers.sandbox.process import adopting_orphans, end_adopted

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the sandbox switches to its own uid and makes cgroups as root"
    ),
    pytest.mark.serial,  # kill -9 -1 at the basic level reaches every run of the uid
]

LEVELS = ["bwrap", "basic"]
MIB = 1 << 20
TMPFS_MB = 16
DRAIN_MB = 4
TEARDOWN_GRACE = 1.0
"""Seconds a killed process may take to disappear from /proc."""
CLONE_NEWUSER = 0x10000000


def expected_failure(reason: str, condition: bool = True):
    return pytest.mark.xfail(condition, strict=True, raises=AssertionError, reason=reason)


def basic_cannot_hold(reason: str, *, condition: bool = True):
    """Run at both levels; at the basic level (when ``condition`` holds on this host) the
    test is an expected failure, for ``reason``."""
    return pytest.mark.parametrize(
        "sandbox",
        ["bwrap", pytest.param("basic", marks=expected_failure(reason, condition))],
        indirect=True,
    )


def _host_allows_user_namespaces() -> bool:
    def sysctl(name: str, default: int) -> int:
        try:
            return int(Path("/proc/sys", *name.split(".")).read_text())
        except (OSError, ValueError):
            return default

    return (
        sysctl("user.max_user_namespaces", 1) > 0
        and sysctl("kernel.unprivileged_userns_clone", 1) != 0
        and sysctl("kernel.apparmor_restrict_unprivileged_userns", 0) == 0
    )


# --- processes on this machine -----------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    uid: int
    state: str
    name: str

    def __str__(self) -> str:
        return f"{self.pid} ({self.name}, state {self.state}, parent {self.ppid})"


def process_table() -> dict[int, Proc]:
    """Every process on the machine (zombies too), by pid."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "status").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        pid = int(entry.name)
        table[pid] = Proc(
            pid,
            int(fields["PPid"]),
            int(fields["Uid"].split()[0]),
            fields["State"][0],
            fields["Name"],
        )
    return table


def our_sandbox_processes() -> list[Proc]:
    """Processes of the sandbox's uid descended from this test process (the worker),
    but for idle slots (:mod:`workers.sandbox.slot`: bwrap, its init, the launcher and
    the next run's init, which wait for the next run).

    Other sessions may run sandboxes as the same uid on this machine at the same time:
    only our descendants are ours. An orphan of a run is adopted by this process (a
    subreaper), so it stays a descendant."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    idle = idle_slot_pids(children)
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if table[pid].uid in SANDBOX_UIDS and pid not in idle:
            found.append(table[pid])
    return found


def cmdline_pids(marker: str) -> list[int]:
    """Pids of the processes on this machine whose command line contains ``marker``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def end_our_sandbox_processes() -> None:
    """Kill what a failed test left behind, and reap our own children among it."""
    for proc in our_sandbox_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        if proc.ppid == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)


class PeakSampler:
    """While the block runs: the most processes a run had at once, counted by the kernel
    in the spawn's pids cgroup (``in_cgroup``) and by scanning /proc for our processes of
    the sandbox's uid (``seen``: slower, but independent of the cgroup), and how many
    forks the cgroup refused (``refused``, from ``pids.events``)."""

    def __init__(self, pids_parent: Path) -> None:
        self.pids_parent = pids_parent
        self.in_cgroup = self.seen = self.refused = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._sample_cgroup, daemon=True),
            threading.Thread(target=self._scan_proc, daemon=True),
        ]

    def _sample_cgroup(self) -> None:
        while not self._stop.is_set():
            # a spawn's cgroup (basic level), or its slot's, which also holds the slot's
            # own processes (bwrap level)
            spawns = ((c, 0) for c in self.pids_parent.glob("spawn-*"))
            slots = ((c, slot.SLOT_PROCESSES) for c in self.pids_parent.glob("slot-*"))
            for cgroup, own in [*spawns, *slots]:
                with contextlib.suppress(OSError, ValueError):  # removed meanwhile
                    current = int((cgroup / "pids.current").read_text()) - own
                    self.in_cgroup = max(self.in_cgroup, current)
                    events = (cgroup / "pids.events").read_text().splitlines()
                    self.refused = max(self.refused, int(dict(map(str.split, events))["max"]))
            time.sleep(0.001)

    def _scan_proc(self) -> None:
        while not self._stop.is_set():
            self.seen = max(self.seen, len(our_sandbox_processes()))
            time.sleep(0.002)

    def __enter__(self) -> PeakSampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@contextlib.contextmanager
def host_process(argv: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A process of the worker's own (root) running beside the runs, stopped afterwards."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# --- the sandbox at each level --------------------------------------------------------------


def make_limits(**overrides) -> Limits:
    values = {
        "wall_time": 3.0,
        "cpu_time": 10,
        "memory_mb": 128,
        "max_processes": 32,
        "max_file_size_mb": 8,
        "output_bytes": 64 * 1024,
    }
    values.update(overrides)
    return Limits(**values)


def outcome_state(outcome: Outcome) -> tuple[int | None, str | None, str | None]:
    return outcome.exit_code, outcome.term_signal, outcome.limit_hit


CLEAN_EXIT = (0, None, None)


def killed_at(limit: str) -> tuple[int, str, str]:
    return -signal.SIGKILL, "SIGKILL", limit


@dataclass
class Sandbox:
    """One level's configuration, as a worker would build it, and how to run code in it."""

    config: SandboxConfig

    @property
    def level(self) -> str:
        return self.config.level

    @property
    def root(self) -> Path:
        return Path(self.config.root)

    def run(
        self,
        task_type: str,
        code: str,
        *,
        stdin: str | None = None,
        args: tuple[str, ...] = (),
        **limits,
    ) -> Outcome:
        return run_sandboxed(
            task_type,
            textwrap.dedent(code),
            limits=make_limits(**limits),
            config=self.config,
            stdin=stdin,
            args=args,
        )

    def run_json(self, task_type: str, code: str, **kwargs):
        """Run code that prints one JSON document and ends cleanly; return the document."""
        outcome = self.run(task_type, code, **kwargs)
        assert outcome_state(outcome) == CLEAN_EXIT, outcome
        assert not outcome.stdout_truncated, "the report was cut: raise output_bytes"
        return json.loads(outcome.stdout)

    def peak_sampler(self) -> PeakSampler:
        return PeakSampler(self.config.cgroups.parents["pids"])

    def spawn_cgroups_left(self) -> list[str]:
        left = []
        for parent in set(self.config.cgroups.parents.values()):
            with contextlib.suppress(FileNotFoundError):
                left += [str(p) for p in parent.iterdir() if p.name.startswith("spawn-")]
        return left

    def assert_healthy(self) -> None:
        """The worker still runs code, and nothing of the runs is left: no process of the
        sandbox's uid (running or zombie), no spawn cgroup, no working directory."""
        follow_up = self.run("python", "print('ok')", wall_time=5)
        assert (*outcome_state(follow_up), follow_up.stdout) == (*CLEAN_EXIT, "ok\n"), follow_up
        deadline = time.monotonic() + TEARDOWN_GRACE
        while (left := our_sandbox_processes()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not left, f"left behind: {', '.join(map(str, left))}"
        assert self.spawn_cgroups_left() == []
        assert sorted(os.listdir(self.root)) == []


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> Iterator[None]:
    """Orphans of runs are adopted by this process, as by a worker's pool process (the
    sandbox sets the same, once per process; another test module may have unset it)."""
    with adopting_orphans(None):
        yield
        end_our_sandbox_processes()


@pytest.fixture(scope="module", params=LEVELS)
def sandbox(request) -> Iterator[Sandbox]:
    level = request.param
    root = Path(tempfile.mkdtemp(prefix=f"vx11-hostile-{level}-", dir="/tmp"))
    root.chmod(0o711)
    settings = Settings.from_env(
        {
            "VX11_SANDBOX_ROOT": str(root),
            "VX11_SANDBOX_TMPFS_MB": str(TMPFS_MB),
            "VX11_OUTPUT_DRAIN_LIMIT_MB": str(DRAIN_MB),
        }
    )
    config = base_config(settings)
    try:
        if config.cgroups is None:
            pytest.skip("per-spawn cgroups are unavailable here: the battery expects them")
        config = replace(config, level=level, root=str(root))
        if level == "bwrap" and (problem := bwrap_problem(config)) is not None:
            pytest.skip(f"the bwrap level does not work here: {problem}")
        yield Sandbox(config)
    finally:
        slot.SLOTS.close()  # the slots and their cgroups, before the cgroups' parents
        # A launcher a test killed leaves its processes to this process once it has
        # become a subreaper (a basic run makes it one): end them, as a worker's pool,
        # which runs one level only, never has to.
        end_adopted(SANDBOX_UIDS)
        if config.cgroups is not None:
            config.cgroups.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def end_leftovers() -> Iterator[None]:
    """One test's leftovers never burden the next (the tests themselves check for them)."""
    yield
    end_our_sandbox_processes()


@pytest.fixture
def token() -> str:
    return f"vx11-hostile-{uuid.uuid4().hex[:12]}"


def run_concurrently(first: Callable[[], Outcome], second: Callable[[], Outcome]):
    with ThreadPoolExecutor(2) as pool:
        one, two = pool.submit(first), pool.submit(second)
        return one.result(), two.result()


# --- processes: fork bombs and what outlives a run -------------------------------------------


def assert_held_at(peak: PeakSampler, max_processes: int) -> None:
    """The spawn's cgroup refused the bomb's forks, and the bomb never had more processes
    than its limit (at the bwrap level its init is the slot's, at the basic level the
    leader counts). Without the cgroup RLIMIT_NPROC would let it reach 1024.

    ``pids.current`` is a counter the kernel raises before it compares it with
    ``pids.max`` and lowers again when a fork is refused (``pids_try_charge``), so a
    reader may see it one above the limit for each CPU refusing a fork at that moment."""
    assert peak.refused > 0
    assert 0 < peak.in_cgroup <= max_processes + (os.cpu_count() or 1), peak.in_cgroup
    # A scan of /proc is not atomic: a process that dies during it and one born later may
    # both be counted. A quarter more is far below what an uncontained bomb reaches.
    assert peak.seen <= max_processes * 5 // 4, peak.seen


def test_a_python_fork_bomb_is_held_at_max_processes_until_the_wall_limit(sandbox):
    with sandbox.peak_sampler() as peak:
        outcome = sandbox.run(
            "python",
            """
            import errno, os, time
            leader, reported = os.getpid(), False
            while True:
                try:
                    if os.fork() == 0:
                        os.setsid()  # every child leaves the run's process group
                except OSError as exc:
                    if os.getpid() == leader and not reported:
                        print(errno.errorcode[exc.errno], flush=True)
                        reported = True
                    time.sleep(0.01)
            """,
            wall_time=2,
            max_processes=32,
        )
    assert outcome_state(outcome) == killed_at("wall_time_limit"), outcome
    assert outcome.stdout == "EAGAIN\n"  # the leader's forks were refused
    assert_held_at(peak, 32)
    sandbox.assert_healthy()


def test_a_shell_fork_bomb_is_held_at_max_processes_until_the_wall_limit(sandbox):
    # The bomb starts in one subshell: the top shell forks once, before any bomb
    # process exists, so its own fork never loses the race to the limit (dash exits 2
    # when a fork of its own fails) and it spins until the wall limit.
    with sandbox.peak_sampler() as peak:
        outcome = sandbox.run(
            "shell", "f() { f | f & }; (f) & while :; do :; done", wall_time=2, max_processes=32
        )
    assert outcome_state(outcome) == killed_at("wall_time_limit"), outcome
    assert "Cannot fork" in outcome.stderr  # dash's message for a refused fork
    assert_held_at(peak, 32)
    sandbox.assert_healthy()


def test_a_daemonized_grandchild_is_gone_when_the_run_returns(sandbox, token):
    outcome = sandbox.run(
        "python",
        f"""
        import os, time
        read_end, write_end = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.write(write_end, str(os.getpid()).encode())
                os.execv("/bin/sh", ["/bin/sh", "-c", "while :; do sleep 1; done", {token!r}])
            os._exit(0)
        os.close(write_end)
        daemon = int(os.read(read_end, 32))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with open(f"/proc/{{daemon}}/cmdline", "rb") as f:
                if {token!r}.encode() in f.read():
                    print("daemon running")
                    break
            time.sleep(0.01)
        """,
    )
    assert outcome_state(outcome) == CLEAN_EXIT, outcome
    assert outcome.stdout == "daemon running\n"
    assert cmdline_pids(token) == []  # at once: the spawn's cgroup was emptied before return
    sandbox.assert_healthy()


def test_killing_its_parent_and_everything_it_may_signal_leaves_the_worker_running(
    sandbox, redis_server
):
    # $PPID: the worker itself (this test) at the basic level, root and not the code's
    # to signal; bwrap's init at the bwrap level, which as the init of a pid namespace
    # ignores SIGKILL from inside it. kill -1 reaches every process the code may signal,
    # but never the caller. The neighbour is another process of the worker's uid.
    with host_process(["sleep", "30"]) as neighbour:
        outcome = sandbox.run("shell", "kill -9 $PPID; kill -9 -1; echo survived")
        assert neighbour.poll() is None
    assert (*outcome_state(outcome), outcome.stdout) == (*CLEAN_EXIT, "survived\n"), outcome
    assert redis.Redis.from_url(redis_server.url).ping()
    sandbox.assert_healthy()


@basic_cannot_hold(
    "basic level, worker not root: every run has the worker's uid, so kill -9 -1 in one "
    "run reaches every concurrent run (and every process of that uid)",
    condition=os.geteuid() != 0,
)
def test_kill_minus_one_does_not_reach_a_concurrent_run(sandbox, token):
    def victim() -> Outcome:
        return sandbox.run(
            "python", "import time; time.sleep(1.5); print('survived')", args=(token,)
        )

    def killer() -> Outcome:
        wait_for(lambda: cmdline_pids(token), timeout=3, interval=0.01)
        return sandbox.run("shell", "kill -9 -1; echo done")

    victim_outcome, killer_outcome = run_concurrently(victim, killer)
    assert (*outcome_state(killer_outcome), killer_outcome.stdout) == (*CLEAN_EXIT, "done\n")
    sandbox.assert_healthy()
    assert (*outcome_state(victim_outcome), victim_outcome.stdout) == (
        *CLEAN_EXIT,
        "survived\n",
    ), victim_outcome


# --- limits: memory, CPU, wall clock, output ---------------------------------------------


def test_a_memory_bomb_is_killed_at_the_memory_limit(sandbox):
    outcome = sandbox.run(
        "python",
        """
        kept = []
        while True:
            kept.append(bytearray(4 << 20))  # zero-filled: every page is touched
            print(len(kept) * 4, flush=True)
        """,
        memory_mb=64,
    )
    # At both levels the spawn's cgroup (64 MiB) kills it: at the basic level RLIMIT_AS
    # is only the wider second line (2 x 64 + 256 MiB) when there is a cgroup, so the
    # code never sees a MemoryError first.
    assert outcome_state(outcome) == killed_at("memory_limit"), outcome
    allocated_mb = int(outcome.stdout.split()[-1])
    assert 32 <= allocated_mb < 64
    assert 32 * 1024 <= outcome.peak_memory_kb <= 64 * 1024
    sandbox.assert_healthy()


def test_a_busy_loop_ends_at_the_cpu_limit_before_the_wall_limit(sandbox):
    outcome = sandbox.run("python", "while True: pass", cpu_time=1, wall_time=4)
    assert outcome_state(outcome) == (-signal.SIGXCPU, "SIGXCPU", "cpu_time_limit"), outcome
    assert outcome.duration_ms < 4000
    assert outcome.cpu_time_ms >= 500
    sandbox.assert_healthy()


def test_sleeping_forever_ends_at_the_wall_limit(sandbox):
    outcome = sandbox.run("shell", "sleep 100000", wall_time=1)
    assert outcome_state(outcome) == killed_at("wall_time_limit"), outcome
    assert 1000 <= outcome.duration_ms < 3000
    assert outcome.cpu_time_ms < 500
    sandbox.assert_healthy()


def test_endless_output_ends_at_the_output_limit_with_stdout_truncated(sandbox):
    outcome = sandbox.run("shell", "yes", output_bytes=1000, wall_time=5)
    assert outcome_state(outcome) == killed_at("output_limit"), outcome
    assert outcome.stdout == "y\n" * 500
    assert outcome.stdout_truncated is True
    assert outcome.duration_ms < 5000  # after DRAIN_MB of output, long before the wall limit
    sandbox.assert_healthy()


# --- the disk ------------------------------------------------------------------------------

FILL = """
import errno, json, os

def one_big_file(path):
    written, chunk = 0, b"\\0" * (1 << 20)
    try:
        with open(path, "wb", buffering=0) as f:
            while written < 64 << 20:
                written += f.write(chunk)
        return ["no error", written]
    except OSError as exc:
        return [errno.errorcode[exc.errno], os.path.getsize(path)]

def many_small_files(prefix, cap=32 << 20):  # cap: at most this much on a disk without quota
    written, size = 0, 256 << 10
    try:
        while written < cap:
            with open(f"{prefix}{written // size}", "wb") as f:
                f.write(b"\\0" * size)
            written += size
        return ["no error", written]
    except OSError as exc:
        return [errno.errorcode[exc.errno], written]
"""


def test_one_big_file_stops_at_the_file_size_limit(sandbox):
    report = sandbox.run_json(
        "python",
        FILL
        + """
print(json.dumps([one_big_file("big"), one_big_file(os.environ["TMPDIR"] + "/big")]))
""",
        max_file_size_mb=8,
    )
    # RLIMIT_FSIZE (8 MiB) is below the bwrap level's tmpfs (16 MiB): EFBIG at both levels,
    # in the working directory and in $TMPDIR (bwrap: its own /tmp; basic: the working dir).
    assert report == [["EFBIG", 8 * MIB], ["EFBIG", 8 * MIB]]
    sandbox.assert_healthy()


@basic_cannot_hold(
    "basic level: no per-spawn disk quota, only a per-file size limit "
    "(RLIMIT_FSIZE): many small files fill the host's disk"
)
def test_many_small_files_fill_only_a_size_capped_tmpfs(sandbox, token):
    try:
        report = sandbox.run_json(
            "python",
            FILL
            + f"""
print(json.dumps([many_small_files("small-"), many_small_files("/tmp/{token}-")]))
""",
        )
        left_on_host = sorted(p.name for p in Path("/tmp").glob(f"{token}-*"))
        sandbox.assert_healthy()
        for error, written in report:  # the working directory, then /tmp
            assert error == "ENOSPC"
            assert 8 * MIB <= written <= TMPFS_MB * MIB
        assert left_on_host == []  # the bwrap level's /tmp is its own
    finally:
        for path in Path("/tmp").glob(f"{token}-*"):
            path.unlink()


@basic_cannot_hold(
    "basic level: no mount namespace: /tmp is the host's, and what the code "
    "writes there outlives the run"
)
def test_files_written_to_tmp_do_not_outlive_the_run(sandbox, token):
    planted = Path("/tmp", token)
    try:
        outcome = sandbox.run("shell", f"echo planted > /tmp/{token} && echo written")
        assert (*outcome_state(outcome), outcome.stdout) == (*CLEAN_EXIT, "written\n"), outcome
        sandbox.assert_healthy()
        assert not planted.exists()
    finally:
        planted.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "sandbox",
    [
        "bwrap",
        pytest.param(
            "basic",
            marks=expected_failure(
                "basic level: no mount namespace: the host's /dev/shm and /var/tmp are "
                "writable, without quota"
            ),
        ),
    ],
    indirect=True,
)
def test_every_place_the_code_can_write_is_size_capped(sandbox, token):
    places = ["/", "/dev", "/dev/shm", "/var/tmp"]
    try:
        report = sandbox.run_json(
            "python",
            FILL
            + f"""
prefixes = {{place: os.path.join(place, "{token}-") for place in {places!r}}}
print(json.dumps({{place: many_small_files(prefix, cap=24 << 20)
                   for place, prefix in prefixes.items()}}))
""",
        )
        sandbox.assert_healthy()
        for place in places:
            error, written = report[place]
            assert error in ("ENOSPC", "EACCES", "EROFS", "EPERM", "ENOENT"), (place, error)
            assert written <= TMPFS_MB * MIB, (place, written)
    finally:
        for place in places:
            for path in Path(place).glob(f"{token}-*"):
                path.unlink()


# --- the network ------------------------------------------------------------------------------

REFUSED = {"ECONNREFUSED", "ENETUNREACH"}


def connect_to_loopback(port: int, message: str = "") -> str:
    """Code that connects to 127.0.0.1:``port`` (never anywhere else), sends ``message``
    if it got through, and prints the errno name or ``connected``."""
    return f"""
    import errno, socket
    with socket.socket() as sock:
        sock.settimeout(1)
        try:
            sock.connect(("127.0.0.1", {port}))
            sock.sendall({message.encode()!r})
            print("connected")
        except OSError as exc:
            print(errno.errorcode.get(exc.errno, str(exc)))
    """


def assert_refused(outcome: Outcome) -> None:
    assert outcome_state(outcome) == CLEAN_EXIT, outcome
    assert outcome.stdout.strip() in REFUSED, outcome.stdout


@basic_cannot_hold("basic level: no network namespace")
def test_the_workers_redis_on_loopback_is_unreachable(sandbox, redis_server):
    assert redis.Redis.from_url(redis_server.url).ping()  # it is there, for the worker
    outcome = sandbox.run("python", connect_to_loopback(redis_server.port))
    sandbox.assert_healthy()
    assert_refused(outcome)


@basic_cannot_hold("basic level: no network namespace")
def test_postgresql_on_loopback_is_unreachable(sandbox):
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        pytest.skip("no PostgreSQL listens on 127.0.0.1:5432 on this machine")
    outcome = sandbox.run("python", connect_to_loopback(5432))
    sandbox.assert_healthy()
    assert_refused(outcome)


@basic_cannot_hold("basic level: no network namespace")
def test_a_listener_on_the_hosts_loopback_is_unreachable_and_receives_nothing(sandbox, token):
    # The gateway's stand-in. At the basic level the code does get through: to this
    # listener, over loopback, and nowhere else.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        outcome = sandbox.run(
            "python", connect_to_loopback(listener.getsockname()[1], message=token)
        )
        try:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(1)
                received = connection.recv(1024).decode()
        except BlockingIOError:
            received = None
    sandbox.assert_healthy()
    assert_refused(outcome)
    assert received is None


@basic_cannot_hold(
    "basic level: no network namespace, which is also what separates abstract UNIX sockets"
)
def test_an_abstract_unix_socket_of_the_host_is_unreachable(sandbox, token):
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(f"\0{token}")
        listener.listen()
        outcome = sandbox.run(
            "python",
            f"""
            import errno, socket
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.connect("\\0{token}")
                    print("connected")
                except OSError as exc:
                    print(errno.errorcode.get(exc.errno, str(exc)))
            """,
        )
    sandbox.assert_healthy()
    assert_refused(outcome)


@basic_cannot_hold("basic level: no network namespace: the host's interfaces and routes")
def test_the_only_interface_is_loopback_and_there_is_no_route_out(sandbox):
    report = sandbox.run_json(
        "python",
        """
        import json, os

        def lines(path):
            try:
                with open(path) as f:
                    return f.read().splitlines()
            except OSError as exc:
                return [type(exc).__name__]

        print(json.dumps({
            "interfaces": [line.split(":")[0].strip() for line in lines("/proc/net/dev")[2:]],
            "route": lines("/proc/net/route"),
            "ipv6_route": lines("/proc/net/ipv6_route"),
            "sys_class_net": sorted(os.listdir("/sys/class/net"))
            if os.path.isdir("/sys/class/net") else None,
        }))
        """,
    )
    sandbox.assert_healthy()
    assert report["interfaces"] == ["lo"]
    assert report["sys_class_net"] in (None, ["lo"])  # bwrap mounts no /sys
    assert len(report["route"]) == 1 and report["route"][0].startswith("Iface")  # header only
    # Not empty: the kernel lists lo's own ::1 and its reject routes. None leaves through
    # another device.
    assert {line.split()[-1] for line in report["ipv6_route"]} <= {"lo"}, report["ipv6_route"]


# --- secrets, files and other runs ---------------------------------------------------------


@pytest.fixture
def worker_secrets(monkeypatch) -> Iterator[dict[str, str]]:
    """Fake secrets where a worker keeps real ones: its environment and a root-only
    configuration file (like compose's .env) in a directory anyone may traverse."""
    secrets = {
        "VX11_REDIS_URL": f"redis://:pw-{uuid.uuid4().hex}@127.0.0.1:6390/0",
        "VX11_TEST_SECRET": f"s3cret-{uuid.uuid4().hex}",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    deploy = Path(tempfile.mkdtemp(prefix="vx11-hostile-deploy-", dir="/tmp"))
    deploy.chmod(0o755)  # only the file's own mode guards it
    env_file = deploy / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in secrets.items()))
    env_file.chmod(0o600)
    yield {**secrets, "env_file": str(env_file)}
    shutil.rmtree(deploy)


def test_the_workers_secrets_are_nowhere_the_code_can_look(sandbox, worker_secrets):
    files = [
        str(ROOT / "celeryconfig.py"),
        str(ROOT / ".venv" / "pyvenv.cfg"),
        worker_secrets["env_file"],
    ]
    # A process of the worker's started with the secrets in its environment, as the
    # worker itself is in a real deployment (os.environ's later changes never reach
    # /proc/<pid>/environ, which shows a process's environment as it started).
    with host_process(["sleep", "30"], env=dict(os.environ)) as sibling:
        wait_for(lambda: b"VX11_TEST_SECRET" in Path(f"/proc/{sibling.pid}/environ").read_bytes())
        report = sandbox.run_json(
            "python",
            f"""
            import json, os

            def read(path):
                try:
                    with open(path, "rb") as f:
                        return f.read().decode(errors="replace")
                except OSError as exc:
                    return type(exc).__name__

            processes = [name for name in os.listdir("/proc") if name.isdigit()]
            print(json.dumps({{
                "environ": dict(os.environ),
                "proc": {{
                    pid: [read(f"/proc/{{pid}}/environ"), read(f"/proc/{{pid}}/cmdline")]
                    for pid in processes
                }},
                "files": {{path: read(path) for path in {files!r}}},
            }}))
            """,
            output_bytes=4 * MIB,
        )
    sandbox.assert_healthy()
    assert report["environ"]["PATH"] and report["proc"]  # it did look
    assert [key for key in report["environ"] if key.startswith("VX11_")] == []
    assert report["files"][worker_secrets["env_file"]] in ("PermissionError", "FileNotFoundError")
    dump = json.dumps(report)  # the values are random: found only where they leaked
    for key in ("VX11_REDIS_URL", "VX11_TEST_SECRET"):
        assert worker_secrets[key] not in dump
    assert worker_secrets["VX11_REDIS_URL"].split("@")[0].split(":")[-1] not in dump


@basic_cannot_hold(
    "basic level: no mount namespace: every world-readable host file, the "
    "project's code and configuration included, is readable"
)
def test_the_hosts_and_the_projects_files_do_not_exist_inside(sandbox):
    paths = [
        ROOT / "celeryconfig.py",
        ROOT / ".venv" / "pyvenv.cfg",
        ROOT / "workers" / "spawner.py",
        Path("/etc/os-release"),
    ]
    assert all(path.is_file() for path in paths)  # they do exist, outside
    report = sandbox.run_json(
        "python",
        f"""
        import json, os
        print(json.dumps([os.path.exists(path) for path in {[str(p) for p in paths]!r}]))
        """,
    )
    sandbox.assert_healthy()
    assert report == [False] * len(paths)


def test_etc_shadow_is_unreadable(sandbox):
    report = sandbox.run_json(
        "python",
        """
        import errno, json
        try:
            with open("/etc/shadow") as f:
                print(json.dumps(f.read()))
        except OSError as exc:
            print(json.dumps(errno.errorcode[exc.errno]))
        """,
    )
    sandbox.assert_healthy()
    # bwrap: VX11's /etc has no shadow; basic: root:shadow, 0640, and the code runs as nobody
    assert report in ("ENOENT", "EACCES")


@pytest.fixture
def host_etc_file(token) -> Iterator[Path]:
    """A file of the host's /etc that no other host has, removed afterwards."""
    path = Path("/etc") / f"{token}.conf"
    path.write_text(f"secret of {token}\n")
    path.chmod(0o644)
    yield path
    path.unlink()


HOST_ETC = ["shadow", "hostname", "machine-id", "resolv.conf", "ssl", "os-release", "mtab",
            "apt", "ld.so.cache", "alternatives/my.cnf"]  # fmt: skip
SANDBOX_ETC = {"passwd", "group", "nsswitch.conf", "hosts", "timezone", "localtime", "alternatives"}


@basic_cannot_hold("basic level: no mount namespace: the code sees the host's /etc")
def test_the_hosts_etc_is_invisible_and_the_sandboxs_own_is_read_only(sandbox, host_etc_file):
    host_passwd = Path("/etc/passwd").read_text()
    report = sandbox.run_json(
        "python",
        f"""
        import errno, json, os

        def attempt(action):
            try:
                action()
                return "done"
            except OSError as exc:
                return errno.errorcode[exc.errno]

        def read(path):
            with open(path) as f:
                f.read()

        def append(path):
            with open(path, "a") as f:
                f.write("x")

        print(json.dumps({{
            "listing": sorted(os.listdir("/etc")),
            "host": {{name: os.path.lexists("/etc/" + name) for name in {HOST_ETC!r}}},
            "token_file": attempt(lambda: read({str(host_etc_file)!r})),
            "passwd": open("/etc/passwd").read(),
            "alternatives": sorted({{os.path.realpath(entry.path).split("/")[1]
                                    for entry in os.scandir("/etc/alternatives")}}),
            "writes": {{
                "create": attempt(lambda: open("/etc/vx11-new", "x").close()),
                "append": attempt(lambda: append("/etc/passwd")),
                "remove": attempt(lambda: os.unlink("/etc/hosts")),
                "rename": attempt(lambda: os.rename("/etc/group", "/etc/group-")),
                "mkdir": attempt(lambda: os.mkdir("/etc/alternatives/vx11")),
                "chmod": attempt(lambda: os.chmod("/etc/passwd", 0o666)),
            }},
        }}))
        """,
    )
    sandbox.assert_healthy()
    assert set(report["listing"]) <= SANDBOX_ETC, report["listing"]
    assert {"passwd", "group", "nsswitch.conf", "hosts", "alternatives"} <= set(report["listing"])
    assert report["host"] == {name: False for name in HOST_ETC}
    assert report["token_file"] == "ENOENT"
    assert report["passwd"] != host_passwd
    # every alternative resolves inside what the sandbox binds of the system
    assert set(report["alternatives"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}
    for action, error in report["writes"].items():
        assert error in ("EROFS", "EACCES", "EPERM"), (action, error)
    assert host_etc_file.read_text().startswith("secret of")


@basic_cannot_hold(
    "basic level, worker not root: every run has the worker's uid, so a concurrent run "
    "reaches another's working directory through /proc/<pid>/cwd",
    condition=os.geteuid() != 0,
)
def test_a_concurrent_run_cannot_find_another_runs_files(sandbox, token):
    secret_name, secret_text = f"{token}.txt", f"secret of {token}"
    victim_code = f"""
        import os, time
        with open({secret_name!r}, "w") as f:
            f.write({secret_text!r})
        print("written", flush=True)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and not os.path.exists("seen"):
            time.sleep(0.02)
        """
    snoop_code = f"""
        import glob, itertools, os, time
        NAME = {secret_name!r}
        found = []
        deadline = time.monotonic() + 2.0
        walk = os.walk("/")  # the whole tree but the kernel's and the system's, in slices
        while time.monotonic() < deadline and not found:
            found += glob.glob("/proc/[0-9]*/cwd/" + NAME)
            for directory, subdirs, files in itertools.islice(walk, 200):
                if directory == "/":
                    subdirs[:] = [d for d in subdirs if d not in ("proc", "sys", "dev", "usr")]
                if NAME in files:
                    found.append(os.path.join(directory, NAME))
            time.sleep(0.01)
        for path in found:
            try:
                with open(path) as f:
                    print(path, f.read())
                open(os.path.join(os.path.dirname(path), "seen"), "w").close()
            except OSError as exc:
                print(path, type(exc).__name__)
        print("searched")
        """

    def snoop() -> Outcome:
        wait_for(lambda: cmdline_pids(token), timeout=3, interval=0.01)
        return sandbox.run("python", snoop_code, wall_time=4)

    victim, snooper = run_concurrently(
        lambda: sandbox.run("python", victim_code, args=(token,), wall_time=4), snoop
    )
    assert (*outcome_state(victim), victim.stdout) == (*CLEAN_EXIT, "written\n"), victim
    assert outcome_state(snooper) == CLEAN_EXIT, snooper
    assert snooper.stdout.endswith("searched\n")
    sandbox.assert_healthy()
    assert secret_text not in snooper.stdout
    assert snooper.stdout == "searched\n"


@basic_cannot_hold("basic level: no pid namespace: every process on the host is visible")
def test_two_concurrent_runs_cannot_see_each_others_processes(sandbox, token):
    def watcher() -> Outcome:
        wait_for(lambda: cmdline_pids(token), timeout=3, interval=0.01)
        return sandbox.run(
            "python",
            f"""
            import json, os
            pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
            seen = []
            for pid in pids:
                try:
                    with open(f"/proc/{{pid}}/cmdline", "rb") as f:
                        if {token!r}.encode() in f.read():
                            seen.append(pid)
                except OSError:
                    pass
            print(json.dumps({{"pids": pids, "seen": seen}}))
            """,
        )

    sleeper, watching = run_concurrently(
        lambda: sandbox.run("python", "import time; time.sleep(1.5)", args=(token,)), watcher
    )
    assert outcome_state(sleeper) == CLEAN_EXIT, sleeper
    assert outcome_state(watching) == CLEAN_EXIT, watching
    sandbox.assert_healthy()
    report = json.loads(watching.stdout)
    assert report["seen"] == []
    assert report["pids"] == [1, 2]  # bwrap's init and the code itself


@basic_cannot_hold("basic level: no pid namespace: every host process's command line is readable")
def test_the_command_lines_of_the_hosts_processes_are_invisible(sandbox, token):
    with host_process(["sh", "-c", "sleep 30; :", token]) as host:
        wait_for(lambda: cmdline_pids(token), timeout=3, interval=0.01)
        report = sandbox.run_json(
            "python",
            """
            import json, os, sys
            marker = sys.stdin.read().encode()  # not on its own command line
            seen, read = [], 0
            for pid in [name for name in os.listdir("/proc") if name.isdigit()]:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                read += 1
                if marker in cmdline:
                    seen.append(int(pid))
            print(json.dumps({"read": read, "seen": seen}))
            """,
            stdin=token,
        )
    sandbox.assert_healthy()
    assert report["read"] >= 1  # its own, at least
    assert host.pid not in report["seen"]
    assert report["seen"] == []


# --- links planted where the host reads and cleans up -----------------------------------


@pytest.fixture
def host_file() -> Iterator[Path]:
    """A root-owned, world-readable file in a directory every user can traverse."""
    directory = Path(tempfile.mkdtemp(prefix="vx11-hostile-host-", dir="/tmp"))
    directory.chmod(0o755)
    (directory / "nested").mkdir()
    (directory / "nested" / "also.txt").write_text("keep me too")
    precious = directory / "precious.txt"
    precious.write_text("keep me")
    precious.chmod(0o644)
    yield precious
    shutil.rmtree(directory)


def test_links_planted_in_the_working_directory_never_touch_host_files(sandbox, host_file):
    directory = host_file.parent
    before = host_file.stat()
    outcome = sandbox.run(
        "shell",
        f"""
        ln -s {host_file} file-link
        ln -s {directory} dir-link
        mkdir sub && ln -s {directory} sub/deeper-link
        if ln {host_file} hard-link 2>/dev/null; then echo "hardlink made"
        else echo "hardlink refused"; fi
        if echo tampered >> file-link 2>/dev/null; then echo "wrote through the link"
        else echo "write refused"; fi
        """,
    )
    assert (*outcome_state(outcome), outcome.stdout) == (
        *CLEAN_EXIT,
        "hardlink refused\nwrite refused\n",
    ), outcome
    sandbox.assert_healthy()  # the working directory was cleaned up, links and all
    after = host_file.stat()
    assert host_file.read_text() == "keep me"
    assert (after.st_mode, after.st_uid, after.st_nlink) == (before.st_mode, 0, 1)
    assert sorted(os.listdir(directory)) == ["nested", "precious.txt"]
    assert (directory / "nested" / "also.txt").read_text() == "keep me too"


# --- the kernel's knobs, capabilities and privileges --------------------------------------


def test_writing_to_proc_sys_and_sysrq_trigger_is_refused(sandbox):
    knobs = ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/panic", "/proc/sys/vm/drop_caches"]
    host_before = {path: Path(path).read_text() for path in knobs if "drop_caches" not in path}
    report = sandbox.run_json(
        "python",
        f"""
        import errno, json, os
        report = {{}}
        for path in {[*knobs, "/proc/sysrq-trigger"]!r}:
            try:
                fd = os.open(path, os.O_WRONLY)
            except OSError as exc:
                report[path] = errno.errorcode[exc.errno]
            else:  # never write: it could change the host
                os.close(fd)
                report[path] = "opened"
        print(json.dumps(report))
        """,
    )
    sandbox.assert_healthy()
    for path in knobs:
        assert report[path] in ("EACCES", "EPERM", "EROFS"), (path, report[path])
    # ENOENT: a kernel built without magic SysRq has no such file
    assert report["/proc/sysrq-trigger"] in ("EACCES", "EPERM", "EROFS", "ENOENT")
    assert {path: Path(path).read_text() for path in host_before} == host_before


PROC_HIDDEN = [
    "/proc/kallsyms", "/proc/modules", "/proc/keys", "/proc/key-users", "/proc/interrupts",
    "/proc/softirqs", "/proc/sched_debug", "/proc/timer_list", "/proc/latency_stats",
    "/proc/kcore", "/proc/acpi", "/proc/asound", "/proc/bus", "/proc/driver", "/proc/fs",
    "/proc/irq", "/proc/scsi", "/proc/tty",
]  # fmt: skip
PROC_LEFT = ["/proc/cpuinfo", "/proc/meminfo", "/proc/loadavg", "/proc/stat", "/proc/uptime"]
"""What programs read (``free``, ``top``, ``uptime``, psutil): left, docs/security.md."""


@basic_cannot_hold("basic level: the code reads the host's /proc")
def test_proc_shows_nothing_of_the_host_kernel_but_what_programs_read(sandbox):
    """Kernel symbols and modules, key names, interrupt and timer counts, and device
    and driver trees are empty inside, where the host shows them."""
    report = sandbox.run_json(
        "python",
        f"""
        import json, os
        report = {{}}
        for path in {[*PROC_HIDDEN, *PROC_LEFT]!r}:
            try:
                if os.path.isdir(path):
                    report[path] = len(os.listdir(path))
                else:
                    with open(path, "rb") as f:
                        report[path] = len(f.read(4096))
            except OSError as exc:
                report[path] = exc.strerror
        print(json.dumps(report))
        """,
    )
    sandbox.assert_healthy()
    for path in PROC_LEFT:
        assert isinstance(report[path], int) and report[path] > 0, (path, report[path])
    shown = {path: report[path] for path in PROC_HIDDEN if report[path] not in (0, *STRERRORS)}
    assert not shown, shown


STRERRORS = ("No such file or directory", "Permission denied")


STATUS_FIELDS = """
import json
with open("/proc/self/status") as f:
    fields = dict(line.split(":\\t", 1) for line in f.read().splitlines() if ":\\t" in line)
print(json.dumps({key: fields[key].strip() for key in
                  ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Uid")}))
"""
NO_CAPABILITIES = "0000000000000000"


def test_the_code_has_no_capabilities_in_effect(sandbox):
    status = sandbox.run_json("python", STATUS_FIELDS)
    sandbox.assert_healthy()
    [uid] = set(map(int, status["Uid"].split()))
    assert uid == RUN_UID if sandbox.config.level == "bwrap" else uid in SANDBOX_UIDS, uid
    for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert status[field] == NO_CAPABILITIES, (field, status[field])


@basic_cannot_hold(
    "basic level: the switch to the run's uid clears the effective and permitted "
    "capabilities but leaves the bounding set full"
)
def test_the_capability_bounding_set_is_empty(sandbox):
    status = sandbox.run_json("python", STATUS_FIELDS)
    sandbox.assert_healthy()
    assert status["CapBnd"] == NO_CAPABILITIES


@basic_cannot_hold("basic level: no_new_privs is not set")
def test_no_new_privs_is_set(sandbox):
    status = sandbox.run_json("python", STATUS_FIELDS)
    sandbox.assert_healthy()
    assert status["NoNewPrivs"] == "1"


@basic_cannot_hold(
    "basic level: no no_new_privs: a setuid-root binary such as su runs with "
    "effective uid 0 (it still asks for a password)"
)
def test_a_setuid_binary_runs_without_root_rights(sandbox):
    report = sandbox.run_json(
        "python",
        """
        import json, subprocess, time
        su = subprocess.Popen(["su", "root", "-c", "id -u"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # su waits for a password on the pipe, or fails at once; either way its status
        # stays readable until it is reaped. Its credentials are set once it runs as su.
        uids, deadline = None, time.monotonic() + 2
        while time.monotonic() < deadline:
            with open(f"/proc/{su.pid}/status") as f:
                fields = dict(line.split(":\\t", 1) for line in f.read().splitlines()
                              if ":\\t" in line)
            if fields["Name"] == "su":
                time.sleep(0.05)
                with open(f"/proc/{su.pid}/status") as f:
                    uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
                break
            time.sleep(0.005)
        su.kill()  # allowed: its real uid is ours
        su.wait()
        print(json.dumps(uids))
        """,
    )
    sandbox.assert_healthy()
    real, effective, saved, filesystem = map(int, report)
    assert real == RUN_UID if sandbox.config.level == "bwrap" else real in SANDBOX_UIDS, real
    assert (effective, saved, filesystem) == (real,) * 3


def test_mount_and_su_do_not_give_root(sandbox):
    report = sandbox.run_json(
        "python",
        """
        import ctypes, errno, json, os, subprocess

        def run(argv):
            try:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, timeout=3)
            except FileNotFoundError:
                return "absent"
            return [done.returncode, done.stdout.strip()]

        os.mkdir("target")
        libc = ctypes.CDLL(None, use_errno=True)
        mounted = libc.mount(b"none", b"target", b"tmpfs", 0, None)
        print(json.dumps({
            "mount(2)": errno.errorcode[ctypes.get_errno()] if mounted else "mounted",
            "mount": run(["mount", "-t", "tmpfs", "none", "target"]),
            "su": run(["su", "root", "-c", "id -u"]),
            "sudo": run(["sudo", "-n", "id", "-u"]),
            "target is a mount point": os.path.ismount("target"),
        }))
        """,
        wall_time=5,  # su's failed authentication takes a second at the basic level
    )
    sandbox.assert_healthy()
    assert report["mount(2)"] == "EPERM"
    assert report["mount"][0] != 0
    assert report["su"][0] != 0 and report["su"][1] != "0"
    assert report["sudo"] == "absent" or (report["sudo"][0] != 0 and report["sudo"][1] != "0")
    assert report["target is a mount point"] is False


@basic_cannot_hold(
    "basic level: this host lets any user create a user namespace (root inside it, and "
    "the kernel's attack surface that comes with it)",
    condition=_host_allows_user_namespaces(),
)
def test_the_code_cannot_create_a_user_namespace(sandbox):
    report = sandbox.run_json(
        "python",
        f"""
        import ctypes, errno, json
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.unshare({CLONE_NEWUSER})
        print(json.dumps(errno.errorcode[ctypes.get_errno()] if failed else "created"))
        """,
    )
    sandbox.assert_healthy()
    assert report in ("ENOSPC", "EPERM", "EACCES")  # bwrap: --disable-userns leaves none


# --- file descriptors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_type", "code"),
    [
        (
            "python",
            """
            import os
            for name in sorted(os.listdir("/proc/self/fd"), key=int):
                try:
                    print(f"{name} -> {os.readlink(f'/proc/self/fd/{name}')}")
                except FileNotFoundError:  # the descriptor os.listdir read through
                    pass
            """,
        ),
        ("shell", "ls -l /proc/$$/fd"),  # the shell's own descriptors, listed by its child
    ],
)
def test_the_code_inherits_no_file_descriptor_of_the_worker(sandbox, tmp_path, task_type, code):
    worker_file = tmp_path / "worker-only.txt"
    worker_file.write_text("the worker's open file")
    fd = os.open(worker_file, os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        outcome = sandbox.run(task_type, code)
    finally:
        os.close(fd)
    assert outcome_state(outcome) == CLEAN_EXIT, outcome
    sandbox.assert_healthy()
    links = [line.split(" -> ", 1) for line in outcome.stdout.splitlines() if " -> " in line]
    fds = {left.split()[-1]: target for left, target in links}  # ls -l: the name ends the left
    assert str(worker_file) not in outcome.stdout
    assert sorted(fds) == ["0", "1", "2"], outcome.stdout
    assert fds["0"] == "/dev/null"
    assert fds["1"].startswith("pipe:") and fds["2"].startswith("pipe:")


# --- a cross-check of the helpers themselves --------------------------------------------------


def test_the_leftover_check_sees_a_process_of_the_sandbox_uid():
    """``assert_healthy`` must be able to fail: a process of the sandbox's uid started by
    this worker is found, running and then as a zombie, until it is reaped."""
    child = subprocess.Popen(
        ["sleep", "30"], user=SANDBOX_UIDS[-1], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        assert child.pid in [proc.pid for proc in our_sandbox_processes()]
        child.kill()
        wait_for(lambda: process_table()[child.pid].state == "Z", timeout=2)
        assert child.pid in [proc.pid for proc in our_sandbox_processes()]
    finally:
        child.kill()
        child.wait()
    assert child.pid not in [proc.pid for proc in our_sandbox_processes()]
