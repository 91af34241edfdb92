"""The proxy's session-log recorder: every connection's events, one flusher, group commit, a bound.

Each client connection gets a `RecordedSession` (one `SessionLog`, one hash chain). Its events
are written in two modes, chosen per statement by the caller:

- `record_durable` (sync mode): returns once S3 holds the event and everything recorded before
  it. One flusher task runs *cycles*. A cycle builds every session's new events (chained, hashed,
  serialized: once, never re-chained afterwards) and writes, in one write-ahead object
  (`gatehouse.audit.wal`), the not-yet-durable events of every session that has a durable record
  waiting; when S3 holds that object, all of those statements go on. A durable record starts a
  cycle at once if none is running; records that arrive while one runs share the next. So N
  sessions that each wait for a statement cost one PUT together, not N (group commit across
  sessions), and a statement waits at most two PUT latencies when S3 is healthy.
- `record` (async mode): buffered and returns at once.

Every event also reaches its session's own objects (what `verify`, `replay` and Athena read), byte
for byte as in the write-ahead copy, on the async schedule: at least every `flush_interval_s`
while a session has events waiting, at once when it has `max_batch_events` waiting or closes; no
object holds more than `max_batch_events` events. A session being written that way does not also
go into the write-ahead object of that cycle: its own object is its durable write.

The window and the trade-off. In sync mode nothing is at risk: a statement runs only once its
event is in S3 (in the write-ahead object or its session's), and it is refused if that write
fails. A proxy that dies after the write-ahead object and before the session's own object leaves
the events in the write-ahead log only: `verify` reports them missing from the session (after a
grace period) and `gatehouse audit recover` writes them in. In async mode the statement runs
before its events are stored: a crash of the proxy loses at most the last `flush_interval_s` (or
`max_batch_events` events) of each session, plus whatever an S3 outage held back, which is
bounded below. Use sync for anything that changes data (the demo-prod connection does), async
where throughput matters more than the last second of the log.

Failure. Built events are kept until their session's objects hold them: a failed session write is
retried (the same bytes) after `flush_interval_s`. A durable waiter whose write failed (the
write-ahead object, or its session's own) gets the `AuditWriteError` (its statement must not
run), and the recorder appends a `refused` event for it, so the chain says the statement was
refused rather than leaving a bare decision. While more than `max_backlog_events` events are not
in their sessions' objects, or the oldest has waited over `max_backlog_age_s`, the recorder is
*backlogged*: new records raise `RecorderBackloggedError` (SQLSTATE 57P03, "cannot connect now"),
which also bounds memory, until it catches up. A write that failed after S3 had in fact stored the
object (a lost acknowledgement) is found by the retry of the same key, never written twice. A
session another writer closed or forked cannot continue: its events are dropped (logged) and its
later records raise `AuditWriteError`.

Threading. Everything here runs on the event loop except the writes (boto3, in the pool's
threads): events are built on the loop, in slices. A session's `SessionLog` is touched by the
loop while its events are built and by one pool thread while they are written, never both at
once (a cycle builds, then writes, then settles). Field validation runs at the caller, so that a
bad field fails there. Call a `RecordedSession` only from the loop that started the recorder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gatehouse.audit import events
from gatehouse.audit.log import ChainConflictError, RetryPolicy, SessionClosedError, SessionLog
from gatehouse.audit.wal import WriteAheadLog
from gatehouse.exceptions import AuditWriteError, GatehouseError

log = logging.getLogger(__name__)

# SQLSTATE from PostgreSQL's errcodes.txt: what a server says while it cannot take work.
CANNOT_CONNECT_NOW = "57P03"

# One cycle's retries stay short: the statements of every session in the cycle wait for it, and a
# failed session is retried by the next cycle anyway (its events are kept).
# Events built between two yields to the loop (about 35 µs each).
_BUILD_SLICE = 256

RECORDER_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, total_timeout_s=2.0)


class RecorderBackloggedError(GatehouseError):
    """The session log is behind past its bound: new statements are refused until it catches up."""

    code = "log_backlogged"
    status = 503
    sqlstate = CANNOT_CONNECT_NOW


@dataclass(slots=True)
class _Item:
    """One event on its way to S3: what the caller passed (validated), who waits, what it became."""

    kind: str
    fields: dict[str, Any]
    enqueued: float
    waiter: asyncio.Future[None] | None = None
    line: bytes | None = None  # the stored event's bytes, once built (staged in the SessionLog)
    ahead: bool = False  # in a stored write-ahead object: durable, not yet in the session's objects


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one session's write in a cycle achieved (computed in a worker thread)."""

    stored: int  # how many of the session's built events its objects hold now: always a prefix
    objects: int
    closed: bool = False  # session_closed is stored
    error: AuditWriteError | None = None
    permanent: bool = False  # the session cannot continue (closed or forked elsewhere, or a bug)


