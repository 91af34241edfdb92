"""Authorize classified statements with Cedar (cedarpy).

Policies are `*.cedar` files under version control, validated against `gatehouse.cedarschema`
and parsed once when the engine loads. Each statement of a text is authorized on its own, with
the action `sql:<class>`:

- a `forbid` matches, or no `permit` matches: deny;
- permits match and at least one carries `@approval("<group>")` (with `@quorum("<n>")`, default 1):
  approval. When several approval permits match, the largest quorum wins (on a tie, the first
  policy in load order: files by name, policies in file order), and `policy_ids` names only the
  permits that ask for approval, since they are what made the decision;
- otherwise: allow, naming every permit that matched.

A text of several statements gets the strictest of its statements' decisions
(`models.EFFECT_RISK`); the decision names the policies and gives the reasons of the statements
that were that strict. Anything unexpected from Cedar (an evaluation error, a request the schema
refuses) raises PolicyError: the caller refuses the command, nothing runs.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cedarpy

from gatehouse.config import default_policy_dir
from gatehouse.exceptions import PolicyError
from gatehouse.models import (
    EFFECT_RISK,
    ApprovalRequirement,
    Classification,
    Connection,
    Decision,
    Effect,
    Principal,
    Statement,
    StatementClass,
)

NAMESPACE = "Gatehouse"
AGENT_TYPE = f"{NAMESPACE}::Agent"
CONNECTION_TYPE = f"{NAMESPACE}::Connection"
ACTION_TYPE = f"{NAMESPACE}::Action"
SCHEMA_FILE = "gatehouse.cedarschema"
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
AGENT_ATTRIBUTES = ("team", "clearance")
CONNECTION_ATTRIBUTES = ("env", "data_classification")
# Entity sets are parsed once per (principal, connection) shape and reused; bounded.
ENTITY_CACHE_SIZE = 256
SNIPPET_CHARS = 60
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
        probe = Classification(
            kind="postgres", statements=tuple(Statement(text="", cls=cls) for cls in StatementClass)
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
                raise PolicyError(f"the schema does not fit sql:{stmt.cls.value} requests: {detail}")

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
            self._decide(result, stmt, index, total, connection.name)
            for index, (result, stmt) in enumerate(zip(results, statements, strict=True), start=1)
        ]

    def _decide(
        self, result: cedarpy.AuthzResult, stmt: Statement, index: int, total: int, connection: str
    ) -> _StatementDecision:
        action = f"sql:{stmt.cls.value}"
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
            requirement = _strictest_approval(p.approval for p in approvals)
            ids = ", ".join(p.policy_id for p in approvals)
            text = (
                f"{where}{action} on {connection} needs approval by {requirement.quorum} of "
                f"{requirement.group} per {ids}{_why(stmt)}"
            )
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

    def _entity_set(self, principal: Principal, connection: Connection) -> cedarpy.Entities:
        attrs = principal.attributes
        agent = {"name": principal.name, "groups": sorted(str(g) for g in principal.groups)}
        for key in AGENT_ATTRIBUTES:
            agent[key] = _text(attrs.get(key))
        target = {"name": connection.name, "kind": connection.kind}
        for key in CONNECTION_ATTRIBUTES:
            target[key] = _text(connection.attributes.get(key))
        document = json.dumps(
            [
                {"uid": {"type": AGENT_TYPE, "id": principal.name}, "attrs": agent, "parents": []},
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
    group = annotations.get("approval")
    quorum_text = annotations.get("quorum")
    if group is None:
        if quorum_text is not None:
            raise PolicyError(f"{source}: policy {policy_id}: @quorum without @approval")
        return PolicyInfo(policy_id=policy_id, effect=effect, source=source)
    if effect != "permit":
        raise PolicyError(f"{source}: policy {policy_id}: @approval only makes sense on a permit")
    if not group.strip():
        raise PolicyError(f'{source}: policy {policy_id}: @approval needs a group, e.g. @approval("dba")')
    quorum = 1
    if quorum_text is not None:
        if not quorum_text.isdigit() or int(quorum_text) < 1:
            raise PolicyError(
                f"{source}: policy {policy_id}: @quorum must be a positive whole number, got {quorum_text!r}"
            )
        quorum = int(quorum_text)
    approval = ApprovalRequirement(group=group, quorum=quorum)
    return PolicyInfo(policy_id=policy_id, effect=effect, source=source, approval=approval)


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
            "action": {"type": ACTION_TYPE, "id": f"sql:{s.cls.value}"},
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


def _strictest_approval(requirements: Any) -> ApprovalRequirement:
    best: ApprovalRequirement | None = None
    for requirement in requirements:
        if best is None or requirement.quorum > best.quorum:
            best = requirement
    if best is None:
        raise PolicyError("an approval decision without an approval requirement")
    return best


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
