"""Property tests of the Postgres wire codec: garbage is only ever a ProtocolError, and every
message we can generate survives encode -> parse unchanged, however the stream is split."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse.proxy.postgres import messages as m
from gatehouse.proxy.postgres.codec import BackendParser, FrontendParser, rewrite_data_row
from gatehouse.proxy.postgres.exceptions import ProtocolError

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)
name = st.text(string.ascii_letters + "_.", min_size=1, max_size=12)
blob = st.binary(max_size=40)
value = st.none() | blob
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
oid = st.integers(0, 2**32 - 1)
fmt = st.sampled_from([m.TEXT_FORMAT, m.BINARY_FORMAT])
formats = st.lists(fmt, max_size=4).map(tuple)
kind = st.sampled_from(["S", "P"])


@st.composite
def binds(draw: st.DrawFn) -> m.Bind:
    params = tuple(draw(st.lists(value, max_size=4)))
    # PostgreSQL's rule: no format codes, one for all, or one per parameter.
    count = draw(st.sampled_from(sorted({0, 1, len(params)})))
    param_formats = tuple(draw(fmt) for _ in range(count))
    return m.Bind(draw(text), draw(text), param_formats, params, draw(formats))


frontend_messages = st.one_of(
    st.builds(m.Query, text),
    st.builds(m.Parse, text, text, st.lists(oid, max_size=4).map(tuple)),
    binds(),
    st.builds(m.Describe, kind, text),
    st.builds(m.Close, kind, text),
    st.builds(m.Execute, text, i32),
    st.builds(m.FunctionCall, oid, formats, st.lists(value, max_size=3).map(tuple), fmt),
    st.builds(m.CopyData, blob),
    st.builds(m.CopyFail, text),
    st.builds(m.PasswordMessage, text),
    st.sampled_from([m.Sync(), m.Flush(), m.Terminate(), m.CopyDone()]),
)

startup_messages = st.one_of(
    st.builds(
        m.StartupMessage,
        st.dictionaries(name, text, max_size=5),
        st.sampled_from([m.PROTOCOL_VERSION_3_0, m.PROTOCOL_VERSION_3_2]),
    ),
    st.builds(m.CancelRequest, i32, st.binary(min_size=4, max_size=32)),
)

fields = st.builds(m.FieldDescription, text, oid, i16, oid, i16, i32, fmt)
notice_fields = st.dictionaries(st.sampled_from(list("SVCMDHPpqWstcdnFLR")), text, max_size=6)

backend_messages = st.one_of(
    st.sampled_from(
        [
            m.AuthenticationOk(),
            m.AuthenticationCleartextPassword(),
            m.EmptyQueryResponse(),
            m.ParseComplete(),
            m.BindComplete(),
            m.CloseComplete(),
            m.NoData(),
            m.PortalSuspended(),
            m.CopyDone(),
        ]
    ),
    st.builds(m.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(m.AuthenticationSASL, st.lists(name, max_size=3).map(tuple)),
    st.builds(m.AuthenticationSASLContinue, blob),
    st.builds(m.AuthenticationSASLFinal, blob),
    st.builds(m.ParameterStatus, text, text),
    st.builds(m.BackendKeyData, i32, st.binary(min_size=4, max_size=32)),
    st.builds(m.ReadyForQuery, st.sampled_from(["I", "T", "E"])),
    st.builds(m.RowDescription, st.lists(fields, max_size=4).map(tuple)),
    st.builds(m.DataRow, st.lists(value, max_size=6)),
    st.builds(m.CommandComplete, text),
    st.builds(m.ErrorResponse, notice_fields),
    st.builds(m.NoticeResponse, notice_fields),
    st.builds(m.ParameterDescription, st.lists(oid, max_size=4).map(tuple)),
    st.builds(m.CopyInResponse, fmt, formats),
    st.builds(m.CopyOutResponse, fmt, formats),
    st.builds(m.CopyBothResponse, fmt, formats),
    st.builds(m.NotificationResponse, i32, text, text),
    st.builds(m.FunctionCallResponse, value),
    st.builds(m.NegotiateProtocolVersion, i32, st.lists(name, max_size=3).map(tuple)),
    st.builds(m.CopyData, blob),
)


def feed_in_pieces(parser: FrontendParser | BackendParser, wire: bytes, cuts: list[int]) -> list[m.Message]:
    out: list[m.Message] = []
    start = 0
    for cut in [*sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]:
        out += parser.feed(wire[start:cut])
        start = cut
    return out


@FUZZ
@given(st.lists(frontend_messages, max_size=8), st.lists(st.integers(0, 10_000), max_size=4))
def test_frontend_messages_survive_encode_then_parse(messages: list[m.Message], cuts: list[int]) -> None:
    wire = m.encode_messages(messages)
    assert feed_in_pieces(FrontendParser(startup=False), wire, cuts) == messages


@FUZZ
@given(
    startup_messages, st.lists(frontend_messages, max_size=4), st.lists(st.integers(0, 10_000), max_size=4)
)
def test_startup_then_messages_survive_encode_then_parse(
    first: m.Message, rest: list[m.Message], cuts: list[int]
) -> None:
    # Nothing may follow a CancelRequest, so only a StartupMessage gets a session after it.
    messages = [first, *rest] if isinstance(first, m.StartupMessage) else [first]
    assert feed_in_pieces(FrontendParser(), m.encode_messages(messages), cuts) == messages


@FUZZ
@given(st.builds(m.SASLInitialResponse, name, value), st.lists(st.builds(m.SASLResponse, blob), max_size=3))
def test_sasl_exchanges_survive_encode_then_parse(first: m.Message, rest: list[m.Message]) -> None:
    parser = FrontendParser(startup=False)
    parser.auth_response_kind = "sasl_initial"
    assert parser.feed(m.encode_messages([first, *rest])) == [first, *rest]


@FUZZ
@given(st.lists(backend_messages, max_size=10), st.lists(st.integers(0, 10_000), max_size=4))
def test_backend_messages_survive_encode_then_parse(messages: list[m.Message], cuts: list[int]) -> None:
    wire = m.encode_messages(messages)
    assert feed_in_pieces(BackendParser(), wire, cuts) == messages


@FUZZ
@given(
    st.lists(value, min_size=1, max_size=8),
    st.dictionaries(st.integers(0, 7), value, max_size=4),
)
def test_rewriting_a_row_equals_encoding_the_changed_row(values: list[bytes | None], changes: dict) -> None:
    changes = {i: v for i, v in changes.items() if i < len(values)}
    expected = [changes.get(i, v) for i, v in enumerate(values)]
    assert bytes(rewrite_data_row(m.encode_data_row(values), changes)) == m.encode_data_row(expected)


def only_protocol_errors(parser: FrontendParser | BackendParser, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except ProtocolError as exc:
        assert exc.sqlstate in {"08P01", "54000", "22021", "0A000"}


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=6), st.booleans(), st.integers(8, 1 << 20))
def test_random_bytes_from_a_client_raise_only_protocol_errors(
    chunks: list[bytes], startup: bool, limit: int
) -> None:
    only_protocol_errors(FrontendParser(startup=startup, max_message_size=limit), chunks)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=6), st.integers(8, 1 << 20))
def test_random_bytes_from_a_server_raise_only_protocol_errors(chunks: list[bytes], limit: int) -> None:
    only_protocol_errors(BackendParser(max_message_size=limit), chunks)


@FUZZ
@given(
    st.lists(backend_messages, min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_server_streams_raise_only_protocol_errors(
    messages: list[m.Message], flips: list[tuple[int, int]]
) -> None:
    # Mostly valid bytes reach deeper into each decoder than random ones do.
    wire = bytearray(m.encode_messages(messages))
    for at, byte in flips:
        wire[at % len(wire)] = byte
    only_protocol_errors(BackendParser(), [bytes(wire)])


@FUZZ
@given(
    startup_messages,
    st.lists(frontend_messages, min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.sampled_from(["password", "sasl_initial", "sasl"]),
)
def test_corrupted_client_streams_raise_only_protocol_errors(
    first: m.Message, messages: list[m.Message], flips: list[tuple[int, int]], auth: str
) -> None:
    wire = bytearray(m.encode_messages([first, *messages]))
    for at, byte in flips:
        wire[at % len(wire)] = byte
    parser = FrontendParser()
    parser.auth_response_kind = auth  # type: ignore[assignment]
    only_protocol_errors(parser, [bytes(wire)])
