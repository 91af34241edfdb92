"""The masker: applies a profile's column rules and content detectors to query results and texts.

A column rule replaces every value of a matching column, whatever its type. Every other column
goes through the detectors: text values are scanned (a whole column in one pass, see
`gatehouse.masking.detectors`), containers (JSON objects, arrays) are walked, bytes are scanned
as Latin-1 text, and numbers, dates, UUIDs, booleans and None pass through unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from operator import itemgetter
from typing import Any
from uuid import UUID

from gatehouse.masking.detectors import NUL, NULL_MARK, ContentScanner, Replace
from gatehouse.masking.exceptions import MaskingConfigError
from gatehouse.masking.plan import ColumnPlan
from gatehouse.masking.profiles import DETECTOR_NAMES, ColumnRule, MaskingProfile, Strategy
from gatehouse.masking.strategies import (
    COLUMN_LABEL,
    KeyedHasher,
    detector_label,
    partial,
    value_masker,
)
from gatehouse.models import MaskedColumn

# Types that carry no free text: never scanned. Checked by exact type first (fast), then by
# isinstance for subclasses (an IntEnum, a pendulum datetime).
_PLAIN_TYPES: frozenset[type] = frozenset(
    {type(None), bool, int, float, Decimal, dt.date, dt.datetime, dt.time, dt.timedelta, UUID}
)
_PLAIN_BASES = (bool, int, float, Decimal, dt.date, dt.time, dt.timedelta, UUID)
_TEXT_TYPES: frozenset[type] = frozenset({str, type(None)})


@dataclass(frozen=True)
class MaskedRows:
    """Masked rows, and which columns were masked by which rule (only rules that masked)."""

    rows: list[tuple[Any, ...]]
    masked: tuple[MaskedColumn, ...]


class Masker:
    """Masks query results and texts with one profile and one hash key.

    Holds no per-call state: one instance may serve every request of a process.
    """

    def __init__(self, profile: MaskingProfile, hash_key: bytes) -> None:
        if not isinstance(hash_key, (bytes, bytearray)) or not hash_key:
            raise MaskingConfigError("the masking hash key must be non-empty bytes")
        self._profile = profile
        self._hash = KeyedHasher(bytes(hash_key))
        cell_replace: dict[str, Replace] = {}
        cell_fixed: dict[str, str] = {}
        text_replace: dict[str, Replace] = {}
        text_fixed: dict[str, str] = {}
        self._null_detectors: frozenset[str] = frozenset(
            d for d in profile.detectors if profile.strategy_for(d) is Strategy.NULL
        )
        for detector in profile.detectors:
            strategy = profile.strategy_for(detector)
            label = detector_label(detector)
            if strategy is Strategy.PARTIAL:
                cell_replace[detector] = text_replace[detector] = partial
            elif strategy is Strategy.HASH:
                cell_replace[detector] = text_replace[detector] = self._hash
            else:
                # In a value, null drops the whole value; a statement or error text cannot be
                # None, so there the span is redacted instead.
                cell_fixed[detector] = NULL_MARK if strategy is Strategy.NULL else label
                text_fixed[detector] = label
                cell_replace[detector] = _constant(cell_fixed[detector])
                text_replace[detector] = _constant(label)
        self._cells = ContentScanner(cell_replace, cell_fixed)
        self._text = ContentScanner(text_replace, text_fixed)

    @property
    def profile(self) -> MaskingProfile:
        return self._profile

    def mask_rows(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        plan: Sequence[ColumnPlan | None] | None = None,
    ) -> MaskedRows:
        """Mask a result set. Every row must have one value per column.

        `plan` (from `gatehouse.masking.plan.plan_columns`, one entry per column) says which
        columns lineage protects. Without a plan, the profile's name patterns stand in for it.
        """
        columns = tuple(columns)
        if plan is not None and len(plan) != len(columns):
            raise ValueError(f"the masking plan has {len(plan)} entries for {len(columns)} columns")
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return MaskedRows(rows=[], masked=())
        if set(map(len, rows)) != {len(columns)}:
            # zip() would silently drop the extra values of a longer row: refuse instead.
            raise ValueError(f"every row must have {len(columns)} values")
        if not columns:
            return MaskedRows(rows=[tuple(r) for r in rows], masked=())
        # Column by column: a column's values are type-checked, joined and scanned together.
        values = [list(map(itemgetter(i), rows)) for i in range(len(columns))]
        masked_values, masked = self.mask_columns(columns, values, plan)
        return MaskedRows(rows=list(zip(*masked_values, strict=True)), masked=masked)

    def mask_columns(
        self,
        columns: Sequence[str],
        values: Sequence[Sequence[Any]],
        plan: Sequence[ColumnPlan | None] | None = None,
    ) -> tuple[list[Sequence[Any]], tuple[MaskedColumn, ...]]:
        """`mask_rows` for a result already split into columns (one list of values per column,
        all of one length), without building rows: the proxy holds its values by column.

        A column with nothing to change comes back as the very sequence given (so `is` tells a
        caller which columns changed); the others as new lists.
        """
        if plan is not None and len(plan) != len(columns):
            raise ValueError(f"the masking plan has {len(plan)} entries for {len(columns)} columns")
        if len(values) != len(columns):
            raise ValueError(f"{len(values)} columns of values for {len(columns)} columns")
        if len(set(map(len, values))) > 1:
            raise ValueError("every column must have one value per row")
        out: list[Sequence[Any]] = list(values)
        report: dict[tuple[str, str], MaskedColumn] = {}
        for index, column in enumerate(columns):
            if plan is not None:
                planned = plan[index]
                if planned is not None:
                    out[index] = self._apply_plan(planned, out[index])
                    if any(v is not None for v in out[index]) or planned.computed:
                        report.setdefault(
                            (column, planned.rule),
                            MaskedColumn(
                                column, planned.rule, planned.strategy.value, planned.sources, planned.reason
                            ),
                        )
                    continue
            rule = self._profile.rule_for(column) if plan is None else None
            if rule is not None:
                masked_values, hit = self._apply_rule(rule, out[index])
                if hit:
                    out[index] = masked_values
                    rule_name = f"column:{rule.pattern}"
                    report.setdefault(
                        (column, rule_name), MaskedColumn(column, rule_name, rule.strategy.value)
                    )
                continue
            scanned, hits = self._scan_column(out[index])
            if hits:
                out[index] = scanned
                for detector in DETECTOR_NAMES:
                    if detector in hits:
                        rule_name = f"detector:{detector}"
                        strategy = self._profile.strategy_for(detector).value
                        report.setdefault((column, rule_name), MaskedColumn(column, rule_name, strategy))
        return out, tuple(report.values())

    def mask_text(self, text: str) -> str:
        """Detectors only, for statement texts and error messages bound for the audit log."""
        out, hits = self._text.scan(NUL + text + NUL)
        return out[1:-1] if hits else text

    # --- columns --------------------------------------------------------------------------

    def _apply_plan(self, plan: ColumnPlan, values: Sequence[Any]) -> list[Any]:
        if plan.computed:
            # A value computed from a protected column: text is redacted, any other type (a
            # number, a date, JSON, bytes) becomes null: no part of it is shown.
            if plan.strategy is Strategy.NULL:
                return [None] * len(values)
            return [COLUMN_LABEL if type(v) is str else None for v in values]
        mask = value_masker(plan.strategy, self._hash)
        return [None if v is None else mask(v) for v in values]

    def _apply_rule(self, rule: ColumnRule, values: Sequence[Any]) -> tuple[list[Any], bool]:
        """The rule on every value; None stays None (there is nothing to hide)."""
        mask = value_masker(rule.strategy, self._hash)
        masked = [None if v is None else mask(v) for v in values]
        return masked, any(v is not None for v in values)

    def _scan_column(self, values: Sequence[Any]) -> tuple[Sequence[Any], set[str]]:
        types = set(map(type, values))
        if types <= _PLAIN_TYPES:
            return values, set()
        if not types <= _TEXT_TYPES:
            hits: set[str] = set()
            return [self._mask_value(v, hits) for v in values], hits
        if type(None) not in types:
            return self._scan_texts(values)
        where = [i for i, v in enumerate(values) if v is not None]
        scanned, hits = self._scan_texts([values[i] for i in where])
        if not hits:
            return values, hits
        out = list(values)
        for i, v in zip(where, scanned, strict=True):
            out[i] = v
        return out, hits

    def _scan_texts(self, texts: Sequence[str]) -> tuple[Sequence[str | None], set[str]]:
        """Scan all the texts of a column in one pass over their NUL-joined concatenation."""
        joined = NUL.join(["", *texts, ""])
        if joined.count(NUL) != len(texts) + 1 or NULL_MARK in joined:
            # A value holds a separator or the null mark itself: one value at a time.
            hits: set[str] = set()
            return [self._mask_value(t, hits) for t in texts], hits
        out, hits = self._cells.scan(joined, longest=max(map(len, texts), default=0))
        if not hits:
            return texts, hits
        parts: list[str | None] = list(out.split(NUL)[1:-1])
        if len(parts) != len(texts):  # never expected: no replacement holds a NUL
            hits = set()
            return [self._mask_value(t, hits) for t in texts], hits
        if hits & self._null_detectors:
            parts = [None if p is not None and NULL_MARK in p else p for p in parts]
        return parts, hits

    def _mask_value(self, value: Any, hits: set[str]) -> Any:
        """One value of any type, through the detectors (the slow path: odd or mixed columns)."""
        if type(value) in _PLAIN_TYPES or isinstance(value, _PLAIN_BASES):
            return value
        if isinstance(value, str):
            return self._mask_one_text(value, hits)
        if isinstance(value, (bytes, bytearray, memoryview)):
            # Latin-1 maps each byte to one character and back: ASCII secrets are found in
            # binary values and the bytes come back unchanged where nothing matched.
            raw = bytes(value)
            masked = self._mask_one_text(raw.decode("latin-1"), hits)
            return None if masked is None else masked.encode("latin-1")
        if isinstance(value, dict):
            return {self._mask_key(k, hits): self._mask_value(v, hits) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            items = [self._mask_value(v, hits) for v in value]
            return items if isinstance(value, list) else tuple(items)
        # Anything else (an IP address object, a range, a custom type) is judged by its text.
        text = str(value)
        masked = self._mask_one_text(text, hits)
        return value if masked == text else masked

    def _mask_key(self, key: Any, hits: set[str]) -> Any:
        if not isinstance(key, str):
            return key
        out, found = self._text.scan(NUL + key + NUL)
        hits |= found
        return out[1:-1] if found else key

    def _mask_one_text(self, text: str, hits: set[str]) -> str | None:
        out, found = self._cells.scan(NUL + text + NUL)
        if not found:
            return text
        hits |= found
        if found & self._null_detectors:
            return None
        return out[1:-1]


def _constant(label: str) -> Replace:
    return lambda _text: label
