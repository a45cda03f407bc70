"""Ordinary programs in the sandbox, for real, at both levels: the system's tools work
inside the bwrap level's own ``/etc`` as they do on the host.

Runs as a uid of the sandbox's range when the tests run as root (the basic level's
working directories are then made under a directory anyone may traverse), else as the
tests' own user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from workers.sandbox import (
    Limits,
    Outcome,
    SandboxConfig,
    SandboxError,
    Watcher,
    run_sandboxed,
)
from workers.sandbox.levels import bwrap_problem

# At the basic level RLIMIT_NPROC counts every process of the sandbox uid: run alone.
pytestmark = pytest.mark.serial

IS_ROOT = os.geteuid() == 0
LIMITS = Limits(
    wall_time=10, cpu_time=10, memory_mb=256, max_processes=64, max_file_size_mb=4,
    output_bytes=64 * 1024,
)  # fmt: skip


@pytest.fixture(scope="module", params=["bwrap", "basic"])
def config(request) -> Iterator[SandboxConfig]:
    root = Path(tempfile.mkdtemp(prefix="vx11-programs-", dir="/tmp"))
    root.chmod(0o711)
    config = SandboxConfig(
        level=request.param, root=str(root), bwrap=shutil.which("bwrap") or "bwrap"
    )
    try:
        if request.param == "bwrap" and (problem := bwrap_problem(config)) is not None:
            pytest.skip(f"the bwrap level does not work here: {problem}")
        yield config
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(config: SandboxConfig, task_type: str, code: str, *args: str) -> Outcome:
    outcome = run_sandboxed(
        task_type, textwrap.dedent(code), limits=LIMITS, config=config, args=args
    )
    assert (outcome.exit_code, outcome.term_signal, outcome.limit_hit) == (0, None, None), outcome
    return outcome


def user_name(config: SandboxConfig) -> str | None:
    """Who the code is, by name, as the sandbox's passwd says (None: at the basic level
    as root, a uid of the sandbox's range, which no account names)."""
    if config.level == "bwrap":
        return "sandbox"
    return None if IS_ROOT else pwd.getpwuid(os.getuid()).pw_name


def test_awk_and_which_are_found_through_etc_alternatives(config):
    outcome = run(config, "shell", "echo a b | awk '{print $2}'; which sh awk")
    lines = outcome.stdout.splitlines()
    assert lines[0] == "b"
    assert [os.path.basename(line) for line in lines[1:]] == ["sh", "awk"]
    assert outcome.stderr == ""


def test_the_code_knows_its_user_and_group_by_name(config):
    if user_name(config) is None:
        pytest.skip("a basic-level run of a root worker has a uid no account names")
    outcome = run(
        config,
        "python",
        """
        import getpass, grp, os, pwd
        entry = pwd.getpwuid(os.getuid())
        print(getpass.getuser(), grp.getgrgid(os.getgid()).gr_name, entry.pw_dir)
        """,
    )
    name, group, home = outcome.stdout.split()
    assert name == user_name(config)
    if config.level == "bwrap":
        assert (group, home) == ("sandbox", "/work")
    shell_view = run(config, "shell", "id -un; whoami")
    assert shell_view.stdout == f"{name}\n{name}\n"


def test_locale_and_date_work_in_c_utf8_and_utc(config):
    outcome = run(config, "shell", "locale; date -u +%Z; date +%Z; date -d @0 -u +%Y")
    assert outcome.stderr == ""  # locale warns on stderr when it cannot load one
    assert "LANG=C.UTF-8" in outcome.stdout.splitlines()
    assert 'LC_CTYPE="C.UTF-8"' in outcome.stdout.splitlines()
    *_, utc, local, epoch = outcome.stdout.splitlines()
    assert (utc, epoch) == ("UTC", "1970")
    if config.level == "bwrap":
        assert local == "UTC"
        python = run(
            config,
            "python",
            """
            import locale, time
            print(locale.setlocale(locale.LC_ALL, ""), time.tzname[0], open("/etc/timezone").read())
            """,
        )
        assert python.stdout.split() == ["C.UTF-8", "UTC", "Etc/UTC"]


def test_localhost_resolves_to_loopback_only(config):
    outcome = run(
        config,
        "python",
        """
        import json, socket
        print(json.dumps(sorted({info[4][0] for info in socket.getaddrinfo("localhost", 80)})))
        """,
    )
    assert "127.0.0.1" in json.loads(outcome.stdout)
    assert set(json.loads(outcome.stdout)) <= {"127.0.0.1", "::1"}


# --- the shells -------------------------------------------------------------------------


def test_bash_runs_bash_with_pipefail_arrays_and_its_arguments(config):
    outcome = run(
        config,
        "bash",
        """
        set -euo pipefail
        if false | true; then echo "pipefail off"; else echo "pipefail on"; fi
        words=("$@")
        [[ ${#words[@]} == 2 ]] && echo "$0 ${words[1]} ${BASH_VERSION%%.*}"
        """,
        "one",
        "two words",
    )
    first, second = outcome.stdout.splitlines()
    assert first == "pipefail on"
    name, rest = second.split(" ", 1)
    assert name == "bash" and rest.startswith("two words ")
    assert int(rest.rsplit(" ", 1)[1]) >= 4


def test_shell_stays_posix_sh(config):
    outcome = run(config, "shell", 'echo "$0 ${BASH_VERSION:-no-bash}"; echo "$1"', "arg")
    assert outcome.stdout == "sh no-bash\narg\n"
    if os.path.basename(os.path.realpath("/bin/sh")) == "dash":
        dash = run_sandboxed(
            "shell", "set -o pipefail; echo unreachable", limits=LIMITS, config=config
        )
        assert dash.exit_code == 2 and dash.stdout == ""
        assert "Illegal option -o pipefail" in dash.stderr


def test_a_worker_without_bash_refuses_a_bash_run_clearly(config):
    missing = replace(config, bash="vx11-no-such-bash")
    with pytest.raises(SandboxError, match=r"bash .* is not installed on this worker"):
        run_sandboxed("bash", "echo hi", limits=LIMITS, config=missing)
    root = Path(config.root)
    assert not root.exists() or os.listdir(root) == []  # nothing was started or made


# --- live output --------------------------------------------------------------------------


class Arrivals(Watcher):
    """When each chunk of output reached the worker."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, str, bytes]] = []

    def output(self, stream: str, data: bytes) -> None:
        self.chunks.append((time.monotonic(), stream, data))

    def arrival(self, stream: str, text: bytes) -> float:
        """When the chunk holding ``text`` arrived."""
        return next(at for at, name, data in self.chunks if name == stream and text in data)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_python_output_arrives_as_it_is_printed_not_at_the_end(config, stream):
    arrivals = Arrivals()
    outcome = run_sandboxed(
        "python",
        f"import sys, time; print('first', file=sys.{stream}); time.sleep(1); "
        f"print('second', file=sys.{stream})",
        limits=LIMITS,
        config=config,
        watcher=arrivals,
    )
    assert (outcome.exit_code, getattr(outcome, stream)) == (0, "first\nsecond\n"), outcome
    # Not a speed figure: the first line is on its way while the program sleeps.
    assert arrivals.arrival(stream, b"second") - arrivals.arrival(stream, b"first") >= 0.5


def test_python_sees_its_usual_argv_and_streams(config):
    outcome = run(
        config,
        "python",
        """
        import json, sys
        print(json.dumps([sys.argv, sys.flags.isolated, sys.stdout.encoding]))
        """,
        "one",
    )
    assert json.loads(outcome.stdout) == [["main.py", "one"], 1, "utf-8"]
