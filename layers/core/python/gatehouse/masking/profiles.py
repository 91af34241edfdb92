"""Masking profiles: which column names are masked whole, and how each detector replaces.

A connection names its profile (`Connection.masking_profile`). A profile holds column rules
(case-insensitive exact names or globs, first match wins) and, per content detector, the
strategy that replaces what the detector finds. Detectors run on every text value of every
column that no rule matches; a column rule replaces the whole value, whatever its type.
A result's `masked` report names a rule `column:<pattern>` or `detector:<name>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase

from gatehouse.masking.exceptions import MaskingConfigError

# The content detectors, by the names rules and reports use.
DETECTOR_NAMES: tuple[str, ...] = (
    "email",
    "card_number",
    "ssn",
    "phone",
    "iban",
    "aws_access_key",
    "aws_secret_key",
    "jwt",
    "private_key",
    "bearer_token",
)


class Strategy(StrEnum):
    """How a masked value (or a detected span) is replaced."""

    REDACT = "redact"  # "[EMAIL]" for a detector, "[REDACTED]" for a column rule
    PARTIAL = "partial"  # keep the last (at most) 4 letters/digits, "*" for the others
    HASH = "hash"  # "hash:" + 16 hex digits of HMAC-SHA256 under the caller's key
    NULL = "null"  # None: for a detector, the whole value that contains the span


@dataclass(frozen=True)
class ColumnRule:
    """Mask every value of the columns whose name matches `pattern` (exact or glob)."""

    pattern: str
    strategy: Strategy

    def __post_init__(self) -> None:
        if not self.pattern:
            raise MaskingConfigError("a column rule needs a name pattern")
        object.__setattr__(self, "pattern", self.pattern.lower())
        object.__setattr__(self, "strategy", _strategy(self.strategy, f"column rule {self.pattern!r}"))

    def matches(self, column: str) -> bool:
        return fnmatchcase(column.lower(), self.pattern)


@dataclass(frozen=True)
class MaskingProfile:
    """A named set of column rules and detector strategies. Immutable once built."""

    name: str
    column_rules: tuple[ColumnRule, ...] = ()
    # Detector name -> strategy, for detectors that do not redact. Stored as sorted pairs so
    # the profile stays hashable and immutable.
    detector_strategies: tuple[tuple[str, Strategy], ...] = ()
    detectors: frozenset[str] = field(default_factory=lambda: frozenset(DETECTOR_NAMES))

    def __post_init__(self) -> None:
        if not self.name:
            raise MaskingConfigError("a masking profile needs a name")
        unknown = set(self.detectors) - set(DETECTOR_NAMES)
        if unknown:
            raise MaskingConfigError(f"profile {self.name!r}: unknown detectors {sorted(unknown)}")
        object.__setattr__(self, "detectors", frozenset(self.detectors))
        object.__setattr__(self, "column_rules", tuple(self.column_rules))
        pairs = dict(self.detector_strategies)
        for detector in pairs:
            if detector not in DETECTOR_NAMES:
                raise MaskingConfigError(f"profile {self.name!r}: unknown detector {detector!r}")
        object.__setattr__(
            self,
            "detector_strategies",
            tuple(sorted((d, _strategy(s, f"detector {d!r}")) for d, s in pairs.items())),
        )

    def rule_for(self, column: str) -> ColumnRule | None:
        """The first column rule that matches this column name, if any."""
        for rule in self.column_rules:
            if rule.matches(column):
                return rule
        return None

    def strategy_for(self, detector: str) -> Strategy:
        for name, strategy in self.detector_strategies:
            if name == detector:
                return strategy
        return Strategy.REDACT


def _strategy(value: object, what: str) -> Strategy:
    try:
        return Strategy(str(value))
    except ValueError:
        allowed = ", ".join(s.value for s in Strategy)
        raise MaskingConfigError(f"{what}: unknown strategy {value!r} (one of {allowed})") from None


def _rules(pairs: Iterable[tuple[str, Strategy]]) -> tuple[ColumnRule, ...]:
    return tuple(ColumnRule(pattern, strategy) for pattern, strategy in pairs)


# The demo's prod `customers` table (id, name, email, phone, card_number, ssn, notes) and
# columns like it. Names and emails are hashed, not redacted, so an analyst can still count,
# group and join on them; `notes` has no rule: detectors mask what it contains, span by span.
# `ssn` patterns avoid `*ssn*`, which would also catch `classname`. Columns that hold
# credentials are dropped (null) rather than shown in any form.
_PII_STRICT_RULES = _rules(
    [
        ("name", Strategy.HASH),
        ("first_name", Strategy.HASH),
        ("last_name", Strategy.HASH),
        ("full_name", Strategy.HASH),
        ("given_name", Strategy.HASH),
        ("family_name", Strategy.HASH),
        ("middle_name", Strategy.HASH),
        ("surname", Strategy.HASH),
        ("email", Strategy.HASH),
        ("*email*", Strategy.HASH),
        ("phone", Strategy.PARTIAL),
        ("*phone*", Strategy.PARTIAL),
        ("mobile", Strategy.PARTIAL),
        ("fax", Strategy.PARTIAL),
        ("card_number", Strategy.PARTIAL),
        ("*card_number*", Strategy.PARTIAL),
        ("credit_card*", Strategy.PARTIAL),
        ("cc_number", Strategy.PARTIAL),
        ("pan", Strategy.PARTIAL),
        ("iban", Strategy.PARTIAL),
        ("*_iban", Strategy.PARTIAL),
        ("ssn", Strategy.REDACT),
        ("ssn_*", Strategy.REDACT),
        ("*_ssn", Strategy.REDACT),
        ("social_security*", Strategy.REDACT),
        ("national_id*", Strategy.REDACT),
        ("tax_id*", Strategy.REDACT),
        ("date_of_birth", Strategy.REDACT),
        ("birth_date", Strategy.REDACT),
        ("dob", Strategy.REDACT),
        ("*password*", Strategy.NULL),
        ("*secret*", Strategy.NULL),
        ("*api_key*", Strategy.NULL),
        ("*token*", Strategy.NULL),
    ]
)

_PROFILES: Mapping[str, MaskingProfile] = {
    p.name: p
    for p in (
        # Detectors only: every text value is scanned, matches are redacted span by span.
        MaskingProfile(name="default"),
        MaskingProfile(name="pii-strict", column_rules=_PII_STRICT_RULES),
    )
}

PROFILE_NAMES: tuple[str, ...] = tuple(_PROFILES)


def load_profile(name: str) -> MaskingProfile:
    """The built-in profile of that name; an unknown name is a configuration error."""
    try:
        return _PROFILES[name]
    except KeyError:
        raise MaskingConfigError(
            f"unknown masking profile {name!r} (known: {', '.join(PROFILE_NAMES)})"
        ) from None
