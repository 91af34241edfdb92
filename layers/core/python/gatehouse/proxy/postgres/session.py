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
at Parse, an approval is claimed at each Execute.

Refusals keep Postgres's own semantics: instead of the refused message the proxy sends the server
a statement that fails (`DO ... RAISE`), so an open transaction is aborted and the rest of an
extended-protocol batch is skipped exactly as a real error would; the client gets the proxy's
ErrorResponse in its place.

Read-only: the upstream session starts with `default_transaction_read_only=on`. Only a message
Cedar allowed that is not a read lifts it, for its own transaction: in autocommit by `SET
default_transaction_read_only = off` before and `= on` after (pipelined, no extra round trip); in
a transaction block only as its first statement (`SET TRANSACTION READ WRITE`). A block that began
with a read stays read-only: a later write in it fails with 25006. Clients cannot lift it
(gatehouse.proxy.postgres.guard).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets as random_secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pglast import ast, parse_sql
from pglast.parser import ParseError

from gatehouse.exceptions import GatehouseError
from gatehouse.masking.errors import redact_error_text
from gatehouse.models import Connection, Effect, Principal, StatementClass
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
_LIFT_AUTOCOMMIT = "SET default_transaction_read_only = off"
_RESTORE_AUTOCOMMIT = "SET default_transaction_read_only = on"
_LIFT_BLOCK = "SET TRANSACTION READ WRITE"
SQLSTATE_DENIED = "42501"
SQLSTATE_BACKLOG = "57P03"
SQLSTATE_SYNTAX = "42601"
SQLSTATE_INTERNAL = "XX000"


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


@dataclass
class _Statement:
    """A prepared statement (extended protocol) or a Query's text, decided."""

    sql: str
    decided: Decided
    claim: bool = False  # needs an approved request claimed at each run
    fields: tuple[m.FieldDescription, ...] | None = None  # from a Describe


@dataclass
class _Portal:
    statement: _Statement
    result_formats: tuple[int, ...]
    fields: tuple[m.FieldDescription, ...] | None = None


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


