"""The codec speaks to a real PostgreSQL server: our StartupMessage and SCRAM exchange over a raw
socket, the server's answers read by BackendParser through to a query's rows."""

from __future__ import annotations

import socket

import scramp

from gatehouse.local.postgres import PostgresInfo
from gatehouse.proxy.postgres import messages as m
from gatehouse.proxy.postgres.codec import BackendParser


class RawClient:
    def __init__(self, info: PostgresInfo) -> None:
        self.sock = socket.create_connection((info.host, info.port), timeout=10)
        self.parser = BackendParser()
        self.pending: list[m.Message] = []

    def send(self, *messages: m.Message) -> None:
        self.sock.sendall(m.encode_messages(messages))

    def receive(self) -> m.Message:
        while not self.pending:
            # Small reads on purpose: the server's answers arrive split at arbitrary points.
            data = self.sock.recv(7)
            assert data, "server closed the connection"
            self.pending += self.parser.feed(data)
        return self.pending.pop(0)

    def until_ready(self) -> list[m.Message]:
        got = [self.receive()]
        while not isinstance(got[-1], m.ReadyForQuery):
            got.append(self.receive())
        return got

    def close(self) -> None:
        self.send(m.Terminate())
        self.sock.close()


def login(info: PostgresInfo) -> tuple[RawClient, list[m.Message]]:
    client = RawClient(info)
    client.send(m.StartupMessage({"user": info.user, "database": "postgres", "client_encoding": "UTF8"}))
    request = client.receive()
    assert isinstance(request, m.AuthenticationSASL)
    assert "SCRAM-SHA-256" in request.mechanisms
    scram = scramp.ScramClient(["SCRAM-SHA-256"], info.user, info.password)
    client.send(m.SASLInitialResponse("SCRAM-SHA-256", scram.get_client_first().encode()))
    challenge = client.receive()
    assert isinstance(challenge, m.AuthenticationSASLContinue)
    scram.set_server_first(bytes(challenge.data).decode())
    client.send(m.SASLResponse(scram.get_client_final().encode()))
    final = client.receive()
    assert isinstance(final, m.AuthenticationSASLFinal)
    scram.set_server_final(bytes(final.data).decode())  # raises unless the server proved the password
    return client, client.until_ready()


def test_login_through_scram_reaches_ready_for_query(postgres: PostgresInfo) -> None:
    client, startup = login(postgres)
    try:
        assert isinstance(startup[0], m.AuthenticationOk)
        status = {msg.name: msg.value for msg in startup if isinstance(msg, m.ParameterStatus)}
        assert status["client_encoding"] == "UTF8"
        assert status["server_version"].startswith(("15", "16", "17"))
        keys = [msg for msg in startup if isinstance(msg, m.BackendKeyData)]
        assert len(keys) == 1 and len(keys[0].secret_key) == 4
        assert startup[-1] == m.ReadyForQuery("I")
    finally:
        client.close()


def test_a_simple_query_comes_back_as_rows(postgres: PostgresInfo) -> None:
    client, _ = login(postgres)
    try:
        client.send(
            m.Query(
                "SELECT g AS id, 'row ' || g AS label, NULL::text AS nothing FROM generate_series(1, 3) g"
            )
        )
        answer = client.until_ready()
        description, *rows, complete, ready = answer
        assert isinstance(description, m.RowDescription)
        assert [(f.name, f.type_oid) for f in description.fields] == [
            ("id", 23),
            ("label", 25),
            ("nothing", 25),
        ]
        assert [r.values for r in rows if isinstance(r, m.DataRow)] == [
            [b"1", b"row 1", None],
            [b"2", b"row 2", None],
            [b"3", b"row 3", None],
        ]
        assert complete == m.CommandComplete("SELECT 3")
        assert ready == m.ReadyForQuery("I")
    finally:
        client.close()


def test_extended_protocol_and_an_error_with_its_sqlstate(postgres: PostgresInfo) -> None:
    client, _ = login(postgres)
    try:
        client.send(
            m.Parse("s1", "SELECT $1::int + 1 AS n", (23,)),
            m.Bind("", "s1", (0,), (b"41",), (0,)),
            m.Describe("P", ""),
            m.Execute("", 0),
            m.Sync(),
        )
        assert client.until_ready() == [
            m.ParseComplete(),
            m.BindComplete(),
            m.RowDescription((m.FieldDescription("n", 0, 0, 23, 4, -1, 0),)),
            m.DataRow([b"42"]),
            m.CommandComplete("SELECT 1"),
            m.ReadyForQuery("I"),
        ]
        client.send(m.Query("SELECT * FROM no_such_table"))
        error, ready = client.until_ready()
        assert isinstance(error, m.ErrorResponse)
        assert (error.severity, error.sqlstate) == ("ERROR", "42P01")
        assert "no_such_table" in error.message
        assert ready == m.ReadyForQuery("I")
    finally:
        client.close()


def test_ssl_request_is_answered_with_one_byte_then_plaintext_startup_works(postgres: PostgresInfo) -> None:
    # The throwaway cluster runs without TLS, so the server answers N.
    client = RawClient(postgres)
    try:
        client.parser.expect_ssl_response()
        client.send(m.SSLRequest())
        assert client.receive() == m.SSLResponse(False)
        client.send(m.StartupMessage({"user": postgres.user, "database": "postgres"}))
        assert isinstance(client.receive(), m.AuthenticationSASL)
    finally:
        client.sock.close()
