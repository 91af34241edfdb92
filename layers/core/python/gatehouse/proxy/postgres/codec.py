"""Incremental, pure decoding of the PostgreSQL protocol v3: bytes in, messages out, no I/O.

`FrontendParser` reads what a client sends (startup packets first, then typed messages);
`BackendParser` reads what a server sends. Both keep a partial message between `feed` calls,
refuse a message over the size limit as soon as its length field arrives (before buffering its
body), and raise nothing but `ProtocolError` on malformed input. After a `ProtocolError` a parser
stays failed: the stream has lost its framing and the connection must end.

Speed: a received chunk is framed in place through one memoryview; DataRow values are slices
of it and `DataRow.raw` is the whole message, so an unmasked row is forwarded without a copy.
With `batch_rows` (the proxy's relay) consecutive rows are one `DataRows` of offsets into the
chunk: a large result costs no Python object per row or per value, only the walk that checks it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Literal

from gatehouse.proxy.postgres import messages as m
from gatehouse.proxy.postgres.exceptions import (
    CHARACTER_NOT_IN_REPERTOIRE,
    FEATURE_NOT_SUPPORTED,
    PROGRAM_LIMIT_EXCEEDED,
    ProtocolError,
)

# PostgreSQL's own limits (src/include/libpq/pqcomm.h: MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET_LENGTH = 10_000
MAX_CANCEL_KEY_LENGTH = 256
# Client messages are statements and parameters; 16 MiB is generous for those and bounds what
# one client can make the proxy hold. Server messages carry rows (a bytea can be large).
DEFAULT_MAX_FRONTEND_MESSAGE = 16 * 1024 * 1024
DEFAULT_MAX_BACKEND_MESSAGE = 64 * 1024 * 1024

AuthResponseKind = Literal["password", "sasl_initial", "sasl"]

_i16 = struct.Struct("!h").unpack_from
_u16 = struct.Struct("!H").unpack_from
_i32 = struct.Struct("!i").unpack_from
_u32 = struct.Struct("!I").unpack_from
_i8 = struct.Struct("!b").unpack_from
_I32_PACK = struct.Struct("!i").pack
_FIELD = struct.Struct("!IhIhih")
_FIELD_SIZE = _FIELD.size
_FIELD_UNPACK = _FIELD.unpack_from

# What a malformed body makes the standard library raise while we read it.
_DECODE_FAILURES = (struct.error, IndexError, ValueError)


class _Reader:
    """Sequential reads over one message body, every read bounds-checked."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, pos, end

    def _take(self, size: int) -> int:
        start = self.pos
        if size < 0 or start + size > self.end:
            raise ProtocolError("message is shorter than its contents")
        self.pos = start + size
        return start

    def int8(self) -> int:
        return int(_i8(self.buf, self._take(1))[0])

    def int16(self) -> int:
        return int(_i16(self.buf, self._take(2))[0])

    def uint16(self) -> int:
        return int(_u16(self.buf, self._take(2))[0])

    def int32(self) -> int:
        return int(_i32(self.buf, self._take(4))[0])

    def uint32(self) -> int:
        return int(_u32(self.buf, self._take(4))[0])

    def byte(self) -> str:
        return chr(self.buf[self._take(1)])

    def raw(self, size: int) -> bytes:
        start = self._take(size)
        return self.buf[start : start + size]

    def rest(self) -> bytes:
        return self.raw(self.end - self.pos)

    def cstr_bytes(self) -> bytes:
        nul = self.buf.find(b"\x00", self.pos, self.end)
        if nul < 0:
            raise ProtocolError("unterminated string in message")
        raw = self.buf[self.pos : nul]
        self.pos = nul + 1
        return raw

    def cstr(self) -> str:
        raw = self.cstr_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                "invalid byte sequence for encoding UTF8", sqlstate=CHARACTER_NOT_IN_REPERTOIRE
            ) from exc

    def value(self) -> bytes | None:
        size = self.int32()
        if size == -1:
            return None
        if size < 0:
            raise ProtocolError(f"invalid value length {size}")
        return self.raw(size)

    def formats(self) -> tuple[int, ...]:
        codes = tuple(self.int16() for _ in range(self.uint16()))
        for code in codes:
            _check_format(code)
        return codes

    def done(self) -> None:
        if self.pos != self.end:
            raise ProtocolError("message is longer than its contents")


