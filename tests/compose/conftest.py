"""The compose test's fixtures: an engine of its own (:mod:`tests.compose.engine`), the
images built here (:mod:`tests.compose.images`), and a compose project made as the
header of ``compose.yaml`` tells a new user: ``compose.yaml`` as it is, and a ``.env``
from ``.env.example`` with its secrets filled in and its image and port settings
pointed at this run's images and at free ports on 127.0.0.1.

Run by ``./scripts/test-compose`` (``VX11_TEST_COMPOSE=1``); skipped, saying so,
otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compose.engine import Engine, EngineUnavailable, compose_binary
from tests.compose.images import REPO, Images, build_all
from tests.support import free_port, http

ENABLED = os.environ.get("VX11_TEST_COMPOSE") == "1"
SKIP_REASON = "the compose test starts a container engine of its own: run ./scripts/test-compose"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    engine = Engine()
    try:
        engine.start()
    except EngineUnavailable as exc:
        engine.stop()
        pytest.skip(f"no container engine: {exc}")
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def images(engine: Engine) -> Images:
    return build_all(engine, progress)


class Project:
    """One compose project in a directory of its own, driven through the compose CLI
    and its published ports only."""

    def __init__(self, root: Path, engine: Engine, images: Images, name: str) -> None:
        self.root, self.engine, self.name = root, engine, name
        self.binary = compose_binary()
        self.gateway_port, self.flower_port = free_port(), free_port()
        self.flower_password = secrets.token_hex(8)
        for name in ("compose.yaml", "worker-seccomp.json"):  # as a clone has them
            shutil.copy(REPO / name, root / name)
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
        lines = (REPO / ".env.example").read_text().splitlines()
        filled = [
            f"{line.split('=', 1)[0]}={settings.pop(line.split('=', 1)[0])}"
            if "=" in line and not line.startswith("#") and line.split("=", 1)[0] in settings
            else line
            for line in lines
        ]
        filled += [f"{key}={value}" for key, value in settings.items()]
        (root / ".env").write_text("\n".join(filled) + "\n")
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


@pytest.fixture(scope="session")
def project(engine: Engine, images: Images, tmp_path_factory) -> Iterator[Project]:
    project = Project(tmp_path_factory.mktemp("compose"), engine, images, "vx11test")
    try:
        yield project
    finally:
        project.down()