@dataclass
class _Expect:
    """What to do with the server's answer to one message sent upstream."""

    kind: str  # query | swallow | refusal | parse | bind | describe | execute | close | sync | synthetic
    run: _Run | None = None
    statement: _Statement | None = None
    portal: _Portal | None = None
    refusal: _Refusal | None = None
    describe_kind: str = ""
    forward: bool = True  # send the answer to the client (False: a message the proxy injected)
    # A simple Query: one lineage entry per statement, the index of the one answering now.
    index: int = 0
    masker: ResultMasker | None = None
    payload: bytes = b""  # synthetic: bytes to send when this reaches the head


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
        self._skip_until_sync = False
        self._batch_lifted = False  # this extended batch lifted read-only in autocommit
        self._batch_started = False  # something of the current extended batch went upstream
        self._in_block = False
        self._block_used = False
        self._status = "I"
        self._encoding = "utf-8"
        self._busy_since: float | None = None
        self._cancel_sent = False
        self._closing = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.statements_run = 0

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

    async def _handle(self, message: m.Message, out: list[bytes]) -> None:
        if isinstance(message, m.Query):
            await self._query(message, out)
        elif isinstance(message, (m.CopyData, m.CopyDone, m.CopyFail)):
            out.append(message.encode())  # COPY FROM STDIN data: its statement was decided
        elif self._skip_until_sync and not isinstance(message, m.Sync):
            return  # after an error the server skips to Sync; so does the proxy
        elif isinstance(message, m.Parse):
            await self._parse(message, out)
        elif isinstance(message, m.Bind):
            self._bind(message, out)
        elif isinstance(message, m.Describe):
            self._describe(message, out)
        elif isinstance(message, m.Execute):
            await self._execute(message, out)
        elif isinstance(message, m.Close):
            (self._statements if message.kind == "S" else self._portals).pop(message.name, None)
            out.append(message.encode())
            self._push(_Expect("close"))
        elif isinstance(message, m.Sync):
            self._skip_until_sync = False
            out.append(message.encode())
            self._push(_Expect("sync"))
            if self._batch_lifted:
                self._inject(out, _RESTORE_AUTOCOMMIT)
                self._batch_lifted = False
            self._batch_started = False
        elif isinstance(message, m.Flush):
            out.append(message.encode())
        elif isinstance(message, m.FunctionCall):
            # The fast-path call runs a function by OID, past every classifier: never through here.
            refusal = _Refusal(
                SQLSTATE_DENIED, "Gatehouse does not allow the fast-path function call protocol"
            )
            self._record_refusal("(fast-path function call)", refusal)
            self._synthetic(refusal.error.encode() + m.ReadyForQuery(self._status).encode())
        else:
            raise ProtocolError(f"unexpected message {type(message).__name__} after startup")

    def _synthetic(self, payload: bytes) -> None:
        if not self._expect:
            self._writer.write(payload)
            return
        self._push(_Expect("synthetic", payload=payload, forward=True))

    def _inject(self, out: list[bytes], sql: str) -> None:
        out.append(m.Query(sql).encode())
        self._push(_Expect("swallow", forward=False))

    async def _decide(self, sql: str) -> Decided:
        assert self.principal is not None and self.connection is not None
        cache = self._ctx.decisions
        decided = cache.cached(self.principal, self.connection, sql)
        if decided is None:
            # A miss may read the catalog or the registry: off the loop, bounded by the pool.
            decided = await self._ctx.call(cache.decide, self.principal, self.connection, sql)
        return decided

    async def _verdict(self, sql: str, *, claim_now: bool) -> tuple[Decided, Any]:
        """The decision for `sql`, or a _Refusal; with `claim_now`, an approval claimed for it."""
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
        claimed = None
        if decision.effect is Effect.APPROVAL and claim_now:
            claimed = await self._claim_or_hold(sql, decided)
        return decided, claimed

    async def _claim_or_hold(self, sql: str, decided: Decided) -> Any:
        assert self.principal is not None and self.connection is not None
        service = self._ctx.service
        claimed = await self._ctx.call(service.claim_approved, self.principal, self.connection, sql)
        if claimed is not None:
            return claimed
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

    # -- simple protocol -----------------------------------------------------------------------

    async def _query(self, message: m.Query, out: list[bytes]) -> None:
        sql = message.sql
        if not sql.strip():
            out.append(message.encode())  # the server answers EmptyQueryResponse
            self._push(_Expect("query", run=None))
            return
        try:
            decided, claimed = await self._verdict(sql, claim_now=True)
        except _Refusal as refusal:
            self._refuse_simple(sql, refusal, out)
            return
        run = _Run(sql, decided, 0.0, claimed)
        try:
            await self._durable_decision(run)
        except _Refusal as refusal:
            self._refuse_simple(sql, refusal, out)
            return
        writes = _writes(decided)
        lift_after = False
        if writes:
            if not self._in_block:
                self._inject(out, _LIFT_AUTOCOMMIT)
                lift_after = True
            elif not self._block_used:
                self._inject(out, _LIFT_BLOCK)
        self._track_transaction(decided)
        run.started = time.perf_counter()
        out.append(message.encode())
        self._push(_Expect("query", run=run))
        if lift_after:
            self._inject(out, _RESTORE_AUTOCOMMIT)

    def _refuse_simple(self, sql: str, refusal: _Refusal, out: list[bytes]) -> None:
        self._record_refusal(sql, refusal)
        if self._status == "T" or self._in_block:
            # Inside a transaction the server must fail too, so the block is aborted as by any error.
            out.append(m.Query(_RAISE).encode())
            self._push(_Expect("refusal", refusal=refusal))
        else:
            self._synthetic(refusal.error.encode() + m.ReadyForQuery(self._status).encode())

    # -- extended protocol ---------------------------------------------------------------------

    async def _parse(self, message: m.Parse, out: list[bytes]) -> None:
        try:
            decided, _ = await self._verdict(message.sql, claim_now=False)
        except _Refusal as refusal:
            self._refuse_extended(message.sql, refusal, out)
            return
        needs_claim = decided.decision.effect is Effect.APPROVAL
        self._statements[message.statement] = _Statement(message.sql, decided, needs_claim)
        out.append(message.encode())
        self._batch_started = True
        self._push(_Expect("parse"))

    def _refuse_extended(self, sql: str, refusal: _Refusal, out: list[bytes]) -> None:
        self._record_refusal(sql, refusal)
        out.append(m.Parse("", _RAISE).encode())
        out.append(m.Bind("", "").encode())
        out.append(m.Execute("").encode())
        self._push(_Expect("refusal_ext", refusal=refusal))
        self._skip_until_sync = True
        self._batch_started = True

    def _bind(self, message: m.Bind, out: list[bytes]) -> None:
        statement = self._statements.get(message.statement)
        if statement is not None:
            portal = _Portal(statement, tuple(message.result_formats))
            if statement.fields is not None:
                portal.fields = _with_formats(statement.fields, portal.result_formats)
            self._portals[message.portal] = portal
        out.append(message.encode())
        self._batch_started = True
        self._push(_Expect("bind"))

    def _describe(self, message: m.Describe, out: list[bytes]) -> None:
        out.append(message.encode())
        expect = _Expect("describe", describe_kind=message.kind)
        if message.kind == "S":
            expect.statement = self._statements.get(message.name)
        else:
            expect.portal = self._portals.get(message.name)
        self._batch_started = True
        self._push(expect)

    async def _execute(self, message: m.Execute, out: list[bytes]) -> None:
        portal = self._portals.get(message.portal)
        if portal is None:
            out.append(message.encode())  # the server answers: portal does not exist
            self._push(_Expect("execute"))
            return
        statement = portal.statement
        claimed = None
        decided = statement.decided
        try:
            if statement.claim:
                decided, claimed = await self._verdict(statement.sql, claim_now=True)
            elif self._ctx.recorder.backlogged:
                raise _Refusal(SQLSTATE_BACKLOG, "the Gatehouse session log is behind; try again shortly")
            run = _Run(statement.sql, decided, 0.0, claimed)
            await self._durable_decision(run)
        except _Refusal as refusal:
            self._refuse_extended(statement.sql, refusal, out)
            return
        if _writes(decided):
            if not self._in_block and not self._batch_started and not self._batch_lifted:
                self._inject(out, _LIFT_AUTOCOMMIT)
                self._batch_lifted = True
            elif self._in_block and not self._block_used and not self._batch_started:
                self._inject(out, _LIFT_BLOCK)
        self._track_transaction(decided)
        if portal.fields is None:
            # The rows' shape (types, formats, source columns) is needed to mask them: ask.
            out.append(m.Describe("P", message.portal).encode())
            self._push(_Expect("describe", describe_kind="P", portal=portal, forward=False))
        run.started = time.perf_counter()
        out.append(message.encode())
        self._batch_started = True
        self._push(_Expect("execute", run=run, portal=portal))

    # -- transactions and the log --------------------------------------------------------------

    def _track_transaction(self, decided: Decided) -> None:
        for stmt in decided.classification.statements:
            if stmt.cls is StatementClass.TRANSACTION and stmt.command == "transaction":
                kind = _transaction_kind(stmt.text)
                if kind == "begin":
                    self._in_block, self._block_used = True, False
                elif kind == "end":
                    self._in_block, self._block_used = False, False
            elif self._in_block:
                self._block_used = True

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
        duration = round((time.perf_counter() - run.started) * 1000, 3)
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
        rows: list[m.DataRow] = []
        expect = self._expect
        for message in messages:
            if type(message) is m.DataRow:
                rows.append(message)
                continue
            if rows:
                self._rows(rows, out)
                rows = []
            if isinstance(message, (m.NoticeResponse, m.ParameterStatus, m.NotificationResponse)):
                self._async_message(message, out)
                continue
            head = expect[0] if expect else None
            if head is None:
                out.append(message.encode())
                continue
            self._step(head, message, out)
            self._drain_synthetic(out)
        if rows:
            self._rows(rows, out)

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
            self._status = message.status
            if kind in ("query", "swallow", "refusal", "sync"):
                if kind == "query" and head.run is not None:
                    self._complete(head)
                self._pop()
                if not self._expect:
                    # The server's word on the transaction is the last one.
                    self._in_block = message.status != "I"
                    if not self._in_block:
                        self._block_used = False
                if head.forward:
                    out.append(message.encode())
                return
        if isinstance(message, m.ErrorResponse):
            self._error(head, message, out)
            return
        if kind == "swallow":
            return
        if kind in ("refusal", "refusal_ext"):
            return  # ParseComplete/BindComplete of the injected DO
        if kind in ("parse", "bind", "close"):
            self._pop()
            if head.forward:
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

    def _rows(self, rows: list[m.DataRow], out: list[Any]) -> None:
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
        out.extend(masker.mask(rows))
        if head.run is not None:
            head.run.masked |= masker.masked_rules

    def _error(self, head: _Expect, message: m.ErrorResponse, out: list[Any]) -> None:
        if head.kind == "refusal" and head.refusal is not None:
            out.append(head.refusal.error.encode())  # a Query: its ReadyForQuery ends it
            return
        if head.kind == "refusal_ext" and head.refusal is not None:
            out.append(head.refusal.error.encode())
            self._pop()
            self._drop_until_sync()
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
        if head.kind == "swallow":
            return
        self._pop()
        if run is not None and head.kind == "execute":
            self._complete(head)
        self._drop_until_sync()

    def _drop_until_sync(self) -> None:
        """After an error the server skips every message up to Sync: their expectations go too."""
        while self._expect and self._expect[0].kind in ("parse", "bind", "describe", "execute", "close"):
            self._expect.popleft()
        if not self._expect:
            self._busy_since = None

    def _complete(self, head: _Expect) -> None:
        run = head.run
        if run is None:
            return
        if head.refusal is not None and run.error is None:
            run.error = f"{head.refusal.sqlstate}: {head.refusal}"
        self._record_run(run)
        head.run = None

    def _async_message(self, message: m.Message, out: list[Any]) -> None:
        if isinstance(message, m.ParameterStatus):
            if message.name == "client_encoding":
                self._encoding = python_encoding(message.value)
            out.append(message.encode())
            return
        if isinstance(message, m.NoticeResponse):
            head = self._expect[0] if self._expect else None
            decided = head.run.decided if head is not None and head.run is not None else None
            out.append(self._safe_notice(message, decided).encode())
            return
        out.append(message.encode())

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
    for stmt in decided.classification.statements:
        if stmt.cls not in (StatementClass.READ, StatementClass.TRANSACTION, StatementClass.SESSION):
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
