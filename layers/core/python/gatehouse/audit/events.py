"""The session log's event schema (version 1): one flat JSON object per event, hash-chained.

Every event has every key below; a value that does not apply is `null`, never a missing key, so
the Glue table (Athena) and the DuckDB view see the same stable columns. Lists are JSON arrays of
strings. `time` is RFC 3339 UTC with milliseconds (`2026-11-24T07:05:00.123Z`): fixed width, so
comparing it as a string orders it correctly in Athena and DuckDB alike.

| column | type (Glue / DuckDB) | set by | meaning |
|---|---|---|---|
| `schema_version` | int / INTEGER | log | `1` |
| `event_id` | string / VARCHAR | log | a random UUID |
| `session_id` | string / VARCHAR | start | the session (an API request id, or a proxy connection) |
| `request_id` | string / VARCHAR | start (or per event) | the API request (a proxy: one per statement) |
| `seq` | bigint / BIGINT | log | 0, 1, 2, ... within the session, no gaps |
| `time` | string / VARCHAR | log | when the event was recorded, `YYYY-MM-DDTHH:MM:SS.mmmZ` |
| `principal_arn` | string / VARCHAR | start | the agent's IAM ARN |
| `principal_name` | string / VARCHAR | start | the agent's registered name |
| `connection` | string / VARCHAR | start | the connection name |
| `connection_env` | string / VARCHAR | start or append (sticky) | the connection's `env` (`prod`, `dev`) |
| `target_kind` | string / VARCHAR | start | `postgres` (later `http`, `kubernetes`, `ssh`) |
| `kind` | string / VARCHAR | append | what happened: one of `EVENT_KINDS` |
| `statement` | string / VARCHAR | append | the command text, masked by the caller |
| `statement_class` | string / VARCHAR | append | one of `STATEMENT_CLASSES` (`read`, `write`, `ddl`, ...) |
| `relations` | array<string> / VARCHAR[] | append | tables and views the command names |
| `decision` | string / VARCHAR | append | `allow`, `deny`, `approval` |
| `policy_ids` | array<string> / VARCHAR[] | append | the Cedar policies that decided |
| `approvers` | array<string> / VARCHAR[] | append | approvers who voted (Slack user ids) |
| `outcome` | string / VARCHAR | append | one of `OUTCOMES` |
| `row_count` | bigint / BIGINT | append | rows returned or affected |
| `duration_ms` | double / DOUBLE | append | time the target took, rounded to 3 decimals |
| `error` | string / VARCHAR | append | `code: message` (masked) |
| `reason` | string / VARCHAR | append | the reason the agent (or an approver) gave |
| `prev_hash` | string / VARCHAR | log | `hash` of the previous event; `GENESIS_HASH` (64 zeros) for seq 0 |
| `hash` | string / VARCHAR | log | SHA-256 hex of the canonical form of the event without `hash` |

Canonical form (what `hash` covers): the event without `hash`, serialised as JSON with keys
sorted, no whitespace, non-ASCII characters unescaped, UTF-8. For the values this schema admits
(strings, integers, null, lists of strings, `duration_ms` stored as an integer when it is whole)
that is the RFC 8785 (JCS) form, so a verifier in another language can recompute it.

This module imports nothing heavy: the CDK app reads `COLUMNS` to build the Glue table.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from gatehouse import names
from gatehouse.models import Effect, StatementClass

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64


class EventKind(StrEnum):
    """What an event records. A closed list: `append` refuses any other kind."""

    SESSION_STARTED = "session_started"  # a proxy connection authenticated
    RECEIVED = "received"  # a command arrived (before anything is decided)
    DECISION = "decision"  # the policy decision, written before the command may run
    APPROVAL_REQUESTED = "approval_requested"  # the command waits for a human quorum
    PREVIEW = "preview"  # what the command would do (row_count: estimated or dry-run rows)
    NOTIFIED = "notified"  # the approvers were asked (the Slack message is posted)
    VOTE_REFUSED = "vote_refused"  # a vote that did not count (self-approval, twice, not allowed)
    APPROVAL_VOTE = "approval_vote"  # one approver said yes; the quorum is not reached yet
    APPROVED = "approved"  # the quorum is reached; `approvers` names everyone who said yes
    DENIED_BY_APPROVER = "denied_by_approver"  # an approver said no
    APPROVAL_EXPIRED = "approval_expired"  # nobody decided in time
    DRIFTED = "drifted"  # the approved command changed other rows than previewed: rolled back
    EXECUTED = "executed"  # the command ran (row_count, duration_ms)
    FAILED = "failed"  # the command ran and the target refused or failed it
    REFUSED = "refused"  # Gatehouse did not run the command (denied, unparseable, unknown connection)
    SESSION_CLOSED = "session_closed"  # the last event of a session: its seq + 1 counts the events


EVENT_KINDS: tuple[str, ...] = tuple(k.value for k in EventKind)

OUTCOMES: tuple[str, ...] = (
    "ok",
    "error",
    "denied",
    "refused",
    "pending",
    "approved",
    "expired",
    "cancelled",
    "timeout",
    "drifted",
)
DECISIONS: tuple[str, ...] = tuple(e.value for e in Effect)
STATEMENT_CLASSES: tuple[str, ...] = tuple(c.value for c in StatementClass)


@dataclass(frozen=True)
class Column:
    name: str
    glue_type: str  # Hive/Glue type for the Athena table
    duckdb_type: str  # DuckDB type for `read_json(columns=...)`


_STRING = ("string", "VARCHAR")
_LIST = ("array<string>", "VARCHAR[]")

# Column order is the order of keys in every stored event.
COLUMNS: tuple[Column, ...] = tuple(
    Column(name, *types)
    for name, types in (
        ("schema_version", ("int", "INTEGER")),
        ("event_id", _STRING),
        ("session_id", _STRING),
        ("request_id", _STRING),
        ("seq", ("bigint", "BIGINT")),
        ("time", _STRING),
        ("principal_arn", _STRING),
        ("principal_name", _STRING),
        ("connection", _STRING),
        ("connection_env", _STRING),
        ("target_kind", _STRING),
        ("kind", _STRING),
        ("statement", _STRING),
        ("statement_class", _STRING),
        ("relations", _LIST),
        ("decision", _STRING),
        ("policy_ids", _LIST),
        ("approvers", _LIST),
        ("outcome", _STRING),
        ("row_count", ("bigint", "BIGINT")),
        ("duration_ms", ("double", "DOUBLE")),
        ("error", _STRING),
        ("reason", _STRING),
        ("prev_hash", _STRING),
        ("hash", _STRING),
    )
)
FIELD_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)

# The Glue table over `events/`: one partition column, `dt`, projected as a date (no crawler, no
# partition registration). `session=` folders below a partition are read as part of it.
PARTITION_COLUMN = Column("dt", "string", "VARCHAR")
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
INPUT_FORMAT = "org.apache.hadoop.mapred.TextInputFormat"
OUTPUT_FORMAT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"


def athena_table_parameters(bucket: str, first_day: str = "2025-01-01") -> dict[str, str]:
    """Glue table parameters for partition projection on `dt` (`bucket` may be a CDK token)."""
    return {
        "classification": "json",
        "projection.enabled": "true",
        "projection.dt.type": "date",
        "projection.dt.format": "yyyy-MM-dd",
        "projection.dt.range": f"{first_day},NOW",
        "projection.dt.interval": "1",
        "projection.dt.interval.unit": "DAYS",
        "storage.location.template": f"s3://{bucket}/{names.EVENTS_PREFIX}dt=${{dt}}/",
    }


# Set once per session at `SessionLog.start` and copied into every event.
SESSION_FIELDS: tuple[str, ...] = (
    "session_id",
    "request_id",
    "principal_arn",
    "principal_name",
    "connection",
    "connection_env",
    "target_kind",
)
# Computed by the log itself; a caller never passes them.
LOG_FIELDS: tuple[str, ...] = ("schema_version", "event_id", "seq", "time", "prev_hash", "hash", "kind")
# What `SessionLog.append` accepts by name. `request_id` overrides the session's for one event;
# `connection_env` becomes the session's value from then on (the caller learns it late).
APPEND_FIELDS: tuple[str, ...] = (
    "request_id",
    "connection_env",
    "statement",
    "statement_class",
    "relations",
    "decision",
    "policy_ids",
    "approvers",
    "outcome",
    "row_count",
    "duration_ms",
    "error",
    "reason",
)
_LIST_FIELDS = frozenset({"relations", "policy_ids", "approvers"})
_ENUM_FIELDS: Mapping[str, tuple[str, ...]] = {
    "statement_class": STATEMENT_CLASSES,
    "decision": DECISIONS,
    "outcome": OUTCOMES,
}

# Session ids become S3 key segments and Hive partition values: no "/", "=", or spaces.
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HASH_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
        raise ValueError(f"invalid session id {session_id!r}: use letters, digits, '.', '_', '-' (max 128)")
    return session_id


def format_time(moment: datetime) -> str:
    """RFC 3339, UTC, milliseconds, `Z`: fixed width so strings sort as times."""
    if moment.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    # isoformat is C and ends "+00:00" for UTC: a third of the cost of formatting by pattern,
    # which every event pays (the proxy records one per statement).
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate what a caller passes to `append` and normalise it (lists, numbers)."""
    unknown = sorted(set(fields) - set(APPEND_FIELDS))
    if unknown:
        raise ValueError(f"unknown or log-managed event field(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, value in fields.items():
        out[name] = _clean(name, value)
    return out


def _clean(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _LIST_FIELDS:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list of strings")
        if not all(isinstance(item, str) for item in value):
            raise ValueError(f"{name} must be a list of strings")
        return list(value)
    if name == "row_count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("row_count must be a non-negative integer")
        return value
    if name == "duration_ms":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("duration_ms must be a number")
        if not math.isfinite(value) or value < 0:
            raise ValueError("duration_ms must be finite and non-negative")
        rounded = round(float(value), 3)
        # Whole numbers are stored as integers so the canonical form matches RFC 8785.
        return int(rounded) if rounded.is_integer() else rounded
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    allowed = _ENUM_FIELDS.get(name)
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def build_event(
    *,
    kind: str,
    seq: int,
    prev_hash: str,
    moment: datetime,
    session: Mapping[str, Any],
    fields: Mapping[str, Any],
    event_id: str | None = None,
) -> dict[str, Any]:
    """A complete event (every column, `hash` included). `fields` must be `clean_fields` output."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(EVENT_KINDS)}")
    event: dict[str, Any] = dict.fromkeys(FIELD_NAMES)
    event.update({k: session.get(k) for k in SESSION_FIELDS})
    event.update({k: v for k, v in fields.items() if v is not None or k not in SESSION_FIELDS})
    event.update(
        schema_version=SCHEMA_VERSION,
        event_id=event_id or str(uuid.uuid4()),
        seq=seq,
        time=format_time(moment),
        kind=kind,
        prev_hash=prev_hash,
    )
    event["hash"] = event_hash(event)
    return event


# What json.dumps would build on every call with these options, built once (the same output).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """The bytes a hash covers: the record without `hash`, sorted keys, no whitespace, UTF-8."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return _CANONICAL.encode(body).encode("utf-8")


def event_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def serialize(event: Mapping[str, Any]) -> bytes:
    """One JSON line in column order (what is stored: readable, and what Athena's SerDe reads)."""
    ordered = {name: event.get(name) for name in FIELD_NAMES}
    return (_LINE.encode(ordered) + "\n").encode("utf-8")


def serialize_many(batch: Iterable[Mapping[str, Any]]) -> bytes:
    """Several events as one object: one JSON line each, in chain order (newline-delimited JSON)."""
    return b"".join(serialize(event) for event in batch)


def split_lines(body: bytes) -> list[bytes]:
    """The lines of a stored object; ValueError unless it is non-empty and ends with a newline.

    A missing final newline means a cut-off write or an edit; an empty line would be a row of
    nulls to Athena's JSON SerDe. Neither is something the log ever writes.
    """
    if not body or not body.endswith(b"\n"):
        raise ValueError("not newline-terminated JSON lines")
    lines = body[:-1].split(b"\n")
    if any(not line.strip() for line in lines):
        raise ValueError("holds an empty line")
    return lines


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """Every event of a stored object, in order; ValueError if any line is not a complete event."""
    return [parse_event(line) for line in split_lines(body)]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid in an event")


def parse_event(body: bytes) -> dict[str, Any]:
    """Parse a stored event; raise ValueError when it is not one JSON object with every column."""
    try:
        record = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON event: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    missing = [name for name in FIELD_NAMES if name not in record]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}")
    if not isinstance(record["seq"], int) or isinstance(record["seq"], bool):
        raise ValueError("seq is not an integer")
    for name in ("hash", "prev_hash", "session_id", "time", "kind"):
        if not isinstance(record[name], str):
            raise ValueError(f"{name} is not a string")
    return record
