"""Who is calling: the IAM identity API Gateway verified, mapped to a registered principal."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gatehouse.exceptions import UnknownPrincipalError

_ASSUMED_ROLE = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+$")


@dataclass(frozen=True)
class CallerIdentity:
    """What API Gateway's IAM authorizer verified about the caller (payload format 2.0)."""

    arn: str
    account_id: str
    access_key: str
    user_id: str

    @property
    def principal_key(self) -> str:
        return f"iam:{canonical_arn(self.arn)}"


def canonical_arn(arn: str) -> str:
    """An assumed-role session ARN names its role: sessions of one role are one principal."""
    match = _ASSUMED_ROLE.match(arn)
    if match:
        partition, account, role = match.groups()
        return f"arn:{partition}:iam::{account}:role/{role}"
    return arn


def caller_from_event(event: Mapping[str, Any]) -> CallerIdentity:
    """Read `requestContext.authorizer.iam`; absent means the route was not IAM-authorized."""
    iam = ((event.get("requestContext") or {}).get("authorizer") or {}).get("iam") or {}
    arn = iam.get("userArn")
    if not arn:
        raise UnknownPrincipalError("request carries no verified IAM identity")
    return CallerIdentity(
        arn=str(arn),
        account_id=str(iam.get("accountId") or ""),
        access_key=str(iam.get("accessKey") or ""),
        user_id=str(iam.get("userId") or ""),
    )
