"""Lineage: for each output column of a read, the source columns its value derives from.

    catalogs = CatalogCache(PostgresCatalogLoader(secrets))
    engine = LineageEngine()
    traced = engine.trace(sql, catalogs.get(connection))    # one StatementLineage per statement
    flows = traced[-1].columns(len(result.columns))          # one Flow per result column

Why the catalog and not the planner: `EXPLAIN (VERBOSE, FORMAT JSON)` would name every output's
qualified source exactly, but it costs a round trip per request (and one more statement on the
target's CPU) and plans functions it would then have to classify anyway. The catalog is read once
per connection and refreshed by age or when a statement names something it lacks, so a request
pays nothing; the server's RowDescription (table OID and attribute number of each plain column)
cross-checks the answer on every result for free.
"""

from __future__ import annotations

from typing import Any

from pg8000.exceptions import DatabaseError, InterfaceError

from gatehouse.lineage.catalog import (
    CATALOG_SQL,
    Catalog,
    CatalogCache,
    CatalogError,
    Relation,
)
from gatehouse.lineage.postgres import EMPTY, Flow, LineageEngine, Output, StatementLineage, merge
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres import connect

__all__ = [
    "EMPTY",
    "Catalog",
    "CatalogCache",
    "CatalogError",
    "Flow",
    "LineageEngine",
    "Output",
    "PostgresCatalogLoader",
    "Relation",
    "StatementLineage",
    "merge",
]

CATALOG_TIMEOUT_S = 10.0


class PostgresCatalogLoader:
    """Reads a Postgres target's catalog with the connection's own credential (one query)."""

    def __init__(self, secrets: SecretStore, timeout_s: float = CATALOG_TIMEOUT_S) -> None:
        self._secrets = secrets
        self._timeout = timeout_s

    def __call__(self, connection: Any) -> Catalog:
        # A target that cannot be reached is a TargetUnavailableError (503): nothing runs.
        con = connect(
            connection, self._secrets, timeout_s=self._timeout, application_name="gatehouse-catalog"
        )
        try:
            con.run("START TRANSACTION READ ONLY")
            rows = con.run(CATALOG_SQL)
            con.run("COMMIT")
        except (DatabaseError, InterfaceError, OSError) as exc:
            raise CatalogError(f"the catalog of {connection.name} could not be read") from exc
        finally:
            try:
                con.close()
            except (InterfaceError, OSError):
                pass
        if not rows or not rows[0]:
            raise CatalogError(f"the catalog of {connection.name} came back empty")
        return Catalog.from_json(str(rows[0][0]))
