"""The Postgres proxy (`gatehouse proxy serve`) on Fargate, behind an internal Network Load Balancer.

    clients (proxyClientCidr) --TCP 5432--> NLB (internal, private subnets) --6432--> tasks
                                            health checks: HTTP GET /healthz on 8080

The NLB passes TCP through: a Postgres client asks for TLS inside the protocol (SSLRequest), so
only the proxy can answer it, with the certificate in `names.PROXY_TLS_SECRET`. Client addresses
are preserved, so the session log names the agent's address rather than the NLB's.

`ProxyNetwork` is the stack's VPC, where everything that reaches a target runs (the proxy's tasks,
the API function, the approvals function): a new one with private subnets and VPC endpoints for
every AWS API they call (isolated unless context `vpcNatGateways` asks for NAT), or an existing
one from context. `ProxyService` is the cluster, the service and its load balancer, its roles and
its autoscaling.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Size, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from gatehouse import names
from infra.context import REPO_ROOT, InfraContext
from infra.functions import grant_session_log, service_settings
from infra.nag import acknowledge
from infra.secrets import Secrets
from infra.tables import Tables

# The image is built from the repository root (it installs the package from pyproject.toml); the
# root's .dockerignore keeps the context to what the Dockerfile copies.
DOCKERFILE = "infra/Dockerfile.proxy"
CONTAINER_NAME = "proxy"
LISTENER_PORT = 5432  # what clients dial: Postgres's own port
HEALTH_PATH = "/healthz"

# Read by gatehouse.proxy.postgres.config; `sync` or `async` (see InfraContext.proxy_recording_mode).
ENV_PROXY_RECORDING_MODE = names.ENV_PROXY_RECORDING_MODE

# One task holds many idle client sessions and a few busy ones: a vCPU runs the decision path,
# the memory bounds the sessions' buffers (the proxy streams results, it never holds one whole).
TASK_CPU = 1024
TASK_MEMORY_MIB = 2048

CPU_TARGET_PERCENT = 60
# A connection lives for minutes or hours: scale out quickly, scale in slowly (each removed task
# drains its sessions).
SCALE_OUT_COOLDOWN = Duration.seconds(60)
SCALE_IN_COOLDOWN = Duration.minutes(5)
# The time SIGTERM leaves after the drain deadline: the last session-log chunk and the manifest.
STOP_MARGIN_SECONDS = 15

# ECR image pulls fetch their layers from S3, so S3 (a gateway endpoint) serves ECR too. The
# functions call Secrets Manager, Step Functions (StartExecution) and X-Ray (active tracing);
# Lambda writes their logs itself, outside the VPC.
_INTERFACE_ENDPOINTS = {
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "StepFunctions": ec2.InterfaceVpcEndpointAwsService.STEP_FUNCTIONS,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "XRay": ec2.InterfaceVpcEndpointAwsService.XRAY,
}

# What Lambda does with a function's role to attach it to the VPC (AWSLambdaVPCAccessExecutionRole,
# without its CloudWatch Logs grants, which each function has for its own log group).
_ENI_UNSCOPED_ACTIONS = ["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"]
_ENI_INTERFACE_ACTIONS = [
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
]


class ProxyNetwork(Construct):
    """The stack's VPC, where whatever reaches a target runs, and the CIDR the proxy's clients come from.

    A new VPC has private subnets in two zones and reaches AWS through VPC endpoints. With
    `vpcNatGateways` 0 (the default) the subnets are isolated: a process that holds database
    credentials gets no route to the internet, and its targets must be in the VPC or reachable by
    peering, a transit gateway or endpoints. With N > 0 there are public subnets with N NAT
    gateways and the private subnets route through them (public HTTP APIs, public Kubernetes
    endpoints); AWS traffic still goes through the endpoints. The endpoints' security group admits
    only the groups given to `allow_endpoints_from` (the proxy's tasks, the functions).

    An existing VPC (context `vpcId`) is used as it is: it must already reach S3, DynamoDB, Secrets
    Manager, Step Functions, CloudWatch Logs, X-Ray and ECR (endpoints or NAT), and no endpoint is
    added to it, since a second interface endpoint with private DNS for the same service cannot be
    created.
    """

    def __init__(self, scope: Construct, construct_id: str, *, context: InfraContext) -> None:
        super().__init__(scope, construct_id)
        self.client_cidr = context.proxy_client_cidr or context.vpc_cidr
        self.endpoints: list[ec2.InterfaceVpcEndpoint] = []
        if context.vpc_id is not None:
            self.vpc: ec2.IVpc = ec2.Vpc.from_vpc_attributes(
                self,
                "Vpc",
                vpc_id=context.vpc_id,
                vpc_cidr_block=context.vpc_cidr,
                availability_zones=list(context.vpc_availability_zones),
                private_subnet_ids=list(context.vpc_private_subnet_ids),
            )
            self.subnets = ec2.SubnetSelection(subnets=self.vpc.private_subnets)
            self.subnet_ids = [subnet.subnet_id for subnet in self.vpc.private_subnets]
            return
        self.flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=context.function_log_retention,
            removal_policy=RemovalPolicy.DESTROY,
        )
        nat = context.vpc_nat_gateways
        private_type = ec2.SubnetType.PRIVATE_WITH_EGRESS if nat else ec2.SubnetType.PRIVATE_ISOLATED
        subnet_configuration = [
            ec2.SubnetConfiguration(name="private", subnet_type=private_type, cidr_mask=20)
        ]
        if nat:
            # The NAT gateways' own subnets; nothing of Gatehouse runs in them.
            subnet_configuration.append(
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)
            )
        vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(context.vpc_cidr),
            max_azs=2,
            nat_gateways=nat,
            subnet_configuration=subnet_configuration,
            # Accepted and rejected flows: who reached the proxy and what it reached, beside the
            # session log's account of what was said.
            flow_logs={
                "All": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(self.flow_logs),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
        )
        self.vpc = vpc
        self.subnets = ec2.SubnetSelection(subnet_type=private_type)
        self.subnet_ids = vpc.select_subnets(subnet_type=private_type).subnet_ids
        # Gateway endpoints cost nothing; the session log (S3) and the tables (DynamoDB) go there.
        vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[self.subnets])
        vpc.add_gateway_endpoint(
            "DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB, subnets=[self.subnets]
        )
        for endpoint_id, service in _INTERFACE_ENDPOINTS.items():
            self.endpoints.append(
                vpc.add_interface_endpoint(
                    endpoint_id,
                    service=service,
                    subnets=self.subnets,
                    private_dns_enabled=True,
                    # Closed by default; allow_endpoints_from opens 443 to the given groups only.
                    open=False,
                )
            )

    def allow_endpoints_from(self, peer: ec2.IConnectable, source: str = "proxy") -> None:
        for endpoint in self.endpoints:
            endpoint.connections.allow_default_port_from(peer, f"HTTPS to the AWS API from the {source}")

    def place_function(
        self, function: lambda_.Function, role: iam.IRole, *, source: str
    ) -> ec2.SecurityGroup:
        """Run `function` in the private subnets with a security group of its own, and return it.

        The group's egress is open (a target's address is the registry's, known after deploy);
        the operator admits the group on each target's port. `role` gets what Lambda needs to
        attach the function's network interfaces.
        """
        scope = function.node.scope
        assert scope is not None
        security_group = ec2.SecurityGroup(
            scope,
            "SecurityGroup",
            vpc=self.vpc,
            # Security group descriptions allow no apostrophe.
            description=f"Gatehouse {source}: admit it on each target port",
            allow_all_outbound=True,
        )
        # The function is built by infra.functions.GatehouseFunction (every function the same way),
        # which knows no network: the VPC is set on its CloudFormation resource.
        resource = function.node.default_child
        assert isinstance(resource, lambda_.CfnFunction)
        resource.vpc_config = lambda_.CfnFunction.VpcConfigProperty(
            subnet_ids=self.subnet_ids,
            security_group_ids=[security_group.security_group_id],
        )
        stack = Stack.of(self)
        role.add_to_principal_policy(iam.PolicyStatement(actions=_ENI_UNSCOPED_ACTIONS, resources=["*"]))
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=_ENI_INTERFACE_ACTIONS,
                resources=[stack.format_arn(service="ec2", resource="network-interface", resource_name="*")],
            )
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:"
            "network-interface/*]",
            "Lambda attaches a VPC function through network interfaces it creates and names at run "
            "time; deleting and re-addressing them is limited to network interfaces of this account.",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments and PutTelemetryRecords, and Lambda's ec2:CreateNetworkInterface, "
            "DescribeNetworkInterfaces and DescribeSubnets support no resource-level permissions; the "
            "role's other statements name their resources.",
        )
        self.allow_endpoints_from(security_group, source)
        return security_group


class ProxyService(Construct):
    """The proxy's tasks, their load balancer and security groups, their roles and autoscaling.

    `security_group` is the tasks': the operator lets it reach each target database (an ingress
    rule on the database's own security group, port 5432 or the database's).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: InfraContext,
        network: ProxyNetwork,
        tables: Tables,
        secrets: Secrets,
        log_bucket: s3.IBucket,
        state_machine_arn: str,
    ) -> None:
        super().__init__(scope, construct_id)
        vpc = network.vpc
        drain = Duration.seconds(context.proxy_drain_seconds)

        # -- security groups ------------------------------------------------------------------
        # Egress is open: the target databases' addresses are the registry's, known after deploy.
        # The new VPC has no route to the internet, so "open" means the VPC, its peers and the
        # endpoints; the databases admit this group by their own rules.
        self.security_group = ec2.SecurityGroup(
            self,
            "TaskSecurityGroup",
            vpc=vpc,
            description="Gatehouse proxy tasks: clients on 6432, NLB health checks on 8080",
            allow_all_outbound=True,
        )
        self.load_balancer_security_group = ec2.SecurityGroup(
            self,
            "LoadBalancerSecurityGroup",
            vpc=vpc,
            description="Gatehouse proxy NLB: Postgres clients on 5432",
            allow_all_outbound=False,
        )
        self.load_balancer_security_group.add_ingress_rule(
            ec2.Peer.ipv4(network.client_cidr), ec2.Port.tcp(LISTENER_PORT), "Postgres clients"
        )
        # Client IPs are preserved, so the tasks see the clients themselves on the proxy port.
        self.security_group.add_ingress_rule(
            ec2.Peer.ipv4(network.client_cidr), ec2.Port.tcp(names.PROXY_PORT), "Postgres clients via the NLB"
        )
        for port, why in (
            (names.PROXY_PORT, "NLB to the proxy"),
            (names.PROXY_HEALTH_PORT, "NLB health checks"),
        ):
            self.load_balancer_security_group.connections.allow_to(
                self.security_group, ec2.Port.tcp(port), why
            )
        network.allow_endpoints_from(self.security_group)

        # -- roles -----------------------------------------------------------------------------
        stack = Stack.of(self)
        # Confused-deputy guard: only ECS tasks of this account may assume the role.
        self.task_role = iam.Role(
            self,
            "TaskRole",
            assumed_by=iam.ServicePrincipal(
                "ecs-tasks.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            ),
            description="Gatehouse proxy tasks: its secrets, its tables, the session log, approvals",
        )
        self._grant_task_role(tables, secrets, log_bucket)

        # -- task definition -------------------------------------------------------------------
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=context.function_log_retention,
            # Operational logs; the record that must survive is the session log in S3.
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "TaskDefinition",
            cpu=TASK_CPU,
            memory_limit_mib=TASK_MEMORY_MIB,
            runtime_platform=ecs.RuntimePlatform(
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
                cpu_architecture=ecs.CpuArchitecture.X86_64,
            ),
            task_role=self.task_role,
        )
        # The root filesystem is read-only; Python and the TLS context may want a scratch directory.
        self.task_definition.add_volume(name="tmp")
        settings = service_settings(
            context=context,
            tables=tables,
            secrets=secrets,
            log_bucket=log_bucket,
            state_machine_arn=state_machine_arn,
            proxy_token_key_secret=secrets.proxy_token_key.secret_arn,
        )
        self.container = self.task_definition.add_container(
            "Proxy",
            container_name=CONTAINER_NAME,
            image=ecs.ContainerImage.from_asset(
                str(REPO_ROOT),
                file=DOCKERFILE,
                platform=ecr_assets.Platform.LINUX_AMD64,
            ),
            environment={
                **settings.as_env(),
                names.ENV_PROXY_LISTEN: f"0.0.0.0:{names.PROXY_PORT}",
                names.ENV_PROXY_HEALTH: f"0.0.0.0:{names.PROXY_HEALTH_PORT}",
                names.ENV_PROXY_TLS_SECRET: names.PROXY_TLS_SECRET,
                names.ENV_PROXY_DRAIN_S: str(context.proxy_drain_seconds),
                ENV_PROXY_RECORDING_MODE: context.proxy_recording_mode.value,
                "POWERTOOLS_SERVICE_NAME": f"{names.PREFIX}-proxy",
                "LOG_LEVEL": "INFO",
            },
            port_mappings=[
                ecs.PortMapping(container_port=names.PROXY_PORT, protocol=ecs.Protocol.TCP),
                ecs.PortMapping(container_port=names.PROXY_HEALTH_PORT, protocol=ecs.Protocol.TCP),
            ],
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="proxy",
                log_group=self.log_group,
                # A slow CloudWatch must not stall the proxy: operational lines may be dropped,
                # the session log (S3) is written by the proxy itself.
                mode=ecs.AwsLogDriverMode.NON_BLOCKING,
                max_buffer_size=Size.mebibytes(25),
            ),
            # SIGTERM starts the drain (stop accepting, /healthz 503, sessions finish up to the
            # deadline); SIGKILL follows only after the deadline plus time to flush the log.
            stop_timeout=Duration.seconds(context.proxy_drain_seconds + STOP_MARGIN_SECONDS),
            readonly_root_filesystem=True,
            essential=True,
        )
        self.container.add_mount_points(
            # The task's own ephemeral storage, not a host directory shared with anyone.
            ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False)  # noqa: S108
        )
        acknowledge(
            self.task_definition.obtain_execution_role(),
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken supports no resource-level permission; the execution role's "
            "image pull names the asset repository and its log writes name the proxy's log group.",
        )
        acknowledge(
            self.task_definition,
            "AwsSolutions-ECS2",
            "The environment holds resource names and ARNs and tuning values only (gatehouse.config); "
            "every credential is read from Secrets Manager at run time by the task role.",
        )

        # -- cluster and service ---------------------------------------------------------------
        self.cluster = ecs.Cluster(
            self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENABLED
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=self.cluster,
            task_definition=self.task_definition,
            desired_count=context.proxy_desired_count,
            vpc_subnets=network.subnets,
            security_groups=[self.security_group],
            assign_public_ip=False,
            # A deployment starts the new tasks before draining the old ones: no capacity dip.
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            health_check_grace_period=Duration.seconds(60),
            # No shell into a process that holds database credentials.
            enable_execute_command=False,
        )

        # -- load balancer ---------------------------------------------------------------------
        self.load_balancer = elbv2.NetworkLoadBalancer(
            self,
            "LoadBalancer",
            vpc=vpc,
            internet_facing=False,
            vpc_subnets=network.subnets,
            security_groups=[self.load_balancer_security_group],
            cross_zone_enabled=True,
        )
        acknowledge(
            self.load_balancer,
            "AwsSolutions-ELB2",
            "NLB access logs are written for TLS listeners only; this TCP listener passes Postgres "
            "through (TLS is negotiated inside the protocol by the proxy), which records every "
            "session and statement in the session log; the VPC flow logs record the connections.",
        )
        listener = self.load_balancer.add_listener(
            "Postgres", port=LISTENER_PORT, protocol=elbv2.Protocol.TCP
        )
        self.target_group = listener.add_targets(
            "Proxy",
            port=names.PROXY_PORT,
            protocol=elbv2.Protocol.TCP,
            targets=[
                self.service.load_balancer_target(
                    container_name=CONTAINER_NAME, container_port=names.PROXY_PORT
                )
            ],
            preserve_client_ip=True,
            # A deregistered task gets no new connection for this long while its sessions finish.
            deregistration_delay=drain,
            health_check=elbv2.HealthCheck(
                protocol=elbv2.Protocol.HTTP,
                port=str(names.PROXY_HEALTH_PORT),
                path=HEALTH_PATH,
                # 503 while draining takes the task out of rotation before its sessions end.
                healthy_http_codes="200",
                interval=Duration.seconds(10),
                timeout=Duration.seconds(5),
                healthy_threshold_count=2,
                unhealthy_threshold_count=2,
            ),
        )
        self.endpoint = f"{self.load_balancer.load_balancer_dns_name}:{LISTENER_PORT}"

        # -- autoscaling -----------------------------------------------------------------------
        self.scaling = self.service.auto_scale_task_count(
            min_capacity=context.proxy_min_count, max_capacity=context.proxy_max_count
        )
        self.scaling.scale_on_cpu_utilization(
            "Cpu",
            target_utilization_percent=CPU_TARGET_PERCENT,
            scale_in_cooldown=SCALE_IN_COOLDOWN,
            scale_out_cooldown=SCALE_OUT_COOLDOWN,
        )
        self.connections_policy = self._scale_on_connections(context.proxy_connections_per_task)

    def _grant_task_role(self, tables: Tables, secrets: Secrets, log_bucket: s3.IBucket) -> None:
        role = self.task_role
        # The proxy creates approval requests and consumes approved ones (a conditional update);
        # never a delete: expiry is TTL's.
        tables.requests.grant(
            role,
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:ConditionCheckItem",
            "dynamodb:DescribeTable",
        )
        tables.connections.grant_read_data(role)
        tables.principals.grant_read_data(role)
        secrets.grant_read(role)  # the masking key and the connection secrets' prefix
        secrets.grant_proxy_token_key_read(role)  # verifies the clients' passwords
        secrets.grant_proxy_tls_read(role)
        grant_session_log(
            role,
            log_bucket,
            "A proxy session writes chunks under new keys (events/dt=<day>/session=<id>/<seq>.json) "
            "and a manifest at its end, so objects are granted by the bucket's key wildcard (put and "
            "get, never delete).",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:"
            f"<AWS::AccountId>:secret:{names.CONNECTION_SECRET_PREFIX}*]",
            "The proxy logs in to the connection a client names: one operator-created secret per "
            "connection under gatehouse/connections/, read by that prefix only.",
        )

    def _scale_on_connections(self, per_task: int) -> appscaling.CfnScalingPolicy:
        """Target tracking on client connections per running task.

        The NLB reports ActiveFlowCount per load balancer (and per zone), not per target, and CDK's
        target tracking takes a single metric only; Application Auto Scaling accepts metric math in
        a customized metric, so the policy is written at the CloudFormation level: the NLB's flows
        divided by the service's running tasks (Container Insights).
        """
        lb_full_name = self.load_balancer.load_balancer_full_name
        scalable_target = self.scaling.node.find_child("Target")
        assert isinstance(scalable_target, appscaling.ScalableTarget)
        return appscaling.CfnScalingPolicy(
            self,
            "ConnectionsScaling",
            policy_name=f"{Stack.of(self).stack_name}-proxy-connections-per-task",
            policy_type="TargetTrackingScaling",
            scaling_target_id=scalable_target.scalable_target_id,
            target_tracking_scaling_policy_configuration=appscaling.CfnScalingPolicy.TargetTrackingScalingPolicyConfigurationProperty(
                target_value=float(per_task),
                scale_in_cooldown=SCALE_IN_COOLDOWN.to_seconds(),
                scale_out_cooldown=SCALE_OUT_COOLDOWN.to_seconds(),
                customized_metric_specification=appscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                    metrics=[
                        _metric_query(
                            "flows",
                            "AWS/NetworkELB",
                            "ActiveFlowCount",
                            {"LoadBalancer": lb_full_name},
                        ),
                        _metric_query(
                            "tasks",
                            "ECS/ContainerInsights",
                            "RunningTaskCount",
                            {
                                "ClusterName": self.cluster.cluster_name,
                                "ServiceName": self.service.service_name,
                            },
                        ),
                        appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
                            id="per_task",
                            expression="flows / tasks",
                            label="Client connections per running proxy task",
                            return_data=True,
                        ),
                    ]
                ),
            ),
        )


def _metric_query(
    query_id: str, namespace: str, metric_name: str, dimensions: dict[str, str]
) -> appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty:
    return appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
        id=query_id,
        metric_stat=appscaling.CfnScalingPolicy.TargetTrackingMetricStatProperty(
            metric=appscaling.CfnScalingPolicy.TargetTrackingMetricProperty(
                namespace=namespace,
                metric_name=metric_name,
                dimensions=[
                    appscaling.CfnScalingPolicy.TargetTrackingMetricDimensionProperty(name=name, value=value)
                    for name, value in dimensions.items()
                ],
            ),
            stat="Average",
        ),
        return_data=False,
    )
