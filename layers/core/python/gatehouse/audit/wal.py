"""The write-ahead log: group commit across sessions, one object for every session's durable events.

The proxy's sync mode must not forward a statement before its decision is durable. Writing each
session's own object for that costs one PUT per session per statement. Instead the recorder writes,
once per flush cycle, one write-ahead object holding the new events of every session that waits,
and releases all of those statements when S3 holds it: N sessions' statements cost one PUT. The
sessions' own objects (`gatehouse.audit.log`) follow on the async schedule with the same events,
byte for byte (the recorder builds each event once and never re-chains it).

Layout (inside the session-log bucket)::

    wal/dt=YYYY-MM-DD/<YYYYMMDDTHHMMSS.ffffffZ>-<writer>-<n:08d>.json    events of several sessions

Each line is an event exactly as its session's object stores it (`events.serialize`), so a copy is
checked by its hash like any event. Objects are written once (`If-None-Match: *`), under the same
COMPLIANCE Object Lock as the events, and kept as long: they are evidence too.

Two things read them:
- `verify` requires every write-ahead event to be in its session's log, identical: an event
  missing there (older than a grace period, so a live writer has had time to copy it) is
  `missing`, a different event at its seq is `altered`.
- `recover` writes into their sessions' logs the write-ahead events the sessions lack (a proxy that
  died between the two writes). It writes through `SessionLog` with keep semantics and the
  `If-None-Match` puts, so it is safe beside a live writer: whichever of the two stores an object
  first, the other finds its own events in it and continues after them.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gatehouse.audit import events
from gatehouse.audit.log import (
    DEFAULT_RETRY,
    RetryPolicy,
    SessionClosedError,
    SessionLog,
    guarded,
    put_locked,
)
from gatehouse.exceptions import AuditWriteError, NotFoundError

log = logging.getLogger(__name__)

WAL_PREFIX = "wal/"
_WAL_KEY = re.compile(
    "^" + re.escape(WAL_PREFIX) + r"dt=(\d{4}-\d{2}-\d{2})/(\d{8}T\d{6}\.\d{6}Z)-([a-z0-9]+)-(\d{8})\.json$"
)
# How old a write-ahead object must be before verify calls its uncopied events missing and recover
# copies them: a live writer copies within its flush interval, plus its retries.
DEFAULT_GRACE_S = 60.0


def wal_key(moment: datetime, writer: str, number: int) -> str:
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{WAL_PREFIX}dt={stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}/{stamp}-{writer}-{number:08d}.json"


def parse_wal_key(key: str) -> str | None:
    """The day (`dt`) of a write-ahead key, or None if the key is outside the layout."""
    match = _WAL_KEY.match(key)
    return match.group(1) if match is not None else None


class WriteAheadLog:
    """Writes write-ahead objects for one writer (a proxy process). Thread-safe."""

    def __init__(
        self,
        s3_client: Any,
        bucket: str,
        *,
        retention_days: int,
        retry: RetryPolicy | None = None,
        writer: str | None = None,
    ) -> None:
        if retention_days <= 0:
            raise ValueError("retention_days must be positive")
        self._s3 = s3_client
        self._bucket = bucket
        self._retention = timedelta(days=retention_days)
        self._retry = retry or DEFAULT_RETRY
        # Keys are unique per writer and counter; the writer id keeps two processes apart.
        self._writer = writer or uuid.uuid4().hex[:12]
        self._number = 0
        self._lock = threading.Lock()

    def write(self, lines: Sequence[bytes]) -> str:
        """Store serialized events (`events.serialize`, any sessions) as one object; return its key.

        Returns once S3 holds it. Raises AuditWriteError when it cannot be stored.
        """
        if not lines:
            raise ValueError("a write-ahead object holds at least one event")
        with self._lock:
            self._number += 1
            key = wal_key(datetime.now(UTC), self._writer, self._number)
        body = b"".join(lines)
        if not put_locked(
            self._s3,
            self._bucket,
            key,
            body,
            retention=self._retention,
            policy=self._retry,
            what=f"write {key}",
        ):
            # A fresh key per call: it exists only if our own lost-answer attempt stored it.
            existing = guarded(
                self._retry,
                f"read {key}",
                lambda: bytes(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()),
            )
            if existing != body:
                raise AuditWriteError(f"the write-ahead log: {key} holds another object")
        return key


# -- reading and recovery --------------------------------------------------------------------------


@dataclass(frozen=True)
class WalObjectRef:
    key: str
    modified: datetime | None


def list_wal_objects(
    s3_client: Any, bucket: str, days: Iterable[str] | None = None
) -> Iterator[WalObjectRef]:
    """The current write-ahead objects (all, or of the given `dt` days), oldest key first per day."""
    prefixes = [WAL_PREFIX] if days is None else [f"{WAL_PREFIX}dt={day}/" for day in sorted(set(days))]
    for prefix in prefixes:
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if parse_wal_key(obj["Key"]) is not None:
                    yield WalObjectRef(obj["Key"], obj.get("LastModified"))


@dataclass
class RecoverReport:
    objects: int = 0  # write-ahead objects read
    sessions: int = 0  # sessions with write-ahead events
    recovered: dict[str, int] = field(default_factory=dict)  # session -> events written
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        written = sum(self.recovered.values())
        lines = [
            f"{self.objects} write-ahead object(s), {self.sessions} session(s): "
            f"{written} event(s) written into {len(self.recovered)} session log(s)"
            + ("" if self.ok else f", {len(self.problems)} problem(s)")
        ]
        lines.extend(f"  {sid}: {count} event(s) recovered" for sid, count in sorted(self.recovered.items()))
        lines.extend(f"  problem: {p}" for p in self.problems)
        return "\n".join(lines)


def recover(
    s3_client: Any,
    bucket: str,
    *,
    retention_days: int,
    grace_s: float = DEFAULT_GRACE_S,
    now: datetime | None = None,
    retry: RetryPolicy | None = None,
) -> RecoverReport:
    """Write into each session's log the write-ahead events it lacks (see the module doc).

    Only objects older than `grace_s` are read: younger ones belong to writers still copying them.
    A session whose lacking events do not start right after its stored chain (a gap no copy fills),
    or whose copies disagree, is reported and left alone; so is a closed session (`verify` says
    what it lacks).
    """
    policy = retry or DEFAULT_RETRY
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=grace_s)
    report = RecoverReport()
    by_session: dict[str, dict[int, dict[str, Any]]] = {}
    conflicted: set[str] = set()
    for ref in list_wal_objects(s3_client, bucket):
        if ref.modified is not None and ref.modified > cutoff:
            continue
        report.objects += 1
        body = _read(s3_client, bucket, ref.key, policy)
        try:
            copies = events.parse_events(body)
        except ValueError as exc:
            report.problems.append(f"{ref.key} is unreadable ({exc}): run verify")
            continue
        for event in copies:
            sid, seq = str(event["session_id"]), int(event["seq"])
            if events.event_hash(event) != event["hash"]:
                report.problems.append(f"{ref.key}: {sid} #{seq} does not match its hash: run verify")
                conflicted.add(sid)
                continue
            known = by_session.setdefault(sid, {}).get(seq)
            if known is not None and known != event:
                report.problems.append(f"{sid} #{seq}: two write-ahead copies disagree: run verify")
                conflicted.add(sid)
            by_session[sid][seq] = event
    report.sessions = len(by_session)
    for sid in sorted(set(by_session) - conflicted):
        _recover_session(s3_client, bucket, sid, by_session[sid], retention_days, policy, report)
    return report


def _read(s3_client: Any, bucket: str, key: str, policy: RetryPolicy) -> bytes:
    return guarded(
        policy, f"read {key}", lambda: bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    )


def _recover_session(
    s3_client: Any,
    bucket: str,
    session_id: str,
    copies: dict[int, dict[str, Any]],
    retention_days: int,
    policy: RetryPolicy,
    report: RecoverReport,
) -> None:
    try:
        session_log = SessionLog.resume(
            s3_client, bucket, session_id=session_id, retention_days=retention_days, retry=policy
        )
    except SessionClosedError:
        return
    except NotFoundError:
        first = copies.get(0)
        if first is None:
            report.problems.append(f"{session_id}: no stored events and no write-ahead copy of event 0")
            return
        session = {name: first.get(name) for name in events.SESSION_FIELDS}
        session_log = SessionLog(
            s3_client, bucket, session=session, retention_days=retention_days, retry=policy
        )
    except AuditWriteError as exc:
        report.problems.append(f"{session_id}: {exc.message}")
        return
    start = session_log.next_seq
    lacking = sorted(seq for seq in copies if seq >= start)
    if not lacking:
        return
    if lacking != list(range(start, start + len(lacking))):
        report.problems.append(
            f"{session_id}: its log ends at #{start - 1} and the write-ahead copies hold #{lacking[0]} to "
            f"#{lacking[-1]} with gaps: not recovered"
        )
        return
    try:
        for seq in lacking:
            session_log.stage_built(copies[seq])
        written = session_log.flush(keep=True)
    except AuditWriteError as exc:
        report.problems.append(f"{session_id}: {exc.message}")
        return
    report.recovered[session_id] = len(written)
    log.info("write-ahead log: %d event(s) of session %s recovered", len(written), session_id)
