"""The managed policies an operator attaches: agents call the agent routes; admins register."""

from __future__ import annotations

import json
from typing import Any

from tests.infra.conftest import Synthesized


def _policy(synthesized: Synthesized, output: str) -> dict[str, Any]:
    ref = synthesized.template.to_json()["Outputs"][output]["Value"]["Ref"]
    policy = synthesized.resources[ref]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    return dict(policy["Properties"]["PolicyDocument"])


def _ref(synthesized: Synthesized, type_: str, **properties: Any) -> str:
    [key] = [
        k
        for k, v in synthesized.resources_of_type(type_).items()
        if all(v["Properties"].get(p) == value for p, value in properties.items())
    ]
    return key


def test_the_agent_policy_invokes_exactly_the_agent_routes(synthesized: Synthesized):
    [statement] = _policy(synthesized, "AgentPolicyArn")["Statement"]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "execute-api:Invoke")
    # Each resource is a Fn::Join whose last part is "/<stage>/<method>/<path>" of one route.
    tails = sorted(r["Fn::Join"][1][-1].lstrip("/") for r in statement["Resource"])
    assert tails == [
        "$default/GET/v1/connections",
        "$default/GET/v1/openapi.json",
        "$default/GET/v1/requests",
        "$default/GET/v1/requests/*",
        "$default/POST/v1/proxy-tokens",
        "$default/POST/v1/requests",
    ]
    assert not any("slack" in json.dumps(r) for r in statement["Resource"])


def test_the_admin_policy_reaches_the_registry_the_connection_secrets_and_rotation_only(
    synthesized: Synthesized,
):
    statements = _policy(synthesized, "AdminPolicyArn")["Statement"]
    by_service: dict[str, tuple[set[str], str]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        services = {a.split(":")[0] for a in actions}
        assert len(services) == 1, actions
        by_service[services.pop()] = (set(actions), json.dumps(statement["Resource"]))
    assert set(by_service) == {"dynamodb", "secretsmanager", "lambda"}

    actions, resources = by_service["dynamodb"]
    assert actions == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Scan"}
    tables = {k for k in synthesized.resources_of_type("AWS::DynamoDB::Table") if k in resources}
    assert tables == {
        _ref(synthesized, "AWS::DynamoDB::Table", TableName="gatehouse-connections"),
        _ref(synthesized, "AWS::DynamoDB::Table", TableName="gatehouse-principals"),
    }

    actions, resources = by_service["secretsmanager"]
    assert "secretsmanager:RotateSecret" in actions and "secretsmanager:CreateSecret" in actions
    # The connection secrets' prefix, never the masking key, the proxy's keys or Slack's.
    assert ":secret:gatehouse/connections/*" in resources
    for secret in synthesized.resources_of_type("AWS::SecretsManager::Secret"):
        assert secret not in resources

    actions, resources = by_service["lambda"]
    assert actions == {"lambda:GetFunction", "lambda:InvokeFunction"}
    rotation = _ref(synthesized, "AWS::Lambda::Function", FunctionName="gatehouse-rotation")
    assert json.loads(resources) == {"Fn::GetAtt": [rotation, "Arn"]}
