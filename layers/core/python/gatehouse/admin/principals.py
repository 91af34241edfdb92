"""Register agents (an IAM role) and approvers (a Slack user) in the principals table.

An agent's item is keyed by the principal key the API derives from the caller's verified IAM
identity (gatehouse.identity): a caller using a role arrives as an assumed-role session,
`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`, which names the role but not its IAM path, and
maps to `iam:arn:aws:iam::ACCOUNT:role/ROLE`. So the key is written from the role's name alone:
a role ARN with a path (`role/service/ROLE`) would otherwise be a key no caller ever matches. The
item's `arn` is that same path-less ARN, since the Postgres proxy looks the principal up again from
the ARN its token carries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse.admin.connections import validate_name
from gatehouse.admin.exceptions import (
    AlreadyRegisteredError,
    NotRegisteredError,
    RegistrationError,
    RegistryWriteError,
)
from gatehouse.ddb import from_item, to_item
from gatehouse.identity import canonical_arn
from gatehouse.models import Principal
from gatehouse.registry import principal_from_item
from gatehouse.terminal import safe_text

# IAM role names: up to 64 of [\w+=,.@-]; a path is /-separated segments of the same characters.
_ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role/((?:[\w+=,.@-]+/)*)([\w+=,.@-]{1,64})$")
_SESSION_ARN = re.compile(r"^arn:aws[a-z-]*:sts::\d{12}:assumed-role/")
# Slack user ids: U... or W... (Enterprise Grid); the local stack's are U_ALICE-style.
_SLACK_USER = re.compile(r"^[UW][A-Z0-9_]{1,31}$")
_GROUP = re.compile(r"^[A-Za-z0-9_.:@-]+$")  # as gatehouse.policy.engine reads @approval groups


@dataclass(frozen=True)
class AgentKey:
    """The principal key identity lookup finds for callers using the role, and the role's ARN."""

    principal_key: str
    arn: str


def agent_key(role_arn: str) -> AgentKey:
    """Validate an IAM role ARN and derive the key its sessions map to. Raises RegistrationError."""
    if _SESSION_ARN.match(role_arn):
        raise RegistrationError(
            "that is an assumed-role session ARN: give the role's own ARN, arn:aws:iam::ACCOUNT:role/NAME"
        )
    match = _ROLE_ARN.match(role_arn)
    if match is None:
        raise RegistrationError(
            f"--role-arn {safe_text(role_arn)!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
        )
    partition, account, _path, role = match.groups()
    # Exactly what canonical_arn makes of a session of this role.
    arn = canonical_arn(f"arn:{partition}:sts::{account}:assumed-role/{role}/gatehouse")
    return AgentKey(principal_key=f"iam:{arn}", arn=arn)


def _text(value: str, option: str) -> str:
    if not value or safe_text(value) != value:
        raise RegistrationError(f"{option} must be a non-empty line of text (no control characters)")
    return value


def slack_user(user_id: str, option: str = "SLACK_USER_ID") -> str:
    if not _SLACK_USER.match(user_id):
        raise RegistrationError(f"{option} {safe_text(user_id)!r} is not a Slack user id (U0123ABCD)")
    return user_id


def _aws(what: str, exc: ClientError | BotoCoreError) -> RegistryWriteError:
    return RegistryWriteError(f"{what} failed: {safe_text(exc)}")


