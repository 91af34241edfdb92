"""Decisions for the proxy: the service's one decision path, cached so a hot loop parses once.

Every statement a client sends is decided by `Gatehouse.decide` (classify -> lineage -> Cedar),
the same call the API makes; nothing here classifies or authorizes on its own. What this module
adds is the cache, and the rules for when a cached decision may stand for a new text:

- the exact text, for the principal, the connection and the policy set, for `TTL_S` seconds
  (the registry's own cache bound: a changed agent or connection is seen as soon as by the API);
- the text's literal shape (the scanner's tokens with every literal's value taken out, its kind
  kept, comments dropped) for the same key, but only for plain SELECT/INSERT/UPDATE/DELETE
  statements that call no function, select no field by attribute notation and run no hidden
  code. For those, a literal's value cannot change what the statement does or what it reads:
  `WHERE aid = 17` and `WHERE aid = 42` are one decision. Any statement where a constant might
  matter (`set_config('role', ...)`, `EXPLAIN (ANALYZE true)`, `query_to_xml('...')`) is decided
  afresh for every new text. So is one with a constant in ORDER BY, GROUP BY or DISTINCT ON:
  there `2` names the second column (`ORDER BY 2` may sort by a protected one, which a policy
  can ask approval for).
  Not pglast's fingerprint: it leaves constants out entirely and ignores the order of a target
  list and its aliases, so `SELECT id AS a, ssn || '' AS b` and `SELECT ssn || '' AS a, id AS b`
  share one, and the first's lineage (which masks the second column) would stand for the second
  (whose first column is the protected one).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pglast.parser import ParseError, parse_sql_json, scan

from gatehouse.models import Connection, Principal
from gatehouse.service import Decided, Gatehouse

TTL_S = 5.0
MAX_ENTRIES = 4096
# Statement kinds whose decision cannot depend on the value of a constant (see the module doc).
_FINGERPRINTABLE = frozenset({"select", "insert", "update", "delete"})
# Token kinds whose text is a literal's value (taken out of the shape), and comments (dropped).
_LITERALS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
# Clauses where a bare constant is a column's position, not a value (see the module doc).
_POSITIONAL_CLAUSES = ("sortClause", "groupClause", "distinctClause")


@dataclass(frozen=True)
class _Entry:
    decided: Decided
    stored_at: float


class _Lru:
    def __init__(self, max_entries: int) -> None:
        self._items: OrderedDict[Any, _Entry] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, key: Any, now: float, ttl: float) -> Decided | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        if now - entry.stored_at >= ttl:
            with self._lock:
                self._items.pop(key, None)
            return None
        return entry.decided

    def put(self, key: Any, decided: Decided, now: float) -> None:
        with self._lock:
            self._items[key] = _Entry(decided, now)
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)


def policy_version(service: Gatehouse) -> str:
    """A digest of the loaded policy set: a cache key part, so a new set never reuses old decisions."""
    engine = service.policy
    # The set is parsed once per process; its identity and its annotations name it.
    text = f"{id(engine)}:{engine.policies!r}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprintable(decided: Decided) -> bool:
    """A decision a constant cannot change (see the module doc)."""
    traced = decided.traced
    if decided.classification.parse_error is not None:
        return False
    for stmt in decided.classification.statements:
        if stmt.command not in _FINGERPRINTABLE or stmt.functions:
            return False
    for lineage in traced.lineage:
        if lineage.field_calls or lineage.hidden_code or lineage.untraceable or lineage.opaque:
            return False
    return True


def literal_shape(sql: str) -> bytes | None:
    """The text with each literal's value replaced by its kind and comments dropped; None when
    the scanner refuses it. Two texts with one shape differ only in their literals' values."""
    try:
        tokens = scan(sql)
    except (ParseError, ValueError):
        return None
    data = sql.encode("utf-8")  # the scanner's offsets count bytes
    parts = [
        b"?" + token.name.encode() if token.name in _LITERALS else data[token.start : token.end + 1]
        for token in tokens
        if token.name not in _COMMENTS
    ]
    return b" ".join(parts)


def names_columns_by_position(sql: str) -> bool:
    """True when a constant sits in an ORDER BY, GROUP BY or DISTINCT ON list, at any depth (a
    grouping set, a sort expression, a subquery's clause): its value may name a column."""
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError:
        return True
    stack: list[object] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _POSITIONAL_CLAUSES and _holds_constant(value):
                    return True
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _holds_constant(clause: object) -> bool:
    stack = [clause]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "A_Const" in node:
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class DecisionCache:
    """Shared by every session of a proxy process. Thread-safe; decides through `service`."""

    def __init__(
        self,
        service: Gatehouse,
        *,
        ttl_s: float = TTL_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._ttl = ttl_s
        self._clock = clock
        self._by_text = _Lru(max_entries)
        self._by_fingerprint = _Lru(max_entries)
        self._version = policy_version(service)
        self.hits = 0
        self.misses = 0

    def cached(self, principal: Principal, connection: Connection, sql: str) -> Decided | None:
        """The cached decision for this text or its literal shape, or None. No I/O: safe on the loop."""
        now = self._clock()
        text_key = self._key(principal, connection, sql)
        found = self._by_text.get(text_key, now, self._ttl)
        if found is None:
            shape = literal_shape(sql)
            if shape is None:
                return None
            print_key = self._key(principal, connection, shape)
            found = self._by_fingerprint.get(print_key, now, self._ttl)
            if found is None:
                return None
            self._by_text.put(text_key, found, now)
        self.hits += 1
        return found

    def decide(self, principal: Principal, connection: Connection, sql: str) -> Decided:
        """Cached by text, then by literal shape, else decided by the service (may do I/O)."""
        now = self._clock()
        text_key = self._key(principal, connection, sql)
        found = self._by_text.get(text_key, now, self._ttl)
        if found is not None:
            self.hits += 1
            return found
        shape = literal_shape(sql)
        # No shape: the service reports the text's error, and nothing is cached by shape.
        print_key: Any = self._key(principal, connection, shape) if shape is not None else None
        if print_key is not None:
            found = self._by_fingerprint.get(print_key, now, self._ttl)
            if found is not None:
                self.hits += 1
                self._by_text.put(text_key, found, now)
                return found
        self.misses += 1
        decided = self._service.decide(principal, connection, sql)
        self._by_text.put(text_key, decided, now)
        if print_key is not None and fingerprintable(decided) and not names_columns_by_position(sql):
            self._by_fingerprint.put(print_key, decided, now)
        return decided

    def _key(
        self, principal: Principal, connection: Connection, text: str | bytes
    ) -> tuple[str | bytes, ...]:
        return (principal.name, principal.arn, connection.name, self._version, text)
