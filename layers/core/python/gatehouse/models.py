"""Domain records shared by every step of the decision path.

Frozen dataclasses: they are built once (from the registry, the parser, the policy engine)
and passed along, never mutated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class StatementClass(StrEnum):
    """What a command really does. A closed set; `unknown` is the highest risk."""

    READ = "read"
    WRITE = "write"
    DDL = "ddl"
    PRIVILEGE = "privilege"
    SESSION = "session"
    TRANSACTION = "transaction"
    ADMIN = "admin"
    # Other target kinds (issue 11): a Kubernetes exec/attach/port-forward, anything on Secrets.
    EXEC = "exec"
    SECRETS = "secrets"
    UNKNOWN = "unknown"


# Strictness order used to reduce a multi-statement text to one class for display;
# policy decisions are taken per statement and reduced by decision strictness instead.
CLASS_RISK: Mapping[StatementClass, int] = {
    StatementClass.TRANSACTION: 0,
    StatementClass.READ: 1,
    StatementClass.SESSION: 2,
    StatementClass.WRITE: 3,
    StatementClass.DDL: 4,
    StatementClass.ADMIN: 5,
    StatementClass.PRIVILEGE: 6,
    StatementClass.EXEC: 6,
    StatementClass.SECRETS: 6,
    StatementClass.UNKNOWN: 7,
}

# The Cedar action of a class is `<prefix>:<class>`, the prefix by the connection's kind, and each
# kind has its own closed set of classes (the schema declares exactly these actions).
ACTION_PREFIX: Mapping[str, str] = {"postgres": "sql", "http": "http", "kubernetes": "k8s", "ssh": "ssh"}
KIND_CLASSES: Mapping[str, tuple[StatementClass, ...]] = {
    "postgres": (
        StatementClass.READ,
        StatementClass.WRITE,
        StatementClass.DDL,
        StatementClass.PRIVILEGE,
        StatementClass.SESSION,
        StatementClass.TRANSACTION,
        StatementClass.ADMIN,
        StatementClass.UNKNOWN,
    ),
    "http": (StatementClass.READ, StatementClass.WRITE, StatementClass.UNKNOWN),
    "kubernetes": (
        StatementClass.READ,
        StatementClass.WRITE,
        StatementClass.EXEC,
        StatementClass.SECRETS,
        StatementClass.UNKNOWN,
    ),
    "ssh": (StatementClass.READ, StatementClass.WRITE, StatementClass.UNKNOWN),
}


def action_name(kind: str, cls: StatementClass) -> str:
    """`sql:read`, `http:write`, `k8s:secrets`, ...; a kind or class outside the sets is unknown."""
    if kind not in ACTION_PREFIX:
        return "sql:unknown"  # a kind Gatehouse does not know: the strictest action there is
    classes = KIND_CLASSES[kind]
    return f"{ACTION_PREFIX[kind]}:{cls.value if cls in classes else StatementClass.UNKNOWN.value}"


@dataclass(frozen=True)
class Statement:
    """One classified statement of a command text."""

    text: str
    cls: StatementClass
    relations: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    reason: str = ""  # why this class (e.g. "data-modifying CTE"), shown in decisions and logs
    command: str = ""  # the statement's own kind, lower case ("select", "copy", "explain", ...)
    # From lineage (`gatehouse.lineage`), as the connection's masking profile names them
    # ("customers.ssn"): protected columns whose values reach the result, and protected columns
    # the statement filters, joins, groups, orders or windows on (oracles). "(undetermined)"
    # stands for a value whose source could not be traced.
    protected_read: tuple[str, ...] = ()
    protected_filtered: tuple[str, ...] = ()


@dataclass(frozen=True)
class Classification:
    """Every statement of a command text, in order."""

    kind: str  # target kind: "postgres", later "http", "kubernetes", "ssh"
    statements: tuple[Statement, ...]
    # Set when the text does not parse: the one statement is then `unknown` (highest risk),
    # and the API refuses it as bad input rather than guessing.
    parse_error: str | None = None

    @property
    def cls(self) -> StatementClass:
        """The riskiest class among the statements (unknown when there are none)."""
        if not self.statements:
            return StatementClass.UNKNOWN
        return max((s.cls for s in self.statements), key=CLASS_RISK.__getitem__)

    @property
    def relations(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for s in self.statements:
            seen.update(dict.fromkeys(s.relations))
        return tuple(seen)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an agent (IAM identity) or an approver (Slack user)."""

    name: str
    kind: str  # "agent" | "approver"
    arn: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] = ()


