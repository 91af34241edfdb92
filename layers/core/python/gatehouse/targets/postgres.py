"""Run classified SQL on a Postgres target with pg8000.

Every request runs in one transaction of its own: READ ONLY when every statement is a read, with
a `statement_timeout`, a row limit and a byte budget. The caller's `before_commit` hook (mask +
record) runs before COMMIT, so a command whose outcome cannot be recorded is rolled back, not
half-done.

The limits hold while the answer is read, not after it was loaded. pg8000 reads each backend
message whole (one `read(length)` per message), so the executor stands between the driver and its
socket stream: `_MessageGate` parses each message header as it passes and refuses a body larger
than what is left of the budget before a byte of it is read; `_RowSink` replaces the driver's
DataRow handler, so rows past the row limit are dropped as they arrive and values the driver
cannot decode come back as the server's text. SELECTs and FETCHes read through a cursor in
batches with explicit counts, so the server never sends much more than the limit allows.

Logging in costs more than a short read (a backend forked, SCRAM, TLS negotiated): `TargetPool`
keeps a few warm connections for the executor, per connection and credential, reset with
`DISCARD ALL` before reuse and used by one request at a time (see its docstring for why that is
safe).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import secrets
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError
from pglast.parser import ParseError, parse_sql_json

from gatehouse.exceptions import (
    BadRequestError,
    GatehouseError,
    ResultTooLargeError,
    StatementTimeoutError,
    TargetError,
    TargetUnavailableError,
)
from gatehouse.models import Connection, QueryResult, Statement, StatementClass
from gatehouse.secrets import DatabaseCredential, SecretStore
from gatehouse.targets.postgres_tls import PostgresTls, verification_failure

log = logging.getLogger(__name__)

QUERY_CANCELED = "57014"  # statement_timeout fired
INVALID_PASSWORD = "28P01"  # noqa: S105 - a SQLSTATE: the password was refused (e.g. rotated)
# Extra seconds the socket waits beyond the statement timeout before giving up on the server.
SOCKET_GRACE_S = 5.0
# The answer's budget: a synchronous Lambda response is at most 6 MB, and the rows still get
# masked and wrapped in the API's JSON; 4 MiB of (JSON-sized) rows leaves room for that.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
# A backend message that is not a row (an error, a notice, a row description) is never read if
# larger than this: an error text can quote a whole value ("invalid input syntax ...: "xxxx...").
MAX_CONTROL_MESSAGE = 1024 * 1024
# Rows asked for per FETCH: round trips stay few, and the server stops soon after a limit.
BATCH_ROWS = 1000

# Backend message types (PostgreSQL protocol 3.0, "Message Formats").
DATA_ROW = b"D"
ROW_DESCRIPTION = b"T"
NOTICE_RESPONSE = b"N"
_HEADER = struct.Struct("!ci")  # type byte, then a length that counts itself but not the type
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
FETCH_ALL = 2**63 - 1  # what the parser stores for FETCH ALL (LONG_MAX)
BINARY_FORMAT = 1
# PostgreSQL protocol 3.0, "SSLRequest": the length (8), then the code 1234.5679.
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
# Warm connections: one idle per connection and credential is what a Lambda environment (one
# request at a time) can reuse; a few more serve a process that runs requests side by side.
POOL_IDLE_PER_KEY = 2
POOL_IDLE_TOTAL = 8
# An idle connection older than this is closed rather than reused: a server or NAT that drops
# idle TCP sessions would otherwise cost a failed first statement.
POOL_MAX_IDLE_S = 60.0
# A session is logged in again at least this often: a role's changed settings and a rotated
# password (the credential is part of the key) take effect within this bound.
POOL_MAX_AGE_S = 300.0


def _sqlstate(exc: DatabaseError) -> str | None:
    info = _fields(exc)
    code = info.get("C")
    return str(code) if code else None


def _message(exc: DatabaseError) -> str:
    return str(_fields(exc).get("M") or "the database refused the statement")


def _fields(exc: DatabaseError) -> dict[str, Any]:
    # pg8000 puts the ErrorResponse fields (C, M, D, ...) in a dict as the first argument.
    return exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}


class _OverBudget(Exception):
    """A backend message would take the answer past its budget; the stream is now mid-message."""

    def __init__(self, code: bytes, size: int) -> None:
        super().__init__(f"{code!r} message of {size} bytes is over the budget")
        self.code = code
        self.size = size


class _MessageGate:
    """pg8000's buffered socket stream, with a size check on every backend message header.

    pg8000 reads a message's 5-byte header, then its body in one read of `length - 4` bytes. The
    gate keeps track of where each message starts, and raises before the body is read when it is
    larger than the limit for its type: an oversized value is never allocated, not even once.
    """

    def __init__(self, stream: Any, limit: Callable[[bytes], int]) -> None:
        self._stream = stream
        self._limit = limit
        self._header = bytearray()
        self._body_left = 0

    def read(self, size: int) -> bytes:
        if self._body_left:
            data: bytes = self._stream.read(min(size, self._body_left))
            self._body_left -= len(data)
            return data
        data = self._stream.read(min(size, _HEADER.size - len(self._header)))
        self._header += data
        if len(self._header) == _HEADER.size:
            code, length = _HEADER.unpack(self._header)
            self._header.clear()
            body = max(length - 4, 0)
            if body > self._limit(code):
                raise _OverBudget(code, body)
            self._body_left = body
        return data

    def write(self, data: bytes) -> int:
        written: int = self._stream.write(data)
        return written

    def flush(self) -> None:
        self._stream.flush()


class _RowSink:
    """One statement's rows, kept within the row limit and the byte budget as they arrive."""

    def __init__(self, max_rows: int, max_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.rows: list[tuple[Any, ...]] = []
        self.used = 0  # bytes of kept rows, measured as the JSON they become
        self.received = 0  # rows the server sent, kept or not
        self.reason: str | None = None  # "row_limit" | "byte_limit" once the answer is cut
        self.columns: list[dict[str, Any]] | None = None  # the last RowDescription, as pg8000 parsed it
        self._formats: list[int] = []

    def limit(self, code: bytes) -> int:
        if code != DATA_ROW:
            return MAX_CONTROL_MESSAGE
        if self.reason is not None or len(self.rows) >= self.max_rows:
            # Past the row limit a row is read and dropped: one at a time, never kept.
            return self.max_bytes
        return self.max_bytes - self.used

    def on_row_description(self, context: Any) -> None:
        self.columns = list(context.columns or ())
        self._formats = [int(c.get("format", 0)) for c in self.columns]

    def on_data_row(self, data: bytes, context: Any) -> None:
        self.received += 1
        if self.reason is not None or len(self.rows) >= self.max_rows:
            self.reason = self.reason or "row_limit"
            return
        texts, row = _decode_row(data, context.input_funcs, self._formats)
        # Charged as the JSON the text becomes, escapes included: a value of control characters
        # grows sixfold in JSON, and the 6 MB Lambda limit applies to the encoded answer.
        size = len(json.dumps(texts))
        if self.used + size > self.max_bytes:
            self.reason = "byte_limit"
            raise _OverBudget(DATA_ROW, size)
        self.rows.append(row)
        self.used += size

    def result(self, server_count: int | None) -> QueryResult:
        columns = self.columns or []
        if self.columns is None:
            # No row description: a statement that returns no rows, only a command tag count.
            count = server_count if server_count is not None and server_count >= 0 else 0
        else:
            # A write's RETURNING cut at the row limit still reports every row it changed.
            count = max(len(self.rows), server_count or 0)
        return QueryResult(
            columns=tuple(str(c["name"]) for c in columns),
            rows=tuple(self.rows),
            row_count=count,
            truncated=self.reason is not None,
            truncated_reason=self.reason,
            column_types=tuple(int(c["type_oid"]) for c in columns),
            column_origins=tuple(_origin(c) for c in columns),
        )


def _origin(column: dict[str, Any]) -> tuple[int, int] | None:
    table_oid, attnum = int(column["table_oid"]), int(column["column_attrnum"])
    return (table_oid, attnum) if table_oid and attnum else None


def _decode_row(
    data: bytes, funcs: Sequence[Callable[[str], Any]], formats: Sequence[int]
) -> tuple[list[str | None], tuple[Any, ...]]:
    """A DataRow body -> (the server's text of each value, the decoded values)."""
    (count,) = _INT16.unpack_from(data, 0)
    idx = 2
    texts: list[str | None] = []
    values: list[Any] = []
    for i in range(count):
        (size,) = _INT32.unpack_from(data, idx)
        idx += 4
        if size == -1:
            texts.append(None)
            values.append(None)
            continue
        raw = data[idx : idx + size]
        idx += size
        if i < len(formats) and formats[i] == BINARY_FORMAT:
            # A BINARY cursor's values are not text: shown the way Postgres shows bytea.
            text = "\\x" + raw.hex()
            value: Any = text
        else:
            text = _text(raw)
            value = _decoded(funcs[i], text) if i < len(funcs) else text
        texts.append(text)
        values.append(value)
    return texts, tuple(values)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # A SQL_ASCII database sends its bytes unconverted: keep them visible, do not fail.
        return raw.decode("utf-8", errors="backslashreplace")


def _decoded(func: Callable[[str], Any], text: str) -> Any:
    try:
        value = func(text)
    except Exception:  # noqa: BLE001
        # The driver's decoders parse the server's text with Python types that cover less than
        # Postgres does ('24:00:00'::time, '[2:3]={1,2}'::int[]) and fail in many ways; the text
        # itself is a faithful answer, a 500 is not.
        return text
    # pg8000's own stand-ins (PGInterval for '1 mon', which no timedelta holds; Range) are no
    # type a reader or a JSON encoder knows: the server's text says the same, exactly.
    return text if _driver_object(value) else value


def _driver_object(value: Any) -> bool:
    if isinstance(value, list):
        return any(_driver_object(v) for v in value)
    return type(value).__module__.startswith("pg8000")


def _ignore(data: bytes, context: Any) -> None:
    """Notices are never shown; pg8000 would keep the last hundred of them, whatever their size."""


class _Wire:
    """A pg8000 connection whose reads are bounded by the current statement's sink."""

    def __init__(self, con: pg8000.native.Connection, max_rows: int, max_bytes: int) -> None:
        handlers = getattr(con, "message_types", None)
        if not isinstance(handlers, dict) or DATA_ROW not in handlers or not hasattr(con, "_sock"):
            # The seams below are pg8000 1.31's; after an upgrade that moved them, refuse to run
            # rather than run unbounded.
            raise TargetUnavailableError(
                "the Postgres driver cannot be bounded (unexpected pg8000 version)", code="target_unavailable"
            )
        self.con = con
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.broken = False  # True once a read stopped mid-message: only closing is left
        self.sink = _RowSink(max_rows, max_bytes)
        self._stream = con._sock
        self._handlers = {code: handlers[code] for code in (ROW_DESCRIPTION, DATA_ROW, NOTICE_RESPONSE)}
        con._sock = _MessageGate(con._sock, lambda code: self.sink.limit(code))
        describe = handlers[ROW_DESCRIPTION]

        def on_row_description(data: bytes, context: Any) -> None:
            describe(data, context)
            self.sink.on_row_description(context)

        handlers[ROW_DESCRIPTION] = on_row_description
        handlers[DATA_ROW] = lambda data, context: self.sink.on_data_row(data, context)
        handlers[NOTICE_RESPONSE] = _ignore

    def new_sink(self) -> _RowSink:
        self.sink = _RowSink(self.max_rows, self.max_bytes)
        return self.sink

    def detach(self) -> pg8000.native.Connection:
        """The driver's own stream and handlers back (at a message boundary), for the next request."""
        self.con._sock = self._stream
        self.con.message_types.update(self._handlers)
        return self.con

    def run(self, sql: str) -> None:
        self.con.run(sql)

    @property
    def server_count(self) -> int | None:
        count = self.con.row_count
        return int(count) if count is not None and count >= 0 else None


@dataclass(frozen=True)
class _FetchPlan:
    """A FETCH that can return many rows, re-issued in batches with explicit counts."""

    portal: str
    forward: bool
    wanted: int | None  # None: ALL


def _fetch_plan(text: str) -> _FetchPlan | None:
    """The plan for a multi-row FETCH; None for MOVE and the single-row forms, run as written.

    FORWARD/BACKWARD n and ALL are split into batches: successive `FETCH BACKWARD k` return the
    same rows in the same order as one `FETCH BACKWARD n`. ABSOLUTE, RELATIVE, FIRST, LAST, PRIOR,
    NEXT and a count of 0 return at most one row; MOVE returns none.
    """
    try:
        parsed = json.loads(parse_sql_json(text))
    except ParseError:
        return None
    stmts = parsed.get("stmts") or []
    if len(stmts) != 1:
        return None
    node = stmts[0].get("stmt", {}).get("FetchStmt")
    if node is None or node.get("ismove"):
        return None
    direction, how_many = node.get("direction"), int(node.get("howMany", 0))
    if direction not in ("FETCH_FORWARD", "FETCH_BACKWARD") or how_many == 0:
        return None
    # A negative count reverses the direction (FETCH -3 is FETCH BACKWARD 3).
    forward = (direction == "FETCH_FORWARD") == (how_many > 0)
    wanted = abs(how_many)
    return _FetchPlan(
        portal=str(node["portalname"]), forward=forward, wanted=None if wanted >= FETCH_ALL else wanted
    )


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _fetch_in_batches(wire: _Wire, plan: _FetchPlan) -> None:
    sink = wire.sink
    direction = "FORWARD" if plan.forward else "BACKWARD"
    got = 0
    while sink.reason is None:
        # One row past the limit is asked for only when the statement wanted more than the limit:
        # "truncated" is then exact, and the cursor never moves past what the text asked for.
        ask = min(BATCH_ROWS, sink.max_rows + 1 - sink.received)
        if plan.wanted is not None:
            ask = min(ask, plan.wanted - got)
        if ask <= 0:
            return
        before = sink.received
        wire.run(f"FETCH {direction} {ask} FROM {_quote_ident(plan.portal)}")
        arrived = sink.received - before
        got += arrived
        if arrived < ask:
            return


def _mark_sent(exc: GatehouseError, sent: bool) -> GatehouseError:
    exc.command_sent = exc.command_sent or sent
    return exc


@dataclass
class _Progress:
    sent: bool = False  # the first statement of the command has gone to the server


@dataclass
class _Lease:
    """One request's hold on a target session: exclusive from checkout to checkin."""

    key: tuple[Any, ...]
    con: pg8000.native.Connection
    opened: float  # when the session logged in (the pool's clock)
    reused: bool  # it came from the pool: the server may have dropped it since


@dataclass
class _Idle:
    con: pg8000.native.Connection
    opened: float
    since: float


class TargetPool:
    """Warm target sessions for the executor, per connection and credential.

    Why reuse is safe. A target session's privileges are its login role's, and that role is the
    connection's own (one credential in Secrets Manager per connection), never the agent's: a
    fresh login for the next request, whoever sends it, would be the same role with the same
    rights. What a session can carry from one request to the next is its state, and the pool
    removes it before any reuse:
    - a session is taken by one request at a time (checkout removes it from the pool), so two
      requests, of one agent or two, never share a session concurrently;
    - it is given back only after the request's transaction ended cleanly (COMMIT or a READ
      ONLY transaction closed) and `DISCARD ALL` succeeded: that resets every setting and
      `SET ROLE`/`SESSION AUTHORIZATION` (RESET ALL), closes cursors, drops temporary tables,
      prepared statements and cached plans, releases session advisory locks, stops LISTENs and
      forgets sequence state, so an idle session holds nothing (no lock waits for the next use);
    - anything else (an error, a statement cut mid-message by the byte budget, a failed reset)
      closes the session instead;
    - the key holds the credential (its SHA-256, not the password): a rotated password or a
      changed address logs in afresh; sessions older than `max_age_s` are not reused.
    A session the server dropped while idle fails on the request's first statement, before any
    of the command is sent; the executor then logs in afresh, once.
    """

    def __init__(
        self,
        *,
        idle_per_key: int = POOL_IDLE_PER_KEY,
        idle_total: int = POOL_IDLE_TOTAL,
        max_idle_s: float = POOL_MAX_IDLE_S,
        max_age_s: float = POOL_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle_per_key = idle_per_key
        self._idle_total = idle_total
        self._max_idle_s = max_idle_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: dict[tuple[Any, ...], list[_Idle]] = {}
        # A pool dropped (a test's runtime) or left at exit logs its idle sessions out.
        weakref.finalize(self, _close_all, self._idle)

    @property
    def idle_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def now(self) -> float:
        return self._clock()

    def has_idle(self, key: tuple[Any, ...]) -> bool:
        with self._lock:
            return bool(self._idle.get(key))

    def take(self, key: tuple[Any, ...]) -> _Lease | None:
        """The most recently used idle session for `key` that is young enough, or None."""
        now = self._clock()
        expired: list[_Idle] = []
        found: _Idle | None = None
        with self._lock:
            idle = self._idle.get(key, [])
            while idle and found is None:
                entry = idle.pop()
                if now - entry.since > self._max_idle_s or now - entry.opened > self._max_age_s:
                    expired.append(entry)
                else:
                    found = entry
            if not idle:
                self._idle.pop(key, None)
        for entry in expired:
            _close_quietly(entry.con)
        return _Lease(key, found.con, found.opened, reused=True) if found is not None else None

    def give(self, lease: _Lease, *, fresh: bool = False) -> None:
        """Keep a session whose transaction has ended; `fresh`: it never ran anything (no reset)."""
        now = self._clock()
        if now - lease.opened > self._max_age_s:
            _close_quietly(lease.con)
            return
        if not fresh:
            try:
                lease.con.run("DISCARD ALL")
            except (DatabaseError, InterfaceError, OSError):
                _close_quietly(lease.con)
                return
            lease.con.notices.clear()
            lease.con.notifications.clear()
        with self._lock:
            # Sessions nobody took in time (a key no longer used: a rotated password) give up
            # their places first.
            stale = self._sweep(now)
            idle = self._idle.setdefault(lease.key, [])
            total = sum(len(v) for v in self._idle.values())
            kept = len(idle) < self._idle_per_key and total < self._idle_total
            if kept:
                idle.append(_Idle(lease.con, lease.opened, now))
        for entry in stale:
            _close_quietly(entry.con)
        if not kept:
            _close_quietly(lease.con)

    def _sweep(self, now: float) -> list[_Idle]:
        stale: list[_Idle] = []
        for key in list(self._idle):
            fresh: list[_Idle] = []
            for entry in self._idle[key]:
                too_old = now - entry.since > self._max_idle_s or now - entry.opened > self._max_age_s
                (stale if too_old else fresh).append(entry)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]
        return stale

    def close(self) -> None:
        with self._lock:
            entries = {key: self._idle.pop(key) for key in list(self._idle)}
        _close_all(entries)


def _close_all(idle: dict[tuple[Any, ...], list[_Idle]]) -> None:
    for entries in idle.values():
        for entry in entries:
            _close_quietly(entry.con)
    idle.clear()


def _close_quietly(con: pg8000.native.Connection) -> None:
    try:
        con.close()
    except (InterfaceError, OSError):
        pass  # the connection is already gone; closing it rolls back on the server


class PostgresExecutor:
    def __init__(self, secrets: SecretStore, pool: TargetPool | None = None) -> None:
        self._secrets = secrets
        self._pool = pool

    def warm(self, connection: Connection, timeout_ms: int) -> None:
        """Log in ahead of `run` (while the decision is being written), unless a session is idle.

        Logging in runs nothing, so it may start before the decision is durable. Without a pool
        this does nothing; a failure is left for `run` to meet and report.
        """
        if self._pool is None:
            return
        cred, key = self._identify(connection, timeout_ms)
        if self._pool.has_idle(key):
            return
        opened = self._pool.now()
        con, used = _login_rotating(connection, self._secrets, cred, timeout_s=_socket_timeout(timeout_ms))
        self._pool.give(
            _Lease(_pool_key(connection, used, timeout_ms), con, opened, reused=False), fresh=True
        )

    def run(
        self,
        connection: Connection,
        statements: Sequence[Statement],
        *,
        timeout_ms: int,
        max_rows: int,
        max_bytes: int = DEFAULT_MAX_BYTES,
        before_commit: Callable[[QueryResult], None] | None = None,
    ) -> QueryResult:
        """Run the statements in order and return the last statement's result.

        The answer holds at most `max_rows` rows and `max_bytes` bytes (measured as JSON); when a
        limit cut it, `truncated` is set and `truncated_reason` names the limit. A write whose
        RETURNING is over the byte budget is rolled back and refused (`ResultTooLargeError`): its
        outcome could not be reported. Rows past the row limit are dropped and the write commits,
        with `row_count` still counting every row it changed.

        Transaction control inside the text is refused: the executor owns the transaction, and a
        COMMIT in the text would end the READ ONLY transaction early.
        """
        _refuse_unsupported(statements)
        read_only = all(s.cls is StatementClass.READ for s in statements)
        lease = self._checkout(connection, timeout_ms)
        progress = _Progress()
        started = time.perf_counter()
        wire: _Wire | None = None
        ended = False  # the transaction ended cleanly: the session may serve another request
        try:
            with _target_errors(connection.name, progress):
                wire = self._begin(lease, connection, read_only, timeout_ms, max_rows, max_bytes)
                result = QueryResult(columns=(), rows=(), row_count=0)
                for i, stmt in enumerate(statements):
                    progress.sent = True
                    answer = read_only and i == len(statements) - 1
                    result = self._run_one(wire, stmt, answer=answer)
            result = replace(result, duration_ms=round((time.perf_counter() - started) * 1000, 3))
            if before_commit is not None:
                try:
                    before_commit(result)
                except Exception as exc:
                    # The statements ran, uncommitted: the hook's own error goes up unchanged,
                    # marked so that nobody reports "nothing was run".
                    exc.command_sent = True  # type: ignore[attr-defined]
                    raise
            if not wire.broken:
                # A broken connection only gets here in a read-only request cut by the budget:
                # closing it rolls back a transaction that could not have changed anything.
                with _target_errors(connection.name, progress):
                    wire.run("COMMIT")
                ended = True
            return result
        finally:
            if ended and wire is not None and self._pool is not None:
                self._pool.give(replace(lease, con=wire.detach()))
            else:
                _close_quietly(lease.con)

    def _identify(
        self, connection: Connection, timeout_ms: int
    ) -> tuple[DatabaseCredential, tuple[Any, ...]]:
        cred = self._secrets.database_credential(connection.secret_id)
        return cred, _pool_key(connection, cred, timeout_ms)

    def _checkout(self, connection: Connection, timeout_ms: int) -> _Lease:
        if self._pool is None:
            cred = self._secrets.database_credential(connection.secret_id)
            con, _ = _login_rotating(connection, self._secrets, cred, timeout_s=_socket_timeout(timeout_ms))
            return _Lease((), con, 0.0, False)
        cred, key = self._identify(connection, timeout_ms)
        lease = self._pool.take(key)
        if lease is None:
            opened = self._pool.now()
            con, used = _login_rotating(
                connection, self._secrets, cred, timeout_s=_socket_timeout(timeout_ms)
            )
            lease = _Lease(_pool_key(connection, used, timeout_ms), con, opened, False)
        return lease

    def _begin(
        self,
        lease: _Lease,
        connection: Connection,
        read_only: bool,
        timeout_ms: int,
        max_rows: int,
        max_bytes: int,
    ) -> _Wire:
        """Open the request's transaction; a pooled session found dropped is replaced, once."""
        while True:
            wire = _Wire(lease.con, max_rows, max_bytes)
            try:
                wire.run("START TRANSACTION READ ONLY" if read_only else "START TRANSACTION READ WRITE")
                # SET LOCAL: the limit dies with the transaction; the value is an integer we formatted.
                wire.run(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
                return wire
            except (DatabaseError, InterfaceError, OSError):
                if not lease.reused:
                    raise
                # Restarted server, idle timeout, terminated backend: nothing of the command has
                # been sent, so a fresh login is the same request, not a retry of it.
                log.info("a pooled session to %s was gone; logging in again", connection.name)
                _close_quietly(lease.con)
                cred = self._secrets.database_credential(connection.secret_id)
                lease.con, used = _login_rotating(
                    connection, self._secrets, cred, timeout_s=_socket_timeout(timeout_ms)
                )
                if self._pool is not None:
                    lease.key = _pool_key(connection, used, timeout_ms)
                lease.opened = self._pool.now() if self._pool is not None else 0.0
                lease.reused = False

    def _run_one(self, wire: _Wire, stmt: Statement, *, answer: bool) -> QueryResult:
        """Run one statement; `answer`: its rows are the request's read-only answer, and may be cut."""
        sink = wire.new_sink()
        server_count = None
        try:
            plan = _fetch_plan(stmt.text) if stmt.command == "fetch" else None
            if stmt.cls is StatementClass.READ and stmt.command == "select":
                self._select_through_cursor(wire, stmt.text)
            elif plan is not None:
                _fetch_in_batches(wire, plan)
            else:
                # SHOW, EXPLAIN, RETURNING, MOVE...: the sink and the gate bound what is kept.
                wire.run(stmt.text)
                server_count = wire.server_count
        except _OverBudget as over:
            wire.broken = True
            if over.code != DATA_ROW:
                raise ResultTooLargeError(
                    f"the server answered with a message of {over.size} bytes (an error or notice "
                    f"text over {MAX_CONTROL_MESSAGE} bytes): the request was stopped and rolled back"
                ) from None
            if not answer:
                raise ResultTooLargeError(
                    f"the statement's result is over the {wire.max_bytes}-byte budget and could not "
                    "be reported: the request was stopped and rolled back, nothing was committed"
                ) from None
            sink.reason = sink.reason or "byte_limit"
        return sink.result(server_count)

    @staticmethod
    def _select_through_cursor(wire: _Wire, text: str) -> None:
        # A cursor bounds what the server sends: batches of explicit size, never more than
        # max_rows + 1 rows in all, however large the table.
        name = f"gatehouse_{secrets.token_hex(6)}"
        wire.run(f"DECLARE {name} NO SCROLL CURSOR FOR {text}")
        _fetch_in_batches(wire, _FetchPlan(portal=name, forward=True, wanted=None))
        wire.run(f"CLOSE {name}")


def _pool_key(connection: Connection, cred: DatabaseCredential, timeout_ms: int) -> tuple[Any, ...]:
    # The password enters the key as a digest: the pool's keys never hold a credential.
    digest = hashlib.sha256(cred.password.encode("utf-8")).hexdigest()
    key = (connection.name, connection.host, connection.port, connection.database, cred.username)
    # A session opened under another TLS setting (a re-registered connection) is not this one's.
    tls = (
        str(connection.attributes.get("tls") or ""),
        _text_digest(str(connection.attributes.get("ca_pem") or "")),
    )
    return (*key, *tls, digest, timeout_ms)


@functools.lru_cache(maxsize=64)
def _text_digest(text: str) -> str:
    # Once per CA bundle, not per request: RDS's global bundle is about 160 kB of PEM.
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _socket_timeout(timeout_ms: int) -> float:
    # One socket timeout for connect and every read: the statement timeout plus a grace period,
    # so a server that stops answering cannot hold the request forever.
    return timeout_ms / 1000 + SOCKET_GRACE_S


def _tls_settings(connection: Connection) -> PostgresTls:
    """The connection's TLS mode and CA (gatehouse.targets.postgres_tls); unusable ones fail closed."""
    try:
        tls = PostgresTls.from_attributes(connection.attributes)
        if tls.attempted:
            tls.context()  # a ca_pem with no certificate is refused here, before any byte is sent
    except ValueError as exc:
        raise TargetUnavailableError(
            f"{connection.name} has unusable TLS settings: {exc}", code="target_unavailable"
        ) from None
    return tls


def _open_socket(connection: Connection, tls: PostgresTls, timeout_s: float) -> socket.socket:
    """TCP, then TLS per the connection's mode (libpq's sslmode; see postgres_tls).

    With `require` or `verify-full` a server that declines TLS is refused before the startup
    message, so neither the role name nor a password reaches it in plaintext; with `verify-full`
    a certificate that does not verify ends the login at the handshake, before any of it is sent.
    """
    host, port = connection.host, connection.port
    sock = socket.create_connection((host, port), timeout_s)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if not tls.attempted:
            return sock
        sock.sendall(SSL_REQUEST)
        if sock.recv(1) == b"S":
            try:
                return tls.context().wrap_socket(sock, server_hostname=tls.server_hostname(host) or None)
            except ssl.SSLCertVerificationError as exc:
                log.warning("%s: TLS verification failed: %s", connection.name, exc.verify_message)
                raise TargetUnavailableError(
                    f"{connection.name} refused: {verification_failure(exc)} (tls=verify-full); "
                    "nothing was sent to it",
                    code="target_unavailable",
                ) from exc
        if tls.required:
            raise TargetUnavailableError(
                f"{connection.name} does not accept TLS, but its connection requires it (tls={tls.mode}); "
                "nothing was sent to it",
                code="target_unavailable",
            )
        return sock
    except BaseException:
        sock.close()
        raise


def connect(
    connection: Connection, secrets: SecretStore, *, timeout_s: float, application_name: str = "gatehouse"
) -> pg8000.native.Connection:
    """Log in to a Postgres target with the connection's own credential from Secrets Manager."""
    cred = secrets.database_credential(connection.secret_id)
    con, _ = _login_rotating(
        connection, secrets, cred, timeout_s=timeout_s, application_name=application_name
    )
    return con


def password_refused(exc: TargetUnavailableError) -> bool:
    """The login failed because the server refused the password (28P01), not for another reason."""
    cause = exc.__cause__
    return isinstance(cause, DatabaseError) and _sqlstate(cause) == INVALID_PASSWORD


def _login_rotating(
    connection: Connection,
    secrets: SecretStore,
    cred: DatabaseCredential,
    *,
    timeout_s: float,
    application_name: str = "gatehouse",
) -> tuple[pg8000.native.Connection, DatabaseCredential]:
    """`_login`, and once more when the password was refused because the secret was rotated.

    The credential may be up to CACHE_SECONDS old (gatehouse.secrets) and a rotation's setSecret
    changes the password before AWSCURRENT moves: on 28P01 the secret is read again past the cache
    (SecretStore.credential_after_rejection). Returns the session and the credential it used.
    """
    try:
        return _login(connection, cred, timeout_s=timeout_s, application_name=application_name), cred
    except TargetUnavailableError as exc:
        if not password_refused(exc):
            raise
        replacement = secrets.credential_after_rejection(connection.secret_id, cred)
        if replacement is None:
            raise
    log.info("%s refused the cached password: logging in with the rotated one", connection.name)
    con = _login(connection, replacement, timeout_s=timeout_s, application_name=application_name)
    return con, replacement


def _login(
    connection: Connection,
    cred: DatabaseCredential,
    *,
    timeout_s: float,
    application_name: str = "gatehouse",
) -> pg8000.native.Connection:
    tls = _tls_settings(connection)
    sock: socket.socket | None = None
    try:
        sock = _open_socket(connection, tls, timeout_s)
        return pg8000.native.Connection(
            cred.username,
            host=connection.host,
            port=connection.port,
            database=connection.database,
            password=cred.password,
            application_name=application_name,
            # Rows are decoded as UTF-8: ask the server to convert whatever the database uses.
            startup_params={"client_encoding": "UTF8"},
            # The socket is ours, TLS already negotiated on it (see _open_socket).
            sock=sock,
            ssl_context=False,
        )
    except DatabaseError as exc:
        _close_socket(sock)
        # Authentication and "database does not exist" land here. The server's message can
        # name the role: keep it out of what the agent sees.
        raise TargetUnavailableError(
            f"{connection.name} refused Gatehouse's connection ({_sqlstate(exc) or 'error'})",
            code="target_unavailable",
        ) from exc
    except (InterfaceError, OSError) as exc:
        _close_socket(sock)
        raise TargetUnavailableError(
            f"{connection.name} is not reachable", code="target_unavailable"
        ) from exc


def _close_socket(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _refuse_unsupported(statements: Sequence[Statement]) -> None:
    """Refusals decided from the text alone, before anything is sent to the server."""
    if any(s.cls is StatementClass.TRANSACTION for s in statements):
        raise BadRequestError(
            "transaction control statements are not accepted here: each request runs in its own transaction",
            code="transaction_control_not_supported",
        )
    if any(s.command == "copy" for s in statements):
        # COPY streams rows outside the result-set protocol, past column-name masking rules.
        raise BadRequestError("COPY is not accepted through the API: use SELECT", code="copy_not_supported")


@contextmanager
def _target_errors(name: str, progress: _Progress) -> Iterator[None]:
    """Driver errors -> ours, each marked with whether the command had reached the server."""
    try:
        yield
    except GatehouseError as exc:
        _mark_sent(exc, progress.sent)
        raise
    except _OverBudget as exc:
        # Outside a statement's rows (an oversized error text on COMMIT, say): nothing to cut.
        raise _mark_sent(
            ResultTooLargeError(
                f"the server answered with a message of {exc.size} bytes, over what Gatehouse reads: "
                "the request was stopped and rolled back"
            ),
            progress.sent,
        ) from None
    except DatabaseError as exc:
        raise _mark_sent(_translate(exc), progress.sent) from exc
    except (InterfaceError, OSError) as exc:
        raise _mark_sent(
            TargetUnavailableError(
                f"lost the connection to {name} while running the statement", code="target_unavailable"
            ),
            progress.sent,
        ) from exc


def _translate(exc: DatabaseError) -> GatehouseError:
    if _sqlstate(exc) == QUERY_CANCELED:
        return StatementTimeoutError("the statement ran over its time limit and was cancelled")
    detail = _fields(exc).get("D")
    return TargetError(_message(exc), sqlstate=_sqlstate(exc), detail=str(detail) if detail else None)
