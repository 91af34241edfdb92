"""The approval state machine and its function: the flow of the spec, bounded waits, narrow grants."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from gatehouse import names
from infra.approvals import approvals_definition

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized

LOCAL_ARN = f"arn:aws:lambda:us-east-1:123456789012:function:{names.APPROVALS_FUNCTION}"


def _function_key(synthesized: Synthesized, name: str) -> str:
    [key] = [
        key
        for key, value in synthesized.resources_of_type("AWS::Lambda::Function").items()
        if value["Properties"].get("FunctionName") == name
    ]
    return key


def _statements_of(synthesized: Synthesized, function_name: str) -> list[dict[str, Any]]:
    function = synthesized.resources[_function_key(synthesized, function_name)]
    role_key = function["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = []
    for policy in synthesized.resources_of_type("AWS::IAM::Policy").values():
        if {"Ref": role_key} in policy["Properties"]["Roles"]:
            statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return statements


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for statement in statements:
        actions = statement["Action"]
        found.update([actions] if isinstance(actions, str) else actions)
    return found


def _state_machine(synthesized: Synthesized) -> dict[str, Any]:
    return synthesized.one("AWS::StepFunctions::StateMachine")


@pytest.fixture(scope="module")
def asl(synthesized: Synthesized) -> dict[str, Any]:
    """The deployed definition, with the function's ARN and the partition filled in."""
    definition = _state_machine(synthesized)["Properties"]["DefinitionString"]
    function_key = _function_key(synthesized, names.APPROVALS_FUNCTION)

    def resolve(value: Any) -> str:
        if isinstance(value, str):
            return value
        if value == {"Ref": "AWS::Partition"}:
            return "aws"
        if value == {"Fn::GetAtt": [function_key, "Arn"]}:
            return LOCAL_ARN
        [(fn, (separator, parts))] = value.items()
        assert fn == "Fn::Join", value
        return separator.join(resolve(part) for part in parts)

    return json.loads(resolve(definition))


def test_the_state_machine_is_named_logged_and_traced(synthesized: Synthesized):
    props = _state_machine(synthesized)["Properties"]

    assert props["StateMachineName"] == names.STATE_MACHINE_NAME
    assert props["TracingConfiguration"] == {"Enabled": True}
    logging = props["LoggingConfiguration"]
    assert logging["Level"] == "ALL"
    # The execution data holds the task token, which would let a log reader decide a request.
    assert logging["IncludeExecutionData"] is False


def test_the_flow_is_preview_notify_then_decision(asl: dict[str, Any]):
    states = asl["States"]

    assert asl["StartAt"] == "Preview"
    assert states["Preview"]["Next"] == "Notify"
    assert states["Preview"]["Parameters"] == {"step": "preview", "request_id.$": "$.request_id"}
    assert states["Notify"]["Next"] == "Decision"
    choices = {c["StringEquals"]: c["Next"] for c in states["Decision"]["Choices"]}
    assert choices == {"approved": "Execute", "denied": "RecordDenied"}
    assert all(c["Variable"] == "$.vote.decision" for c in states["Decision"]["Choices"])
    # Anything but the two decisions ends the execution without executing.
    assert states[states["Decision"]["Default"]]["Type"] == "Fail"
    for state, step in (("Execute", "execute"), ("RecordDenied", "denied"), ("Expire", "expire")):
        assert states[state]["Parameters"] == {"step": step, "request_id.$": "$.request_id"}
        assert states[state].get("End") is True


def test_notify_waits_for_a_task_token_as_long_as_the_request_lives(asl: dict[str, Any]):
    notify = asl["States"]["Notify"]

    assert notify["Resource"] == "arn:aws:states:::lambda:invoke.waitForTaskToken"
    assert notify["Parameters"]["FunctionName"] == LOCAL_ARN
    assert notify["Parameters"]["Payload"] == {
        "step": "notify",
        "request_id.$": "$.request_id",
        "task_token.$": "$$.Task.Token",
    }
    assert notify["TimeoutSecondsPath"] == "$.expires_in_s"
    assert "TimeoutSeconds" not in notify
    assert notify["ResultPath"] == "$.vote"