def _check_format(code: int) -> None:
    if code not in (m.TEXT_FORMAT, m.BINARY_FORMAT):
        raise ProtocolError(f"unsupported format code: {code}")


def _check_kind(kind: str) -> str:
    if kind not in ("S", "P"):
        raise ProtocolError(f"invalid kind {kind!r}: expected S (statement) or P (portal)")
    return kind


# ---------------------------------------------------------------- frontend bodies


def _query(r: _Reader) -> m.Message:
    return m.Query(r.cstr())


def _parse(r: _Reader) -> m.Message:
    statement, sql = r.cstr(), r.cstr()
    types = tuple(r.uint32() for _ in range(r.uint16()))
    return m.Parse(statement, sql, types)


def _bind(r: _Reader) -> m.Message:
    portal, statement = r.cstr(), r.cstr()
    param_formats = r.formats()
    params = tuple(r.value() for _ in range(r.uint16()))
    # PostgreSQL's rule (exec_bind_message): none, one for all, or one per parameter.
    if len(param_formats) > 1 and len(param_formats) != len(params):
        raise ProtocolError(
            f"bind message has {len(param_formats)} parameter formats but {len(params)} parameters"
        )
    return m.Bind(portal, statement, param_formats, params, r.formats())


def _describe(r: _Reader) -> m.Message:
    return m.Describe(_check_kind(r.byte()), r.cstr())


def _close(r: _Reader) -> m.Message:
    return m.Close(_check_kind(r.byte()), r.cstr())


def _execute(r: _Reader) -> m.Message:
    return m.Execute(r.cstr(), r.int32())


def _function_call(r: _Reader) -> m.Message:
    oid = r.uint32()
    arg_formats = r.formats()
    args = tuple(r.value() for _ in range(r.uint16()))
    result_format = r.int16()
    _check_format(result_format)
    return m.FunctionCall(oid, arg_formats, args, result_format)


def _copy_data(r: _Reader) -> m.Message:
    return m.CopyData(r.rest())


def _copy_fail(r: _Reader) -> m.Message:
    return m.CopyFail(r.cstr())


def _empty(cls: type[m.Message]) -> Callable[[_Reader], m.Message]:
    def decode(r: _Reader) -> m.Message:
        return cls()

    return decode


_FRONTEND: dict[int, Callable[[_Reader], m.Message]] = {
    ord("Q"): _query,
    ord("P"): _parse,
    ord("B"): _bind,
    ord("D"): _describe,
    ord("E"): _execute,
    ord("C"): _close,
    ord("S"): _empty(m.Sync),
    ord("H"): _empty(m.Flush),
    ord("X"): _empty(m.Terminate),
    ord("F"): _function_call,
    ord("d"): _copy_data,
    ord("c"): _empty(m.CopyDone),
    ord("f"): _copy_fail,
}


def _password(r: _Reader, kind: AuthResponseKind) -> m.Message:
    if kind == "sasl_initial":
        mechanism = r.cstr()
        return m.SASLInitialResponse(mechanism, r.value())
    if kind == "sasl":
        return m.SASLResponse(r.rest())
    return m.PasswordMessage(r.cstr())


# ---------------------------------------------------------------- backend bodies


def _authentication(r: _Reader) -> m.Message:
    code = r.int32()
    if code == m.AUTH_OK:
        return m.AuthenticationOk()
    if code == m.AUTH_CLEARTEXT_PASSWORD:
        return m.AuthenticationCleartextPassword()
    if code == m.AUTH_MD5_PASSWORD:
        return m.AuthenticationMD5Password(r.raw(4))
    if code == m.AUTH_SASL:
        mechanisms = []
        while (name := r.cstr()) != "":
            mechanisms.append(name)
        return m.AuthenticationSASL(tuple(mechanisms))
    if code == m.AUTH_SASL_CONTINUE:
        return m.AuthenticationSASLContinue(r.rest())
    if code == m.AUTH_SASL_FINAL:
        return m.AuthenticationSASLFinal(r.rest())
    # Kerberos, GSSAPI, SSPI: the proxy authenticates upstream itself and supports none of them.
    raise ProtocolError(f"unsupported authentication request {code}", sqlstate=FEATURE_NOT_SUPPORTED)


