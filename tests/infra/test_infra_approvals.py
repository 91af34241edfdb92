"""The approval state machine and its function: the flow of the spec, bounded waits, narrow grants."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from gatehouse import names
from infra.approvals import approvals_definition
from tests.infra.conftest import ENI_ACTIONS

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized

LOCAL_ARN = f"arn:aws:lambda:us-east-1:123456789012:function:{names.APPROVALS_FUNCTION}"
NOTIFY_LOCAL_ARN = f"arn:aws:lambda:us-east-1:123456789012:function:{names.APPROVALS_NOTIFY_FUNCTION}"


def _function_key(synthesized: Synthesized, name: str) -> str:
    [key] = [
        key
        for key, value in synthesized.resources_of_type("AWS::Lambda::Function").items()
        if value["Properties"].get("FunctionName") == name
    ]
    return key


def _statements_of(synthesized: Synthesized, function_name: str) -> list[dict[str, Any]]:
    return synthesized.role_statements(function_name)


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for statement in statements:
        actions = statement["Action"]
        found.update([actions] if isinstance(actions, str) else actions)
    return found


def _state_machine(synthesized: Synthesized) -> dict[str, Any]:
    return synthesized.one("AWS::StepFunctions::StateMachine")


def _secret_statements(statements: list[dict[str, Any]], secret_name: str) -> list[dict[str, Any]]:
    """The statements naming an operator-created secret (by its name and the six-character suffix)."""
    return [s for s in statements if f"secret:{secret_name}-" in json.dumps(s["Resource"])]


def _private_subnets(synthesized: Synthesized) -> list[dict[str, str]]:
    """The VPC's subnets as the proxy's service names them: the private ones."""
    [service] = synthesized.resources_of_type("AWS::ECS::Service").values()
    network = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    subnets: list[dict[str, str]] = network["Subnets"]
    return subnets


@pytest.fixture(scope="module")
def asl(synthesized: Synthesized) -> dict[str, Any]:
    """The deployed definition, with the function's ARN and the partition filled in."""
    definition = _state_machine(synthesized)["Properties"]["DefinitionString"]
    arns = {
        _function_key(synthesized, names.APPROVALS_FUNCTION): LOCAL_ARN,
        _function_key(synthesized, names.APPROVALS_NOTIFY_FUNCTION): NOTIFY_LOCAL_ARN,
    }

    def resolve(value: Any) -> str:
        if isinstance(value, str):
            return value
        if value == {"Ref": "AWS::Partition"}:
            return "aws"
        if "Fn::GetAtt" in value and value["Fn::GetAtt"][1] == "Arn" and value["Fn::GetAtt"][0] in arns:
            return arns[value["Fn::GetAtt"][0]]
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
        assert states[state]["Next"] == "Announce"
    assert states["Announce"]["Next"] == "Done" and states["Done"]["Type"] == "Succeed"
    assert states["RecordFailed"]["Next"] == "AnnounceFailure"
    assert states["AnnounceFailure"]["Next"] == "Failed" and states["Failed"]["Type"] == "Fail"


def test_the_outcome_is_announced_by_the_notify_function_and_never_fails_the_request(asl: dict[str, Any]):
    for name, after in (("Announce", "Done"), ("AnnounceFailure", "Failed")):
        state = asl["States"][name]
        assert state["Resource"] == NOTIFY_LOCAL_ARN, name
        assert state["Parameters"] == {"step": "announce", "request_id.$": "$.request_id"}, name
        # The outcome is decided and recorded before: Slack failing past the retries ends the
        # execution as it would have ended anyway.
        assert any(r["ErrorEquals"] == ["States.TaskFailed"] for r in state["Retry"]), name
        [catch] = state["Catch"]
        assert (catch["ErrorEquals"], catch["Next"]) == (["States.ALL"], after), name
        assert state["ResultPath"] is None, name


def test_notify_waits_for_a_task_token_as_long_as_the_request_lives(asl: dict[str, Any]):
    notify = asl["States"]["Notify"]

    assert notify["Resource"] == "arn:aws:states:::lambda:invoke.waitForTaskToken"
    # The notify function (outside the VPC, where Slack is), not the approvals function.
    assert notify["Parameters"]["FunctionName"] == NOTIFY_LOCAL_ARN
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
    assert asl["States"]["RecordFailed"]["Next"] == "AnnounceFailure"


def test_every_step_but_the_slack_ones_runs_in_the_approvals_function(asl: dict[str, Any]):
    tasks = {name: state for name, state in asl["States"].items() if state["Type"] == "Task"}
    slack_facing = {"Notify", "Announce", "AnnounceFailure"}

    assert set(tasks) == {"Preview", "Execute", "RecordDenied", "Expire", "RecordFailed"} | slack_facing
    for name, state in tasks.items():
        # A plain invocation names its function as the Resource; Notify's (a task token) in Parameters.
        invoked = state["Parameters"].get("FunctionName") or state["Resource"]
        assert invoked == (NOTIFY_LOCAL_ARN if name in slack_facing else LOCAL_ARN), name


def test_the_local_stack_gets_the_same_definition(asl: dict[str, Any]):
    local = {names.APPROVALS_FUNCTION: LOCAL_ARN, names.APPROVALS_NOTIFY_FUNCTION: NOTIFY_LOCAL_ARN}

    assert approvals_definition(local) == asl


def test_the_local_definition_needs_both_functions():
    with pytest.raises(ValueError, match=names.APPROVALS_NOTIFY_FUNCTION):
        approvals_definition({names.APPROVALS_FUNCTION: LOCAL_ARN})


