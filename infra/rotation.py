"""The rotation function: Secrets Manager's rotation of the Postgres connection secrets
(`gatehouse/connections/<name>`, gatehouse.rotation), single-user: each connection's own role
changes its own password, so the function holds no superuser credential.

It runs in the network's private subnets, because it logs in to the databases, with a security
group of its own that the operator admits on each database's port (the RotationSecurityGroup
output). Rotation is turned on per secret, after deploy, with gatehouse.rotation.schedule_rotation
(the admin command): the RotationFunctionArn output names the function to give it.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from gatehouse import names
from infra.context import REPO_ROOT, InfraContext
from infra.functions import GatehouseFunction
from infra.nag import acknowledge
from infra.proxy import ProxyNetwork
from infra.secrets import Secrets
from infra.tables import Tables

ROTATION_CODE_DIR = REPO_ROOT / "functions" / "rotation"
# A step is a DescribeSecret, a read or two, and at most one login and one statement, each login
# bounded by gatehouse.rotation.LOGIN_TIMEOUT_S; Secrets Manager retries a step that timed out.
ROTATION_TIMEOUT = Duration.seconds(60)
ROTATION_MEMORY_MB = 512

# What the four steps call on a connection secret (gatehouse.rotation), and nothing else.
SECRET_ACTIONS = [
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
]


class RotationFunction(Construct):
    """`function` (names.ROTATION_FUNCTION), its `role` and its `security_group`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: InfraContext,
        layers: Sequence[lambda_.ILayerVersion],
        tables: Tables,
        secrets: Secrets,
        network: ProxyNetwork,
    ) -> None:
        super().__init__(scope, construct_id)
        built = GatehouseFunction(
            self,
            "Rotation",
            function_name=names.ROTATION_FUNCTION,
            description="Gatehouse: rotates the Postgres connection secrets (Secrets Manager's four steps).",
            code_dir=ROTATION_CODE_DIR,
            handler="handler.lambda_handler",
            service_name=names.ROTATION_FUNCTION,
            layers=layers,
            environment={names.ENV_CONNECTIONS_TABLE: tables.connections.table_name},
            context=context,
            timeout=ROTATION_TIMEOUT,
            memory_size=ROTATION_MEMORY_MB,
        )
        self.function = built.function
        self.role = built.role
        # Private subnets, its own group, ENI permissions inline, and HTTPS to the interface endpoints
        # (Secrets Manager); DynamoDB is a gateway endpoint.
        self.security_group = network.place_function(self.function, self.role, source="rotation function")

        self.role.add_to_principal_policy(
            iam.PolicyStatement(actions=SECRET_ACTIONS, resources=[secrets.connection_secrets_arn])
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:"
            f"<AWS::AccountId>:secret:{names.CONNECTION_SECRET_PREFIX}*]",
            "Operators create one secret per connection under gatehouse/connections/ after deploy; "
            "the function rotates secrets under that prefix only, and checks each against the registry.",
        )
        # The registry names each connection's address and secret: one item read per step.
        self.role.add_to_principal_policy(
            iam.PolicyStatement(actions=["dynamodb:GetItem"], resources=[tables.connections.table_arn])
        )
        # GetRandomPassword acts on no resource (it only returns random characters), so IAM
        # accepts no resource but "*" for it: in a policy of its own, so the reason stands beside it.
        random_password = iam.Policy(
            self,
            "RandomPassword",
            statements=[iam.PolicyStatement(actions=["secretsmanager:GetRandomPassword"], resources=["*"])],
        )
        random_password.attach_to_role(self.role)
        acknowledge(
            random_password,
            "AwsSolutions-IAM5[Resource::*]",
            "secretsmanager:GetRandomPassword supports no resource-level permissions: it reads and "
            "changes nothing, it returns random characters for createSecret's new password.",
        )

        # Secrets Manager invokes the function; only for secrets of this account.
        self.function.add_permission(
            "SecretsManager",
            principal=iam.ServicePrincipal("secretsmanager.amazonaws.com"),
            action="lambda:InvokeFunction",
            source_account=Stack.of(self).account,
        )