def _parameter_status(r: _Reader) -> m.Message:
    return m.ParameterStatus(r.cstr(), r.cstr())


def _backend_key_data(r: _Reader) -> m.Message:
    pid = r.int32()
    key = r.rest()
    if not 4 <= len(key) <= MAX_CANCEL_KEY_LENGTH:
        raise ProtocolError(f"invalid cancel key length {len(key)}")
    return m.BackendKeyData(pid, key)


def _ready_for_query(r: _Reader) -> m.Message:
    status = r.byte()
    if status not in ("I", "T", "E"):
        raise ProtocolError(f"invalid transaction status {status!r}")
    return m.ReadyForQuery(status)


def _row_description(r: _Reader) -> m.Message:
    fields = []
    for _ in range(r.uint16()):
        name = r.cstr()
        table_oid, attnum, type_oid, size, modifier, fmt = _FIELD_UNPACK(r.buf, r._take(_FIELD_SIZE))
        _check_format(fmt)
        fields.append(m.FieldDescription(name, table_oid, attnum, type_oid, size, modifier, fmt))
    return m.RowDescription(tuple(fields))


def _command_complete(r: _Reader) -> m.Message:
    return m.CommandComplete(r.cstr())


def _notice_fields(r: _Reader) -> dict[str, str]:
    fields: dict[str, str] = {}
    while (code := r.byte()) != "\x00":
        # Replace, not refuse: an error the server sent must reach the client even if it is
        # in another encoding (startup errors are sent before client_encoding applies).
        fields[code] = r.cstr_bytes().decode("utf-8", errors="replace")
    return fields


def _error_response(r: _Reader) -> m.Message:
    return m.ErrorResponse(_notice_fields(r))


def _notice_response(r: _Reader) -> m.Message:
    return m.NoticeResponse(_notice_fields(r))


def _parameter_description(r: _Reader) -> m.Message:
    return m.ParameterDescription(tuple(r.uint32() for _ in range(r.uint16())))


def _copy_response(
    cls: type[m.CopyInResponse | m.CopyOutResponse | m.CopyBothResponse],
) -> Callable[[_Reader], m.Message]:
    def decode(r: _Reader) -> m.Message:
        overall = r.int8()
        _check_format(overall)
        return cls(overall, r.formats())

    return decode


def _notification(r: _Reader) -> m.Message:
    return m.NotificationResponse(r.int32(), r.cstr(), r.cstr())


def _function_call_response(r: _Reader) -> m.Message:
    return m.FunctionCallResponse(r.value())


def _negotiate_protocol_version(r: _Reader) -> m.Message:
    newest = r.int32()
    count = r.int32()
    if count < 0:
        raise ProtocolError(f"invalid option count {count}")
    return m.NegotiateProtocolVersion(newest, tuple(r.cstr() for _ in range(count)))


_BACKEND: dict[int, Callable[[_Reader], m.Message]] = {
    ord("R"): _authentication,
    ord("S"): _parameter_status,
    ord("K"): _backend_key_data,
    ord("Z"): _ready_for_query,
    ord("T"): _row_description,
    ord("C"): _command_complete,
    ord("I"): _empty(m.EmptyQueryResponse),
    ord("E"): _error_response,
    ord("N"): _notice_response,
    ord("1"): _empty(m.ParseComplete),
    ord("2"): _empty(m.BindComplete),
    ord("3"): _empty(m.CloseComplete),
    ord("n"): _empty(m.NoData),
    ord("s"): _empty(m.PortalSuspended),
    ord("t"): _parameter_description,
    ord("G"): _copy_response(m.CopyInResponse),
    ord("H"): _copy_response(m.CopyOutResponse),
    ord("W"): _copy_response(m.CopyBothResponse),
    ord("A"): _notification,
    ord("V"): _function_call_response,
    ord("v"): _negotiate_protocol_version,
    ord("d"): _copy_data,
    ord("c"): _empty(m.CopyDone),
}

_D = ord("D")


