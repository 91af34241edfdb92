"""PostgreSQL frontend/backend protocol v3 messages, each able to encode itself.

Layouts follow "Message Formats" in the PostgreSQL manual (protocol chapter). Every message is an
immutable value; `encode()` returns its exact wire bytes. Decoding lives in `codec`.

Strings are UTF-8: the proxy speaks `client_encoding=UTF8` on both sides, so text it cannot decode
is refused rather than guessed at. Binary payloads (parameter values, row values, COPY data, SASL
data) stay bytes; values decoded from the wire are `memoryview` slices of the received buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from gatehouse.proxy.postgres.exceptions import ProtocolError

PROTOCOL_VERSION_3_0 = 3 << 16
PROTOCOL_VERSION_3_2 = (3 << 16) | 2
# Special "protocol versions" of the startup packets that are not a StartupMessage.
CANCEL_REQUEST_CODE = (1234 << 16) | 5678
SSL_REQUEST_CODE = (1234 << 16) | 5679
GSSENC_REQUEST_CODE = (1234 << 16) | 5680

TEXT_FORMAT = 0
BINARY_FORMAT = 1

Value = bytes | bytearray | memoryview

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HEADER = struct.Struct("!ci")


def _cstr(text: str) -> bytes:
    raw = text.encode("utf-8")
    # A NUL inside would end the string early on the other side and shift every later field.
    if b"\x00" in raw:
        raise ProtocolError("a protocol string cannot contain a NUL byte")
    return raw + b"\x00"


def _frame(type_code: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return _HEADER.pack(type_code, len(body) + 4) + body


def _int16s(values: Sequence[int]) -> bytes:
    return _U16.pack(len(values)) + struct.pack(f"!{len(values)}h", *values)


def _oids(values: Sequence[int]) -> bytes:
    return _U16.pack(len(values)) + struct.pack(f"!{len(values)}I", *values)


def _values(values: Sequence[Value | None]) -> bytes:
    parts = [_U16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I32.pack(len(value)))
            parts.append(bytes(value))
    return b"".join(parts)


class Message:
    """Base of every protocol message."""

    __slots__ = ()
    type_code: ClassVar[bytes] = b""

    def encode(self) -> bytes:
        return _frame(self.type_code)


def encode_messages(messages: Iterable[Message]) -> bytes:
    """Several messages as one buffer, to write with one call."""
    return b"".join(message.encode() for message in messages)


# ---------------------------------------------------------------- frontend: startup packets


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    parameters: Mapping[str, str]
    protocol_version: int = PROTOCOL_VERSION_3_0

    def encode(self) -> bytes:
        parts = [_I32.pack(self.protocol_version)]
        for name, value in self.parameters.items():
            parts += [_cstr(name), _cstr(value)]
        parts.append(b"\x00")
        body = b"".join(parts)
        return _I32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest(Message):
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Message):
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    process_id: int
    # Four bytes in protocol 3.0; 3.2 allows up to 256.
    secret_key: bytes

    def encode(self) -> bytes:
        return (
            _I32.pack(12 + len(self.secret_key))
            + _I32.pack(CANCEL_REQUEST_CODE)
            + (_I32.pack(self.process_id) + self.secret_key)
        )


# ---------------------------------------------------------------- frontend: typed messages


@dataclass(frozen=True, slots=True)
class Query(Message):
    type_code: ClassVar[bytes] = b"Q"
    sql: str

    def encode(self) -> bytes:
        return _frame(self.type_code, _cstr(self.sql))


@dataclass(frozen=True, slots=True)
class Parse(Message):
    type_code: ClassVar[bytes] = b"P"
    statement: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _frame(self.type_code, _cstr(self.statement), _cstr(self.sql), _oids(self.param_types))


@dataclass(frozen=True, slots=True)
class Bind(Message):
    type_code: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[Value | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _frame(
            self.type_code,
            _cstr(self.portal),
            _cstr(self.statement),
            _int16s(self.param_formats),
            _values(self.params),
            _int16s(self.result_formats),
        )


@dataclass(frozen=True, slots=True)
class Describe(Message):
    type_code: ClassVar[bytes] = b"D"
    kind: str  # "S" a prepared statement, "P" a portal
    name: str = ""

    def encode(self) -> bytes:
        return _frame(self.type_code, self.kind.encode("ascii"), _cstr(self.name))


@dataclass(frozen=True, slots=True)
class Execute(Message):
    type_code: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0  # 0: no limit

    def encode(self) -> bytes:
        return _frame(self.type_code, _cstr(self.portal), _I32.pack(self.max_rows))


@dataclass(frozen=True, slots=True)
class Close(Message):
    type_code: ClassVar[bytes] = b"C"
    kind: str  # "S" or "P"
    name: str = ""

    def encode(self) -> bytes:
        return _frame(self.type_code, self.kind.encode("ascii"), _cstr(self.name))


@dataclass(frozen=True, slots=True)
class Sync(Message):
    type_code: ClassVar[bytes] = b"S"


@dataclass(frozen=True, slots=True)
class Flush(Message):
    type_code: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    type_code: ClassVar[bytes] = b"X"


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    type_code: ClassVar[bytes] = b"p"
    password: str

    def encode(self) -> bytes:
        return _frame(self.type_code, _cstr(self.password))


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    type_code: ClassVar[bytes] = b"p"
    mechanism: str
    data: Value | None = None  # None: no initial response (length -1 on the wire)

    def encode(self) -> bytes:
        data = b"\xff\xff\xff\xff" if self.data is None else _I32.pack(len(self.data)) + bytes(self.data)
        return _frame(self.type_code, _cstr(self.mechanism), data)


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    type_code: ClassVar[bytes] = b"p"
    data: Value

    def encode(self) -> bytes:
        return _frame(self.type_code, bytes(self.data))


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    """The fast-path function call: decoded so the proxy can refuse it (it bypasses SQL)."""

    type_code: ClassVar[bytes] = b"F"
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[Value | None, ...] = ()
    result_format: int = TEXT_FORMAT

    def encode(self) -> bytes:
        return _frame(
            self.type_code,
            _U32.pack(self.function_oid),
            _int16s(self.arg_formats),
            _values(self.args),
            _I16.pack(self.result_format),
        )


# ---------------------------------------------------------------- both directions: COPY


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    type_code: ClassVar[bytes] = b"d"
    data: Value

    def encode(self) -> bytes:
        return _frame(self.type_code, bytes(self.data))


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    type_code: ClassVar[bytes] = b"c"


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    type_code: ClassVar[bytes] = b"f"
    reason: str

    def encode(self) -> bytes:
        return _frame(self.type_code, _cstr(self.reason))


# ---------------------------------------------------------------- backend: authentication

AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Message):
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _frame(self.type_code, _I32.pack(AUTH_OK))


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Message):
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _frame(self.type_code, _I32.pack(AUTH_CLEARTEXT_PASSWORD))


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Message):
    type_code: ClassVar[bytes] = b"R"
    salt: bytes  # exactly four bytes

    def encode(self) -> bytes:
        if len(self.salt) != 4:
            raise ProtocolError("an MD5 salt is four bytes")
        return _frame(self.type_code, _I32.pack(AUTH_MD5_PASSWORD), self.salt)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Message):
    type_code: ClassVar[bytes] = b"R"
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        names = b"".join(_cstr(name) for name in self.mechanisms)
        return _frame(self.type_code, _I32.pack(AUTH_SASL), names, b"\x00")


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(Message):
    type_code: ClassVar[bytes] = b"R"
    data: Value

    def encode(self) -> bytes:
        return _frame(self.type_code, _I32.pack(AUTH_SASL_CONTINUE), bytes(self.data))


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Message):
    type_code: ClassVar[bytes] = b"R"
    data: Value

    def encode(self) -> bytes:
        return _frame(self.type_code, _I32.pack(AUTH_SASL_FINAL), bytes(self.data))


# ---------------------------------------------------------------- backend: session state


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    type_code: ClassVar[bytes] = b"S"
    name: str
    value: str

    def encode(self) -> bytes:
        return _frame(self.type_code, _cstr(self.name), _cstr(self.value))


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    type_code: ClassVar[bytes] = b"K"
    process_id: int
    secret_key: bytes

    def encode(self) -> bytes:
        return _frame(self.type_code, _I32.pack(self.process_id), self.secret_key)


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    type_code: ClassVar[bytes] = b"Z"
    status: str = "I"  # I idle, T in a transaction, E in a failed transaction

    def encode(self) -> bytes:
        return _frame(self.type_code, self.status.encode("ascii"))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    type_code: ClassVar[bytes] = b"v"
    newest_minor: int
    unrecognized_options: tuple[str, ...] = ()

    def encode(self) -> bytes:
        names = b"".join(_cstr(name) for name in self.unrecognized_options)
        return _frame(
            self.type_code, _I32.pack(self.newest_minor), _I32.pack(len(self.unrecognized_options)), names
        )


@dataclass(frozen=True, slots=True)
class SSLResponse(Message):
    """The server's one-byte answer to SSLRequest: `S` (go ahead with TLS) or `N`."""

    accepted: bool

    def encode(self) -> bytes:
        return b"S" if self.accepted else b"N"


