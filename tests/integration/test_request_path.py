"""The request path's promises, whatever is cached or overlapped to make it fast (local stack)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from gatehouse.audit.events import parse_events
from gatehouse.config import Settings
from gatehouse.exceptions import AuditWriteError, GatehouseError
from gatehouse.models import Principal
from gatehouse.runtime import FirstRequest, build_runtime

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


# -- a cold process's head start (gatehouse.runtime.FirstRequest) ------------------------------


class CallsMade:
    """Every AWS operation the clients of one boto3 session make, in order."""

    def __init__(self, session: boto3.session.Session) -> None:
        self.ops: list[str] = []
        session.events.register("before-call.*.*", self._seen)

    def _seen(self, model: Any, **_: Any) -> None:
        self.ops.append(f"{model.service_model.service_name}.{model.name}")

    def reads(self) -> list[str]:
        return [op for op in self.ops if op.split(".")[1] in ("GetItem", "GetSecretValue")]


def _built_with(first: FirstRequest) -> tuple[Any, CallsMade]:
    session = boto3.session.Session()
    calls = CallsMade(session)
    return build_runtime(Settings.from_env(), session, first=first), calls


def _analyst_key() -> str:
    return f"iam:{ANALYST.arn}"


def test_a_cold_first_request_finds_its_reads_done_and_answers_the_same(local_stack):
    # Given a runtime built for a first request by the analyst on demo-dev
    runtime, calls = _built_with(FirstRequest(_analyst_key(), "demo-dev"))
    # its principal, its connection, the masking key and the credential were read while it was built
    assert calls.reads() == [
        "dynamodb.GetItem",
        "dynamodb.GetItem",
        "secretsmanager.GetSecretValue",
        "secretsmanager.GetSecretValue",
    ]
    read_ahead = len(calls.ops)

    # When that request comes
    principal = runtime.registry.principal(_analyst_key())
    outcome = runtime.service.submit(principal, "demo-dev", READ)

    # Then it reads none of it again, and answers as without the head start
    assert [op for op in calls.ops[read_ahead:] if op.endswith(("GetItem", "GetSecretValue"))] == []
    assert outcome.result is not None and outcome.result.row_count == 1
    assert local_stack.client().get_request(outcome.request_id).body["status"] == "executed"


def test_a_caller_who_is_not_a_principal_gets_nothing_read_ahead(local_stack):
    # Given a signed caller Gatehouse does not know, naming the production connection
    stranger = "iam:arn:aws:iam::123456789012:user/not-an-agent"

    # When a cold process is built for its request
    _, calls = _built_with(FirstRequest(stranger, "demo-prod"))

    # Then only the principal was looked up: no connection, and no credential, so no catalog
    assert calls.ops == ["dynamodb.GetItem"]


def test_a_first_request_naming_no_such_connection_still_gets_its_own_answer(local_stack):
    # Given a runtime built for a first request naming a connection that does not exist
    runtime, calls = _built_with(FirstRequest(_analyst_key(), "no-such-connection"))
    assert calls.reads() == ["dynamodb.GetItem", "dynamodb.GetItem"]

    # When the request comes, it is refused as it would be without the head start
    principal = runtime.registry.principal(_analyst_key())
    with pytest.raises(GatehouseError) as refused:
        runtime.service.submit(principal, "no-such-connection", READ)
    assert refused.value.code == "unknown_connection"
    # ... and a real connection on the same runtime still works
    assert runtime.service.submit(principal, "demo-dev", READ).status == "executed"
