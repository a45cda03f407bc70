"""Files out, end to end at both sandbox levels: the files a spawn's patterns match are
kept with its record in the ledger, listed with their size and SHA-256, and read back
exactly at ``GET /vx11/spawn/<id>/artifacts/<path>`` under the record's own
authorization; no link is followed and no FIFO read; the byte limit leaves files out
and says so; ``purge`` removes them with their record."""

from __future__ import annotations

import hashlib
import urllib.request
from datetime import timedelta

import pytest

from tests.support import TOKEN, http, wait_terminal
from vx11.core.config import Settings
from vx11.core.ledger import Ledger
from vx11.core.times import utcnow

pytestmark = pytest.mark.e2e

BLOB = bytes(range(256)) * 16
MAKE = """
import os
os.makedirs("out/deep")
open("out/plot.bin", "wb").write(bytes(range(256)) * 16)
open("out/deep/data.csv", "w").write("a,b\\n1,2\\n")
open("scratch.txt", "w").write("not kept")
os.symlink("/etc/passwd", "out/passwd")
os.symlink("/etc", "out/etc")
os.mkfifo("out/fifo")
print("made")
"""


def spawn(stack, **body) -> dict:
    stack.open_window()
    accepted = stack.spawn("python", MAKE, **body)
    assert accepted["error"] is None, accepted
    return wait_terminal(stack.base, accepted["spawn_id"])


def fetch(stack, record: dict, path: str, token: dict | None = None) -> tuple[int, bytes, str]:
    url = f"{stack.base}/vx11/spawn/{record['spawn_id']}/artifacts/{path}"
    request = urllib.request.Request(url, headers=token or TOKEN)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def test_the_matching_files_are_kept_listed_and_read_back_exactly(stack, worker_level):
    record = spawn(stack, artifacts=["out/**"])
    assert (record["status"], record["sandbox"]) == ("DONE", worker_level), record
    csv = b"a,b\n1,2\n"
    assert record["artifacts"] == [
        {"path": "out/deep/data.csv", "size": len(csv), "sha256": hashlib.sha256(csv).hexdigest()},
        {"path": "out/plot.bin", "size": len(BLOB), "sha256": hashlib.sha256(BLOB).hexdigest()},
    ]
    assert record["artifacts_truncated"] is False
    status, body, kind = fetch(stack, record, "out/plot.bin")
    assert (status, body, kind) == (200, BLOB, "application/octet-stream")
    for hidden in ("out/passwd", "out/etc/passwd", "out/fifo", "scratch.txt", "../etc/passwd"):
        status, body, _ = fetch(stack, record, hidden)
        assert status == 404, (hidden, body[:200])


def test_files_past_the_byte_limit_are_left_out_and_said_so(stack, worker_level):
    record = spawn(stack, artifacts=["out/**"], max_artifact_bytes=100)
    assert [a["path"] for a in record["artifacts"]] == ["out/deep/data.csv"]
    assert record["artifacts_truncated"] is True


def test_a_spawn_without_patterns_keeps_nothing(stack, worker_level):
    record = spawn(stack)
    assert (record["artifacts"], record["artifacts_truncated"]) == (None, None)


def test_another_tokens_spawn_has_no_artifact_to_read(stack):
    record = spawn(stack, artifacts=["out/plot.bin"])
    status, made = http(
        "POST", f"{stack.base}/vx11/tokens", {"label": "other", "scopes": ["read"]}, TOKEN
    )
    assert status == 201, made
    status, _, _ = fetch(stack, record, "out/plot.bin", {"X-VX11-Token": made["token"]})
    assert status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"artifacts": ["/etc/*"]}, "artifacts"),
        ({"artifacts": ["../*"]}, "artifacts"),
        ({"artifacts": ["*"] * 33}, "artifacts"),
        (
            {"artifacts": ["*"], "max_artifact_bytes": Settings().max_artifact_bytes_max + 1},
            "max_artifact_bytes",
        ),
    ],
)
def test_a_pattern_or_limit_that_cannot_be_is_a_422(stack, body, field):
    stack.open_window()
    status, answer = http(
        "POST", f"{stack.base}/vx11/spawn", {"task_type": "shell", "code": "true", **body}, TOKEN
    )
    assert status == 422 and field in answer["fields"], answer


def test_purge_removes_the_artifacts_with_their_record(stack):
    record = spawn(stack, artifacts=["out/plot.bin"])
    ledger = Ledger.from_url(stack.config["database_url"])
    assert ledger.artifact(record["spawn_uuid"], "out/plot.bin") == BLOB
    assert ledger.purge(utcnow() + timedelta(days=1)) >= 1
    assert ledger.artifact(record["spawn_uuid"], "out/plot.bin") is None
