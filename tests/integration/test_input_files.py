"""A spawn's files, written in its working directory before it runs, at both levels:
directories made, modes 0700 and 0600, owned by the run's user, exact bytes; a path
that would leave the working directory is refused before anything runs."""

from __future__ import annotations

import json

import pytest

from workers.sandbox import Limits, run_sandboxed

pytestmark = pytest.mark.serial  # runs as the sandbox's uids

LIMITS = Limits(
    wall_time=10, cpu_time=10, memory_mb=256, max_processes=32, max_file_size_mb=4,
    output_bytes=64 << 10,
)  # fmt: skip
FILES = [("data.csv", b"a,b\n1,2\n"), ("in/deep/blob.bin", bytes(range(256)))]
LOOK = """
import json, os, sys
seen = {}
for path in sys.argv[1:]:
    info = os.stat(path)
    with open(path, "rb") as f:
        seen[path] = [oct(info.st_mode & 0o777), info.st_uid == os.getuid(), f.read().hex()]
for directory in ("in", "in/deep"):
    info = os.stat(directory)
    seen[directory] = [oct(info.st_mode & 0o777), info.st_uid == os.getuid(), None]
print(json.dumps(seen))
"""


def test_files_are_in_the_working_directory_private_and_exact(level_config):
    outcome = run_sandboxed(
        "python", LOOK, limits=LIMITS, config=level_config, files=FILES,
        args=[path for path, _ in FILES],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome
    seen = json.loads(outcome.stdout)
    for path, data in FILES:
        assert seen[path] == ["0o600", True, data.hex()], path
    assert seen["in"] == seen["in/deep"] == ["0o700", True, None]


def test_a_shell_run_reads_its_files_too(level_config):
    outcome = run_sandboxed(
        "shell", "cat data.csv", limits=LIMITS, config=level_config, files=FILES
    )
    assert outcome.stdout == "a,b\n1,2\n"


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "", "a/"])
def test_a_path_that_would_leave_the_working_directory_is_refused(level_config, path):
    with pytest.raises(ValueError, match="path"):
        run_sandboxed("shell", "true", limits=LIMITS, config=level_config, files=[(path, b"x")])


# --- files out: artifacts -----------------------------------------------------------------

MAKE = """
import os
os.makedirs("out/sub")
open("out/a.txt", "w").write("a" * 10)
open("out/sub/b.csv", "w").write("b,c")
open("skip.txt", "w").write("not asked for")
os.symlink("/etc/passwd", "out/passwd.txt")
os.symlink("/etc", "out/etc")
os.mkfifo("out/fifo.txt")
"""


def test_the_matching_regular_files_are_kept_and_no_link_is_followed(level_config):
    outcome = run_sandboxed(
        "python", MAKE, limits=LIMITS, config=level_config,
        artifacts=["out/*.txt", "**/*.csv", "out/etc/*"], artifact_bytes=1 << 20,
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome
    kept = {a.path: a.data for a in outcome.collected.artifacts}
    assert kept == {"out/a.txt": b"a" * 10, "out/sub/b.csv": b"b,c"}
    assert not outcome.collected.truncated


def test_artifacts_past_the_byte_limit_are_left_out_and_said_so(level_config):
    outcome = run_sandboxed(
        "python", MAKE, limits=LIMITS, config=level_config, artifacts=["**"], artifact_bytes=12,
    )  # fmt: skip
    assert [a.path for a in outcome.collected.artifacts] == ["out/a.txt"]
    assert outcome.collected.truncated


def test_a_run_without_artifacts_collects_nothing(level_config):
    outcome = run_sandboxed("python", MAKE, limits=LIMITS, config=level_config)
    assert outcome.collected is None