def test_only_the_two_approvals_functions_are_invoked_by_the_state_machine(synthesized: Synthesized):
    role_key = _state_machine(synthesized)["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    statements = [
        statement
        for policy in synthesized.resources_of_type("AWS::IAM::Policy").values()
        if {"Ref": role_key} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    function_keys = {
        _function_key(synthesized, names.APPROVALS_FUNCTION),
        _function_key(synthesized, names.APPROVALS_NOTIFY_FUNCTION),
    }
    invokes = [s for s in statements if "lambda:InvokeFunction" in _actions([s])]
    resources = [
        resource
        for statement in invokes
        for resource in (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
    ]
    for key in function_keys:
        assert {"Fn::GetAtt": [key, "Arn"]} in resources
    assert all(any(key in json.dumps(resource) for key in function_keys) for resource in resources)


def test_the_approvals_function_has_narrow_grants(synthesized: Synthesized):
    statements = _statements_of(synthesized, names.APPROVALS_FUNCTION)
    actions = _actions(statements)

    # It updates request records (the API function creates them) and appends to the session log.
    assert {"dynamodb:GetItem", "dynamodb:UpdateItem", "s3:PutObject", "s3:GetObject"} <= actions
    assert "secretsmanager:GetSecretValue" in actions
    # Never: delete anything (but the network interfaces Lambda attaches it by), create request
    # records, start or answer executions, any wildcard action.
    assert not {a for a in actions - ENI_ACTIONS if "Delete" in a or a.startswith("states:")}
    assert "dynamodb:PutItem" not in {
        a for s in statements if "Requests" in json.dumps(s["Resource"]) for a in _actions([s])
    }
    assert not [a for a in actions if a.endswith("*") and not a.startswith(("xray:", "logs:"))]
    # It runs the approved command: connection secrets, and neither Slack secret.
    assert names.CONNECTION_SECRET_PREFIX in json.dumps(statements)
    assert not _secret_statements(statements, names.SLACK_SECRET)
    assert not _secret_statements(statements, names.SLACK_SIGNING_SECRET)


def test_the_approvals_function_runs_in_the_private_subnets_with_its_own_security_group(
    synthesized: Synthesized,
):
    props = synthesized.resources[_function_key(synthesized, names.APPROVALS_FUNCTION)]["Properties"]
    [group] = props["VpcConfig"]["SecurityGroupIds"]
    outputs = synthesized.template.to_json()["Outputs"]

    assert props["VpcConfig"]["SubnetIds"] == _private_subnets(synthesized)
    assert synthesized.resources[group["Fn::GetAtt"][0]]["Type"] == "AWS::EC2::SecurityGroup"
    # Operators admit it on each target's port: the stack says which group that is.
    assert outputs["ApprovalsSecurityGroup"]["Value"] == group
    # Lambda attaches it through network interfaces: deleting those is scoped to interfaces.
    statements = _statements_of(synthesized, names.APPROVALS_FUNCTION)
    [change] = [s for s in statements if "ec2:DeleteNetworkInterface" in _actions([s])]
    assert ":network-interface/*" in json.dumps(change["Resource"])


def test_the_notify_function_is_the_same_code_outside_the_vpc(synthesized: Synthesized):
    approvals = synthesized.resources[_function_key(synthesized, names.APPROVALS_FUNCTION)]["Properties"]
    notify = synthesized.resources[_function_key(synthesized, names.APPROVALS_NOTIFY_FUNCTION)]["Properties"]

    assert "VpcConfig" not in notify
    assert notify["Handler"] == approvals["Handler"]
    assert notify["Code"] == approvals["Code"]
    assert notify["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == names.APPROVALS_NOTIFY_FUNCTION


def test_the_notify_function_reads_the_bot_token_and_no_connection_secret(synthesized: Synthesized):
    statements = _statements_of(synthesized, names.APPROVALS_NOTIFY_FUNCTION)
    actions = _actions(statements)

    # The bot token's secret, by its name and Secrets Manager's six-character suffix, nothing wider.
    [slack] = _secret_statements(statements, names.SLACK_SECRET)
    assert _actions([slack]) == {"secretsmanager:GetSecretValue"}
    assert f"{names.SLACK_SECRET}-??????" in json.dumps(slack["Resource"])
    # Not the signing secret, not a connection's credential, no way into the VPC.
    assert not _secret_statements(statements, names.SLACK_SIGNING_SECRET)
    assert names.CONNECTION_SECRET_PREFIX not in json.dumps(statements)
    assert not {a for a in actions if a.startswith(("ec2:", "states:", "lambda:"))}
    # The request record is read and updated (the task token), never created or deleted.
    requests = [s for s in statements if "Requests" in json.dumps(s["Resource"])]
    assert _actions(requests) == {"dynamodb:GetItem", "dynamodb:UpdateItem"}
    assert not {a for a in actions if "Delete" in a}
    # It appends to the session log.
    assert {"s3:PutObject", "s3:GetObject"} <= actions


def test_the_api_function_may_start_executions_of_this_state_machine_only(synthesized: Synthesized):
    statements = _statements_of(synthesized, names.API_FUNCTION)
    sm_key = next(iter(synthesized.resources_of_type("AWS::StepFunctions::StateMachine")))

    [start] = [s for s in statements if "states:StartExecution" in _actions([s])]
    assert start["Resource"] == {"Ref": sm_key}
    function = synthesized.resources[_function_key(synthesized, names.API_FUNCTION)]
    env = function["Properties"]["Environment"]["Variables"]
    assert env[names.ENV_STATE_MACHINE_ARN] == {"Ref": sm_key}
