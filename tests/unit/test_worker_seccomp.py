"""``worker-seccomp.json``, the worker container's seccomp profile that compose.yaml
names, is what :func:`workers.sandbox.seccomp.container_profile` makes now."""

from __future__ import annotations

import json
from pathlib import Path

from workers.sandbox import seccomp

PROFILE = Path(__file__).parents[2] / "worker-seccomp.json"
WRITE = (
    ".venv/bin/python -c 'import json; from workers.sandbox.seccomp import container_profile; "
    "print(json.dumps(container_profile(), indent=2))' > worker-seccomp.json"
)


def test_the_committed_profile_is_the_one_the_code_makes():
    assert json.loads(PROFILE.read_text()) == seccomp.container_profile(), f"run: {WRITE}"


def test_the_profile_lets_bubblewrap_build_sandboxes_and_refuses_the_rest():
    refused = {name for rule in seccomp.container_profile()["syscalls"] for name in rule["names"]}
    assert not refused & seccomp.BUBBLEWRAP_NEEDS
    assert {"keyctl", "bpf", "io_uring_setup", "perf_event_open", "setns"} <= refused
    assert "worker-seccomp.json" in (PROFILE.parent / "compose.yaml").read_text()
