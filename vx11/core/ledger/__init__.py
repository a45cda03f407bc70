"""The ledger: the spawns' durable records and the audit log, in one database.

:mod:`~vx11.core.ledger.schema` holds the tables, the engine and the schema's upgrades;
:mod:`~vx11.core.ledger.store` the spawn records, the one place that queries them;
:mod:`~vx11.core.ledger.paging` the keyset pages both the spawns and the audit log use.
"""

from vx11.core.ledger.paging import Page
from vx11.core.ledger.schema import DATABASE_UNAVAILABLE, make_engine
from vx11.core.ledger.store import Ledger, SpawnFilter

__all__ = ["DATABASE_UNAVAILABLE", "Ledger", "Page", "SpawnFilter", "make_engine"]
