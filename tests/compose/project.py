"""A compose project as the header of ``compose.yaml`` tells a new user to make one: the
repository's ``compose.yaml`` (and the seccomp profile it names) as they are, and a
``.env`` from ``.env.example`` with the settings given filled in."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.compose.engine import Engine, compose_binary
from tests.compose.images import REPO, Images
from tests.support import free_port, http


def make_project(directory: Path, settings: Mapping[str, str], override: str = "") -> Path:
    """``compose.yaml`` and ``worker-seccomp.json`` (as a clone has them), ``override`` as
    compose.override.yaml, and a .env copied from .env.example with ``settings`` filled
    in where it has a line for them, added otherwise."""
    directory.mkdir(exist_ok=True)
    for name in ("compose.yaml", "worker-seccomp.json"):
        shutil.copy(REPO / name, directory / name)
    if override:
        (directory / "compose.override.yaml").write_text(override)
    rest = dict(settings)
    lines = [
        f"{key}={rest.pop(key)}" if (key := line.partition("=")[0]) in rest else line
        for line in (REPO / ".env.example").read_text().splitlines()
    ]
    lines += [f"{key}={value}" for key, value in rest.items()]
    (directory / ".env").write_text("\n".join(lines) + "\n")
    return directory


class Project:
    """One compose project in a directory of its own, driven through the compose CLI
    and its published ports only."""

    def __init__(self, root: Path, engine: Engine, images: Images, name: str) -> None:
        self.root, self.engine, self.name = root, engine, name
        self.binary = compose_binary()
        self.gateway_port, self.flower_port = free_port(), free_port()
        self.flower_password = secrets.token_hex(8)
        settings = {
            "REDIS_PASSWORD": secrets.token_hex(16),
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "VX11_FLOWER_PASSWORD": self.flower_password,
            "VX11_GATEWAY_PORT": f"127.0.0.1:{self.gateway_port}",
            "VX11_FLOWER_PORT": f"127.0.0.1:{self.flower_port}",
            "VX11_IMAGE": images.vx11,
            "VX11_BASE_IMAGE": images.base,
            "VX11_REDIS_IMAGE": images.redis,
            "VX11_POSTGRES_IMAGE": images.postgres,
        }
        make_project(root, settings)
        self.token = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def flower(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    def compose(
        self, *args: str, check: bool = True, timeout: float = 300, files: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        chosen = [f for name in ("compose.yaml", *files) for f in ("-f", name)]
        argv = [self.binary, "--project-name", self.name, *chosen, *args]
        done = subprocess.run(
            argv, cwd=self.root, env=self.engine.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
                f"\n--- logs:\n{self.logs()[-6000:]}"
            )
        return done

    def logs(self, *services: str) -> str:
        argv = [self.binary, "--project-name", self.name, "logs", "--no-color", *services]
        done = subprocess.run(argv, cwd=self.root, env=self.engine.env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        return done.stdout + done.stderr

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        headers = {"X-VX11-Token": self.token, "Content-Type": "application/json"}
        return http(method, f"{self.base}{path}", body, headers, timeout=timeout)

    def down(self) -> None:
        self.compose("down", "--volumes", "--timeout", "5", check=False)
