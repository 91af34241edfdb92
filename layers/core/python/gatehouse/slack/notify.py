"""Post and update the approval message through the Slack Web API, with retries.

Each call either succeeds or raises `SlackUnavailableError`: the request stays pending and the
caller (a Step Functions task with its own Retry) tries again later. A rate limit is waited out
for as long as Slack's `Retry-After` says; a connection error or a 5xx backs off exponentially.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from gatehouse.slack.exceptions import SlackUnavailableError
from gatehouse.slack.views import (
    MESSAGE_TEXT_LIMIT,
    ApprovalView,
    approval_text,
    clip,
    deny_modal,
    escape,
    message_blocks,
)

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 4
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# Slack's Retry-After is usually a few seconds; a larger one is capped so a task stays inside its
# Lambda timeout (the state machine retries the whole step later).
RETRY_AFTER_MAX_S = 30.0
CLIENT_TIMEOUT_S = 5
# Slack answers these when it is the one failing (https://docs.slack.dev/apis/web-api/#errors).
_TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


def build_web_client(
    token: str, base_url: str | None = None, *, timeout: int = CLIENT_TIMEOUT_S
) -> WebClient:
    """A WebClient without the SDK's own retry handlers: `SlackNotifier` retries, and two layers
    of retries would multiply the attempts and the time spent."""
    kwargs: dict[str, Any] = {"token": token, "timeout": timeout, "retry_handlers": []}
    if base_url:
        kwargs["base_url"] = base_url
    return WebClient(**kwargs)


class SlackNotifier:
    """The approval channel's messages: post, update in place, tell one approver, ask why."""

    def __init__(
        self,
        client: WebClient,
        channel: str,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._client = client
        self.channel = channel
        self._attempts = attempts
        self._sleep = sleep

    def post(self, view: ApprovalView) -> tuple[str, str]:
        """Post the approval message; returns (channel id, ts), which `update` needs."""
        resp = self._call(
            "chat.postMessage",
            lambda: self._client.chat_postMessage(
                channel=self.channel,
                text=approval_text(view),
                blocks=message_blocks(view),
                # A link in the statement must not fetch a preview from its host.
                unfurl_links=False,
                unfurl_media=False,
            ),
        )
        return str(resp["channel"]), str(resp["ts"])

    def update(self, channel: str, ts: str, view: ApprovalView) -> None:
        """Replace the message with the view's current state (no buttons once decided)."""
        self._call(
            "chat.update",
            lambda: self._client.chat_update(
                channel=channel, ts=ts, text=approval_text(view), blocks=message_blocks(view)
            ),
        )

    def ephemeral(self, channel: str, user: str, text: str) -> None:
        """A reply only `user` sees (a vote's outcome or its refusal)."""
        safe = clip(escape(text), MESSAGE_TEXT_LIMIT)
        self._call(
            "chat.postEphemeral",
            lambda: self._client.chat_postEphemeral(channel=channel, user=user, text=safe),
        )

    def open_deny_modal(self, trigger_id: str, request_id: str) -> None:
        """Open the reason modal. Slack accepts a trigger id for 3 seconds only."""
        self._call(
            "views.open", lambda: self._client.views_open(trigger_id=trigger_id, view=deny_modal(request_id))
        )

    def _call(self, method: str, call: Callable[[], Any]) -> Any:
        for attempt in range(1, self._attempts + 1):
            try:
                return call()
            except SlackApiError as exc:
                error = str(exc.response.get("error") or "")
                status = int(exc.response.status_code or 0)
                if not (error in _TRANSIENT_ERRORS or status == 429 or status >= 500):
                    # invalid_auth, channel_not_found, invalid_blocks...: trying again cannot help.
                    raise SlackUnavailableError(f"Slack refused {method}: {error or status}") from exc
                if attempt == self._attempts:
                    raise SlackUnavailableError(
                        f"Slack did not accept {method} after {attempt} attempts: {error or status}"
                    ) from exc
                delay = _retry_after(exc) if error == "ratelimited" or status == 429 else _backoff(attempt)
                log.warning(
                    "slack %s: %s (attempt %d), retrying in %.1f s", method, error or status, attempt, delay
                )
            except (OSError, http.client.HTTPException) as exc:
                # URLError, timeouts and resets are OSErrors; IncompleteRead is an HTTPException.
                if attempt == self._attempts:
                    raise SlackUnavailableError(
                        f"Slack could not be reached for {method} after {attempt} attempts"
                    ) from exc
                delay = _backoff(attempt)
                log.warning(
                    "slack %s: %s (attempt %d), retrying in %.1f s",
                    method,
                    type(exc).__name__,
                    attempt,
                    delay,
                )
            self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises


def _backoff(attempt: int) -> float:
    return float(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


def _retry_after(exc: SlackApiError) -> float:
    headers = exc.response.headers or {}
    raw = headers.get("Retry-After") or headers.get("retry-after")
    if isinstance(raw, list):  # some transports keep header values as lists
        raw = raw[0] if raw else None
    try:
        seconds = float(raw) if raw is not None else 1.0
    except (TypeError, ValueError):
        seconds = 1.0
    return max(0.0, min(RETRY_AFTER_MAX_S, seconds))
