"""From lineage to masking: which rule applies to each output column of a result, and why.

- A protected source flowing into an output unchanged: that source's strategy (the strictest,
  when several arrive unchanged, as in a UNION).
- An output computed from a protected source (an operator, a function, a cast, an aggregate):
  the strictest treatment, redact for text and null for any other type, because a transformed
  value (`reverse(ssn)`, `md5(ssn)`, `length(ssn)`) can be undone or can narrow the value down.
- An output whose source could not be traced: a fallback name pattern of the profile when one
  matches (the report says so), otherwise the strictest treatment. It fails closed.
- Anything else: no column rule; content detectors still scan every text value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gatehouse.masking.profiles import STRICTNESS, MaskingProfile, ProtectedColumn, Strategy

UNDETERMINED = "(undetermined)"


class FlowLike(Protocol):
    """What the masking plan reads from a lineage flow (`gatehouse.lineage.Flow`)."""

    @property
    def sources(self) -> frozenset[str]: ...
    @property
    def computed(self) -> bool: ...
    @property
    def opaque(self) -> str: ...
    @property
    def via(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ColumnPlan:
    """The rule for one output column."""

    strategy: Strategy
    rule: str  # lineage | lineage:undetermined | fallback:<pattern>
    sources: tuple[str, ...] = ()  # the protected columns, as the profile names them
    reason: str = ""  # "customers.ssn via reverse()"
    computed: bool = False  # redact text, null every other type


def protected_sources(profile: MaskingProfile, flow: FlowLike) -> list[ProtectedColumn]:
    seen: dict[str, ProtectedColumn] = {}
    for source in sorted(flow.sources):
        rule = profile.protection_for(source)
        if rule is not None:
            seen.setdefault(rule.name, rule)
    return list(seen.values())


def plan_columns(
    profile: MaskingProfile, columns: Sequence[str], flows: Sequence[FlowLike]
) -> list[ColumnPlan | None]:
    """One plan (or None: detectors only) per output column."""
    plans: list[ColumnPlan | None] = []
    for column, flow in zip(columns, flows, strict=True):
        plans.append(_plan(profile, column, flow))
    return plans


def _plan(profile: MaskingProfile, column: str, flow: FlowLike) -> ColumnPlan | None:
    rules = protected_sources(profile, flow)
    names = tuple(r.name for r in rules)
    if flow.opaque:
        fallback = profile.rule_for(column)
        if fallback is not None:
            return ColumnPlan(
                strategy=fallback.strategy,
                rule=f"fallback:{fallback.pattern}",
                sources=names,
                reason=f"source not traced ({flow.opaque}); masked by its name",
            )
        return ColumnPlan(
            strategy=Strategy.REDACT,
            rule="lineage:undetermined",
            sources=names,
            reason=f"source not traced: {flow.opaque}",
            computed=True,
        )
    if not rules:
        return None
    shown = ", ".join(names)
    if flow.computed:
        via = ", ".join(flow.via) if flow.via else "an expression"
        strictest = Strategy.NULL if any(r.strategy is Strategy.NULL for r in rules) else Strategy.REDACT
        return ColumnPlan(strictest, "lineage", names, f"{shown} via {via}", computed=True)
    strategy = max((r.strategy for r in rules), key=STRICTNESS.__getitem__)
    return ColumnPlan(strategy, "lineage", names, shown)


def protected_names(profile: MaskingProfile, flows: Iterable[FlowLike]) -> list[str]:
    """The protected columns (as the profile names them) that any of `flows` carries."""
    names: dict[str, None] = {}
    for flow in flows:
        names.update(dict.fromkeys(r.name for r in protected_sources(profile, flow)))
        if flow.opaque:
            names[UNDETERMINED] = None
    return sorted(names)
