"""The ledger on SQLite always, and on PostgreSQL (a schema of its own per test) when
VX11_TEST_DATABASE_URL is set."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from tests.support import DATABASES, PG_URL
from vx11.core.ledger import Ledger


@pytest.fixture(params=DATABASES)
def empty_ledger(request, tmp_path):
    """A ledger on an empty database, its schema not yet created."""
    if request.param == "sqlite":
        store = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
        yield store
        store.engine.dispose()
        return
    schema = f"vx11_test_{uuid.uuid4().hex[:8]}"
    admin = Ledger.from_url(PG_URL).engine
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    store = Ledger.from_url(PG_URL)
    store.engine.update_execution_options(schema_translate_map={None: schema})
    yield store
    store.engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def ledger(empty_ledger):
    empty_ledger.create_schema()
    return empty_ledger
