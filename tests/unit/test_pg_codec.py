"""The Postgres wire codec against byte layouts written out by hand from the protocol manual.

Expected bytes here are spelled from "Message Formats" (PostgreSQL manual, protocol chapter), not
produced by our encoder, so a shared mistake in encoder and parser cannot pass unnoticed.
"""

from __future__ import annotations

import struct

import pytest

from gatehouse.proxy.postgres import messages as m
from gatehouse.proxy.postgres.codec import BackendParser, FrontendParser, rewrite_data_row
from gatehouse.proxy.postgres.exceptions import ProtocolError


def be32(n: int) -> bytes:
    return struct.pack("!i", n)


def be16(n: int) -> bytes:
    return struct.pack("!h", n)


def frontend(data: bytes, *, startup: bool = False, kind: str = "password") -> list[m.Message]:
    parser = FrontendParser(startup=startup)
    parser.auth_response_kind = kind  # type: ignore[assignment]
    return parser.feed(data)


def backend(data: bytes) -> list[m.Message]:
    return BackendParser().feed(data)


# ---------------------------------------------------------------- wire bytes from the manual

# (message, its bytes on the wire): Byte1 type, Int32 length counting itself, then the body.
FRONTEND_WIRE: list[tuple[m.Message, bytes]] = [
    (m.Query("SELECT 1"), b"Q" + be32(13) + b"SELECT 1\x00"),
    (m.Sync(), b"S\x00\x00\x00\x04"),
    (m.Flush(), b"H\x00\x00\x00\x04"),
    (m.Terminate(), b"X\x00\x00\x00\x04"),
    (m.CopyDone(), b"c\x00\x00\x00\x04"),
    (m.CopyData(b"1\tx\n"), b"d" + be32(8) + b"1\tx\n"),
    (m.CopyFail("no"), b"f" + be32(7) + b"no\x00"),
    (
        m.Parse("s1", "SELECT $1", (23,)),
        b"P" + be32(4 + 3 + 10 + 2 + 4) + b"s1\x00SELECT $1\x00" + be16(1) + be32(23),
    ),
    (
        # Bind unnamed portal to s1: one text-format parameter "42", one NULL, binary results.
        m.Bind("", "s1", (0,), (b"42", None), (1,)),
        b"B"
        + be32(4 + 1 + 3 + 2 + 2 + 2 + 4 + 2 + 4 + 2 + 2)
        + b"\x00s1\x00"
        + be16(1)
        + be16(0)
        + be16(2)
        + be32(2)
        + b"42"
        + be32(-1)
        + be16(1)
        + be16(1),
    ),
    (m.Describe("P", ""), b"D" + be32(6) + b"P\x00"),
    (m.Describe("S", "s1"), b"D" + be32(8) + b"Ss1\x00"),
    (m.Execute("", 0), b"E" + be32(9) + b"\x00" + be32(0)),
    (m.Close("S", "s1"), b"C" + be32(8) + b"Ss1\x00"),
    (
        m.FunctionCall(1598, (0,), (b"x",), 0),
        b"F"
        + be32(4 + 4 + 4 + 2 + 4 + 1 + 2)
        + be32(1598)
        + be16(1)
        + be16(0)
        + be16(1)
        + be32(1)
        + b"x"
        + be16(0),
    ),
]

PASSWORD_WIRE: list[tuple[str, m.Message, bytes]] = [
    ("password", m.PasswordMessage("md5abc"), b"p" + be32(11) + b"md5abc\x00"),
    (
        "sasl_initial",
        m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
        b"p" + be32(4 + 14 + 4 + 11) + b"SCRAM-SHA-256\x00" + be32(11) + b"n,,n=,r=abc",
    ),
    (
        "sasl_initial",
        m.SASLInitialResponse("SCRAM-SHA-256", None),
        b"p" + be32(22) + b"SCRAM-SHA-256\x00" + be32(-1),
    ),
    ("sasl", m.SASLResponse(b"c=biws,r=abc,p=xyz"), b"p" + be32(22) + b"c=biws,r=abc,p=xyz"),
]