def test_a_failing_notification_is_retried_with_backoff_and_a_timeout_expires(asl: dict[str, Any]):
    notify = asl["States"]["Notify"]

    [task_failed] = [r for r in notify["Retry"] if r["ErrorEquals"] == ["States.TaskFailed"]]
    assert task_failed["MaxAttempts"] >= 3
    assert task_failed["BackoffRate"] > 1
    # First match wins: the expiry is caught before anything else; whatever else fails for good
    # (after the retries) fails the request rather than leaving it pending.
    expiry, failure = notify["Catch"]
    assert set(expiry["ErrorEquals"]) == {"States.Timeout", "States.HeartbeatTimeout"}
    assert expiry["Next"] == "Expire"
    assert failure["ErrorEquals"] == ["States.ALL"] and failure["Next"] == "RecordFailed"


def test_every_step_that_fails_for_good_fails_the_request(asl: dict[str, Any]):
    for name in ("Preview", "Notify", "Execute", "RecordDenied"):
        catches = asl["States"][name]["Catch"]
        assert catches[-1]["ErrorEquals"] == ["States.ALL"] and catches[-1]["Next"] == "RecordFailed", name
    assert asl["States"]["RecordFailed"]["Next"] == "Failed"


def test_the_local_stack_gets_the_same_definition(asl: dict[str, Any]):
    assert approvals_definition({names.APPROVALS_FUNCTION: LOCAL_ARN}) == asl


def test_only_the_approvals_function_is_invoked_by_the_state_machine(synthesized: Synthesized):
    role_key = _state_machine(synthesized)["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    statements = [
        statement
        for policy in synthesized.resources_of_type("AWS::IAM::Policy").values()
        if {"Ref": role_key} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    function_key = _function_key(synthesized, names.APPROVALS_FUNCTION)
    [invoke] = [s for s in statements if "lambda:InvokeFunction" in _actions([s])]
    resources = invoke["Resource"] if isinstance(invoke["Resource"], list) else [invoke["Resource"]]
    assert {"Fn::GetAtt": [function_key, "Arn"]} in resources
    assert all(function_key in json.dumps(resource) for resource in resources)


def test_the_approvals_function_has_narrow_grants(synthesized: Synthesized):
    statements = _statements_of(synthesized, names.APPROVALS_FUNCTION)
    actions = _actions(statements)

    # It updates request records (the API function creates them) and appends to the session log.
    assert {"dynamodb:GetItem", "dynamodb:UpdateItem", "s3:PutObject", "s3:GetObject"} <= actions
    assert "secretsmanager:GetSecretValue" in actions
    # Never: delete anything, create request records, start or answer executions, any wildcard action.
    assert not {a for a in actions if "Delete" in a or a.startswith("states:")}
    assert "dynamodb:PutItem" not in {
        a for s in statements if "Requests" in json.dumps(s["Resource"]) for a in _actions([s])
    }
    assert not [a for a in actions if a.endswith("*") and not a.startswith(("xray:", "logs:"))]
    # The Slack secret by its name and Secrets Manager's six-character suffix, nothing wider.
    slack = [s for s in statements if f"secret:{names.SLACK_SECRET}-" in json.dumps(s["Resource"])]
    assert slack and f"{names.SLACK_SECRET}-??????" in json.dumps(slack[0]["Resource"])


def test_the_api_function_may_start_executions_of_this_state_machine_only(synthesized: Synthesized):
    statements = _statements_of(synthesized, names.API_FUNCTION)
    sm_key = next(iter(synthesized.resources_of_type("AWS::StepFunctions::StateMachine")))

    [start] = [s for s in statements if "states:StartExecution" in _actions([s])]
    assert start["Resource"] == {"Ref": sm_key}
    function = synthesized.resources[_function_key(synthesized, names.API_FUNCTION)]
    env = function["Properties"]["Environment"]["Variables"]
    assert env[names.ENV_STATE_MACHINE_ARN] == {"Ref": sm_key}
