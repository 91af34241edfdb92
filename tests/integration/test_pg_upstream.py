"""The proxy's upstream login against real PostgreSQL servers.

A throwaway cluster of this module's own has one role per authentication method in its
pg_hba.conf (trust, password, md5, scram-sha-256, gss, reject, a hostssl-only role) and TLS on
with a self-signed certificate; the session's `postgres` fixture is a server without TLS. A few
tests need a server that misbehaves, which no real PostgreSQL does on request: those use a
loopback socket that sends exactly the bytes under test.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gatehouse.local.postgres import PostgresInfo, ThrowawayPostgres, free_port
from gatehouse.proxy.postgres import messages as m
from gatehouse.proxy.postgres.upstream import (
    Upstream,
    UpstreamError,
    UpstreamTarget,
    cancel_upstream,
    connect_upstream,
)
from tests.integration.aio import event_loop_policy, run

T = TypeVar("T")

ROLES = ("md5_user", "scram_user", "clear_user", "tls_only_user")
HBA = """\
local all all scram-sha-256
host all trust_user 127.0.0.1/32 trust
host all md5_user 127.0.0.1/32 md5
host all scram_user 127.0.0.1/32 scram-sha-256
host all clear_user 127.0.0.1/32 password
host all gss_user 127.0.0.1/32 gss
host all reject_user 127.0.0.1/32 reject
hostssl all tls_only_user 127.0.0.1/32 scram-sha-256
host all gatehouse_admin 127.0.0.1/32 scram-sha-256
"""


@dataclass(frozen=True)
class Cluster:
    admin: PostgresInfo
    passwords: dict[str, str]

    def target(self, user: str, **overrides: Any) -> UpstreamTarget:
        fields: dict[str, Any] = {
            "host": self.admin.host,
            "port": self.admin.port,
            "database": "postgres",
            "user": user,
            "password": self.passwords.get(user),
            "tls": "disable",
        }
        fields.update(overrides)
        return UpstreamTarget(**fields)


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test on both loops: the proxy runs on uvloop, whose sockets and TLS are its own code."""
    with event_loop_policy(request.param):
        yield request.param


