"""The proxy server: accept, log in, relay; start, stop and drain.

`ProxyContext` holds what every session shares (the service and its decision cache, the token
verifier, the recorder, the thread pool for blocking calls, the cancel keys); `ProxyServer` owns
the listening socket, the health endpoint and the sessions' tasks. On SIGTERM (or `stop`) it stops
accepting, answers 503 on /healthz so the load balancer stops sending, lets sessions finish up to
the drain deadline, then ends the rest with 57P01 (as Postgres does on a fast shutdown).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import signal
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from gatehouse.exceptions import GatehouseError
from gatehouse.masking import Masker
from gatehouse.models import Connection, Principal
from gatehouse.proxy.postgres.decisions import DecisionCache
from gatehouse.proxy.postgres.guard import lifts_read_only
from gatehouse.proxy.postgres.messages import ErrorResponse
from gatehouse.proxy.postgres.metrics import DEFAULT_INTERVAL_S, RecorderMetrics
from gatehouse.proxy.postgres.session import ProxySession, new_cancel_key
from gatehouse.proxy.postgres.upstream import (
    INVALID_PASSWORD,
    Upstream,
    UpstreamError,
    UpstreamTarget,
    cancel_upstream,
    connect_upstream,
)
from gatehouse.proxy_tokens import InvalidProxyTokenError, ProxyTokens
from gatehouse.service import Gatehouse

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ProxyConfig:
    host: str = "127.0.0.1"
    port: int = 6432
    health_host: str = ""  # empty: no health endpoint
    health_port: int = 0
    tls: ssl.SSLContext | None = None
    allow_plaintext: bool = False  # plaintext off loopback (loopback is always allowed)
    max_sessions: int = 500
    idle_timeout_s: float = 900.0
    login_timeout_s: float = 10.0
    statement_timeout_s: float = 300.0
    max_message_bytes: int = 4 * 1024 * 1024
    drain_s: float = 30.0
    upstream_tls: str = "prefer"
    workers: int = 16
    # The least strict recording a connection may have ("async" allows every mode).
    recording_floor: str = "async"
    # Seconds between the recorder's metric emissions (gatehouse.proxy.postgres.metrics).
    metrics_interval_s: float = DEFAULT_INTERVAL_S


class ProxyContext:
    """What the sessions of one proxy process share. Built once; clients injected."""

    def __init__(
        self,
        service: Gatehouse,
        tokens: ProxyTokens,
        recorder: Any,
        config: ProxyConfig,
        *,
        decisions: DecisionCache | None = None,
    ) -> None:
        self.service = service
        self.tokens = tokens
        self.recorder = recorder
        self.config = config
        self.decisions = decisions or DecisionCache(service)
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="gatehouse-proxy")
        self._sessions: dict[int, ProxySession] = {}
        self._lifts: dict[str, str] = {}
        self._background: set[asyncio.Future[Any]] = set()
        # (id(decided), statement index, encoding, fields) -> (decided, ResultMasker)
        self.result_maskers: dict[Any, tuple[Any, Any]] = {}

    # -- blocking work, off the event loop ----------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def background(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Fire and forget (kept referenced until done); failures are logged."""
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args, **kwargs)
        )
        self._background.add(future)
        future.add_done_callback(self._done)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("proxy background work failed: %r", future.exception())

    async def settle(self) -> None:
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- login ---------------------------------------------------------------------------------

    def authenticate(self, user: str, password: str, database: str) -> tuple[Principal, Connection]:
        """The token's agent and the connection it is for (runs in the pool: it may read AWS)."""
        verified = self.tokens.verify(user, password, database)
        registry = self.service.registry
        try:
            principal = registry.principal(f"iam:{verified.principal_arn}")
            connection = registry.get_connection(verified.connection)
        except GatehouseError as exc:
            # A removed agent or connection: its tokens stop working at once.
            raise InvalidProxyTokenError(f"unknown principal or connection ({exc.code})", user) from exc
        if principal.kind != "agent" or principal.name != verified.principal_name:
            raise InvalidProxyTokenError("principal changed", user)
        if connection.kind != "postgres":
            raise InvalidProxyTokenError("not a postgres connection", user)
        return principal, connection

    async def connect_upstream(self, connection: Connection, parameters: dict[str, str]) -> Upstream:
        credential = await self.call(self.service.secrets.database_credential, connection.secret_id)
        target = UpstreamTarget(
            host=connection.host,
            port=connection.port,
            database=connection.database,
            user=credential.username,
            password=credential.password,
            tls=str(connection.attributes.get("tls") or self.config.upstream_tls),
            ca_pem=connection.attributes.get("ca_pem") or None,
        )
        # Every transaction is read-only unless the proxy lifts it for a write Cedar allowed.
        # A client idle inside a transaction would hold its locks and snapshot: the server ends it
        # after the proxy's own idle timeout.
        idle_ms = int(self.config.idle_timeout_s * 1000)
        options = f"-c default_transaction_read_only=on -c idle_in_transaction_session_timeout={idle_ms}"
        params = {**parameters, "options": options}
        params.setdefault("application_name", "gatehouse-proxy")
        try:
            return await connect_upstream(target, params)
        except UpstreamError as exc:
            # The cached password may predate a rotation (gatehouse.rotation): read the secret
            # again past the cache, and log in once more if that gives another password.
            if exc.sqlstate != INVALID_PASSWORD:
                raise
            rotated = await self.call(
                self.service.secrets.credential_after_rejection, connection.secret_id, credential
            )
            if rotated is None:
                raise
        log.info("%s refused the cached password: logging in with the rotated one", connection.name)
        return await connect_upstream(
            replace(target, user=rotated.username, password=rotated.password), params
        )

    def masker_for(self, connection: Connection | None) -> Masker | None:
        if connection is None:
            return None
        try:
            return self.service._masker(connection)
        except GatehouseError:
            return None

    def lifts(self, sql: str, decided: Any = None) -> str:
        """Why `sql` would lift read-only (gatehouse.proxy.postgres.guard); "" when it would not."""
        if decided is not None and _plain(decided):
            return ""  # a plain SELECT/INSERT/UPDATE/DELETE calling no function cannot
        found = self._lifts.get(sql)
        if found is None:
            found = lifts_read_only(sql)
            if len(self._lifts) > 4096:
                self._lifts.clear()
            self._lifts[sql] = found
        return found

    # -- sessions and cancel keys --------------------------------------------------------------

    def register(self, session: ProxySession) -> tuple[int, bytes]:
        while True:
            pid, key = new_cancel_key()
            if pid not in self._sessions:
                self._sessions[pid] = session
                return pid, key

    def forget(self, session: ProxySession) -> None:
        if self._sessions.get(session.process_id) is session:
            del self._sessions[session.process_id]

    async def cancel(self, pid: int, key: bytes) -> None:
        """A client's CancelRequest: the session it names cancels its own upstream statement."""
        session = self._sessions.get(pid)
        if session is None or not hmac.compare_digest(session.secret_key, key):
            return  # as Postgres: silently ignored
        await session.cancel_upstream()

    async def cancel_backend(self, upstream: Upstream) -> None:
        try:
            peer = upstream.writer.get_extra_info("peername")
            await cancel_upstream(peer[0], peer[1], upstream.backend_pid, upstream.backend_secret)
        except (GatehouseError, OSError) as exc:
            log.warning("could not cancel an upstream statement: %s", exc)

    @property
    def sessions(self) -> list[ProxySession]:
        return list(self._sessions.values())


