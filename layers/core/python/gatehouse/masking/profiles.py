"""Masking profiles: which source columns are protected, and how each detector replaces.

A connection names its profile (`Connection.masking_profile`). A profile holds:

- protected columns by SOURCE, `table.column` or `schema.table.column`, each with a strategy.
  Lineage (`gatehouse.lineage`) works out which sources every output value comes from, so an
  alias, an expression or a view cannot undo the rule;
- name patterns (case-insensitive exact names or globs, first match wins), only an explicit
  fallback for outputs whose source could not be traced (the answer says when one was used);
- per content detector, the strategy that replaces what the detector finds. Detectors run on
  every text value that no rule replaced, whatever its lineage.

A result's `masked` report names a rule `lineage`, `lineage:undetermined`, `fallback:<pattern>`
(or, when masking without lineage, `column:<pattern>`) or `detector:<name>`.
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
    "api_token",
    "connection_secret",
)


class Strategy(StrEnum):
    """How a masked value (or a detected span) is replaced."""

    REDACT = "redact"  # "[EMAIL]" for a detector, "[REDACTED]" for a column rule
    PARTIAL = "partial"  # keep the last (at most) 4 letters/digits, "*" for the others
    HASH = "hash"  # "hash:" + 16 hex digits of HMAC-SHA256 under the caller's key
    NULL = "null"  # None: for a detector, the whole value that contains the span


# When one output carries several protected sources unchanged (a UNION of two columns), the
# strictest of their strategies applies: what shows least of the value.
STRICTNESS: dict[Strategy, int] = {
    Strategy.PARTIAL: 0,
    Strategy.HASH: 1,
    Strategy.REDACT: 2,
    Strategy.NULL: 3,
}


@dataclass(frozen=True)
class ProtectedColumn:
    """A protected source column, `table.column` or `schema.table.column` (any schema when none)."""

    name: str
    strategy: Strategy

    def __post_init__(self) -> None:
        parts = self.name.lower().split(".")
        if len(parts) not in (2, 3) or not all(parts):
            raise MaskingConfigError(
                f"protected column {self.name!r} must be table.column or schema.table.column"
            )
        object.__setattr__(self, "name", ".".join(parts))
        object.__setattr__(self, "strategy", _strategy(self.strategy, f"protected column {self.name!r}"))

    @property
    def key(self) -> tuple[str | None, str, str]:
        parts = self.name.split(".")
        return (None, parts[0], parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2])


def _source_key(source: str) -> tuple[str, str, str] | None:
    """`schema.table.column` (as lineage names sources) split in three, lower case."""
    parts = source.lower().split(".")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


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
    # Name patterns: only a fallback, for outputs whose source lineage could not trace.
    column_rules: tuple[ColumnRule, ...] = ()
    protected: tuple[ProtectedColumn, ...] = ()
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
        object.__setattr__(self, "protected", tuple(self.protected))
        pairs = dict(self.detector_strategies)
        for detector in pairs:
            if detector not in DETECTOR_NAMES:
                raise MaskingConfigError(f"profile {self.name!r}: unknown detector {detector!r}")
        object.__setattr__(
            self,
            "detector_strategies",
            tuple(sorted((d, _strategy(s, f"detector {d!r}")) for d, s in pairs.items())),
        )

    def protection_for(self, source: str) -> ProtectedColumn | None:
        """The rule protecting a traced source (`schema.table.column`), if any.

        The system columns that expose table data or other sessions' statements
        (`SYSTEM_PROTECTED`) are protected in every profile.
        """
        key = _source_key(source)
        if key is None:
            return None
        schema, table, column = key
        for rule in (*self.protected, *SYSTEM_PROTECTED):
            rule_schema, rule_table, rule_column = rule.key
            if rule_table == table and rule_column == column and rule_schema in (None, schema):
                return rule
        return None

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


def _protected(pairs: Iterable[tuple[str, Strategy]]) -> tuple[ProtectedColumn, ...]:
    return tuple(ProtectedColumn(name, strategy) for name, strategy in pairs)


# System columns that carry table data or other sessions' SQL: the planner's samples of every
# column (pg_stats and its extended kin show real values of the tables the role may read), the
# statements of other sessions of the same role (every agent of a connection shares its role),
# and foreign-server credentials. Protected whatever the profile.
SYSTEM_PROTECTED: tuple[ProtectedColumn, ...] = _protected(
    [
        ("pg_catalog.pg_stats.most_common_vals", Strategy.REDACT),
        ("pg_catalog.pg_stats.histogram_bounds", Strategy.REDACT),
        ("pg_catalog.pg_stats.most_common_elems", Strategy.REDACT),
        ("pg_catalog.pg_stats_ext.most_common_vals", Strategy.REDACT),
        ("pg_catalog.pg_stats_ext_exprs.most_common_vals", Strategy.REDACT),
        ("pg_catalog.pg_stats_ext_exprs.histogram_bounds", Strategy.REDACT),
        ("pg_catalog.pg_stats_ext_exprs.most_common_elems", Strategy.REDACT),
        ("pg_catalog.pg_stat_activity.query", Strategy.REDACT),
        ("pg_stat_statements.query", Strategy.REDACT),
        ("pg_catalog.pg_user_mappings.umoptions", Strategy.REDACT),
        ("pg_catalog.pg_prepared_xacts.gid", Strategy.REDACT),
    ]
)

# The demo's `customers` table (id, name, email, phone, card_number, ssn, notes), protected by
# source: whatever an agent renames or computes from these columns is masked. Names and emails
# are hashed, so an analyst can still count, group and join on them; phones and card numbers
# keep their last 4; SSNs are redacted. `notes` is free text: detectors mask what it holds.
_PII_STRICT_PROTECTED = _protected(
    [
        ("customers.name", Strategy.HASH),
        ("customers.email", Strategy.HASH),
        ("customers.phone", Strategy.PARTIAL),
        ("customers.card_number", Strategy.PARTIAL),
        ("customers.ssn", Strategy.REDACT),
    ]
)


# The name fallback: used only for an output whose source could not be traced (otherwise such an
# output is redacted whole). `ssn` patterns avoid `*ssn*`, which would also catch `classname`.
# Columns that hold credentials are dropped (null) rather than shown in any form.
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
        MaskingProfile(name="pii-strict", column_rules=_PII_STRICT_RULES, protected=_PII_STRICT_PROTECTED),
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
