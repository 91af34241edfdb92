"""Slack end to end: the real WebClient against the local Web API stand-in, and
`POST /slack/interactions` through the local API Gateway into functions/slack with moto.

`service.vote` is the lead's (it records votes and reaches the quorum); here a recording stand-in
answers for it, so these tests show what the Slack side does with its answer.
"""

from __future__ import annotations

import dataclasses
import io
import json
import secrets
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
import requests
from moto import mock_aws

from gatehouse import names
from gatehouse.config import Settings
from gatehouse.exceptions import NotFoundError, SecretUnavailableError
from gatehouse.local.apigw import ApiGateway
from gatehouse.local.moto_server import LambdaDispatcher
from gatehouse.local.provision import create_slack_replay_table
from gatehouse.local.slack_api import SlackApiStandIn, create_slack_secret
from gatehouse.secrets import SecretStore
from gatehouse.slack.app import load_credentials, load_signing_secret
from gatehouse.slack.exceptions import SlackUnavailableError
from gatehouse.slack.interactions import signed_headers
from gatehouse.slack.notify import SlackNotifier, build_web_client
from gatehouse.slack.views import ACTION_APPROVE, ACTION_DENY, DENY_CALLBACK_ID, ApprovalView

TOKEN = "xoxb-" + secrets.token_hex(8)  # made at run time: no token-shaped text in the tree
REQUEST_ID = "5b7c1d2e-0f4a-4b7e-9a51-2f7f0c9d1e33"

VIEW = ApprovalView(
    request_id=REQUEST_ID,
    agent="analyst",
    owner="U_BOB",
    connection="demo-prod",
    env="prod",
    statement="UPDATE customers SET notes = 'vip' WHERE id = 7",
    statement_class="write",
    relations=("public.customers",),
    preview={"mode": "explain", "statements": [{"text": "UPDATE", "estimated_rows": 1, "plan": "Update"}]},
    reason="<!channel> customer asked",
    policy_ids=("prod-writes-need-dba",),
    groups=("dba",),
    quorum=1,
    expires_at=1_800_000_000,
    status="pending_approval",
)


@pytest.fixture
def standin() -> Iterator[SlackApiStandIn]:
    with SlackApiStandIn(TOKEN) as server:
        yield server


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def notifier(standin: SlackApiStandIn, sleeps: Callable[[float], None], **kwargs: Any) -> SlackNotifier:
    return SlackNotifier(
        build_web_client(TOKEN, standin.api_url), "#gatehouse-approvals", sleep=sleeps, **kwargs
    )


def http_messages(standin: SlackApiStandIn) -> list[dict[str, Any]]:
    answer = requests.get(f"{standin.url}/_standin/messages", timeout=5)
    assert answer.status_code == 200
    return answer.json()


# -- the stand-in and the notifier -----------------------------------------------------------


def test_a_posted_message_and_its_update_are_kept_latest_first(standin: SlackApiStandIn) -> None:
    slack = notifier(standin, Sleeps())
    # Given an approval message posted to the channel (by name, as configured)
    channel, ts = slack.post(VIEW)
    assert channel.startswith("C") and ts
    # When it is decided and updated in place
    slack.update(channel, ts, dataclasses.replace(VIEW, status="denied", votes=(("alice", "deny", "no"),)))
    # Then the read API shows one message, its current blocks without buttons, both versions
    (message,) = http_messages(standin)
    assert (message["channel"], message["ts"], message["kind"]) == (channel, ts, "message")
    assert not [b for b in message["blocks"] if b["type"] == "actions"]
    assert "Denied" in message["blocks"][0]["text"]["text"]
    first, second = message["versions"][1], message["versions"][0]
    assert [b["type"] for b in first["blocks"]][-1] == "actions"
    assert second["blocks"] == message["blocks"]
    assert first["blocks"][-1]["elements"][0]["value"] == REQUEST_ID