@dataclass(frozen=True, slots=True)
class GSSENCResponse(Message):
    """The server's one-byte answer to GSSENCRequest: `G` or `N`."""

    accepted: bool

    def encode(self) -> bytes:
        return b"G" if self.accepted else b"N"


# ---------------------------------------------------------------- backend: results


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column_attnum: int = 0
    type_oid: int = 25  # text
    type_size: int = -1
    type_modifier: int = -1
    format: int = TEXT_FORMAT

    def encode(self) -> bytes:
        return _cstr(self.name) + _FIELD.pack(
            self.table_oid, self.column_attnum, self.type_oid, self.type_size, self.type_modifier, self.format
        )


_FIELD = struct.Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    type_code: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        return _frame(self.type_code, _U16.pack(len(self.fields)), *(f.encode() for f in self.fields))


# Not frozen: a frozen dataclass's __init__ costs twice as much, and this one is built per row of
# every result. Treat it as immutable all the same.
@dataclass(slots=True)
class DataRow(Message):
    """One result row. Decoded values are slices of the received bytes, `raw` the whole message.

    The proxy forwards `raw` untouched when no masking rule applies to the row, and rewrites
    only the masked columns otherwise (`codec.rewrite_data_row`).
    """

    type_code: ClassVar[bytes] = b"D"
    values: Sequence[Value | None]
    raw: Value = field(default=b"", compare=False, repr=False)

    def encode(self) -> bytes:
        return _frame(self.type_code, _values(self.values))


