"""The proxy's session-log recorder: every connection's events, one flusher, group commit, a bound.

Each client connection gets a `RecordedSession` (one `SessionLog`, one hash chain). Its events
are written in two modes, chosen per statement by the caller:

- `record_durable` (sync mode): returns once S3 holds the event and everything recorded before
  it. One flusher task runs *cycles*: a cycle takes every session's pending events and writes
  them, one object per session (a session with several pending events costs one PUT), sessions
  in parallel on a thread pool. A durable record starts a cycle at once if none is running;
  records that arrive while one runs share the next (group commit). So N sessions that each wait
  for a statement cost about one PUT latency together, not N PUTs in a row.
- `record` (async mode): buffered and returns at once. A cycle runs at least every
  `flush_interval_s` while anything is pending, and at once when a session has
  `max_batch_events` pending; no object holds more than `max_batch_events` events.

The window and the trade-off. In sync mode nothing is at risk: the statement waits for one cycle
(a PUT, plus the rest of a cycle already in flight when it arrived: at most two PUT latencies
when S3 is healthy), and it is refused if the write fails. In async mode the statement runs
before its events are stored: a crash of the proxy loses at most the last `flush_interval_s`
(or `max_batch_events` events) of each session, plus whatever an S3 outage held back, which is
bounded below. Use sync for anything that changes data (the demo-prod connection does), async
where throughput matters more than the last second of the log.

Failure. A session whose write fails keeps its events (re-staged, in order, by the next cycle:
`SessionLog` drops what a failed flush staged, so the recorder keeps its own copy); its durable
waiters get the `AuditWriteError` (their statements must not run), and the recorder appends a
`refused` event for each, so the chain says the statement was refused rather than leaving a bare
decision. Failed sessions are retried every `flush_interval_s`. While more than
`max_backlog_events` events are pending, or the oldest has waited over `max_backlog_age_s`, the
recorder is *backlogged*: new records raise `RecorderBackloggedError` (SQLSTATE 57P03, "cannot
connect now"), which also bounds memory, until it catches up. A write that failed after S3 had in
fact stored the object (a lost acknowledgement) is adopted (`SessionLog.settle`), never written
twice. A session another writer closed or forked cannot continue: its events are dropped (logged)
and its later records raise `AuditWriteError`.

Threading. Everything here runs on the event loop except the writes: `SessionLog` (hashing, JSON,
boto3) is only touched in the pool's threads, and only by the cycle that owns that session, so
never by two threads at once. Field validation runs on the loop so that a bad field fails at the
caller. Call a `RecordedSession` only from the loop that started the recorder.
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
from gatehouse.exceptions import AuditWriteError, GatehouseError

log = logging.getLogger(__name__)

# SQLSTATE from PostgreSQL's errcodes.txt: what a server says while it cannot take work.
CANNOT_CONNECT_NOW = "57P03"

# One cycle's retries stay short: the statements of every session in the cycle wait for it, and a
# failed session is retried by the next cycle anyway (its events are kept).
RECORDER_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, total_timeout_s=2.0)


class RecorderBackloggedError(GatehouseError):
    """The session log is behind past its bound: new statements are refused until it catches up."""

    code = "log_backlogged"
    status = 503
    sqlstate = CANNOT_CONNECT_NOW


@dataclass(slots=True)
class _Item:
    """One event waiting to be stored: what the caller passed (validated), and who waits for it."""

    kind: str
    fields: dict[str, Any]
    enqueued: float
    waiter: asyncio.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one session's write in a cycle achieved (computed in a worker thread)."""

    durable: int  # how many of the job's items are stored: always a prefix
    objects: int
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


