"""Masking result rows on the wire: the service's plan and the masker's rules, applied to DataRows.

The plan (which columns lineage protects, and how) comes from `Gatehouse.column_plans`, with the
RowDescription's table OID and attribute number as the server's own account of each column; the
values are masked by the same `Masker` the API uses (plans, then content detectors on every text
value). This module only decides which bytes to hand it and how to put the answer back:

- a row with nothing to change is forwarded as the bytes the server sent (no copy);
- only the columns that need work are decoded, in the connection's client encoding;
- a column a rule protects is rewritten; a text value stays text, a value of any other type whose
  mask would not be a valid value of that type (a keyed-hash token in an integer column) is sent
  as NULL, the strictest answer the client can still read;
- types Gatehouse reads in binary format are the text types (their binary form is the text) and
  the plain scalar types (numbers, booleans, dates and times, uuid), which no detector looks at;
  any other type asked for in binary format is refused (`BinaryFormatRefused`) unless the result
  has nothing to mask and nothing to scan, because its values could not be checked.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

from gatehouse.exceptions import GatehouseError
from gatehouse.masking import Masker
from gatehouse.masking.plan import ColumnPlan
from gatehouse.proxy.postgres.exceptions import ProtocolError
from gatehouse.proxy.postgres.messages import BINARY_FORMAT, DataRow, DataRows, FieldDescription

# pg_type OIDs. Text types: their text and binary forms are the characters in the client encoding.
JSON_TYPE = 114
TEXT_TYPES = frozenset({25, 1043, 1042, 19, 18, 705, 114})  # text varchar bpchar name char unknown json
# Values no content detector looks at (the API's masker skips numbers, booleans, dates, too).
PLAIN_TYPES = frozenset(
    {
        16,  # bool
        20,  # int8
        21,  # int2
        23,  # int4
        26,  # oid
        28,  # xid
        700,  # float4
        701,  # float8
        1700,  # numeric
        790,  # money
        1082,  # date
        1083,  # time
        1114,  # timestamp
        1184,  # timestamptz
        1186,  # interval
        1266,  # timetz
        2950,  # uuid
        3220,  # pg_lsn
    }
)
COLUMN_LABEL = "[REDACTED]"

# Client encodings (ParameterStatus client_encoding) as Python codecs. Anything else is read as
# latin-1, which maps every byte to one character and back: ASCII patterns are still found and
# the bytes come back unchanged where nothing matched.
_ENCODINGS = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "SQLASCII": "latin-1",
    "LATIN1": "latin-1",
    "WIN1252": "cp1252",
}


class BinaryFormatRefused(GatehouseError):
    code = "binary_format_refused"
    status = 400
    sqlstate = "0A000"


def python_encoding(client_encoding: str) -> str:
    return _ENCODINGS.get((client_encoding or "").upper().replace("-", "").replace("_", ""), "latin-1")


class ResultMasker:
    """The masking of one result shape (one RowDescription) with one plan."""

    def __init__(
        self,
        masker: Masker,
        fields: Sequence[FieldDescription],
        plans: Sequence[ColumnPlan | None],
        *,
        encoding: str = "utf-8",
    ) -> None:
        self._masker = masker
        self._encoding = encoding
        self.names = tuple(f.name for f in fields)
        self.masked_rules: set[str] = set()
        self._null_columns: list[int] = []  # a rule on a value that cannot stay its type
        self._work: list[int] = []  # columns handed to the masker (rules on text, detectors)
        self._plans: list[ColumnPlan | None] = []
        # Positions (in _work) of json columns a rule replaces: the mask is written as a JSON
        # string, so a client that parses json still can (a detector's edit stays inside one).
        self._json: set[int] = set()
        for index, (field, plan) in enumerate(zip(fields, plans, strict=True)):
            text = field.type_oid in TEXT_TYPES
            plain = field.type_oid in PLAIN_TYPES
            binary = field.format == BINARY_FORMAT
            if plan is not None:
                if text:
                    if field.type_oid == JSON_TYPE:
                        self._json.add(len(self._work))
                    self._work.append(index)
                    self._plans.append(plan)
                else:
                    self._null_columns.append(index)
                self.masked_rules.add(plan.rule)
                continue
            if plain:
                continue  # nothing to scan, in either format
            if binary and not text:
                raise BinaryFormatRefused(
                    f"column {field.name!r} (type OID {field.type_oid}) was asked for in binary format, "
                    "which Gatehouse cannot check for sensitive values; ask for text format"
                )
            self._work.append(index)
            self._plans.append(None)

    @property
    def passthrough(self) -> bool:
        """Nothing to mask or scan: every row is forwarded as received."""
        return not self._work and not self._null_columns

    def mask(self, rows: Sequence[DataRow]) -> list[Any]:
        """The bytes to send for `rows`: each row's own `raw` unless a value changed."""
        if self.passthrough or not rows:
            return [r.raw for r in rows]
        encoding = self._encoding
        nulls = [[row.values[index] is not None for row in rows] for index in self._null_columns]
        decoded = [
            [
                None if (v := row.values[index]) is None else bytes(v).decode(encoding, "surrogateescape")
                for row in rows
            ]
            for index in self._work
        ]
        changed = _by_row(self._changes(nulls, decoded))
        return [_encode(row.values, changed[n]) if n in changed else row.raw for n, row in enumerate(rows)]

    def mask_run(self, run: DataRows) -> list[Any]:
        """The bytes to send for a run of rows (`DataRows`): slices of the server's own bytes,
        a rebuilt message only for a row where a value changed."""
        buf, starts = run.buf, run.starts
        view = memoryview(buf)
        if self.passthrough or len(starts) < 2:
            return [view[starts[0] : starts[-1]]]
        if run.columns != len(self.names):
            # The plan is per column of the RowDescription: a row of another shape cannot be
            # matched to it (a short one would fail, a long one would pass values unchecked).
            raise ProtocolError(
                f"a DataRow has {run.columns} columns where its RowDescription has {len(self.names)}"
            )
        spans, width, encoding = run.spans, 2 * run.columns, self._encoding
        nulls = [
            [s <= e for s, e in zip(spans[2 * i :: width], spans[2 * i + 1 :: width], strict=True)]
            for i in self._null_columns
        ]
        decoded = [
            [
                buf[s:e].decode(encoding, "surrogateescape") if s <= e else None
                for s, e in zip(spans[2 * i :: width], spans[2 * i + 1 :: width], strict=True)
            ]
            for i in self._work
        ]
        changes = self._changes(nulls, decoded)
        if not changes:
            return [view[starts[0] : starts[-1]]]
        columns = run.columns
        if len(changes) == 1:
            # One column changes (the usual case: one protected or detected column): no per-row
            # merge, each changed row is three slices of its own bytes around the new value.
            index, by_row = changes[0]
            rebuilt: Any = (
                (n, _replace_one(buf, spans, n * width + 2 * index, starts[n], starts[n + 1], columns, value))
                for n, value in by_row.items()
            )
        else:
            rebuilt = (
                (n, _rebuild(buf, spans, n * width, starts[n], starts[n + 1], columns, replaced))
                for n, replaced in sorted(_by_row(changes).items())
            )
        out: list[Any] = []
        unchanged_from = starts[0]
        for n, row in rebuilt:
            first = starts[n]
            if first > unchanged_from:
                out.append(view[unchanged_from:first])  # rows nothing changed: the server's bytes
            out.append(row)
            unchanged_from = starts[n + 1]
        if unchanged_from < starts[-1]:
            out.append(view[unchanged_from : starts[-1]])
        return out

    def _changes(
        self, nulls: list[list[bool]], decoded: list[list[str | None]]
    ) -> list[tuple[int, dict[int, bytes | None]]]:
        """Per column that changes, {row: its new bytes (None: SQL NULL)} in row order, for every
        value the plan or the masker changes. `nulls`: per null column, whether each row's value
        is not NULL; `decoded`: per work column, each row's value as text."""
        changes: list[tuple[int, dict[int, bytes | None]]] = []
        for index, present in zip(self._null_columns, nulls, strict=True):
            nulled: dict[int, bytes | None] = {n: None for n, there in enumerate(present) if there}
            if nulled:
                changes.append((index, nulled))
        if not decoded:
            return changes
        encoding = self._encoding
        columns = [self.names[i] for i in self._work]
        masked, rules = self._masker.mask_columns(columns, decoded, self._plans)
        for rule in rules:
            self.masked_rules.add(rule.rule)
        for position, (before, after) in enumerate(zip(decoded, masked, strict=True)):
            if after is before:
                continue  # the masker hands back a column it did not change as it was given
            as_json = position in self._json
            by_row: dict[int, bytes | None] = {}
            for n, (old, new) in enumerate(zip(before, after, strict=True)):
                if old != new or type(old) is not type(new):
                    if new is not None and as_json:
                        new = json.dumps(_text(new))
                    by_row[n] = None if new is None else _text(new).encode(encoding, "surrogateescape")
            if by_row:
                changes.append((self._work[position], by_row))
        return changes


