"""The agent API: SigV4 on every route, one function with the layers, settings and narrow grants."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from gatehouse import names
from gatehouse.config import Settings
from tests.infra.conftest import ENI_ACTIONS, statement_actions, statement_resources

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized

ROUTE_KEYS = {
    "POST /v1/requests",
    "GET /v1/requests",
    "GET /v1/requests/{id}",
    "GET /v1/connections",
    "POST /v1/proxy-tokens",
    "GET /v1/openapi.json",
}


def _function(synthesized: Synthesized) -> dict[str, Any]:
    functions = synthesized.resources_of_type("AWS::Lambda::Function")
    [function] = [f for f in functions.values() if f["Properties"].get("FunctionName") == names.API_FUNCTION]
    return function


def _statements(synthesized: Synthesized) -> list[dict[str, Any]]:
    return synthesized.role_statements(names.API_FUNCTION)


_actions = statement_actions
_resources = statement_resources


def _ref_of(synthesized: Synthesized, type_: str, **properties: Any) -> str:
    [key] = [
        key
        for key, value in synthesized.resources_of_type(type_).items()
        if all(value["Properties"].get(name) == wanted for name, wanted in properties.items())
    ]
    return key


def test_every_agent_route_requires_sigv4_and_reaches_the_api_function(synthesized: Synthesized):
    routes = synthesized.resources_of_type("AWS::ApiGatewayV2::Route")
    integrations = synthesized.resources_of_type("AWS::ApiGatewayV2::Integration")
    function_key = _ref_of(synthesized, "AWS::Lambda::Function", FunctionName=names.API_FUNCTION)
    [integration_key] = [
        k
        for k, v in integrations.items()
        if v["Properties"]["IntegrationUri"] == {"Fn::GetAtt": [function_key, "Arn"]}
    ]
    integration = synthesized.resources[integration_key]["Properties"]

    agent_routes = {
        k: r for k, r in routes.items() if r["Properties"]["RouteKey"] != "POST /slack/interactions"
    }
    assert {route["Properties"]["RouteKey"] for route in agent_routes.values()} == ROUTE_KEYS
    for route in agent_routes.values():
        assert route["Properties"]["AuthorizationType"] == "AWS_IAM"
        assert route["Properties"]["Target"] == {
            "Fn::Join": ["", ["integrations/", {"Ref": integration_key}]]
        }
    assert integration["IntegrationType"] == "AWS_PROXY"
    assert integration["PayloadFormatVersion"] == "2.0"


def test_only_the_slack_route_is_open_and_it_reaches_the_slack_function(synthesized: Synthesized):
    routes = synthesized.resources_of_type("AWS::ApiGatewayV2::Route")
    [slack] = [r for r in routes.values() if r["Properties"]["RouteKey"] == "POST /slack/interactions"]
    assert slack["Properties"]["AuthorizationType"] == "NONE"
    open_routes = [r for r in routes.values() if r["Properties"]["AuthorizationType"] != "AWS_IAM"]
    assert open_routes == [slack]
    integration_key = slack["Properties"]["Target"]["Fn::Join"][1][1]["Ref"]
    function_key = _ref_of(synthesized, "AWS::Lambda::Function", FunctionName=names.SLACK_FUNCTION)
    uri = synthesized.resources[integration_key]["Properties"]["IntegrationUri"]
    assert uri == {"Fn::GetAtt": [function_key, "Arn"]}


def test_default_stage_is_throttled_and_access_logged(synthesized: Synthesized):
    stage = synthesized.one("AWS::ApiGatewayV2::Stage")["Properties"]

    assert stage["StageName"] == "$default"
    assert stage["AutoDeploy"] is True
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"] == 50
    assert stage["DefaultRouteSettings"]["ThrottlingBurstLimit"] == 100
    log_group = stage["AccessLogSettings"]["DestinationArn"]["Fn::GetAtt"][0]
    assert synthesized.resources[log_group]["Type"] == "AWS::Logs::LogGroup"
    fields = json.loads(stage["AccessLogSettings"]["Format"])
    assert fields["requestId"] == "$context.requestId"
    assert fields["userArn"] == "$context.identity.userArn"


def test_api_function_runs_on_the_layers_runtime_with_tracing(synthesized: Synthesized):
    props = _function(synthesized)["Properties"]
    layers = synthesized.resources_of_type("AWS::Lambda::LayerVersion")

    assert props["Handler"] == "handler.lambda_handler"
    assert props["Runtime"] == "python3.12"
    assert props["Architectures"] == ["arm64"]
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["Timeout"] < 30  # API Gateway gives up on an integration after 30 s
    # The dependencies first, then gatehouse itself (a later layer wins a file conflict).
    descriptions = [layers[layer["Ref"]]["Properties"]["Description"] for layer in props["Layers"]]
    assert descriptions == [
        "Gatehouse: third-party dependencies (make layer).",
        "Gatehouse: the gatehouse package (layers/core/python/gatehouse).",
    ]
    for layer in layers.values():
        assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
        assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]


def test_api_function_environment_is_what_settings_reads(synthesized: Synthesized):
    env = _function(synthesized)["Properties"]["Environment"]["Variables"]
    bucket_key = _ref_of(synthesized, "AWS::S3::Bucket", ObjectLockEnabled=True)

    expected_keys = set(Settings(log_bucket="x").as_env()) | {"POWERTOOLS_SERVICE_NAME", "LOG_LEVEL"}
    expected_keys |= {names.ENV_PROXY_ENDPOINT}  # the proxy's address, for POST /v1/proxy-tokens
    assert set(env) == expected_keys
    assert env[names.ENV_LOG_BUCKET] == {"Ref": bucket_key}
    assert env[names.ENV_REQUESTS_TABLE] == {
        "Ref": _ref_of(synthesized, "AWS::DynamoDB::Table", TableName=names.REQUESTS_TABLE)
    }
    assert env[names.ENV_MASKING_KEY_SECRET] == {
        "Ref": _ref_of(synthesized, "AWS::SecretsManager::Secret", Name=names.MASKING_KEY_SECRET)
    }
    assert env[names.ENV_LOG_RETENTION_DAYS] == str(names.DEFAULT_LOG_RETENTION_DAYS)
    assert env["POWERTOOLS_SERVICE_NAME"] == names.API_FUNCTION
    # The settings round-trip: what the function will parse at cold start is valid.
    literal = {key: value if isinstance(value, str) else "token" for key, value in env.items()}
    # The proxy's address is the NLB's DNS name and port (a token here): stand in a real one.
    literal[names.ENV_PROXY_ENDPOINT] = "proxy.internal:5432"
    assert Settings.from_env(literal).max_rows > 0


def test_api_function_role_has_no_managed_policies(synthesized: Synthesized):
    role_key = _function(synthesized)["Properties"]["Role"]["Fn::GetAtt"][0]
    role = synthesized.resources[role_key]["Properties"]

    assert "ManagedPolicyArns" not in role
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}}
    ]


def test_api_function_can_append_to_the_session_log_but_never_delete(synthesized: Synthesized):
    statements = _statements(synthesized)
    s3_actions = {
        action for statement in statements for action in _actions(statement) if action.startswith("s3:")
    }

    assert s3_actions == {"s3:PutObject", "s3:PutObjectRetention", "s3:GetObject", "s3:ListBucket"}
    assert all(statement["Effect"] == "Allow" for statement in statements)
    # Nothing is deleted but the network interfaces Lambda attaches the function by.
    for action in (a for statement in statements for a in _actions(statement) if a not in ENI_ACTIONS):
        assert "*" not in action
        assert "Delete" not in action
        assert "BypassGovernanceRetention" not in action


def test_api_function_runs_in_the_private_subnets_with_its_own_security_group(synthesized: Synthesized):
    vpc_config = _function(synthesized)["Properties"]["VpcConfig"]
    [service] = synthesized.resources_of_type("AWS::ECS::Service").values()
    private_subnets = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]["Subnets"]
    [group] = vpc_config["SecurityGroupIds"]
    group_key = group["Fn::GetAtt"][0]
    endpoint_rules = [
        rule["Properties"]
        for rule in synthesized.resources_of_type("AWS::EC2::SecurityGroupIngress").values()
        if rule["Properties"].get("SourceSecurityGroupId") == group
    ]

    # Where the proxy runs: the targets are reachable from there.
    assert vpc_config["SubnetIds"] == private_subnets
    # Its own group, named in the outputs so operators admit it on each target's port.
    assert synthesized.template.to_json()["Outputs"]["ApiSecurityGroup"]["Value"] == group
    assert synthesized.resources[group_key]["Properties"]["SecurityGroupEgress"] == [
        {"CidrIp": "0.0.0.0/0", "Description": "Allow all outbound traffic by default", "IpProtocol": "-1"}
    ]
    # The interface endpoints (Secrets Manager, Step Functions, X-Ray...) admit it on 443.
    assert endpoint_rules and {(r["FromPort"], r["ToPort"]) for r in endpoint_rules} == {(443, 443)}


def test_api_function_network_permissions_are_the_ones_lambda_needs(synthesized: Synthesized):
    def ec2_actions(statement: dict[str, Any]) -> set[str]:
        return {a for a in _actions(statement) if a.startswith("ec2:")}

    statements = [s for s in _statements(synthesized) if ec2_actions(s)]

    assert {a for s in statements for a in ec2_actions(s)} == ENI_ACTIONS
    # Only what has no resource-level permission is granted on "*"; the rest on network interfaces.
    for statement in statements:
        if _resources(statement) == ["*"]:
            assert ec2_actions(statement) <= {
                "ec2:CreateNetworkInterface",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets",
            }
        else:
            assert ":network-interface/*" in json.dumps(_resources(statement))


def test_api_function_cannot_weaken_the_lock_mode_of_what_it_writes(synthesized: Synthesized):
    [statement] = [s for s in _statements(synthesized) if "s3:PutObject" in _actions(s)]

    assert sorted(_actions(statement)) == ["s3:PutObject", "s3:PutObjectRetention"]
    assert statement["Condition"] == {"StringEqualsIfExists": {"s3:object-lock-mode": "COMPLIANCE"}}


@pytest.mark.parametrize("service", ["secretsmanager", "dynamodb", "s3", "logs"])
def test_api_function_grants_name_their_resources(synthesized: Synthesized, service: str):
    statements = [
        statement
        for statement in _statements(synthesized)
        if any(action.startswith(f"{service}:") for action in _actions(statement))
    ]

    assert statements
    for statement in statements:
        assert "*" not in _resources(statement)


def test_api_function_reads_only_the_masking_key_and_connection_secrets(synthesized: Synthesized):
    secret_key = _ref_of(synthesized, "AWS::SecretsManager::Secret", Name=names.MASKING_KEY_SECRET)
    [statement] = [
        statement
        for statement in _statements(synthesized)
        if any(action.startswith("secretsmanager:") for action in _actions(statement))
    ]

    assert sorted(_actions(statement)) == ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]
    wildcard_arns = [
        "".join(part if isinstance(part, str) else json.dumps(part) for part in resource["Fn::Join"][1])
        for resource in _resources(statement)
        if "Fn::Join" in resource
    ]
    assert {"Ref": secret_key} in _resources(statement)
    assert len(wildcard_arns) == 1
    assert wildcard_arns[0].endswith(f":secret:{names.CONNECTION_SECRET_PREFIX}*")
    # Neither Slack secret: the API posts nothing to Slack and verifies no Slack request.
    for slack_secret in (names.SLACK_SECRET, names.SLACK_SIGNING_SECRET):
        assert f":secret:{slack_secret}-" not in json.dumps(_statements(synthesized))


def test_requests_table_is_written_never_deleted_and_registries_are_read_only(synthesized: Synthesized):
    def actions_on(table_name: str) -> set[str]:
        key = _ref_of(synthesized, "AWS::DynamoDB::Table", TableName=table_name)
        return {
            action
            for statement in _statements(synthesized)
            if {"Fn::GetAtt": [key, "Arn"]} in _resources(statement)
            for action in _actions(statement)
        }

    requests = actions_on(names.REQUESTS_TABLE)
    assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"} <= requests
    assert "dynamodb:DeleteItem" not in requests
    for registry in (names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE):
        actions = actions_on(registry)
        assert {"dynamodb:GetItem", "dynamodb:Scan"} <= actions
        assert not {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"} & actions


def test_masking_key_is_generated_as_base64_text(synthesized: Synthesized):
    [secret] = [
        s
        for s in synthesized.resources_of_type("AWS::SecretsManager::Secret").values()
        if s["Properties"]["Name"] == names.MASKING_KEY_SECRET
    ]

    generated = secret["Properties"]["GenerateSecretString"]
    assert secret["Properties"]["Name"] == names.MASKING_KEY_SECRET
    # [A-Za-z0-9] in a multiple of four characters is valid base64 of at least 16 bytes.
    assert generated["ExcludePunctuation"] is True
    assert generated["IncludeSpace"] is False
    assert generated["PasswordLength"] % 4 == 0
    assert generated["PasswordLength"] * 3 // 4 >= 16
    assert secret["DeletionPolicy"] == "Retain"
