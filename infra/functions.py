"""One way to build every Gatehouse function: same runtime and architecture as the layers, the
powertools environment, X-Ray tracing, its own log group with a retention, and its own role that
starts empty (no managed policies) so each caller grants exactly what its function needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_cdk import CfnElement, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from gatehouse.config import Settings
from infra.context import InfraContext
from infra.core_layer import ARCHITECTURE, ASSET_EXCLUDES, RUNTIME
from infra.nag import acknowledge

if TYPE_CHECKING:
    from infra.secrets import Secrets
    from infra.tables import Tables


# Python's level names (LOG_LEVEL, read by powertools) -> Lambda's advanced logging controls.
_LAMBDA_LOG_LEVELS = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARNING": "WARN",
    "ERROR": "ERROR",
    "CRITICAL": "FATAL",
}


class GatehouseFunction(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        function_name: str,
        code_dir: Path,
        handler: str,
        service_name: str,
        description: str,
        layers: Sequence[lambda_.ILayerVersion],
        environment: Mapping[str, str],
        context: InfraContext,
        timeout: Duration,
        memory_size: int = 1024,
        reserved_concurrency: int | None = None,
        log_level: str = "INFO",
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=context.function_log_retention,
            # Operational logs; the record that must survive is the session log in S3.
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{function_name}: its own grants only",
        )
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            function_name=function_name,
            description=description,
            code=lambda_.Code.from_asset(str(code_dir), exclude=ASSET_EXCLUDES),
            handler=handler,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            layers=list(layers),
            role=self.role,
            log_group=self.log_group,
            # Lambda's own lines (START, REPORT, errors) as JSON too, beside powertools' JSON lines,
            # so one Logs Insights query reads both; Lambda drops application lines below the level.
            logging_format=lambda_.LoggingFormat.JSON,
            application_log_level_v2=lambda_.ApplicationLogLevel[_LAMBDA_LOG_LEVELS[log_level]],
            system_log_level_v2=lambda_.SystemLogLevel.INFO,
            tracing=lambda_.Tracing.ACTIVE,
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrent_executions=reserved_concurrency,
            environment={
                **environment,
                "POWERTOOLS_SERVICE_NAME": service_name,
                "LOG_LEVEL": log_level,
            },
        )
        acknowledge(
            self.function,
            "AwsSolutions-L1",
            "Python 3.12 on purpose: the dependency layer is built for cp312 (make layer); the "
            "runtime moves together with that pip command.",
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments and PutTelemetryRecords support no resource-level permissions; "
            "the role's other statements name their resources.",
        )


def service_settings(
    *, context: InfraContext, tables: Tables, secrets: Secrets, log_bucket: s3.IBucket, **extra: Any
) -> Settings:
    """The settings every Gatehouse function reads (`gatehouse.config`), from the stack's resources."""
    return Settings(
        log_bucket=log_bucket.bucket_name,
        requests_table=tables.requests.table_name,
        connections_table=tables.connections.table_name,
        principals_table=tables.principals.table_name,
        masking_key_secret=secrets.masking_key.secret_arn,
        log_retention_days=context.log_retention_days,
        **extra,
    )


def grant_session_log(role: iam.IRole, log_bucket: s3.IBucket, reason: str) -> None:
    """Append to the session log and read it back: put (COMPLIANCE only), get, list; never delete.

    No s3:DeleteObject*, no s3:PutBucket*, no s3:BypassGovernanceRetention: a write may carry its
    own retain-until date (in COMPLIANCE mode it can only move later), never a weaker mode.
    `reason` says why this function needs the bucket's key wildcard (cdk-nag IAM5).
    """
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["s3:PutObject", "s3:PutObjectRetention"],
            resources=[log_bucket.arn_for_objects("*")],
            conditions={"StringEqualsIfExists": {"s3:object-lock-mode": "COMPLIANCE"}},
        )
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[log_bucket.arn_for_objects("*")])
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["s3:ListBucket"], resources=[log_bucket.bucket_arn])
    )
    stack = Stack.of(role)
    bucket = log_bucket.node.default_child
    assert isinstance(bucket, CfnElement)
    bucket_logical_id = stack.resolve(stack.get_logical_id(bucket))
    acknowledge(role, f"AwsSolutions-IAM5[Resource::<{bucket_logical_id}.Arn>/*]", reason)
