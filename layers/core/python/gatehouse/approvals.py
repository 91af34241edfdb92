"""Request records in DynamoDB, keyed by request id.

Every request the API accepts leaves a record: what was asked (the exact SQL and its SHA-256),
by whom, on which connection, how it was decided and how it ended. A `pending_approval` record
is what approvers vote on: the hash pins the exact command an approval approves.

An approval moves a record through conditional writes only, so two deliveries of one Slack
click, two approvers at once or a vote racing the expiry cannot both win:

    pending_approval --(quorum)--> approved --(claimed once)--> executing --> executed | failed | drifted
    pending_approval --(a deny)--> denied        pending_approval --(timeout)--> expired
    approved --(policy changed since)--> denied
    executing --(the proxy's Execute skipped by the server: it never ran)--> approved
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


# Every status a record can hold (the diagram above).
STATUSES = frozenset(
    {"pending_approval", "approved", "executing", "executed", "failed", "drifted", "denied", "expired"}
)


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
    relations: list[str] | None = None
    # The approval flow
    approval_groups: list[str] | None = None  # one approval from each, approval_quorum per group
    approval_expires_at: int | None = None  # epoch seconds; the state machine times out then
    preview: dict[str, Any] | None = None  # what the write would do, shown before anyone is asked
    owner: str | None = None  # the agent's owner (a Slack user id): may not approve its requests
    task_token: str | None = None  # the state machine's token, never shown to anyone
    slack_channel: str | None = None
    slack_ts: str | None = None
    votes: list[dict[str, Any]] | None = None  # {"user", "name", "groups", "vote", "reason", "at"}
    voters: list[str] | None = None  # Slack user ids that voted (the double-vote guard)
    decided_by: str | None = None
    decided_reason: str | None = None
    result: dict[str, Any] | None = None  # the masked result of a command run after approval
    # Who runs it once approved: None (the API: the state machine runs it) or "proxy" (the
    # Postgres proxy runs it when the same agent sends the same text on the same connection).
    origin: str | None = None
    # The target kind of the command (None: SQL). Its text is then a canonical JSON object.
    kind: str | None = None

    def public_view(self) -> dict[str, Any]:
        """What the agent that asked may read back."""
        hidden = {"principal_arn", "task_token", "voters", "slack_channel", "slack_ts"}
        out = {k: v for k, v in asdict(self).items() if v is not None and k not in hidden}
        out["sql"] = out.pop("command")
        out["sql_sha256"] = out.pop("command_sha256")
        return out


class TransitionError(GatehouseError):
    """The record was not in a state that allows this change (decided, expired, voted already)."""

    code = "request_not_pending"
    status = 409


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
        result: dict[str, Any] | None = None,
    ) -> None:
        """Move an `executing` record to its final status."""
        now = int(self._clock())
        names = {"#s": "status"}
        values: dict[str, Any] = {":s": status, ":u": now, ":e": now + RECORD_TTL_S, ":x": "executing"}
        sets = ["#s = :s", "updated_at = :u", "expires_at = :e"]
        for field_name, value in (
            ("row_count", row_count),
            ("duration_ms", duration_ms),
            ("error", error),
            ("result", result),
        ):
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
        return _record(item)

    # -- the approval flow -----------------------------------------------------------------

    def set_notified(self, request_id: str, *, task_token: str, channel: str | None, ts: str | None) -> None:
        """Keep the state machine's token (and where the Slack message is) with a pending record."""
        fields: dict[str, Any] = {"task_token": task_token, "slack_channel": channel, "slack_ts": ts}
        self._update(request_id, fields, expect=("pending_approval",))

    def set_message(self, request_id: str, *, channel: str, ts: str) -> None:
        """Where the Slack message is, whatever the status: a vote may decide while it is posted."""
        self._update(request_id, {"slack_channel": channel, "slack_ts": ts}, expect=tuple(sorted(STATUSES)))

    def add_vote(self, request_id: str, vote: dict[str, Any]) -> RequestRecord:
        """Append one approver's vote; refused when the record is not pending or they voted already."""
        now = int(self._clock())
        names = {"#s": "status", "#v": "votes", "#w": "voters"}
        values = {
            ":pending": to_attribute("pending_approval"),
            ":vote": to_attribute([{**vote, "at": now}]),
            ":voter": to_attribute([vote["user"]]),
            ":user": to_attribute(vote["user"]),
            ":empty": to_attribute([]),
            ":u": to_attribute(now),
        }
        try:
            resp = self._ddb.update_item(
                TableName=self._table,
                Key={"request_id": {"S": request_id}},
                UpdateExpression=(
                    "SET #v = list_append(if_not_exists(#v, :empty), :vote), "
                    "#w = list_append(if_not_exists(#w, :empty), :voter), updated_at = :u"
                ),
                # One vote per approver, only while the request waits: the conditional write is the
                # guard against double clicks, replays delivered twice and votes racing the expiry.
                ConditionExpression="#s = :pending AND (attribute_not_exists(#w) OR NOT contains(#w, :user))",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise TransitionError("this request is not waiting for your vote") from exc
            raise RequestStoreUnavailableError("the vote could not be stored") from exc
        except BotoCoreError as exc:
            raise RequestStoreUnavailableError("the vote could not be stored") from exc
        return _record(resp["Attributes"])

    def transition(self, request_id: str, *, expect: tuple[str, ...], status: str, **fields: Any) -> None:
        """Move the record from one of `expect` to `status` (conditional: exactly one caller wins)."""
        self._update(request_id, {"status": status, **fields}, expect=expect)

    def list_for(
        self, principal_name: str, *, pending_only: bool = False, limit: int = 100
    ) -> list[RequestRecord]:
        """The principal's requests, newest first (a scan: the table holds days, not years)."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "principal_name = :p",
            "ExpressionAttributeValues": {":p": to_attribute(principal_name)},
        }
        out: list[RequestRecord] = []
        try:
            while True:
                page = self._ddb.scan(**kwargs)
                out += [_record(item) for item in page.get("Items", [])]
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as exc:
            raise RequestStoreUnavailableError("the request store could not be read") from exc
        if pending_only:
            out = [r for r in out if r.status == "pending_approval"]
        return sorted(out, key=lambda r: r.created_at, reverse=True)[:limit]

    def _update(self, request_id: str, fields: dict[str, Any], *, expect: tuple[str, ...]) -> None:
        now = int(self._clock())
        fields = {**fields, "updated_at": now}
        names = {"#s": "status"}
        values: dict[str, Any] = {f":x{i}": to_attribute(v) for i, v in enumerate(expect)}
        sets, removes = [], []
        for i, (name, value) in enumerate(fields.items()):
            names[f"#f{i}"] = name
            if value is None:
                removes.append(f"#f{i}")
            else:
                values[f":f{i}"] = to_attribute(value)
                sets.append(f"#f{i} = :f{i}")
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        condition = "#s IN (" + ", ".join(f":x{i}" for i in range(len(expect))) + ")"
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"request_id": {"S": request_id}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise TransitionError(f"request {request_id} is no longer {' or '.join(expect)}") from exc
            raise RequestStoreUnavailableError("the request record could not be updated") from exc
        except BotoCoreError as exc:
            raise RequestStoreUnavailableError("the request record could not be updated") from exc


def _record(item: dict[str, Any]) -> RequestRecord:
    plain = from_item(item)
    if plain.get("duration_ms") is not None:
        plain["duration_ms"] = float(plain["duration_ms"])
    known = RequestRecord.__dataclass_fields__
    return RequestRecord(**{k: v for k, v in plain.items() if k in known})
