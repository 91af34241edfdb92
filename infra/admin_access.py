"""What `gatehouse admin` needs: the registry tables, the connection secrets, the rotation function.

The operator attaches this managed policy to the identity that registers connections, agents and
approvers (README, deploy walkthrough), instead of an administrator's credentials. It names each
resource; nothing here can read the session log, the masking key or the Slack secrets.
"""

from __future__ import annotations

from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from gatehouse import names
from infra.nag import acknowledge
from infra.secrets import Secrets
from infra.tables import Tables


class AdminAccessPolicy(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        tables: Tables,
        secrets: Secrets,
        rotation_function: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, construct_id)
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description="Gatehouse: register connections, agents and approvers (gatehouse admin).",
            statements=[
                # add, list, remove; `add` refuses an existing name with a conditional put.
                iam.PolicyStatement(
                    actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Scan"],
                    resources=[tables.connections.table_arn, tables.principals.table_arn],
                ),
                # The connection's secret: written, read back by the least-privilege check, undone
                # when the registration is refused, and handed to rotation.
                iam.PolicyStatement(
                    actions=[
                        "secretsmanager:CreateSecret",
                        "secretsmanager:PutSecretValue",
                        "secretsmanager:GetSecretValue",
                        "secretsmanager:DescribeSecret",
                        "secretsmanager:UpdateSecretVersionStage",
                        "secretsmanager:DeleteSecret",
                        "secretsmanager:RestoreSecret",
                        "secretsmanager:RotateSecret",
                    ],
                    resources=[secrets.connection_secrets_arn],
                ),
                # `--rotation-days` looks the function up; turning rotation on requires that the
                # caller may invoke the rotation function it names.
                iam.PolicyStatement(
                    actions=["lambda:GetFunction", "lambda:InvokeFunction"],
                    resources=[rotation_function.function_arn],
                ),
            ],
        )
        acknowledge(
            self.policy,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:"
            f"secret:{names.CONNECTION_SECRET_PREFIX}*]",
            "One operator-created secret per connection under gatehouse/connections/: the prefix is "
            "the only name known before the connection is registered.",
        )
