"""Connections and principals, stored in DynamoDB (seeded from a config file)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse.ddb import from_item
from gatehouse.exceptions import GatehouseError, UnknownConnectionError, UnknownPrincipalError
from gatehouse.models import Connection, Principal


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
    )


def principal_from_item(item: dict[str, Any]) -> Principal:
    return Principal(
        name=item["name"],
        kind=item["kind"],
        arn=item.get("arn", ""),
        attributes=dict(item.get("attributes") or {}),
        groups=tuple(item.get("groups") or ()),
    )


class Registry:
    def __init__(self, dynamodb_client: Any, connections_table: str, principals_table: str) -> None:
        self._ddb = dynamodb_client
        self._connections = connections_table
        self._principals = principals_table

    def get_connection(self, name: str) -> Connection:
        item = self._get(self._connections, {"name": {"S": name}})
        if item is None:
            raise UnknownConnectionError(f"no connection named {name!r}")
        return connection_from_item(item)

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
        item = self._get(self._principals, {"principal_key": {"S": principal_key}})
        if item is None:
            raise UnknownPrincipalError("the caller is not a registered Gatehouse principal")
        return principal_from_item(item)

    def _get(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        try:
            resp = self._ddb.get_item(TableName=table, Key=key, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise RegistryUnavailableError(f"the registry table {table} could not be read") from exc
        item = resp.get("Item")
        return from_item(item) if item else None
