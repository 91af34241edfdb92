"""Authorize classified statements with Cedar (cedarpy).

Policies are `*.cedar` files under version control, validated against `gatehouse.cedarschema`
and parsed once when the engine loads. Each statement of a text is authorized on its own, with
the action `sql:<class>`:

- a `forbid` matches, or no `permit` matches: deny;
- permits match and at least one carries `@approval("<group>[,<group>...]")`: approval, with
  `@quorum("<n>")` (default 1) approvers from each group, `@expires("<n>s|m|h>")` (default 30m,
  10s to 7 days) and `@preview("explain"|"dry_run")` (default explain). When several approval
  permits match, the strictest combination applies: the union of their groups (in load order:
  files by name, policies in file order), the largest quorum, the shortest expiry, dry_run over
  explain. `policy_ids` names only the permits that ask for approval, since they are what made
  the decision;
- otherwise: allow, naming every permit that matched.

Who may vote on a waiting request is a Cedar question too: `may_approve` asks for the action
`approve` with an `Approver` principal on the request's connection. Only a plain permit grants it:
a permit carrying `@approval` cannot (an approval that itself waits for approval means nothing).

A text of several statements gets the strictest of its statements' decisions
(`models.EFFECT_RISK`); the decision names the policies and gives the reasons of the statements
that were that strict. Anything unexpected from Cedar (an evaluation error, a request the schema
refuses) raises PolicyError: the caller refuses the command, nothing runs.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cedarpy

from gatehouse.config import default_policy_dir
from gatehouse.exceptions import PolicyError
from gatehouse.models import (
    EFFECT_RISK,
    KIND_CLASSES,
    ApprovalRequirement,
    Classification,
    Connection,
    Decision,
    Effect,
    Principal,
    Statement,
    StatementClass,
    action_name,
)

NAMESPACE = "Gatehouse"
AGENT_TYPE = f"{NAMESPACE}::Agent"
APPROVER_TYPE = f"{NAMESPACE}::Approver"
APPROVE_ACTION = "approve"
CONNECTION_TYPE = f"{NAMESPACE}::Connection"
ACTION_TYPE = f"{NAMESPACE}::Action"
SCHEMA_FILE = "gatehouse.cedarschema"
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
AGENT_ATTRIBUTES = ("team", "clearance")
CONNECTION_ATTRIBUTES = ("env", "data_classification")
# Entity sets are parsed once per (principal, connection) shape and reused; bounded.
ENTITY_CACHE_SIZE = 256
SNIPPET_CHARS = 60
DEFAULT_EXPIRES_S = 30 * 60
# Short enough that a test or the demo can watch a request expire; a week is the longest a
# command may sit approved-but-not-run in anyone's mind (and far below Step Functions' one year).
MIN_EXPIRES_S = 10
MAX_EXPIRES_S = 7 * 24 * 3600
EXPIRES_UNITS = {"s": 1, "m": 60, "h": 3600}
PREVIEW_MODES = ("explain", "dry_run")  # in increasing strictness
_EXPIRES = re.compile(r"^([0-9]{1,6})([smh])$")
_GROUP = re.compile(r"^[A-Za-z0-9_.:@-]+$")
_CEDAR_PREFIX = re.compile(r"^for policy `[^`]*`, ")


def default_schema_path() -> Path:
    return Path(__file__).parent / SCHEMA_FILE


@dataclass(frozen=True)
class PolicyInfo:
    """What Gatehouse reads from one policy: its @id, effect and approval annotation."""

    policy_id: str
    effect: str  # "permit" | "forbid"
    source: str  # the file it came from
    approval: ApprovalRequirement | None = None


@dataclass(frozen=True)
class _StatementDecision:
    effect: Effect
    policies: tuple[PolicyInfo, ...]
    reason: str
    approval: ApprovalRequirement | None = None


class PolicyEngine:
    """A validated, parsed Cedar policy set. Build once per process; `authorize` is thread-safe."""

    def __init__(
        self,
        policy_set: cedarpy.PolicySet,
        schema: cedarpy.Schema,
        policies: Mapping[str, PolicyInfo],
    ) -> None:
        # Use from_dir / from_sources / default: they validate before building.
        self._policy_set = policy_set
        self._schema = schema
        self._by_cedar_id = dict(policies)
        self._load_order = {cedar_id: n for n, cedar_id in enumerate(self._by_cedar_id)}
        self._entities: dict[str, cedarpy.Entities] = {}
        self._entities_lock = threading.Lock()

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def default(cls) -> PolicyEngine:
        """The packaged policies (`gatehouse/policy/policies`) and schema."""
        return cls.from_dir(default_policy_dir())

    @classmethod
    def from_dir(cls, path: Path, schema_path: Path | None = None) -> PolicyEngine:
        """Load every `*.cedar` file of `path` (the packaged schema unless `schema_path` is given)."""
        path = Path(path)
        schema_path = Path(schema_path) if schema_path is not None else default_schema_path()
        if not path.is_dir():
            raise PolicyError(f"policy directory {path} does not exist")
        try:
            schema_text = schema_path.read_text(encoding="utf-8")
            sources = {f.name: f.read_text(encoding="utf-8") for f in sorted(path.glob("*.cedar"))}
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policies: {exc}") from exc
        if not sources:
            raise PolicyError(f"no policy files (*.cedar) in {path}")
        return cls.from_sources(sources, schema_text, schema_name=schema_path.name)

    @classmethod
    def from_sources(
        cls, sources: Mapping[str, str], schema_text: str, *, schema_name: str = SCHEMA_FILE
    ) -> PolicyEngine:
        """Build from policy texts keyed by file name (loaded in that order) and a schema text."""
        try:
            schema = cedarpy.Schema.from_str(schema_text)
        except ValueError as exc:
            raise PolicyError(f"schema {schema_name} is invalid: {exc}") from exc
        seen: dict[str, str] = {}
        problems: list[str] = []
        for name, text in sources.items():
            problems.extend(_check_file(name, text, schema, seen))
        if problems:
            raise PolicyError("invalid policies: " + "; ".join(problems))
        combined = "\n".join(sources.values())
        try:
            policy_set = cedarpy.PolicySet.from_str(combined)
            parsed = _static_policies(combined)
        except ValueError as exc:
            raise PolicyError(f"the policy files do not parse together: {exc}") from exc
        infos = {}
        for cedar_id, policy in parsed:
            policy_id = policy["annotations"]["id"]
            infos[cedar_id] = _policy_info(policy_id, policy, seen[policy_id])
        engine = cls(policy_set, schema, infos)
        engine._check_actions()
        return engine

    @property
    def policies(self) -> tuple[PolicyInfo, ...]:
        """Every loaded policy, in load order."""
        return tuple(self._by_cedar_id.values())

    def _check_actions(self) -> None:
        """Fail at load, not at the first request, when the schema does not fit what we send.

        Every action `sql:<class>` is probed with entities and a context of the shape `authorize`
        builds, against an empty policy set: only the schema can object.
        """
        principal = Principal(name="gatehouse-schema-probe", kind="agent")
        target = Connection(
            name="gatehouse-schema-probe", kind="", host="", port=0, database="", secret_id=""
        )
        for kind, classes in KIND_CLASSES.items():
            probe = Classification(
                kind=kind, statements=tuple(Statement(text="", cls=cls) for cls in classes)
            )
            try:
                entities = self._entity_set(principal, target)
                requests = _requests(principal, target, probe, "", datetime.now(UTC))
                results = cedarpy.is_authorized_batch(
                    requests, cedarpy.PolicySet.from_str(""), entities, self._schema
                )
            except (PolicyError, ValueError) as exc:
                raise PolicyError(f"the schema does not fit the requests Gatehouse sends: {exc}") from exc
            for stmt, result in zip(probe.statements, results, strict=True):
                if result.diagnostics.errors or result.decision is cedarpy.Decision.NoDecision:
                    detail = "; ".join(str(e) for e in result.diagnostics.errors) or "no decision"
                    action = action_name(kind, stmt.cls)
                    raise PolicyError(f"the schema does not fit {action} requests: {detail}")
        probe = Classification(kind="postgres", statements=(Statement(text="", cls=StatementClass.READ),))
        approver = Principal(name="gatehouse-schema-probe", kind="approver")
        try:
            entities = self._entity_set(approver, target, APPROVER_TYPE)
            request = _approve_request(approver, target, probe, "", "", "", datetime.now(UTC))
            result = cedarpy.is_authorized(request, cedarpy.PolicySet.from_str(""), entities, self._schema)
        except (PolicyError, ValueError) as exc:
            raise PolicyError(f"the schema does not fit {APPROVE_ACTION} requests: {exc}") from exc
        if result.diagnostics.errors or result.decision is cedarpy.Decision.NoDecision:
            detail = "; ".join(str(e) for e in result.diagnostics.errors) or "no decision"
            raise PolicyError(f"the schema does not fit {APPROVE_ACTION} requests: {detail}")

    # -- deciding -------------------------------------------------------------------------------

    def authorize(
        self,
        principal: Principal,
        connection: Connection,
        classification: Classification,
        *,
        reason: str = "",
        now: datetime | None = None,
    ) -> Decision:
        """Decide a classified text: each statement with action `sql:<class>`, strictest wins.

        `now` (default: the current time; a naive datetime is taken as UTC) feeds `hour_utc` and
        `weekday` in the context. Raises PolicyError when Cedar cannot evaluate the request.
        """
        statements = classification.statements
        if not statements:
            return Decision(effect=Effect.DENY, reasons=("the text has no statement to authorize",))
        when = datetime.now(UTC) if now is None else now
        decisions = self._evaluate(principal, connection, classification, reason, when)
        return _combine(decisions)

    def may_approve(
        self,
        approver: Principal,
        connection: Connection,
        *,
        statement_class: str = "",
        requester: str = "",
        classification: Classification | None = None,
        reason: str = "",
        now: datetime | None = None,
    ) -> Decision:
        """May `approver` vote on a request waiting on `connection`? Action `approve`.

        ALLOW names the permits that grant it; DENY names the forbids (or none when no permit
        matched) and says why. `classification` (the waiting request's) and `reason` (the
        agent's) fill the context as for the agent's own decision; `statement_class` defaults to
        the classification's riskiest class. Whether the approver belongs to the groups the
        request needs is for the vote count, not for this question. Raises PolicyError when
        Cedar cannot evaluate the request (refuse the vote).
        """
        when = datetime.now(UTC) if now is None else now
        waiting = classification or Classification(kind=connection.kind, statements=())
        cls = statement_class or (waiting.cls.value if waiting.statements else "")
        request = _approve_request(approver, connection, waiting, cls, requester, reason, when)
        entities = self._entity_set(approver, connection, APPROVER_TYPE)
        try:
            result = cedarpy.is_authorized(request, self._policy_set, entities, self._schema)
        except Exception as exc:  # fail closed, as in _evaluate
            raise PolicyError(f"the policy engine failed: {exc}") from exc
        errors = result.diagnostics.errors
        if errors or result.decision is cedarpy.Decision.NoDecision:
            detail = "; ".join(self._readable(str(e)) for e in errors) or "no decision"
            raise PolicyError(f"policy evaluation failed for {APPROVE_ACTION} on {connection.name}: {detail}")
        unknown_ids = [i for i in result.diagnostics.reasons if i not in self._by_cedar_id]
        if unknown_ids:
            raise PolicyError(f"Cedar named policies the engine did not load: {unknown_ids}")
        matched = [
            self._by_cedar_id[i] for i in sorted(result.diagnostics.reasons, key=self._load_order.__getitem__)
        ]
        who, where = approver.name, connection.name
        if result.decision is cedarpy.Decision.Deny:
            forbids = tuple(p.policy_id for p in matched if p.effect == "forbid")
            if forbids:
                text = f"{who} may not approve on {where}: forbidden by {', '.join(forbids)}"
                return Decision(effect=Effect.DENY, policy_ids=forbids, reasons=(text,))
            return Decision(effect=Effect.DENY, reasons=(f"no policy lets {who} approve on {where}",))
        plain = tuple(p.policy_id for p in matched if p.effect == "permit" and p.approval is None)
        if not plain:
            waiting_ids = ", ".join(p.policy_id for p in matched)
            text = f"{who} may not approve on {where}: {waiting_ids} only permits after approval"
            return Decision(effect=Effect.DENY, reasons=(text,))
        text = f"{who} may approve on {where} per {', '.join(plain)}"
        return Decision(effect=Effect.ALLOW, policy_ids=plain, reasons=(text,))

    def _evaluate(
        self,
        principal: Principal,
        connection: Connection,
        classification: Classification,
        reason: str,
        now: datetime,
    ) -> list[_StatementDecision]:
        statements = classification.statements
        requests = _requests(principal, connection, classification, reason, now)
        entities = self._entity_set(principal, connection)
        try:
            results = cedarpy.is_authorized_batch(requests, self._policy_set, entities, self._schema)
        # Fail closed: whatever the engine raises, the command is refused. (A Rust panic arrives
        # as pyo3's PanicException, a BaseException: it propagates and refuses just the same.)
        except Exception as exc:
            raise PolicyError(f"the policy engine failed: {exc}") from exc
        total = len(statements)
        return [
            self._decide(result, stmt, index, total, connection.name, classification.kind)
            for index, (result, stmt) in enumerate(zip(results, statements, strict=True), start=1)
        ]

    def _decide(
        self,
        result: cedarpy.AuthzResult,
        stmt: Statement,
        index: int,
        total: int,
        connection: str,
        kind: str = "postgres",
    ) -> _StatementDecision:
        action = action_name(kind, stmt.cls)
        errors = result.diagnostics.errors
        if errors or result.decision is cedarpy.Decision.NoDecision:
            detail = "; ".join(self._readable(str(e)) for e in errors) or "no decision"
            raise PolicyError(f"policy evaluation failed for {action} on {connection}: {detail}")
        unknown_ids = [i for i in result.diagnostics.reasons if i not in self._by_cedar_id]
        if unknown_ids:
            raise PolicyError(f"Cedar named policies the engine did not load: {unknown_ids}")
        # Cedar reports matching policies in no particular order: use load order, so ties and
        # policy_ids come out the same on every run.
        matched = [
            self._by_cedar_id[i] for i in sorted(result.diagnostics.reasons, key=self._load_order.__getitem__)
        ]
        forbids = tuple(p for p in matched if p.effect == "forbid")
        permits = tuple(p for p in matched if p.effect == "permit")
        where = _where(stmt, index, total)
        if result.decision is cedarpy.Decision.Deny:
            if forbids:
                ids = ", ".join(p.policy_id for p in forbids)
                return _StatementDecision(
                    Effect.DENY, forbids, f"{where}{action} on {connection} is forbidden by {ids}{_why(stmt)}"
                )
            return _StatementDecision(
                Effect.DENY, (), f"{where}no policy permits {action} on {connection}{_why(stmt)}"
            )
        if not permits:
            raise PolicyError(f"Cedar allowed {action} on {connection} without naming a permit")
        approvals = tuple(p for p in permits if p.approval is not None)
        if approvals:
            requirement = _strictest_approval(p.approval for p in approvals if p.approval is not None)
            ids = ", ".join(p.policy_id for p in approvals)
            needed = " and ".join(f"{requirement.quorum} of {g}" for g in requirement.groups)
            text = f"{where}{action} on {connection} needs approval by {needed} per {ids}{_why(stmt)}"
            return _StatementDecision(Effect.APPROVAL, approvals, text, requirement)
        ids = ", ".join(p.policy_id for p in permits)
        return _StatementDecision(
            Effect.ALLOW, permits, f"{where}{action} on {connection} is permitted by {ids}"
        )

    def _readable(self, error: str) -> str:
        """Cedar names policies policy0, policy1...: show our @id instead."""
        for cedar_id, info in self._by_cedar_id.items():
            error = error.replace(f"`{cedar_id}`", f"`{info.policy_id}`")
        return error

    def _entity_set(
        self, principal: Principal, connection: Connection, principal_type: str = AGENT_TYPE
    ) -> cedarpy.Entities:
        attrs = principal.attributes
        agent = {"name": principal.name, "groups": sorted(str(g) for g in principal.groups)}
        # An Approver carries the same attributes as an Agent (see the schema).
        for key in AGENT_ATTRIBUTES:
            agent[key] = _text(attrs.get(key))
        target = {"name": connection.name, "kind": connection.kind}
        for key in CONNECTION_ATTRIBUTES:
            target[key] = _text(connection.attributes.get(key))
        document = json.dumps(
            [
                {"uid": {"type": principal_type, "id": principal.name}, "attrs": agent, "parents": []},
                {"uid": {"type": CONNECTION_TYPE, "id": connection.name}, "attrs": target, "parents": []},
            ],
            sort_keys=True,
        )
        cached = self._entities.get(document)
        if cached is not None:
            return cached
        try:
            entities = cedarpy.Entities.from_json_str(document, self._schema)
        except ValueError as exc:
            raise PolicyError(f"the principal or connection does not fit the schema: {exc}") from exc
        with self._entities_lock:
            if len(self._entities) >= ENTITY_CACHE_SIZE:
                self._entities.pop(next(iter(self._entities)))
            self._entities[document] = entities
        return entities


# -- loading helpers -------------------------------------------------------------------------------


def _check_file(name: str, text: str, schema: cedarpy.Schema, seen: dict[str, str]) -> list[str]:
    """Problems with one policy file: syntax, annotations, duplicate ids, schema violations."""
    try:
        parsed = _static_policies(text)
    except ValueError as exc:
        return [f"{name} does not parse: {_one_line(str(exc))}"]
    if not parsed:
        return [f"{name} holds no policy"]
    problems: list[str] = []
    ids: dict[str, str] = {}
    for ordinal, (cedar_id, policy) in enumerate(parsed, start=1):
        policy_id = policy.get("annotations", {}).get("id")
        effect = policy.get("effect", "?")
        if not policy_id:
            problems.append(f'{name}: policy #{ordinal} ({effect}) has no @id("...") annotation')
            continue
        ids[cedar_id] = policy_id
        if policy_id in seen:
            problems.append(f"{name}: policy {policy_id} is also defined in {seen[policy_id]}")
            continue
        seen[policy_id] = name
        try:
            _policy_info(policy_id, policy, name)
        except PolicyError as exc:
            problems.append(exc.message)
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        for error in result.errors:
            policy_id = ids.get(error.policy_id, error.policy_id or "?")
            problems.append(f"{name}: policy {policy_id}: {_CEDAR_PREFIX.sub('', error.error)}")
    return problems


def _static_policies(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(Cedar id, policy JSON) in source order. Raises ValueError when the text does not parse."""
    document = json.loads(cedarpy.policies_to_json_str(text))
    if document.get("templates"):
        raise ValueError("policy templates are not supported")
    static = document.get("staticPolicies") or {}
    return sorted(static.items(), key=lambda item: int(item[0].removeprefix("policy")))


def _policy_info(policy_id: str, policy: Mapping[str, Any], source: str) -> PolicyInfo:
    annotations = policy.get("annotations", {})
    effect = policy.get("effect", "")
    where = f"{source}: policy {policy_id}"
    group_text = annotations.get("approval")
    if group_text is None:
        extra = [f"@{name}" for name in ("quorum", "expires", "preview") if name in annotations]
        if extra:
            raise PolicyError(f"{where}: {', '.join(extra)} without @approval")
        return PolicyInfo(policy_id=policy_id, effect=effect, source=source)
    if effect != "permit":
        raise PolicyError(f"{where}: @approval only makes sense on a permit")
    groups = _groups(group_text, where)
    quorum = 1
    quorum_text = annotations.get("quorum")
    if quorum_text is not None:
        if not quorum_text.isdigit() or int(quorum_text) < 1:
            raise PolicyError(f"{where}: @quorum must be a positive whole number, got {quorum_text!r}")
        quorum = int(quorum_text)
    expires_text = annotations.get("expires")
    expires_s = DEFAULT_EXPIRES_S if expires_text is None else _expires(expires_text, where)
    preview = annotations.get("preview", PREVIEW_MODES[0])
    if preview not in PREVIEW_MODES:
        raise PolicyError(f'{where}: @preview must be "explain" or "dry_run", got {preview!r}')
    approval = ApprovalRequirement(
        group=groups[0], quorum=quorum, groups=groups, expires_s=expires_s, preview=preview
    )
    return PolicyInfo(policy_id=policy_id, effect=effect, source=source, approval=approval)


def _groups(text: str, where: str) -> tuple[str, ...]:
    """`@approval("dba")` or `@approval("dba,security")`: the groups, in order, each once."""
    if not text.strip():
        raise PolicyError(f'{where}: @approval needs a group, e.g. @approval("dba")')
    groups: dict[str, None] = {}
    for part in text.split(","):
        group = part.strip()
        if not _GROUP.match(group):
            raise PolicyError(
                f'{where}: @approval("{text}") holds an empty or malformed group name {group!r} '
                '(write groups as @approval("dba,security"))'
            )
        groups.setdefault(group, None)
    return tuple(groups)


def _expires(text: str, where: str) -> int:
    """`@expires("15m")` in seconds; refused outside MIN_EXPIRES_S..MAX_EXPIRES_S."""
    match = _EXPIRES.match(text.strip())
    if match is None:
        raise PolicyError(f'{where}: @expires must be a whole number of s, m or h (e.g. "15m"), got {text!r}')
    seconds = int(match.group(1)) * EXPIRES_UNITS[match.group(2)]
    if not MIN_EXPIRES_S <= seconds <= MAX_EXPIRES_S:
        raise PolicyError(
            f"{where}: @expires({text!r}) is outside {MIN_EXPIRES_S}s..{MAX_EXPIRES_S // 3600}h"
        )
    return seconds


# -- deciding helpers ------------------------------------------------------------------------------


def _requests(
    principal: Principal,
    connection: Connection,
    classification: Classification,
    reason: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """One Cedar request per statement, action `sql:<class>`, in statement order."""
    statements = classification.statements
    utc = now.astimezone(UTC) if now.tzinfo is not None else now
    shared = {
        "statement_count": len(statements),
        "reason": reason,
        "hour_utc": utc.hour,
        "weekday": WEEKDAYS[utc.weekday()],
    }
    principal_uid = {"type": AGENT_TYPE, "id": principal.name}
    resource_uid = {"type": CONNECTION_TYPE, "id": connection.name}
    return [
        {
            "principal": principal_uid,
            "action": {"type": ACTION_TYPE, "id": action_name(classification.kind, s.cls)},
            "resource": resource_uid,
            "context": {
                "relations": list(s.relations),
                "functions": list(s.functions),
                "protected_columns_read": list(s.protected_read),
                "protected_columns_filtered": list(s.protected_filtered),
                **shared,
            },
        }
        for s in statements
    ]


def _approve_request(
    approver: Principal,
    connection: Connection,
    classification: Classification,
    statement_class: str,
    requester: str,
    reason: str,
    now: datetime,
) -> dict[str, Any]:
    """The Cedar request for action `approve`: the waiting request's statements, merged."""
    statements = classification.statements
    utc = now.astimezone(UTC) if now.tzinfo is not None else now

    def union(field: str) -> list[str]:
        return list(dict.fromkeys(v for s in statements for v in getattr(s, field)))

    return {
        "principal": {"type": APPROVER_TYPE, "id": approver.name},
        "action": {"type": ACTION_TYPE, "id": APPROVE_ACTION},
        "resource": {"type": CONNECTION_TYPE, "id": connection.name},
        "context": {
            "relations": union("relations"),
            "functions": union("functions"),
            "protected_columns_read": union("protected_read"),
            "protected_columns_filtered": union("protected_filtered"),
            "statement_count": len(statements),
            "reason": reason,
            "hour_utc": utc.hour,
            "weekday": WEEKDAYS[utc.weekday()],
            "statement_class": statement_class,
            "requester": requester,
        },
    }


def _combine(decisions: Sequence[_StatementDecision]) -> Decision:
    effect = max((d.effect for d in decisions), key=EFFECT_RISK.__getitem__)
    deciding = [d for d in decisions if d.effect is effect]
    ids = dict.fromkeys(p.policy_id for d in deciding for p in d.policies)
    approval = None
    if effect is Effect.APPROVAL:
        approval = _strictest_approval(d.approval for d in deciding if d.approval is not None)
    return Decision(
        effect=effect,
        policy_ids=tuple(ids),
        approval=approval,
        reasons=tuple(d.reason for d in deciding),
    )


def _strictest_approval(requirements: Iterable[ApprovalRequirement]) -> ApprovalRequirement:
    """Every matching approval policy must be satisfied: all their groups, the largest quorum
    (one number for every group: a requirement holds no per-group quorum), the shortest expiry,
    and a dry run when any asks for one."""
    found = list(requirements)
    if not found:
        raise PolicyError("an approval decision without an approval requirement")
    groups = tuple(dict.fromkeys(g for r in found for g in r.groups))
    return ApprovalRequirement(
        group=groups[0],
        quorum=max(r.quorum for r in found),
        groups=groups,
        expires_s=min(r.expires_s for r in found),
        preview=max((r.preview for r in found), key=PREVIEW_MODES.index),
    )


def _where(stmt: Statement, index: int, total: int) -> str:
    if total == 1:
        return ""
    snippet = " ".join(stmt.text.split())
    if len(snippet) > SNIPPET_CHARS:
        snippet = snippet[: SNIPPET_CHARS - 3] + "..."
    return f"statement {index} of {total} ({snippet}): "


def _why(stmt: Statement) -> str:
    return f" ({stmt.reason})" if stmt.reason else ""


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _one_line(message: str) -> str:
    return " ".join(message.split())
