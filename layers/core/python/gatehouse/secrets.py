"""Credentials from Secrets Manager, fetched at run time and cached briefly.

A credential never leaves this module's callers: it is not returned to agents, not logged, and
not written to the session log. Errors name the secret, never its value.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError, TransformParameterError
from botocore.exceptions import BotoCoreError, ClientError

from gatehouse.exceptions import SecretUnavailableError

# Secrets Manager's staging labels (rotation moves them from version to version).
CURRENT = "AWSCURRENT"
PENDING = "AWSPENDING"

# Long enough to spare Secrets Manager a call per request, short enough that a rotated
# password is picked up within a minute.
CACHE_SECONDS = 60


@dataclass(frozen=True)
class DatabaseCredential:
    username: str
    password: str

    def __repr__(self) -> str:  # keep the password out of any accidental log line or traceback
        return f"DatabaseCredential(username={self.username!r}, password='***')"


class SecretStore:
    """Reads Gatehouse's secrets through powertools' cached SecretsProvider."""

    def __init__(self, secrets_client: Any = None, cache_seconds: int = CACHE_SECONDS) -> None:
        self._provider = SecretsProvider(boto3_client=secrets_client)
        self._max_age = cache_seconds

    def database_credential(
        self, secret_id: str, *, fresh: bool = False, stage: str = CURRENT
    ) -> DatabaseCredential:
        """The credential staged `stage`; `fresh` skips the cache (and refreshes it, for AWSCURRENT).

        Only AWSCURRENT is cached: the provider's cache key ignores the stage, and a pending
        version must never stand in for the current one after its rotation failed.
        """
        if stage == CURRENT:
            value = self._get(secret_id, transform="json", force_fetch=fresh)
        else:
            value = self._get_stage(secret_id, stage)
        if not isinstance(value, dict) or not value.get("username") or not value.get("password"):
            raise SecretUnavailableError(f"secret {secret_id} has no username/password")
        return DatabaseCredential(username=str(value["username"]), password=str(value["password"]))

    def credential_after_rejection(
        self, secret_id: str, rejected: DatabaseCredential
    ) -> DatabaseCredential | None:
        """What to log in with once the database refused `rejected` (28P01), or None: give up.

        A rotation (gatehouse.rotation) changes the password in the database at setSecret and
        moves AWSCURRENT only at finishSecret, while this process may hold the old value for
        CACHE_SECONDS: a fresh AWSCURRENT that differs is the new password; an unchanged one
        means the rotation is between those steps, and AWSPENDING already logs in.
        """
        current = self.database_credential(secret_id, fresh=True)
        if current != rejected:
            return current
        try:
            pending = self.database_credential(secret_id, stage=PENDING)
        except SecretUnavailableError:
            return None  # no rotation under way: the password is simply wrong
        return pending if pending != rejected else None

    def binary_key(self, secret_id: str) -> bytes:
        """A key stored as base64 text (the masking HMAC key)."""
        value = self._get(secret_id, transform=None)
        try:
            key = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SecretUnavailableError(f"secret {secret_id} is not base64") from exc
        if len(key) < 16:
            raise SecretUnavailableError(f"secret {secret_id} is shorter than 128 bits")
        return key

    def json_secret(self, secret_id: str) -> dict[str, Any]:
        """A secret stored as a JSON object (e.g. the Slack app's `signing_secret` and `bot_token`)."""
        value = self._get(secret_id, transform="json")
        if not isinstance(value, dict):
            raise SecretUnavailableError(f"secret {secret_id} is not a JSON object")
        return value

    def _get(self, secret_id: str, transform: Any, force_fetch: bool = False) -> Any:
        try:
            return self._provider.get(
                secret_id, max_age=self._max_age, transform=transform, force_fetch=force_fetch
            )
        except (GetParameterError, TransformParameterError) as exc:
            # The provider's message can quote the SDK error, never the value; keep only the name.
            raise SecretUnavailableError(f"secret {secret_id} could not be read") from exc

    def _get_stage(self, secret_id: str, stage: str) -> Any:
        """A JSON secret's version staged `stage`, read past the cache."""
        try:
            resp = self._provider.client.get_secret_value(SecretId=secret_id, VersionStage=stage)
            return json.loads(resp["SecretString"])
        except (ClientError, BotoCoreError, KeyError, ValueError) as exc:
            raise SecretUnavailableError(f"secret {secret_id} has no readable {stage} version") from exc
