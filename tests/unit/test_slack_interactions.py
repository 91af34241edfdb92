"""Slack interactions: only Slack's, only once, only fresh; and what the approver did."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode

import boto3
import pytest
from moto import mock_aws

from gatehouse import names
from gatehouse.local.provision import create_slack_replay_table
from gatehouse.slack.exceptions import InvalidInteractionError, InvalidSignatureError, ReplayError
from gatehouse.slack.interactions import (
    KIND_APPROVE,
    KIND_DENY,
    KIND_DENY_BUTTON,
    parse,
    signed_headers,
    verify,
)
from gatehouse.slack.replay import ReplayStore, ReplayStoreUnavailableError
from gatehouse.slack.views import ACTION_APPROVE, ACTION_DENY, DENY_CALLBACK_ID

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # a test signing secret
NOW = 1_790_000_000
REQUEST_ID = "5b7c1d2e-0f4a-4b7e-9a51-2f7f0c9d1e33"


@pytest.fixture
def ddb(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb")
        create_slack_replay_table(client, names.SLACK_REPLAY_TABLE)
        yield client


@pytest.fixture
def replay(ddb: Any) -> ReplayStore:
    return ReplayStore(ddb, names.SLACK_REPLAY_TABLE)


def button_body(action_id: str = ACTION_APPROVE, value: str = REQUEST_ID, **extra: Any) -> str:
    payload = {
        "type": "block_actions",
        "user": {"id": "U_ALICE", "username": "alice", "team_id": "T1"},
        "trigger_id": "1234.5678.abcd",
        "response_url": "https://hooks.slack.com/actions/T1/1/abc",
        "container": {"type": "message", "channel_id": "C0APPROVALS", "message_ts": "1790000000.000100"},
        "channel": {"id": "C0APPROVALS", "name": "approvals"},
        "message": {"ts": "1790000000.000100", "text": "Approval needed"},
        "actions": [{"type": "button", "action_id": action_id, "block_id": "gatehouse_vote", "value": value}],
        **extra,
    }
    return urlencode({"payload": json.dumps(payload)})


def modal_body(reason: str | None = "not during the freeze", metadata: str = REQUEST_ID) -> str:
    values: dict[str, Any] = {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}
    payload = {
        "type": "view_submission",
        "user": {"id": "U_ALICE"},
        "view": {
            "id": "V1",
            "callback_id": DENY_CALLBACK_ID,
            "private_metadata": metadata,
            "state": {"values": values},
        },
    }
    return urlencode({"payload": json.dumps(payload)})


def stored_signatures(ddb: Any) -> list[dict[str, Any]]:
    return ddb.scan(TableName=names.SLACK_REPLAY_TABLE)["Items"]


# -- verify ----------------------------------------------------------------------------------


def test_a_request_signed_by_slack_is_accepted_and_remembered(ddb: Any, replay: ReplayStore) -> None:
    body = button_body()
    headers = signed_headers(body, SECRET, NOW)
    verify(headers, body, SECRET, replay, now=NOW + 10)
    (item,) = stored_signatures(ddb)
    assert item["signature"]["S"] == headers["X-Slack-Signature"]
    assert int(item["expires_at"]["N"]) == NOW + 10 + 600


def test_header_names_are_matched_case_insensitively(replay: ReplayStore) -> None:
    body = button_body()
    headers = {k.lower(): v for k, v in signed_headers(body, SECRET, NOW).items()}
    verify(headers, body, SECRET, replay, now=NOW)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(
            lambda body, h: (body, {**h, "X-Slack-Signature": "v0=" + "0" * 64}), id="wrong-signature"
        ),
        pytest.param(lambda body, h: (body.replace("U_ALICE", "U_BOB"), h), id="body-changed"),
        pytest.param(
            lambda body, h: (body, signed_headers(body, "another-apps-secret", NOW)), id="other-secret"
        ),
        pytest.param(lambda body, h: (body, {"X-Slack-Request-Timestamp": str(NOW)}), id="no-signature"),
        pytest.param(lambda body, h: (body, {**h, "X-Slack-Request-Timestamp": "soon"}), id="bad-timestamp"),
        pytest.param(
            lambda body, h: (body, {**h, "X-Slack-Request-Timestamp": str(NOW + 1)}), id="timestamp-changed"
        ),
    ],
)
def test_a_forged_request_is_refused_with_401_and_not_remembered(
    forge: Any, ddb: Any, replay: ReplayStore
) -> None:
    body, headers = forge(button_body(), signed_headers(button_body(), SECRET, NOW))
    with pytest.raises(InvalidSignatureError) as caught:
        verify(headers, body, SECRET, replay, now=NOW)
    assert caught.value.status == 401 and caught.value.code == "invalid_signature"
    # A forger cannot fill the replay table (nor pre-empt a real click's signature).
    assert stored_signatures(ddb) == []


@pytest.mark.parametrize("age", [301, -301, 3600])
def test_a_stale_timestamp_is_refused_even_when_correctly_signed(
    age: int, ddb: Any, replay: ReplayStore
) -> None:
    body = button_body()
    headers = signed_headers(body, SECRET, NOW)
    with pytest.raises(InvalidSignatureError, match="5 minutes") as caught:
        verify(headers, body, SECRET, replay, now=NOW + age)
    assert caught.value.status == 401
    assert stored_signatures(ddb) == []


def test_the_five_minute_window_is_inclusive(replay: ReplayStore) -> None:
    body = button_body()
    verify(signed_headers(body, SECRET, NOW), body, SECRET, replay, now=NOW + 300)


def test_a_replay_is_refused_with_401(replay: ReplayStore) -> None:
    body = button_body()
    headers = signed_headers(body, SECRET, NOW)
    verify(headers, body, SECRET, replay, now=NOW)
    with pytest.raises(ReplayError) as caught:
        verify(headers, body, SECRET, replay, now=NOW + 2)
    assert (caught.value.status, caught.value.code) == (401, "replayed_request")


def test_the_same_click_signed_again_later_is_a_new_request(replay: ReplayStore) -> None:
    # Slack retries with a new timestamp, hence a new signature: the vote itself is then
    # refused as a double vote by the approval store, not here.
    body = button_body()
    verify(signed_headers(body, SECRET, NOW), body, SECRET, replay, now=NOW)
    verify(signed_headers(body, SECRET, NOW + 1), body, SECRET, replay, now=NOW + 1)


def test_without_the_replay_table_nothing_is_accepted(aws_env: None) -> None:
    with mock_aws():
        replay = ReplayStore(boto3.client("dynamodb"), "no-such-table")
        body = button_body()
        with pytest.raises(ReplayStoreUnavailableError) as caught:
            verify(signed_headers(body, SECRET, NOW), body, SECRET, replay, now=NOW)
        assert caught.value.status == 503


# -- parse -----------------------------------------------------------------------------------


def test_an_approve_click_names_the_approver_and_the_request() -> None:
    action = parse(button_body())
    assert action.kind == KIND_APPROVE and action.approve
    assert action.user_id == "U_ALICE" and action.request_id == REQUEST_ID
    assert action.trigger_id == "1234.5678.abcd"
    assert action.response_url == "https://hooks.slack.com/actions/T1/1/abc"
    assert (action.channel, action.message_ts) == ("C0APPROVALS", "1790000000.000100")


def test_a_deny_click_asks_for_the_modal() -> None:
    action = parse(button_body(ACTION_DENY))
    assert action.kind == KIND_DENY_BUTTON and not action.approve
    assert action.trigger_id == "1234.5678.abcd"


def test_the_channel_falls_back_to_the_container() -> None:
    payload = json.loads(parse_payload(button_body()))
    del payload["channel"], payload["message"]
    action = parse(urlencode({"payload": json.dumps(payload)}))
    assert (action.channel, action.message_ts) == ("C0APPROVALS", "1790000000.000100")


def parse_payload(body: str) -> str:
    return parse_qs(body)["payload"][0]


def test_the_deny_modal_submission_carries_request_and_reason() -> None:
    action = parse(modal_body("  not during the freeze \n"))
    assert action.kind == KIND_DENY and not action.approve
    assert (action.user_id, action.request_id, action.reason) == (
        "U_ALICE",
        REQUEST_ID,
        "not during the freeze",
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("", id="empty"),
        pytest.param("payload=not-json", id="not-json"),
        pytest.param(urlencode({"payload": "[1, 2]"}), id="not-an-object"),
        pytest.param(urlencode({"payload": "{}", "x": "1"}) + "&payload=%7B%7D", id="two-payloads"),
        pytest.param(urlencode({"payload": json.dumps({"type": "shortcut"})}), id="unhandled-type"),
        pytest.param(button_body("somebody_elses_button"), id="foreign-action"),
        pytest.param(button_body(value=""), id="no-request-id"),
        pytest.param(button_body(value="../../etc"), id="bad-request-id"),
        pytest.param(button_body(user={"id": "<!channel>"}), id="bad-user"),
        pytest.param(button_body(user=None), id="no-user"),
        pytest.param(button_body(ACTION_DENY, trigger_id=None), id="deny-without-trigger"),
        pytest.param(button_body(actions=[]), id="no-action"),
        pytest.param(modal_body(reason=None), id="modal-without-reason"),
        pytest.param(modal_body(reason="   "), id="modal-blank-reason"),
        pytest.param(modal_body(reason="r" * 3001), id="modal-reason-too-long"),
        pytest.param(modal_body(metadata=""), id="modal-without-request"),
        pytest.param(modal_body().replace(DENY_CALLBACK_ID, "other_modal"), id="foreign-modal"),
        pytest.param("payload=" + "x" * 70_000, id="too-large"),
    ],
)
def test_a_malformed_payload_is_refused_with_400(body: str) -> None:
    with pytest.raises(InvalidInteractionError) as caught:
        parse(body)
    assert caught.value.status == 400
