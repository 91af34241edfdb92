"""Slack interactions: verify that Slack sent them (once), and read what the approver did.

Slack signs every request with the app's signing secret over `v0:{timestamp}:{body}`
(https://docs.slack.dev/authentication/verifying-requests-from-slack/). A request is accepted
when the signature matches, its timestamp is within 5 minutes of now, and its signature was
never seen before (`ReplayStore`). The body is `payload=<JSON>`, form-encoded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.signature import Clock, SignatureVerifier

from gatehouse.slack.exceptions import InvalidInteractionError, InvalidSignatureError
from gatehouse.slack.replay import ReplayStore
from gatehouse.slack.views import (
    ACTION_APPROVE,
    ACTION_DENY,
    DENY_CALLBACK_ID,
    REASON_ACTION_ID,
    REASON_BLOCK_ID,
)

MAX_SKEW_S = 300  # slack-sdk's window, as Slack recommends
MAX_BODY_CHARS = 64 * 1024  # an interaction payload is a few KiB; anything far larger is not Slack's
MAX_REASON_CHARS = 3000  # the modal's input allows no more
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_SLACK_ID = re.compile(r"^[A-Z0-9_]{1,64}$")

KIND_APPROVE = "approve"
KIND_DENY_BUTTON = "deny_button"
KIND_DENY = "deny"


@dataclass(frozen=True)
class Interaction:
    """One approver action: a button click (approve, deny) or the deny modal's submission."""

    kind: str  # approve | deny_button (open the modal) | deny (the modal, with its reason)
    user_id: str  # the Slack user who acted
    request_id: str
    trigger_id: str | None = None  # lets us open a modal, for 3 seconds
    response_url: str | None = None
    channel: str | None = None  # the approval message's channel (buttons only)
    message_ts: str | None = None
    reason: str = ""

    @property
    def approve(self) -> bool:
        return self.kind == KIND_APPROVE


class _FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def verify(
    headers: Mapping[str, str], body: str, signing_secret: str, replay: ReplayStore, now: float
) -> None:
    """Raise `InvalidSignatureError` unless Slack signed `body` within 5 minutes of `now`,
    and `ReplayError` when this signature was already accepted once."""
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp = lowered.get("x-slack-request-timestamp")
    signature = lowered.get("x-slack-signature")
    if not timestamp or not signature:
        raise InvalidSignatureError("the request is not signed by Slack")
    try:
        sent_at = int(timestamp)
    except ValueError as exc:
        raise InvalidSignatureError("the request's Slack timestamp is not a number") from exc
    if abs(now - sent_at) > MAX_SKEW_S:
        # Checked before the signature too, so the message says why; slack-sdk checks it again.
        raise InvalidSignatureError("the request's Slack timestamp is more than 5 minutes away from now")
    verifier = SignatureVerifier(signing_secret, clock=_FixedClock(now))
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        raise InvalidSignatureError("the request's Slack signature does not match")
    # Only a verified signature is stored: a forger cannot fill the table or block a real click.
    replay.remember(signature, now)


def signed_headers(body: str, signing_secret: str, timestamp: int) -> dict[str, str]:
    """The headers Slack sends with `body` (for the local console, the CLI and tests)."""
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=str(timestamp), body=body)
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": str(signature),
    }


def parse(body: str) -> Interaction:
    """The approver's action from a verified body; `InvalidInteractionError` (400) otherwise."""
    if len(body) > MAX_BODY_CHARS:
        raise InvalidInteractionError("the interaction payload is too large")
    form = parse_qs(body, keep_blank_values=True, max_num_fields=16)
    values = form.get("payload") or []
    if len(values) != 1:
        raise InvalidInteractionError("the body must carry exactly one `payload` field")
    try:
        payload = json.loads(values[0])
    except ValueError as exc:
        raise InvalidInteractionError("the interaction payload is not JSON") from exc
    if not isinstance(payload, dict):
        raise InvalidInteractionError("the interaction payload is not a JSON object")
    kind = payload.get("type")
    if kind == "block_actions":
        return _block_action(payload)
    if kind == "view_submission":
        return _view_submission(payload)
    raise InvalidInteractionError(f"interactions of type {_shown(kind)} are not handled")


def _block_action(payload: Mapping[str, Any]) -> Interaction:
    actions = payload.get("actions")
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
        raise InvalidInteractionError("a button interaction carries exactly one action")
    action = actions[0]
    action_id = action.get("action_id")
    if action_id not in (ACTION_APPROVE, ACTION_DENY):
        raise InvalidInteractionError(f"action {_shown(action_id)} is not a Gatehouse button")
    container = _dict(payload.get("container"))
    channel = _dict(payload.get("channel")).get("id") or container.get("channel_id")
    message_ts = _dict(payload.get("message")).get("ts") or container.get("message_ts")
    trigger_id = payload.get("trigger_id")
    if action_id == ACTION_DENY and not (isinstance(trigger_id, str) and trigger_id):
        raise InvalidInteractionError("a Deny click carries no trigger_id to open the reason modal with")
    response_url = payload.get("response_url")
    return Interaction(
        kind=KIND_APPROVE if action_id == ACTION_APPROVE else KIND_DENY_BUTTON,
        user_id=_user_id(payload),
        request_id=_request_id(action.get("value")),
        trigger_id=trigger_id if isinstance(trigger_id, str) and trigger_id else None,
        response_url=response_url if isinstance(response_url, str) and response_url else None,
        channel=str(channel) if isinstance(channel, str) and channel else None,
        message_ts=str(message_ts) if isinstance(message_ts, str) and message_ts else None,
    )


def _view_submission(payload: Mapping[str, Any]) -> Interaction:
    view = _dict(payload.get("view"))
    if view.get("callback_id") != DENY_CALLBACK_ID:
        raise InvalidInteractionError(f"view {_shown(view.get('callback_id'))} is not Gatehouse's deny modal")
    state = _dict(_dict(view.get("state")).get("values"))
    reason = _dict(_dict(state.get(REASON_BLOCK_ID)).get(REASON_ACTION_ID)).get("value")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInteractionError("a denial needs a reason")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidInteractionError(f"a reason holds at most {MAX_REASON_CHARS} characters")
    return Interaction(
        kind=KIND_DENY,
        user_id=_user_id(payload),
        request_id=_request_id(view.get("private_metadata")),
        reason=reason.strip(),
    )


def _user_id(payload: Mapping[str, Any]) -> str:
    user_id = _dict(payload.get("user")).get("id")
    if not isinstance(user_id, str) or not _SLACK_ID.match(user_id):
        raise InvalidInteractionError("the interaction names no Slack user")
    return user_id


def _request_id(value: Any) -> str:
    if not isinstance(value, str) or not _REQUEST_ID.match(value):
        raise InvalidInteractionError("the interaction carries no valid request id")
    return value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _shown(value: Any) -> str:
    return repr(value)[:64]
