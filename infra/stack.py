"""The Gatehouse stack: one construct per concern, composed here and nowhere else."""

from __future__ import annotations

from aws_cdk import CfnOutput, Fn, Stack
from constructs import Construct

from gatehouse import names
from infra.admin_access import AdminAccessPolicy
from infra.agent_access import AgentAccessPolicy
from infra.api import ApiFunction, HttpApi
from infra.approvals import ApprovalsFunction, ApprovalsNotifyFunction, ApprovalsStateMachine
from infra.audit_analytics import AuditAnalytics
from infra.audit_log import AccessLogsBucket, SessionLogBucket
from infra.context import InfraContext
from infra.core_layer import CoreLayers
from infra.monitoring import Monitoring
from infra.proxy import ProxyNetwork, ProxyService
from infra.rotation import RotationFunction
from infra.secrets import Secrets
from infra.slack import SlackFunction, add_interactions_route
from infra.tables import Tables


class GatehouseStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)
        context = InfraContext.from_node(self)

        access_logs = AccessLogsBucket(self, "AccessLogs", retention_days=context.log_retention_days)
        self.session_log = SessionLogBucket(
            self,
            "SessionLog",
            retention_days=context.log_retention_days,
            access_logs=access_logs.bucket,
        )
        self.tables = Tables(self, "Tables")
        self.secrets = Secrets(self, "Secrets")
        self.layers = CoreLayers(self, "Layers", context=context)
        # Whatever reaches a target runs in this network: the API and approvals functions, the proxy.
        self.proxy_network = ProxyNetwork(self, "ProxyNetwork", context=context)
        self.api_function = ApiFunction(
            self,
            "ApiFunction",
            context=context,
            layers=self.layers.layers,
            tables=self.tables,
            secrets=self.secrets,
            log_bucket=self.session_log.bucket,
            network=self.proxy_network,
        )
        self.http_api = HttpApi(self, "HttpApi", context=context, function=self.api_function.function)
        self.agent_access = AgentAccessPolicy(self, "AgentAccess", api=self.http_api.api)
        self.approvals_function = ApprovalsFunction(
            self,
            "ApprovalsFunction",
            context=context,
            layers=self.layers.layers,
            tables=self.tables,
            secrets=self.secrets,
            log_bucket=self.session_log.bucket,
            network=self.proxy_network,
        )
        self.approvals_notify_function = ApprovalsNotifyFunction(
            self,
            "ApprovalsNotifyFunction",
            context=context,
            layers=self.layers.layers,
            tables=self.tables,
            secrets=self.secrets,
            log_bucket=self.session_log.bucket,
        )
        self.approvals = ApprovalsStateMachine(
            self,
            "Approvals",
            function=self.approvals_function.function,
            notify_function=self.approvals_notify_function.function,
            log_retention=context.function_log_retention,
        )
        # A request that needs approval starts its execution from the API function.
        self.approvals.grant_start(self.api_function.function)
        self.api_function.function.add_environment(
            names.ENV_STATE_MACHINE_ARN, self.approvals.state_machine.state_machine_arn
        )
        self.slack_function = SlackFunction(
            self,
            "SlackFunction",
            context=context,
            layers=self.layers.layers,
            tables=self.tables,
            secrets=self.secrets,
            log_bucket=self.session_log.bucket,
            state_machine=self.approvals.state_machine,
        )
        add_interactions_route(self.http_api.api, self.slack_function.function)
        self.proxy = ProxyService(
            self,
            "Proxy",
            context=context,
            network=self.proxy_network,
            tables=self.tables,
            secrets=self.secrets,
            log_bucket=self.session_log.bucket,
            state_machine_arn=self.approvals.state_machine.state_machine_arn,
        )
        # A statement that needs approval starts its execution from the proxy, as from the API.
        self.approvals.grant_start(self.proxy.task_role)
        # Secrets Manager rotates the connection secrets with it (gatehouse.rotation).
        self.rotation = RotationFunction(
            self,
            "RotationFunction",
            context=context,
            layers=self.layers.layers,
            tables=self.tables,
            secrets=self.secrets,
            network=self.proxy_network,
        )
        self.admin_access = AdminAccessPolicy(
            self,
            "AdminAccess",
            tables=self.tables,
            secrets=self.secrets,
            rotation_function=self.rotation.function,
        )
        # POST /v1/proxy-tokens tells agents where the proxy listens.
        self.api_function.function.add_environment(names.ENV_PROXY_ENDPOINT, self.proxy.endpoint)
        self.audit_analytics = AuditAnalytics(
            self,
            "AuditAnalytics",
            log_bucket=self.session_log.bucket,
            access_logs=access_logs.bucket,
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            functions={
                "Api": self.api_function.function,
                "Approvals": self.approvals_function.function,
                "ApprovalsNotify": self.approvals_notify_function.function,
                "Slack": self.slack_function.function,
                "Rotation": self.rotation.function,
            },
            state_machine=self.approvals.state_machine,
            http_api=self.http_api.api,
        )

        CfnOutput(self, "ApiUrl", value=self.http_api.url, description="Base URL of the agent API.")
        CfnOutput(
            self,
            "AgentPolicyArn",
            value=self.agent_access.policy.managed_policy_arn,
            description="Attach to each agent's IAM role: execute-api:Invoke on the agent routes only.",
        )
        CfnOutput(
            self,
            "AdminPolicyArn",
            value=self.admin_access.policy.managed_policy_arn,
            description="Attach to whoever runs `gatehouse admin`: registry, connection secrets, rotation.",
        )
        CfnOutput(
            self,
            "SessionLogBucketName",
            value=self.session_log.bucket.bucket_name,
            description="The session log (Object Lock, COMPLIANCE).",
        )
        CfnOutput(
            self,
            "ProxyEndpoint",
            value=self.proxy.endpoint,
            description="host:port of the Postgres proxy (internal NLB) for agents' Postgres clients.",
        )
        CfnOutput(
            self,
            "VpcId",
            value=self.proxy_network.vpc.vpc_id,
            description="The VPC Gatehouse runs in: targets must be reachable from it.",
        )
        CfnOutput(
            self,
            "PrivateSubnetIds",
            value=Fn.join(
                ",",
                [
                    s.subnet_id
                    for s in self.proxy_network.vpc.select_subnets(
                        subnet_type=self.proxy_network.subnets.subnet_type,
                        subnets=self.proxy_network.subnets.subnets,
                    ).subnets
                ],
            ),
            description="The private subnets Gatehouse runs in (comma-separated): a database subnet group.",
        )
        CfnOutput(
            self,
            "ProxySecurityGroup",
            value=self.proxy.security_group.security_group_id,
            description="The proxy tasks' security group: admit it on each target database's port.",
        )
        CfnOutput(
            self,
            "ApiSecurityGroup",
            value=self.api_function.security_group.security_group_id,
            description="The API function's security group: admit it on each target's port.",
        )
        CfnOutput(
            self,
            "ApprovalsSecurityGroup",
            value=self.approvals_function.security_group.security_group_id,
            description="The approvals function's security group (runs approved commands): admit it "
            "on each target's port.",
        )
        CfnOutput(
            self,
            "AthenaWorkGroup",
            value=self.audit_analytics.workgroup.name,
            description="Athena workgroup for audit queries.",
        )
        CfnOutput(
            self,
            "AlarmTopicArn",
            value=self.monitoring.topic.topic_arn,
            description="SNS topic every alarm notifies: subscribe the on-call to it.",
        )
        CfnOutput(
            self,
            "RotationFunctionArn",
            value=self.rotation.function.function_arn,
            description="The rotation function: give it to `schedule_rotation` for each connection secret.",
        )
        CfnOutput(
            self,
            "RotationSecurityGroup",
            value=self.rotation.security_group.security_group_id,
            description="The rotation function's security group: admit it on each target database's port.",
        )
