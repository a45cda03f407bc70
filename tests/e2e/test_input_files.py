"""A spawn's files, end to end at both sandbox levels: written in its working directory
before it runs, read by its code, listed on its record (path and size, never the
content); and every file that would leave the working directory, collide, or go past
the limits refused with a 422 naming it, before anything is queued."""

from __future__ import annotations

import base64

import pytest

from tests.support import TOKEN, http, wait_terminal
from vx11.core.config import Settings

pytestmark = pytest.mark.e2e

SETTINGS = Settings()
BLOB = bytes(range(256)) * 4
READER = """
import hashlib, pathlib
print(pathlib.Path("data.csv").read_text().splitlines()[1])
print(hashlib.sha256(pathlib.Path("in/ü/blob.bin").read_bytes()).hexdigest())
print(sorted(p.name for p in pathlib.Path(".").iterdir()))
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def post(stack, body: dict) -> tuple[int, dict]:
    stack.open_window()
    return http("POST", f"{stack.base}/vx11/spawn", body, TOKEN)


def test_the_code_reads_its_files_and_the_record_lists_them(stack, worker_level):
    import hashlib

    files = [
        {"path": "data.csv", "content": "a,b\n1,2\n"},
        {"path": "in/ü/blob.bin", "content": b64(BLOB), "encoding": "base64"},
        {"path": "-rf", "content": ""},
    ]
    status, accepted = post(stack, {"task_type": "python", "code": READER, "files": files})
    assert status == 200 and accepted["error"] is None, accepted
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert (record["status"], record["sandbox"]) == ("DONE", worker_level), record
    assert record["stdout"].splitlines() == [
        "1,2", hashlib.sha256(BLOB).hexdigest(), "['-rf', 'data.csv', 'in', 'main.py']",
    ]  # fmt: skip
    assert record["files"] == [
        {"path": "data.csv", "size": 8}, {"path": "in/ü/blob.bin", "size": len(BLOB)},
        {"path": "-rf", "size": 0},
    ]  # fmt: skip


def test_a_shell_spawn_gets_its_files_too(stack, worker_level):
    body = {"task_type": "shell", "code": "cat a/b", "files": [{"path": "a/b", "content": "hi"}]}
    status, accepted = post(stack, body)
    assert status == 200, accepted
    assert wait_terminal(stack.base, accepted["spawn_id"])["stdout"] == "hi"


def file(path: str, content: str = "x", **more) -> dict:
    return {"path": path, "content": content, **more}


EACH, TOTAL = SETTINGS.max_input_file_bytes, SETTINGS.max_input_files_bytes


@pytest.mark.parametrize(
    ("task_type", "files", "said"),
    [
        ("shell", [file("/etc/passwd")], "relative path"),
        ("shell", [file("../escape")], ".. parts"),
        ("shell", [file("a/../../etc/cron.d/x")], ".. parts"),
        ("shell", [file("a//b")], "empty"),
        ("shell", [file("a"), file("a")], "collides"),
        ("shell", [file("a"), file("a/b")], "collides"),
        ("shell", [file("a/b"), file("a")], "collides"),
        ("python", [file("main.py")], "main.py"),
        ("shell", [file("x", "%%", encoding="base64")], "not base64"),
        ("shell", [file("big", b64(b"x" * (EACH + 1)), encoding="base64")], "more than"),
        (
            "shell",
            [file(f"f{i}", b64(b"x" * EACH), encoding="base64") for i in range(TOTAL // EACH + 1)],
            "in all",
        ),
        ("shell", [file(f"f{i}") for i in range(SETTINGS.max_input_files + 1)], "at most"),
        ("shell", [{"path": "x"}], "required"),
    ],
)
def test_a_file_that_cannot_be_is_a_422_naming_it(stack, task_type, files, said):
    status, answer = post(stack, {"task_type": task_type, "code": "true", "files": files})
    assert status == 422, answer
    assert said in str(answer["fields"]["files"]), answer
