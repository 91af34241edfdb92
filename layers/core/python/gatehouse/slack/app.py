"""What `functions/slack` does: verify an interaction, acknowledge it at once, vote later.

Slack wants an answer within 3 seconds, and a vote (Cedar, DynamoDB, maybe the whole execution
of the approved command) can take longer. So the HTTP invocation only verifies, parses and
acknowledges, and hands the vote to an asynchronous invocation of the same function
(`InvocationType="Event"`). That invocation calls `service.vote` and tells the approver the
outcome in an ephemeral message. The HTTP path never builds the service (Cedar, the registry):
a cold start stays inside Slack's 3 seconds.

    approve button  -> 200 "" now;          async: vote(approve)  -> ephemeral reply
    deny button     -> views.open (modal);  200 ""
    modal submitted -> 200 {"response_action": "clear"};  async: vote(deny, reason) -> ephemeral
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse import names
from gatehouse.api_core import error_answer
from gatehouse.config import Settings
from gatehouse.exceptions import GatehouseError, SecretUnavailableError
from gatehouse.secrets import SecretStore
from gatehouse.slack.exceptions import InvalidInteractionError
from gatehouse.slack.interactions import KIND_APPROVE, KIND_DENY, KIND_DENY_BUTTON, Interaction, parse, verify
from gatehouse.slack.notify import SlackNotifier, build_web_client
from gatehouse.slack.replay import ReplayStore

log = logging.getLogger(__name__)

ASYNC_MARKER = "gatehouse_async"
ASYNC_VOTE = "vote"


@dataclass(frozen=True)
class SlackCredentials:
    """What posts to Slack: the bot token (`names.SLACK_SECRET`, JSON {"bot_token", "channel"}) and
    the approval channel. `Settings.slack_channel` (GATEHOUSE_SLACK_CHANNEL) wins over the secret's
    "channel", which may then be left out."""

    bot_token: str = field(repr=False)
    channel: str

    @classmethod
    def from_secret(
        cls, secret_name: str, value: Mapping[str, Any], *, channel: str = ""
    ) -> SlackCredentials:
        if not value.get("bot_token"):
            raise SecretUnavailableError(f"secret {secret_name} has no bot_token")
        channel = channel or str(value.get("channel") or "")
        if not channel:
            raise SecretUnavailableError(
                f"no Slack channel: secret {secret_name} has no channel "
                f"and {names.ENV_SLACK_CHANNEL} is not set"
            )
        return cls(str(value["bot_token"]), channel)


def load_credentials(secrets: SecretStore, settings: Settings) -> SlackCredentials:
    return SlackCredentials.from_secret(
        settings.slack_secret, secrets.json_secret(settings.slack_secret), channel=settings.slack_channel
    )


def load_signing_secret(secrets: SecretStore, settings: Settings) -> str:
    """The Slack app's signing secret (`names.SLACK_SIGNING_SECRET`, JSON {"signing_secret"}): only
    the interactions path reads it, to verify that a request comes from Slack."""
    value = secrets.json_secret(settings.slack_signing_secret)
    if not value.get("signing_secret"):
        raise SecretUnavailableError(f"secret {settings.slack_signing_secret} has no signing_secret")
    return str(value["signing_secret"])


def build_notifier(
    credentials: SlackCredentials,
    settings: Settings,
    *,
    attempts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SlackNotifier:
    """The notifier for the approval channel; `settings.slack_api_url` points it at the local stand-in."""
    client = build_web_client(credentials.bot_token, settings.slack_api_url or None)
    if attempts is None:
        return SlackNotifier(client, credentials.channel, sleep=sleep)
    return SlackNotifier(client, credentials.channel, attempts=attempts, sleep=sleep)


class VoteResult(Protocol):
    """What `service.vote` answers (the lead's `gatehouse.approval_flow.VoteResult`)."""

    @property
    def ok(self) -> bool: ...
    @property
    def status(self) -> str: ...
    @property
    def message(self) -> str: ...


class VoteService(Protocol):
    def vote(self, slack_user_id: str, request_id: str, approve: bool, reason: str, /) -> VoteResult: ...


class SlackInteractions:
    """The handler's logic, with every client injected."""

    def __init__(
        self,
        settings: Settings,
        *,
        secrets: SecretStore,
        replay: ReplayStore,
        lambda_client: Any,
        service: Callable[[], VoteService],
        function_name: str = names.SLACK_FUNCTION,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        request_exists: Callable[[str], bool] | None = None,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._replay = replay
        self._lambda = lambda_client
        self._service = service  # built on first use: only the async path needs it
        self._function_name = function_name
        self._clock = clock
        self._sleep = sleep
        # One consistent read on the 3-second path: a click on a request that does not exist is
        # answered 404 at once, and never becomes a vote.
        self._request_exists = request_exists

    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        if event.get(ASYNC_MARKER) == ASYNC_VOTE:
            return self.vote(event)
        return self.interaction(event)

    # -- the HTTP invocation (API Gateway v2 event): answer within 3 seconds ----------------------

    def interaction(self, event: Mapping[str, Any]) -> dict[str, Any]:
        try:
            body = _body(event)
            signing_secret = load_signing_secret(self._secrets, self._settings)
            verify(event.get("headers") or {}, body, signing_secret, self._replay, self._clock())
            action = parse(body)
        except GatehouseError as exc:
            log.warning("slack interaction refused: %s (%s)", exc.code, exc.message)
            return error_answer(exc)
        log.info("slack %s by %s on request %s", action.kind, action.user_id, action.request_id)
        if self._request_exists is not None and not self._request_exists(action.request_id):
            return _json(404, {"error": "not_found", "message": f"There is no request {action.request_id}."})
        if action.kind == KIND_DENY_BUTTON:
            return self._open_deny_modal(action)
        self._start_vote(action)
        if action.kind == KIND_DENY:
            # Closes the modal (and any stacked under it).
            return _json(200, {"response_action": "clear"})
        return {"statusCode": 200, "body": ""}

    def _open_deny_modal(self, action: Interaction) -> dict[str, Any]:
        assert action.trigger_id is not None  # parse() refuses a Deny click without one
        try:
            credentials = load_credentials(self._secrets, self._settings)
        except GatehouseError as exc:
            log.error("the deny modal needs the bot token: %s (%s)", exc.code, exc.message)
            return error_answer(exc)
        # One attempt: the trigger id is valid for 3 seconds, a retry would come too late.
        notifier = build_notifier(credentials, self._settings, attempts=1)
        try:
            notifier.open_deny_modal(action.trigger_id, action.request_id)
        except GatehouseError as exc:
            log.error("the deny modal could not be opened: %s", exc.message)
            self._tell(
                notifier,
                action,
                "Gatehouse could not open the reason form (Slack did not answer). Try Deny again.",
            )
        return {"statusCode": 200, "body": ""}

    def _start_vote(self, action: Interaction) -> None:
        payload = {
            ASYNC_MARKER: ASYNC_VOTE,
            "user": action.user_id,
            "request_id": action.request_id,
            "approve": action.kind == KIND_APPROVE,
            "reason": action.reason,
            "channel": action.channel,
        }
        try:
            self._lambda.invoke(
                FunctionName=self._function_name, InvocationType="Event", Payload=json.dumps(payload).encode()
            )
        except (ClientError, BotoCoreError) as exc:
            # Nothing was recorded: the approver must know the click did not count.
            log.error("the vote could not be handed to the async invocation: %s", exc)
            try:
                credentials = load_credentials(self._secrets, self._settings)
            except GatehouseError as secret_exc:
                log.error("the approver cannot be told: %s (%s)", secret_exc.code, secret_exc.message)
                return
            notifier = build_notifier(credentials, self._settings, attempts=1)
            self._tell(notifier, action, "Gatehouse could not record your vote just now. Please try again.")

    # -- the asynchronous invocation (our own payload): vote, then tell the approver --------------

    def vote(self, event: Mapping[str, Any]) -> dict[str, Any]:
        user, request_id = str(event.get("user") or ""), str(event.get("request_id") or "")
        approve, reason = bool(event.get("approve")), str(event.get("reason") or "")
        notifier: SlackNotifier | None = None
        channel: str | None = str(event.get("channel") or "") or None
        # Everything is caught: an async invocation that raises is retried twice by Lambda, and
        # the approver would see nothing. A failure is logged and told instead.
        try:
            credentials = load_credentials(self._secrets, self._settings)
            notifier = build_notifier(credentials, self._settings, sleep=self._sleep)
            channel = channel or credentials.channel
            result = self._service().vote(user, request_id, approve, reason)
            message, outcome = result.message, {"ok": result.ok, "status": result.status}
        except GatehouseError as exc:
            log.warning("vote by %s on %s failed: %s (%s)", user, request_id, exc.code, exc.message)
            message, outcome = (
                f"Your vote on {request_id} was not recorded: {exc.message}",
                {"ok": False, "status": exc.code},
            )
        except Exception:  # a bug must not become a retry loop; the log has the trace
            log.exception("vote by %s on %s failed", user, request_id)
            message = f"Your vote on {request_id} was not recorded: Gatehouse failed (see its logs)."
            outcome = {"ok": False, "status": "internal_error"}
        if notifier is not None and channel is not None:
            try:
                notifier.ephemeral(channel, user, message)
            except GatehouseError as exc:
                log.error("the outcome could not be told to %s: %s", user, exc.message)
        return {**outcome, "message": message}

    def _tell(self, notifier: SlackNotifier, action: Interaction, text: str) -> None:
        channel = action.channel or notifier.channel
        try:
            notifier.ephemeral(channel, action.user_id, text)
        except GatehouseError as exc:
            log.error("could not tell %s: %s", action.user_id, exc.message)


def _body(event: Mapping[str, Any]) -> str:
    raw = event.get("body") or ""
    if not isinstance(raw, str):
        raise InvalidInteractionError("the request has no body")
    if event.get("isBase64Encoded"):
        # API Gateway passes application/x-www-form-urlencoded bodies base64-encoded.
        try:
            return base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise InvalidInteractionError("the request body does not decode") from exc
    return raw


def _json(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}