# The connection attributes an agent may read (the Cedar schema's Connection attributes).
PUBLIC_ATTRIBUTES = frozenset({"env", "data_classification"})


@dataclass(frozen=True)
class Connection:
    """A registered target. The secret is named, never held."""

    name: str
    kind: str  # "postgres"
    host: str
    port: int
    database: str
    secret_id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)  # env, data_classification, ...
    masking_profile: str = "default"
    # How the Postgres proxy records statements on this connection (gatehouse.proxy.postgres):
    # "sync" (every decision durable before the statement is forwarded), "async" (chunked,
    # at least every second), or "sync_writes" (sync for anything that is not a read).
    recording: str = "sync_writes"

    def public_view(self) -> dict[str, Any]:
        """What an agent may see: no address, no secret, none of a kind's own settings (a base
        URL, a pinned CA or host key, a login name): only the attributes policies describe."""
        shown = {k: v for k, v in self.attributes.items() if k in PUBLIC_ATTRIBUTES}
        return {"name": self.name, "kind": self.kind, "attributes": shown}


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL = "approval"  # allowed only after a human quorum approves


# Strictest wins when a multi-statement text is reduced to one decision.
EFFECT_RISK: Mapping[Effect, int] = {Effect.ALLOW: 0, Effect.APPROVAL: 1, Effect.DENY: 2}


@dataclass(frozen=True)
class ApprovalRequirement:
    """Who must approve, and how: `quorum` distinct approvers from EACH of `groups`.

    `group` is the first group (callers written before `groups` read it); `groups` is always
    filled, from `group` when not given. `expires_s`: how long the request waits for its votes.
    `preview`: "explain" (planner estimate) or "dry_run" (run once, always rolled back).
    """

    group: str
    quorum: int = 1
    groups: tuple[str, ...] = ()
    expires_s: int = 1800
    preview: str = "explain"

    def __post_init__(self) -> None:
        if not self.groups:
            object.__setattr__(self, "groups", (self.group,))


@dataclass(frozen=True)
class Decision:
    """The outcome of authorization, naming the policies that made it."""

    effect: Effect
    policy_ids: tuple[str, ...] = ()
    approval: ApprovalRequirement | None = None
    reasons: tuple[str, ...] = ()  # human-readable, e.g. "no policy permits sql:ddl on demo-prod"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"effect": self.effect.value, "policy_ids": list(self.policy_ids)}
        if self.approval is not None:
            out["approval"] = {
                "group": self.approval.group,
                "quorum": self.approval.quorum,
                "groups": list(self.approval.groups),
                "expires_s": self.approval.expires_s,
                "preview": self.approval.preview,
            }
        if self.reasons:
            out["reasons"] = list(self.reasons)
        return out


@dataclass(frozen=True)
class MaskedColumn:
    column: str
    rule: str  # e.g. "lineage:customers.ssn", "fallback:name", "detector:card_number"
    strategy: str  # redact | partial | hash | null
    # For lineage rules: the protected source columns the value derives from, and why
    # ("customers.ssn via reverse()"), so a reader can tell what was masked and for what reason.
    sources: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    row_count: int
    truncated: bool = False  # more rows existed than a limit allowed
    duration_ms: float = 0.0
    masked: tuple[MaskedColumn, ...] = ()
    # Why the answer was cut short: "row_limit" or "byte_limit" (None when it was not).
    truncated_reason: str | None = None
    # From the server's RowDescription, one per column: the type OID, and the (table OID,
    # attribute number) a plain column reference came from (None when the server names none).
    # Lineage cross-checks its own answer against these.
    column_types: tuple[int, ...] = ()
    column_origins: tuple[tuple[int, int] | None, ...] = ()