@dataclass(slots=True, eq=False)
class DataRows(Message):
    """A run of consecutive DataRow messages of one received buffer, framed and checked as
    DataRow is, but kept as offsets into `buf` rather than split into one object per row: a large
    result is relayed as slices of what the server sent (`BackendParser(batch_rows=True)`).

    Row `i` is `buf[starts[i]:starts[i + 1]]` (`starts` has one entry more than there are rows);
    every row of a run has `columns` values; value `c` of row `i` is
    `buf[spans[k]:spans[k + 1]]` with `k = 2 * (i * columns + c)`, and SQL NULL where
    `spans[k + 1] < spans[k]`. Either way the value's length field sits at `spans[k] - 4`.
    """

    type_code: ClassVar[bytes] = b"D"
    buf: bytes
    starts: list[int]
    columns: int
    spans: list[int]

    def __len__(self) -> int:
        return len(self.starts) - 1

    def rows(self) -> list[DataRow]:
        """The run as DataRow messages (slices of `buf`, as `BackendParser` makes them)."""
        view = memoryview(self.buf)
        spans, width = self.spans, 2 * self.columns
        out = []
        for i in range(len(self)):
            base = i * width
            values: list[Value | None] = [
                view[spans[k] : spans[k + 1]] if spans[k + 1] >= spans[k] else None
                for k in range(base, base + width, 2)
            ]
            out.append(DataRow(values, view[self.starts[i] : self.starts[i + 1]]))
        return out

    def encode(self) -> bytes:
        return self.buf[self.starts[0] : self.starts[-1]]


def encode_data_row(values: Sequence[Value | None]) -> bytes:
    """The wire bytes of a DataRow with these column values (None is SQL NULL)."""
    return _frame(b"D", _values(values))


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    type_code: ClassVar[bytes] = b"C"
    tag: str  # e.g. "SELECT 3", "INSERT 0 1"

    def encode(self) -> bytes:
        return _frame(self.type_code, _cstr(self.tag))


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    type_code: ClassVar[bytes] = b"I"


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    type_code: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    type_code: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    type_code: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class NoData(Message):
    type_code: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    type_code: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    type_code: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        return _frame(self.type_code, _oids(self.type_oids))


