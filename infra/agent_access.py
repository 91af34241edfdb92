"""What an agent's IAM identity needs to use Gatehouse: `execute-api:Invoke` on the agent routes.

The operator attaches this managed policy to each agent's role (README, deploy walkthrough); it
names the routes one by one, so an agent cannot call a route added later without a new grant,
and grants nothing on the Slack route (Slack signs its own requests) or on anything else.
"""

from __future__ import annotations

from aws_cdk import CfnElement, Stack
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.api import ROUTES
from infra.nag import acknowledge


class AgentAccessPolicy(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, api: apigwv2.HttpApi) -> None:
        super().__init__(scope, construct_id)
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description="Gatehouse: call the agent API (attach to each agent's role).",
            statements=[
                iam.PolicyStatement(
                    actions=["execute-api:Invoke"],
                    # API Gateway matches a path parameter ({id}) with `*` in an execute-api ARN.
                    resources=[
                        api.arn_for_execute_api(method.value, _arn_path(path), "$default")
                        for method, path in ROUTES
                    ],
                )
            ],
        )
        stack = Stack.of(self)
        resource = api.node.default_child
        assert isinstance(resource, CfnElement)
        api_id = stack.resolve(stack.get_logical_id(resource))
        acknowledge(
            self.policy,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:execute-api:<AWS::Region>:<AWS::AccountId>:"
            f"<{api_id}>/$default/GET/v1/requests/*]",
            "GET /v1/requests/{id}: a path parameter is matched by `*` in an execute-api ARN; the "
            "route is still named, and the service checks that the request is the caller's own.",
        )


def _arn_path(path: str) -> str:
    return "/".join("*" if part.startswith("{") else part for part in path.split("/"))