class ProxyServer:
    def __init__(self, context: ProxyContext) -> None:
        self.context = context
        self._server: asyncio.Server | None = None
        self._health: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metrics = RecorderMetrics(context.recorder, interval_s=context.config.metrics_interval_s)
        self._metrics_task: asyncio.Task[None] | None = None
        self._draining = False
        self._stopped = asyncio.Event()
        self.address: tuple[str, int] = ("", 0)
        self.health_address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        config = self.context.config
        await self.context.recorder.start()
        # Owned here: `stop` cancels it once the recorder has drained, then emits a last time.
        self._metrics_task = asyncio.create_task(self.metrics.run(), name="gatehouse-proxy-metrics")
        self._server = await asyncio.start_server(self._accept, config.host, config.port, limit=2**20)
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        if config.health_host:
            self._health = await asyncio.start_server(self._healthz, config.health_host, config.health_port)
            hsock = self._health.sockets[0].getsockname()
            self.health_address = (hsock[0], hsock[1])
        log.info("Gatehouse proxy listening on %s:%d", *self.address)
        return self.address

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._draining or len(self._tasks) >= self.context.config.max_sessions:
            why = (
                "the Gatehouse proxy is shutting down"
                if self._draining
                else "too many connections to the Gatehouse proxy"
            )
            code = "57P01" if self._draining else "53300"
            writer.write(ErrorResponse.build(code, why, severity="FATAL").encode())
            try:
                await writer.drain()
                writer.close()
            except (ConnectionError, OSError):
                pass
            return
        self._tasks.add(task)
        session = ProxySession(self.context, reader, writer)
        try:
            await session.run()
        finally:
            self._tasks.discard(task)

    async def _healthz(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readline(), 5)
            ok = not self._draining and not self.context.recorder.backlogged
            body = b"ok\n" if ok else (b"draining\n" if self._draining else b"log backlogged\n")
            status = b"200 OK" if ok else b"503 Service Unavailable"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            writer.close()

    @property
    def session_count(self) -> int:
        return len(self._tasks)

    async def stop(self, drain_s: float | None = None) -> None:
        """Stop accepting, let sessions finish up to `drain_s`, end the rest, flush the log."""
        if self._draining:
            await self._stopped.wait()
            return
        self._draining = True
        deadline = self.context.config.drain_s if drain_s is None else drain_s
        if self._server is not None:
            self._server.close()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=deadline)
            for session in self.context.sessions:
                await session.terminate(
                    "57P01", "terminating connection due to administrator command (Gatehouse drain)"
                )
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._health is not None:
            self._health.close()
        await self.context.settle()
        await self.context.recorder.stop()
        await self._stop_metrics()
        self.context.shutdown()
        self._stopped.set()

    async def _stop_metrics(self) -> None:
        task, self._metrics_task = self._metrics_task, None
        if task is None:
            return
        task.cancel()
        # wait() rather than await: a cancellation of stop() itself must still propagate.
        await asyncio.wait([task])
        try:
            # The drain's own failures, and what the recorder could not store before it stopped.
            self.metrics.emit()
        except Exception:  # the drain goes on: the task is ending either way
            log.exception("proxy metrics: the last emission failed")

    async def serve_forever(self) -> None:
        """Until SIGTERM or SIGINT, then drain."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("Gatehouse proxy draining (%d sessions)", self.session_count)
        await self.stop()


_PLAIN_COMMANDS = frozenset({"select", "insert", "update", "delete"})


def _plain(decided: Any) -> bool:
    return all(s.command in _PLAIN_COMMANDS and not s.functions for s in decided.classification.statements)
