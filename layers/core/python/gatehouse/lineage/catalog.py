"""What a Postgres target holds: relations, their columns, view bodies, the search path.

Lineage resolves every name of a statement against this snapshot, the way the server would: a
relation name through `search_path`, a column through the relations in scope, a view through its
own definition. The snapshot is read in ONE query with Gatehouse's own credential for the
connection, cached per connection, and read again when it is older than its time to live or when a
statement names a relation or column it does not hold (a table created since). A request never
pays a catalog round trip otherwise.

System views (`pg_catalog`, `information_schema`) are kept as opaque relations: their columns are
known, their bodies are not parsed (they expose metadata, not table data). The few system columns
that do expose data or other sessions' statements are protected by `gatehouse.lineage.SYSTEM_PROTECTED`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gatehouse.exceptions import GatehouseError

log = logging.getLogger(__name__)

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
# Table-like relation kinds: ordinary, view, materialized view, foreign, partitioned.
RELATION_KINDS = ("r", "v", "m", "f", "p")
DEFAULT_TTL_S = 60.0
# A miss (unknown relation) may trigger a refresh at most this often per connection, so an agent
# cannot make Gatehouse hammer the target's catalog by naming tables that do not exist.
MIN_REFRESH_INTERVAL_S = 2.0

# One round trip: the search path as the server resolves it (pg_catalog and pg_temp included
# where they are implicit), every table-like relation with its columns in order, and the
# definitions of views outside the system schemas.
CATALOG_SQL = """
SELECT json_build_object(
  'search_path', current_schemas(true),
  'domains', (SELECT coalesce(json_agg(t.typname), '[]'::json)
                FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
               WHERE t.typtype = 'd' AND n.nspname NOT IN ('pg_catalog', 'information_schema')),
  'types', (SELECT coalesce(json_agg(DISTINCT t.typname), '[]'::json) FROM pg_catalog.pg_type t),
  'operators', (SELECT coalesce(json_agg(DISTINCT o.oprname), '[]'::json)
                  FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')),
  'functions', (SELECT coalesce(json_agg(DISTINCT p.proname), '[]'::json)
                  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')),
  'relations', (
    SELECT coalesce(json_agg(json_build_array(
      c.oid::bigint, n.nspname, c.relname, c.relkind,
      (SELECT coalesce(json_agg(json_build_array(a.attname, a.atttypid::bigint, a.attnum)
                                ORDER BY a.attnum), '[]'::json)
         FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
      CASE WHEN c.relkind IN ('v', 'm')
            AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           THEN pg_catalog.pg_get_viewdef(c.oid) END
    )), '[]'::json)
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p')
      AND n.nspname <> 'pg_toast' AND n.nspname NOT LIKE 'pg_temp_%'
      AND n.nspname NOT LIKE 'pg_toast_temp_%'
  )
)::text
"""


class CatalogError(GatehouseError):
    """The target's catalog could not be read: lineage cannot be trusted, nothing runs."""

    code = "catalog_unavailable"
    status = 503


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # r, v, m, f, p (pg_class.relkind)
    columns: tuple[str, ...]
    column_types: tuple[int, ...] = ()
    attnums: tuple[int, ...] = ()
    view_sql: str | None = None  # parsed lazily by the lineage analysis

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_view(self) -> bool:
        return self.kind in ("v", "m")

    @property
    def is_system(self) -> bool:
        return self.schema in SYSTEM_SCHEMAS


@dataclass(frozen=True)
class Catalog:
    """An immutable snapshot of one target's relations."""

    relations: Mapping[tuple[str, str], Relation]
    search_path: tuple[str, ...]
    loaded_at: float = 0.0
    by_oid: Mapping[int, Relation] = field(default_factory=dict)
    # Every relation and column name: error texts may keep a quoted name that is one of these.
    identifiers: frozenset[str] = frozenset()
    # User-defined domains (a cast runs their CHECK constraints) and operators (they call
    # functions): code a statement runs without naming it.
    domains: frozenset[str] = frozenset()
    operators: frozenset[str] = frozenset()
    # Names of user-defined functions: an unqualified call of one of them may resolve to it rather
    # than to the built-in of that name (an overload the built-in lacks, lower(integer), wins).
    functions: frozenset[str] = frozenset()
    # Every type name: a cast to a name not here was created since the snapshot (refresh).
    types: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        relations: Iterable[Relation],
        search_path: Iterable[str],
        loaded_at: float = 0.0,
        *,
        domains: Iterable[str] = (),
        operators: Iterable[str] = (),
        types: Iterable[str] = (),
        functions: Iterable[str] = (),
    ) -> Catalog:
        rels = {(r.schema, r.name): r for r in relations}
        names = {r.name for r in rels.values()} | {c for r in rels.values() for c in r.columns}
        return cls(
            relations=rels,
            search_path=tuple(search_path),
            loaded_at=loaded_at,
            by_oid={r.oid: r for r in rels.values()},
            identifiers=frozenset(names),
            domains=frozenset(domains),
            operators=frozenset(operators),
            types=frozenset(types),
            functions=frozenset(functions),
        )

    @classmethod
    def from_json(cls, text: str, loaded_at: float = 0.0) -> Catalog:
        """Parse the one-row answer of CATALOG_SQL."""
        try:
            doc = json.loads(text)
            relations = [
                Relation(
                    oid=int(oid),
                    schema=str(schema),
                    name=str(name),
                    kind=str(kind),
                    columns=tuple(str(c[0]) for c in cols or ()),
                    column_types=tuple(int(c[1]) for c in cols or ()),
                    attnums=tuple(int(c[2]) for c in cols or ()),
                    view_sql=str(view) if view is not None else None,
                )
                for oid, schema, name, kind, cols, view in doc.get("relations") or ()
            ]
            path = [str(s) for s in doc.get("search_path") or ()]
            domains = [str(d) for d in doc.get("domains") or ()]
            operators = [str(o) for o in doc.get("operators") or ()]
            types = [str(t) for t in doc.get("types") or ()]
            functions = [str(f) for f in doc.get("functions") or ()]
        except (ValueError, TypeError, KeyError) as exc:
            raise CatalogError(f"the target's catalog answer is malformed: {exc}") from exc
        return cls.build(
            relations, path, loaded_at, domains=domains, operators=operators, types=types, functions=functions
        )

    def resolve(self, name: str, schema: str | None = None) -> Relation | None:
        """The relation a name means, as the server resolves it (search_path order)."""
        if schema is not None:
            return self.relations.get((schema, name))
        for candidate in self.search_path:
            rel = self.relations.get((candidate, name))
            if rel is not None:
                return rel
        return None

    def origin(self, table_oid: int, attnum: int) -> str | None:
        """`schema.table.column` for a RowDescription's (table OID, attribute number)."""
        rel = self.by_oid.get(table_oid)
        if rel is None:
            return None
        for column, number in zip(rel.columns, rel.attnums, strict=False):
            if number == attnum:
                return f"{rel.qualified}.{column}"
        return None


CatalogLoader = Callable[[Any], Catalog]


class CatalogCache:
    """One catalog snapshot per connection name, refreshed by age or on a miss.

    Thread-safe; the loader is called outside the lock (a slow target must not block the others),
    and a failed load raises: the caller fails closed.
    """

    def __init__(
        self,
        loader: CatalogLoader,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._ttl = ttl_s
        self._clock = clock
        self._snapshots: dict[str, Catalog] = {}
        self._lock = threading.Lock()

    def get(self, connection: Any) -> Catalog:
        snapshot = self._snapshots.get(connection.name)
        if snapshot is not None and self._clock() - snapshot.loaded_at < self._ttl:
            return snapshot
        return self._load(connection)

    def refresh_after_miss(self, connection: Any, seen: Catalog) -> Catalog | None:
        """A newer snapshot when `seen` lacked a name, or None when it is too soon to ask again."""
        current = self._snapshots.get(connection.name)
        if current is not None and current is not seen:
            return current  # another request already refreshed it
        if self._clock() - seen.loaded_at < MIN_REFRESH_INTERVAL_S:
            return None
        return self._load(connection)

    def invalidate(self, connection_name: str) -> None:
        with self._lock:
            self._snapshots.pop(connection_name, None)

    def _load(self, connection: Any) -> Catalog:
        started = self._clock()
        catalog = self._loader(connection)
        catalog = dataclasses.replace(catalog, loaded_at=started)
        with self._lock:
            self._snapshots[connection.name] = catalog
        log.info("catalog of %s: %d relations", connection.name, len(catalog.relations))
        return catalog
