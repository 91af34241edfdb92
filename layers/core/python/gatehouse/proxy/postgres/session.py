"""One client connection of the Postgres proxy: log in, then relay, deciding every statement.

Two tasks per session, both owned here and cancelled together: one reads the client, decides and
forwards; the other reads the server, masks and answers. They meet in one queue of expectations:
each message sent upstream that the server will answer pushes what to do with its answer
(forward it, mask its rows with a plan, swallow it, replace its error with ours, record the
statement when it completes). The server answers in order, so the head of the queue always
says what the next server message belongs to.

Decisions: every statement text goes through `DecisionCache.decide`, i.e. the service's one
decision path (classify -> lineage -> Cedar). A Query message is decided whole, as the API decides
a request: the strictest statement decides it. In the extended protocol the statement is decided
at Parse, an approval is claimed at the first Execute of each portal bound from it, and a portal
of a statement that needs approval may carry no parameter values (the approver approved a text,
not values bound to it later).

Names: the server runs whatever it holds under a statement or portal name, so the proxy keeps its
own table of them, each with the text it decided, and never forwards a message the two could
disagree on. Binding, describing or executing a name the proxy does not hold is refused (26000,
34000), and so is creating one it holds (42P05, 42P03), as the server itself would. A record is
made when its Parse or Bind is forwarded and rolled back when the server refuses or skips that
message; a later batch that names a record the server has not confirmed yet waits for its answer.
Every way the server drops names is followed: Close, `DEALLOCATE`, `DISCARD ALL`, `CLOSE`, a
`PREPARE` or `DECLARE` of the same name, any simple Query (the unnamed statement and portal), the
end of a transaction and `ROLLBACK TO` (portals). A portal bound through the protocol cannot be run
by SQL `FETCH`/`MOVE` (that would skip its approval and its masking plan).

Refusals keep Postgres's own semantics: instead of the refused message the proxy sends the server
something that fails (a Query `DO ... RAISE` in a transaction block, a Parse that cannot succeed in
an extended-protocol batch), so an open transaction is aborted and the rest of a batch is skipped
exactly as a real error would, and no statement or portal of the client is touched; the client
gets the proxy's ErrorResponse in its place.

Read-only: the upstream session starts with `default_transaction_read_only=on`. Only a message
Cedar allowed that is not a read lifts it, for its own transaction: in autocommit by `SET
default_transaction_read_only = off` before and `= on` after (pipelined, no extra round trip); in
a transaction block only as its first statement (`SET TRANSACTION READ WRITE`). The server starts
a transaction with the first Parse, Bind, Describe or Execute of a batch, so an extended-protocol
write is lifted there (its Parse or Bind opens the batch) or not at all: a write in a transaction
that already began read-only is refused (25006) before anything of it runs or an approval is
claimed. The restore after an autocommit lift is certain only once the server has run it outside
a block without an error (a ROLLBACK undoes one run inside the client's block, a cancel or a
failed block stops one): until then, the proxy forwards no statement it did not lift outside a
block before a restore has been confirmed. Clients cannot lift it (gatehouse.proxy.postgres.guard).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets as random_secrets
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from pglast import ast, parse_sql
from pglast.parser import ParseError

from gatehouse.exceptions import GatehouseError
from gatehouse.masking.errors import redact_error_text
from gatehouse.models import Connection, Effect, Principal, Statement, StatementClass
from gatehouse.proxy.postgres import messages as m
from gatehouse.proxy.postgres.codec import BackendParser, FrontendParser
from gatehouse.proxy.postgres.exceptions import ProtocolError
from gatehouse.proxy.postgres.guard import StartupRefused, copies_to_client, upstream_parameters
from gatehouse.proxy.postgres.rowmask import BinaryFormatRefused, ResultMasker, python_encoding
from gatehouse.service import Decided

if TYPE_CHECKING:
    from gatehouse.proxy.postgres.server import ProxyContext

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# What the server is sent in place of a refused message: an error raised server-side, so the
# transaction and the batch end as they would for any error. Its text is replaced by ours.
_RAISE = "DO $gatehouse$BEGIN RAISE EXCEPTION 'refused by Gatehouse'; END$gatehouse$"
# The same for a refused extended-protocol message: a Parse that fails (the text does not parse;
# if the client took the name, 42P05), so it neither drops nor makes a statement or portal.
_REFUSE_PARSE = m.Parse("gatehouse_refused", "REFUSED BY GATEHOUSE")
_LIFT_AUTOCOMMIT = "SET default_transaction_read_only = off"
_RESTORE_AUTOCOMMIT = "SET default_transaction_read_only = on"
_LIFT_BLOCK = "SET TRANSACTION READ WRITE"
# The setting the lift and the restore flip (Postgres 14+ reports its changes to the client).
_READ_ONLY_DEFAULT = "default_transaction_read_only"
_DEMOTE_BLOCK = "SET TRANSACTION READ ONLY"
# How often the proxy sends the restore again before it refuses the statement that waits for it.
_RESTORE_ATTEMPTS = 3
SQLSTATE_DENIED = "42501"
SQLSTATE_BACKLOG = "57P03"
SQLSTATE_SYNTAX = "42601"
SQLSTATE_INTERNAL = "XX000"
SQLSTATE_READ_ONLY = "25006"
SQLSTATE_CANCELED = "57014"
SQLSTATE_UNSUPPORTED = "0A000"
SQLSTATE_DUPLICATE_STATEMENT = "42P05"
SQLSTATE_DUPLICATE_PORTAL = "42P03"
SQLSTATE_UNKNOWN_STATEMENT = "26000"
SQLSTATE_UNKNOWN_PORTAL = "34000"
# Where a write stands (_write_lift): lifted in autocommit, lifted as its block's first statement,
# in a transaction that is read-write already, or in one that began read-only.
_AUTOCOMMIT, _BLOCK, _LIFTED_ALREADY, _CANNOT = "autocommit", "block", "", "cannot"
# The answers the server ends with ReadyForQuery, and the ones it skips after an error in a batch.
_CYCLE_ENDS = frozenset({"query", "swallow", "restore", "refusal", "sync"})
_SKIPPED = frozenset({"parse", "bind", "describe", "execute", "close", "refusal_ext"})
# What the server answers (besides an error) to the messages whose answer is one of a kind.
_ANSWERS: dict[str, type[m.Message] | tuple[type[m.Message], ...]] = {
    "parse": m.ParseComplete,
    "bind": m.BindComplete,
    "close": m.CloseComplete,
    "describe": (m.ParameterDescription, m.RowDescription, m.NoData),
}
# Statement kinds (Statement.command) that make or drop statement and portal names in SQL.
_NAMING = frozenset({"prepare", "deallocate", "discard", "declarecursor", "closeportal"})


class _Refusal(Exception):
    def __init__(
        self,
        sqlstate: str,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        outcome: str = "refused",
        decided: Decided | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error = m.ErrorResponse.build(sqlstate, message, detail=detail, hint=hint)
        self.outcome = outcome
        self.decided = decided
        self.request_id = request_id
        self.sqlstate = sqlstate
        self.recorded = False  # the recorder wrote the refusal itself (a durable write failed)


@dataclass(eq=False)
class _Statement:
    """A prepared statement (extended protocol), decided: what the server holds under its name."""

    sql: str
    decided: Decided
    claim: bool = False  # needs an approved request claimed at each run
    fields: tuple[m.FieldDescription, ...] | None = None  # from a Describe
    param_types: tuple[int, ...] = ()  # as its Parse declared them (to parse it again)
    # The cycle its Parse went in: until the server has answered that cycle it may still refuse it.
    cycle: int = 0


@dataclass(eq=False)
class _Portal:
    statement: _Statement
    result_formats: tuple[int, ...]
    fields: tuple[m.FieldDescription, ...] | None = None
    cycle: int = 0  # the cycle its Bind went in (as for _Statement)
    claimed: bool = False  # an Execute of it claimed its statement's approval: the run goes on


@dataclass
class _Run:
    """One statement (or Query message) on its way: what the log needs when it completes."""

    sql: str
    decided: Decided
    started: float
    claimed: Any = None  # the approved RequestRecord this run consumes
    rows: int = 0
    error: str | None = None
    masked: set[str] = field(default_factory=set)
    # The server never ran it: an earlier message of its batch failed, and the server skips every
    # message up to Sync. Recorded as refused, and an approval it claimed is given back.
    skipped: bool = False
    # Ran in the implicit transaction of its batch (no block open): its effects last only if
    # the batch ends without an error, so its outcome is recorded then.
    implicit: bool = False
    finished: float | None = None  # when the server completed it (perf_counter)


@dataclass
class _Expect:
    """What to do with the server's answer to one message sent upstream."""

    # query | swallow | restore | refusal | refusal_ext | parse | bind | describe | execute | close
    # | sync | synthetic
    kind: str
    run: _Run | None = None
    statement: _Statement | None = None
    portal: _Portal | None = None
    refusal: _Refusal | None = None
    describe_kind: str = ""
    forward: bool = True  # send the answer to the client (False: a message the proxy injected)
    # A message the proxy injected into the client's batch: its answer is the proxy's, but an
    # error is the batch's (the server skips the client's messages after it), so it goes through.
    quiet: bool = False
    # A simple Query: one lineage entry per statement, the index of the one answering now.
    index: int = 0
    masker: ResultMasker | None = None
    payload: bytes = b""  # synthetic: bytes to send when this reaches the head
    name: str = ""  # parse, bind: the name the record was made under (rolled back on an error)
    # A message the server answers with ReadyForQuery: the cycle it ends (see ProxySession._cycle).
    cycle: int = -1
    # restore: the lift it undoes, whether the server refused it, the status it left the session in.
    gen: int = 0
    failed: bool = False
    status: str = ""