class PrincipalRegistrar:
    """Writes, lists and removes agents and approvers in one stack's principals table."""

    def __init__(self, *, dynamodb: Any, principals_table: str) -> None:
        self._ddb = dynamodb
        self._table = principals_table

    # -- agents ------------------------------------------------------------------------------------

    def add_agent(
        self,
        name: str,
        role_arn: str,
        *,
        team: str | None = None,
        clearance: str | None = None,
        owner: str | None = None,
        replace: bool = False,
    ) -> tuple[Principal, AgentKey]:
        validate_name(name, "agent")
        key = agent_key(role_arn)
        attributes = {
            k: _text(v, f"--{k}") for k, v in (("team", team), ("clearance", clearance)) if v is not None
        }
        if owner is not None:
            # The owner may not approve the agent's requests (service.py compares it with the
            # approver's Slack user id): it must be one.
            attributes["owner"] = slack_user(owner, "--owner")
        namesakes = [p for p in self._scan("agent") if p[1].name == name and p[0] != key.principal_key]
        if namesakes:
            raise AlreadyRegisteredError(
                f"agent name {name} is taken by {safe_text(namesakes[0][1].arn)}: remove that agent first"
            )
        item = {
            "principal_key": key.principal_key,
            "name": name,
            "kind": "agent",
            "arn": key.arn,
            "attributes": attributes,
            "groups": [],
        }
        self._put(item, replace, f"role {key.arn} is already agent {{name}}: pass --replace to overwrite")
        return principal_from_item(item), key

    def agents(self) -> list[tuple[str, Principal]]:
        return self._scan("agent")

    def remove_agent(self, name: str) -> Principal:
        found = [p for p in self._scan("agent") if p[1].name == name]
        if not found:
            raise NotRegisteredError(f"no agent named {safe_text(name)!r}")
        for key, _ in found:
            self._delete(key)
        return found[0][1]

    # -- approvers ---------------------------------------------------------------------------------

    def add_approver(
        self,
        user_id: str,
        *,
        name: str,
        groups: Sequence[str],
        known_groups: frozenset[str],
        replace: bool = False,
    ) -> Principal:
        slack_user(user_id)
        _text(name, "--name")
        if not groups:
            raise RegistrationError("an approver needs at least one --group")
        unknown = [g for g in groups if g not in known_groups or not _GROUP.match(g)]
        if unknown:
            listed = ", ".join(sorted(known_groups)) or "none: no policy carries @approval"
            raise RegistrationError(
                f"no policy asks group(s) {', '.join(safe_text(g) for g in unknown)} for approval, so "
                f"membership would approve nothing (groups the policies ask for: {listed})"
            )
        item = {
            "principal_key": f"slack:{user_id}",
            "name": name,
            "kind": "approver",
            "attributes": {},
            "groups": list(dict.fromkeys(groups)),
        }
        self._put(
            item, replace, f"Slack user {user_id} is already approver {{name}}: pass --replace to overwrite"
        )
        return principal_from_item(item)

    def approvers(self) -> list[tuple[str, Principal]]:
        return self._scan("approver")

    def remove_approver(self, user_id: str) -> Principal:
        key = f"slack:{slack_user(user_id)}"
        item = self._get(key)
        if item is None or item.get("kind") != "approver":
            raise NotRegisteredError(f"no approver with Slack user id {user_id}")
        self._delete(key)
        return principal_from_item(item)

    # -- the table ---------------------------------------------------------------------------------

    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            resp = self._ddb.get_item(
                TableName=self._table, Key={"principal_key": {"S": key}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise _aws(f"reading the principals table {self._table}", exc) from exc
        item = resp.get("Item")
        return from_item(item) if item else None

    def _put(self, item: Mapping[str, Any], replace: bool, exists_message: str) -> None:
        kwargs: dict[str, Any] = {"TableName": self._table, "Item": to_item(item)}
        if not replace:
            kwargs["ConditionExpression"] = "attribute_not_exists(principal_key)"
            kwargs["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            self._ddb.put_item(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                old = from_item(exc.response.get("Item") or {}) if exc.response.get("Item") else {}
                raise AlreadyRegisteredError(
                    exists_message.format(name=safe_text(old.get("name", "?")))
                ) from exc
            raise _aws(f"writing the principals table {self._table}", exc) from exc
        except BotoCoreError as exc:
            raise _aws(f"writing the principals table {self._table}", exc) from exc

    def _delete(self, key: str) -> None:
        try:
            self._ddb.delete_item(TableName=self._table, Key={"principal_key": {"S": key}})
        except (ClientError, BotoCoreError) as exc:
            raise _aws(f"deleting from the principals table {self._table}", exc) from exc

    def _scan(self, kind: str) -> list[tuple[str, Principal]]:
        """(principal key, principal) of one kind, sorted by name."""
        out: list[tuple[str, Principal]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "#k = :kind",
            "ExpressionAttributeNames": {"#k": "kind"},
            "ExpressionAttributeValues": {":kind": {"S": kind}},
        }
        try:
            while True:
                page = self._ddb.scan(**kwargs)
                for raw in page.get("Items", []):
                    item = from_item(raw)
                    out.append((str(item["principal_key"]), principal_from_item(item)))
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as exc:
            raise _aws(f"reading the principals table {self._table}", exc) from exc
        return sorted(out, key=lambda p: (p[1].name, p[0]))