def test_ephemerals_and_modals_are_kept_too(standin: SlackApiStandIn) -> None:
    slack = notifier(standin, Sleeps())
    channel, _ = slack.post(VIEW)
    slack.ephemeral(channel, "U_ALICE", "Your approval of <@U1> was recorded")
    slack.open_deny_modal("trigger-1", REQUEST_ID)
    newest = http_messages(standin)[0]
    assert (newest["kind"], newest["user"], newest["channel"]) == ("ephemeral", "U_ALICE", channel)
    assert newest["text"] == "Your approval of &lt;@U1&gt; was recorded"
    (modal,) = requests.get(f"{standin.url}/_standin/views", timeout=5).json()
    assert (modal["callback_id"], modal["private_metadata"], modal["trigger_id"]) == (
        DENY_CALLBACK_ID,
        REQUEST_ID,
        "trigger-1",
    )


def test_the_stand_in_refuses_a_wrong_token_as_slack_does(standin: SlackApiStandIn) -> None:
    sleeps = Sleeps()
    wrong = SlackNotifier(build_web_client("xoxb-wrong", standin.api_url), "#x", sleep=sleeps)
    with pytest.raises(SlackUnavailableError, match="invalid_auth"):
        wrong.post(VIEW)
    # A refusal that trying again cannot fix is not retried.
    assert standin.calls("chat.postMessage") == 1 and sleeps == []
    assert standin.messages() == []
    answer = requests.post(f"{standin.api_url}auth.test", timeout=5).json()
    assert answer == {"ok": False, "error": "not_authed"}


def test_the_stand_in_refuses_blocks_over_slacks_limits(standin: SlackApiStandIn) -> None:
    client = build_web_client(TOKEN, standin.api_url)
    answer = requests.post(
        f"{standin.api_url}chat.postMessage",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={
            "channel": "#x",
            "text": "t",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}],
        },
        timeout=5,
    ).json()
    assert answer == {"ok": False, "error": "invalid_blocks"}
    # while the largest message Gatehouse can build is accepted
    huge = "y" * 100_000
    big = dataclasses.replace(
        VIEW, statement=huge, reason=huge, agent=huge, relations=tuple(huge for _ in range(50))
    )
    assert client.auth_test()["ok"]
    notifier(standin, Sleeps()).post(big)


def test_a_rate_limit_is_waited_out_as_retry_after_says(standin: SlackApiStandIn) -> None:
    # Given Slack answering 429 (Retry-After: 2) to the next two posts, set over HTTP
    requests.post(
        f"{standin.url}/_standin/fail",
        json={"method": "chat.postMessage", "times": 2, "retry_after": 2},
        timeout=5,
    ).raise_for_status()
    sleeps = Sleeps()
    # When the approval is posted
    channel, ts = notifier(standin, sleeps).post(VIEW)
    # Then it was tried three times, waiting what Slack asked, and posted once
    assert standin.calls("chat.postMessage") == 3
    assert sleeps == [2.0, 2.0]
    assert [(m["channel"], m["ts"]) for m in standin.messages()] == [(channel, ts)]


def test_connection_failures_back_off_and_recover(standin: SlackApiStandIn) -> None:
    standin.fail("chat.update", 2, mode="disconnect")
    slack = notifier(standin, sleeps := Sleeps())
    channel, ts = slack.post(VIEW)
    slack.update(channel, ts, dataclasses.replace(VIEW, status="expired"))
    assert standin.calls("chat.update") == 3
    assert sleeps == [0.5, 1.0]
    assert "Expired" in standin.messages()[0]["blocks"][0]["text"]["text"]


def test_slack_down_for_good_raises_and_posts_nothing(standin: SlackApiStandIn) -> None:
    standin.fail("chat.postMessage", 100, error="internal_error")
    sleeps = Sleeps()
    with pytest.raises(SlackUnavailableError) as caught:
        notifier(standin, sleeps).post(VIEW)
    assert (caught.value.code, caught.value.status) == ("slack_unavailable", 503)
    assert "after 4 attempts" in caught.value.message
    assert standin.calls("chat.postMessage") == 4 and sleeps == [0.5, 1.0, 2.0]
    assert standin.messages() == []


def test_slack_unreachable_raises_slack_unavailable() -> None:
    server = SlackApiStandIn(TOKEN)
    server.start()
    api_url = server.api_url
    server.stop()  # nothing listens there any more
    sleeps = Sleeps()
    slack = SlackNotifier(build_web_client(TOKEN, api_url), "#x", attempts=2, sleep=sleeps)
    with pytest.raises(SlackUnavailableError, match="could not be reached"):
        slack.post(VIEW)
    assert sleeps == [0.5]


# -- functions/slack behind POST /slack/interactions -----------------------------------------


