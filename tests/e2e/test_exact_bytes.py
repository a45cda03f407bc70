"""Exact bytes through the API, against a real gateway and worker at both sandbox levels:
output that is not UTF-8 read back as base64 of its exact bytes (``?encoding=base64``,
on the record and on the event stream, while the spawn runs and once it has ended), code
and stdin given as base64, stderr merged into stdout in order; and the bad requests
each refused with a 422 naming its field."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from tests.support import TOKEN, http, wait_for, wait_terminal
from vx11.core.config import Settings

pytestmark = pytest.mark.e2e

NOT_UTF8 = b"\xff\xfeok\x00\xc3"
MAX_CODE, MAX_STDIN = Settings().max_code_bytes, Settings().max_stdin_bytes
PRINT_NOT_UTF8 = r"printf '\377\376ok\000\303'; printf '\377' >&2"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def run(stack, worker_level: str, **body) -> dict:
    stack.open_window()
    accepted = stack.spawn(body.pop("task_type", "shell"), body.pop("code"), **body)
    assert accepted["error"] is None, accepted
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert record["sandbox"] == worker_level, record
    return record


def read(stack, spawn_id: str, query: str = "") -> dict:
    status, record = http("GET", f"{stack.base}/vx11/spawn/{spawn_id}{query}", headers=TOKEN)
    assert status == 200, record
    return record


def test_output_that_is_not_utf8_reads_back_exactly_as_base64(stack, worker_level):
    record = run(stack, worker_level, code=PRINT_NOT_UTF8)
    assert record["status"] == "DONE", record
    assert (record["stdout"], record["encoding"]) == (NOT_UTF8.decode("utf-8", "replace"), "utf8")
    exact = read(stack, record["spawn_id"], "?encoding=base64")
    assert exact["encoding"] == "base64"
    assert (exact["stdout"], exact["stderr"]) == (b64(NOT_UTF8), b64(b"\xff"))
    assert exact["code"] == record["code"], "only the output is encoded"


def test_text_output_reads_back_as_the_base64_of_its_utf8(stack, worker_level):
    record = run(stack, worker_level, task_type="python", code="print('wörld')")
    exact = read(stack, record["spawn_id"], "?encoding=base64")
    assert base64.b64decode(exact["stdout"]) == "wörld\n".encode()


def test_code_and_stdin_given_as_base64_run_with_their_exact_bytes(stack, worker_level):
    code = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])  # é"
    record = run(
        stack, worker_level, task_type="python", encoding="base64",
        code=b64(code.encode()), stdin=b64(NOT_UTF8),
    )  # fmt: skip
    assert record["status"] == "DONE", record
    assert record["code"] == code
    exact = read(stack, record["spawn_id"], "?encoding=base64")
    assert base64.b64decode(exact["stdout"]) == NOT_UTF8[::-1]


def test_stdin_given_as_base64_text_is_kept_as_text(stack, worker_level):
    record = run(
        stack, worker_level, encoding="base64", code=b64(b"cat"), stdin=b64("hé\n".encode())
    )
    assert record["stdout"] == "hé\n"


def test_merged_stderr_is_in_stdout_in_the_order_written(stack, worker_level):
    code = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
    record = run(stack, worker_level, code=code, merge_stderr=True)
    assert record["stdout"] == "out1\nerr1\nout2\nerr2\nout3\nerr3\n"
    assert record["stderr"] == ""


def test_the_event_stream_gives_the_exact_bytes_as_base64(stack, worker_level):
    record = run(stack, worker_level, code=PRINT_NOT_UTF8)
    url = f"{stack.base}/vx11/spawn/{record['spawn_id']}/events?encoding=base64"
    with requests.get(url, headers=TOKEN, stream=True, timeout=30) as response:
        assert response.status_code == 200, response.text
        events = [
            (kind, json.loads(data)) for kind, data in _events(response.iter_lines(chunk_size=None))
        ]
    out = b"".join(base64.b64decode(d["base64"]) for kind, d in events if kind == "stdout")
    assert out == NOT_UTF8
    assert all("text" not in d for kind, d in events if kind in ("stdout", "stderr"))
    end = events[-1]
    assert end[0] == "end" and end[1]["stdout"] == b64(NOT_UTF8), end


def test_a_running_spawn_reads_its_output_so_far_exactly(stack, worker_level):
    stack.open_window()
    accepted = stack.spawn("shell", PRINT_NOT_UTF8 + "; sleep 30", ttl_seconds=60)
    spawn_id = accepted["spawn_id"]
    try:
        so_far = wait_for(
            lambda: (r := read(stack, spawn_id, "?encoding=base64"))["stdout"] and r, timeout=30
        )
        assert so_far["status"] == "RUNNING", so_far
        assert base64.b64decode(so_far["stdout"]) == NOT_UTF8
    finally:
        http("POST", f"{stack.base}/vx11/spawn/{spawn_id}/cancel", headers=TOKEN)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "not base64!", "encoding": "base64"}, "code"),
        ({"code": b64(b"\xff\xfe"), "encoding": "base64"}, "code"),
        ({"code": b64(b"echo\x00"), "encoding": "base64"}, "code"),
        ({"code": b64(b"cat"), "stdin": "%%%", "encoding": "base64"}, "stdin"),
        (
            {"code": b64(b"cat"), "stdin": b64(b"x" * (MAX_STDIN + 1)), "encoding": "base64"},
            "stdin",
        ),
        ({"code": b64(b"#" * (MAX_CODE + 1)), "encoding": "base64"}, "code"),
        ({"code": "echo", "encoding": "hex"}, "encoding"),
        ({"code": "echo", "merge_stderr": "sometimes"}, "merge_stderr"),
    ],
)
def test_a_bad_encoding_is_a_422_naming_its_field(stack, body, field):
    stack.open_window()
    status, answer = http("POST", f"{stack.base}/vx11/spawn", {"task_type": "shell", **body}, TOKEN)
    assert status == 422, answer
    assert answer["error"] == "validation_error" and field in answer["fields"], answer


@pytest.mark.parametrize("path", ["", "/events"])
def test_an_unknown_encoding_to_read_with_is_a_422(stack, path):
    url = f"{stack.base}/vx11/spawn/spawn-00000000{path}?encoding=hex"
    status, answer = http("GET", url, None, TOKEN)
    assert status == 422 and "encoding" in answer["fields"], answer


def _events(lines):
    kind, data = "message", []
    for raw in lines:
        line = raw.decode()
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].strip())
