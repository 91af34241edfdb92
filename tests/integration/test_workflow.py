"""The approval state machine, as the local stack runs it: the ASL synthesized from infra/approvals.py,
executed by moto's Step Functions (server mode), its tasks calling functions/approvals/handler.py
through the Lambda dispatcher. The service behind the handler is a stub that records each step."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config

from gatehouse import names
from gatehouse.local.moto_server import LambdaDispatcher, MotoServer
from gatehouse.local.provision import create_approval_workflow
from gatehouse.workflow import (
    ApprovalClosedError,
    Workflow,
    WorkflowAlreadyStartedError,
    WorkflowUnavailableError,
    execution_arn,
)

REGION = "us-east-1"
HANDLER_PATH = Path(__file__).resolve().parents[2] / "functions" / "approvals" / "handler.py"
WAIT_S = 30.0


class SlackDownError(Exception):
    """What a notifier raises when Slack does not answer."""


@dataclass
class StubService:
    """The lead's service methods the state machine calls, recording what each request went through."""

    steps: dict[str, list[str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    notify_failures: dict[str, int] = field(default_factory=dict)
    slack_gone: set[str] = field(default_factory=set)  # every announcement of these fails
    changed: threading.Condition = field(default_factory=threading.Condition)

    def _record(self, request_id: str, step: str) -> None:
        with self.changed:
            self.steps.setdefault(request_id, []).append(step)
            self.changed.notify_all()

    def record_preview(self, request_id: str) -> None:
        self._record(request_id, "preview")

    def notify(self, request_id: str, task_token: str) -> None:
        self._record(request_id, "notify")
        with self.changed:
            if self.notify_failures.get(request_id, 0) > 0:
                self.notify_failures[request_id] -= 1
                raise SlackDownError("chat.postMessage: ratelimited")
            self.tokens[request_id] = task_token
            self.changed.notify_all()

    def execute_approved(self, request_id: str) -> dict[str, Any]:
        self._record(request_id, "execute")
        # A result the state machine must not carry: it stays with the request record.
        return {"request_id": request_id, "status": "executed", "rows": [["secret"] * 3]}

    def finish_denied(self, request_id: str) -> None:
        self._record(request_id, "denied")

    def expire(self, request_id: str) -> None:
        self._record(request_id, "expire")

    def announce_outcome(self, request_id: str) -> None:
        self._record(request_id, "announce")
        if request_id in self.slack_gone:
            raise SlackDownError("chat.update: service unavailable")

    def token(self, request_id: str, timeout_s: float = WAIT_S) -> str:
        with self.changed:
            if not self.changed.wait_for(lambda: request_id in self.tokens, timeout_s):
                raise AssertionError(f"{request_id} was never notified: {self.steps.get(request_id)}")
            return self.tokens[request_id]


@dataclass
class Recorder:
    """A function that remembers its events (for the dispatcher's own behaviour)."""

    events: list[Any] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, event: Any, context: Any) -> dict[str, Any]:
        if event.get("fail"):
            raise ValueError("asked to fail")
        self.events.append((event, context.function_name))
        self.done.set()
        return {"echo": event}


@dataclass
class Setup:
    sfn: Any
    lambda_: Any
    state_machine_arn: str
    service: StubService
    slack: Recorder
    endpoint: str

    @property
    def workflow(self) -> Workflow:
        return Workflow(self.sfn, self.state_machine_arn)

    def finished(self, request_id: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        arn = execution_arn(self.state_machine_arn, request_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            described = self.sfn.describe_execution(executionArn=arn)
            if described["status"] != "RUNNING":
                return dict(described)
            time.sleep(0.1)
        raise AssertionError(f"execution {request_id} still running after {timeout_s} s")

    def status(self, request_id: str) -> str:
        arn = execution_arn(self.state_machine_arn, request_id)
        return str(self.sfn.describe_execution(executionArn=arn)["status"])


def _load_handler(service: StubService) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_test_approvals_handler", HANDLER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The handler builds its runtime once; here it is built already, around the stub service.
    module._runtime = SimpleNamespace(service=service)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    service, slack = StubService(), Recorder()
    handler = _load_handler(service)
    with MotoServer() as moto:

        def client(name: str) -> Any:
            return boto3.client(
                name,
                endpoint_url=moto.endpoint_url,
                region_name=REGION,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )

        sfn, lambda_ = client("stepfunctions"), client("lambda")
        arn = create_approval_workflow(
            client("iam"), lambda_, sfn, region=REGION, cache_dir=tmp_path_factory.mktemp("asl")
        )
        # Notify runs in its own function (outside the VPC when deployed), the same code.
        dispatcher = LambdaDispatcher(
            {
                names.APPROVALS_FUNCTION: handler.lambda_handler,
                names.APPROVALS_NOTIFY_FUNCTION: handler.lambda_handler,
                names.SLACK_FUNCTION: slack,
            }
        )
        with dispatcher:
            yield Setup(sfn, lambda_, arn, service, slack, moto.endpoint_url)


def _history(setup: Setup, request_id: str) -> list[dict[str, Any]]:
    arn = execution_arn(setup.state_machine_arn, request_id)
    return list(setup.sfn.get_execution_history(executionArn=arn)["events"])


def test_an_approved_request_is_previewed_notified_then_executed(setup: Setup):
    setup.workflow.start("req-approved", 60)
    token = setup.service.token("req-approved")
    assert setup.status("req-approved") == "RUNNING"  # waiting for the humans

    setup.workflow.resume(token, "approved")

    done = setup.finished("req-approved")
    assert done["status"] == "SUCCEEDED"
    assert setup.service.steps["req-approved"] == ["preview", "notify", "execute", "announce"]
    output = json.loads(done["output"])
    assert output["vote"] == {"decision": "approved"}
    assert output["outcome"] == {"step": "execute", "request_id": "req-approved", "status": "executed"}
    assert "secret" not in done["output"]


def test_an_approval_delivered_twice_executes_once(setup: Setup):
    setup.workflow.start("req-twice", 60)
    token = setup.service.token("req-twice")
    setup.workflow.resume(token, "approved")
    setup.finished("req-twice")

    with pytest.raises(ApprovalClosedError) as caught:
        setup.workflow.resume(token, "approved")

    assert (caught.value.code, caught.value.status) == ("approval_closed", 409)
    assert setup.service.steps["req-twice"].count("execute") == 1


def test_a_denied_request_is_recorded_and_never_executed(setup: Setup):
    setup.workflow.start("req-denied", 60)

    setup.workflow.resume(setup.service.token("req-denied"), "denied")

    assert setup.finished("req-denied")["status"] == "SUCCEEDED"
    assert setup.service.steps["req-denied"] == ["preview", "notify", "denied", "announce"]


def test_a_request_nobody_decides_expires_and_cannot_be_approved_after(setup: Setup):
    started = time.monotonic()
    setup.workflow.start("req-expiring", 1)
    token = setup.service.token("req-expiring")

    done = setup.finished("req-expiring")

    assert done["status"] == "SUCCEEDED"
    assert time.monotonic() - started >= 1.0
    # The timeout is the expiry, not a failure to retry: one notification only.
    assert setup.service.steps["req-expiring"] == ["preview", "notify", "expire", "announce"]
    assert json.loads(done["output"])["timeout"]["Error"] == "States.Timeout"
    with pytest.raises(ApprovalClosedError):
        setup.workflow.resume(token, "approved")
    assert "execute" not in setup.service.steps["req-expiring"]


def test_a_failing_notification_is_retried_and_the_request_stays_pending(setup: Setup):
    setup.service.notify_failures["req-slack-down"] = 1
    setup.workflow.start("req-slack-down", 60)

    token = setup.service.token("req-slack-down")

    assert setup.service.steps["req-slack-down"] == ["preview", "notify", "notify"]
    assert setup.status("req-slack-down") == "RUNNING"
    failed = [e for e in _history(setup, "req-slack-down") if e["type"] == "TaskFailed"]
    assert [e["taskFailedEventDetails"]["error"] for e in failed] == ["SlackDownError"]
    setup.workflow.resume(token, "approved")
    assert setup.finished("req-slack-down")["status"] == "SUCCEEDED"
    assert setup.service.steps["req-slack-down"][-2:] == ["execute", "announce"]


def test_an_outcome_slack_cannot_show_still_ends_the_request_as_decided(setup: Setup):
    setup.service.slack_gone.add("req-unannounced")
    setup.workflow.start("req-unannounced", 60)
    setup.workflow.resume(setup.service.token("req-unannounced"), "approved")

    done = setup.finished("req-unannounced")

    assert done["status"] == "SUCCEEDED"
    # Retried, then given up: executed once, announced three times.
    assert setup.service.steps["req-unannounced"] == ["preview", "notify", "execute"] + ["announce"] * 3
    assert json.loads(done["output"])["announce_failure"]["Error"] == "SlackDownError"


def test_a_request_id_holds_one_execution(setup: Setup):
    first = setup.workflow.start("req-dup", 60)
    setup.service.token("req-dup")

    # Step Functions' own rule: the same name and input while it runs is the same execution...
    assert setup.workflow.start("req-dup", 60) == first
    # ...any other start under that name is refused.
    with pytest.raises(WorkflowAlreadyStartedError) as caught:
        setup.workflow.start("req-dup", 30)
    assert (caught.value.code, caught.value.status) == ("approval_already_started", 409)
    assert setup.service.steps["req-dup"] == ["preview", "notify"]

    setup.workflow.resume(setup.service.tokens["req-dup"], "denied")
    setup.finished("req-dup")
    with pytest.raises(WorkflowAlreadyStartedError):
        setup.workflow.start("req-dup", 60)


def test_step_functions_refusing_the_start_is_a_503(setup: Setup):
    missing = setup.state_machine_arn.replace(names.STATE_MACHINE_NAME, "no-such-machine")

    with pytest.raises(WorkflowUnavailableError) as caught:
        Workflow(setup.sfn, missing).start("req-nowhere", 60)

    assert (caught.value.code, caught.value.status) == ("approval_unavailable", 503)


def test_step_functions_unreachable_is_a_503():
    sfn = boto3.client(
        "stepfunctions",
        endpoint_url="http://127.0.0.1:9",
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    arn = f"arn:aws:states:{REGION}:123456789012:stateMachine:{names.STATE_MACHINE_NAME}"

    with pytest.raises(WorkflowUnavailableError) as caught:
        Workflow(sfn, arn).start("req-unreachable", 60)

    assert caught.value.status == 503


def test_an_unknown_step_fails_the_function(setup: Setup):
    resp = setup.lambda_.invoke(
        FunctionName=names.APPROVALS_FUNCTION, Payload=json.dumps({"step": "launch", "request_id": "r"})
    )

    assert resp["FunctionError"] == "Unhandled"
    assert json.loads(resp["Payload"].read())["errorType"] == "BadRequestError"


def test_the_dispatcher_runs_event_invocations_in_the_background(setup: Setup):
    setup.slack.done.clear()

    resp = setup.lambda_.invoke(
        FunctionName=names.SLACK_FUNCTION, InvocationType="Event", Payload=json.dumps({"hello": 1})
    )

    assert resp["StatusCode"] == 202
    assert setup.slack.done.wait(5)
    assert setup.slack.events[-1] == ({"hello": 1}, names.SLACK_FUNCTION)


def test_the_dispatcher_reports_a_handler_error_as_lambda_does(setup: Setup):
    resp = setup.lambda_.invoke(FunctionName=names.SLACK_FUNCTION, Payload=json.dumps({"fail": True}))

    assert resp["FunctionError"] == "Unhandled"
    assert json.loads(resp["Payload"].read()) == {
        "errorType": "ValueError",
        "errorMessage": "asked to fail",
        "stackTrace": [],
    }
