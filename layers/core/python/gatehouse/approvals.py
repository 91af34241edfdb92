"""Request records in DynamoDB, keyed by request id.

Every request the API accepts leaves a record: what was asked (the exact SQL and its SHA-256),
by whom, on which connection, how it was decided and how it ended. A `pending_approval` record
is what approvers vote on: the hash pins the exact command an approval approves.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse.ddb import from_item, to_attribute, to_item
from gatehouse.exceptions import GatehouseError, NotFoundError

PENDING_TTL_S = 3600  # an unanswered approval expires after an hour
RECORD_TTL_S = 90 * 24 * 3600  # finished records stay queryable for 90 days; S3 keeps the audit trail


class RequestStoreUnavailableError(GatehouseError):
    """The requests table could not be written or read."""

    code = "request_store_unavailable"
    status = 503


def sql_sha256(sql: str) -> str:
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()


@dataclass
class RequestRecord:
    request_id: str
    status: str  # executing | executed | failed | denied | pending_approval
    principal_arn: str
    principal_name: str
    connection: str
    command: str  # the exact SQL as the agent sent it
    command_sha256: str
    statement_class: str
    decision: str
    policy_ids: list[str] = field(default_factory=list)
    reason: str = ""
    created_at: int = 0
    updated_at: int = 0
    expires_at: int = 0
    approval_group: str | None = None
    approval_quorum: int | None = None
    row_count: int | None = None
    duration_ms: float | None = None
    error: str | None = None

    def public_view(self) -> dict[str, Any]:
        """What the agent that asked may read back."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "principal_arn"}
        out["sql"] = out.pop("command")
        out["sql_sha256"] = out.pop("command_sha256")
        return out


class RequestStore:
    def __init__(self, dynamodb_client: Any, table: str, clock: Callable[[], float] = time.time) -> None:
        self._ddb = dynamodb_client
        self._table = table
        self._clock = clock

    def put_new(self, record: RequestRecord) -> RequestRecord:
        """Store a new record; a request id is used once (conditional put)."""
        now = int(self._clock())
        record.created_at = record.created_at or now
        record.updated_at = now
        ttl = PENDING_TTL_S if record.status == "pending_approval" else RECORD_TTL_S
        record.expires_at = record.expires_at or now + ttl
        item = to_item(asdict(record))
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(request_id)",
            )
        except (ClientError, BotoCoreError) as exc:
            raise RequestStoreUnavailableError("the request could not be stored") from exc
        return record

    def finish(
        self,
        request_id: str,
        *,
        status: str,
        row_count: int | None = None,
        duration_ms: float | None = None,
        error: str | None = None,
    ) -> None:
        """Move an `executing` record to its final status."""
        now = int(self._clock())
        names = {"#s": "status"}
        values: dict[str, Any] = {":s": status, ":u": now, ":e": now + RECORD_TTL_S, ":x": "executing"}
        sets = ["#s = :s", "updated_at = :u", "expires_at = :e"]
        for field_name, value in (("row_count", row_count), ("duration_ms", duration_ms), ("error", error)):
            if value is not None:
                # Names go through placeholders: some (e.g. ERROR) are DynamoDB reserved words.
                names[f"#{field_name}"] = field_name
                values[f":{field_name}"] = value
                sets.append(f"#{field_name} = :{field_name}")
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"request_id": {"S": request_id}},
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression="#s = :x",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={k: to_attribute(v) for k, v in values.items()},
            )
        except (ClientError, BotoCoreError) as exc:
            raise RequestStoreUnavailableError("the request record could not be updated") from exc

    def get(self, request_id: str) -> RequestRecord:
        try:
            resp = self._ddb.get_item(
                TableName=self._table, Key={"request_id": {"S": request_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise RequestStoreUnavailableError("the request store could not be read") from exc
        item = resp.get("Item")
        if not item:
            raise NotFoundError(f"no request {request_id}")
        plain = from_item(item)
        if plain.get("duration_ms") is not None:
            plain["duration_ms"] = float(plain["duration_ms"])
        known = RequestRecord.__dataclass_fields__
        return RequestRecord(**{k: v for k, v in plain.items() if k in known})
