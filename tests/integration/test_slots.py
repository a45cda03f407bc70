"""The bwrap level's slots, for real (:mod:`workers.sandbox.slot`): a python spawn run by
the launcher's started interpreter behaves exactly as ``python3 -I -u main.py`` started
for it would, and a launcher that dies, or has run its share, is replaced.

Each program runs twice in the same slot, warm (the default) and with
``warm_python=False`` (``python3`` started inside the same sandbox), and the two
outcomes must be the same, byte for byte.
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support import wait_for
from vx11.core.config import Settings
from workers.sandbox import Limits, Outcome, SandboxConfig, SandboxError, run_sandboxed, slot
from workers.sandbox.levels import base_config

pytestmark = pytest.mark.serial  # counts and kills processes of the sandbox uid

LIMITS = Limits(
    wall_time=20, cpu_time=20, memory_mb=256, max_processes=64, max_file_size_mb=4,
    output_bytes=256 * 1024,
)  # fmt: skip


@pytest.fixture(scope="module")
def config(bwrap_config: SandboxConfig) -> SandboxConfig:
    return bwrap_config


def run(config: SandboxConfig, code: str, *args: str, stdin: str | None = None) -> Outcome:
    return run_sandboxed(
        "python", textwrap.dedent(code), limits=LIMITS, config=config, args=args, stdin=stdin
    )


def visible(outcome: Outcome) -> tuple:
    """What a user of the spawn sees of how it ended."""
    return (outcome.exit_code, outcome.term_signal, outcome.limit_hit, outcome.stdout,
            outcome.stderr)  # fmt: skip


PROGRAMS = {
    "argv, main module and flags": """
        import sys, __main__
        print(sys.argv, sys.orig_argv[1:], __name__, __file__, __doc__, __package__)
        print(sorted(vars(__main__)), type(__loader__).__name__, __spec__, __cached__)
        print(sys.flags, sys.path, sys.executable)
        print(open("/proc/self/cmdline", "rb").read().rstrip(b"\\0").split(b"\\0")[3:])
    """,
    "the modules a fresh interpreter has": """
        import sys
        print(sorted(sys.modules))
    """,
    "streams as -u makes them": """
        import sys
        for s in (sys.stdin, sys.stdout, sys.stderr, sys.__stdout__):
            print(s.name, s.mode, s.encoding, s.errors, s.line_buffering, s.write_through,
                  type(s.buffer).__name__, s.isatty(), s.fileno())
        sys.stdout.buffer.write(b"\\xff raw bytes\\n")
        print("to stderr", file=sys.stderr)
    """,
    "stdin": """
        print(repr(input()), repr(__import__("sys").stdin.read()))
    """,
    "exit with a number": "import sys; print('a'); sys.exit(3)",
    "exit with a message": "import sys; sys.exit('gone: bye')",
    "exit with None": "raise SystemExit(None)",
    "exit with 256": "raise SystemExit(256)",
    "an uncaught exception": """
        def inner():
            raise ValueError("deep")
        inner()
    """,
    "an exception with a cause": """
        try:
            {}["k"]
        except KeyError as exc:
            raise RuntimeError("wrapped") from exc
    """,
    "a syntax error": "print('ok'\nx = = 1\n",
    "keyboard interrupt": "raise KeyboardInterrupt",
    "killed by its own signal": "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    "SIGINT and SIGPIPE as python sets them": """
        import signal
        print([str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGPIPE,
               signal.SIGXFSZ, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP)])
        print(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    """,
    "threads joined at exit, then atexit": """
        import atexit, threading, time
        atexit.register(lambda: print("atexit ran"))
        def late():
            time.sleep(0.2)
            print("thread finished")
        threading.Thread(target=late).start()
        print("main done")
    """,
    "os.fork": """
        import os
        pid = os.fork()
        if pid == 0:
            print("child", os.getppid() > 0)
            os._exit(7)
        print("parent", os.waitpid(pid, 0)[1] >> 8)
    """,
    "multiprocessing": """
        import multiprocessing
        def square(x):
            return x * x
        if __name__ == "__main__":
            with multiprocessing.Pool(2) as pool:
                print(pool.map(square, range(5)))
    """,
    "warnings name the file": "import warnings; warnings.warn('careful')",
    "limits, identity and place": """
        import os, resource
        print([resource.getrlimit(getattr(resource, n)) for n in dir(resource)
               if n.startswith("RLIMIT_")])
        print(os.getuid(), os.getgid(), os.getgroups(), os.getcwd(), os.umask(0o22))
        print(sorted(os.environ.items()), os.getpid(), os.getppid(), os.getsid(0) == os.getpid())
        print(sorted(os.listdir("/proc/self/fd")), os.listdir("/work"))
        status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
        print({k: status[k].strip() for k in ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp")})
    """,
    "recursion limit and hash of a str vary as in a new process": """
        import sys
        print(sys.getrecursionlimit())
    """,
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_a_warm_python_run_is_exactly_a_python3_run(config, name):
    code = PROGRAMS[name]
    stdin = "first line\nrest\n" if name == "stdin" else None
    cold = run(replace(config, warm_python=False), code, "arg one", "2", stdin=stdin)
    warm = run(config, code, "arg one", "2", stdin=stdin)
    assert visible(warm) == visible(cold)
    assert cold.limit_hit is None, cold


def test_the_warm_interpreter_keeps_nothing_of_a_run_for_the_next(config):
    dirty = run(
        config,
        """
        import builtins, json, sys, os
        json.dumps = None
        builtins.print = None
        sys.modules["planted"] = sys
        sys.setrecursionlimit(77)
        sys.path.insert(0, "/tmp")
        os.environ["PLANTED"] = "1"
        """,
    )
    assert dirty.exit_code == 0, dirty
    clean = run(
        config,
        """
        import json, os, sys
        print(json.dumps(["planted" in sys.modules, sys.getrecursionlimit(),
                          "/tmp" in sys.path, "PLANTED" in os.environ]))
        """,
    )
    assert clean.stdout == "[false, 1000, false, false]\n", clean


def the_launcher(config: SandboxConfig) -> slot.Launcher:
    """The idle launcher of this process's slot, after one run made sure there is one."""
    assert run(config, "pass").exit_code == 0
    [launcher] = [launcher for idle in slot.SLOTS.idle.values() for launcher in idle]
    return launcher


def launcher_python(launcher: slot.Launcher) -> int:
    """The pid of the launcher's python: bwrap's child's child."""
    bwrap_init = int(Path(f"/proc/{launcher.proc.pid}/task/{launcher.proc.pid}/children")
                     .read_text().split()[0])  # fmt: skip
    return int(Path(f"/proc/{bwrap_init}/task/{bwrap_init}/children").read_text().split()[0])


def test_a_launcher_killed_during_a_run_ends_it_with_a_reason_and_is_replaced(config):
    launcher = the_launcher(config)
    python = launcher_python(launcher)
    results: list[BaseException | Outcome] = []

    def long_run() -> None:
        try:
            results.append(run(config, "import time; print('started', flush=True); time.sleep(30)"))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=long_run)
    started = time.monotonic()
    thread.start()
    wait_for(lambda: not slot.SLOTS.idle.get(launcher.key), timeout=5)  # taken by the run
    time.sleep(0.5)
    os.kill(python, signal.SIGKILL)
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10  # not the 30 s of the sleep
    [error] = results
    assert isinstance(error, SandboxError), error
    assert "launcher died" in str(error)
    follow_up = run(config, "print('after')")
    assert (follow_up.exit_code, follow_up.stdout) == (0, "after\n"), follow_up
    assert the_launcher(config).proc.pid != launcher.proc.pid


def test_a_launcher_refused_at_its_start_says_why(config):
    """What bubblewrap said when it died (a namespace or a mount refused, as in a
    container without the settings it needs) is in the error, not only in a log."""
    refusing = Path(config.root) / "bwrap"  # where the sandbox's user may run it
    refusing.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: nope' >&2\n")
    refusing.chmod(0o755)
    with pytest.raises(
        SandboxError, match=r"launcher (died|is gone).*Creating new namespace failed: nope"
    ):
        run(replace(config, bwrap=str(refusing)), "print('never')")
    refusing.unlink()


def test_an_idle_launcher_that_died_is_replaced_before_the_next_run(config):
    launcher = the_launcher(config)
    os.kill(launcher_python(launcher), signal.SIGKILL)
    wait_for(lambda: not launcher.alive(), timeout=5)
    outcome = run(config, "print('fine')")
    assert (outcome.exit_code, outcome.stdout) == (0, "fine\n"), outcome
    assert the_launcher(config).proc.pid != launcher.proc.pid


def test_a_launcher_is_renewed_after_its_share_of_runs(config, monkeypatch):
    monkeypatch.setattr(slot, "RENEW_AFTER_RUNS", 3)
    slot.SLOTS.close()
    pids = []
    for _ in range(6):
        assert run(config, "pass").exit_code == 0
        idle = [launcher for launchers in slot.SLOTS.idle.values() for launcher in launchers]
        pids.append(idle[0].proc.pid if idle else None)
    # three runs each; after the third, the launcher is closed rather than kept
    assert pids[0] == pids[1] != pids[3] == pids[4]
    assert pids[2] is None and pids[5] is None


def test_a_forked_process_starts_slots_of_its_own(config):
    parent_launcher = the_launcher(config)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own slot, never its parent's
        try:
            outcome = run(config, "print('child')")
            launcher = next(iter(slot.SLOTS.idle.values()))[0]
            ok = outcome.stdout == "child\n" and launcher.proc.pid != parent_launcher.proc.pid
            os.write(write_end, b"ok" if ok else repr(outcome).encode())
        finally:
            slot.SLOTS.close()
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 4096)
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert parent_launcher.alive()
    assert run(config, "print('parent')").stdout == "parent\n"


@pytest.fixture(scope="module")
def with_cgroups(config: SandboxConfig) -> Iterator[SandboxConfig]:
    """``config`` with the cgroups a root worker gets, which hold a run to its process
    limit (without them RLIMIT_NPROC counts every process of the uid on the host)."""
    cgroups_config = base_config(Settings.from_env())
    if cgroups_config.cgroups is None:
        pytest.skip("no cgroups here: a process limit of 1 cannot hold without them")
    try:
        yield replace(config, cgroups=cgroups_config.cgroups)
    finally:
        slot.SLOTS.close()
        cgroups_config.cgroups.close()


@pytest.mark.parametrize("task_type", ["shell", "python"])
def test_a_run_limited_to_one_process_runs_and_the_next_is_prepared(with_cgroups, task_type):
    """``max_processes`` counts the code's own processes: the run's init, prepared by the
    slot, is not one of them, and the next run's preparation fits beside it."""
    limits = replace(LIMITS, max_processes=1)
    code = "echo one" if task_type == "shell" else "print('one')"
    for _ in range(3):
        outcome = run_sandboxed(task_type, code, limits=limits, config=with_cgroups)
        assert (outcome.exit_code, outcome.stdout) == (0, "one\n"), outcome
    forked = run_sandboxed("python", "import os\nos.fork()\n", limits=limits, config=with_cgroups)
    assert forked.exit_code == 1 and "BlockingIOError" in forked.stderr, forked
