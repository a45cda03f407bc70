"""The compose test's fixtures: an engine of its own (:mod:`tests.compose.engine`), the
images built here (:mod:`tests.compose.images`), and a compose project
(:mod:`tests.compose.project`) whose settings point at this run's images and at free
ports on 127.0.0.1.

Run by ``./scripts/test-compose`` (``VX11_TEST_COMPOSE=1``); skipped, saying so,
otherwise.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.compose.engine import Engine, EngineUnavailable
from tests.compose.images import Images, build_all
from tests.compose.project import Project

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


@pytest.fixture(scope="session")
def project(engine: Engine, images: Images, tmp_path_factory) -> Iterator[Project]:
    project = Project(tmp_path_factory.mktemp("compose"), engine, images, "vx11test")
    try:
        yield project
    finally:
        project.down()
