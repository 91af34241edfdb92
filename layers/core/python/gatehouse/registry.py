"""Connections and principals, stored in DynamoDB (seeded from a config file).

A warm process may keep what it read for a few seconds (`cache_seconds`): every request reads
one principal and one connection, and two consistent reads are a fifth of the API's own time.
Staleness is bounded by the entry's age, counted from the read that fetched it, never extended by
use: a principal or connection removed or changed in DynamoDB stops working in every process
within `cache_seconds` of the change. Only what was found is kept, so a newly added agent or
connection works at once, and a lookup that failed is asked again on the next request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse.ddb import from_item
from gatehouse.exceptions import GatehouseError, UnknownConnectionError, UnknownPrincipalError
from gatehouse.models import Connection, Principal

# The bound on a removed agent or connection still working in a warm process. Short next to
# what else a process already trusts for longer: database credentials are cached 60 s
# (gatehouse.secrets) and IAM itself is eventually consistent for seconds.
CACHE_SECONDS = 5.0
# Entries kept per kind: an LRU bound on memory, far above a deployment's agents or connections.
CACHE_ENTRIES = 1024

T = TypeVar("T")


class RegistryUnavailableError(GatehouseError):
    """The registry tables could not be read."""

    code = "registry_unavailable"
    status = 503


def connection_from_item(item: dict[str, Any]) -> Connection:
    return Connection(
        name=item["name"],
        kind=item["kind"],
        host=item.get("host", ""),
        port=int(item.get("port", 0)),
        database=item.get("database", ""),
        secret_id=item["secret_id"],
        attributes=dict(item.get("attributes") or {}),
        masking_profile=item.get("masking_profile") or "default",
        recording=item.get("recording") or "sync_writes",
    )


def principal_from_item(item: dict[str, Any]) -> Principal:
    return Principal(
        name=item["name"],
        kind=item["kind"],
        arn=item.get("arn", ""),
        attributes=dict(item.get("attributes") or {}),
        groups=tuple(item.get("groups") or ()),
    )


class _Recent(Generic[T]):
    """Values found in the last `max_age` seconds, by key; thread-safe (the proxy shares one)."""

    def __init__(self, max_age: float, clock: Callable[[], float], max_entries: int = CACHE_ENTRIES) -> None:
        self._max_age = max_age
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        if self._max_age <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() - entry[0] >= self._max_age:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: str, value: T, read_at: float) -> None:
        if self._max_age <= 0:
            return
        with self._lock:
            self._entries[key] = (read_at, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)


class Registry:
    """`cache_seconds=0` (the default) reads DynamoDB every time; the API passes CACHE_SECONDS."""

    def __init__(
        self,
        dynamodb_client: Any,
        connections_table: str,
        principals_table: str,
        *,
        cache_seconds: float = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ddb = dynamodb_client
        self._connections = connections_table
        self._principals = principals_table
        self._clock = clock
        self._recent_connections: _Recent[Connection] = _Recent(cache_seconds, clock)
        self._recent_principals: _Recent[Principal] = _Recent(cache_seconds, clock)

    def get_connection(self, name: str) -> Connection:
        cached = self._recent_connections.get(name)
        if cached is not None:
            return cached
        # The age counts from before the read: an entry is never younger than what it holds.
        read_at = self._clock()
        item = self._get(self._connections, {"name": {"S": name}})
        if item is None:
            raise UnknownConnectionError(f"no connection named {name!r}")
        connection = connection_from_item(item)
        self._recent_connections.put(name, connection, read_at)
        return connection

    def list_connections(self) -> list[Connection]:
        items: list[Connection] = []
        kwargs: dict[str, Any] = {"TableName": self._connections}
        try:
            while True:
                page = self._ddb.scan(**kwargs)
                items += [connection_from_item(from_item(i)) for i in page.get("Items", [])]
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as exc:
            raise RegistryUnavailableError("the connection registry could not be read") from exc
        return sorted(items, key=lambda c: c.name)

    def principal(self, principal_key: str) -> Principal:
        cached = self._recent_principals.get(principal_key)
        if cached is not None:
            return cached
        read_at = self._clock()
        item = self._get(self._principals, {"principal_key": {"S": principal_key}})
        if item is None:
            raise UnknownPrincipalError("the caller is not a registered Gatehouse principal")
        principal = principal_from_item(item)
        self._recent_principals.put(principal_key, principal, read_at)
        return principal

    def _get(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        try:
            resp = self._ddb.get_item(TableName=table, Key=key, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise RegistryUnavailableError(f"the registry table {table} could not be read") from exc
        item = resp.get("Item")
        return from_item(item) if item else None