@dataclasses.dataclass(frozen=True)
class Result:
    ok: bool
    status: str
    message: str


class RecordingService:
    """Answers `vote` as the lead's service does; records each call."""

    def __init__(self) -> None:
        self.votes: list[tuple[str, str, bool, str]] = []
        self.fail_with: Exception | None = None

    def vote(self, slack_user_id: str, request_id: str, approve: bool, reason: str) -> Result:
        self.votes.append((slack_user_id, request_id, approve, reason))
        if self.fail_with is not None:
            raise self.fail_with
        verb = "approval" if approve else "denial"
        return Result(True, "approved" if approve else "denied", f"Your {verb} of {request_id} is recorded.")


@dataclasses.dataclass
class Interactions:
    url: str
    signing_secret: str
    service: RecordingService
    standin: SlackApiStandIn
    dispatcher: LambdaDispatcher
    ddb: Any

    def post(self, body: str, headers: dict[str, str] | None = None) -> requests.Response:
        headers = (
            headers if headers is not None else signed_headers(body, self.signing_secret, int(time.time()))
        )
        return requests.post(self.url, data=body.encode(), headers=headers, timeout=10)

    def settle(self) -> None:
        """Wait for the asynchronous invocations (the votes) to finish."""
        self.dispatcher.uninstall()
        self.dispatcher.install()

    def ephemerals(self) -> list[dict[str, Any]]:
        return [m for m in self.standin.messages() if m["kind"] == "ephemeral"]


def click(action_id: str, user: str = "U_ALICE", trigger_id: str | None = None) -> str:
    payload = {
        "type": "block_actions",
        "user": {"id": user},
        # Slack issues a new trigger id per click: two clicks are never the same bytes.
        "trigger_id": trigger_id or f"13345224609.{time.monotonic_ns()}.8088930838d88f008e0",
        "response_url": "https://hooks.slack.com/actions/T0/1/x",
        "channel": {"id": "C00000001"},
        "message": {"ts": "1790000000.000100"},
        "actions": [{"type": "button", "action_id": action_id, "value": REQUEST_ID}],
    }
    return urlencode({"payload": json.dumps(payload)})


def submit_reason(reason: str, user: str = "U_ALICE") -> str:
    payload = {
        "type": "view_submission",
        "user": {"id": user},
        "view": {
            "callback_id": DENY_CALLBACK_ID,
            "private_metadata": REQUEST_ID,
            "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}},
        },
    }
    return urlencode({"payload": json.dumps(payload)})


def _placeholder_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("handler.py", "def lambda_handler(event, context):\n    raise RuntimeError\n")
    return buf.getvalue()


