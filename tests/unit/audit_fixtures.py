"""Helpers for the session-log tests: a locked bucket, a stepping clock, S3 fault injection, tampering."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError

from gatehouse.audit import events
from gatehouse.audit.log import RetryPolicy, SessionLog

LOG_BUCKET = "gatehouse-session-log-test"
COPY_BUCKET = "gatehouse-session-log-copy"
AGENT_ARN = "arn:aws:iam::123456789012:user/analyst"


def make_log_bucket(s3: Any, bucket: str = LOG_BUCKET) -> str:
    """A bucket like the deployed one: Object Lock on (which turns versioning on)."""
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


class SteppingClock:
    """Returns a datetime that moves forward `step` on each call (event times are deterministic)."""

    def __init__(self, start: datetime | None = None, step: timedelta = timedelta(milliseconds=5)) -> None:
        self.now = start or datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
        self.step = step

    def __call__(self) -> datetime:
        current = self.now
        self.now += self.step
        return current


class RecordedSleeps:
    def __init__(self) -> None:
        self.pauses: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


def fast_retry(sleeps: RecordedSleeps | None = None, **overrides: Any) -> RetryPolicy:
    """The default policy's shape without real sleeping, and with jitter fixed at its maximum."""
    kwargs: dict[str, Any] = {"sleep": sleeps or RecordedSleeps(), "random": lambda: 1.0}
    kwargs.update(overrides)
    return RetryPolicy(**kwargs)


def client_error(code: str, status: int, operation: str = "PutObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


class FaultyS3:
    """Wraps an S3 client; `faults[op]` yields the exception to raise for each call (None: pass through).

    A fault given as ("after", exc) performs the real call first and then raises: the request
    reached S3 but the answer was lost (a timeout after the write).
    """

    def __init__(self, s3: Any) -> None:
        self._s3 = s3
        self.faults: dict[str, Iterator[Any]] = {}
        self.calls: dict[str, int] = {}

    def fail(self, op: str, *outcomes: Any, then: Any = None) -> None:
        def gen() -> Iterator[Any]:
            yield from outcomes
            while True:
                yield then

        self.faults[op] = gen()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._s3, name)
        if not callable(real) or name.startswith("_") or name in {"get_paginator", "meta"}:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            fault = next(self.faults[name]) if name in self.faults else None
            if isinstance(fault, tuple) and fault[0] == "after":
                real(*args, **kwargs)
                raise fault[1]
            if fault is not None:
                raise fault
            return real(*args, **kwargs)

        return call


SLOW_DOWN = client_error("SlowDown", 503)
INTERNAL = client_error("InternalError", 500)
ACCESS_DENIED = client_error("AccessDenied", 403)
NO_ENDPOINT = EndpointConnectionError(endpoint_url="https://s3.us-east-1.amazonaws.com")


def start_session(s3: Any, session_id: str = "sess-1", **overrides: Any) -> SessionLog:
    kwargs: dict[str, Any] = {
        "session_id": session_id,
        "request_id": session_id,
        "principal_arn": AGENT_ARN,
        "principal_name": "analyst",
        "connection": "demo-prod",
        "target_kind": "postgres",
        "retention_days": 1,
        "clock": SteppingClock(),
        "retry": fast_retry(),
    }
    kwargs.update(overrides)
    bucket = kwargs.pop("bucket", LOG_BUCKET)
    return SessionLog.start(s3, bucket, **kwargs)


def write_read_session(log: SessionLog, *, close: bool = True) -> list[dict[str, Any]]:
    """received -> decision (allow) -> executed [-> session_closed]: the API's path for a read."""
    described = {
        "statement": "SELECT name, email FROM customers WHERE id = 1",
        "statement_class": "read",
        "relations": ["customers"],
        "connection_env": "prod",
    }
    written = [
        log.append(
            "received", statement=described["statement"], reason="weekly report", connection_env="prod"
        ),
        log.append("decision", decision="allow", policy_ids=["prod-read"], **described),
        log.append("executed", outcome="ok", row_count=1, duration_ms=12.5, **described),
    ]
    if close:
        log.close()
    return written


def write_multi_event_session(log: SessionLog) -> list[dict[str, Any]]:
    """An API read as two objects: [received, decision] before it runs, [executed, closed] before COMMIT."""
    described = {
        "statement": "SELECT name, email FROM customers WHERE id = 1",
        "statement_class": "read",
        "relations": ["customers"],
        "connection_env": "prod",
    }
    log.stage("received", statement=described["statement"], reason="weekly report", connection_env="prod")
    log.stage("decision", decision="allow", policy_ids=["prod-read"], **described)
    written = log.flush()
    log.stage("executed", outcome="ok", row_count=1, duration_ms=12.5, **described)
    log.close()
    return written


def copy_bucket(s3: Any, source: str = LOG_BUCKET, target: str = COPY_BUCKET) -> str:
    """A plain (unlocked, unversioned) copy of the log, for tampering."""
    s3.create_bucket(Bucket=target)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=source):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=source, Key=obj["Key"])["Body"].read()
            s3.put_object(Bucket=target, Key=obj["Key"], Body=body)
    return target


def read_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def write_json(s3: Any, bucket: str, key: str, record: dict[str, Any]) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=events.serialize(record))


def rehashed(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The record with `changes` applied and a valid hash: what a careful tamperer would write."""
    out = {**record, **changes}
    out["hash"] = events.event_hash(out)
    return out


def mutate(s3: Any, bucket: str, key: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    write_json(s3, bucket, key, change(read_json(s3, bucket, key)))
