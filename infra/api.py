"""The agent API: an HTTP API (IAM SigV4 on every route) in front of the `functions/api` function."""

from __future__ import annotations

import json
from collections.abc import Sequence

import jsii
from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from gatehouse import names
from infra.context import REPO_ROOT, InfraContext
from infra.functions import GatehouseFunction, grant_session_log, service_settings
from infra.nag import acknowledge
from infra.proxy import ProxyNetwork
from infra.secrets import Secrets
from infra.tables import Tables

API_CODE_DIR = REPO_ROOT / "functions" / "api"

# (method, path): the agent-facing routes of DESIGN.md. POST /slack/interactions is not here: Slack
# cannot sign with SigV4, so it gets its own function and its own (signature-checked) route.
ROUTES: tuple[tuple[apigwv2.HttpMethod, str], ...] = (
    (apigwv2.HttpMethod.POST, "/v1/requests"),
    (apigwv2.HttpMethod.GET, "/v1/requests"),
    (apigwv2.HttpMethod.GET, "/v1/requests/{id}"),
    (apigwv2.HttpMethod.GET, "/v1/connections"),
    (apigwv2.HttpMethod.POST, "/v1/proxy-tokens"),
    (apigwv2.HttpMethod.GET, "/v1/openapi.json"),
)

# Long polls (`GET /v1/requests/{id}?wait=N`) stay under API Gateway's 30 s integration limit.
API_TIMEOUT = Duration.seconds(29)

# One JSON line per request; `userArn` is the SigV4 caller, which is what an auditor asks first.
_ACCESS_LOG_FORMAT = {
    "requestId": "$context.requestId",
    "requestTime": "$context.requestTime",
    "sourceIp": "$context.identity.sourceIp",
    "userArn": "$context.identity.userArn",
    "routeKey": "$context.routeKey",
    "status": "$context.status",
    "protocol": "$context.protocol",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationLatency": "$context.integrationLatency",
    "integrationError": "$context.integrationErrorMessage",
    "authorizerError": "$context.authorizer.error",
}


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogSettings:
    def __init__(self, log_group: logs.ILogGroup) -> None:
        self._destination = apigwv2.LogGroupLogDestination(log_group)

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.custom(json.dumps(_ACCESS_LOG_FORMAT, separators=(",", ":")))


class ApiFunction(Construct):
    """The function behind every agent route, with read/write grants on exactly what it touches.

    It runs commands on the targets, so it runs in the network's private subnets; `security_group`
    is its own: the operator admits it on each target's port.
    """

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
        network: ProxyNetwork,
    ) -> None:
        super().__init__(scope, construct_id)
        settings = service_settings(
            context=context,
            tables=tables,
            secrets=secrets,
            log_bucket=log_bucket,
            proxy_token_key_secret=secrets.proxy_token_key.secret_arn,
        )
        built = GatehouseFunction(
            self,
            "Api",
            function_name=names.API_FUNCTION,
            description="Gatehouse agent API: classify, authorize, execute, mask, record.",
            code_dir=API_CODE_DIR,
            handler="handler.lambda_handler",
            service_name=names.API_FUNCTION,
            layers=layers,
            environment=settings.as_env(),
            context=context,
            timeout=API_TIMEOUT,
            reserved_concurrency=context.api_reserved_concurrency,
        )
        self.function = built.function
        role = built.role
        self.security_group = network.place_function(self.function, role, source="API function")

        # Request records are written and updated (votes, status), never deleted: expiry is TTL's.
        tables.requests.grant(
            role,
            "dynamodb:GetItem",
            "dynamodb:BatchGetItem",
            "dynamodb:Query",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:ConditionCheckItem",
            "dynamodb:DescribeTable",
            # GET /v1/requests lists the caller's requests (a filtered scan: the table holds days).
            "dynamodb:Scan",
        )
        # powertools' idempotency utility: conditional put (the lock), get, update (the answer, or
        # an expiry that frees the key of a failed run: gatehouse.api). Deletion is TTL's.
        tables.idempotency.grant(
            role,
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DescribeTable",
        )
        tables.connections.grant_read_data(role)
        tables.principals.grant_read_data(role)
        secrets.grant_read(role)
        secrets.grant_proxy_token_key_read(role)  # POST /v1/proxy-tokens signs with it
        # The session log is append-only for this function (see grant_session_log).
        grant_session_log(
            role,
            log_bucket,
            "Session log keys are events/dt=<day>/session=<id>/<seq>.json and manifests/...: new "
            "keys on every request, so objects are granted by the bucket's key wildcard (put and "
            "get, never delete).",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:"
            f"<AWS::AccountId>:secret:{names.CONNECTION_SECRET_PREFIX}*]",
            "Operators create one secret per connection under gatehouse/connections/ after deploy; "
            "the function reads that prefix only (and the masking key by its ARN).",
        )


class HttpApi(Construct):
    """Every route requires SigV4 (AWS_IAM); throttled and access-logged at the $default stage."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: InfraContext,
        function: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, construct_id)
        self.api = apigwv2.HttpApi(
            self,
            "Api",
            api_name=names.PREFIX,
            description="Gatehouse agent API (IAM SigV4).",
            default_authorizer=authorizers.HttpIamAuthorizer(),
            # The stage below is the $default one, with logging and throttling.
            create_default_stage=False,
        )
        integration = integrations.HttpLambdaIntegration("ApiFunction", function)
        for method, path in ROUTES:
            self.api.add_routes(path=path, methods=[method], integration=integration)

        self.access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=context.function_log_retention,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.stage = apigwv2.HttpStage(
            self,
            "DefaultStage",
            http_api=self.api,
            stage_name="$default",
            auto_deploy=True,
            detailed_metrics_enabled=True,
            throttle=apigwv2.ThrottleSettings(
                rate_limit=context.api_throttle_rate_limit,
                burst_limit=context.api_throttle_burst_limit,
            ),
            access_log_settings=_AccessLogSettings(self.access_logs),
        )

    @property
    def url(self) -> str:
        return self.stage.url