def _data_row(
    buf: bytes, view: memoryview, start: int, body: int, end: int, i32: Callable[..., tuple[int]] = _i32
) -> m.DataRow:
    """The hot path: one slice per column, no other per-column object (`i32` bound for speed)."""
    try:
        count = _u16(buf, body)[0]
        pos = body + 2
        values: list[memoryview | None] = []
        append = values.append
        for _ in range(count):
            size = i32(buf, pos)[0]
            pos += 4
            if size >= 0:
                append(view[pos : pos + size])
                pos += size
            elif size == -1:
                append(None)
            else:
                raise ProtocolError(f"invalid value length {size}")
    except struct.error as exc:
        raise ProtocolError("DataRow is shorter than its columns") from exc
    # Every read stayed inside the message only if the walk ends exactly at its end: a length
    # that overran would have read (or sliced) into the next message.
    if pos != end:
        raise ProtocolError("DataRow length does not match its columns")
    return m.DataRow(values, view[start:end])


def _data_rows(
    buf: bytes,
    pos: int,
    total: int,
    limit: int,
    i32: Callable[..., tuple[int]] = _i32,
    u16: Callable[..., tuple[int]] = _u16,
) -> tuple[m.DataRows, int]:
    """The hot path of a large result: the complete DataRows from `pos` on (the first one known
    complete, with a valid length) with one column count, checked as `_data_row` checks one, as
    offsets into `buf`: no object per row or per value. Returns the run and where it ended; what
    stops it (another message, another column count, a partial or invalid one) is framed next."""
    starts: list[int] = []
    spans: list[int] = []
    add_row = starts.append
    add = spans.append
    columns = u16(buf, pos + 5)[0]
    try:
        while True:
            add_row(pos)
            end = pos + 1 + i32(buf, pos + 1)[0]
            at = pos + 7
            for _ in range(columns):
                size = i32(buf, at)[0]
                at += 4
                if size >= 0:
                    add(at)
                    at += size
                    add(at)
                elif size == -1:
                    add(at)
                    add(at - 1)  # end before start: NULL
                else:
                    raise ProtocolError(f"invalid value length {size}")
            # As in _data_row: the walk must end exactly at the message's end.
            if at != end:
                raise ProtocolError("DataRow length does not match its columns")
            pos = end
            if total - pos < 7 or buf[pos] != _D:
                break
            length = i32(buf, pos + 1)[0]
            if not 6 <= length <= limit or pos + 1 + length > total or u16(buf, pos + 5)[0] != columns:
                break
    except struct.error as exc:
        raise ProtocolError("DataRow is shorter than its columns") from exc
    add_row(pos)
    return m.DataRows(buf, starts, columns, spans), pos


# ---------------------------------------------------------------- framing


class _Framer:
    """Splits a byte stream into messages; subclasses say how a header reads and what a body means."""

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._pending: list[bytes] = []
        self._pending_size = 0
        # Total size of the partial message at the front of the buffer, once its header is in.
        self._wanted = 0
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""
        return self._pending_size

    def feed(self, data: bytes | bytearray | memoryview) -> list[m.Message]:
        """Every message completed by `data`, in order; a trailing partial message is kept."""
        if self._failed is not None:
            failed = self._failed
            raise ProtocolError(f"stream already failed: {failed.message}", sqlstate=failed.sqlstate)
        if not data:
            return []
        size = self._pending_size + len(data)
        if self._wanted and size < self._wanted:
            # Still inside one large message: keep the pieces and join them once, not per feed.
            self._pending.append(bytes(data))
            self._pending_size = size
            return []
        if self._pending:
            self._pending.append(bytes(data))
            buf = b"".join(self._pending)
        else:
            buf = bytes(data)
        self._pending, self._pending_size, self._wanted = [], 0, 0
        out: list[m.Message] = []
        try:
            pos = self._frames(buf, out)
        except ProtocolError as exc:
            self._failed = exc
            raise
        except _DECODE_FAILURES as exc:
            self._failed = ProtocolError(f"malformed message: {exc}")
            raise self._failed from exc
        if pos < len(buf):
            rest = buf[pos:]
            self._pending, self._pending_size = [rest], len(rest)
            self._wanted = self._partial_size(rest)
        return out

    def _frames(self, buf: bytes, out: list[m.Message]) -> int:
        raise NotImplementedError

    def _partial_size(self, rest: bytes) -> int:
        raise NotImplementedError

    def _too_large(self, length: int) -> ProtocolError:
        return ProtocolError(
            f"message of {length} bytes is over the limit of {self.max_message_size}",
            sqlstate=PROGRAM_LIMIT_EXCEEDED,
        )

    def _typed_length(self, buf: bytes, pos: int) -> int:
        length = int(_i32(buf, pos + 1)[0])
        if length < 4:
            raise ProtocolError(f"invalid message length {length}")
        if length > self.max_message_size:
            raise self._too_large(length)
        return length


