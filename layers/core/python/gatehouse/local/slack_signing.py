"""Slack interaction requests exactly as Slack sends them, signed with the app's signing secret.

The approvals console and `gatehouse approve` stand in for a person clicking in Slack: they build
the same payloads Slack would (`block_actions` for the Approve/Deny buttons, `view_submission`
for the deny modal) and send them, signed, to the same `/slack/interactions` path the deployed
app is configured with. Nothing on the receiving side knows it is not Slack.

    headers, body = signed_interaction(approve_action("U_ALICE", request_id), secret, time.time())

Slack's signing scheme (https://api.slack.com/authentication/verifying-requests-from-slack):
`X-Slack-Signature: v0=` + hex HMAC-SHA256(signing secret, `v0:{timestamp}:{raw body}`), with
`X-Slack-Request-Timestamp: {timestamp}` (whole seconds); interactions are form-encoded with a
single field, `payload`, holding the JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from gatehouse.exceptions import GatehouseError
from gatehouse.slack.views import (
    ACTION_APPROVE,
    ACTION_DENY,
    ACTIONS_BLOCK_ID,
    DENY_CALLBACK_ID,
    REASON_ACTION_ID,
    REASON_BLOCK_ID,
)

SIGNATURE_VERSION = "v0"
CONTENT_TYPE = "application/x-www-form-urlencoded"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
SIGNATURE_HEADER = "X-Slack-Signature"

# The contract with the Slack message is gatehouse.slack.views' (button action ids, the deny
# modal's callback id and input block): re-exported here so a payload cannot drift from it.
APPROVE_ACTION_ID = ACTION_APPROVE
DENY_ACTION_ID = ACTION_DENY
DENY_MODAL_CALLBACK_ID = DENY_CALLBACK_ID

# What Slack puts in a local workspace's payloads; none of it is a credential.
LOCAL_TEAM = {"id": "T_GATEHOUSE", "domain": "gatehouse-local"}
LOCAL_APP_ID = "A_GATEHOUSE"
LOCAL_CHANNEL = "C_APPROVALS"

SEND_TIMEOUT_S = 10.0


class InteractionSendError(GatehouseError):
    """The signed interaction could not be delivered (nothing listens at the URL)."""

    code = "interaction_unreachable"
    status = 502


def sign(body: str, signing_secret: str, timestamp: int) -> str:
    base = f"{SIGNATURE_VERSION}:{timestamp}:{body}".encode()
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def signed_interaction(
    payload: Mapping[str, Any], signing_secret: str, now: float
) -> tuple[dict[str, str], str]:
    """The headers and the form-encoded body of one interaction, signed as of `now` (epoch s)."""
    if not signing_secret:
        raise ValueError("an interaction needs the app's signing secret")
    body = urllib.parse.urlencode({"payload": json.dumps(payload, separators=(",", ":"))})
    timestamp = int(now)
    headers = {
        "Content-Type": CONTENT_TYPE,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(body, signing_secret, timestamp),
    }
    return headers, body


def _user(user_id: str, name: str | None) -> dict[str, Any]:
    name = name or user_id.lower()
    return {"id": user_id, "username": name, "name": name, "team_id": LOCAL_TEAM["id"]}


def new_trigger_id() -> str:
    # Slack's shape: "<digits>.<digits>.<hex>"; views.open needs it within 3 s of the click.
    return f"{secrets.randbelow(10**11)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"


def button_action(
    user_id: str,
    request_id: str,
    *,
    approve: bool,
    now: float,
    response_url: str,
    channel: str = LOCAL_CHANNEL,
    message_ts: str = "",
    message: Mapping[str, Any] | None = None,
    block_id: str = ACTIONS_BLOCK_ID,
    user_name: str | None = None,
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """A `block_actions` payload: `user_id` clicked Approve (or Deny) on the request's message."""
    action_id, label, style = (
        (APPROVE_ACTION_ID, "Approve", "primary") if approve else (DENY_ACTION_ID, "Deny", "danger")
    )
    return {
        "type": "block_actions",
        "user": _user(user_id, user_name),
        "api_app_id": LOCAL_APP_ID,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id or new_trigger_id(),
        "team": dict(LOCAL_TEAM),
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "approvals"},
        "message": dict(message) if message is not None else {"type": "message", "ts": message_ts},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": block_id,
                "text": {"type": "plain_text", "text": label, "emoji": True},
                "value": request_id,
                "style": style,
                "action_ts": f"{now:.6f}",
            }
        ],
    }


def deny_submission(
    user_id: str,
    request_id: str,
    reason: str,
    *,
    view: Mapping[str, Any] | None = None,
    user_name: str | None = None,
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """A `view_submission` of the deny modal, the reason typed into its input block.

    `view` is the modal as opened with views.open, when it is known: its callback id, blocks
    and private metadata (the request id) are sent back as Slack does.
    """
    view = dict(view or {})
    return {
        "type": "view_submission",
        "team": dict(LOCAL_TEAM),
        "user": _user(user_id, user_name),
        "api_app_id": LOCAL_APP_ID,
        "trigger_id": trigger_id or new_trigger_id(),
        "view": {
            "id": view.get("id") or "V" + secrets.token_hex(5).upper(),
            "team_id": LOCAL_TEAM["id"],
            "type": "modal",
            "callback_id": view.get("callback_id") or DENY_MODAL_CALLBACK_ID,
            "private_metadata": view.get("private_metadata") or request_id,
            "title": view.get("title") or {"type": "plain_text", "text": "Deny request"},
            "blocks": view.get("blocks") or [],
            "state": {
                "values": {REASON_BLOCK_ID: {REASON_ACTION_ID: {"type": "plain_text_input", "value": reason}}}
            },
            "hash": secrets.token_hex(8),
            "app_id": LOCAL_APP_ID,
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


@dataclass(frozen=True)
class InteractionAnswer:
    """What the interactions endpoint answered (Slack shows nothing of a bare 200)."""

    status: int
    body: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def send_interaction(
    url: str,
    payload: Mapping[str, Any],
    signing_secret: str,
    now: float,
    *,
    session: requests.Session | None = None,
    timeout_s: float = SEND_TIMEOUT_S,
) -> InteractionAnswer:
    """POST one signed interaction to `url` (a `/slack/interactions` endpoint) and return its answer."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise InteractionSendError(f"not an HTTP URL: {url}")
    headers, body = signed_interaction(payload, signing_secret, now)
    http = session or _direct_session()
    try:
        resp = http.post(url, data=body.encode(), headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        raise InteractionSendError(f"cannot reach {url}: {exc}") from exc
    return InteractionAnswer(resp.status_code, resp.text[:65536])


def _direct_session() -> requests.Session:
    # Loopback endpoints: an HTTP(S)_PROXY of the shell must not see (or break) the request.
    session = requests.Session()
    session.trust_env = False
    return session
