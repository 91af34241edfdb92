"""Slack's way in: `POST /slack/interactions`, the one route without IAM auth, and its function.

Slack cannot sign with SigV4, so the route is open and the function verifies Slack's own
signature (`names.SLACK_SIGNING_SECRET`, which no other function may read), refuses replays (a
conditional write in the replay table), acknowledges within 3 seconds and votes in an asynchronous
invocation of itself. It answers approvers with the bot token (`names.SLACK_SECRET`).
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from gatehouse import names
from infra.context import REPO_ROOT, InfraContext
from infra.functions import GatehouseFunction, grant_session_log, service_settings
from infra.nag import acknowledge
from infra.secrets import Secrets
from infra.tables import Tables

SLACK_CODE_DIR = REPO_ROOT / "functions" / "slack"
# The acknowledgement must leave within Slack's 3 s; the asynchronous vote may take longer
# (it resumes the session log and answers the state machine).
SLACK_TIMEOUT = Duration.seconds(20)
INTERACTIONS_PATH = "/slack/interactions"


def slack_environment(context: InfraContext) -> dict[str, str]:
    """The approval channel from cdk.json (`slackChannel`), when it names one."""
    return {names.ENV_SLACK_CHANNEL: context.slack_channel} if context.slack_channel else {}


def grant_operator_secret_read(role: iam.IRole, secret_name: str) -> None:
    """GetSecretValue on a secret the operator creates after deploy (README): named, not referenced.

    Secrets Manager appends "-" and six characters to the name; `?` matches exactly those.
    """
    arn = Stack.of(role).format_arn(
        service="secretsmanager",
        resource="secret",
        resource_name=f"{secret_name}-??????",
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[arn])
    )


class SlackFunction(Construct):
    """Verifies Slack interactions and records votes, with grants on exactly what that touches."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: InfraContext,
        layers: Sequence[lambda_.ILayerVersion],
        tables: Tables,
        secrets: Secrets,
        log_bucket: s3.IBucket,
        state_machine: sfn.IStateMachine,
    ) -> None:
        super().__init__(scope, construct_id)
        settings = service_settings(
            context=context,
            tables=tables,
            secrets=secrets,
            log_bucket=log_bucket,
            state_machine_arn=state_machine.state_machine_arn,
        )
        built = GatehouseFunction(
            self,
            "Slack",
            function_name=names.SLACK_FUNCTION,
            description="Gatehouse Slack interactions: verify, acknowledge, vote (asynchronously).",
            code_dir=SLACK_CODE_DIR,
            handler="handler.lambda_handler",
            service_name=names.SLACK_FUNCTION,
            layers=layers,
            environment={**settings.as_env(), **slack_environment(context)},
            context=context,
            timeout=SLACK_TIMEOUT,
        )
        self.function = built.function
        role = built.role
        # Votes are conditional updates of the request record; it is never created or deleted here.
        tables.requests.grant(role, "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DescribeTable")
        tables.connections.grant_read_data(role)
        tables.principals.grant_read_data(role)
        tables.slack_replay.grant(role, "dynamodb:PutItem")
        # The approval message shows the statement masked: the masking key, no connection secret.
        secrets.masking_key.grant_read(role)
        # The signing secret verifies Slack's requests (this function alone reads it); the bot
        # token answers the approver (the deny modal, ephemeral replies).
        grant_operator_secret_read(role, names.SLACK_SIGNING_SECRET)
        grant_operator_secret_read(role, names.SLACK_SECRET)
        stack = Stack.of(self)
        # A quorum or a denial answers the execution's task token.
        state_machine.grant_task_response(role)
        # The vote runs in an asynchronous invocation of this same function. The ARN is built from
        # the name: a reference to the function's own ARN would make its role depend on it.
        own_arn = stack.format_arn(
            service="lambda",
            resource="function",
            resource_name=names.SLACK_FUNCTION,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[own_arn])
        )
        # Each vote (or refused vote) is an event of the request's session: put and read, never delete.
        grant_session_log(
            role,
            log_bucket,
            "A vote continues the request's session under a new key (events/dt=<day>/session=<id>/"
            "<seq>.json), so objects are granted by the bucket's key wildcard (put and get, never delete).",
        )


def add_interactions_route(api: apigwv2.HttpApi, function: lambda_.IFunction) -> None:
    """The one route without IAM auth: Slack signs its requests, the function checks that."""
    [route] = api.add_routes(
        path=INTERACTIONS_PATH,
        methods=[apigwv2.HttpMethod.POST],
        integration=integrations.HttpLambdaIntegration("SlackFunction", function),
        authorizer=apigwv2.HttpNoneAuthorizer(),
    )
    acknowledge(
        route,
        "AwsSolutions-APIG4",
        "Slack cannot sign with SigV4: the function verifies Slack's HMAC signature (signing secret "
        "in Secrets Manager), refuses timestamps outside 5 minutes and replays, before anything else.",
    )
