"""The request path's promises, whatever is cached or overlapped to make it fast (local stack)."""

from __future__ import annotations

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
READ = "SELECT id, name FROM customers WHERE id = 7"


class S3RefusingKinds:
    """An S3 client whose PutObject fails (500 InternalError) for objects holding those kinds."""

    def __init__(self, real: Any, kinds: set[str]) -> None:
        self._real, self._kinds = real, kinds

    def put_object(self, **kwargs: Any) -> Any:
        body = kwargs.get("Body", b"")
        kinds = {e["kind"] for e in parse_events(body)} if kwargs["Key"].startswith("events/") else set()
        if kinds & self._kinds:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "PutObject")
        return self._real.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def runtime(local_stack):
    return build_runtime(Settings.from_env(), boto3.session.Session())


def test_a_read_is_on_record_as_executed_with_its_row_count(local_stack, runtime):
    outcome = runtime.service.submit(ANALYST, "demo-dev", READ)

    record = local_stack.client().get_request(outcome.request_id).body
    assert (record["status"], record["row_count"]) == ("executed", 1)
    assert outcome.result is not None and outcome.result.row_count == 1


def test_a_read_whose_outcome_cannot_be_stored_is_on_record_as_failed(local_stack, runtime):
    # Given a session log that refuses the read's outcome (executed + closed, one object)
    runtime.service._s3 = S3RefusingKinds(local_stack.aws("s3"), {"executed"})
    requests_before = {
        item["request_id"]["S"]
        for item in local_stack.aws("dynamodb").scan(TableName=runtime.settings.requests_table)["Items"]
    }

    # When the agent runs a read
    with pytest.raises(AuditWriteError):
        runtime.service.submit(ANALYST, "demo-dev", READ)

    # Then its record never says executed: the rows were not handed out
    items = local_stack.aws("dynamodb").scan(TableName=runtime.settings.requests_table)["Items"]
    [new] = [i for i in items if i["request_id"]["S"] not in requests_before]
    assert new["status"]["S"] == "failed"
    assert new["error"]["S"].startswith("audit_unavailable")
