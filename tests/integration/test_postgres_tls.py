"""TLS to a Postgres target, libpq's sslmode semantics, on both login paths.

The API path (gatehouse.targets.postgres, which the privilege check shares) and the proxy's upstream
(gatehouse.proxy.postgres.upstream) are tested against the same things:

- a real PostgreSQL server with TLS on and a certificate for `localhost` only, signed by a CA of
  this module's own (the "right" CA);
- the session's `postgres` fixture, a server without TLS;
- an impostor: a loopback listener that does what an attacker in the path would do. It agrees to
  TLS with a certificate of its own, asks for the password in cleartext, and keeps what it gets.
  Once with a certificate from another CA, once with one from the right CA for another host (what
  any other database whose certificate chains to the same bundle, e.g. RDS's, could present).
  Against `require` it collects the password, which shows the impostor works; against
  `verify-full` it must get nothing past the handshake.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from moto import mock_aws

from gatehouse.admin.connections import ConnectionOptions, plan_connection
from gatehouse.admin.exceptions import RegistrationError
from gatehouse.admin.policies import PolicyFacts
from gatehouse.exceptions import TargetUnavailableError
from gatehouse.local.pki import Authority, authority
from gatehouse.local.postgres import PostgresInfo, ThrowawayPostgres
from gatehouse.models import Connection, Statement, StatementClass
from gatehouse.proxy.postgres import messages as m
from gatehouse.proxy.postgres.upstream import UpstreamError, UpstreamTarget, connect_upstream
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres import PostgresExecutor, connect
from gatehouse.targets.postgres_privileges import check_connection
from gatehouse.targets.postgres_tls import client_context
from tests.integration.aio import event_loop_policy, run

T = TypeVar("T")
ROLE = "tls_agent"
SECRET_ID = "tls-conn"
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@pytest.fixture(scope="module")
def right_ca() -> Authority:
    return authority("Gatehouse test database CA")


@pytest.fixture(scope="module")
def other_ca() -> Authority:
    return authority("An attacker's CA")


# ---------------------------------------------------------------- servers


@dataclass(frozen=True)
class TlsServer:
    info: PostgresInfo
    password: str


@pytest.fixture(scope="module")
def tls_server(right_ca: Authority) -> Iterator[TlsServer]:
    """A real PostgreSQL with TLS on; its certificate names `localhost` only (no IP address)."""
    server = ThrowawayPostgres()
    info = server.start()
    try:
        password = secrets.token_urlsafe(18)
        db = info.connect()
        try:
            db.run(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
            data_dir = Path(db.run("SHOW data_directory")[0][0])
            owner = data_dir.stat()
            cert_pem, key_pem = right_ca.issue(["localhost"])
            for filename, content in {"server.crt": cert_pem, "server.key": key_pem}.items():
                path = data_dir / filename
                path.write_bytes(content)
                # PostgreSQL refuses a key file that others can read, or that its user cannot.
                os.chown(path, owner.st_uid, owner.st_gid)
                path.chmod(0o600)
            db.run("ALTER SYSTEM SET ssl = on")
            db.run("ALTER SYSTEM SET ssl_cert_file = 'server.crt'")
            db.run("ALTER SYSTEM SET ssl_key_file = 'server.key'")
            db.run("SELECT pg_reload_conf()")
        finally:
            db.close()
        deadline = time.monotonic() + 10
        while True:
            db = info.connect()
            try:
                if db.run("SHOW ssl") == [["on"]]:
                    break
            finally:
                db.close()
            assert time.monotonic() < deadline, "the server did not reload its configuration"
            time.sleep(0.05)
        yield TlsServer(info, password)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain_role(postgres: PostgresInfo) -> Iterator[str]:
    """A login role on the session's server without TLS; its password is returned."""
    password = secrets.token_urlsafe(18)
    admin = postgres.connect()
    try:
        admin.run(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
        yield password
    finally:
        admin.run(f"DROP ROLE IF EXISTS {ROLE}")
        admin.close()


@dataclass
class Impostor:
    """A listener that plays the database: TLS with its own certificate, then a cleartext password request."""

    cert_pem: bytes
    key_pem: bytes
    port: int = 0
    handled: int = 0
    handshakes_failed: int = 0
    startups: list[bytes] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)
    _done: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Impostor:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "c.pem"), Path(tmp, "k.pem")
            cert.write_bytes(self.cert_pem)
            key.write_bytes(self.key_pem)
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(cert, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def wait_handled(self, count: int) -> None:
        """Until `count` connections were handled to the end (so what they sent is recorded)."""
        with self._done:
            assert self._done.wait_for(lambda: self.handled >= count, timeout=10), "impostor not reached"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            try:
                self._handle(conn)
            finally:
                conn.close()
                with self._done:
                    self.handled += 1
                    self._done.notify_all()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        if _recv_exact(conn, 8) != SSL_REQUEST:
            return
        conn.sendall(b"S")
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_failed += 1
            return
        with tls:
            try:
                self.startups.append(_read_message(tls, typed=False))
                tls.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
                self.passwords.append(_read_message(tls, typed=True).rstrip(b"\0").decode())
                refusal = m.ErrorResponse.build("28P01", "password authentication failed", severity="FATAL")
                tls.sendall(refusal.encode())
            except (ssl.SSLError, OSError, EOFError):
                return


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _read_message(sock: socket.socket, *, typed: bool) -> bytes:
    if typed:
        _recv_exact(sock, 1)
    (length,) = struct.unpack("!i", _recv_exact(sock, 4))
    return _recv_exact(sock, length - 4)


@pytest.fixture
def impostor_other_ca(other_ca: Authority) -> Iterator[Impostor]:
    """Everything right but the CA: a certificate for localhost and 127.0.0.1 from another CA."""
    with Impostor(*other_ca.issue(["localhost"], ["127.0.0.1"])) as impostor:
        yield impostor


@pytest.fixture
def impostor_other_host(right_ca: Authority) -> Iterator[Impostor]:
    """The right CA, but a certificate for another database."""
    with Impostor(*right_ca.issue(["other-db.example"])) as impostor:
        yield impostor


# ---------------------------------------------------------------- the API path


@pytest.fixture
def store(aws_env: None, tls_server: TlsServer, plain_role: str) -> Iterator[SecretStore]:
    """Secrets Manager (moto) holding the role's password; both servers share the role name."""
    with mock_aws():
        sm = boto3.client("secretsmanager")
        # The TLS server's password: the impostor tests only check that it never reaches them.
        sm.create_secret(
            Name=SECRET_ID, SecretString=json.dumps({"username": ROLE, "password": tls_server.password})
        )
        sm.create_secret(Name="plain", SecretString=json.dumps({"username": ROLE, "password": plain_role}))
        yield SecretStore(sm)


def conn(host: str, port: int, secret_id: str = SECRET_ID, **attributes: Any) -> Connection:
    return Connection(
        name="orders",
        kind="postgres",
        host=host,
        port=port,
        database="postgres",
        secret_id=secret_id,
        attributes=attributes,
    )


def ssl_in_use(con: Any) -> bool:
    try:
        return bool(con.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[0][0])
    finally:
        con.close()


def test_api_verify_full_with_the_right_ca_logs_in_over_tls(
    store: SecretStore, tls_server: TlsServer, right_ca: Authority
) -> None:
    connection = conn("localhost", tls_server.info.port, tls="verify-full", ca_pem=right_ca.pem)
    assert ssl_in_use(connect(connection, store, timeout_s=5)) is True


def test_api_verify_full_refuses_another_ca_before_the_password_is_sent(
    store: SecretStore, impostor_other_ca: Impostor, right_ca: Authority
) -> None:
    # Given an impostor that collects passwords: `require` hands it over (the threat)...
    with pytest.raises(TargetUnavailableError):
        connect(conn("localhost", impostor_other_ca.port, tls="require"), store, timeout_s=5)
    impostor_other_ca.wait_handled(1)
    assert len(impostor_other_ca.passwords) == 1
    # ...verify-full against it: refused at the handshake, nothing past it reaches the impostor.
    connection = conn("localhost", impostor_other_ca.port, tls="verify-full", ca_pem=right_ca.pem)
    with pytest.raises(TargetUnavailableError) as caught:
        connect(connection, store, timeout_s=5)
    impostor_other_ca.wait_handled(2)
    assert "did not verify against the CA bundle" in caught.value.message
    assert caught.value.status == 503
    assert impostor_other_ca.handshakes_failed == 1
    assert len(impostor_other_ca.startups) == 1 and len(impostor_other_ca.passwords) == 1


def test_api_verify_full_refuses_a_certificate_of_the_right_ca_for_another_host(
    store: SecretStore, impostor_other_host: Impostor, right_ca: Authority
) -> None:
    connection = conn("localhost", impostor_other_host.port, tls="verify-full", ca_pem=right_ca.pem)
    with pytest.raises(TargetUnavailableError, match="not issued for the connection's host name"):
        connect(connection, store, timeout_s=5)
    impostor_other_host.wait_handled(1)
    assert impostor_other_host.startups == [] and impostor_other_host.passwords == []


def test_api_verify_full_checks_the_address_too(
    store: SecretStore, tls_server: TlsServer, right_ca: Authority
) -> None:
    # The real server's certificate names localhost, not 127.0.0.1: reached by address, refused.
    connection = conn("127.0.0.1", tls_server.info.port, tls="verify-full", ca_pem=right_ca.pem)
    with pytest.raises(TargetUnavailableError, match="not issued for the connection's host name"):
        connect(connection, store, timeout_s=5)


def test_api_verify_full_without_a_bundle_uses_the_system_store(
    store: SecretStore, tls_server: TlsServer
) -> None:
    # The system store does not know this module's CA.
    connection = conn("localhost", tls_server.info.port, tls="verify-full")
    with pytest.raises(TargetUnavailableError, match="did not verify"):
        connect(connection, store, timeout_s=5)


def test_api_refusal_runs_nothing(store: SecretStore, tls_server: TlsServer, other_ca: Authority) -> None:
    connection = conn("localhost", tls_server.info.port, tls="verify-full", ca_pem=other_ca.pem)
    with pytest.raises(TargetUnavailableError) as caught:
        PostgresExecutor(store).run(
            connection,
            [Statement("SELECT 1", StatementClass.READ, command="select")],
            timeout_ms=2000,
            max_rows=10,
        )
    # The API answers 503 target_unavailable, as for any login failure; the statement never ran.
    assert (caught.value.status, caught.value.code) == (503, "target_unavailable")
    assert "did not verify" in caught.value.message


def test_api_require_refuses_a_server_without_tls(store: SecretStore, postgres: PostgresInfo) -> None:
    for mode in ("require", "verify-full"):
        connection = conn(postgres.host, postgres.port, secret_id="plain", tls=mode)
        with pytest.raises(TargetUnavailableError, match=f"does not accept TLS.*tls={mode}"):
            connect(connection, store, timeout_s=5)


def test_api_prefer_is_unchanged(store: SecretStore, postgres: PostgresInfo, tls_server: TlsServer) -> None:
    # Plaintext when the server has no TLS; TLS, certificate unchecked, when it has.
    assert (
        ssl_in_use(connect(conn(postgres.host, postgres.port, secret_id="plain"), store, timeout_s=5))
        is False
    )
    assert ssl_in_use(connect(conn("127.0.0.1", tls_server.info.port), store, timeout_s=5)) is True
    disabled = conn("localhost", tls_server.info.port, tls="disable")
    assert ssl_in_use(connect(disabled, store, timeout_s=5)) is False


def test_api_an_unusable_ca_pem_fails_closed(store: SecretStore, tls_server: TlsServer) -> None:
    connection = conn("localhost", tls_server.info.port, tls="verify-full", ca_pem="not a certificate")
    with pytest.raises(TargetUnavailableError, match="unusable TLS settings"):
        connect(connection, store, timeout_s=5)


def test_the_privilege_check_logs_in_verified(
    store: SecretStore, tls_server: TlsServer, right_ca: Authority, other_ca: Authority
) -> None:
    good = conn("localhost", tls_server.info.port, tls="verify-full", ca_pem=right_ca.pem)
    assert check_connection(good, store).role == ROLE
    bad = conn("localhost", tls_server.info.port, tls="verify-full", ca_pem=other_ca.pem)
    with pytest.raises(TargetUnavailableError, match="did not verify"):
        check_connection(bad, store)


def test_contexts_are_built_once_per_mode_and_bundle(right_ca: Authority, other_ca: Authority) -> None:
    assert client_context("verify-full", right_ca.pem) is client_context("verify-full", right_ca.pem)
    assert client_context("verify-full", right_ca.pem) is not client_context("verify-full", other_ca.pem)
    assert client_context("verify-full", right_ca.pem).minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client_context("require").verify_mode == ssl.CERT_NONE


# ---------------------------------------------------------------- registration


FACTS = PolicyFacts(approval_groups=frozenset(), env_values=frozenset())


def options(**overrides: Any) -> ConnectionOptions:
    fields: dict[str, Any] = {
        "name": "orders",
        "kind": "postgres",
        "host": "db.internal",
        "username": ROLE,
        "secret": "pw",
        "attributes": ("tls=verify-full",),
    }
    fields.update(overrides)
    return ConnectionOptions(**fields)


def test_registration_stores_the_bundle_for_verify_full(right_ca: Authority) -> None:
    plan = plan_connection(options(ca_pem=right_ca.pem), FACTS)
    assert plan.attributes == {"tls": "verify-full", "ca_pem": right_ca.pem}
    # What is stored is what both login paths read.
    assert plan.connection(secret_id="s").attributes["ca_pem"] == right_ca.pem


def test_registration_refuses_a_bundle_that_would_not_be_checked(right_ca: Authority) -> None:
    with pytest.raises(RegistrationError, match="tls=verify-full only"):
        plan_connection(options(ca_pem=right_ca.pem, attributes=("tls=require",)), FACTS)
    with pytest.raises(RegistrationError, match="no valid PEM certificate"):
        plan_connection(
            options(ca_pem="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), FACTS
        )
    with pytest.raises(RegistrationError, match="tls must be one of disable, prefer, require, verify-full"):
        plan_connection(options(attributes=("tls=verify-ca",)), FACTS)
    with pytest.raises(RegistrationError, match="set by --ca-file"):
        plan_connection(options(attributes=("tls=verify-full", f"ca_pem={right_ca.pem}")), FACTS)


# ---------------------------------------------------------------- the proxy's upstream


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """The proxy runs on uvloop, whose TLS is its own code: every proxy test on both loops."""
    with event_loop_policy(request.param):
        yield request.param


def target(host: str, port: int, password: str, **overrides: Any) -> UpstreamTarget:
    return UpstreamTarget(
        host=host, port=port, database="postgres", user=ROLE, password=password, **overrides
    )


async def ssl_of(t: UpstreamTarget) -> bool:
    upstream = await connect_upstream(t, {})
    await upstream.close()
    return upstream.tls


async def fails(t: UpstreamTarget) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await connect_upstream(t, {})
    return caught.value


def test_proxy_verify_full_with_the_right_ca_logs_in_over_tls(
    loop_kind: str, tls_server: TlsServer, right_ca: Authority
) -> None:
    t = target("localhost", tls_server.info.port, tls_server.password, tls="verify-full", ca_pem=right_ca.pem)
    assert run(ssl_of(t)) is True


def test_proxy_verify_full_refuses_another_ca_before_the_password_is_sent(
    loop_kind: str, impostor_other_ca: Impostor, right_ca: Authority
) -> None:
    # The control: `require` gives the impostor the password.
    leaked = run(fails(target("localhost", impostor_other_ca.port, "s3cret", tls="require")))
    impostor_other_ca.wait_handled(1)
    assert leaked.sqlstate == "28P01" and impostor_other_ca.passwords == ["s3cret"]
    t = target("localhost", impostor_other_ca.port, "s3cret", tls="verify-full", ca_pem=right_ca.pem)
    error = run(fails(t))
    impostor_other_ca.wait_handled(2)
    assert error.sqlstate == "08001"
    assert "did not verify against the CA bundle" in error.message
    # What the proxy's client receives: a FATAL ErrorResponse with that SQLSTATE.
    response = error.error_response()
    assert response.fields["C"] == "08001" and response.fields["S"] == "FATAL"
    assert impostor_other_ca.handshakes_failed == 1
    assert len(impostor_other_ca.startups) == 1 and impostor_other_ca.passwords == ["s3cret"]


def test_proxy_verify_full_refuses_a_certificate_of_the_right_ca_for_another_host(
    loop_kind: str, impostor_other_host: Impostor, right_ca: Authority
) -> None:
    t = target("localhost", impostor_other_host.port, "s3cret", tls="verify-full", ca_pem=right_ca.pem)
    error = run(fails(t))
    impostor_other_host.wait_handled(1)
    assert error.sqlstate == "08001" and "not issued for the connection's host name" in error.message
    assert impostor_other_host.startups == [] and impostor_other_host.passwords == []


def test_proxy_verify_full_checks_the_address_too(
    loop_kind: str, tls_server: TlsServer, right_ca: Authority
) -> None:
    t = target("127.0.0.1", tls_server.info.port, tls_server.password, tls="verify-full", ca_pem=right_ca.pem)
    assert "not issued for the connection's host name" in run(fails(t)).message


def test_proxy_require_refuses_a_server_without_tls(
    loop_kind: str, postgres: PostgresInfo, plain_role: str
) -> None:
    for mode in ("require", "verify-full"):
        error = run(fails(target(postgres.host, postgres.port, plain_role, tls=mode)))
        assert error.sqlstate == "08001" and f"SSL is required (tls={mode})" in error.message


def test_proxy_prefer_is_unchanged(
    loop_kind: str, postgres: PostgresInfo, plain_role: str, tls_server: TlsServer
) -> None:
    assert run(ssl_of(target(postgres.host, postgres.port, plain_role))) is False
    assert run(ssl_of(target("127.0.0.1", tls_server.info.port, tls_server.password))) is True


def test_proxy_an_unusable_ca_pem_fails_closed(loop_kind: str, tls_server: TlsServer) -> None:
    t = target("localhost", tls_server.info.port, tls_server.password, tls="verify-full", ca_pem="junk")
    error = run(fails(t))
    assert error.sqlstate == "08001" and "unusable" in error.message
