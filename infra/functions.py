"""One way to build every Gatehouse function: same runtime and architecture as the layers, the
powertools environment, X-Ray tracing, its own log group with a retention, and its own role that
starts empty (no managed policies) so each caller grants exactly what its function needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.context import InfraContext
from infra.core_layer import ARCHITECTURE, ASSET_EXCLUDES, RUNTIME
from infra.nag import acknowledge


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
