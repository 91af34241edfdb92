"""Replay protection for Slack interactions: each signature is accepted once.

A signature covers the request's timestamp and body, so a second delivery of the same bytes
carries the same signature. The first delivery writes it with a condition that it is new; the
write of a replay fails the condition. Slack's timestamps are accepted for 5 minutes, so a record
is needed for that long: it carries a 10-minute TTL and DynamoDB deletes it afterwards.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse.exceptions import GatehouseError
from gatehouse.slack.exceptions import ReplayError

REPLAY_TTL_S = 600


class ReplayStoreUnavailableError(GatehouseError):
    """The replay table could not be written: the interaction is refused (fail closed)."""

    code = "replay_store_unavailable"
    status = 503


class ReplayStore:
    """The table `names.SLACK_REPLAY_TABLE`: key `signature` (S), TTL attribute `expires_at`."""

    def __init__(self, ddb_client: Any, table: str, *, ttl_s: int = REPLAY_TTL_S) -> None:
        self._ddb = ddb_client
        self._table = table
        self._ttl_s = ttl_s

    def remember(self, signature: str, now: float) -> None:
        """Record `signature` as seen; `ReplayError` if it was seen before."""
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item={"signature": {"S": signature}, "expires_at": {"N": str(int(now) + self._ttl_s)}},
                ConditionExpression="attribute_not_exists(signature)",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise ReplayError("this Slack request was already received once") from exc
            raise ReplayStoreUnavailableError("the Slack replay table could not be written") from exc
        except BotoCoreError as exc:
            raise ReplayStoreUnavailableError("the Slack replay table could not be written") from exc
