"""The session log writer: hash-chained events, several to an object, each object written once, locked.

S3 layout (inside the session-log bucket)::

    events/dt=YYYY-MM-DD/session=<session_id>/<first_seq:08d>.json   events first_seq, first_seq+1, ...
    manifests/<session_id>.json                                      older sessions only (see below)

An object holds one event per line (newline-delimited JSON, what Athena's JSON SerDe and DuckDB's
`read_json` read as one row per line), in chain order; its key names the seq of its first line.
Callers `stage` the events that must become durable together and `flush` them as one put: the API
writes `received` + `decision` before the command runs and `executed` + `session_closed` before
COMMIT, two puts per request. `append` is `stage` + `flush`.

`dt` is the UTC date of the events' own `time`; every event of an object has the object's date (a
flush that straddles midnight writes one object per day), so Athena partition projection (`dt`
projected as a date, `storage.location.template = s3://<bucket>/events/dt=${dt}/`) prunes a
time-bounded query to exactly the days it covers. `resume` and `verify` find a session's days.

The manifest is the `session_closed` event: it is the last line of the object `close` writes, its
seq + 1 is the number of events, and its `prev_hash` commits to every event before it. Sessions
written before this layout also have `manifests/<id>.json`; `verify` still checks those.

Every object is written with:
- `ObjectLockMode=COMPLIANCE` and a retain-until date `retention_days` from now (wall clock);
- `ChecksumAlgorithm=SHA256` with the body's SHA-256: S3 (and moto) refuse an Object Lock put
  without an integrity header (Content-MD5 or x-amz-sdk-checksum-algorithm);
- `IfNoneMatch="*"`: the put fails (412) if the key exists, so a key is written once, and two
  writers that continue the same chain cannot both claim a seq (the loser adopts the winner's
  object and writes after it). Writers only ever start an object where the last one they know
  ends, so two of them at the same position always compete for the same key.

Durability: throttling, 5xx and connection errors are retried with exponential backoff and full
jitter (`RetryPolicy`, bounded in attempts and total time). When the retries run out `flush`
raises `AuditWriteError`, drops what was staged and the chain does not advance; the caller must
not run the command (or must roll it back).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from gatehouse import names
from gatehouse.audit import events
from gatehouse.exceptions import AuditWriteError, NotFoundError

log = logging.getLogger(__name__)

T = TypeVar("T")

_EVENT_KEY = re.compile(
    "^" + re.escape(names.EVENTS_PREFIX) + r"dt=(\d{4}-\d{2}-\d{2})/session=([^/]+)/(\d{8})\.json$"
)

# S3 error codes worth another try; any 5xx or 429 status is retried as well.
_RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)


class SessionClosedError(AuditWriteError):
    """The session already ended: nothing more may be recorded in it (so nothing may run)."""

    code = "audit_session_closed"
    status = 409


class ChainConflictError(AuditWriteError):
    """Another writer stored a different event at this position: the chain cannot continue safely."""

    code = "audit_chain_conflict"
    status = 409


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in attempts and in total time."""

    max_attempts: int = 5
    base_delay_s: float = 0.05
    max_delay_s: float = 1.0
    total_timeout_s: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    random: Callable[[], float] = random.random
    monotonic: Callable[[], float] = time.monotonic

    def delay(self, retry: int) -> float:
        """The pause before retry number `retry` (1-based): uniform in [0, min(cap, base * 2^n))."""
        return self.random() * min(self.max_delay_s, self.base_delay_s * (2 ** (retry - 1)))


DEFAULT_RETRY = RetryPolicy()


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error.get("Code") in _RETRYABLE_CODES or status >= 500 or status == 429
    # EndpointConnectionError, ConnectTimeoutError (ConnectionError); ReadTimeoutError,
    # ConnectionClosedError (HTTPClientError): the request may or may not have reached S3.
    return isinstance(exc, ConnectionError | HTTPClientError)


