"""What a cold process reads ahead for its first request comes from the event, or nothing does."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gatehouse.api_core import first_request
from gatehouse.runtime import FirstRequest

ROLE_SESSION = "arn:aws:sts::123456789012:assumed-role/agent-runner/session-42"


def event(body: Any, route: str = "POST /v1/requests", arn: str | None = ROLE_SESSION) -> dict[str, Any]:
    iam = {"userArn": arn, "accountId": "123456789012"} if arn else {}
    return {
        "routeKey": route,
        "body": body if isinstance(body, str) else json.dumps(body),
        "requestContext": {"authorizer": {"iam": iam}} if iam else {},
    }


def test_a_submission_names_its_caller_and_connection():
    found = first_request(event({"connection": "demo-prod", "sql": "SELECT 1"}))
    # The role, not the session: the key the registry looks principals up by.
    assert found == FirstRequest("iam:arn:aws:iam::123456789012:role/agent-runner", "demo-prod")


@pytest.mark.parametrize(
    "case",
    [
        event({"connection": "demo-prod", "sql": "SELECT 1"}, route="GET /v1/connections"),
        event({"connection": "demo-prod", "sql": "SELECT 1"}, arn=None),
        event("[" * 5_000 + "]" * 5_000),
        event('{"connection": "a", "connection": "b"}'),
        event("not json"),
        event(["demo-prod"]),
        event({"sql": "SELECT 1"}),
        event({"connection": 7, "sql": "SELECT 1"}),
        event({"connection": "", "sql": "SELECT 1"}),
        event({"connection": "c" * 129, "sql": "SELECT 1"}),
    ],
    ids=[
        "other-route",
        "no-iam-identity",
        "nested-too-deep",
        "duplicate-key",
        "not-json",
        "not-an-object",
        "no-connection",
        "connection-not-a-string",
        "empty-connection",
        "connection-too-long",
    ],
)
def test_anything_else_reads_nothing_ahead(case):
    assert first_request(case) is None
