"""What the Cedar policies expect of the registry: the approver groups and the `env` values they name.

A registration that names a group or an environment no policy knows is not an error Cedar would
report: an approver in group "dbas" simply never counts toward a "dba" approval, and a connection
with `env=prd` matches no `resource.env == "prod"` permit, so every request on it is denied. Both
are typos an operator should hear about when registering, not when a request waits forever.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from gatehouse.exceptions import PolicyError
from gatehouse.policy.engine import PolicyEngine

ENV_ATTRIBUTE = "env"


@dataclass(frozen=True)
class PolicyFacts:
    """The approver groups `@approval(...)` annotations ask for, and the `resource.env` literals."""

    approval_groups: frozenset[str]
    env_values: frozenset[str]

    @classmethod
    def load(cls, policy_dir: Path) -> PolicyFacts:
        """Load (and validate, as the API does) the policies of `policy_dir`. Raises PolicyError."""
        engine = PolicyEngine.from_dir(policy_dir)
        groups = {g for p in engine.policies if p.approval is not None for g in p.approval.groups}
        values: set[str] = set()
        for path in sorted(Path(policy_dir).glob("*.cedar")):
            try:
                document = json.loads(cedarpy.policies_to_json_str(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:  # the engine loaded them: not expected
                raise PolicyError(f"cannot read {path.name}: {exc}") from exc
            for policy in (document.get("staticPolicies") or {}).values():
                for condition in policy.get("conditions") or ():
                    values.update(_env_literals(condition.get("body")))
        return cls(approval_groups=frozenset(groups), env_values=frozenset(values))


def _is_resource_env(node: Any) -> bool:
    dot = node.get(".") if isinstance(node, dict) else None
    return (
        isinstance(dot, dict) and dot.get("attr") == ENV_ATTRIBUTE and dot.get("left") == {"Var": "resource"}
    )


def _string(node: Any) -> str | None:
    value = node.get("Value") if isinstance(node, dict) else None
    return value if isinstance(value, str) else None


def _env_literals(node: Any) -> Iterator[str]:
    """Strings compared with `resource.env` (`==`, `!=`, or `[...].contains(resource.env)`)."""
    if isinstance(node, list):
        for item in node:
            yield from _env_literals(item)
        return
    if not isinstance(node, dict):
        return
    for op, arg in node.items():
        if op in ("==", "!=") and isinstance(arg, dict):
            left, right = arg.get("left"), arg.get("right")
            for a, b in ((left, right), (right, left)):
                literal = _string(b)
                if _is_resource_env(a) and literal is not None:
                    yield literal
        if op == "contains" and isinstance(arg, dict) and _is_resource_env(arg.get("right")):
            members = (arg.get("left") or {}).get("Set") if isinstance(arg.get("left"), dict) else None
            for member in members or ():
                literal = _string(member)
                if literal is not None:
                    yield literal
        yield from _env_literals(arg)