def call_with_retry(policy: RetryPolicy, what: str, fn: Callable[[], T]) -> T:
    """Run `fn`, retrying transient S3 failures; raise AuditWriteError when they do not pass.

    Other errors propagate unchanged. The budget is checked between attempts, so the total is at
    most `total_timeout_s` plus one attempt: give the client short timeouts and few retries of its
    own (botocore's retries multiply these).
    """
    deadline = policy.monotonic() + policy.total_timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            if not is_retryable(exc):
                raise
            pause = policy.delay(attempt)
            if attempt >= policy.max_attempts or policy.monotonic() + pause > deadline:
                log.error("session log: %s failed after %d attempt(s): %s", what, attempt, exc)
                raise AuditWriteError(f"the session log is unavailable ({what}: {_describe(exc)})") from exc
            log.warning("session log: %s failed (attempt %d), retrying: %s", what, attempt, exc)
            policy.sleep(pause)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    return type(exc).__name__


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_not_found(exc: ClientError) -> bool:
    return _error_code(exc) in {"NoSuchKey", "404", "NotFound"} or _status(exc) == 404


def is_precondition_failed(exc: ClientError) -> bool:
    return _error_code(exc) == "PreconditionFailed" or _status(exc) == 412


# -- keys --------------------------------------------------------------------------------------


def event_key(session_id: str, seq: int, time_text: str) -> str:
    return f"{names.EVENTS_PREFIX}dt={time_text[:10]}/session={session_id}/{seq:08d}.json"


def manifest_key(session_id: str) -> str:
    return f"{names.MANIFESTS_PREFIX}{session_id}.json"


@dataclass(frozen=True)
class EventKey:
    key: str
    dt: str
    session_id: str
    seq: int


def parse_event_key(key: str) -> EventKey | None:
    match = _EVENT_KEY.match(key)
    if match is None:
        return None
    return EventKey(key=key, dt=match.group(1), session_id=match.group(2), seq=int(match.group(3)))