def _by_row(changes: list[tuple[int, dict[int, bytes | None]]]) -> dict[int, dict[int, bytes | None]]:
    rows: dict[int, dict[int, bytes | None]] = {}
    for index, by_row in changes:
        for n, value in by_row.items():
            rows.setdefault(n, {})[index] = value
    return rows


_NULL = b"\xff\xff\xff\xff"
_I32 = struct.Struct("!i").pack
_HEAD = struct.Struct("!cih").pack


def _encode(values: Sequence[Any], replaced: dict[int, bytes | None]) -> bytes:
    """A DataRow from the decoded values with `replaced` substituted (one join, no re-walk)."""
    parts: list[Any] = []
    for index, value in enumerate(values):
        if index in replaced:
            value = replaced[index]
        if value is None:
            parts.append(_NULL)
        else:
            parts.append(_I32(len(value)))
            parts.append(value)
    body = b"".join(parts)
    return _HEAD(b"D", len(body) + 6, len(values)) + body


def _rebuild(
    buf: bytes,
    spans: list[int],
    base: int,
    first: int,
    last: int,
    columns: int,
    replaced: dict[int, bytes | None],
) -> bytes:
    """Row `buf[first:last]` (its values at `spans[base:]`) with `replaced` substituted: the
    bytes between replaced values are copied as they are, never decoded and encoded again."""
    parts: list[Any] = [b""]
    length = last - first - 1
    at = first + 7
    for index in sorted(replaced):
        start, end = spans[base + 2 * index], spans[base + 2 * index + 1]
        parts.append(buf[at : start - 4])
        value = replaced[index]
        if value is None:
            parts.append(_NULL)
            length -= max(end - start, 0)
        else:
            parts.append(_I32(len(value)))
            parts.append(value)
            length += len(value) - max(end - start, 0)
        at = max(start, end)
    parts.append(buf[at:last])
    parts[0] = _HEAD(b"D", length, columns)
    return b"".join(parts)


def _replace_one(
    buf: bytes, spans: list[int], at: int, first: int, last: int, columns: int, value: bytes | None
) -> bytes:
    """`_rebuild` for one replaced value, whose start and end are `spans[at]`, `spans[at + 1]`."""
    start, end = spans[at], spans[at + 1]
    size = end - start if end > start else 0
    if value is None:
        return b"".join(
            (
                _HEAD(b"D", last - first - 1 - size, columns),
                buf[first + 7 : start - 4],
                _NULL,
                buf[start + size : last],
            )
        )
    return b"".join(
        (
            _HEAD(b"D", last - first - 1 + len(value) - size, columns),
            buf[first + 7 : start - 4],
            _I32(len(value)),
            value,
            buf[start + size : last],
        )
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)
