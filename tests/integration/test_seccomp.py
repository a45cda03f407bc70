"""The system-call filter of every spawn at the bwrap level (:mod:`workers.sandbox.seccomp`):
each denied call answers its error inside a real sandbox, what programs need keeps
working, no lock on a shared file crosses from one spawn to another, and a worker that
cannot make the filter does not run spawns at bwrap."""

from __future__ import annotations

import json
import platform
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from vx11.core.config import Settings
from workers.sandbox import (
    Limits,
    Outcome,
    SandboxConfig,
    SandboxError,
    run_sandboxed,
    seccomp,
    slot,
)
from workers.sandbox.levels import bwrap_problem, choose

pytestmark = pytest.mark.serial  # starts slots as the sandbox's uid

LIMITS = Limits(
    wall_time=20, cpu_time=20, memory_mb=256, max_processes=32, max_file_size_mb=4,
    output_bytes=256 * 1024,
)  # fmt: skip


@pytest.fixture(scope="module")
def config(bwrap_config: SandboxConfig) -> SandboxConfig:
    return bwrap_config


def python(config: SandboxConfig, code: str) -> Outcome:
    return run_sandboxed("python", textwrap.dedent(code), limits=LIMITS, config=config)


CALL = """
    import ctypes, errno
    libc = ctypes.CDLL(None, use_errno=True)
    number, *args = NUMBERS
    result = libc.syscall(number, *(ctypes.c_long(arg) for arg in args))
    print(errno.errorcode.get(ctypes.get_errno(), "?") if result < 0 else "allowed")
"""

# x86_64 numbers; each call with arguments that would do no harm if it were allowed
DENIED_CALLS = {
    "keyctl": ([250, 0, 0], "ENOSYS"),
    "add_key": ([248, 0, 0, 0, 0, 0], "ENOSYS"),
    "io_uring_setup": ([425, 1, 0], "ENOSYS"),
    "bpf": ([321, 0, 0, 0], "EPERM"),
    "perf_event_open": ([298, 0, 0, -1, -1, 0], "EPERM"),
    "userfaultfd": ([323, 0], "EPERM"),
    "ptrace": ([101, 0, 0, 0, 0], "EPERM"),
    "process_vm_readv": ([310, 1, 0, 0, 0, 0, 0], "EPERM"),
    "mount": ([165, 0, 0, 0, 0, 0], "EPERM"),
    "unshare": ([272, 0x04000000], "EPERM"),
    "setns": ([308, 0, 0], "EPERM"),
    "personality without address randomisation": ([135, 0x0040000], "EPERM"),
    "inotify_init1": ([294, 0], "ENOSYS"),
    "flock": ([73, 0, 2], "ENOSYS"),
    "socket(AF_VSOCK)": ([41, 40, 1, 0], "EAFNOSUPPORT"),
    "fcntl(F_SETLEASE)": ([72, 0, 1024, 0], "EPERM"),
    "fcntl(F_NOTIFY)": ([72, 0, 1026, 0], "EPERM"),
    "fcntl(F_SETLEASE) with high bits set by hand": ([72, 0, (1 << 32) | 1024, 0], "EPERM"),
}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the numbers are x86_64's")
@pytest.mark.parametrize("name", list(DENIED_CALLS))
def test_a_denied_call_answers_an_error_not_a_kill(config, name):
    numbers, expected = DENIED_CALLS[name]
    outcome = python(config, CALL.replace("NUMBERS", json.dumps(numbers)))
    assert (outcome.exit_code, outcome.stdout.strip()) == (0, expected), outcome


def test_the_personality_query_and_the_status_line_still_answer(config):
    outcome = python(config, """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.syscall(135, 0xFFFFFFFF) >= 0)
        print([l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")])
    """)  # fmt: skip
    assert outcome.stdout.split("\n")[:2] == ["True", "['2']"], outcome


def test_what_programs_need_keeps_working(config):
    """Threads, multiprocessing, a subprocess, sqlite3 on a file in /work (which locks
    it), and a shell pipeline."""
    outcome = python(config, """
        import multiprocessing, sqlite3, subprocess, threading
        seen = []
        t = threading.Thread(target=seen.append, args=("thread",)); t.start(); t.join()
        with multiprocessing.Pool(2) as pool:
            seen.append(sum(pool.map(abs, [-1, -2, -3])))
        seen.append(subprocess.run(["sh", "-c", "echo a | tr a b"], capture_output=True,
                                   text=True).stdout.strip())
        db = sqlite3.connect("/work/data.db")
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
        db.commit()
        other = sqlite3.connect("/work/data.db")
        seen.append(other.execute("SELECT sum(x) FROM t").fetchone()[0])
        print(seen)
    """)  # fmt: skip
    assert (outcome.exit_code, outcome.stdout) == (0, "['thread', 6, 'b', 3]\n"), outcome


LOOK = """
    import fcntl, struct, time
    time.sleep(WAIT)
    shared = open("/dev/zero", "r+")
    query = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
    print(struct.unpack("hhqqi", fcntl.fcntl(shared, fcntl.F_GETLK, query)))
    try:
        fcntl.flock(open("/usr/bin/env", "rb"), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        print(exc.strerror)
"""


def test_a_lock_on_a_shared_file_is_not_seen_by_another_spawn(config):
    """A record lock on ``/dev/zero`` (an inode every sandbox shares and may open for
    writing) taken by one spawn changes nothing another spawn sees (which may be a lock
    the host holds); flock on a shared read-only file is refused outright."""
    alone = python(config, LOOK.replace("WAIT", "0"))
    held: list[Outcome] = []
    holder = threading.Thread(target=lambda: held.append(python(config, """
        import fcntl, time
        shared = open("/dev/zero", "r+")
        fcntl.lockf(shared, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("held", flush=True)
        time.sleep(3)
    """)))  # fmt: skip
    holder.start()
    try:
        beside = python(config, LOOK.replace("WAIT", "1"))
    finally:
        holder.join()
    assert held[0].stdout == "held\n", held
    assert alone.stdout.endswith("\nFunction not implemented\n"), alone
    assert beside.stdout == alone.stdout, (alone, beside)


def test_a_worker_that_cannot_make_the_filter_does_not_run_spawns_at_bwrap(config, monkeypatch):
    def refuse() -> bytes:
        raise SandboxError("cannot build the system-call filter with libseccomp: missing")

    slot.SLOTS.close()
    monkeypatch.setattr(seccomp, "program", refuse)
    assert "system-call filter" in (bwrap_problem(replace(config)) or "")
    settings = Settings(sandbox_require="bwrap", sandbox_root=config.root)
    with pytest.raises(SandboxError, match="system-call filter"):
        choose(settings)


def test_every_entry_of_the_filter_is_listed_in_the_security_doc():
    doc = (Path(__file__).parents[2] / "docs/security.md").read_text()
    section = doc.split("## The system-call filter", 1)[1].split("\n## ", 1)[0]
    for name in seccomp.DENIED:
        assert f"| `{name}` |" in section, name
    for why in seccomp.PERSONALITY_FLAGS.values():
        assert why.split(":")[0] in section, why
    for text in ("F_SETLEASE", "F_NOTIFY", "AF_VSOCK", "F_OFD_SETLKW"):
        assert text in section, text