@pytest.fixture
def interactions(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Interactions]:
    from functions.slack import handler

    with mock_aws(config={"lambda": {"use_docker": False}}):
        ddb = boto3.client("dynamodb")
        create_slack_replay_table(ddb, names.SLACK_REPLAY_TABLE)
        secret = create_slack_secret(boto3.client("secretsmanager"))
        role = boto3.client("iam").create_role(
            RoleName="slack-fn",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        boto3.client("lambda").create_function(
            FunctionName=names.SLACK_FUNCTION,
            Runtime="python3.12",
            Role=role,
            Handler="handler.lambda_handler",
            Code={"ZipFile": _placeholder_zip()},
        )
        with SlackApiStandIn(secret["bot_token"]) as standin:
            monkeypatch.setenv(names.ENV_LOG_BUCKET, "unused-by-these-tests")
            monkeypatch.setenv(names.ENV_SLACK_API_URL, standin.api_url)
            service = RecordingService()
            monkeypatch.setattr(handler, "_app", None)
            monkeypatch.setattr(handler, "_service", service)
            dispatcher = LambdaDispatcher({names.SLACK_FUNCTION: handler.lambda_handler})
            api = ApiGateway(
                lambda event, context: {"statusCode": 404, "body": ""},
                {},
                route_handlers={"POST /slack/interactions": handler.lambda_handler},
            )
            with dispatcher, api:
                yield Interactions(
                    f"{api.url}/slack/interactions",
                    secret["signing_secret"],
                    service,
                    standin,
                    dispatcher,
                    ddb,
                )


def test_approve_is_acknowledged_at_once_then_voted_and_answered(interactions: Interactions) -> None:
    # When an approver clicks Approve
    started = time.monotonic()
    answer = interactions.post(click(ACTION_APPROVE))
    # Then Slack gets an empty 200 well within its 3 seconds
    assert answer.status_code == 200 and answer.content == b""
    assert time.monotonic() - started < 3
    interactions.settle()
    # and the vote reached the service once, and the approver was told its outcome
    assert interactions.service.votes == [("U_ALICE", REQUEST_ID, True, "")]
    (reply,) = interactions.ephemerals()
    assert (reply["user"], reply["channel"]) == ("U_ALICE", "C00000001")
    assert reply["text"] == f"Your approval of {REQUEST_ID} is recorded."


def test_a_replayed_click_is_refused_and_votes_nothing(interactions: Interactions) -> None:
    body = click(ACTION_APPROVE)
    headers = signed_headers(body, interactions.signing_secret, int(time.time()))
    assert interactions.post(body, headers).status_code == 200
    replayed = interactions.post(body, headers)
    assert replayed.status_code == 401 and replayed.json()["error"] == "replayed_request"
    interactions.settle()
    assert len(interactions.service.votes) == 1


def _forged(body: str, secret: str) -> dict[str, str]:
    return {**signed_headers(body, secret, int(time.time())), "X-Slack-Signature": "v0=" + "a" * 64}


def _stale(body: str, secret: str) -> dict[str, str]:
    return signed_headers(body, secret, int(time.time()) - 600)  # correctly signed, 10 minutes ago


def _unsigned(body: str, secret: str) -> dict[str, str]:
    return {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("sign", [_forged, _stale, _unsigned], ids=["forged", "stale", "unsigned"])
def test_a_forged_or_stale_request_is_401_and_nothing_is_recorded(
    interactions: Interactions, sign: Callable[[str, str], dict[str, str]]
) -> None:
    body = click(ACTION_APPROVE)
    answer = interactions.post(body, sign(body, interactions.signing_secret))
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_signature"
    interactions.settle()
    assert interactions.service.votes == [] and interactions.standin.messages() == []
    assert interactions.ddb.scan(TableName=names.SLACK_REPLAY_TABLE)["Items"] == []


def test_a_signed_but_malformed_payload_is_400(interactions: Interactions) -> None:
    answer = interactions.post(urlencode({"payload": json.dumps({"type": "block_actions", "actions": []})}))
    assert answer.status_code == 400 and answer.json()["error"] == "bad_interaction"
    assert interactions.service.votes == []


def test_deny_asks_for_a_reason_then_votes_with_it(interactions: Interactions) -> None:
    # When an approver clicks Deny
    answer = interactions.post(click(ACTION_DENY, trigger_id="13345224609.738474920.8088930838d88f008e0"))
    # Then the reason modal is open (with the click's trigger id), and nothing is voted yet
    assert answer.status_code == 200 and answer.content == b""
    (modal,) = interactions.standin.views()
    assert modal["trigger_id"] == "13345224609.738474920.8088930838d88f008e0"
    assert (modal["callback_id"], modal["private_metadata"]) == (DENY_CALLBACK_ID, REQUEST_ID)
    interactions.settle()
    assert interactions.service.votes == []
    # When the reason is submitted
    answer = interactions.post(submit_reason("not during the freeze"))
    # Then the modal is cleared, the denial is voted with its reason, and the approver told
    assert answer.status_code == 200 and answer.json() == {"response_action": "clear"}
    interactions.settle()
    assert interactions.service.votes == [("U_ALICE", REQUEST_ID, False, "not during the freeze")]
    (reply,) = interactions.ephemerals()
    assert reply["text"] == f"Your denial of {REQUEST_ID} is recorded."
    # the modal carries no channel: the reply goes to the approval channel
    assert reply["channel"] == interactions.standin.messages()[0]["channel"]


def test_a_failing_vote_is_told_to_the_approver_not_retried(interactions: Interactions) -> None:
    interactions.service.fail_with = NotFoundError(f"no request {REQUEST_ID}")
    assert interactions.post(click(ACTION_APPROVE)).status_code == 200
    interactions.settle()
    (reply,) = interactions.ephemerals()
    assert reply["text"] == f"Your vote on {REQUEST_ID} was not recorded: no request {REQUEST_ID}"
    interactions.service.fail_with = RuntimeError("a bug")
    assert interactions.post(click(ACTION_APPROVE)).status_code == 200
    interactions.settle()
    assert "Gatehouse failed" in interactions.ephemerals()[0]["text"]
    assert len(interactions.service.votes) == 2


def test_when_the_modal_cannot_open_the_approver_is_told(interactions: Interactions) -> None:
    interactions.standin.fail("views.open", 1, error="internal_error")
    answer = interactions.post(click(ACTION_DENY))
    assert answer.status_code == 200
    # One attempt only: a trigger id lives 3 seconds
    assert interactions.standin.calls("views.open") == 1
    (reply,) = interactions.ephemerals()
    assert "could not open the reason form" in reply["text"]


# -- the Slack app's two secrets ---------------------------------------------------------------


def test_the_local_stack_keeps_the_signing_secret_apart_from_the_bot_token(aws_env: None) -> None:
    with mock_aws():
        client = boto3.client("secretsmanager")
        created = create_slack_secret(client)

        bot = json.loads(client.get_secret_value(SecretId=names.SLACK_SECRET)["SecretString"])
        signing = json.loads(client.get_secret_value(SecretId=names.SLACK_SIGNING_SECRET)["SecretString"])

    assert set(bot) == {"bot_token", "channel"}
    assert signing == {"signing_secret": created["signing_secret"]}
    assert bot["bot_token"] == created["bot_token"]


def _store(value: dict[str, str]) -> tuple[SecretStore, Settings]:
    client = boto3.client("secretsmanager")
    client.create_secret(Name=names.SLACK_SECRET, SecretString=json.dumps(value))
    return SecretStore(client, cache_seconds=0), Settings(log_bucket="unused")


def test_the_channel_variable_wins_over_the_secrets_channel(aws_env: None) -> None:
    with mock_aws():
        store, settings = _store({"bot_token": TOKEN, "channel": "#from-the-secret"})

        from_secret = load_credentials(store, settings)
        from_env = load_credentials(store, dataclasses.replace(settings, slack_channel="C0123456789"))

    assert from_secret.channel == "#from-the-secret"
    assert from_env.channel == "C0123456789"
    assert TOKEN not in repr(from_env)


def test_a_secret_without_a_channel_needs_the_variable(aws_env: None) -> None:
    with mock_aws():
        store, settings = _store({"bot_token": TOKEN})

        assert (
            load_credentials(store, dataclasses.replace(settings, slack_channel="#approvals")).channel
            == "#approvals"
        )
        with pytest.raises(SecretUnavailableError, match=names.ENV_SLACK_CHANNEL):
            load_credentials(store, settings)


def test_the_signing_secret_is_read_from_its_own_secret_only(aws_env: None) -> None:
    with mock_aws():
        client = boto3.client("secretsmanager")
        store = SecretStore(client, cache_seconds=0)
        settings = Settings(log_bucket="unused")
        # A signing secret left in the bot token's secret (the old layout) is not used.
        client.create_secret(
            Name=names.SLACK_SECRET,
            SecretString=json.dumps({"bot_token": TOKEN, "channel": "#a", "signing_secret": "old"}),
        )
        with pytest.raises(SecretUnavailableError, match=names.SLACK_SIGNING_SECRET):
            load_signing_secret(store, settings)
        client.create_secret(
            Name=names.SLACK_SIGNING_SECRET, SecretString=json.dumps({"signing_secret": "s3"})
        )

        assert load_signing_secret(store, settings) == "s3"


def test_settings_read_the_signing_secret_and_the_channel_from_the_environment() -> None:
    env = {
        names.ENV_LOG_BUCKET: "b",
        names.ENV_SLACK_SIGNING_SECRET: "other/signing",
        names.ENV_SLACK_CHANNEL: " #approvals ",
    }

    settings = Settings.from_env(env)

    assert (settings.slack_signing_secret, settings.slack_channel) == ("other/signing", "#approvals")
    assert Settings.from_env(settings.as_env()) == settings
    defaults = Settings.from_env({names.ENV_LOG_BUCKET: "b"})
    assert (defaults.slack_signing_secret, defaults.slack_channel) == (names.SLACK_SIGNING_SECRET, "")
    assert names.ENV_SLACK_CHANNEL not in defaults.as_env()