@dataclass(frozen=True, slots=True)
class CopyInResponse(Message):
    type_code: ClassVar[bytes] = b"G"
    format: int = TEXT_FORMAT  # overall: 0 textual, 1 binary
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _frame(self.type_code, struct.pack("!b", self.format), _int16s(self.column_formats))


@dataclass(frozen=True, slots=True)
class CopyOutResponse(Message):
    type_code: ClassVar[bytes] = b"H"
    format: int = TEXT_FORMAT
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _frame(self.type_code, struct.pack("!b", self.format), _int16s(self.column_formats))


@dataclass(frozen=True, slots=True)
class CopyBothResponse(Message):
    type_code: ClassVar[bytes] = b"W"
    format: int = TEXT_FORMAT
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _frame(self.type_code, struct.pack("!b", self.format), _int16s(self.column_formats))


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    type_code: ClassVar[bytes] = b"A"
    process_id: int
    channel: str
    payload: str = ""

    def encode(self) -> bytes:
        return _frame(self.type_code, _I32.pack(self.process_id), _cstr(self.channel), _cstr(self.payload))


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    type_code: ClassVar[bytes] = b"V"
    value: Value | None

    def encode(self) -> bytes:
        if self.value is None:
            return _frame(self.type_code, b"\xff\xff\xff\xff")
        return _frame(self.type_code, _I32.pack(len(self.value)), bytes(self.value))


# ---------------------------------------------------------------- backend: errors and notices

# Field type codes of ErrorResponse/NoticeResponse ("Error and Notice Message Fields").
SEVERITY = "S"
SEVERITY_NONLOCALIZED = "V"
SQLSTATE = "C"
MESSAGE = "M"
DETAIL = "D"
HINT = "H"
POSITION = "P"


def _notice_fields(fields: Mapping[str, str]) -> bytes:
    parts = []
    for code, value in fields.items():
        if len(code) != 1 or code == "\x00":
            raise ProtocolError(f"an error field code is one non-NUL byte, not {code!r}")
        parts.append(code.encode("ascii") + _cstr(value))
    parts.append(b"\x00")
    return b"".join(parts)


def _build_fields(
    severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None
) -> dict[str, str]:
    # Both severities: V (never localized) is what clients since 9.6 match on, S what they show.
    fields = {SEVERITY: severity, SEVERITY_NONLOCALIZED: severity, SQLSTATE: sqlstate, MESSAGE: message}
    if detail is not None:
        fields[DETAIL] = detail
    if hint is not None:
        fields[HINT] = hint
    return fields


class _NoticeLike:
    __slots__ = ()
    fields: Mapping[str, str]

    @property
    def severity(self) -> str:
        return self.fields.get(SEVERITY_NONLOCALIZED) or self.fields.get(SEVERITY, "")

    @property
    def sqlstate(self) -> str:
        return self.fields.get(SQLSTATE, "")

    @property
    def message(self) -> str:
        return self.fields.get(MESSAGE, "")

    @property
    def detail(self) -> str | None:
        return self.fields.get(DETAIL)

    @property
    def hint(self) -> str | None:
        return self.fields.get(HINT)


@dataclass(frozen=True, slots=True)
class ErrorResponse(_NoticeLike, Message):
    type_code: ClassVar[bytes] = b"E"
    fields: Mapping[str, str]

    @classmethod
    def build(
        cls,
        sqlstate: str,
        message: str,
        *,
        severity: str = "ERROR",
        detail: str | None = None,
        hint: str | None = None,
    ) -> ErrorResponse:
        return cls(_build_fields(severity, sqlstate, message, detail, hint))

    def encode(self) -> bytes:
        return _frame(self.type_code, _notice_fields(self.fields))


@dataclass(frozen=True, slots=True)
class NoticeResponse(_NoticeLike, Message):
    type_code: ClassVar[bytes] = b"N"
    fields: Mapping[str, str]

    @classmethod
    def build(
        cls,
        sqlstate: str,
        message: str,
        *,
        severity: str = "NOTICE",
        detail: str | None = None,
        hint: str | None = None,
    ) -> NoticeResponse:
        return cls(_build_fields(severity, sqlstate, message, detail, hint))

    def encode(self) -> bytes:
        return _frame(self.type_code, _notice_fields(self.fields))


def error_response_for(exc: ProtocolError) -> ErrorResponse:
    """What the proxy tells a client whose bytes it could not accept: the connection then ends."""
    return ErrorResponse.build(exc.sqlstate, exc.message, severity="FATAL")