def list_keys(s3_client: Any, bucket: str, prefix: str, *, delimiter: str | None = None) -> Iterator[str]:
    """Keys (or, with a delimiter, common prefixes) under `prefix`, across pages."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    for page in s3_client.get_paginator("list_objects_v2").paginate(**kwargs):
        if delimiter:
            yield from (p["Prefix"] for p in page.get("CommonPrefixes", []))
        else:
            yield from (o["Key"] for o in page.get("Contents", []))


def list_partitions(s3_client: Any, bucket: str) -> list[str]:
    """The `events/dt=.../` prefixes, newest first."""
    return sorted(list_keys(s3_client, bucket, names.EVENTS_PREFIX, delimiter="/"), reverse=True)


def find_session_keys(
    s3_client: Any, bucket: str, session_id: str, *, stop_at_first_event: bool = False
) -> list[EventKey]:
    """Every object key of a session, in seq order (one list call per day partition, newest first).

    With `stop_at_first_event` the scan ends at the partition holding seq 0: sessions run forward in
    time, so nothing of theirs is older (a tamperer's misplaced copy could be: `verify` scans all).
    """
    found: list[EventKey] = []
    for partition in list_partitions(s3_client, bucket):
        for key in list_keys(s3_client, bucket, f"{partition}session={session_id}/"):
            parsed = parse_event_key(key)
            if parsed is not None and parsed.session_id == session_id:
                found.append(parsed)
        if stop_at_first_event and any(k.seq == 0 for k in found):
            break
    return sorted(found, key=lambda k: (k.seq, k.dt))


# -- the writer --------------------------------------------------------------------------------


@dataclass
class _Chain:
    next_seq: int = 0
    last_hash: str = events.GENESIS_HASH
    first_hash: str | None = None
    first_time: str | None = None
    last_time: str | None = None
    keys: list[str] = field(default_factory=list)
    closed_event: dict[str, Any] | None = None


@dataclass
class _Staged:
    """An event waiting for `flush`: what the caller asked for, and the event built from it."""

    kind: str
    fields: dict[str, Any]
    event: dict[str, Any]


class SessionLog:
    """The hash-chained event log of one session. Build it with `start` or `resume`.

    Thread-safe: stage, flush, append and close take one lock, so events from several threads
    stay in one chain (each flush writes what was staged when it took the lock).
    """

    # How many objects written by a concurrent writer one flush may adopt before giving up.
    MAX_ADOPTIONS = 8

    def __init__(
        self,
        s3_client: Any,
        bucket: str,
        *,
        session: Mapping[str, Any],
        retention_days: int,
        clock: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
        chain: _Chain | None = None,
    ) -> None:
        if retention_days <= 0:
            raise ValueError("retention_days must be positive")
        self._s3 = s3_client
        self._bucket = bucket
        self._session = dict(session)
        self._retention = timedelta(days=retention_days)
        self._clock = clock or time.time
        self._retry = retry or DEFAULT_RETRY
        self._chain = chain or _Chain()
        self._staged: list[_Staged] = []
        # The key of a flush that failed: its put may still have landed (a timeout after S3
        # stored it), so the next flush looks there first.
        self._pending_key: str | None = None
        self._summary: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @classmethod
    def start(
        cls,
        s3_client: Any,
        bucket: str,
        *,
        session_id: str,
        principal_arn: str,
        principal_name: str,
        connection: str,
        target_kind: str,
        retention_days: int,
        request_id: str | None = None,
        connection_env: str | None = None,
        clock: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> SessionLog:
        """A new session. Nothing is written until the first `flush` (or `append`, or `close`)."""
        session = {
            "session_id": events.check_session_id(session_id),
            "request_id": request_id,
            "principal_arn": principal_arn,
            "principal_name": principal_name,
            "connection": connection,
            "connection_env": connection_env,
            "target_kind": target_kind,
        }
        for name in ("principal_arn", "principal_name", "connection", "target_kind", "request_id"):
            value = session[name]
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
        if not target_kind:
            raise ValueError("target_kind is required")
        return cls(
            s3_client, bucket, session=session, retention_days=retention_days, clock=clock, retry=retry
        )

    @classmethod
    def resume(
        cls,
        s3_client: Any,
        bucket: str,
        *,
        session_id: str,
        retention_days: int,
        clock: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> SessionLog:
        """Continue a chain an earlier process wrote (e.g. when an approval arrives).

        Lists the session's keys, reads its first and its last object; session constants come
        from the last event. Raises NotFoundError for an unknown session, SessionClosedError for
        a closed one, and AuditWriteError when those objects do not check out (hashes, positions,
        links inside the last object) or S3 cannot be read.
        """
        events.check_session_id(session_id)
        policy = retry or DEFAULT_RETRY
        keys = guarded(
            policy,
            "list session",
            lambda: find_session_keys(s3_client, bucket, session_id, stop_at_first_event=True),
        )
        if not keys:
            raise NotFoundError(f"no session log for {session_id}")
        seqs = [k.seq for k in keys]
        if seqs[0] != 0 or len(set(seqs)) != len(seqs):
            raise AuditWriteError(f"session {session_id}: its log has gaps or duplicates; run verify")
        head = _read_object(s3_client, bucket, keys[0].key, policy)
        tail = head if len(keys) == 1 else _read_object(s3_client, bucket, keys[-1].key, policy)
        for ek, batch in ((keys[0], head), (keys[-1], tail)):
            for offset, event in enumerate(batch):
                linked = offset == 0 or event["prev_hash"] == batch[offset - 1]["hash"]
                if events.event_hash(event) != event["hash"] or event["seq"] != ek.seq + offset or not linked:
                    raise AuditWriteError(
                        f"session {session_id}: event {ek.seq + offset} does not check out; run verify"
                    )
        first, last = head[0], tail[-1]
        if first["prev_hash"] != events.GENESIS_HASH:
            raise AuditWriteError(f"session {session_id}: event 0 does not start the chain; run verify")
        if any(e["kind"] == events.EventKind.SESSION_CLOSED for e in tail):
            raise SessionClosedError(f"session {session_id} is closed")
        chain = _Chain(
            next_seq=last["seq"] + 1,
            last_hash=last["hash"],
            first_hash=first["hash"],
            first_time=first["time"],
            last_time=last["time"],
            keys=[k.key for k in keys],
        )
        session = {name: last.get(name) for name in events.SESSION_FIELDS}
        return cls(
            s3_client,
            bucket,
            session=session,
            retention_days=retention_days,
            clock=clock,
            retry=retry,
            chain=chain,
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return str(self._session["session_id"])

    @property
    def next_seq(self) -> int:
        """The seq the next stored event will get (the number of events stored so far)."""
        return self._chain.next_seq

    @property
    def last_hash(self) -> str:
        """The hash of the last stored event (staged events do not count until flushed)."""
        return self._chain.last_hash

    @property
    def closed(self) -> bool:
        return self._chain.closed_event is not None

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of the objects stored so far, in chain order."""
        return tuple(self._chain.keys)

    @property
    def staged(self) -> tuple[dict[str, Any], ...]:
        """The events waiting for `flush`, as they would be stored if no other writer intervenes."""
        with self._lock:
            return tuple(dict(s.event) for s in self._staged)

    # -- writing -------------------------------------------------------------------------------

    def stage(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Chain one event after the stored and staged ones without writing it; return it.

        Nothing is durable until `flush` (or `close`) returns. `fields` are schema columns by
        name (`events.APPEND_FIELDS`); an unknown name or a bad value is a ValueError. If another
        writer extends the chain first, `flush` re-chains staged events (new seq, prev_hash and
        time): the events `flush` returns are the ones stored.
        """
        cleaned = self._check(kind, fields)
        with self._lock:
            return dict(self._stage(kind, cleaned))

    def flush(self, *, keep: bool = False, max_events: int | None = None) -> list[dict[str, Any]]:
        """Write everything staged, as one object (one per UTC day), and return the events stored.

        Returns once S3 has acknowledged every object: the events are durable. Nothing staged:
        no request, `[]`. On failure (AuditWriteError, or its SessionClosedError and
        ChainConflictError) the staged events are dropped and the chain stays where it was; an
        object that landed after all is adopted by the next flush.

        With `keep`, staged events are final: built once, never re-chained, and kept staged (in
        order) when a write fails, so the next flush writes the very same bytes. A writer that has
        copied them elsewhere first (the proxy's write-ahead log) needs that: the copy and the
        session's own objects must hold identical events. An object another writer stored at our
        position is accepted only if it holds the first of our events, unchanged (a recovery from
        that copy, or our own write whose answer was lost); anything else is ChainConflictError.
        `max_events` (with `keep`) caps the events of one object: more are written as several.
        """
        with self._lock:
            return self._flush_kept(max_events) if keep else self._flush()

    def settle(self) -> int:
        """After a failed flush, adopt its object if it landed after all; return how many events that was.

        A caller that keeps its own copy of what a failed flush dropped, to stage it again, calls
        this first and leaves out that many of its first events: they are stored already, and
        staging them again would write them twice. Raises AuditWriteError if S3 cannot be read.
        """
        with self._lock:
            before = self._chain.next_seq
            self._settle_pending()
            return self._chain.next_seq - before

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """`stage` + `flush`: record one event (with anything staged before it) and return it as stored."""
        cleaned = self._check(kind, fields)
        with self._lock:
            self._stage(kind, cleaned)
            return self._flush()[-1]

    def close(self, *, keep: bool = False, max_events: int | None = None) -> dict[str, Any]:
        """End the session: write what is staged and `session_closed` as one object; return a summary.

        The summary (not stored: the `session_closed` event is the session's manifest) has
        `event_count`, `first_seq`, `last_seq`, `first_hash`, `last_hash`, `first_time`,
        `last_time`, `closed_at` and `keys` (every object of the session). One put. Idempotent:
        after a failure (the staged events are dropped, as in `flush`) call it again to write
        `session_closed`; once closed, it returns the summary. A session another writer closed
        first is adopted and summarised, unless events were staged: then SessionClosedError.
        With `keep` (see `flush`), a failed close keeps what it staged, `session_closed` included,
        and calling it again writes the same events.
        """
        with self._lock:
            if self._summary is not None:
                return dict(self._summary)
            if self._chain.closed_event is None and keep:
                if not self._closing_staged():
                    self._stage(events.EventKind.SESSION_CLOSED.value, {})
                self._flush_kept(max_events)
            elif self._chain.closed_event is None:
                nothing_else = not self._staged
                self._stage(events.EventKind.SESSION_CLOSED.value, {})
                try:
                    self._flush()
                except SessionClosedError:
                    # Another writer's close ends the session as well as ours would, unless we
                    # had events of our own to write with it: those are lost, and the caller must know.
                    if self._chain.closed_event is None or not nothing_else:
                        raise
            self._summary = self._build_summary()
            return dict(self._summary)

    def _check(self, kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        if kind not in events.EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(events.EVENT_KINDS)}")
        if kind == events.EventKind.SESSION_CLOSED:
            raise ValueError("use close() to end a session")
        return events.clean_fields(fields)

    def _closing_staged(self) -> bool:
        return bool(self._staged) and self._staged[-1].kind == events.EventKind.SESSION_CLOSED

    def _stage(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        if self._chain.closed_event is not None or self._closing_staged():
            raise SessionClosedError(f"session {self.session_id} is closed")
        if fields.get("connection_env") is not None:
            self._session["connection_env"] = fields["connection_env"]
        seq, prev_hash = self._tail()
        event = self._build(kind, fields, seq, prev_hash)
        self._staged.append(_Staged(kind, fields, event))
        return event

    def _tail(self) -> tuple[int, str]:
        if self._staged:
            last = self._staged[-1].event
            return last["seq"] + 1, last["hash"]
        return self._chain.next_seq, self._chain.last_hash

    def _build(self, kind: str, fields: Mapping[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
        return events.build_event(
            kind=kind, seq=seq, prev_hash=prev_hash, moment=self._now(), session=self._session, fields=fields
        )

    def _rechain(self, pending: list[_Staged]) -> None:
        """Rebuild staged events after the chain moved (an adoption): positions, links and times."""
        seq, prev_hash = self._chain.next_seq, self._chain.last_hash
        for staged in pending:
            # Times are taken afresh so they stay in chain order after the adopted events.
            staged.event = self._build(staged.kind, staged.fields, seq, prev_hash)
            seq, prev_hash = seq + 1, staged.event["hash"]

    def _flush(self) -> list[dict[str, Any]]:
        if not self._staged:
            return []
        pending, self._staged = self._staged, []
        # Dropped on failure: a flush that raised is, to the caller, a record that does not
        # exist (the command does not run, or rolls back), so it must not surface later.
        # Settle first: a close whose put landed although it failed is adopted here, and must
        # stop this flush (a retried close would otherwise write a second session_closed).
        self._settle_pending()
        if self._chain.closed_event is not None:
            raise SessionClosedError(f"session {self.session_id} is closed")
        if (
            pending[0].event["seq"] != self._chain.next_seq
            or pending[0].event["prev_hash"] != self._chain.last_hash
        ):
            self._rechain(pending)
        stored: list[dict[str, Any]] = []
        adoptions = 0
        while pending:
            batch, key, body, what = self._next_object(pending)
            count = len(batch)
            try:
                written = self._put_once(key, body, what)
            except AuditWriteError:
                self._pending_key = key
                raise
            # The key exists: our own earlier attempt that landed, or another writer's object.
            existing = None if written else self._get(key, f"read {key}")
            if existing is None or existing == body:
                self._advance(key, batch)
                stored.extend(batch)
                pending = pending[count:]
                continue
            self._adopt(key, existing)
            adoptions += 1
            if self._chain.closed_event is not None:
                raise SessionClosedError(f"session {self.session_id} was closed by another writer")
            if adoptions >= self.MAX_ADOPTIONS:
                raise ChainConflictError(f"session {self.session_id}: too many concurrent writers")
            self._rechain(pending)
        return stored

    def _next_object(
        self, pending: list[_Staged], max_events: int | None = None
    ) -> tuple[list[dict[str, Any]], str, bytes, str]:
        """The events of the next object to write from `pending` (one UTC day, at most
        `max_events`), its key, its body and what to call the write in errors."""
        day = pending[0].event["time"][:10]
        count = next((i for i, s in enumerate(pending) if s.event["time"][:10] != day), len(pending))
        if max_events is not None:
            count = min(count, max_events)
        batch = [s.event for s in pending[:count]]
        key = event_key(self.session_id, batch[0]["seq"], batch[0]["time"])
        what = f"write event {batch[0]['seq']}" + (f"-{batch[-1]['seq']}" if count > 1 else "")
        return batch, key, events.serialize_many(batch), what

    def _flush_kept(self, max_events: int | None = None) -> list[dict[str, Any]]:
        """`flush(keep=True)`: the staged events stay as built, and staged until S3 holds them."""
        stored: list[dict[str, Any]] = []
        while self._staged:
            if self._chain.closed_event is not None:
                raise SessionClosedError(f"session {self.session_id} is closed")
            first = self._staged[0].event
            if first["seq"] != self._chain.next_seq or first["prev_hash"] != self._chain.last_hash:
                raise ChainConflictError(
                    f"session {self.session_id}: another writer moved the chain past events already copied"
                )
            batch, key, body, what = self._next_object(self._staged, max_events)
            # A failure raises here with everything still staged: the next flush tries this key again.
            # An object already there with our bytes is our own earlier attempt, whose answer was lost.
            existing = None if self._put_once(key, body, what) else self._get(key, f"read {key}")
            if existing is None or existing == body:
                self._advance(key, batch)
                stored.extend(batch)
                del self._staged[: len(batch)]
                continue
            # Another writer's object at our position: it must chain (checked by _adopt), and hold
            # our events unchanged where it overlaps them (a recovery from a write-ahead copy).
            ours = {staged.event["seq"]: staged.event for staged in self._staged}
            adopted = self._adopt(key, existing)
            for event in adopted:
                mine = ours.get(event["seq"])
                if mine is not None and mine != event:
                    raise ChainConflictError(
                        f"session {self.session_id}: {key} holds other events than this writer built"
                    )
                if mine is not None:
                    stored.append(mine)
            self._staged = [s for s in self._staged if s.event["seq"] >= self._chain.next_seq]
        return stored

    def stage_built(self, event: Mapping[str, Any]) -> None:
        """Stage an event another writer built (a write-ahead copy) as it is, for `flush(keep=True)`.

        It must be an intact event of this session (its hash checks out) that continues the stored
        and staged events exactly; anything else is ChainConflictError and nothing is staged.
        """
        with self._lock:
            seq, prev_hash = self._tail()
            if (
                event.get("session_id") != self.session_id
                or event.get("seq") != seq
                or event.get("prev_hash") != prev_hash
                or events.event_hash(event) != event.get("hash")
                or self._closing_staged()
                or self._chain.closed_event is not None
            ):
                raise ChainConflictError(
                    f"session {self.session_id}: event {event.get('seq')} does not continue the chain"
                )
            self._staged.append(_Staged(str(event["kind"]), {}, dict(event)))

    def _settle_pending(self) -> None:
        """After a failed flush, learn whether its put landed after all, and adopt it if it did."""
        key = self._pending_key
        if key is None:
            return
        body = self._get_if_exists(key, "check the last failed write")
        if body is not None:
            self._adopt(key, body)
        self._pending_key = None

    def _adopt(self, key: str, body: bytes) -> list[dict[str, Any]]:
        """Accept an object stored at our next position if its events continue our chain exactly."""
        try:
            batch = events.parse_events(body)
        except ValueError as exc:
            raise ChainConflictError(f"session {self.session_id}: unreadable object at {key}") from exc
        seq, prev_hash = self._chain.next_seq, self._chain.last_hash
        for event in batch:
            if (
                event["session_id"] != self.session_id
                or event["seq"] != seq
                or event["prev_hash"] != prev_hash
                or events.event_hash(event) != event["hash"]
            ):
                raise ChainConflictError(
                    f"session {self.session_id}: {key} holds an event that does not chain"
                )
            # Another writer of the same session, never someone else's session under a reused id.
            for name in ("principal_arn", "principal_name", "connection", "target_kind"):
                if event.get(name) != self._session.get(name):
                    raise ChainConflictError(
                        f"session {self.session_id}: {key} was written for another {name}"
                    )
            seq, prev_hash = seq + 1, event["hash"]
        log.info("session log: adopting %s written by another attempt or writer", key)
        self._advance(key, batch)
        for event in batch:
            if event.get("connection_env"):
                self._session["connection_env"] = event["connection_env"]
        return batch

    def _advance(self, key: str, batch: list[dict[str, Any]]) -> None:
        chain = self._chain
        for event in batch:
            if chain.first_hash is None:
                chain.first_hash = event["hash"]
                chain.first_time = event["time"]
            chain.next_seq = event["seq"] + 1
            chain.last_hash = event["hash"]
            chain.last_time = event["time"]
            if event["kind"] == events.EventKind.SESSION_CLOSED:
                chain.closed_event = event
        chain.keys.append(key)

    def _build_summary(self) -> dict[str, Any]:
        chain = self._chain
        closed = chain.closed_event or {}
        summary: dict[str, Any] = {
            "schema_version": events.SCHEMA_VERSION,
            "session_id": self.session_id,
            "event_count": chain.next_seq,
            "first_seq": 0,
            "last_seq": chain.next_seq - 1,
            "first_hash": chain.first_hash,
            "last_hash": chain.last_hash,
            "first_time": chain.first_time,
            "last_time": chain.last_time,
            "closed_at": closed.get("time"),
            "keys": list(chain.keys),
        }
        summary["hash"] = events.event_hash(summary)
        return summary

    # -- S3 ------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        value = self._clock()
        if isinstance(value, datetime):
            return value
        return datetime.fromtimestamp(float(value), tz=UTC)

    def _put_once(self, key: str, body: bytes, what: str) -> bool:
        """Create `key`; False if it already exists. Retries transient failures."""
        return put_locked(
            self._s3, self._bucket, key, body, retention=self._retention, policy=self._retry, what=what
        )

    def _get(self, key: str, what: str) -> bytes:
        body = self._get_if_exists(key, what)
        if body is None:
            raise AuditWriteError(f"session log: {key} vanished")
        return body

    def _get_if_exists(self, key: str, what: str) -> bytes | None:
        def get() -> bytes | None:
            try:
                response = self._s3.get_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if is_not_found(exc):
                    return None
                raise
            return bytes(response["Body"].read())

        return self._guard(what, get)

    def _guard(self, what: str, fn: Callable[[], T]) -> T:
        return guarded(self._retry, what, fn)


def put_locked(
    s3_client: Any,
    bucket: str,
    key: str,
    body: bytes,
    *,
    retention: timedelta,
    policy: RetryPolicy,
    what: str,
) -> bool:
    """Create `key` once, locked in COMPLIANCE mode for `retention`; False if it exists already.

    Retries transient failures (`guarded`): AuditWriteError when they do not pass.
    """
    checksum = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")

    def put() -> bool:
        # Retention runs from the wall clock (S3's notion of now), not an injectable clock.
        retain_until = datetime.now(UTC) + retention
        try:
            s3_client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType="application/x-ndjson",
                IfNoneMatch="*",
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=retain_until,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
        except ClientError as exc:
            if is_precondition_failed(exc):
                return False
            raise
        return True

    return guarded(policy, what, put)


def guarded(policy: RetryPolicy, what: str, fn: Callable[[], T]) -> T:
    """`call_with_retry`, with any S3 failure (retried or not) turned into AuditWriteError."""
    try:
        return call_with_retry(policy, what, fn)
    except AuditWriteError:
        raise
    except (ClientError, BotoCoreError) as exc:
        log.error("session log: %s failed: %s", what, exc)
        raise AuditWriteError(f"the session log refused a request ({what}: {_describe(exc)})") from exc


def _read_object(s3_client: Any, bucket: str, key: str, policy: RetryPolicy) -> list[dict[str, Any]]:
    def get() -> bytes:
        return bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())

    body = guarded(policy, f"read {key}", get)
    try:
        return events.parse_events(body)
    except ValueError as exc:
        raise AuditWriteError(f"session log: {key} is not a list of events; run verify") from exc
