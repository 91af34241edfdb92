"""The proxy's connection to the real PostgreSQL server: TCP, optional TLS, startup, authentication.

`connect_upstream` returns once the server has sent its first ReadyForQuery, with everything the
proxy must pass on to its own client (ParameterStatus, the cancel key) already read. Decoding is
the pure codec's (`BackendParser`); this module only does the I/O and the authentication exchange.

Authentication: trust, cleartext password, md5, SCRAM-SHA-256 and, over TLS, SCRAM-SHA-256-PLUS
with `tls-server-end-point` channel binding (RFC 5929; the only binding PostgreSQL implements).
Anything else (Kerberos, GSSAPI, SSPI) is refused with SQLSTATE 28000.

TLS follows libpq's `sslmode`: "disable", "prefer", "require" (encrypted, the certificate not
checked) and "verify-full" (the chain verified against the connection's `ca_pem` or the system
store, and the host name checked), with the contexts of gatehouse.targets.postgres_tls, the ones
the API path uses. A certificate that does not verify ends the connection at the handshake, before
the startup message (role, database) or any password is sent. The TLS
handshake runs on a socket whose plaintext phase was read by hand, so that bytes a man in the
middle appends to the server's one-byte SSL answer are refused instead of being read as if they
had come over TLS (CVE-2021-23222, libpq's own version of this bug).

The password never appears in an exception, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import scramp

from gatehouse.exceptions import GatehouseError
from gatehouse.proxy.postgres import messages as m
from gatehouse.proxy.postgres.codec import DEFAULT_MAX_BACKEND_MESSAGE, BackendParser
from gatehouse.proxy.postgres.exceptions import FEATURE_NOT_SUPPORTED, ProtocolError
from gatehouse.targets.postgres_tls import PostgresTls, verification_failure

log = logging.getLogger(__name__)

TlsMode = Literal["disable", "prefer", "require", "verify-full"]

# SQLSTATEs from PostgreSQL's errcodes.txt.
UNABLE_TO_CONNECT = "08001"
CONNECTION_FAILURE = "08006"
PROTOCOL_VIOLATION = "08P01"
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"  # noqa: S105 - a SQLSTATE, not a password

# Startup traffic is a few hundred bytes (auth requests, ParameterStatus, a FATAL error); a
# server that sends more before ReadyForQuery is refused early. The session then gets the full
# row-sized limit.
MAX_STARTUP_MESSAGE = 1024 * 1024
_READ_SIZE = 64 * 1024
# Authentication request codes of the protocol that Gatehouse does not implement.
_UNSUPPORTED_AUTH = {
    "2": "Kerberos V5",
    "6": "SCM credentials",
    "7": "GSSAPI",
    "8": "GSSAPI",
    "9": "SSPI",
}
# How long close() waits for the server to see Terminate before dropping the socket.
_CLOSE_GRACE_S = 1.0
# The proxy decodes every string as UTF-8 (see messages.py), so the upstream must speak it.
_FORCED_PARAMETERS = {"client_encoding": "UTF8"}


class UpstreamError(GatehouseError):
    """The upstream PostgreSQL server could not be reached, refused the login, or broke the protocol.

    `sqlstate` is the server's own when it answered with an ErrorResponse, otherwise 08001 (could
    not connect, timed out), 08006 (the connection dropped), 08P01 (protocol violation) or 28000
    (an authentication method Gatehouse does not support). The message never holds the password.
    """

    code = "upstream_unavailable"
    status = 503

    def __init__(self, message: str, *, sqlstate: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail

    def error_response(self) -> m.ErrorResponse:
        """What the proxy sends its client when the upstream login failed: the connection then ends."""
        return m.ErrorResponse.build(self.sqlstate, self.message, severity="FATAL", detail=self.detail)


@dataclass(frozen=True)
class UpstreamTarget:
    """Where and as whom the proxy logs in upstream. The password is left out of repr()."""

    host: str
    port: int
    database: str
    user: str
    password: str | None = field(repr=False)
    tls: str = "prefer"
    connect_timeout_s: float = 5.0
    # verify-full's CA bundle (PEM); None: the system trust store. Public, but long: not in repr.
    ca_pem: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        PostgresTls(self.tls, self.ca_pem)  # raises ValueError for an unknown mode
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port}")
        if not self.connect_timeout_s > 0:
            raise ValueError("connect_timeout_s must be positive")


@dataclass
class Upstream:
    """A logged-in upstream connection, idle at its first ReadyForQuery."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parser: BackendParser
    backend_pid: int
    backend_secret: bytes = field(repr=False)
    parameters: dict[str, str]
    # Every message the server sent after authentication, in order: ParameterStatus...,
    # BackendKeyData, NoticeResponse..., ReadyForQuery (and, in the rare case they arrived in the
    # same read, asynchronous messages that followed it). Authentication messages are left out:
    # the proxy authenticates its own client.
    startup_messages: list[m.Message]
    # "trust", "password", "md5", "SCRAM-SHA-256" or "SCRAM-SHA-256-PLUS": for the session log.
    auth_method: str = "trust"
    tls: bool = False
    _closed: bool = field(default=False, init=False, repr=False)

    async def close(self) -> None:
        """Send Terminate and close the socket. Never raises (except CancelledError, re-raised)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.writer.is_closing():
                self.writer.write(m.Terminate().encode())
            self.writer.close()
            async with asyncio.timeout(_CLOSE_GRACE_S):
                await self.writer.wait_closed()
        except asyncio.CancelledError:
            self.writer.transport.abort()
            raise
        except Exception as exc:  # noqa: BLE001 - closing must not fail; the socket is dropped anyway
            # Also a TLS peer that never answers close_notify (the timeout).
            log.debug("closing the upstream connection: %r", exc)
            self.writer.transport.abort()


async def connect_upstream(target: UpstreamTarget, parameters: Mapping[str, str]) -> Upstream:
    """Open, encrypt (per `target.tls`), log in and wait for the first ReadyForQuery.

    `parameters` are the startup parameters to pass on; `user` and `database` come from `target`
    and override them, and `client_encoding` is forced to UTF8. The whole exchange is bounded by
    `target.connect_timeout_s`.
    """
    startup = _Startup(target)
    try:
        async with asyncio.timeout(target.connect_timeout_s):
            return await startup.run(parameters)
    except TimeoutError as exc:
        raise UpstreamError(
            f"timed out after {target.connect_timeout_s:g}s {startup.phase} "
            f"(upstream server {target.host}:{target.port})",
            sqlstate=UNABLE_TO_CONNECT,
        ) from exc
    finally:
        if not startup.done:
            startup.abort()


async def cancel_upstream(
    host: str, port: int, pid: int, secret: bytes, *, timeout_s: float = 5.0, tls: str = "disable"
) -> None:
    """Ask the server to cancel what backend `pid` is running (a CancelRequest on a new connection).

    The server answers nothing and closes the connection; whether a statement was cancelled shows
    on the original connection (57014). Raises UpstreamError (08001) if the server cannot be
    reached in time. `tls` as for a login: PostgreSQL accepts the request inside TLS too, which
    keeps the cancel key off the network.
    """
    if not secret:
        raise UpstreamError("the upstream sent no cancel key for this backend", sqlstate=UNABLE_TO_CONNECT)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer, _ = await _open(host, port, tls)
            writer.write(m.CancelRequest(pid, secret).encode())
            await writer.drain()
            # The server closes once it has read the request: waiting for that makes the cancel
            # sent, not merely buffered, when we return.
            with contextlib.suppress(OSError, ssl.SSLError):
                await reader.read(1)
    except TimeoutError as exc:
        raise UpstreamError(
            f"timed out after {timeout_s:g}s sending a cancel request to {host}:{port}",
            sqlstate=UNABLE_TO_CONNECT,
        ) from exc
    finally:
        if writer is not None:
            writer.transport.abort()


# ---------------------------------------------------------------- the startup exchange


class _Startup:
    """One login attempt: owns the socket until it hands over an Upstream."""

    def __init__(self, target: UpstreamTarget) -> None:
        self.target = target
        self.phase = "connecting"
        self.done = False
        self.parser = BackendParser(max_message_size=MAX_STARTUP_MESSAGE)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._pending: list[m.Message] = []

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()

    async def run(self, parameters: Mapping[str, str]) -> Upstream:
        target = self.target
        self.reader, self.writer, encrypted = await _open(
            target.host, target.port, target.tls, self.parser, ca_pem=target.ca_pem
        )
        self.phase = "logging in"
        startup = {k: v for k, v in parameters.items() if k not in ("user", "database")}
        startup.update(_FORCED_PARAMETERS)
        startup.update(user=target.user, database=target.database)
        try:
            packet = m.StartupMessage(startup).encode()
        except ProtocolError as exc:
            raise UpstreamError(
                f"invalid startup parameter: {exc.message}", sqlstate=PROTOCOL_VIOLATION
            ) from exc
        self.writer.write(packet)
        method = await self._authenticate(encrypted)
        self.phase = "waiting for ReadyForQuery"
        upstream = await self._until_ready(method, encrypted)
        # The session reads rows from here on: the row-sized limit, not the startup one.
        self.parser.max_message_size = DEFAULT_MAX_BACKEND_MESSAGE
        self.done = True
        log.debug(
            "upstream %s:%s ready: pid %s, auth %s, tls %s",
            target.host,
            target.port,
            upstream.backend_pid,
            method,
            encrypted,
        )
        return upstream

    async def _receive(self) -> m.Message:
        assert self.reader is not None
        while not self._pending:
            try:
                data = await self.reader.read(_READ_SIZE)
            except (OSError, ssl.SSLError) as exc:
                raise self._dropped(exc) from exc
            if not data:
                raise self._dropped(None)
            try:
                self._pending += self.parser.feed(data)
            except ProtocolError as exc:
                if exc.sqlstate == FEATURE_NOT_SUPPORTED and self.phase == "logging in":
                    raise UpstreamError(
                        f"the upstream server asks for an authentication method Gatehouse does not "
                        f"support ({_auth_method_name(exc.message)}); configure trust, password, md5 "
                        f"or scram-sha-256 for role {self.target.user!r}",
                        sqlstate=INVALID_AUTHORIZATION,
                    ) from exc
                raise UpstreamError(
                    f"the upstream server broke the protocol: {exc.message}", sqlstate=exc.sqlstate
                ) from exc
        return self._pending.pop(0)

    def _dropped(self, exc: BaseException | None) -> UpstreamError:
        why = f": {exc}" if exc is not None else ""
        return UpstreamError(
            f"the upstream server {self.target.host}:{self.target.port} closed the connection "
            f"while {self.phase}{why}",
            sqlstate=CONNECTION_FAILURE,
        )

    def _send(self, message: m.Message) -> None:
        assert self.writer is not None
        self.writer.write(message.encode())

    def _server_error(self, error: m.ErrorResponse) -> UpstreamError:
        return UpstreamError(
            _scrub(error.message or "the upstream server refused the connection", self.target.password),
            sqlstate=error.sqlstate or UNABLE_TO_CONNECT,
            detail=_scrub(error.detail, self.target.password) if error.detail else None,
        )

    def _unexpected(self, message: m.Message) -> UpstreamError:
        return UpstreamError(
            f"unexpected {type(message).__name__} from the upstream server while {self.phase}",
            sqlstate=PROTOCOL_VIOLATION,
        )

    def _password(self) -> str:
        if self.target.password is None:
            raise UpstreamError(
                f"the upstream server requires a password for role {self.target.user!r} "
                "and none is configured",
                sqlstate=INVALID_PASSWORD,
            )
        return self.target.password

    async def _authenticate(self, encrypted: bool) -> str:
        """Answer the server's authentication requests; the method used once AuthenticationOk arrives."""
        method = "trust"
        while True:
            message = await self._receive()
            if isinstance(message, m.AuthenticationOk):
                return method
            if isinstance(message, m.ErrorResponse):
                raise self._server_error(message)
            if isinstance(message, m.NegotiateProtocolVersion | m.NoticeResponse):
                # We ask for 3.0 with no _pq_ options, so a negotiation changes nothing.
                continue
            if method != "trust":
                # One method per login: a second request is a server (or a man in the middle)
                # trying another way to get the password out of us.
                raise self._unexpected(message)
            if isinstance(message, m.AuthenticationCleartextPassword):
                method = "password"
                self._send(m.PasswordMessage(self._password()))
            elif isinstance(message, m.AuthenticationMD5Password):
                method = "md5"
                self._send(m.PasswordMessage(_md5_password(self.target.user, self._password(), message.salt)))
            elif isinstance(message, m.AuthenticationSASL):
                method = await self._scram(message.mechanisms, encrypted)
            else:
                raise self._unexpected(message)

    async def _scram(self, offered: tuple[str, ...], encrypted: bool) -> str:
        password = self._password()
        binding: tuple[str, ssl.SSLObject] | None = None
        if encrypted:
            assert self.writer is not None
            ssl_object = self.writer.get_extra_info("ssl_object")
            if isinstance(ssl_object, ssl.SSLObject):
                binding = ("tls-server-end-point", ssl_object)
        mechanisms = [
            name
            for name in ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")
            if name in offered and (binding is not None or not name.endswith("-PLUS"))
        ]
        if not mechanisms:
            raise UpstreamError(
                f"the upstream server offers no SASL mechanism Gatehouse supports ({', '.join(offered)})",
                sqlstate=INVALID_AUTHORIZATION,
            )
        try:
            # With a binding and a server that offers only SCRAM-SHA-256, scramp sends the "y"
            # flag (RFC 5802 section 6): a server that does support binding then detects that
            # someone stripped -PLUS from the list.
            client = scramp.ScramClient(mechanisms, self.target.user, password, channel_binding=binding)
            self._send(m.SASLInitialResponse(client.mechanism_name, client.get_client_first().encode()))
            challenge = await self._receive()
            if isinstance(challenge, m.ErrorResponse):
                raise self._server_error(challenge)
            if not isinstance(challenge, m.AuthenticationSASLContinue):
                raise self._unexpected(challenge)
            client.set_server_first(bytes(challenge.data).decode("utf-8"))
            self._send(m.SASLResponse(client.get_client_final().encode()))
            final = await self._receive()
            if isinstance(final, m.ErrorResponse):
                raise self._server_error(final)
            if not isinstance(final, m.AuthenticationSASLFinal):
                raise self._unexpected(final)
            # Mutual authentication: raises unless the server proved it holds the verifier.
            client.set_server_final(bytes(final.data).decode("utf-8"))
        except (scramp.ScramException, UnicodeDecodeError) as exc:
            raise UpstreamError(
                f"SCRAM authentication with the upstream server failed: {_scrub(str(exc), password)}",
                sqlstate=INVALID_AUTHORIZATION,
            ) from exc
        return str(client.mechanism_name)

    async def _until_ready(self, method: str, encrypted: bool) -> Upstream:
        assert self.reader is not None and self.writer is not None
        received: list[m.Message] = []
        parameters: dict[str, str] = {}
        pid, secret = 0, b""
        while True:
            message = await self._receive()
            if isinstance(message, m.ErrorResponse):
                raise self._server_error(message)
            if isinstance(message, m.ParameterStatus):
                parameters[message.name] = message.value
            elif isinstance(message, m.BackendKeyData):
                pid, secret = message.process_id, bytes(message.secret_key)
            elif not isinstance(message, m.NoticeResponse | m.ReadyForQuery):
                raise self._unexpected(message)
            received.append(message)
            if isinstance(message, m.ReadyForQuery):
                break
        received += self._pending
        self._pending = []
        return Upstream(
            reader=self.reader,
            writer=self.writer,
            parser=self.parser,
            backend_pid=pid,
            backend_secret=secret,
            parameters=parameters,
            startup_messages=received,
            auth_method=method,
            tls=encrypted,
        )


