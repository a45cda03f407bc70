"""What a run prints, exactly: its bytes as they were written (the text beside them
replaces what is not UTF-8), its input as bytes, and standard error merged into
standard output in the order written, at both levels."""

from __future__ import annotations

import textwrap

import pytest

from workers.sandbox import Limits, SandboxConfig, run_sandboxed

pytestmark = pytest.mark.serial  # runs as the sandbox's uids

LIMITS = Limits(
    wall_time=10, cpu_time=10, memory_mb=256, max_processes=32, max_file_size_mb=4,
    output_bytes=64 << 10,
)  # fmt: skip
NOT_UTF8 = b"\xff\xfeok\x00\xc3"
"""Bytes no UTF-8 decoder keeps: a lone continuation, NUL, a sequence cut short."""


def run(level_config: SandboxConfig, task_type: str, code: str, **options):
    return run_sandboxed(
        task_type, textwrap.dedent(code), limits=LIMITS, config=level_config, **options
    )


def test_bytes_that_are_not_utf8_come_back_exactly(level_config):
    outcome = run(level_config, "shell", r"printf '\377\376ok\000\303'; printf '\377' >&2")
    assert outcome.exit_code == 0, outcome
    assert (outcome.stdout_bytes, outcome.stderr_bytes) == (NOT_UTF8, b"\xff")
    assert outcome.stdout == NOT_UTF8.decode("utf-8", "replace")


def test_input_given_as_bytes_reaches_the_code_exactly(level_config):
    reverse = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])"
    outcome = run(level_config, "python", reverse, stdin=NOT_UTF8)
    assert outcome.exit_code == 0, outcome
    assert outcome.stdout_bytes == NOT_UTF8[::-1]


@pytest.mark.parametrize(
    ("task_type", "code"),
    [
        ("shell", "for i in 1 2 3; do echo out$i; echo err$i >&2; done"),
        (
            "python",
            """
            import sys
            for i in (1, 2, 3):
                print(f"out{i}", flush=True)
                print(f"err{i}", file=sys.stderr, flush=True)
            """,
        ),
    ],
)
def test_merged_stderr_is_in_stdout_in_the_order_written(level_config, task_type, code):
    outcome = run(level_config, task_type, code, merge_stderr=True)
    assert outcome.exit_code == 0, outcome
    assert outcome.stdout == "out1\nerr1\nout2\nerr2\nout3\nerr3\n"
    assert (outcome.stderr, outcome.stderr_bytes, outcome.stderr_truncated) == ("", b"", False)


def test_without_merging_the_streams_stay_apart(level_config):
    outcome = run(level_config, "shell", "echo out; echo err >&2")
    assert (outcome.stdout, outcome.stderr) == ("out\n", "err\n")