def _self_signed(directory: Path, owner: os.stat_result) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    files = {
        "server.crt": cert.public_bytes(serialization.Encoding.PEM),
        "server.key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    for filename, content in files.items():
        path = directory / filename
        path.write_bytes(content)
        # PostgreSQL refuses a key file that others can read, or that its user cannot.
        os.chown(path, owner.st_uid, owner.st_gid)
        path.chmod(0o600)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    server = ThrowawayPostgres()
    admin = server.start()
    try:
        passwords = {role: secrets.token_urlsafe(18) for role in ROLES}
        db = admin.connect()
        try:
            db.run("CREATE ROLE trust_user LOGIN")
            db.run("CREATE ROLE gss_user LOGIN")
            db.run("CREATE ROLE reject_user LOGIN")
            for role, password in passwords.items():
                # md5 verifiers for the md5 role: PostgreSQL answers an md5 pg_hba line with a
                # SCRAM exchange when the stored password is a SCRAM verifier.
                db.run(f"SET password_encryption = '{'md5' if role == 'md5_user' else 'scram-sha-256'}'")
                db.run(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            data_dir = Path(db.run("SHOW data_directory")[0][0])
            hba_file = Path(db.run("SHOW hba_file")[0][0])
            # Rewritten in place, so the file keeps its owner (the server's user) when we are root.
            hba_file.write_text(HBA)
            _self_signed(data_dir, data_dir.stat())
            db.run("ALTER SYSTEM SET ssl = on")
            db.run("ALTER SYSTEM SET ssl_cert_file = 'server.crt'")
            db.run("ALTER SYSTEM SET ssl_key_file = 'server.key'")
            db.run("SELECT pg_reload_conf()")
        finally:
            db.close()
        # A reload reaches each backend in its own time: wait for a session that sees TLS on
        # (pg_hba_file_rules judges hostssl lines by the asking session's settings).
        deadline = time.monotonic() + 10
        while True:
            db = admin.connect()
            try:
                if db.run("SHOW ssl") == [["on"]]:
                    errors = db.run(
                        "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
                    )
                    assert errors == [], errors
                    break
            finally:
                db.close()
            assert time.monotonic() < deadline, "the server did not reload its configuration"
            time.sleep(0.05)
        yield Cluster(admin, passwords)
    finally:
        server.stop()


async def query(upstream: Upstream, sql: str) -> list[m.Message]:
    """Everything the server answers to one simple Query, through its ReadyForQuery."""
    upstream.writer.write(m.Query(sql).encode())
    answer: list[m.Message] = []
    while True:
        data = await upstream.reader.read(65536)
        assert data, "the upstream closed the connection"
        for message in upstream.parser.feed(data):
            answer.append(message)
            if isinstance(message, m.ReadyForQuery):
                return answer


def rows(answer: list[m.Message]) -> list[list[str | None]]:
    return [
        [None if v is None else bytes(v).decode() for v in msg.values]
        for msg in answer
        if isinstance(msg, m.DataRow)
    ]


async def login_and_ask(target: UpstreamTarget, sql: str) -> tuple[Upstream, list[list[str | None]]]:
    upstream = await connect_upstream(target, {})
    try:
        return upstream, rows(await query(upstream, sql))
    finally:
        await upstream.close()


def expect_error(coro: Awaitable[Any]) -> UpstreamError:
    async def attempt() -> UpstreamError:
        with pytest.raises(UpstreamError) as caught:
            await coro
        return caught.value

    return run(attempt())


# ---------------------------------------------------------------- each authentication method


@pytest.mark.parametrize(
    ("user", "method"),
    [
        ("trust_user", "trust"),
        ("clear_user", "password"),
        ("md5_user", "md5"),
        ("scram_user", "SCRAM-SHA-256"),
    ],
)
def test_each_method_logs_in_and_the_connection_answers_a_query(
    cluster: Cluster, user: str, method: str
) -> None:
    upstream, answer = run(
        login_and_ask(
            cluster.target(user), "SELECT current_user, pg_backend_pid(), current_setting('client_encoding')"
        )
    )
    assert upstream.auth_method == method
    assert answer == [[user, str(upstream.backend_pid), "UTF8"]]
    assert upstream.tls is False


def test_startup_hands_over_what_the_proxy_replays_to_its_client(cluster: Cluster) -> None:
    async def scenario() -> Upstream:
        upstream = await connect_upstream(
            cluster.target("scram_user"),
            # The target decides who and where: a client's own user and database are overridden.
            {"application_name": "gatehouse-test", "user": "gatehouse_admin", "database": "template1"},
        )
        try:
            answer = rows(
                await query(
                    upstream, "SELECT current_user, current_database(), current_setting('application_name')"
                )
            )
            assert answer == [["scram_user", "postgres", "gatehouse-test"]]
        finally:
            await upstream.close()
        return upstream

    upstream = run(scenario())
    statuses = [msg for msg in upstream.startup_messages if isinstance(msg, m.ParameterStatus)]
    assert {s.name: s.value for s in statuses} == upstream.parameters
    assert upstream.parameters["application_name"] == "gatehouse-test"
    assert upstream.parameters["server_version"].startswith(("15", "16", "17"))
    assert upstream.parameters["client_encoding"] == "UTF8"
    keys = [msg for msg in upstream.startup_messages if isinstance(msg, m.BackendKeyData)]
    assert keys == [m.BackendKeyData(upstream.backend_pid, upstream.backend_secret)]
    assert upstream.startup_messages[-1] == m.ReadyForQuery("I")
    assert not any(type(msg).__name__.startswith("Authentication") for msg in upstream.startup_messages)


def test_close_ends_the_backend_and_can_be_called_twice(cluster: Cluster) -> None:
    async def scenario() -> int:
        upstream = await connect_upstream(cluster.target("trust_user"), {})
        await upstream.close()
        await upstream.close()
        return upstream.backend_pid

    pid = run(scenario())
    db = cluster.admin.connect()
    try:
        deadline = time.monotonic() + 5
        while db.run("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid", pid=pid) != [[0]]:
            assert time.monotonic() < deadline, "the backend outlived close()"
            time.sleep(0.05)
    finally:
        db.close()


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("user", ["md5_user", "scram_user", "clear_user"])
def test_a_wrong_password_is_28P01_and_the_password_is_nowhere_in_the_error(
    cluster: Cluster, user: str
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(12)
    error = expect_error(connect_upstream(cluster.target(user, password=wrong), {}))
    assert error.sqlstate == "28P01"
    assert "password authentication failed" in error.message
    for text in (str(error), repr(error), error.message, str(error.detail), repr(error.error_response())):
        assert wrong not in text
        assert cluster.passwords[user] not in text


def test_no_password_configured_for_a_role_that_needs_one(cluster: Cluster) -> None:
    error = expect_error(connect_upstream(cluster.target("scram_user", password=None), {}))
    assert error.sqlstate == "28P01"
    assert "none is configured" in error.message


def test_the_target_repr_hides_the_password(cluster: Cluster) -> None:
    target = cluster.target("scram_user")
    assert cluster.passwords["scram_user"] not in repr(target)
    assert cluster.passwords["scram_user"] not in str(target)


def test_gss_is_refused_as_an_unsupported_method(cluster: Cluster) -> None:
    error = expect_error(connect_upstream(cluster.target("gss_user"), {}))
    assert error.sqlstate == "28000"
    assert "authentication method Gatehouse does not support (GSSAPI)" in error.message


def test_the_servers_own_refusals_keep_their_sqlstate(cluster: Cluster) -> None:
    rejected = expect_error(connect_upstream(cluster.target("reject_user"), {}))
    assert (rejected.sqlstate, "rejects connection" in rejected.message) == ("28000", True)
    no_database = expect_error(connect_upstream(cluster.target("trust_user", database="no_such_db"), {}))
    assert no_database.sqlstate == "3D000"
    assert '"no_such_db" does not exist' in no_database.message
    assert no_database.error_response().severity == "FATAL"


def test_an_unreachable_port_is_08001_at_once() -> None:
    target = UpstreamTarget("127.0.0.1", free_port(), "postgres", "nobody", None, tls="prefer")
    started = time.monotonic()
    error = expect_error(connect_upstream(target, {}))
    assert error.sqlstate == "08001"
    assert "could not connect" in error.message
    assert time.monotonic() - started < target.connect_timeout_s


# ---------------------------------------------------------------- cancel


def test_cancel_upstream_cancels_a_running_statement(cluster: Cluster) -> None:
    async def scenario() -> tuple[list[m.Message], float]:
        upstream = await connect_upstream(cluster.target("scram_user"), {})
        try:
            started = time.monotonic()
            running = asyncio.create_task(query(upstream, "SELECT pg_sleep(30)"))
            await asyncio.sleep(0.3)
            await cancel_upstream(
                cluster.admin.host, cluster.admin.port, upstream.backend_pid, upstream.backend_secret
            )
            answer = await running
            return answer, time.monotonic() - started
        finally:
            await upstream.close()

    answer, elapsed = run(scenario())
    errors = [msg for msg in answer if isinstance(msg, m.ErrorResponse)]
    assert [e.sqlstate for e in errors] == ["57014"]
    assert "canceling statement due to user request" in errors[0].message
    assert elapsed < 10


def test_a_cancel_with_the_wrong_key_cancels_nothing(cluster: Cluster) -> None:
    async def scenario() -> list[m.Message]:
        upstream = await connect_upstream(cluster.target("trust_user"), {})
        try:
            running = asyncio.create_task(query(upstream, "SELECT pg_sleep(0.6), 'finished'"))
            await asyncio.sleep(0.2)
            wrong = bytes(b ^ 0xFF for b in upstream.backend_secret)
            await cancel_upstream(
                cluster.admin.host, cluster.admin.port, upstream.backend_pid, wrong, tls="require"
            )
            return await running
        finally:
            await upstream.close()

    assert rows(run(scenario())) == [["", "finished"]]


# ---------------------------------------------------------------- TLS


def test_require_against_a_server_without_tls_fails(postgres: PostgresInfo) -> None:
    target = UpstreamTarget(
        postgres.host, postgres.port, "postgres", postgres.user, postgres.password, tls="require"
    )
    error = expect_error(connect_upstream(target, {}))
    assert error.sqlstate == "08001"
    assert "does not support SSL, but SSL is required" in error.message


def test_prefer_falls_back_to_plaintext_on_a_server_without_tls(postgres: PostgresInfo) -> None:
    target = UpstreamTarget(postgres.host, postgres.port, "postgres", postgres.user, postgres.password)
    assert target.tls == "prefer"
    upstream, answer = run(login_and_ask(target, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    assert (upstream.tls, answer) == (False, [["f"]])


@pytest.mark.parametrize("mode", ["require", "prefer"])
def test_tls_is_used_when_the_server_offers_it_and_scram_binds_to_the_channel(
    cluster: Cluster, mode: str
) -> None:
    upstream, answer = run(
        login_and_ask(
            cluster.target("scram_user", tls=mode),
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
    )
    assert upstream.tls is True
    assert answer[0][0] == "t" and answer[0][1] in ("TLSv1.2", "TLSv1.3")
    # Over TLS the server offers SCRAM-SHA-256-PLUS, and the login is bound to its certificate.
    assert upstream.auth_method == "SCRAM-SHA-256-PLUS"


def test_md5_over_tls(cluster: Cluster) -> None:
    upstream, answer = run(login_and_ask(cluster.target("md5_user", tls="require"), "SELECT current_user"))
    assert (upstream.tls, upstream.auth_method, answer) == (True, "md5", [["md5_user"]])


def test_a_hostssl_role_gets_in_only_over_tls(cluster: Cluster) -> None:
    refused = expect_error(connect_upstream(cluster.target("tls_only_user", tls="disable"), {}))
    assert refused.sqlstate == "28000"
    assert "no encryption" in refused.message
    upstream, answer = run(
        login_and_ask(cluster.target("tls_only_user", tls="require"), "SELECT current_user")
    )
    assert (upstream.tls, answer) == (True, [["tls_only_user"]])


def test_cancel_over_tls(cluster: Cluster) -> None:
    async def scenario() -> list[m.Message]:
        upstream = await connect_upstream(cluster.target("scram_user", tls="require"), {})
        try:
            running = asyncio.create_task(query(upstream, "SELECT pg_sleep(30)"))
            await asyncio.sleep(0.3)
            await cancel_upstream(
                cluster.admin.host,
                cluster.admin.port,
                upstream.backend_pid,
                upstream.backend_secret,
                tls="require",
            )
            return await running
        finally:
            await upstream.close()

    assert [e.sqlstate for e in run(scenario()) if isinstance(e, m.ErrorResponse)] == ["57014"]


# ---------------------------------------------------------------- servers that misbehave


async def with_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    body: Callable[[int], Awaitable[T]],
) -> T:
    """A loopback socket that answers with `handler`: for behaviour no real PostgreSQL shows on request."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await body(port)
    finally:
        server.close()
        await server.wait_closed()


def fail_against(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], **kw: Any
) -> UpstreamError:
    async def body(port: int) -> UpstreamError:
        target = UpstreamTarget("127.0.0.1", port, "postgres", "someone", "s3cret-value", **kw)
        with pytest.raises(UpstreamError) as caught:
            await connect_upstream(target, {})
        return caught.value

    return run(with_server(handler, body))


def test_a_server_that_never_answers_times_out_as_08001() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(10)

    started = time.monotonic()
    error = fail_against(silent, tls="disable", connect_timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert error.sqlstate == "08001"
    assert "timed out after 0.5s logging in" in error.message
    assert elapsed < 3


def test_plaintext_appended_to_the_ssl_answer_is_refused(cluster: Cluster) -> None:
    # CVE-2021-23222: a man in the middle answers S and appends a forged AuthenticationOk and
    # ReadyForQuery, hoping they are read as if they came through TLS.
    forged = m.encode_messages([m.AuthenticationOk(), m.ReadyForQuery("I")])

    async def stuffing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(b"S" + forged)
        await writer.drain()
        await asyncio.sleep(2)

    error = fail_against(stuffing, tls="require")
    assert error.sqlstate == "08P01"
    assert "unencrypted data after accepting SSL" in error.message


def test_a_server_that_accepts_ssl_but_speaks_no_tls_fails_the_handshake() -> None:
    async def not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(b"S")
        await writer.drain()
        await reader.read(65536)  # the ClientHello
        writer.write(m.AuthenticationOk().encode() * 20)
        await writer.drain()

    error = fail_against(not_tls, tls="require")
    assert error.sqlstate == "08001"
    assert "TLS handshake with the upstream server" in error.message


def test_a_server_that_drops_the_connection_mid_login_is_08006() -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(m.AuthenticationMD5Password(b"salt").encode()[:6])

    error = fail_against(hangs_up, tls="disable")
    assert error.sqlstate == "08006"
    assert "closed the connection while logging in" in error.message


def test_an_oversized_startup_message_is_refused_before_it_is_buffered() -> None:
    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        # The header announces 512 MiB; only the header is ever sent.
        writer.write(b"N" + (512 * 1024 * 1024).to_bytes(4, "big"))
        await writer.drain()
        await asyncio.sleep(2)

    error = fail_against(huge, tls="disable")
    assert error.sqlstate == "54000"


def test_a_second_authentication_request_after_a_password_is_refused() -> None:
    # A server (or a man in the middle) that takes the md5 answer, then asks for the cleartext.
    async def greedy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(m.AuthenticationMD5Password(b"salt").encode())
        await reader.read(65536)
        writer.write(m.AuthenticationCleartextPassword().encode())
        await writer.drain()
        await reader.read(65536)

    error = fail_against(greedy, tls="disable")
    assert error.sqlstate == "08P01"
    assert "s3cret-value" not in str(error)


def test_unknown_tls_mode_is_refused_at_configuration() -> None:
    with pytest.raises(ValueError, match="tls must be one of"):
        UpstreamTarget("127.0.0.1", 5432, "postgres", "u", None, tls="verify-ca")


def test_the_socket_is_a_keepalive_tcp_socket(cluster: Cluster, event_loop_kind: str) -> None:
    async def scenario() -> int:
        assert type(asyncio.get_running_loop()).__module__.split(".")[0] == event_loop_kind
        upstream = await connect_upstream(cluster.target("trust_user"), {})
        try:
            sock = upstream.writer.get_extra_info("socket")
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        finally:
            await upstream.close()

    assert run(scenario()) == 1