STARTUP_WIRE: list[tuple[m.Message, bytes]] = [
    # SSLRequest: length 8, the code 1234 5679 (0x04D2162F).
    (m.SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
    (m.GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30"),
    (
        m.CancelRequest(4242, b"\x01\x02\x03\x04"),
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e" + be32(4242) + b"\x01\x02\x03\x04",
    ),
    (
        m.StartupMessage({"user": "bob", "database": "shop"}),
        be32(4 + 4 + 5 + 4 + 9 + 5 + 1) + b"\x00\x03\x00\x00user\x00bob\x00database\x00shop\x00\x00",
    ),
]

BACKEND_WIRE: list[tuple[m.Message, bytes]] = [
    (m.AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (m.AuthenticationCleartextPassword(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    (m.AuthenticationMD5Password(b"\xaa\xbb\xcc\xdd"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05\xaa\xbb\xcc\xdd"),
    (
        m.AuthenticationSASL(("SCRAM-SHA-256",)),
        b"R" + be32(4 + 4 + 14 + 1) + be32(10) + b"SCRAM-SHA-256\x00\x00",
    ),
    (m.AuthenticationSASLContinue(b"r=abc,s=xyz,i=4096"), b"R" + be32(26) + be32(11) + b"r=abc,s=xyz,i=4096"),
    (m.AuthenticationSASLFinal(b"v=sig"), b"R" + be32(13) + be32(12) + b"v=sig"),
    (m.ParameterStatus("client_encoding", "UTF8"), b"S" + be32(25) + b"client_encoding\x00UTF8\x00"),
    (m.BackendKeyData(1234, b"\x00\x00\x16\x2e"), b"K" + be32(12) + be32(1234) + b"\x00\x00\x16\x2e"),
    (m.ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
    (m.ReadyForQuery("T"), b"Z\x00\x00\x00\x05T"),
    (
        # SELECT 1: one int4 column named ?column?, no table, typlen 4, typmod -1, text.
        m.RowDescription((m.FieldDescription("?column?", 0, 0, 23, 4, -1, 0),)),
        b"T"
        + be32(33)
        + be16(1)
        + b"?column?\x00"
        + be32(0)
        + be16(0)
        + be32(23)
        + be16(4)
        + be32(-1)
        + be16(0),
    ),
    (m.DataRow([b"1"]), b"D" + be32(11) + be16(1) + be32(1) + b"1"),
    (m.DataRow([None, b""]), b"D" + be32(14) + be16(2) + be32(-1) + be32(0)),
    (m.CommandComplete("SELECT 1"), b"C" + be32(13) + b"SELECT 1\x00"),
    (m.EmptyQueryResponse(), b"I\x00\x00\x00\x04"),
    (m.ParseComplete(), b"1\x00\x00\x00\x04"),
    (m.BindComplete(), b"2\x00\x00\x00\x04"),
    (m.CloseComplete(), b"3\x00\x00\x00\x04"),
    (m.NoData(), b"n\x00\x00\x00\x04"),
    (m.PortalSuspended(), b"s\x00\x00\x00\x04"),
    (m.ParameterDescription((23, 25)), b"t" + be32(14) + be16(2) + be32(23) + be32(25)),
    (m.CopyInResponse(0, (0, 0)), b"G" + be32(11) + b"\x00" + be16(2) + be16(0) + be16(0)),
    (m.CopyOutResponse(1, (1,)), b"H" + be32(9) + b"\x01" + be16(1) + be16(1)),
    (m.CopyBothResponse(0, ()), b"W" + be32(7) + b"\x00" + be16(0)),
    (m.NotificationResponse(77, "jobs", "go"), b"A" + be32(4 + 4 + 5 + 3) + be32(77) + b"jobs\x00go\x00"),
    (m.FunctionCallResponse(b"ok"), b"V" + be32(10) + be32(2) + b"ok"),
    (m.FunctionCallResponse(None), b"V" + be32(8) + be32(-1)),
    (m.NegotiateProtocolVersion(0, ("_pq_.x",)), b"v" + be32(19) + be32(0) + be32(1) + b"_pq_.x\x00"),
    (m.CopyData(b"abc"), b"d" + be32(7) + b"abc"),
    (
        m.ErrorResponse({"S": "ERROR", "V": "ERROR", "C": "42501", "M": "permission denied"}),
        b"E" + be32(4 + 7 + 7 + 7 + 19 + 1) + b"SERROR\x00VERROR\x00C42501\x00Mpermission denied\x00\x00",
    ),
    (
        m.NoticeResponse({"S": "NOTICE", "C": "00000", "M": "hi"}),
        b"N" + be32(4 + 8 + 7 + 4 + 1) + b"SNOTICE\x00C00000\x00Mhi\x00\x00",
    ),
]


@pytest.mark.parametrize(("message", "wire"), FRONTEND_WIRE, ids=lambda v: type(v).__name__)
def test_frontend_messages_encode_and_decode_to_the_manuals_bytes(message: m.Message, wire: bytes) -> None:
    assert message.encode() == wire
    assert frontend(wire) == [message]


@pytest.mark.parametrize(("kind", "message", "wire"), PASSWORD_WIRE, ids=lambda v: str(v)[:20])
def test_password_family_is_read_by_the_authentication_stage(
    kind: str, message: m.Message, wire: bytes
) -> None:
    assert message.encode() == wire
    assert frontend(wire, kind=kind) == [message]


@pytest.mark.parametrize(("message", "wire"), STARTUP_WIRE, ids=lambda v: type(v).__name__)
def test_startup_packets_have_no_type_byte(message: m.Message, wire: bytes) -> None:
    assert message.encode() == wire
    assert frontend(wire, startup=True) == [message]


@pytest.mark.parametrize(("message", "wire"), BACKEND_WIRE, ids=lambda v: type(v).__name__)
def test_backend_messages_encode_and_decode_to_the_manuals_bytes(message: m.Message, wire: bytes) -> None:
    assert message.encode() == wire
    assert backend(wire) == [message]


def test_error_response_builder_writes_severity_sqlstate_message_detail_hint() -> None:
    error = m.ErrorResponse.build(
        "42501", "denied by policy prod-ddl", detail="DDL on prod", hint="ask a dba"
    )
    wire = error.encode()
    assert wire == (
        b"E"
        + be32(4 + 7 + 7 + 7 + 27 + 13 + 11 + 1)
        + b"SERROR\x00VERROR\x00C42501\x00Mdenied by policy prod-ddl\x00DDDL on prod\x00Hask a dba\x00\x00"
    )
    (parsed,) = backend(wire)
    assert isinstance(parsed, m.ErrorResponse)
    assert (parsed.severity, parsed.sqlstate, parsed.message, parsed.detail, parsed.hint) == (
        "ERROR",
        "42501",
        "denied by policy prod-ddl",
        "DDL on prod",
        "ask a dba",
    )


def test_a_protocol_error_becomes_a_fatal_error_response_with_its_sqlstate() -> None:
    with pytest.raises(ProtocolError) as caught:
        frontend(b"Q" + be32(100_000_000), startup=False)
    (parsed,) = backend(m.error_response_for(caught.value).encode())
    assert isinstance(parsed, m.ErrorResponse)
    assert (parsed.severity, parsed.sqlstate) == ("FATAL", "54000")


def test_sasl_initial_response_moves_the_parser_to_sasl_responses() -> None:
    parser = FrontendParser(startup=False)
    parser.auth_response_kind = "sasl_initial"
    first = m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc")
    final = m.SASLResponse(b"c=biws,r=abc,p=proof")
    assert parser.feed(first.encode() + final.encode()) == [first, final]


def test_data_row_values_are_slices_and_raw_is_the_message_itself() -> None:
    wire = b"D" + be32(4 + 2 + 4 + 3 + 4) + be16(2) + be32(3) + b"abc" + be32(-1)
    # Given a DataRow followed by part of a second message
    parser = BackendParser()
    (row,) = parser.feed(wire + b"Z\x00\x00")
    assert isinstance(row, m.DataRow)
    assert isinstance(row.values[0], memoryview)
    assert row.values == [b"abc", None]
    assert bytes(row.raw) == b"D" + be32(17) + be16(2) + be32(3) + b"abc" + be32(-1)
    # Then the partial ReadyForQuery completes on the next feed
    assert parser.feed(b"\x00\x05I") == [m.ReadyForQuery("I")]


# ---------------------------------------------------------------- rewriting rows


def test_rewrite_without_replacements_returns_the_same_bytes_object() -> None:
    raw = m.encode_data_row([b"1", b"ann@example.com"])
    assert rewrite_data_row(raw, {}) is raw


def test_rewrite_changes_only_the_named_columns() -> None:
    raw = m.encode_data_row([b"1", b"ann@example.com", None, b"tail"])
    out = rewrite_data_row(raw, {1: b"***", 2: b"x"})
    assert out == m.encode_data_row([b"1", b"***", b"x", b"tail"])
    assert rewrite_data_row(raw, {0: None}) == m.encode_data_row([None, b"ann@example.com", None, b"tail"])
    # Works on the slice the parser handed out, too.
    (row,) = backend(raw)
    assert isinstance(row, m.DataRow)
    assert rewrite_data_row(row.raw, {3: b"T"}) == m.encode_data_row([b"1", b"ann@example.com", None, b"T"])


def test_rewrite_refuses_a_column_the_row_does_not_have_and_a_non_row() -> None:
    raw = m.encode_data_row([b"1"])
    with pytest.raises(ValueError, match="out of range"):
        rewrite_data_row(raw, {1: b"x"})
    with pytest.raises(ProtocolError):
        rewrite_data_row(m.CommandComplete("SELECT 1").encode(), {0: b"x"})
    with pytest.raises(ProtocolError):
        rewrite_data_row(b"D" + be32(10) + be16(1) + be32(5) + b"a", {0: b"x"})


# ---------------------------------------------------------------- split feeds


def client_stream() -> tuple[bytes, list[m.Message]]:
    """What psql then a driver using the extended protocol send on one connection."""
    messages: list[m.Message] = [
        m.StartupMessage({"user": "analyst", "database": "demo", "application_name": "psql"}),
        m.PasswordMessage("gh1.token"),
        m.Query("SELECT id, email FROM customers LIMIT 2; SELECT 1"),
        m.Parse("", "SELECT * FROM customers WHERE id = $1", (23,)),
        m.Bind("", "", (0,), (b"7",), (0,)),
        m.Describe("P", ""),
        m.Execute("", 0),
        m.Sync(),
        m.Terminate(),
    ]
    return m.encode_messages(messages), messages


def server_stream() -> tuple[bytes, list[m.Message]]:
    fields = (
        m.FieldDescription("id", 16384, 1, 23, 4, -1, 0),
        m.FieldDescription("email", 16384, 3, 25, -1, -1, 0),
    )
    messages: list[m.Message] = [
        m.AuthenticationOk(),
        m.ParameterStatus("server_version", "15.8"),
        m.BackendKeyData(31337, b"\xde\xad\xbe\xef"),
        m.ReadyForQuery("I"),
        m.RowDescription(fields),
        m.DataRow([b"1", b"ann@example.com"]),
        m.DataRow([b"2", None]),
        m.CommandComplete("SELECT 2"),
        m.ReadyForQuery("I"),
    ]
    return m.encode_messages(messages), messages


def test_every_split_point_of_a_client_stream_gives_the_same_messages() -> None:
    wire, expected = client_stream()
    for cut in range(len(wire) + 1):
        parser = FrontendParser()
        got = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        assert got == expected, cut
        assert parser.buffered == 0


def test_every_split_point_of_a_server_stream_gives_the_same_messages() -> None:
    wire, expected = server_stream()
    for cut in range(len(wire) + 1):
        parser = BackendParser()
        got = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        assert got == expected, cut


def test_a_stream_fed_one_byte_at_a_time_gives_the_same_messages() -> None:
    for wire, expected, parser in (
        (*client_stream(), FrontendParser()),
        (*server_stream(), BackendParser()),
    ):
        got: list[m.Message] = []
        for i in range(len(wire)):
            got += parser.feed(wire[i : i + 1])
        assert got == expected


def test_a_large_message_arriving_in_pieces_is_joined_once() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB
    wire = m.encode_data_row([value])
    parser = BackendParser()
    for start in range(0, len(wire) - 1, 4096):
        assert parser.feed(wire[start : min(start + 4096, len(wire) - 1)]) == []
    (row,) = parser.feed(wire[-1:])
    assert isinstance(row, m.DataRow)
    assert row.values == [value]


# ---------------------------------------------------------------- limits and refusals


def test_an_oversized_message_is_refused_from_its_header_alone() -> None:
    parser = FrontendParser(startup=False, max_message_size=1024)
    # Only the five header bytes: the body is never sent, nothing is buffered.
    with pytest.raises(ProtocolError) as caught:
        parser.feed(b"Q" + be32(1025))
    assert caught.value.sqlstate == "54000"
    assert parser.buffered == 0
    # The stream has lost its framing: the parser stays failed.
    with pytest.raises(ProtocolError):
        parser.feed(m.Sync().encode())


def test_a_message_at_the_limit_is_accepted() -> None:
    sql = "x" * (1024 - 5)
    parser = FrontendParser(startup=False, max_message_size=1024)
    assert parser.feed(m.Query(sql).encode()) == [m.Query(sql)]


def test_an_oversized_server_message_is_refused_from_its_header_alone() -> None:
    parser = BackendParser(max_message_size=1 << 20)
    parser.feed(b"D\x00")  # a partial header is kept
    with pytest.raises(ProtocolError) as caught:
        parser.feed(b"\x20\x00\x00")
    assert caught.value.sqlstate == "54000"


def test_a_startup_packet_over_postgres_limit_is_refused() -> None:
    with pytest.raises(ProtocolError, match="invalid length of startup packet"):
        FrontendParser().feed(be32(10_001) + b"\x00\x03\x00\x00")


@pytest.mark.parametrize(
    ("wire", "needle"),
    [
        (be32(8) + be32(2 << 16), "unsupported frontend protocol 2.0"),
        (be32(4 + 4 + 5 + 2 + 5 + 2 + 1) + be32(3 << 16) + b"user\x00a\x00user\x00b\x00\x00", "given twice"),
        (be32(4 + 4 + 5 + 2) + be32(3 << 16) + b"user\x00a\x00", "unterminated string"),
        (be32(12) + be32((1234 << 16) | 5678) + be32(1), "cancel key length"),
    ],
)
def test_malformed_startup_packets_are_refused(wire: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        FrontendParser().feed(wire)


def test_data_sent_in_plaintext_after_ssl_request_is_refused() -> None:
    # CVE-2021-23214: a man in the middle can append a query to the SSLRequest.
    with pytest.raises(ProtocolError, match="unencrypted data"):
        FrontendParser().feed(m.SSLRequest().encode() + m.Query("SELECT 1").encode())
    parser = FrontendParser()
    assert parser.feed(m.SSLRequest().encode()) == [m.SSLRequest()]
    # After the proxy answered N, the client may start in plaintext.
    startup = m.StartupMessage({"user": "a"})
    assert parser.feed(startup.encode()) == [startup]


def test_server_answers_to_encryption_requests() -> None:
    parser = BackendParser()
    parser.expect_ssl_response()
    assert parser.feed(b"N") == [m.SSLResponse(False)]
    assert parser.feed(m.AuthenticationOk().encode()) == [m.AuthenticationOk()]
    parser = BackendParser()
    parser.expect_gssenc_response()
    assert parser.feed(b"N") == [m.GSSENCResponse(False)]
    parser = BackendParser()
    parser.expect_ssl_response()
    with pytest.raises(ProtocolError, match="unencrypted data"):
        parser.feed(b"S" + m.AuthenticationOk().encode())
    parser = BackendParser()
    parser.expect_ssl_response()
    error = m.ErrorResponse.build("08P01", "unsupported", severity="FATAL")
    assert parser.feed(error.encode()) == [error]


@pytest.mark.parametrize(
    "wire",
    [
        b"?" + be32(4),  # unknown type
        b"Q" + be32(3),  # length below its own size
        b"Q" + be32(8) + b"abcd",  # string without NUL
        b"Q" + be32(7) + b"\xff\xfe\x00",  # not UTF-8
        b"S" + be32(5) + b"x",  # Sync with a body
        b"D" + be32(6) + b"X\x00",  # Describe of neither a statement nor a portal
        b"B" + be32(14) + b"\x00\x00" + be16(2) + be16(0) + be16(0) + be16(0),  # 2 formats, 0 params
        b"B" + be32(12) + b"\x00\x00" + be16(1) + be16(7) + be16(0),  # format code 7
        b"B" + be32(16) + b"\x00\x00" + be16(0) + be16(1) + be32(-2) + be16(0),  # length -2
    ],
)
def test_garbage_from_a_client_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        frontend(wire)
    assert caught.value.sqlstate in {"08P01", "22021"}


@pytest.mark.parametrize(
    "wire",
    [
        b"D" + be32(10) + be16(1) + be32(5) + b"x" * 0,  # column longer than the row
        b"D" + be32(12) + be16(1) + be32(1) + b"ab",  # row longer than its columns
        b"D" + be32(6) + be16(1),  # count without columns
        b"D" + be32(10) + be16(1) + be32(-5),  # negative length other than -1
        b"Z" + be32(5) + b"Q",  # unknown transaction status
        b"R" + be32(8) + be32(7),  # GSSAPI: not supported
        b"K" + be32(10) + be32(1) + b"ab",  # cancel key too short
        b"T" + be32(6) + be16(1),  # field count without fields
    ],
)
def test_garbage_from_a_server_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        backend(wire)


def test_a_data_row_that_overruns_into_the_next_message_is_refused() -> None:
    # The column claims 6 bytes but the row ends after 2; the next message must not be read as data.
    wire = b"D" + be32(12) + be16(1) + be32(6) + b"ab" + m.ReadyForQuery("I").encode()
    with pytest.raises(ProtocolError, match="DataRow"):
        backend(wire)


def test_data_after_a_cancel_request_is_refused() -> None:
    with pytest.raises(ProtocolError, match="CancelRequest"):
        FrontendParser().feed(m.CancelRequest(1, b"abcd").encode() + m.Sync().encode())


def test_strings_with_nul_cannot_be_encoded() -> None:
    with pytest.raises(ProtocolError, match="NUL"):
        m.Query("SELECT 1\x00; DROP TABLE x").encode()


# ---------------------------------------------------------------- runs of rows (the proxy's relay)


def _unbatched(messages: list[m.Message]) -> list[m.Message]:
    out: list[m.Message] = []
    for message in messages:
        out.extend(message.rows() if isinstance(message, m.DataRows) else [message])
    return out


def test_batched_rows_are_the_same_rows_at_every_split_point() -> None:
    wire, expected = server_stream()
    for cut in range(len(wire) + 1):
        parser = BackendParser(batch_rows=True)
        got = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        assert _unbatched(got) == expected, cut
        runs = [g for g in got if isinstance(g, m.DataRows)]
        # Rows in one read come as one run of the server's own bytes.
        assert b"".join(run.encode() for run in runs) == b"".join(r.encode() for r in expected[5:7])


def test_a_run_ends_where_the_column_count_changes() -> None:
    wire = m.encode_data_row([b"1"]) + m.encode_data_row([b"2"]) + m.encode_data_row([b"3", None])
    runs = BackendParser(batch_rows=True).feed(wire)
    assert [(len(r), r.columns) for r in runs if isinstance(r, m.DataRows)] == [(2, 1), (1, 2)]


@pytest.mark.parametrize(
    "wire",
    [
        b"D" + be32(10) + be16(1) + be32(-5),  # negative length other than -1
        b"D" + be32(12) + be16(1) + be32(6) + b"ab" + m.ReadyForQuery("I").encode(),  # overruns
        m.encode_data_row([b"ok"]) + b"D" + be32(11) + be16(2) + be32(1) + b"x",  # short second row
    ],
)
def test_a_malformed_row_in_a_run_is_refused(wire: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"DataRow|value length"):
        BackendParser(batch_rows=True).feed(wire)
