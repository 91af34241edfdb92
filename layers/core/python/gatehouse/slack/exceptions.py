"""Errors of the Slack integration, each with its stable code and HTTP status."""

from __future__ import annotations

from gatehouse.exceptions import BadRequestError, GatehouseError


class SlackUnavailableError(GatehouseError):
    """The Slack Web API did not accept a call after the retries: nothing was posted or changed."""

    code = "slack_unavailable"
    status = 503


class InvalidSignatureError(GatehouseError):
    """An interaction whose Slack signature is wrong, missing or outside the 5-minute window."""

    code = "invalid_signature"
    status = 401


class ReplayError(GatehouseError):
    """An interaction already received once (same signature): a replay."""

    code = "replayed_request"
    status = 401


class InvalidInteractionError(BadRequestError):
    """A signed interaction payload Gatehouse cannot read (or not one of its own)."""

    code = "bad_interaction"