class RecordedSession:
    """The session log of one proxy connection. Build it with `ProxyRecorder.open`."""

    def __init__(self, recorder: ProxyRecorder, session_log: SessionLog) -> None:
        self._recorder = recorder
        self._log = session_log
        self._queue: deque[_Item] = deque()
        self._inflight: list[_Item] = []  # taken by the running cycle
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
        self._recorder._request_cycle()
        await waiter


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

        self._sessions: dict[str, RecordedSession] = {}
        self._pending = 0  # events recorded and not yet stored, in flight included
        self._oldest: float | None = None  # when the oldest of them was recorded (monotonic)
        self._urgent = False  # a durable record, a full batch or a close waits for a cycle
        self._retry_at = 0.0  # after a failed cycle, the next one waits until then
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running = False
        self._stopped = False

        self._cycles = 0
        self._objects = 0
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
            unstored = [*session._inflight, *session._queue]
            log.error(
                "session recorder: session %s not closed, %d event(s) not stored",
                session.session_id,
                len(unstored),
            )
            for item in unstored:
                if item.waiter is not None and not item.waiter.done():
                    item.waiter.set_exception(_copy_error(lost))
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

    @property
    def backlogged(self) -> bool:
        """The log is behind past its bound: new statements must be refused (SQLSTATE 57P03)."""
        if self._pending >= self._max_backlog:
            return True
        return self._oldest is not None and time.monotonic() - self._oldest > self._max_age

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for metrics and benchmarks."""
        oldest = 0.0 if self._oldest is None else time.monotonic() - self._oldest
        return {
            "sessions": len(self._sessions),
            "pending_events": self._pending,
            "oldest_pending_age_s": round(oldest, 3),
            "backlogged": self.backlogged,
            "flush_cycles": self._cycles,
            "puts": self._objects,
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
        elif len(session._queue) >= self._max_batch:
            self._request_cycle()

    def _enqueue(self, session: RecordedSession, item: _Item) -> None:
        if self._pending == 0:
            self._oldest = item.enqueued
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

    def _next_cycle_in(self, now: float) -> float | None:
        """Seconds until the next cycle is due; None while there is nothing to write."""
        if self._urgent:
            return 0.0
        if self._pending == 0 and not any(s._closing for s in self._sessions.values()):
            return None
        due = self._retry_at
        if self._oldest is not None:
            due = max(due, self._oldest + self._interval)
        return max(0.0, due - now)

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
                self._retry_at = time.monotonic() + self._interval
                # What that cycle held is in an unknown state: refuse it rather than guess.
                error = AuditWriteError("the session recorder failed")
                for session in list(self._sessions.values()):
                    if session._inflight:
                        self._break(session, session._inflight, error)
                        session._inflight = []

    async def _cycle(self) -> None:
        self._urgent = False
        jobs: list[tuple[RecordedSession, list[_Item], bool]] = []
        for session in self._sessions.values():
            if session._queue or session._closing:
                items = list(session._queue)
                session._queue.clear()
                session._inflight = items
                jobs.append((session, items, session._closing))
        if not jobs:
            return
        self._cycles += 1
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        outcomes = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, self._write, session._log, items, close)
                for session, items, close in jobs
            ),
            return_exceptions=True,
        )
        failed = False
        for (session, items, close), outcome in zip(jobs, outcomes, strict=True):
            if not isinstance(outcome, _Outcome):
                error = AuditWriteError(f"the session recorder failed: {type(outcome).__name__}")
                error.__cause__ = outcome
                outcome = _Outcome(durable=0, objects=0, error=error, permanent=True)
            failed = self._settle(session, items, close, outcome) or failed
        now = time.monotonic()
        self._last_cycle_s = now - started
        self._max_cycle_s = max(self._max_cycle_s, self._last_cycle_s)
        self._retry_at = now + self._interval if failed else 0.0
        self._oldest = min(
            (s._queue[0].enqueued for s in self._sessions.values() if s._queue),
            default=None,
        )
        if not self._running and not self._sessions:
            self._drained.set()

    def _settle(self, session: RecordedSession, items: list[_Item], close: bool, outcome: _Outcome) -> bool:
        """Apply one session's outcome: wake its waiters, keep what failed. True if it failed."""
        session._inflight = []
        stored = outcome.durable
        self._pending -= stored
        self._events_written += stored
        self._objects += outcome.objects
        for item in items[:stored]:
            if item.waiter is not None and not item.waiter.done():
                item.waiter.set_result(None)
        rest = items[stored:]
        error = outcome.error
        if error is None:
            if close:
                session._closed = True
                self._sessions.pop(session.session_id, None)
                if session._close_waiter is not None and not session._close_waiter.done():
                    session._close_waiter.set_result(None)
            return False
        self._failures += 1
        if outcome.permanent:
            self._break(session, rest, error)
            return True
        log.warning(
            "session recorder: session %s: %d event(s) not stored, retrying: %s",
            session.session_id,
            len(rest),
            error.message,
        )
        now = time.monotonic()
        refusals: list[_Item] = []
        for item in rest:
            if item.waiter is not None:
                if not item.waiter.done():
                    item.waiter.set_exception(_copy_error(error))
                item.waiter = None
                refusals.append(_refusal(item, error, now))
        # Back in front of what arrived during the cycle, in their order: the chain keeps it.
        session._queue.extendleft(reversed(rest))
        for refusal in refusals:
            self._enqueue(session, refusal)
        if close and session._close_waiter is not None and not session._close_waiter.done():
            session._close_waiter.set_exception(_copy_error(error))
        return True

    def _break(self, session: RecordedSession, rest: list[_Item], error: AuditWriteError) -> None:
        """The session's chain cannot continue: drop its events (said in the log) and refuse the rest."""
        dropped = rest + list(session._queue)
        session._queue.clear()
        self._pending = max(0, self._pending - len(dropped))
        session._broken = error
        log.error(
            "session recorder: session %s cannot be recorded any more, %d event(s) dropped: %s",
            session.session_id,
            len(dropped),
            error.message,
        )
        for item in dropped:
            if item.waiter is not None and not item.waiter.done():
                item.waiter.set_exception(_copy_error(error))
        if session._close_waiter is not None and not session._close_waiter.done():
            session._close_waiter.set_exception(_copy_error(error))
        self._sessions.pop(session.session_id, None)

    # -- the worker side (a pool thread; never two at once for one session) -------------------

    def _write(self, session_log: SessionLog, items: list[_Item], close: bool) -> _Outcome:
        start_seq = session_log.next_seq
        start_keys = len(session_log.keys)
        error: AuditWriteError | None = None
        permanent = False
        try:
            # A write that failed last cycle may have landed: those events are stored already.
            rest = items[session_log.settle() :]
            for first in range(0, len(rest), self._max_batch):
                for item in rest[first : first + self._max_batch]:
                    session_log.stage(item.kind, **item.fields)
                if close and first + self._max_batch >= len(rest):
                    session_log.close()  # the last chunk and session_closed: one object
                else:
                    session_log.flush()
            if close and not session_log.closed:
                session_log.close()
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
            durable=min(len(items), session_log.next_seq - start_seq),
            objects=len(session_log.keys) - start_keys,
            error=error,
            permanent=permanent,
        )
