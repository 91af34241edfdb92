"""The rotation function: in the private subnets with its own security group, a role that can do
exactly what the four rotation steps need, and an invoke permission for Secrets Manager alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gatehouse import names
from tests.infra.conftest import ENI_ACTIONS, statement_actions, statement_resources

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized

ROTATION_ACTIONS = {
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
    "secretsmanager:GetRandomPassword",
    "dynamodb:GetItem",
    # Lambda's network interfaces in the VPC.
    *ENI_ACTIONS,
    # Every Gatehouse function: its own log group and X-Ray.
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}


def _function(synthesized: Synthesized) -> tuple[str, dict[str, Any]]:
    [(key, function)] = [
        (key, value)
        for key, value in synthesized.resources_of_type("AWS::Lambda::Function").items()
        if value["Properties"].get("FunctionName") == names.ROTATION_FUNCTION
    ]
    return key, function


def _statements(synthesized: Synthesized) -> list[dict[str, Any]]:
    return synthesized.role_statements(names.ROTATION_FUNCTION)


_actions = statement_actions
_resources = statement_resources


def _joined(value: Any) -> str:
    """An ARN built with Fn::Join, with its pseudo-parameters named: arn:<AWS::Partition>:..."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    separator, parts = value["Fn::Join"]
    return separator.join(_joined(part) for part in parts)


def test_the_rotation_function_runs_the_handler_in_the_private_subnets(synthesized: Synthesized) -> None:
    _, function = _function(synthesized)
    props = function["Properties"]

    assert props["Handler"] == "handler.lambda_handler"
    vpc = props["VpcConfig"]
    assert len(vpc["SubnetIds"]) == 2
    [group] = vpc["SecurityGroupIds"]
    group_key = group["Fn::GetAtt"][0]
    assert synthesized.resources[group_key]["Type"] == "AWS::EC2::SecurityGroup"
    # Its own group, the one the stack outputs for the operator to admit on each database port.
    outputs = synthesized.template.to_json()["Outputs"]
    assert outputs["RotationSecurityGroup"]["Value"] == group
    assert outputs["RotationFunctionArn"]["Value"] == {"Fn::GetAtt": [_function(synthesized)[0], "Arn"]}
    # And no other function shares it.
    others = [
        value
        for value in synthesized.resources_of_type("AWS::Lambda::Function").values()
        if value["Properties"].get("FunctionName") != names.ROTATION_FUNCTION
    ]
    assert all(group not in o["Properties"].get("VpcConfig", {}).get("SecurityGroupIds", []) for o in others)
    assert props["Environment"]["Variables"][names.ENV_CONNECTIONS_TABLE]


def test_the_rotation_group_may_reach_the_secrets_manager_endpoint(synthesized: Synthesized) -> None:
    _, function = _function(synthesized)
    [group] = function["Properties"]["VpcConfig"]["SecurityGroupIds"]
    ingress = [
        value["Properties"]
        for value in synthesized.resources_of_type("AWS::EC2::SecurityGroupIngress").values()
        if value["Properties"].get("SourceSecurityGroupId") == group
    ]
    assert ingress, "no endpoint admits the rotation function"
    assert {(rule["FromPort"], rule["ToPort"]) for rule in ingress} == {(443, 443)}


def test_the_role_can_do_exactly_what_the_four_steps_need(synthesized: Synthesized) -> None:
    statements = _statements(synthesized)
    found = {action for statement in statements for action in _actions(statement)}

    assert found == ROTATION_ACTIONS
    assert all(statement["Effect"] == "Allow" for statement in statements)
    for statement in statements:
        actions = set(_actions(statement))
        resources = [_joined(resource) for resource in _resources(statement)]
        if actions & {"secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"}:
            # The connection secrets' prefix, nothing else in Secrets Manager.
            assert resources == [
                "arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:"
                f"{names.CONNECTION_SECRET_PREFIX}*"
            ]
        if "dynamodb:GetItem" in actions:
            [table] = resources
            assert table.startswith("<TablesConnections") and table.endswith(".Arn>"), table
        if "*" in resources:
            # Only what IAM cannot scope to a resource.
            assert actions <= {
                "secretsmanager:GetRandomPassword",
                "ec2:CreateNetworkInterface",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets",
                "xray:PutTraceSegments",
                "xray:PutTelemetryRecords",
            }, actions
    roles = synthesized.resources_of_type("AWS::IAM::Role")
    role_key = _function(synthesized)[1]["Properties"]["Role"]["Fn::GetAtt"][0]
    assert "ManagedPolicyArns" not in roles[role_key]["Properties"]


def test_only_secrets_manager_of_this_account_may_invoke_it(synthesized: Synthesized) -> None:
    function_key, _ = _function(synthesized)
    permissions = [
        value["Properties"]
        for value in synthesized.resources_of_type("AWS::Lambda::Permission").values()
        if value["Properties"]["FunctionName"] == {"Fn::GetAtt": [function_key, "Arn"]}
    ]

    assert permissions == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Fn::GetAtt": [function_key, "Arn"]},
            "Principal": "secretsmanager.amazonaws.com",
            "SourceAccount": {"Ref": "AWS::AccountId"},
        }
    ]


def test_the_function_is_created_after_the_permissions_lambda_needs_to_attach_it(
    synthesized: Synthesized,
) -> None:
    # Lambda checks at creation that the role may create network interfaces.
    function_key, function = _function(synthesized)
    role_key = function["Properties"]["Role"]["Fn::GetAtt"][0]
    depends = set(function.get("DependsOn", []))
    eni_policies = {
        key
        for key, value in synthesized.resources_of_type("AWS::IAM::Policy").items()
        if {"Ref": role_key} in value["Properties"]["Roles"]
        and any(
            "ec2:CreateNetworkInterface" in _actions(statement)
            for statement in value["Properties"]["PolicyDocument"]["Statement"]
        )
    }
    assert eni_policies and eni_policies <= depends, (function_key, depends)
