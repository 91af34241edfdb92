"""Fail closed: when the session log cannot take an event, the command does not run."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from gatehouse.audit.events import parse_events
from gatehouse.config import Settings
from gatehouse.exceptions import AuditWriteError
from gatehouse.models import Principal
from gatehouse.runtime import build_runtime

ANALYST = Principal(
    name="analyst",
    kind="agent",
    arn="arn:aws:iam::123456789012:user/gatehouse-agent-analyst",
    attributes={"team": "data", "clearance": "standard"},
)
WRITE = "UPDATE orders SET status = 'tampered' WHERE id <= 5"


class S3RefusingKinds:
    """An S3 client whose PutObject fails (500 InternalError) for objects holding those kinds."""

    def __init__(self, real: Any, kinds: set[str]) -> None:
        self._real, self._kinds, self.refused = real, kinds, 0

    def put_object(self, **kwargs: Any) -> Any:
        body = kwargs.get("Body", b"")
        kinds = {e["kind"] for e in parse_events(body)} if kwargs["Key"].startswith("events/") else set()
        if kinds & self._kinds:
            self.refused += 1
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "PutObject")
        return self._real.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def service_with_faulty_log(local_stack):
    def build(kinds: set[str]):
        runtime = build_runtime(Settings.from_env(), boto3.session.Session())
        faulty = S3RefusingKinds(local_stack.aws("s3"), kinds)
        runtime.service._s3 = faulty
        return runtime.service, faulty

    return build


def statuses(local_stack) -> list[str]:
    db = local_stack.db("demo-dev")
    try:
        return [r[0] for r in db.run("SELECT status FROM orders WHERE id <= 5 ORDER BY id")]
    finally:
        db.close()


@pytest.mark.parametrize("failing", ["decision", "executed"])
def test_a_write_does_not_land_when_its_record_cannot_be_stored(
    local_stack, service_with_faulty_log, failing
):
    before = statuses(local_stack)
    service, faulty = service_with_faulty_log({failing})
    with pytest.raises(AuditWriteError):
        service.submit(ANALYST, "demo-dev", WRITE)
    assert faulty.refused >= 2  # the recorder retried before giving up
    assert statuses(local_stack) == before
    assert "tampered" not in before


def test_the_api_answers_503_audit_unavailable(local_stack, service_with_faulty_log):
    from gatehouse.api import build_app

    service, _ = service_with_faulty_log({"received"})
    app = build_app(service, service._registry)
    event = {
        "version": "2.0",
        "routeKey": "POST /v1/requests",
        "rawPath": "/v1/requests",
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "http": {"method": "POST", "path": "/v1/requests"},
            "stage": "$default",
            "authorizer": {"iam": {"userArn": ANALYST.arn, "accountId": "123456789012"}},
        },
        "body": json.dumps({"connection": "demo-dev", "sql": WRITE}),
        "isBase64Encoded": False,
    }
    answer = app.resolve(event, None)
    assert answer["statusCode"] == 503
    assert json.loads(answer["body"])["error"] == "audit_unavailable"
