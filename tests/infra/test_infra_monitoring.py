"""Alarms and the dashboard: every failure an operator must hear about reaches the alarm topic."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gatehouse import names

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized


def _logical_id(synthesized: Synthesized, type_: str, **properties: Any) -> str:
    [found] = [
        key
        for key, value in synthesized.resources_of_type(type_).items()
        if all(value["Properties"].get(k) == v for k, v in properties.items())
    ]
    return found


def _alarms(synthesized: Synthesized) -> dict[tuple[str, str], dict[str, Any]]:
    """Alarms by (namespace, metric name) and what their single dimension refers to ("" if none)."""
    found = {}
    for alarm in synthesized.resources_of_type("AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        dimensions = props.get("Dimensions", [])
        target = dimensions[0]["Value"]["Ref"] if dimensions else ""
        found[(props["Namespace"], props["MetricName"], target)] = props
    return found


def _reference(part: dict[str, Any]) -> str:
    return part["Ref"] if "Ref" in part else part["Fn::GetAtt"][0]


def _topic(synthesized: Synthesized) -> str:
    return _logical_id(synthesized, "AWS::SNS::Topic", TopicName=names.ALARM_TOPIC_NAME)


# Every function of ours; a function added to the stack without alarms fails these tests.
FUNCTIONS = (
    names.API_FUNCTION,
    names.APPROVALS_FUNCTION,
    names.APPROVALS_NOTIFY_FUNCTION,
    names.SLACK_FUNCTION,
    names.ROTATION_FUNCTION,
)
# Errors and throttles per function; timed-out and failed executions, expired requests; the
# proxy's two metrics.
EXPECTED_ALARMS = 2 * len(FUNCTIONS) + 3 + 2


def test_each_function_alarms_on_any_error_and_any_throttle(synthesized: Synthesized) -> None:
    alarms = _alarms(synthesized)
    ours = {
        props["Properties"]["FunctionName"]
        for props in synthesized.resources_of_type("AWS::Lambda::Function").values()
        if str(props["Properties"].get("FunctionName", "")).startswith(f"{names.PREFIX}-")
    }
    assert ours == set(FUNCTIONS)
    for function_name in FUNCTIONS:
        function = _logical_id(synthesized, "AWS::Lambda::Function", FunctionName=function_name)
        for metric in ("Errors", "Throttles"):
            alarm = alarms[("AWS/Lambda", metric, function)]
            assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
                "Sum",
                1,
                "GreaterThanOrEqualToThreshold",
            ), (function_name, metric)


def test_the_approvals_state_machine_alarms_on_timed_out_and_failed_executions(
    synthesized: Synthesized,
) -> None:
    alarms = _alarms(synthesized)
    machine = _logical_id(
        synthesized, "AWS::StepFunctions::StateMachine", StateMachineName=names.STATE_MACHINE_NAME
    )
    for metric in ("ExecutionsTimedOut", "ExecutionsFailed"):
        assert alarms[("AWS/States", metric, machine)]["Threshold"] == 1


def test_expired_approvals_are_alarmed_under_the_name_the_approvals_function_publishes(
    synthesized: Synthesized,
) -> None:
    alarm = _alarms(synthesized)[(names.APPROVALS_METRICS_NAMESPACE, names.METRIC_APPROVALS_EXPIRED, "")]
    assert (alarm["Statistic"], alarm["Threshold"]) == ("Sum", 1)


def test_the_proxy_metrics_are_alarmed_under_the_shared_names(synthesized: Synthesized) -> None:
    alarms = _alarms(synthesized)
    failures = alarms[(names.PROXY_METRICS_NAMESPACE, names.METRIC_RECORDER_FAILURES, "")]
    assert (failures["Statistic"], failures["Threshold"]) == ("Sum", 1)
    backlog = alarms[(names.PROXY_METRICS_NAMESPACE, names.METRIC_LOG_BACKLOG_EVENTS, "")]
    # Below the recorder's refusal point (50,000 pending events), so the alarm comes first.
    assert backlog["Statistic"] == "Maximum"
    assert 0 < backlog["Threshold"] < 50_000


def test_every_alarm_notifies_the_topic_when_raised_and_when_cleared(synthesized: Synthesized) -> None:
    topic = {"Ref": _topic(synthesized)}
    alarms = synthesized.resources_of_type("AWS::CloudWatch::Alarm")
    assert len(alarms) == EXPECTED_ALARMS
    for key, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [topic], key
        assert props["OKActions"] == [topic], key
        # No traffic is not an outage: a quiet function must not page anyone.
        assert props["TreatMissingData"] == "notBreaching", key


def test_the_alarm_topic_is_encrypted_with_the_aws_managed_key_and_refuses_plain_http(
    synthesized: Synthesized,
) -> None:
    topic_id = _topic(synthesized)
    topic = synthesized.resources[topic_id]["Properties"]
    assert json.dumps(topic["KmsMasterKeyId"]).endswith(':alias/aws/sns"]]}')
    [policy] = [
        p["Properties"]["PolicyDocument"]
        for p in synthesized.resources_of_type("AWS::SNS::TopicPolicy").values()
        if p["Properties"]["Topics"] == [{"Ref": topic_id}]
    ]
    assert {
        "Action": "sns:Publish",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        "Effect": "Deny",
        "Principal": "*",
        "Resource": {"Ref": topic_id},
        "Sid": "AllowPublishThroughSSLOnly",
    } in policy["Statement"]


def test_the_dashboard_shows_the_api_the_functions_the_approvals_and_the_proxy(
    synthesized: Synthesized,
) -> None:
    dashboard = synthesized.one("AWS::CloudWatch::Dashboard")["Properties"]
    assert dashboard["DashboardName"] == names.DASHBOARD_NAME
    # The body is a Fn::Join of text and references: join it with the references spelled out.
    parts = dashboard["DashboardBody"]["Fn::Join"][1]
    body = json.loads("".join(p if isinstance(p, str) else f"<{_reference(p)}>" for p in parts))
    metrics = {
        tuple(item for item in line if isinstance(item, str))
        for widget in body["widgets"]
        for line in widget["properties"].get("metrics", [])
    }
    api = f"<{_logical_id(synthesized, 'AWS::ApiGatewayV2::Api', Name=names.PREFIX)}>"
    for metric in ("Latency", "4xx", "5xx"):
        assert ("AWS/ApiGateway", metric, "ApiId", api) in metrics
    for function_name in FUNCTIONS:
        function = f"<{_logical_id(synthesized, 'AWS::Lambda::Function', FunctionName=function_name)}>"
        for metric in ("Errors", "Throttles"):
            assert ("AWS/Lambda", metric, "FunctionName", function) in metrics
    assert {(names.PROXY_METRICS_NAMESPACE, names.METRIC_RECORDER_FAILURES)} <= metrics
    assert {(names.PROXY_METRICS_NAMESPACE, names.METRIC_LOG_BACKLOG_EVENTS)} <= metrics
    [alarm_widget] = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert len(alarm_widget["properties"]["alarms"]) == EXPECTED_ALARMS


def test_the_proxy_metrics_reach_cloudwatch_through_the_containers_log_stream(
    synthesized: Synthesized,
) -> None:
    # The proxy writes its metrics as EMF on stdout (gatehouse.proxy.postgres.metrics): the awslogs
    # driver must carry stdout to a log group of this stack, in the stack's region.
    [definition] = synthesized.resources_of_type("AWS::ECS::TaskDefinition").values()
    [container] = definition["Properties"]["ContainerDefinitions"]
    logging = container["LogConfiguration"]
    assert logging["LogDriver"] == "awslogs"
    group = logging["Options"]["awslogs-group"]["Ref"]
    assert synthesized.resources[group]["Type"] == "AWS::Logs::LogGroup"
    assert logging["Options"]["awslogs-region"] == {"Ref": "AWS::Region"}
    # EMF needs no PutMetricData: the task role is not given CloudWatch at all.
    task_role = definition["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0]
    for policy in synthesized.resources_of_type("AWS::IAM::Policy").values():
        if {"Ref": task_role} in policy["Properties"]["Roles"]:
            assert "cloudwatch:" not in json.dumps(policy["Properties"]["PolicyDocument"])