class FrontendParser(_Framer):
    """What a client sends: the startup packets, then typed messages.

    `auth_response_kind` says what the next `p` message is, since the byte alone does not: the session
    sets it to "sasl_initial" when it asks for SASL; after a SASLInitialResponse it moves to "sasl".
    """

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_FRONTEND_MESSAGE, startup: bool = True) -> None:
        super().__init__(max_message_size)
        self.in_startup = startup
        self.auth_response_kind: AuthResponseKind = "password"
        self._closed = False  # after a CancelRequest nothing more may follow

    def _partial_size(self, rest: bytes) -> int:
        if self.in_startup:
            return int(_i32(rest, 0)[0]) if len(rest) >= 4 else 0
        return int(_i32(rest, 1)[0]) + 1 if len(rest) >= 5 else 0

    def _frames(self, buf: bytes, out: list[m.Message]) -> int:
        pos, total = 0, len(buf)
        while pos < total:
            if self._closed:
                raise ProtocolError("data after a CancelRequest")
            if self.in_startup:
                if total - pos < 4:
                    break
                length = int(_i32(buf, pos)[0])
                if not 8 <= length <= MAX_STARTUP_PACKET_LENGTH:
                    raise ProtocolError(f"invalid length of startup packet: {length}")
                if total - pos < length:
                    break
                message = self._startup(buf, pos + 4, pos + length)
                pos += length
                if isinstance(message, m.SSLRequest | m.GSSENCRequest) and pos < total:
                    # CVE-2021-23214: bytes sent before the TLS handshake must not be read as if
                    # they came over the encrypted channel.
                    raise ProtocolError("received unencrypted data after SSL or GSSAPI encryption request")
                out.append(message)
                continue
            if total - pos < 5:
                break
            length = self._typed_length(buf, pos)
            end = pos + 1 + length
            if end > total:
                break
            code = buf[pos]
            reader = _Reader(buf, pos + 5, end)
            if code == 0x70:  # 'p': its meaning depends on the authentication exchange
                message = _password(reader, self.auth_response_kind)
                if isinstance(message, m.SASLInitialResponse):
                    self.auth_response_kind = "sasl"
            else:
                decode = _FRONTEND.get(code)
                if decode is None:
                    raise ProtocolError(f"invalid frontend message type {code}")
                message = decode(reader)
            reader.done()
            out.append(message)
            pos = end
        return pos

    def _startup(self, buf: bytes, body: int, end: int) -> m.Message:
        reader = _Reader(buf, body, end)
        version = reader.int32()
        if version == m.SSL_REQUEST_CODE or version == m.GSSENC_REQUEST_CODE:
            reader.done()
            return m.SSLRequest() if version == m.SSL_REQUEST_CODE else m.GSSENCRequest()
        if version == m.CANCEL_REQUEST_CODE:
            pid = reader.int32()
            key = reader.rest()
            if not 4 <= len(key) <= MAX_CANCEL_KEY_LENGTH:
                raise ProtocolError(f"invalid cancel key length {len(key)}")
            self._closed = True
            return m.CancelRequest(pid, key)
        if version >> 16 != 3:
            raise ProtocolError(
                f"unsupported frontend protocol {version >> 16}.{version & 0xFFFF}: "
                "server supports 3.0 to 3.2",
                sqlstate=FEATURE_NOT_SUPPORTED,
            )
        parameters: dict[str, str] = {}
        while (name := reader.cstr()) != "":
            if name in parameters:
                # Which of two `user` values would win differs between readers: refuse both.
                raise ProtocolError(f"startup parameter {name!r} given twice")
            parameters[name] = reader.cstr()
        reader.done()
        self.in_startup = False
        return m.StartupMessage(parameters, version)