def _clean(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    if kind not in events.EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(events.EVENT_KINDS)}")
    if kind == events.EventKind.SESSION_CLOSED:
        raise ValueError("use close() to end a session")
    return events.clean_fields(fields)


def _copy_error(exc: AuditWriteError) -> AuditWriteError:
    # Each waiter raises its own instance: one exception raised in many tasks collects their tracebacks.
    copy = AuditWriteError(exc.message, code=exc.code, status=exc.status)
    copy.__cause__ = exc
    return copy


def _refusal(item: _Item, exc: AuditWriteError, now: float) -> _Item:
    """The `refused` event that follows a durable event whose statement was refused (it did not run)."""
    carried = ("request_id", "statement", "statement_class", "relations")
    fields = {name: item.fields[name] for name in carried if item.fields.get(name) is not None}
    fields.update(outcome="refused", error=f"{exc.code}: {exc.message}")
    return _Item(events.EventKind.REFUSED.value, events.clean_fields(fields), now)


def _waiting(item: _Item) -> bool:
    return item.waiter is not None and not item.waiter.done()


class RecordedSession:
    """The session log of one proxy connection. Build it with `ProxyRecorder.open`."""

    def __init__(self, recorder: ProxyRecorder, session_log: SessionLog) -> None:
        self._recorder = recorder
        self._log = session_log
        self._queue: deque[_Item] = deque()  # recorded, not built yet
        self._built: list[_Item] = []  # built and staged in the SessionLog, not in its objects yet
        self._retry_at = 0.0  # after a failed write of its objects, not before then
        self._closing = False
        self._closed = False
        self._close_waiter: asyncio.Future[None] | None = None
        self._broken: AuditWriteError | None = None

    @property
    def session_id(self) -> str:
        return self._log.session_id

    @property
    def closed(self) -> bool:
        return self._closed

    def record(self, kind: str, **fields: Any) -> None:
        """Buffer one event (async mode) and return at once.

        ValueError for an unknown kind or a bad field; RecorderBackloggedError while the log is
        behind past its bound (refuse the statement with SQLSTATE 57P03); AuditWriteError once the
        session can no longer be recorded (closed, or its chain broken).
        """
        self._recorder._admit(self, kind, fields, None)

    async def record_durable(self, kind: str, **fields: Any) -> None:
        """Record one event (sync mode): returns once S3 holds it and every event recorded before it.

        Raises what `record` raises, and AuditWriteError when the write fails: the statement must
        not run. The event itself stays in the chain, followed by a `refused` event the recorder
        adds, and is written when S3 is back.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._recorder._admit(self, kind, fields, waiter)
        await waiter

    async def close(self) -> None:
        """Store every pending event, then `session_closed`; return once S3 holds them.

        Raises AuditWriteError if that write fails: the recorder keeps retrying in the background
        (and `stop` once more), and calling `close` again waits for the next attempt.
        """
        if self._closed:
            return
        if self._recorder._stopped:
            raise AuditWriteError("the session recorder is stopped: this session was not closed")
        if self._broken is not None:
            self._recorder._forget(self)
            raise _copy_error(self._broken)
        self._closing = True
        if self._close_waiter is None or self._close_waiter.done():
            self._close_waiter = asyncio.get_running_loop().create_future()
        waiter = self._close_waiter
        self._retry_at = 0.0  # the caller waits: try now
        self._recorder._request_cycle()
        await waiter

    def _oldest(self) -> float | None:
        if self._built:
            return self._built[0].enqueued
        return self._queue[0].enqueued if self._queue else None


class ProxyRecorder:
    """The session logs of all of a proxy's connections, written by one flusher task (see module doc)."""

    def __init__(
        self,
        s3_client: Any,
        bucket: str,
        *,
        retention_days: int,
        flush_interval_s: float = 1.0,
        max_batch_events: int = 1000,
        max_backlog_events: int = 50_000,
        max_backlog_age_s: float = 10.0,
        workers: int = 8,
        retry: RetryPolicy | None = None,
    ) -> None:
        if retention_days <= 0:
            raise ValueError("retention_days must be positive")
        if flush_interval_s <= 0 or max_backlog_age_s <= 0:
            raise ValueError("flush_interval_s and max_backlog_age_s must be positive")
        if max_batch_events < 1 or max_backlog_events < 1 or workers < 1:
            raise ValueError("max_batch_events, max_backlog_events and workers must be at least 1")
        self._s3 = s3_client
        self._bucket = bucket
        self._retention_days = retention_days
        self._interval = float(flush_interval_s)
        self._max_batch = max_batch_events
        self._max_backlog = max_backlog_events
        self._max_age = float(max_backlog_age_s)
        self._workers = workers
        self._retry = retry or RECORDER_RETRY
        self._wal = WriteAheadLog(s3_client, bucket, retention_days=retention_days, retry=self._retry)

        self._sessions: dict[str, RecordedSession] = {}
        self._pending = 0  # events recorded and not yet in their sessions' objects
        self._oldest_at: float | None = None  # when the oldest of them was recorded (monotonic)
        self._urgent = False  # a durable record, a full batch or a close waits for a cycle
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running = False
        self._stopped = False

        self._cycles = 0
        self._objects = 0
        self._ahead_objects = 0
        self._ahead_events = 0
        self._events_written = 0
        self._durable_records = 0
        self._failures = 0
        self._refused_backlogged = 0
        self._last_cycle_s = 0.0
        self._max_cycle_s = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the flusher task (owned here: `stop` cancels it)."""
        if self._task is not None:
            raise RuntimeError("the recorder was started already")
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="gatehouse-recorder")
        self._running = True
        self._task = asyncio.create_task(self._run(), name="gatehouse-recorder")

    async def stop(self, deadline_s: float = 10.0) -> None:
        """Close every open session, writing what it can before the deadline; log what it could not."""
        if not self._running:
            return
        self._running = False
        for session in self._sessions.values():
            session._closing = True
            session._retry_at = 0.0
        self._request_cycle()
        try:
            if self._sessions:
                async with asyncio.timeout(deadline_s):
                    await self._drained.wait()
        except TimeoutError:
            log.error("session recorder: stop deadline (%.1f s) passed with sessions unwritten", deadline_s)
        finally:
            await self._shut_down()

    async def _shut_down(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # wait() rather than await: a cancellation of stop() itself must still propagate.
            await asyncio.wait([self._task])
        if self._executor is not None:
            # A write already running in a thread cannot be interrupted; nothing waits for it.
            self._executor.shutdown(wait=False, cancel_futures=True)
        lost = AuditWriteError("the session recorder stopped before this event was stored")
        for session in self._sessions.values():
            unstored = [*session._built, *session._queue]
            ahead = sum(1 for item in unstored if item.ahead)
            log.error(
                "session recorder: session %s not closed, %d event(s) not stored in its log "
                "(%d of them in the write-ahead log: `gatehouse audit recover` writes those)",
                session.session_id,
                len(unstored),
                ahead,
            )
            for item in unstored:
                if _waiting(item):
                    item.waiter.set_exception(_copy_error(lost))  # type: ignore[union-attr]
            if session._close_waiter is not None and not session._close_waiter.done():
                session._close_waiter.set_exception(_copy_error(lost))
        self._stopped = True

    def open(
        self,
        *,
        session_id: str,
        principal_arn: str,
        principal_name: str,
        connection: str,
        connection_env: str | None,
        target_kind: str = "postgres",
    ) -> RecordedSession:
        """A new session's log. Nothing is written until its first event is flushed."""
        if not self._running:
            raise AuditWriteError("the session recorder is not running")
        if session_id in self._sessions:
            raise ValueError(f"session {session_id} is open already")
        session_log = SessionLog.start(
            self._s3,
            self._bucket,
            session_id=session_id,
            principal_arn=principal_arn,
            principal_name=principal_name,
            connection=connection,
            connection_env=connection_env,
            target_kind=target_kind,
            retention_days=self._retention_days,
            retry=self._retry,
        )
        session = RecordedSession(self, session_log)
        self._sessions[session_id] = session
        return session

    # -- state -----------------------------------------------------------------------------------

    def _recompute_oldest(self) -> None:
        # After a cycle or a break, not per record: `backlogged` is asked for every statement.
        self._oldest_at = min(
            (t for s in self._sessions.values() if (t := s._oldest()) is not None), default=None
        )

    @property
    def backlogged(self) -> bool:
        """The log is behind past its bound: new statements must be refused (SQLSTATE 57P03)."""
        if self._pending >= self._max_backlog:
            return True
        oldest = self._oldest_at
        return oldest is not None and time.monotonic() - oldest > self._max_age

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for metrics and benchmarks."""
        oldest = self._oldest_at
        return {
            "sessions": len(self._sessions),
            "pending_events": self._pending,
            "oldest_pending_age_s": 0.0 if oldest is None else round(time.monotonic() - oldest, 3),
            "backlogged": self.backlogged,
            "flush_cycles": self._cycles,
            "puts": self._objects + self._ahead_objects,
            "session_puts": self._objects,
            "write_ahead_puts": self._ahead_objects,
            "write_ahead_events": self._ahead_events,
            "events_written": self._events_written,
            "durable_records": self._durable_records,
            "failures": self._failures,
            "refused_backlogged": self._refused_backlogged,
            "last_cycle_s": round(self._last_cycle_s, 4),
            "max_cycle_s": round(self._max_cycle_s, 4),
        }

    # -- the loop side ---------------------------------------------------------------------------

    def _admit(
        self,
        session: RecordedSession,
        kind: str,
        fields: Mapping[str, Any],
        waiter: asyncio.Future[None] | None,
    ) -> None:
        if session._broken is not None:
            raise _copy_error(session._broken)
        if session._closing or session._closed:
            raise SessionClosedError(f"session {session.session_id} is closed")
        if not self._running:
            raise AuditWriteError("the session recorder is not running")
        cleaned = _clean(kind, fields)
        if self.backlogged:
            self._refused_backlogged += 1
            raise RecorderBackloggedError(
                f"the session log is behind ({self._pending} events pending): try again shortly"
            )
        self._enqueue(session, _Item(kind, cleaned, time.monotonic(), waiter))
        if waiter is not None:
            self._durable_records += 1
            self._request_cycle()
        elif len(session._queue) + len(session._built) >= self._max_batch:
            self._request_cycle()

    def _enqueue(self, session: RecordedSession, item: _Item) -> None:
        if self._pending == 0:
            self._oldest_at = item.enqueued
            # The flusher sleeps without a timeout while nothing is pending: start its interval.
            self._wake.set()
        self._pending += 1
        session._queue.append(item)

    def _request_cycle(self) -> None:
        self._urgent = True
        self._wake.set()

    def _forget(self, session: RecordedSession) -> None:
        self._sessions.pop(session.session_id, None)
        if not self._running and not self._sessions:
            self._drained.set()

    def _write_due(self, session: RecordedSession, now: float) -> bool:
        """Whether this cycle writes the session's own objects."""
        if now < session._retry_at:
            return False
        if session._closing or len(session._built) >= self._max_batch:
            return True
        oldest = session._oldest()
        return oldest is not None and now - oldest >= self._interval

    def _next_cycle_in(self, now: float) -> float | None:
        """Seconds until the next cycle is due; None while there is nothing to write."""
        if self._urgent:
            return 0.0
        due: float | None = None
        for session in self._sessions.values():
            oldest = now if session._closing else session._oldest()
            if oldest is None:
                continue
            at = max(session._retry_at, oldest + (0.0 if session._closing else self._interval))
            due = at if due is None else min(due, at)
        return None if due is None else max(0.0, due - now)

    async def _run(self) -> None:
        while True:
            delay = self._next_cycle_in(time.monotonic())
            if delay is None or delay > 0:
                # No await between computing the delay and clearing: a record cannot slip between.
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            try:
                await self._cycle()
            except Exception:  # the flusher must outlive a bug, or every waiter hangs
                log.exception("session recorder: a flush cycle failed")
                # What that cycle held is in an unknown state: refuse it rather than guess.
                error = AuditWriteError("the session recorder failed")
                for session in list(self._sessions.values()):
                    if session._built or session._queue:
                        self._break(session, error)

    async def _cycle(self) -> None:
        self._urgent = False
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        # 1. Build what was recorded since the last cycle: on the loop, not in a worker. Building
        # is pure Python (hashing, JSON); in a thread it only fought the loop for the GIL (the
        # relay's thread then waited for it at every C call that releases it): pgbench through
        # the proxy ran 13 % faster with it here (bench/bench_proxy.py, two runs each way).
        builds: list[tuple[RecordedSession, list[_Item]]] = []
        for session in self._sessions.values():
            if session._queue:
                items = list(session._queue)
                session._queue.clear()
                session._built.extend(items)  # staged by the build below, in this order
                builds.append((session, items))
        if builds:
            failures = await self._build(builds)
            for session, error in failures:
                self._break(session, error)
        # 2. This cycle's writes: the sessions' own objects that are due, and one write-ahead object
        # with the not-yet-durable events of every other session that has a durable record waiting.
        now = time.monotonic()
        writes = [s for s in self._sessions.values() if self._write_due(s, now)]
        writing = {s.session_id for s in writes}
        ahead: list[tuple[RecordedSession, list[_Item]]] = []
        for session in self._sessions.values():
            if session.session_id in writing or not any(_waiting(i) for i in session._built if not i.ahead):
                continue
            ahead.append((session, [i for i in session._built if not i.ahead]))
        if not writes and not ahead:
            if not self._running and not self._sessions:
                self._drained.set()
            return
        self._cycles += 1
        jobs: list[asyncio.Future[Any]] = [
            loop.run_in_executor(self._executor, self._write, s._log, len(s._built), self._may_close(s))
            for s in writes
        ]
        lines = [item.line for _, items in ahead for item in items if item.line is not None]
        if not lines:
            ahead = []
        else:
            jobs.append(loop.run_in_executor(self._executor, self._wal.write, lines))
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        # 3. Settle: wake the waiters, keep what failed.
        if ahead:
            self._settle_ahead(ahead, outcomes[-1])
        for session, outcome in zip(writes, outcomes, strict=False):
            if not isinstance(outcome, _Outcome):
                error = AuditWriteError(f"the session recorder failed: {type(outcome).__name__}")
                error.__cause__ = outcome if isinstance(outcome, BaseException) else None
                outcome = _Outcome(stored=0, objects=0, error=error, permanent=True)
            self._settle(session, outcome)
        self._recompute_oldest()
        done = time.monotonic()
        self._last_cycle_s = done - started
        self._max_cycle_s = max(self._max_cycle_s, self._last_cycle_s)
        if not self._running and not self._sessions:
            self._drained.set()

    def _settle_ahead(self, ahead: list[tuple[RecordedSession, list[_Item]]], outcome: Any) -> None:
        if isinstance(outcome, str):  # the key: S3 holds every one of these events
            self._ahead_objects += 1
            for _, items in ahead:
                self._ahead_events += len(items)
                for item in items:
                    item.ahead = True
                    if _waiting(item):
                        item.waiter.set_result(None)  # type: ignore[union-attr]
            return
        if isinstance(outcome, AuditWriteError):
            error = outcome
        else:
            error = AuditWriteError(f"the session recorder failed: {type(outcome).__name__}")
            error.__cause__ = outcome if isinstance(outcome, BaseException) else None
            log.error("session recorder: the write-ahead write failed", exc_info=outcome)
        self._failures += 1
        log.warning(
            "session recorder: a write-ahead write failed, refusing its statements: %s", error.message
        )
        now = time.monotonic()
        for session, items in ahead:
            self._refuse_waiters(session, items, error, now)

    def _refuse_waiters(
        self, session: RecordedSession, items: list[_Item], error: AuditWriteError, now: float
    ) -> None:
        """Fail the durable waiters among `items`; each statement's chain gets a `refused` event."""
        for item in items:
            if item.waiter is None:
                continue
            if not item.waiter.done():
                item.waiter.set_exception(_copy_error(error))
            item.waiter = None
            if session._broken is None and not session._closed:
                self._enqueue(session, _refusal(item, error, now))

    def _settle(self, session: RecordedSession, outcome: _Outcome) -> None:
        """Apply the outcome of writing one session's objects."""
        stored, session._built = session._built[: outcome.stored], session._built[outcome.stored :]
        self._pending -= len(stored)
        self._events_written += len(stored)
        self._objects += outcome.objects
        for item in stored:
            if _waiting(item):
                item.waiter.set_result(None)  # type: ignore[union-attr]
        error = outcome.error
        if error is None:
            if outcome.closed:
                session._closed = True
                self._sessions.pop(session.session_id, None)
                if session._close_waiter is not None and not session._close_waiter.done():
                    session._close_waiter.set_result(None)
            elif session._closing:
                self._request_cycle()  # its events are stored: now session_closed
            return
        self._failures += 1
        if outcome.permanent:
            self._break(session, error)
            return
        log.warning(
            "session recorder: session %s: %d event(s) not stored, retrying: %s",
            session.session_id,
            len(session._built),
            error.message,
        )
        session._retry_at = time.monotonic() + self._interval
        # Waiters not made durable by a write-ahead copy are refused; the events stay, as built.
        self._refuse_waiters(session, [i for i in session._built if not i.ahead], error, time.monotonic())
        if session._close_waiter is not None and not session._close_waiter.done():
            session._close_waiter.set_exception(_copy_error(error))

    @staticmethod
    def _may_close(session: RecordedSession) -> bool:
        """Whether this write may end with `session_closed`: a closing session, and none of its
        events is a statement's decision that a failed write would have to follow with `refused`
        (nothing can follow `session_closed`, even a write of it that failed): those are written
        first, and `session_closed` by the next cycle."""
        return session._closing and not any(i.waiter is not None and not i.ahead for i in session._built)

    def _break(self, session: RecordedSession, error: AuditWriteError) -> None:
        """The session's chain cannot continue: drop its events (said in the log) and refuse the rest."""
        dropped = session._built + list(session._queue)
        session._built = []
        session._queue.clear()
        self._pending = max(0, self._pending - len(dropped))
        session._broken = error
        log.error(
            "session recorder: session %s cannot be recorded any more, %d event(s) dropped "
            "(%d of them in the write-ahead log): %s",
            session.session_id,
            len(dropped),
            sum(1 for item in dropped if item.ahead),
            error.message,
        )
        for item in dropped:
            if _waiting(item):
                item.waiter.set_exception(_copy_error(error))  # type: ignore[union-attr]
        if session._close_waiter is not None and not session._close_waiter.done():
            session._close_waiter.set_exception(_copy_error(error))
        self._forget(session)
        self._recompute_oldest()

    # -- the worker side (a pool thread; never two at once for one session) -------------------

    async def _build(
        self, builds: list[tuple[RecordedSession, list[_Item]]]
    ) -> list[tuple[RecordedSession, AuditWriteError]]:
        """Chain and serialize each item once (staged in its SessionLog); the sessions that failed.

        Gives the loop back every `_BUILD_SLICE` events (about 10 ms of work), so a backlog being
        built never stalls the sessions' relays for long.
        """
        failures: list[tuple[RecordedSession, AuditWriteError]] = []
        built = 0
        for session, items in builds:
            try:
                for item in items:
                    item.line = events.serialize(session._log.stage(item.kind, **item.fields))
                    built += 1
                    if built % _BUILD_SLICE == 0:
                        await asyncio.sleep(0)
            except AuditWriteError as exc:  # closed by another writer
                failures.append((session, exc))
            except Exception as exc:  # a bug must refuse the statements, not leave them waiting
                log.exception("session recorder: building session %s's events failed", session.session_id)
                error = AuditWriteError(f"the session recorder failed: {type(exc).__name__}")
                error.__cause__ = exc
                failures.append((session, error))
        return failures

    def _write(self, session_log: SessionLog, built: int, close: bool) -> _Outcome:
        start_seq = session_log.next_seq
        start_keys = len(session_log.keys)
        error: AuditWriteError | None = None
        permanent = False
        try:
            if close:
                session_log.close(keep=True, max_events=self._max_batch)
            else:
                session_log.flush(keep=True, max_events=self._max_batch)
        except (SessionClosedError, ChainConflictError) as exc:
            error, permanent = exc, True
        except AuditWriteError as exc:
            error = exc
        except Exception as exc:  # a bug must refuse the statements, not leave them waiting
            log.exception("session recorder: writing session %s failed", session_log.session_id)
            error = AuditWriteError(f"the session recorder failed: {type(exc).__name__}")
            error.__cause__ = exc
            permanent = True
        return _Outcome(
            stored=min(built, session_log.next_seq - start_seq),
            objects=len(session_log.keys) - start_keys,
            closed=session_log.closed,
            error=error,
            permanent=permanent,
        )
