"""Test fixtures: a private redis-server for the whole run, a fresh database per test,
the gateway app and its client, and helpers that start real gunicorn and Celery
workers as subprocesses."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from sqlalchemy import create_engine, text

# Every process the tests start (and celeryconfig, read at import) must point at the
# private Redis, never at a developer's: set before anything reads the environment.
os.environ.pop("VX11_DATABASE_URL", None)

from tests.support import DATABASES, PG_URL, RedisServer, free_port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    os.environ["VX11_REDIS_URL"] = server.url
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def test_config(redis_url: str, tmp_path: Path) -> dict:
    return {
        "redis_url": redis_url,
        "data_dir": str(tmp_path / "data"),
        "sandbox_root": str(tmp_path / "sandbox"),
        "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
    }


@pytest.fixture
def app(test_config: dict):
    from vx11 import create_app

    return create_app(test_config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"X-VX11-Token": "vx11-test-token"}


def pytest_report_header(config) -> list[str]:
    pg = os.environ.get("VX11_TEST_DATABASE_URL")
    return [f"ledger on PostgreSQL: {'yes, ' + pg if pg else 'no (VX11_TEST_DATABASE_URL unset)'}"]


def pytest_terminal_summary(terminalreporter) -> None:
    import sys

    contract = sys.modules.get("tests.integration.test_contract")
    if contract is not None and any(contract.CASES.values()):
        cases = ", ".join(f"{n} {kind}" for kind, n in contract.CASES.items())
        terminalreporter.write_line(f"schemathesis fuzz: {cases} cases run")


@pytest.fixture(params=DATABASES)
def database_url(request, tmp_path):
    """An empty database: a SQLite file, or a PostgreSQL schema of its own (its URL
    puts the schema first on the search path)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    schema = f"vx11_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()