class ProxySession:
    def __init__(self, ctx: ProxyContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._ctx = ctx
        self._reader = reader
        self._writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else str(peer or "")
        self.session_id = str(uuid.uuid4())
        self.principal: Principal | None = None
        self.connection: Connection | None = None
        self.process_id = 0
        self.secret_key = b""
        self._upstream: Any = None
        self._recorded: Any = None
        self._tls = False
        self._frontend = FrontendParser(max_message_size=ctx.config.max_message_bytes)
        self._expect: deque[_Expect] = deque()
        self._statements: dict[str, _Statement] = {}
        self._portals: dict[str, _Portal] = {}
        # Portal names bound in the current transaction, even if no longer held: SQL FETCH and
        # MOVE cannot run them (name -> the cycle of its last Bind; cleared when the transaction ends).
        self._bound: dict[str, int] = {}
        self._skip_until_sync = False
        # Cycles: the messages up to one the server answers with ReadyForQuery (Sync, Query).
        self._cycle = 0  # the cycle messages sent now belong to
        self._answered = -1  # every cycle up to this one is answered
        self._progress = asyncio.Event()  # set at each ReadyForQuery
        # The current extended-protocol batch (up to Sync).
        self._batch_open = False  # a Parse/Bind/Describe/Execute of it went upstream
        self._batch_rw = False  # it was lifted in autocommit (restored after its Sync)
        self._batch_unclaimed = False  # lifted for a statement whose approval is not claimed yet
        self._batch_used = False  # it parsed, bound or ran more than transaction control
        self._block_ended = False  # it ended a block while the restore is not certain
        # The transaction block, as the proxy predicts it (the server's ReadyForQuery corrects it).
        self._in_block = False
        self._block_used = False  # something ran or was parsed in it: SET TRANSACTION is too late
        self._block_rw = False  # lifted for a write (or begun in a lifted transaction)
        self._block_unclaimed = False
        # The session default: read-write from a lift until the server confirms a restore.
        self._rw_default = False
        self._lift_gen = 0
        self._restore: _Expect | None = None  # the last restore sent
        self._restore_after_copy = False  # a lifted COPY FROM STDIN: restore after its CopyDone
        self._status = "I"
        self._encoding = "utf-8"
        self._busy_since: float | None = None
        self._cancel_sent = False
        self._closing = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.statements_run = 0
        # Extended-protocol runs that completed in the batch's implicit transaction, recorded once
        # its fate is known: committed at its ReadyForQuery, rolled back by any error before it.
        self._uncommitted: list[_Run] = []
        # The name of the proxy's own statement and portal that lift a block (see _lift_block).
        self._lift_name = f"gatehouse_lift_{random_secrets.token_hex(8)}"

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if await self._startup():
                await self._relay()
        except ProtocolError as exc:
            await self._fatal(exc.sqlstate, exc.message)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("proxy session %s failed", self.session_id)
            await self._fatal(SQLSTATE_INTERNAL, "Gatehouse proxy error; the session is closed")
        finally:
            await self._cleanup()

    async def terminate(self, sqlstate: str, message: str) -> None:
        """End the session from outside (drain deadline): tell the client why, then close."""
        self._closing = True
        await self._fatal(sqlstate, message)
        for task in self._tasks:
            task.cancel()

    async def _cleanup(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:  # noqa: BLE001, S110 - cancelled or already reported
                pass
        self._ctx.forget(self)
        if self._upstream is not None:
            await self._upstream.close()
        # Closing the server connection ended an implicit transaction still open: rolled back.
        self._settle_uncommitted("rolled back: the session ended before its transaction was committed")
        if self._recorded is not None:
            try:
                await self._recorded.close()
            except GatehouseError as exc:
                log.error("session %s: could not close its log (%s)", self.session_id, exc.code)
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2)
        except (ConnectionError, TimeoutError, OSError):
            pass

    async def _fatal(self, sqlstate: str, message: str) -> None:
        try:
            self._writer.write(m.ErrorResponse.build(sqlstate, message, severity="FATAL").encode())
            await asyncio.wait_for(self._writer.drain(), 2)
        except (ConnectionError, TimeoutError, OSError, RuntimeError):
            pass

    # -- startup -------------------------------------------------------------------------------

    async def _read_client(self, timeout: float | None) -> list[m.Message]:
        while True:
            data = await asyncio.wait_for(self._reader.read(READ_SIZE), timeout)
            if not data:
                raise ConnectionResetError("client closed")
            found = self._frontend.feed(data)
            if found:
                return found

    async def _startup(self) -> bool:
        config = self._ctx.config
        deadline = config.login_timeout_s
        while True:
            messages = await self._read_client(deadline)
            message = messages[0]
            if isinstance(message, m.SSLRequest):
                if self._tls or config.tls is None:
                    self._writer.write(b"N")
                    await self._writer.drain()
                    continue
                # No await between the answer and the upgrade (not even wait_for's new task): the
                # loop must not read the ClientHello into the plaintext reader first.
                self._writer.write(b"S")
                await self._writer.start_tls(config.tls, ssl_handshake_timeout=deadline)
                self._tls = True
                continue
            if isinstance(message, m.GSSENCRequest):
                self._writer.write(b"N")  # no GSSAPI: the client goes on with SSL or plaintext
                await self._writer.drain()
                continue
            if isinstance(message, m.CancelRequest):
                await self._ctx.cancel(message.process_id, bytes(message.secret_key))
                return False
            if not isinstance(message, m.StartupMessage):
                raise ProtocolError("expected a startup message")
            return await self._login(dict(message.parameters))

    async def _login(self, params: dict[str, str]) -> bool:
        config = self._ctx.config
        if not self._tls and not config.allow_plaintext and not _loopback(self.peer):
            await self._fatal(
                "28000", "Gatehouse refuses unencrypted connections; connect with sslmode=require"
            )
            return False
        user = params.get("user", "")
        database = params.get("database") or user
        try:
            passed = upstream_parameters(params)
        except StartupRefused as exc:
            await self._fatal(SQLSTATE_DENIED, str(exc))
            return False
        self._writer.write(m.AuthenticationCleartextPassword().encode())
        await self._writer.drain()
        answer = (await self._read_client(config.login_timeout_s))[0]
        if not isinstance(answer, m.PasswordMessage):
            raise ProtocolError("expected a password message")
        try:
            principal, connection = await self._ctx.call(
                self._ctx.authenticate, user, answer.password, database
            )
        except GatehouseError as exc:
            log.info("proxy login refused for %r on %r: %s", user, database, getattr(exc, "reason", exc.code))
            await self._fatal(getattr(exc, "sqlstate", "28P01") or "28P01", exc.message)
            return False
        self.principal, self.connection = principal, connection
        try:
            self._upstream = await self._ctx.connect_upstream(connection, passed)
        except GatehouseError as exc:
            log.warning(
                "proxy session %s: upstream %s refused: %s", self.session_id, connection.name, exc.code
            )
            await self._fatal(
                getattr(exc, "sqlstate", "08001") or "08001", f"Gatehouse could not reach {connection.name}"
            )
            return False
        self._recorded = self._ctx.recorder.open(
            session_id=self.session_id,
            principal_arn=principal.arn,
            principal_name=principal.name,
            connection=connection.name,
            connection_env=_env(connection),
        )
        started = {"reason": f"proxy session from {self.peer}" + (" over TLS" if self._tls else "")}
        try:
            if _stricter(connection.recording, config.recording_floor) != "async":
                await self._recorded.record_durable("session_started", **started)
            else:
                self._recorded.record("session_started", **started)
        except GatehouseError as exc:
            await self._fatal(SQLSTATE_BACKLOG, f"the session log cannot record this session ({exc.code})")
            return False
        self.process_id, self.secret_key = self._ctx.register(self)
        out = [m.AuthenticationOk().encode()]
        for message in self._upstream.startup_messages:
            if isinstance(message, m.ParameterStatus):
                if message.name == "client_encoding":
                    self._encoding = python_encoding(message.value)
                out.append(message.encode())
        out.append(m.BackendKeyData(self.process_id, self.secret_key).encode())
        out.append(m.ReadyForQuery("I").encode())
        self._writer.write(b"".join(out))
        await self._writer.drain()
        return True

    # -- relay ---------------------------------------------------------------------------------

    async def _relay(self) -> None:
        client = asyncio.create_task(self._from_client(), name=f"proxy-client-{self.session_id}")
        server = asyncio.create_task(self._from_server(), name=f"proxy-server-{self.session_id}")
        watchdog = asyncio.create_task(self._watchdog(), name=f"proxy-watchdog-{self.session_id}")
        self._tasks = [client, server, watchdog]
        done, _pending = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = task.exception() if not task.cancelled() else None
            if exc is not None:
                raise exc

    async def _watchdog(self) -> None:
        """The statement timeout: a statement running past it is cancelled upstream (57014)."""
        limit = self._ctx.config.statement_timeout_s
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            since = self._busy_since
            if since is not None and not self._cancel_sent and time.monotonic() - since > limit:
                self._cancel_sent = True
                await self.cancel_upstream()

    async def cancel_upstream(self) -> None:
        if self._upstream is not None:
            await self._ctx.cancel_backend(self._upstream)

    # -- client -> server ----------------------------------------------------------------------

    async def _from_client(self) -> None:
        idle = self._ctx.config.idle_timeout_s
        while True:
            timeout = idle if not self._expect and self._status == "I" else None
            try:
                data = await asyncio.wait_for(self._reader.read(READ_SIZE), timeout)
            except TimeoutError:
                await self._fatal("57P05", "terminating connection due to idle-session timeout (Gatehouse)")
                return
            if not data:
                return
            try:
                messages = self._frontend.feed(data)
            except ProtocolError as exc:
                await self._fatal(exc.sqlstate, exc.message)
                return
            out: list[bytes] = []
            for message in messages:
                if isinstance(message, m.Terminate):
                    self._send_upstream(out)
                    return
                await self._handle(message, out)
            self._send_upstream(out)
            if self._upstream.writer.transport.get_write_buffer_size() > 4 * READ_SIZE:
                await self._upstream.writer.drain()

    def _send_upstream(self, out: list[bytes]) -> None:
        if out:
            self._upstream.writer.write(b"".join(out))
            out.clear()

    def _push(self, expect: _Expect) -> None:
        self._expect.append(expect)
        if self._busy_since is None:
            self._busy_since = time.monotonic()
            self._cancel_sent = False

    def _end_cycle(self, out: list[bytes], message: m.Message, expect: _Expect) -> None:
        """Send a message the server answers with ReadyForQuery (a Sync or a Query): a cycle ends."""
        out.append(message.encode())
        expect.cycle = self._cycle
        self._cycle += 1
        self._push(expect)

    async def _answered_through(self, cycle: int) -> None:
        while self._answered < cycle:
            self._progress.clear()
            await self._progress.wait()

    async def _handle(self, message: m.Message, out: list[bytes]) -> None:
        if isinstance(message, (m.Query, m.FunctionCall)):
            if self._batch_open:
                # The server would end the batch here (or, after an error in it, skip the message
                # and answer nothing): end it with a Sync of our own, so every answer has its place.
                self._sync(out, forward=False)
            if isinstance(message, m.Query):
                await self._query(message, out)
            else:
                # The fast-path call runs a function by OID, past every classifier: never through here.
                refusal = _Refusal(
                    SQLSTATE_DENIED, "Gatehouse does not allow the fast-path function call protocol"
                )
                self._refuse_simple("(fast-path function call)", refusal, out)
        elif isinstance(message, (m.CopyData, m.CopyDone, m.CopyFail)):
            out.append(message.encode())  # COPY FROM STDIN data: its statement was decided
            if self._restore_after_copy and not isinstance(message, m.CopyData):
                self._restore_after_copy = False
                self._inject_restore(out)
        elif self._skip_until_sync and not isinstance(message, m.Sync):
            return  # after an error the server skips to Sync; so does the proxy
        elif isinstance(message, m.Parse):
            await self._parse(message, out)
        elif isinstance(message, m.Bind):
            await self._bind(message, out)
        elif isinstance(message, m.Describe):
            await self._describe(message, out)
        elif isinstance(message, m.Execute):
            await self._execute(message, out)
        elif isinstance(message, m.Close):
            self._close(message, out)
        elif isinstance(message, m.Sync):
            self._sync(out)
        elif isinstance(message, m.Flush):
            out.append(message.encode())
        else:
            raise ProtocolError(f"unexpected message {type(message).__name__} after startup")

    def _synthetic(self, payload: bytes) -> None:
        if not self._expect:
            self._writer.write(payload)
            return
        self._push(_Expect("synthetic", payload=payload, forward=True))

    def _send_query(self, out: list[bytes], message: m.Message, expect: _Expect) -> _Statement | None:
        """A simple Query upstream; the unnamed statement it drops (the server drops its unnamed
        statement and portal at every Query, so the proxy's records of them go too)."""
        self._end_cycle(out, message, expect)
        self._portals.pop("", None)
        return self._statements.pop("", None)

    def _inject(
        self, out: list[bytes], sql: str, kind: str = "swallow", *, keep_unnamed: bool = True
    ) -> _Expect:
        """A statement of the proxy's own, its answer swallowed."""
        expect = _Expect(kind, forward=False, gen=self._lift_gen)
        unnamed = self._send_query(out, m.Query(sql), expect)
        if unnamed is not None and keep_unnamed and not self._in_block:
            # The client may still bind its unnamed statement (pg8000 parses, then binds in another
            # batch): parse the same text again, in a batch of its own so a failure stays there.
            # Not in a block, where a failing Parse would abort the client's transaction.
            self._statements[""] = unnamed
            out.append(m.Parse("", unnamed.sql, unnamed.param_types).encode())
            self._push(_Expect("parse", statement=unnamed, forward=False))
            self._end_cycle(out, m.Sync(), _Expect("sync", forward=False))
        return expect

    def _inject_lift(self, out: list[bytes], *, keep_unnamed: bool = True) -> None:
        self._lift_gen += 1
        self._rw_default = True
        self._inject(out, _LIFT_AUTOCOMMIT, keep_unnamed=keep_unnamed)

    def _inject_restore(self, out: list[bytes]) -> _Expect:
        self._restore = self._inject(out, _RESTORE_AUTOCOMMIT, "restore")
        return self._restore

    async def _settle_read_only(self, out: list[bytes]) -> None:
        """Before a statement the proxy does not lift: the session default must be read-only again.

        Only a restore the server ran outside a block without an error (ReadyForQuery 'I') is
        certain: one it ran inside the client's block is undone by a ROLLBACK, a cancelled one or
        one in a failed block did nothing. Until one is, a statement outside a block waits for a
        restore, sent again if the last one failed. Inside the client's block (which began in the
        lifted transaction) the statement runs in that block; its end brings the next one here.
        """
        for _ in range(_RESTORE_ATTEMPTS):
            if not self._rw_default:
                return
            restore = self._restore
            if restore is None or restore.cycle <= self._answered:
                if self._answered == self._cycle - 1 and self._status in ("T", "E"):
                    return  # every cycle is answered and the server says: in the client's block
                restore = self._inject_restore(out)
            self._send_upstream(out)
            await self._answered_through(restore.cycle)
            if self._rw_default and restore.status in ("T", "E"):
                return
        if self._rw_default:
            raise _Refusal(
                SQLSTATE_CANCELED,
                "Gatehouse could not make the session read-only again (its restore was cancelled or "
                "failed), so the statement did not run; send it again",
            )

    async def _decide(self, sql: str) -> Decided:
        assert self.principal is not None and self.connection is not None
        cache = self._ctx.decisions
        decided = cache.cached(self.principal, self.connection, sql)
        if decided is None:
            # A miss may read the catalog or the registry: off the loop, bounded by the pool.
            decided = await self._ctx.call(cache.decide, self.principal, self.connection, sql)
        return decided

    async def _verdict(self, sql: str) -> Decided:
        """The decision for `sql`, or a _Refusal (an approval is claimed by the caller, once it
        knows the statement can run)."""
        try:
            decided = await self._decide(sql)
        except GatehouseError as exc:
            code = "sql_parse_error" == exc.code
            raise _Refusal(
                SQLSTATE_SYNTAX if code else SQLSTATE_DENIED,
                f"Gatehouse refused the statement: {exc.message}",
                outcome="refused",
            ) from exc
        if self._ctx.recorder.backlogged:
            raise _Refusal(
                SQLSTATE_BACKLOG, "the Gatehouse session log is behind; try again shortly", decided=decided
            )
        lift = self._ctx.lifts(sql, decided)
        if lift:
            raise _Refusal(SQLSTATE_DENIED, lift, decided=decided)
        if any(s.command == "copy" for s in decided.classification.statements) and copies_to_client(sql):
            raise _Refusal(
                SQLSTATE_DENIED,
                "COPY ... TO STDOUT is not masked by Gatehouse, so it is not allowed: use SELECT",
                decided=decided,
            )
        decision = decided.decision
        if decision.effect is Effect.DENY:
            why = "; ".join(decision.reasons) or "no policy allows it"
            ids = ", ".join(decision.policy_ids) or "default deny"
            raise _Refusal(
                SQLSTATE_DENIED,
                f"permission denied by Gatehouse policy {ids}: {why}",
                outcome="denied",
                decided=decided,
            )
        fetched = self._fetched_portal(decided)
        if fetched is not None:
            raise _Refusal(
                SQLSTATE_DENIED,
                f'portal "{fetched}" was bound through the protocol: run it with Execute, not FETCH '
                "or MOVE (Gatehouse claims its approval and plans its masking at Execute)",
                decided=decided,
            )
        return decided

    async def _claim_or_hold(self, sql: str, decided: Decided) -> Any:
        assert self.principal is not None and self.connection is not None
        service = self._ctx.service
        claimed = await self._ctx.call(service.claim_approved, self.principal, self.connection, sql)
        if claimed is not None:
            return claimed
        await self._hold(sql, decided)

    async def _hold(self, sql: str, decided: Decided) -> NoReturn:
        """A new request for approval of `sql`; always raises the refusal that names it."""
        assert self.principal is not None
        service = self._ctx.service
        try:
            record = await self._ctx.call(
                service.hold_for_approval,
                self.principal,
                decided,
                sql,
                origin="proxy",
                reason=f"sent through the Postgres proxy (session {self.session_id})",
            )
        except GatehouseError as exc:
            raise _Refusal(
                SQLSTATE_DENIED,
                f"this statement needs approval, which cannot start: {exc.message}",
                decided=decided,
                outcome="refused",
            ) from exc
        groups = ", ".join(record.approval_groups or [record.approval_group or ""])
        preview = _preview_line(record.preview)
        raise _Refusal(
            SQLSTATE_DENIED,
            f"Gatehouse: this statement needs approval by {groups}: request {record.request_id}",
            detail=(preview + "; " if preview else "") + f"expires at {_clock(record.approval_expires_at)}",
            hint=f"once approved, send the same statement again on this connection: it runs once "
            f"(gatehouse requests get {record.request_id} --wait)",
            outcome="pending",
            decided=decided,
            request_id=record.request_id,
        )

    async def _approval_waiting(self, sql: str) -> bool:
        """An approved request a claim of `sql` would take (`Gatehouse.claim_approved`), looked at
        without taking it."""
        assert self.principal is not None and self.connection is not None
        records = await self._ctx.call(self._ctx.service.list_requests, self.principal)
        now = time.time()
        return any(
            r.status == "approved"
            and r.origin == "proxy"
            and r.connection == self.connection.name
            and r.command == sql
            and not (r.approval_expires_at and now > r.approval_expires_at)
            for r in records
        )

    async def _refuse_unliftable(self, sql: str, decided: Decided, why: str) -> None:
        """A write that cannot get a read-write transaction here: refused before it runs, and
        before an approval is claimed for it. One that needs approval and has none is held for
        one first (the approver then sees it; it must come again where it can be lifted)."""
        if decided.decision.effect is Effect.APPROVAL and not await self._approval_waiting(sql):
            await self._hold(sql, decided)
        raise _Refusal(SQLSTATE_READ_ONLY, why, decided=decided)

    def _release(self, claimed: Any, refusal: _Refusal) -> None:
        """An approval claimed for a statement refused after all: its request ends failed."""
        if claimed is not None:
            self._ctx.background(
                self._ctx.service.finish_claimed, claimed, ok=False, error=f"{refusal.sqlstate}: {refusal}"
            )

    # -- read-only, per transaction ------------------------------------------------------------

    def _write_lift(self) -> str:
        """How a write gets a read-write transaction (_CANNOT: it cannot any more)."""
        if not self._in_block:
            return _AUTOCOMMIT
        if self._block_rw:
            return _LIFTED_ALREADY
        if not self._block_used:
            return _BLOCK
        return _CANNOT

    def _txn_rw(self) -> bool:
        """The transaction the next statement runs in is one the proxy lifted."""
        return self._block_rw if self._in_block else self._batch_rw

    def _refuse_unclaimed(self, decided: Decided) -> None:
        """A transaction lifted for a statement that needs approval is read-write before that
        approval is claimed: until it is, nothing but writes (and COMMIT/ROLLBACK) runs in it."""
        unclaimed = self._block_unclaimed if self._in_block else self._batch_unclaimed
        if unclaimed and not _writes(decided) and not _transaction_only(decided):
            raise _Refusal(
                SQLSTATE_DENIED,
                "Gatehouse lifted read-only in this transaction for a statement that needs approval "
                "and is not claimed yet: only writes run in it until then; run this one in its own "
                "transaction",
                decided=decided,
            )

    def _refuse_end_midway(self, decided: Decided) -> None:
        """While the restore is uncertain, whatever follows a COMMIT/ROLLBACK in the same message
        would run with the session default read-write: the restore must come between."""
        if not self._rw_default:
            return
        statements = decided.classification.statements
        if any(s.command == "transaction" and _transaction_kind(s.text) == "end" for s in statements[:-1]):
            raise _Refusal(
                SQLSTATE_UNSUPPORTED,
                "Gatehouse restores read-only once this transaction ends: send what follows "
                "COMMIT or ROLLBACK in a message of its own",
                decided=decided,
            )

    def _refuse_after_end(self) -> None:
        if self._block_ended:
            raise _Refusal(
                SQLSTATE_UNSUPPORTED,
                "Gatehouse restores read-only once a transaction ends: after COMMIT or ROLLBACK, "
                "send Sync before the next statement",
            )

    # -- simple protocol -----------------------------------------------------------------------

    async def _query(self, message: m.Query, out: list[bytes]) -> None:
        sql = message.sql
        self._restore_after_copy = False
        if not sql.strip():
            self._send_query(out, message, _Expect("query", run=None))  # EmptyQueryResponse
            return
        claimed = None
        try:
            decided = await self._verdict(sql)
            writes = _writes(decided)
            if not writes or self._in_block:
                await self._settle_read_only(out)
            lift = self._write_lift() if writes else _LIFTED_ALREADY
            if lift == _CANNOT:
                await self._refuse_unliftable(sql, decided, _BEGAN_READ_ONLY)
            if lift != _AUTOCOMMIT:
                self._refuse_end_midway(decided)
                self._refuse_unclaimed(decided)
            opened, first = _left_open(decided) if lift == _AUTOCOMMIT else (False, None)
            if opened and first is not None and not _statement_writes(first):
                raise _Refusal(SQLSTATE_UNSUPPORTED, _OPEN_BLOCK, decided=decided)
            if decided.decision.effect is Effect.APPROVAL:
                claimed = await self._claim_or_hold(sql, decided)
            run = _Run(sql, decided, 0.0, claimed)
            await self._durable_decision(run)
        except _Refusal as refusal:
            self._release(claimed, refusal)
            self._refuse_simple(sql, refusal, out)
            return
        if lift == _AUTOCOMMIT:
            self._inject_lift(out, keep_unnamed=False)
        elif lift == _BLOCK:
            self._inject(out, _LIFT_BLOCK)
            self._block_rw = True
        if claimed is not None and writes:
            self._block_unclaimed = False
        self._track(decided, lifted=lift == _AUTOCOMMIT, unclaimed=False)
        run.started = time.perf_counter()
        self._send_query(out, message, _Expect("query", run=run))
        if lift == _AUTOCOMMIT:
            if opened and first is None:
                # `INSERT ...; BEGIN`: the block began in the lifted transaction, but not with the
                # write. Read-only, as a block that begins with a read is (and that can be set at
                # any point of a transaction; nothing has run in this one).
                self._inject(out, _DEMOTE_BLOCK)
                self._block_rw = False
            if _copies_from_client(decided):
                self._restore_after_copy = True  # the server takes nothing but COPY data till then
            else:
                self._inject_restore(out)

    def _refuse_simple(self, sql: str, refusal: _Refusal, out: list[bytes]) -> None:
        self._record_refusal(sql, refusal)
        if self._status == "T" or self._in_block:
            # Inside a transaction the server must fail too, so the block is aborted as by any error.
            self._send_query(out, m.Query(_RAISE), _Expect("refusal", refusal=refusal))
        else:
            self._synthetic(refusal.error.encode() + m.ReadyForQuery(self._status).encode())

    # -- extended protocol ---------------------------------------------------------------------

    async def _open_batch(
        self, out: list[bytes], statement: _Statement | None, *, keep_unnamed: bool
    ) -> None:
        """Before the first Parse/Bind/Describe/Execute of a batch, which starts the server's
        transaction: where read-only is lifted for a write (the one named), or made sure of."""
        if statement is not None and _writes(statement.decided):
            if not self._in_block:
                self._inject_lift(out, keep_unnamed=keep_unnamed)
                self._batch_rw, self._batch_unclaimed = True, statement.claim
            elif not self._block_rw and not self._block_used:
                self._lift_block(out, statement)
            # Otherwise the block is read-write already, or began read-only: Execute decides.
        if not self._batch_rw:
            await self._settle_read_only(out)
        self._batch_open = True

    def _lift_block(self, out: list[bytes], statement: _Statement) -> None:
        """SET TRANSACTION READ WRITE for the client's block, as extended-protocol messages of the
        proxy's own under a name of its own, at the point of the batch the write comes in.

        Not a Query: that would end the client's batch (and a Query after an error in it gets no
        answer at all), and it drops the unnamed statement and portal (a Bind-first batch of the
        unnamed statement would find it gone). Should the lift fail, the server skips the rest of
        the batch, the write with it, and the client gets that error. Only before anything but
        transaction control ran or was parsed in the block: SET TRANSACTION is too late after.
        """
        name = self._lift_name
        for message in (m.Parse(name, _LIFT_BLOCK), m.Bind(name, name), m.Execute(name), m.Close("S", name)):
            out.append(message.encode())
        for kind in ("parse", "bind", "execute", "close"):
            self._push(_Expect(kind, quiet=True))
        self._block_rw, self._block_unclaimed = True, statement.claim

    def _lift_block_midway(self, out: list[bytes], statement: _Statement) -> None:
        """A write parsed or bound later in a batch, in a block that began in it (psycopg's
        pipeline mode: BEGIN, then the write, then Sync) and nothing else used yet."""
        if self._in_block and not self._block_rw and not self._block_used and _writes(statement.decided):
            self._lift_block(out, statement)

    async def _held(self, table: dict[str, Any], name: str, out: list[bytes]) -> Any:
        """The proxy's record under `name` (a _Statement or _Portal), or None.

        A record made in an earlier batch that the server has not answered yet may still be
        refused, and the server then keeps what it had under that name: wait for its word.
        """
        record = table.get(name)
        if record is not None and self._answered < record.cycle < self._cycle:
            self._send_upstream(out)
            await self._answered_through(record.cycle)
            record = table.get(name)
        return record

    async def _parse(self, message: m.Parse, out: list[bytes]) -> None:
        name, sql = message.statement, message.sql
        try:
            if name and await self._held(self._statements, name, out) is not None:
                raise _Refusal(SQLSTATE_DUPLICATE_STATEMENT, f'prepared statement "{name}" already exists')
            self._refuse_after_end()
            decided = await self._verdict(sql)
            statement = _Statement(
                sql,
                decided,
                decided.decision.effect is Effect.APPROVAL,
                param_types=tuple(message.param_types),
            )
            if not self._batch_open:
                await self._open_batch(out, statement, keep_unnamed=bool(name))
            else:
                self._lift_block_midway(out, statement)
        except _Refusal as refusal:
            if not name:
                self._statements.pop("", None)  # the server drops it at every unnamed Parse
            self._refuse_extended(sql, refusal, out)
            return
        statement.cycle = self._cycle
        self._statements[name] = statement
        out.append(message.encode())
        self._push(_Expect("parse", statement=statement, name=name))
        self._use_block(statement)

    def _refuse_extended(self, sql: str, refusal: _Refusal, out: list[bytes]) -> None:
        self._record_refusal(sql, refusal)
        out.append(_REFUSE_PARSE.encode())
        self._push(_Expect("refusal_ext", refusal=refusal))
        self._skip_until_sync = True
        self._batch_open = True

    async def _bind(self, message: m.Bind, out: list[bytes]) -> None:
        statement: _Statement | None = None
        try:
            self._refuse_after_end()
            statement = await self._held(self._statements, message.statement, out)
            if statement is None:
                raise _Refusal(SQLSTATE_UNKNOWN_STATEMENT, _no_statement(message.statement))
            if message.portal and await self._held(self._portals, message.portal, out) is not None:
                raise _Refusal(SQLSTATE_DUPLICATE_PORTAL, f'cursor "{message.portal}" already exists')
            if statement.claim and message.params:
                raise _Refusal(
                    SQLSTATE_DENIED,
                    "Gatehouse: this statement needs approval, and an approval covers the text "
                    "the approver saw, not parameter values bound to it: send it with its values "
                    "written inline (no $1, $2...)",
                    decided=statement.decided,
                )
            if not self._batch_open:
                await self._open_batch(out, statement, keep_unnamed=True)
            else:
                self._lift_block_midway(out, statement)
        except _Refusal as refusal:
            if not message.portal:
                self._portals.pop("", None)
            label = statement.sql if statement is not None else f"(Bind of statement {message.statement!r})"
            self._refuse_extended(label, refusal, out)
            return
        portal = _Portal(statement, tuple(message.result_formats), cycle=self._cycle)
        if statement.fields is not None:
            portal.fields = _with_formats(statement.fields, portal.result_formats)
        self._portals[message.portal] = portal
        if message.portal:
            self._bound[message.portal] = self._cycle
        out.append(message.encode())
        self._push(_Expect("bind", portal=portal, name=message.portal))
        self._use_block(statement)

    async def _describe(self, message: m.Describe, out: list[bytes]) -> None:
        expect = _Expect("describe", describe_kind=message.kind)
        try:
            self._refuse_after_end()
            if message.kind == "S":
                expect.statement = await self._held(self._statements, message.name, out)
                if expect.statement is None:
                    raise _Refusal(SQLSTATE_UNKNOWN_STATEMENT, _no_statement(message.name))
            else:
                expect.portal = await self._held(self._portals, message.name, out)
                if expect.portal is None:
                    raise _Refusal(SQLSTATE_UNKNOWN_PORTAL, _no_portal(message.name))
            if not self._batch_open:
                await self._open_batch(out, None, keep_unnamed=True)
        except _Refusal as refusal:
            self._refuse_extended(f"(Describe of {message.kind} {message.name!r})", refusal, out)
            return
        out.append(message.encode())
        self._push(expect)

    async def _execute(self, message: m.Execute, out: list[bytes]) -> None:
        portal: _Portal | None = None
        claimed = None
        try:
            self._refuse_after_end()
            portal = await self._held(self._portals, message.portal, out)
            if portal is None:
                raise _Refusal(SQLSTATE_UNKNOWN_PORTAL, _no_portal(message.portal))
            statement = portal.statement
            if not self._batch_open:
                await self._open_batch(out, None, keep_unnamed=True)
            decided = statement.decided
            writes = _writes(decided)
            if writes and not self._txn_rw():
                # Checked before any approval is claimed: a write that cannot run uses up none.
                if statement.claim:
                    decided = await self._verdict(statement.sql)
                why = _BATCH_READ_ONLY
                if self._in_block:
                    why = _BEGAN_READ_ONLY
                await self._refuse_unliftable(statement.sql, decided, why)
            self._refuse_unclaimed(decided)
            if self._batch_rw and not self._in_block and _begins_block(decided):
                # What follows BEGIN here would run in a read-write block whatever it is.
                raise _Refusal(SQLSTATE_UNSUPPORTED, _BEGIN_IN_LIFTED_BATCH, decided=decided)
            if statement.claim and not portal.claimed:
                decided = await self._verdict(statement.sql)
                if decided.decision.effect is Effect.APPROVAL:
                    claimed = await self._claim_or_hold(statement.sql, decided)
                    portal.claimed = True
            elif self._ctx.recorder.backlogged:
                raise _Refusal(SQLSTATE_BACKLOG, "the Gatehouse session log is behind; try again shortly")
            run = _Run(statement.sql, decided, 0.0, claimed)
            await self._durable_decision(run)
        except _Refusal as refusal:
            self._release(claimed, refusal)
            label = portal.statement.sql if portal is not None else f"(Execute of portal {message.portal!r})"
            self._refuse_extended(label, refusal, out)
            return
        if claimed is not None and writes:
            self._block_unclaimed = self._batch_unclaimed = False
        run.implicit = not self._in_block
        self._track(decided, lifted=self._batch_rw, unclaimed=self._batch_unclaimed)
        if not _transaction_only(decided):
            self._batch_used = True
        if self._rw_default and _ends_block(decided):
            self._block_ended = True
        if portal.fields is None:
            # The rows' shape (types, formats, source columns) is needed to mask them: ask.
            out.append(m.Describe("P", message.portal).encode())
            self._push(_Expect("describe", describe_kind="P", portal=portal, forward=False))
        run.started = time.perf_counter()
        out.append(message.encode())
        self._push(_Expect("execute", run=run, portal=portal))

    def _close(self, message: m.Close, out: list[bytes]) -> None:
        if message.kind == "S":
            closed = self._statements.pop(message.name, None)
            # Closing a statement closes the portals made from it too (the protocol's rule).
            for name in [n for n, p in self._portals.items() if p.statement is closed]:
                del self._portals[name]
        else:
            self._portals.pop(message.name, None)
        out.append(message.encode())
        self._push(_Expect("close"))

    def _sync(self, out: list[bytes], *, forward: bool = True) -> None:
        self._skip_until_sync = False
        self._end_cycle(out, m.Sync(), _Expect("sync", forward=forward))
        if self._batch_rw:
            self._inject_restore(out)
        self._batch_open = self._batch_rw = self._batch_unclaimed = self._block_ended = False
        self._batch_used = False

    def _use_block(self, statement: _Statement) -> None:
        # Parse and Bind take the transaction's snapshot: SET TRANSACTION READ WRITE is too late.
        if not _transaction_only(statement.decided):
            self._batch_used = True
            if self._in_block:
                self._block_used = True

    # -- transactions, names and the log -------------------------------------------------------

    def _track(self, decided: Decided, *, lifted: bool, unclaimed: bool) -> None:
        """What a statement being forwarded does to the transaction and to the server's names."""
        for index, stmt in enumerate(decided.classification.statements):
            kind = _transaction_kind(stmt.text) if stmt.command == "transaction" else ""
            if kind == "begin" and not self._in_block:
                # BEGIN makes a block of the transaction it runs in: what ran before it in the
                # same message or batch is in the block. Begun in a lifted transaction (its first
                # statement a write: see _query), a block is read-write. BEGIN inside a block
                # changes nothing.
                self._in_block = True
                self._block_used = index > 0 or self._batch_used
                self._block_rw, self._block_unclaimed = lifted, unclaimed
            elif kind == "end":
                self._end_block()
            else:
                if kind == "rollback_to":
                    self._portals.clear()  # it closes the portals opened since the savepoint
                if self._in_block:
                    self._block_used = True
            if stmt.command in _NAMING:
                self._forget_names(stmt.text)

    def _end_block(self) -> None:
        self._in_block = self._block_used = self._block_rw = self._block_unclaimed = False

    def _forget_names(self, text: str) -> None:
        """SQL that makes or drops statement or portal names: the proxy no longer vouches for
        them (it holds less than the server then, never something else)."""
        try:
            tree = parse_sql(text)
        except ParseError:
            return
        for raw in tree:
            node = raw.stmt
            if isinstance(node, ast.DeallocateStmt):
                if getattr(node, "isall", False) or node.name is None:
                    self._statements.clear()
                else:
                    self._statements.pop(node.name, None)
            elif isinstance(node, ast.PrepareStmt):
                self._statements.pop(node.name or "", None)
            elif isinstance(node, ast.DeclareCursorStmt):
                self._portals.pop(node.portalname or "", None)
            elif isinstance(node, ast.ClosePortalStmt):
                if node.portalname is None:
                    self._portals.clear()
                else:
                    self._portals.pop(node.portalname, None)
            elif isinstance(node, ast.DiscardStmt) and getattr(node.target, "name", "") == "DISCARD_ALL":
                self._statements.clear()
                self._portals.clear()

    def _fetched_portal(self, decided: Decided) -> str | None:
        """A portal bound through the protocol in this transaction that SQL FETCH or MOVE names."""
        if not self._bound:
            return None
        for node in _parsed(decided, "fetch"):
            if isinstance(node, ast.FetchStmt) and (node.portalname or "") in self._bound:
                return node.portalname
        return None

    def _mode_sync(self, decided: Decided) -> bool:
        assert self.connection is not None
        mode = _stricter(self.connection.recording, self._ctx.config.recording_floor)
        if mode == "sync":
            return True
        if mode == "async":
            return False
        return decided.classification.cls is not StatementClass.READ

    def _fields(self, run: _Run, **extra: Any) -> dict[str, Any]:
        decided = run.decided
        cls = decided.classification
        fields: dict[str, Any] = {
            "statement": decided.masker.mask_text(run.sql),
            "statement_class": cls.cls.value,
            "relations": list(cls.relations),
            "decision": decided.decision.effect.value,
            "policy_ids": list(decided.decision.policy_ids),
        }
        if run.claimed is not None:
            fields["request_id"] = run.claimed.request_id
        fields.update(extra)
        return fields

    async def _durable_decision(self, run: _Run) -> None:
        if not self._mode_sync(run.decided):
            return
        try:
            await self._recorded.record_durable("decision", **self._fields(run))
        except GatehouseError as exc:
            refusal = _Refusal(
                SQLSTATE_BACKLOG,
                f"the Gatehouse session log cannot record this statement ({exc.code}); it did not run",
                decided=run.decided,
            )
            refusal.recorded = True
            raise refusal from exc

    def _record_refusal(self, sql: str, refusal: _Refusal) -> None:
        if refusal.recorded:
            return
        decided = refusal.decided
        fields: dict[str, Any] = {"outcome": refusal.outcome, "error": f"{refusal.sqlstate}: {refusal}"}
        if decided is not None:
            fields.update(self._fields(_Run(sql, decided, 0.0)))
            fields["outcome"] = refusal.outcome
        else:
            masker = self._ctx.masker_for(self.connection)
            fields["statement"] = masker.mask_text(sql) if masker is not None else None
        if refusal.request_id:
            fields["request_id"] = refusal.request_id
        try:
            if decided is not None:
                # As the API does: the decision is an event of its own (the auditor's queries of
                # denied attempts read decisions), and the refusal follows it.
                decision = {k: v for k, v in fields.items() if k not in ("outcome", "error")}
                self._recorded.record("decision", **decision)
            self._recorded.record("refused", **fields)
        except GatehouseError:
            log.error("session %s: a refusal could not be recorded (the log is behind)", self.session_id)

    def _record_run(self, run: _Run) -> None:
        finished = time.perf_counter() if run.finished is None else run.finished
        duration = round((finished - run.started) * 1000, 3)
        if run.skipped:
            fields = self._fields(run, outcome="refused", error=run.error)
            try:
                self._recorded.record("refused", **fields)
            except GatehouseError:
                log.error("session %s: a skipped statement could not be recorded", self.session_id)
            if run.claimed is not None:
                # It never ran: the approval is still unused, for the statement's next coming.
                self._ctx.background(self._ctx.service.release_claimed, run.claimed)
            return
        self.statements_run += 1
        if run.error is None:
            fields = self._fields(run, outcome="ok", row_count=run.rows, duration_ms=duration)
            kind = "executed"
        else:
            fields = self._fields(run, outcome="error", error=run.error, duration_ms=duration)
            kind = "failed"
        try:
            self._recorded.record(kind, **fields)
        except GatehouseError:
            log.error("session %s: a statement's outcome could not be recorded", self.session_id)
        if run.claimed is not None:
            self._ctx.background(
                self._ctx.service.finish_claimed,
                run.claimed,
                ok=run.error is None,
                row_count=run.rows,
                duration_ms=duration,
                error=run.error,
            )

    # -- server -> client ----------------------------------------------------------------------

    async def _from_server(self) -> None:
        upstream = self._upstream
        parser: BackendParser = upstream.parser
        # Rows come as runs of offsets into what was read: relayed as slices, not row objects.
        parser.batch_rows = True
        reader = upstream.reader
        writer = self._writer
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                if not self._closing:
                    await self._fatal("08006", "the database closed the connection")
                return
            out: list[Any] = []
            self._answer(parser.feed(data), out)
            if out:
                writer.write(b"".join(out))
                # Backpressure: nothing more is read from the server until the client takes this.
                await writer.drain()

    def _answer(self, messages: list[m.Message], out: list[Any]) -> None:
        expect = self._expect
        for message in messages:
            if type(message) is m.DataRows:
                self._rows(message, out)
                continue
            if isinstance(message, (m.NoticeResponse, m.ParameterStatus, m.NotificationResponse)):
                self._async_message(message, out)
                continue
            head = expect[0] if expect else None
            if head is None:
                out.append(message.encode())
                continue
            self._step(head, message, out)
            self._drain_synthetic(out)

    def _drain_synthetic(self, out: list[Any]) -> None:
        while self._expect and self._expect[0].kind == "synthetic":
            out.append(self._expect.popleft().payload)

    def _pop(self) -> _Expect:
        head = self._expect.popleft()
        if not self._expect:
            self._busy_since = None
        return head

    def _step(self, head: _Expect, message: m.Message, out: list[Any]) -> None:
        kind = head.kind
        if isinstance(message, m.ReadyForQuery):
            if kind not in _CYCLE_ENDS:
                raise _lost_track(message, head)
            self._ready(head, message, out)
            return
        if isinstance(message, m.ErrorResponse):
            self._error(head, message, out)
            return
        if kind in ("swallow", "restore", "refusal", "refusal_ext"):
            return  # the answers to the proxy's own statements
        if kind == "sync" or not isinstance(message, _ANSWERS.get(kind, m.Message)):
            raise _lost_track(message, head)
        if kind in ("parse", "bind", "close"):
            self._pop()
            if head.forward and not head.quiet:
                out.append(message.encode())
            return
        if kind == "describe":
            self._described(head, message)
            if isinstance(message, (m.RowDescription, m.NoData)):
                self._pop()
            if head.forward:
                out.append(message.encode())
            return
        if isinstance(message, m.RowDescription):
            head.masker = self._result_masker(head, message.fields)
            out.append(message.encode())
            return
        if isinstance(message, (m.CommandComplete, m.EmptyQueryResponse, m.PortalSuspended)):
            run = head.run
            if run is not None and isinstance(message, m.CommandComplete):
                run.rows += _row_count(message.tag)
            if kind == "execute":
                self._pop()
                if run is not None:
                    self._complete(head)
            else:
                head.index += 1
                head.masker = None
            if not head.quiet:
                out.append(message.encode())
            return
        if isinstance(message, (m.CopyOutResponse, m.CopyBothResponse)):
            # COPY TO STDOUT would stream rows past the masker: it never reaches the client.
            head.refusal = _Refusal(
                SQLSTATE_DENIED, "COPY to the client is not allowed through Gatehouse; use SELECT"
            )
            self._ctx.spawn(self.cancel_upstream())
            return
        if isinstance(message, m.CopyData) and head.refusal is not None:
            return
        if isinstance(message, m.CopyDone) and head.refusal is not None:
            return
        out.append(message.encode())  # CopyInResponse and anything else the client drives

    def _ready(self, head: _Expect, message: m.ReadyForQuery, out: list[Any]) -> None:
        status = message.status
        self._status = status
        if head.kind in ("sync", "query"):
            # The batch ended without an error (an error settled these already): committed, or
            # (status T) part of a block the server has open, whose own end is in the log.
            self._settle_uncommitted(None)
        if head.kind == "query" and head.run is not None:
            self._complete(head)
        if head.kind == "restore":
            head.status = status
            if not head.failed and status == "I" and head.gen == self._lift_gen:
                self._rw_default = False  # run outside a block, no error: read-only for good
        self._pop()
        self._answered = head.cycle
        self._progress.set()
        if status == "I":
            # The transaction ended, and every portal with it (Bind makes no holdable ones).
            for name in [n for n, p in self._portals.items() if p.cycle <= head.cycle]:
                del self._portals[name]
            for name in [n for n, cycle in self._bound.items() if cycle <= head.cycle]:
                del self._bound[name]
        if not self._expect:
            self._server_says(in_block=status != "I")
        if head.forward:
            out.append(message.encode())

    def _server_says(self, *, in_block: bool) -> None:
        """With nothing else on its way, the server's word on the transaction is the last one."""
        if in_block and not self._in_block:
            self._in_block = self._block_used = True  # a block the proxy did not see begin
        elif not in_block and self._in_block:
            self._end_block()

    def _described(self, head: _Expect, message: m.Message) -> None:
        if not isinstance(message, m.RowDescription):
            if isinstance(message, m.NoData):
                if head.statement is not None:
                    head.statement.fields = ()
                if head.portal is not None:
                    head.portal.fields = ()
            return
        fields = tuple(message.fields)
        if head.describe_kind == "S" and head.statement is not None:
            head.statement.fields = fields
        elif head.portal is not None:
            head.portal.fields = fields

    def _result_masker(self, head: _Expect, fields: Any) -> ResultMasker | None:
        run = head.run
        if run is None:
            return None
        try:
            return self._build_masker(run.decided, tuple(fields), head.index)
        except BinaryFormatRefused as exc:
            run.error = f"0A000: {exc.message}"
            head.refusal = _Refusal("0A000", exc.message)
            return None

    def _build_masker(
        self, decided: Decided, fields: tuple[m.FieldDescription, ...], index: int
    ) -> ResultMasker:
        # One plan per decision and row shape: a hot loop of one statement plans once.
        key = (id(decided), index, self._encoding, fields)
        cached = self._ctx.result_maskers.get(key)
        if cached is not None and cached[0] is decided:
            return cached[1]
        built = self._plan_masker(decided, fields, index)
        if len(self._ctx.result_maskers) > 4096:
            self._ctx.result_maskers.clear()
        self._ctx.result_maskers[key] = (decided, built)
        return built

    def _plan_masker(
        self, decided: Decided, fields: tuple[m.FieldDescription, ...], index: int
    ) -> ResultMasker:
        names = [f.name for f in fields]
        origins = [(f.table_oid, f.column_attnum) if f.table_oid else None for f in fields]
        statements = decided.traced.lineage
        position = index if statements and index < len(statements) else -1
        plans = self._ctx.service.column_plans(decided, names, origins, position)
        return ResultMasker(decided.masker, fields, plans, encoding=self._encoding)

    def _rows(self, rows: m.DataRows, out: list[Any]) -> None:
        head = self._expect[0] if self._expect else None
        if head is None:
            return  # rows nobody asked for are never forwarded
        if (
            head.kind == "execute"
            and head.masker is None
            and head.refusal is None
            and head.portal is not None
        ):
            fields = head.portal.fields
            if fields is not None and head.run is not None:
                try:
                    head.masker = self._build_masker(head.run.decided, fields, -1)
                except BinaryFormatRefused as exc:
                    head.run.error = f"0A000: {exc.message}"
                    head.refusal = _Refusal("0A000", exc.message)
        if head.refusal is not None or head.masker is None:
            return  # unmaskable (or unplanned) rows are dropped, never sent
        masker = head.masker
        out.extend(masker.mask_run(rows))
        if head.run is not None:
            head.run.masked |= masker.masked_rules

    def _error(self, head: _Expect, message: m.ErrorResponse, out: list[Any]) -> None:
        # Whatever failed, the implicit transaction it ran in is aborted, with the runs before it.
        self._settle_uncommitted(
            "rolled back: a later message of its batch failed, and the transaction with it"
        )
        if head.kind == "refusal" and head.refusal is not None:
            out.append(head.refusal.error.encode())  # a Query: its ReadyForQuery ends it
            return
        if head.kind == "refusal_ext" and head.refusal is not None:
            out.append(head.refusal.error.encode())
            self._pop()
            self._drop_until_sync()
            return
        if head.kind in ("swallow", "restore"):
            head.failed = True  # the proxy's own statement: its ReadyForQuery ends it
            return
        run = head.run
        safe = self._safe_error(message, run.decided if run is not None else None)
        if run is not None:
            run.error = f"{safe.sqlstate}: {safe.message}"
        if head.refusal is not None:
            out.append(head.refusal.error.encode())
        elif head.forward:
            out.append(safe.encode())
        if head.kind == "query":
            if run is not None:
                self._complete(head)
                head.run = None  # recorded; its ReadyForQuery still ends the expectation
            return
        if head.kind == "sync":
            return  # an error ending the batch (a deferred constraint at commit): ReadyForQuery follows
        self._pop()
        self._forget_record(head)
        if run is not None and head.kind == "execute":
            self._complete(head)
        self._drop_until_sync()

    def _drop_until_sync(self) -> None:
        """After an error the server skips every message up to Sync: their expectations go too,
        and so do the records their Parse and Bind made (the server made none)."""
        while self._expect and self._expect[0].kind in _SKIPPED:
            skipped = self._expect.popleft()
            self._forget_record(skipped)
            if skipped.kind == "execute" and skipped.run is not None:
                skipped.run.error = "skipped: an earlier message of its batch failed"
                skipped.run.skipped = True
                if skipped.portal is not None:
                    skipped.portal.claimed = False  # a later Execute of it must claim again
                self._complete(skipped)
        if not self._expect:
            self._busy_since = None

    def _forget_record(self, head: _Expect) -> None:
        """The server refused (or skipped) a Parse or Bind: the record it would have made goes."""
        if head.kind == "parse" and head.statement is not None:
            if self._statements.get(head.name) is head.statement:
                del self._statements[head.name]
        elif head.kind == "bind" and head.portal is not None:
            if self._portals.get(head.name) is head.portal:
                del self._portals[head.name]

    def _complete(self, head: _Expect) -> None:
        run = head.run
        if run is None:
            return
        if head.refusal is not None and run.error is None:
            run.error = f"{head.refusal.sqlstate}: {head.refusal}"
        head.run = None
        run.finished = time.perf_counter()
        if head.kind == "execute" and run.error is None:
            if _transaction_only(run.decided):
                # BEGIN makes the runs before it part of its block, COMMIT commits them: their
                # outcome is what the block's own end says, as for any statement in a block.
                self._settle_uncommitted(None)
            elif run.implicit:
                self._uncommitted.append(run)
                return
        self._record_run(run)

    def _settle_uncommitted(self, rolled_back: str | None) -> None:
        """Record the runs waiting for their implicit transaction's end: as they completed, or
        (`rolled_back`: why) as failed, since nothing they did lasted."""
        runs, self._uncommitted = self._uncommitted, []
        for run in runs:
            if rolled_back is not None:
                run.error = rolled_back
            self._record_run(run)

    def _async_message(self, message: m.Message, out: list[Any]) -> None:
        if isinstance(message, m.ParameterStatus):
            if message.name == "client_encoding":
                self._encoding = python_encoding(message.value)
            if message.name == _READ_ONLY_DEFAULT:
                # After login only the proxy's own lift and restore change it (a client cannot):
                # the client keeps the value it was told at login, its session's default.
                return
            out.append(message.encode())
            return
        if isinstance(message, m.NoticeResponse):
            head = self._expect[0] if self._expect else None
            decided = head.run.decided if head is not None and head.run is not None else None
            out.append(self._safe_notice(message, decided).encode())
            return
        if isinstance(message, m.NotificationResponse):
            out.append(self._safe_notification(message).encode())
            return
        out.append(message.encode())

    def _safe_notification(self, message: m.NotificationResponse) -> m.NotificationResponse:
        """A LISTEN notification as the agent may see it.

        No lineage reaches a payload (`pg_notify('c', ssn)`), so the connection's content
        detectors run on it and on the channel; with no masker nothing of either passes. The
        sender is named by the proxy's own key, as in BackendKeyData: this session's for its own
        notifications, 0 for another backend's (its real PID is the server's business).
        """
        masker = self._ctx.masker_for(self.connection)
        if masker is None:
            channel = payload = "[REDACTED]"
        else:
            channel, payload = masker.mask_text(message.channel), masker.mask_text(message.payload)
        own = self._upstream is not None and message.process_id == self._upstream.backend_pid
        return m.NotificationResponse(self.process_id if own else 0, channel, payload)

    def _safe_error(self, message: m.ErrorResponse, decided: Decided | None) -> m.ErrorResponse:
        return m.ErrorResponse(self._safe_fields(message.fields, decided))

    def _safe_notice(self, message: m.NoticeResponse, decided: Decided | None) -> m.NoticeResponse:
        return m.NoticeResponse(self._safe_fields(message.fields, decided))

    def _safe_fields(self, fields: Any, decided: Decided | None) -> dict[str, str]:
        """The server's error as the agent may see it: the API's rules (gatehouse.service)."""
        masker = decided.masker if decided is not None else self._ctx.masker_for(self.connection)
        out = dict(fields)
        risky = decided is not None and (
            decided.traced.touches_protected or any(s.opaque for s in decided.traced.lineage)
        )
        for key in ("M", "D", "H", "W", "q"):
            if key not in out:
                continue
            text = out[key]
            if risky:
                identifiers = (
                    decided.traced.catalog.identifiers if decided and decided.traced.catalog else frozenset()
                )
                text = "[REDACTED]" if key in ("D", "W", "q") else redact_error_text(text, identifiers)
            out[key] = masker.mask_text(text) if masker is not None else text
        return out


# -- helpers -------------------------------------------------------------------------------------


_STRICTNESS = {"async": 0, "sync_writes": 1, "sync": 2}


def _stricter(a: str, b: str) -> str:
    """The stricter recording mode; an unknown one counts as sync (fail closed)."""
    return (
        max(a, b, key=lambda mode: _STRICTNESS.get(mode, 3))
        if a in _STRICTNESS and b in _STRICTNESS
        else "sync"
    )


def _loopback(host: str) -> bool:
    """A client on this machine (a Unix socket's peer has no address)."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _env(connection: Connection) -> str | None:
    env = connection.attributes.get("env")
    return str(env) if env is not None else None


def _writes(decided: Decided) -> bool:
    """A statement that needs a read-write transaction (anything Cedar allowed beyond a read)."""
    return any(_statement_writes(stmt) for stmt in decided.classification.statements)


def _statement_writes(stmt: Statement) -> bool:
    return stmt.cls not in (StatementClass.READ, StatementClass.TRANSACTION, StatementClass.SESSION)


def _transaction_only(decided: Decided) -> bool:
    statements = decided.classification.statements
    return bool(statements) and all(s.cls is StatementClass.TRANSACTION for s in statements)


def _begins_block(decided: Decided) -> bool:
    return any(
        s.command == "transaction" and _transaction_kind(s.text) == "begin"
        for s in decided.classification.statements
    )


def _left_open(decided: Decided) -> tuple[bool, Statement | None]:
    """Whether a message's statements leave a transaction block open, and the first statement
    in that block (None: nothing follows its BEGIN)."""
    opened, first = False, None
    for stmt in decided.classification.statements:
        kind = _transaction_kind(stmt.text) if stmt.command == "transaction" else ""
        if kind == "begin" and not opened:
            opened, first = True, None
        elif kind == "end":
            opened, first = False, None
        elif opened and first is None:
            first = stmt
    return opened, first


def _ends_block(decided: Decided) -> bool:
    return any(
        s.command == "transaction" and _transaction_kind(s.text) == "end"
        for s in decided.classification.statements
    )


_BEGAN_READ_ONLY = (
    "this transaction block began read-only (its first statement was not a write), so Gatehouse "
    "cannot lift it for this write, and it did not run: start the block with the write"
)
_OPEN_BLOCK = (
    "Gatehouse lifts read-only for this message's write, and the transaction block it leaves open "
    "would stay read-write although it does not begin with a write: begin the block with the "
    "write, or send BEGIN in a message of its own"
)
_BEGIN_IN_LIFTED_BATCH = (
    "Gatehouse lifted read-only for this batch's write: a transaction block cannot begin in it; "
    "send BEGIN in a batch of its own (Gatehouse lifts the block for the write that comes first)"
)
_BATCH_READ_ONLY = (
    "Gatehouse lifts read-only for a write before the first message of its batch (its Parse, or "
    "its Bind), and this batch began with something else: the write did not run; send it first "
    "in a batch of its own"
)


def _no_statement(name: str) -> str:
    return (
        f'prepared statement "{name}" does not exist' if name else "unnamed prepared statement does not exist"
    )


def _no_portal(name: str) -> str:
    return f'portal "{name}" does not exist'


def _lost_track(message: m.Message, head: _Expect) -> ProtocolError:
    """An answer in no place the proxy expects one: ending the session beats guessing whose it is."""
    log.error("proxy lost track of the server: %s while expecting %s", type(message).__name__, head.kind)
    return ProtocolError("Gatehouse lost track of the server's answers; the session is closed")


def _parsed(decided: Decided, command: str) -> Iterator[Any]:
    """The parse trees of the decision's statements of `command` (those that parse here)."""
    for stmt in decided.classification.statements:
        if stmt.command != command:
            continue
        try:
            tree = parse_sql(stmt.text)
        except ParseError:
            continue
        for raw in tree:
            yield raw.stmt


def _copies_from_client(decided: Decided) -> bool:
    """`COPY ... FROM STDIN`: until CopyDone the server takes nothing but the client's data."""
    for node in _parsed(decided, "copy"):
        if isinstance(node, ast.CopyStmt) and node.is_from and not node.filename and not node.is_program:
            return True
    return False


def _transaction_kind(text: str) -> str:
    try:
        tree = parse_sql(text)
    except ParseError:
        return ""
    node = tree[0].stmt if tree else None
    if not isinstance(node, ast.TransactionStmt):
        return ""
    kind = getattr(node.kind, "name", "")
    if kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
        return "begin"
    if kind in ("TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK", "TRANS_STMT_PREPARE") and not node.chain:
        return "end"
    if kind == "TRANS_STMT_ROLLBACK_TO":
        return "rollback_to"
    return ""


def _with_formats(
    fields: tuple[m.FieldDescription, ...], formats: tuple[int, ...]
) -> tuple[m.FieldDescription, ...]:
    """A statement's fields as a portal bound with these result formats will send them."""
    if not formats:
        return fields
    out = []
    for index, f in enumerate(fields):
        fmt = formats[0] if len(formats) == 1 else (formats[index] if index < len(formats) else 0)
        out.append(
            m.FieldDescription(
                f.name, f.table_oid, f.column_attnum, f.type_oid, f.type_size, f.type_modifier, fmt
            )
        )
    return tuple(out)


def _row_count(tag: str) -> int:
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _preview_line(preview: dict[str, Any] | None) -> str:
    if not preview:
        return ""
    parts = []
    for stmt in preview.get("statements") or ():
        rows = stmt.get("affected_rows", stmt.get("estimated_rows"))
        if isinstance(rows, int):
            label = "would change" if "affected_rows" in stmt else "estimated"
            parts.append(f"{rows} row{'s' if rows != 1 else ''} {label}")
    mode = preview.get("mode", "explain")
    return f"{mode} preview: " + ", ".join(parts) if parts else f"{mode} preview"


def _clock(epoch: int | None) -> str:
    if not epoch:
        return "(unknown)"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def new_cancel_key() -> tuple[int, bytes]:
    return random_secrets.randbelow(2**31 - 1) + 1, random_secrets.token_bytes(4)