class BackendParser(_Framer):
    """What a server sends. Call `expect_ssl_response()` after writing an SSLRequest (or
    `expect_gssenc_response()`): the answer is one bare byte, not a message.

    With `batch_rows` (the proxy's relay), consecutive DataRows come as one `DataRows` run
    instead of one `DataRow` each.
    """

    def __init__(
        self, *, max_message_size: int = DEFAULT_MAX_BACKEND_MESSAGE, batch_rows: bool = False
    ) -> None:
        super().__init__(max_message_size)
        self._bare_byte: type[m.SSLResponse | m.GSSENCResponse] | None = None
        self.batch_rows = batch_rows

    def expect_ssl_response(self) -> None:
        self._bare_byte = m.SSLResponse

    def expect_gssenc_response(self) -> None:
        self._bare_byte = m.GSSENCResponse

    def _partial_size(self, rest: bytes) -> int:
        return int(_i32(rest, 1)[0]) + 1 if len(rest) >= 5 else 0

    def _frames(self, buf: bytes, out: list[m.Message]) -> int:
        pos, total = 0, len(buf)
        view = memoryview(buf)
        table = _BACKEND
        limit = self.max_message_size
        while pos < total:
            code = buf[pos]
            if self._bare_byte is not None:
                answer = self._bare_response(code)
                if answer is not None:
                    out.append(answer)
                    pos += 1
                    if pos < total:
                        # As on the server side: nothing may arrive before the handshake.
                        raise ProtocolError("received unencrypted data after the encryption response")
                    continue
            if total - pos < 5:
                break
            length = _i32(buf, pos + 1)[0]
            if not 4 <= length <= limit:
                raise (
                    self._too_large(length)
                    if length > limit
                    else ProtocolError(f"invalid message length {length}")
                )
            end = pos + 1 + length
            if end > total:
                break
            if code == _D:
                if self.batch_rows and length >= 6:
                    run, end = _data_rows(buf, pos, total, limit)
                    out.append(run)
                else:
                    out.append(_data_row(buf, view, pos, pos + 5, end))
            else:
                decode = table.get(code)
                if decode is None:
                    raise ProtocolError(f"invalid backend message type {code}")
                reader = _Reader(buf, pos + 5, end)
                out.append(decode(reader))
                reader.done()
            pos = end
        return pos

    def _bare_response(self, code: int) -> m.Message | None:
        kind = self._bare_byte
        assert kind is not None
        accepted = b"S"[0] if kind is m.SSLResponse else b"G"[0]
        if code == accepted or code == ord("N"):
            self._bare_byte = None
            return kind(code == accepted)
        if code == ord("E"):
            # A server too old for the request answers with an ErrorResponse instead.
            self._bare_byte = None
            return None
        raise ProtocolError(f"invalid answer {code} to an encryption request")


# ---------------------------------------------------------------- rewriting rows


def rewrite_data_row(raw: m.Value, replacements: Mapping[int, m.Value | None]) -> m.Value:
    """`raw` (a whole DataRow message) with the columns in `replacements` set to new values.

    Only the replaced columns are re-encoded; the bytes between them are copied as slices, and
    with no replacements `raw` itself comes back untouched. None writes SQL NULL.
    """
    if not replacements:
        return raw
    view = memoryview(raw)
    total = len(view)
    if total < 7 or view[0] != _D or int(_i32(view, 1)[0]) + 1 != total:
        raise ProtocolError("not a DataRow message")
    count = int(_u16(view, 5)[0])
    last = max(replacements)
    if min(replacements) < 0 or last >= count:
        raise ValueError(f"column index out of range for a row of {count} columns")
    parts: list[bytes | memoryview] = []
    pos = run_start = 7
    for index in range(last + 1):
        if pos + 4 > total:
            raise ProtocolError("DataRow is shorter than its columns")
        size = int(_i32(view, pos)[0])
        column_end = pos + 4 + max(size, 0)
        if column_end > total:
            raise ProtocolError("DataRow is shorter than its columns")
        if index in replacements:
            parts.append(view[run_start:pos])
            value = replacements[index]
            parts.append(b"\xff\xff\xff\xff" if value is None else _I32_PACK(len(value)) + bytes(value))
            run_start = column_end
        pos = column_end
    parts.append(view[run_start:])
    body = b"".join(parts)
    return b"D" + _I32_PACK(len(body) + 6) + view[5:7].tobytes() + body
