"""Signed Slack interactions: what the console and `gatehouse approve` send must pass Slack's own check.

The verifier here is slack-sdk's SignatureVerifier, the one the deployed `functions/slack` uses:
a payload it accepts is one real Slack could have sent.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from slack_sdk.signature import SignatureVerifier

from gatehouse.local.slack_signing import (
    APPROVE_ACTION_ID,
    DENY_ACTION_ID,
    REASON_ACTION_ID,
    REASON_BLOCK_ID,
    button_action,
    deny_submission,
    signed_interaction,
)
from gatehouse.slack import interactions

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
REQUEST_ID = "req-01J9ZK4A7YB3"
RESPONSE_URL = "http://127.0.0.1:9/_standin/response/abc"


def _payload_of(body: str) -> dict:
    form = urllib.parse.parse_qs(body, strict_parsing=True)
    assert list(form) == ["payload"]
    return json.loads(form["payload"][0])


def test_a_signed_approval_passes_slacks_own_verifier() -> None:
    # Given an Approve click by U_ALICE, signed now
    now = time.time()
    payload = button_action("U_ALICE", REQUEST_ID, approve=True, now=now, response_url=RESPONSE_URL)
    headers, body = signed_interaction(payload, SECRET, now)

    # Then slack-sdk accepts it, as the deployed handler would
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert SignatureVerifier(SECRET).is_valid_request(body, headers)
    assert headers["X-Slack-Request-Timestamp"] == str(int(now))
    assert headers["X-Slack-Signature"].startswith("v0=")


def test_the_wrong_secret_a_changed_body_or_a_stale_timestamp_fail_verification() -> None:
    now = time.time()
    payload = button_action("U_ALICE", REQUEST_ID, approve=True, now=now, response_url=RESPONSE_URL)
    headers, body = signed_interaction(payload, SECRET, now)

    assert not SignatureVerifier("another-secret").is_valid_request(body, headers)
    forged = body.replace("U_ALICE", "U_BOBBY")
    assert forged != body
    assert not SignatureVerifier(SECRET).is_valid_request(forged, headers)

    # Signed six minutes ago: outside Slack's five-minute window.
    old_headers, old_body = signed_interaction(payload, SECRET, now - 360)
    assert not SignatureVerifier(SECRET).is_valid_request(old_body, old_headers)


def test_an_empty_signing_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="signing secret"):
        signed_interaction({"type": "block_actions"}, "", time.time())


def test_the_approve_payload_carries_who_clicked_which_button_on_which_request() -> None:
    now = time.time()
    payload = button_action(
        "U_ALICE",
        REQUEST_ID,
        approve=True,
        now=now,
        response_url=RESPONSE_URL,
        channel="C_OPS",
        message_ts="1700000000.000100",
    )
    _, body = signed_interaction(payload, SECRET, now)
    sent = _payload_of(body)

    assert sent["type"] == "block_actions"
    assert sent["user"]["id"] == "U_ALICE"
    (action,) = sent["actions"]
    assert action["type"] == "button"
    assert action["action_id"] == APPROVE_ACTION_ID
    assert action["value"] == REQUEST_ID
    assert sent["response_url"] == RESPONSE_URL
    assert sent["channel"]["id"] == "C_OPS"
    assert sent["container"] == {
        "type": "message",
        "message_ts": "1700000000.000100",
        "channel_id": "C_OPS",
        "is_ephemeral": False,
    }
    assert sent["trigger_id"]


def test_each_click_gets_its_own_trigger_id_and_signature() -> None:
    # Slack's trigger ids are single-use, and a replay check keys on the signature.
    now = time.time()
    first = button_action("U_ALICE", REQUEST_ID, approve=True, now=now, response_url=RESPONSE_URL)
    second = button_action("U_ALICE", REQUEST_ID, approve=True, now=now, response_url=RESPONSE_URL)
    assert first["trigger_id"] != second["trigger_id"]
    assert signed_interaction(first, SECRET, now)[0] != signed_interaction(second, SECRET, now)[0]


def test_the_deny_button_is_the_deny_action() -> None:
    now = time.time()
    payload = button_action("U_ALICE", REQUEST_ID, approve=False, now=now, response_url=RESPONSE_URL)
    (action,) = _payload_of(signed_interaction(payload, SECRET, now)[1])["actions"]
    assert action["action_id"] == DENY_ACTION_ID
    assert action["value"] == REQUEST_ID


def test_the_deny_modal_submission_carries_the_request_and_the_reason_verbatim() -> None:
    # A reason with form-encoding hazards and markup must arrive exactly as typed.
    reason = "not now & not <@U_BOB> — 100% sure? a=b+c"
    now = time.time()
    payload = deny_submission("U_ALICE", REQUEST_ID, reason)
    headers, body = signed_interaction(payload, SECRET, now)
    assert SignatureVerifier(SECRET).is_valid_request(body, headers)
    sent = _payload_of(body)

    assert sent["type"] == "view_submission"
    assert sent["user"]["id"] == "U_ALICE"
    assert sent["view"]["private_metadata"] == REQUEST_ID
    typed = sent["view"]["state"]["values"][REASON_BLOCK_ID][REASON_ACTION_ID]
    assert typed == {"type": "plain_text_input", "value": reason}


def test_the_deny_submission_returns_the_opened_views_own_ids() -> None:
    # When the modal views.open stored is known, Slack sends its callback id and metadata back.
    opened = {"id": "V0MODAL", "callback_id": "deny_reason_modal", "private_metadata": REQUEST_ID}
    sent = deny_submission("U_ALICE", "ignored-when-the-view-says", "no", view=opened)
    assert sent["view"]["id"] == "V0MODAL"
    assert sent["view"]["callback_id"] == "deny_reason_modal"
    assert sent["view"]["private_metadata"] == REQUEST_ID


def test_gatehouses_own_parser_reads_the_approve_click() -> None:
    # The payload is built for functions/slack's parser: it must read who, what and where.
    now = time.time()
    payload = button_action(
        "U_ALICE",
        REQUEST_ID,
        approve=True,
        now=now,
        response_url=RESPONSE_URL,
        message_ts="1700000000.000100",
    )
    got = interactions.parse(signed_interaction(payload, SECRET, now)[1])
    assert got.approve
    assert (got.user_id, got.request_id) == ("U_ALICE", REQUEST_ID)
    assert got.message_ts == "1700000000.000100"
    assert got.response_url == RESPONSE_URL


def test_gatehouses_own_parser_reads_the_deny_click_and_the_modals_reason() -> None:
    now = time.time()
    click = button_action("U_ALICE", REQUEST_ID, approve=False, now=now, response_url=RESPONSE_URL)
    got = interactions.parse(signed_interaction(click, SECRET, now)[1])
    assert got.kind == interactions.KIND_DENY_BUTTON
    assert got.trigger_id  # views.open needs it to ask for the reason

    submitted = interactions.parse(
        signed_interaction(deny_submission("U_ALICE", REQUEST_ID, "not now"), SECRET, now)[1]
    )
    assert submitted.kind == interactions.KIND_DENY
    assert (submitted.user_id, submitted.request_id, submitted.reason) == ("U_ALICE", REQUEST_ID, "not now")