# ---------------------------------------------------------------- TCP and TLS


async def _open(
    host: str, port: int, tls: str, parser: BackendParser | None = None, *, ca_pem: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """A connected stream, TLS-wrapped when negotiated; the bool says whether it is encrypted."""
    settings = PostgresTls(tls, ca_pem)  # raises ValueError for an unknown mode
    # Before any byte is sent: a registry item with a broken ca_pem fails closed, and clearly.
    context = _client_context(settings)
    sock = await _tcp_connect(host, port)
    try:
        negotiated = False
        if settings.attempted:
            negotiated = await _negotiate_ssl(
                sock, parser or BackendParser(max_message_size=MAX_STARTUP_MESSAGE)
            )
            if not negotiated and settings.required:
                raise UpstreamError(
                    f"the upstream server {host}:{port} does not support SSL, but SSL is required "
                    f"(tls={settings.mode})",
                    sqlstate=UNABLE_TO_CONNECT,
                )
        try:
            reader, writer = await asyncio.open_connection(
                sock=sock,
                ssl=context if negotiated else None,
                server_hostname=settings.server_hostname(host) if negotiated else None,
                limit=_READ_SIZE,
            )
        except ssl.SSLCertVerificationError as exc:
            log.warning("upstream %s:%s: TLS verification failed: %s", host, port, exc.verify_message)
            raise UpstreamError(
                f"the upstream server {host}:{port} was refused: {verification_failure(exc)} "
                "(tls=verify-full); nothing was sent to it",
                sqlstate=UNABLE_TO_CONNECT,
            ) from exc
        except (ssl.SSLError, ConnectionError) as exc:
            raise UpstreamError(
                f"TLS handshake with the upstream server {host}:{port} failed: {exc}",
                sqlstate=UNABLE_TO_CONNECT,
            ) from exc
    except BaseException:
        sock.close()
        raise
    return reader, writer, negotiated


async def _tcp_connect(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UpstreamError(
            f"could not resolve the upstream host {host!r}: {exc}", sqlstate=UNABLE_TO_CONNECT
        ) from exc
    failures: list[str] = []
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            # A load balancer or NAT between proxy and database drops idle flows silently.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            failures.append(f"{address[0]}: {exc.strerror or exc}")
        except BaseException:
            sock.close()
            raise
    raise UpstreamError(
        f"could not connect to the upstream server {host}:{port} ({'; '.join(failures)})",
        sqlstate=UNABLE_TO_CONNECT,
    )


async def _negotiate_ssl(sock: socket.socket, parser: BackendParser) -> bool:
    """Send SSLRequest; True when the server agreed to TLS."""
    loop = asyncio.get_running_loop()
    parser.expect_ssl_response()
    try:
        await loop.sock_sendall(sock, m.SSLRequest().encode())
        answer = await loop.sock_recv(sock, 1)
    except OSError as exc:
        raise UpstreamError(
            f"the upstream server dropped the SSL request: {exc}", sqlstate=CONNECTION_FAILURE
        ) from exc
    if not answer:
        raise UpstreamError(
            "the upstream server closed the connection at the SSL request", sqlstate=CONNECTION_FAILURE
        )
    try:
        messages = parser.feed(answer)
    except ProtocolError as exc:
        raise UpstreamError(
            f"the upstream server broke the protocol: {exc.message}", sqlstate=exc.sqlstate
        ) from exc
    if not messages:
        # An ErrorResponse instead of S or N: a server from before SSL negotiation (7.0).
        raise UpstreamError(
            "the upstream server does not understand the SSL request", sqlstate=PROTOCOL_VIOLATION
        )
    (response,) = messages
    assert isinstance(response, m.SSLResponse)
    if response.accepted and _has_pending(sock):
        raise UpstreamError(
            "the upstream server sent unencrypted data after accepting SSL", sqlstate=PROTOCOL_VIOLATION
        )
    return response.accepted


def _has_pending(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False


def _client_context(settings: PostgresTls) -> ssl.SSLContext | None:
    # The shared, cached contexts (gatehouse.targets.postgres_tls). Below verify-full an active
    # man in the middle is not detected; SCRAM-PLUS still stops it from relaying the login.
    if not settings.attempted:
        return None
    try:
        return settings.context()
    except ValueError as exc:
        raise UpstreamError(
            f"the connection's TLS settings are unusable: {exc}", sqlstate=UNABLE_TO_CONNECT
        ) from None


# ---------------------------------------------------------------- helpers


def _md5_password(user: str, password: str, salt: bytes) -> str:
    # PostgreSQL's md5 method (protocol docs, AuthenticationMD5Password): the scheme is fixed by
    # the server, not chosen here, hence usedforsecurity=False for FIPS builds of OpenSSL.
    inner = hashlib.md5((password + user).encode("utf-8"), usedforsecurity=False).hexdigest()
    return "md5" + hashlib.md5(inner.encode("ascii") + salt, usedforsecurity=False).hexdigest()


def _auth_method_name(codec_message: str) -> str:
    # The codec names the request by its code ("unsupported authentication request 7").
    code = codec_message.rpartition(" ")[2]
    return _UNSUPPORTED_AUTH.get(code, codec_message)


def _scrub(text: str, password: str | None) -> str:
    if password and password in text:
        return text.replace(password, "********")
    return text
