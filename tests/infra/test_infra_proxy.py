"""The Postgres proxy on Fargate: an internal NLB in private subnets, health checks that follow the
drain, a task role limited to its secrets, tables, the session log and approvals, autoscaling on
connections and CPU, and an image built from the package alone."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template

from gatehouse import names
from gatehouse.config import Settings
from infra.context import ContextError, InfraContext, RecordingMode
from infra.proxy import ENV_PROXY_RECORDING_MODE, ProxyNetwork, ProxyService
from infra.secrets import Secrets
from infra.tables import Tables

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized

DEFAULTS = InfraContext()


def _key(synthesized: Synthesized, type_: str) -> str:
    [key] = [k for k, v in synthesized.resources.items() if v["Type"] == type_ and k.startswith("Proxy")]
    return key


def _props(synthesized: Synthesized, type_: str) -> dict[str, Any]:
    return synthesized.resources[_key(synthesized, type_)]["Properties"]


def _container(synthesized: Synthesized) -> dict[str, Any]:
    [container] = _props(synthesized, "AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    return container


def _role_statements(synthesized: Synthesized, role_arn: dict[str, Any]) -> list[dict[str, Any]]:
    role_key = role_arn["Fn::GetAtt"][0]
    statements = []
    for policy in synthesized.resources_of_type("AWS::IAM::Policy").values():
        if {"Ref": role_key} in policy["Properties"]["Roles"]:
            statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return statements


def _task_statements(synthesized: Synthesized) -> list[dict[str, Any]]:
    return _role_statements(synthesized, _props(synthesized, "AWS::ECS::TaskDefinition")["TaskRoleArn"])


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _ref(synthesized: Synthesized, type_: str, **properties: Any) -> dict[str, str]:
    [key] = [
        key
        for key, value in synthesized.resources_of_type(type_).items()
        if all(value["Properties"].get(name) == wanted for name, wanted in properties.items())
    ]
    return {"Ref": key}


def test_the_proxy_runs_on_fargate_behind_an_internal_nlb_in_isolated_subnets(synthesized: Synthesized):
    service = _props(synthesized, "AWS::ECS::Service")
    nlb = _props(synthesized, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    subnets = {key: value for key, value in synthesized.resources_of_type("AWS::EC2::Subnet").items()}

    assert service["LaunchType"] == "FARGATE"
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    assert nlb["Type"] == "network"
    assert nlb["Scheme"] == "internal"
    assert {ref["Ref"] for ref in nlb["Subnets"]} == set(subnets)
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["Subnets"] == nlb["Subnets"]
    assert len(subnets) == 2  # two zones
    # Private means no way out to the internet: no gateway, no NAT, no public address.
    for type_ in ("AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::EIP"):
        assert not synthesized.resources_of_type(type_), type_
    assert all(not subnet["Properties"].get("MapPublicIpOnLaunch") for subnet in subnets.values())
    routes = synthesized.resources_of_type("AWS::EC2::Route").values()
    assert not [r for r in routes if r["Properties"].get("DestinationCidrBlock") == "0.0.0.0/0"]


def test_the_vpc_reaches_aws_through_endpoints_open_to_the_proxy_and_the_functions_only(
    synthesized: Synthesized,
):
    endpoints = synthesized.resources_of_type("AWS::EC2::VPCEndpoint").values()
    task_sg = {"Fn::GetAtt": [_task_sg_key(synthesized), "GroupId"]}
    # The functions that reach targets run in the VPC too, each with a group the outputs name
    # (ApiSecurityGroup, ApprovalsSecurityGroup, ...); ProxySecurityGroup is the tasks' own.
    outputs = synthesized.template.to_json()["Outputs"]
    allowed = sorted({json.dumps(v["Value"]) for k, v in outputs.items() if k.endswith("SecurityGroup")})
    assert json.dumps(task_sg) in allowed and len(allowed) >= 3

    def service_of(endpoint: dict[str, Any]) -> str:
        name = json.dumps(endpoint["Properties"]["ServiceName"])
        return re.findall(r"\.([a-z0-9.-]+?)\"", name)[-1]

    gateways = {service_of(e) for e in endpoints if e["Properties"].get("VpcEndpointType") == "Gateway"}
    interfaces = [e for e in endpoints if e["Properties"].get("VpcEndpointType") == "Interface"]
    assert gateways == {"s3", "dynamodb"}
    assert {service_of(e) for e in interfaces} == {
        "secretsmanager",
        "states",
        "logs",
        "ecr.api",
        "ecr.dkr",
        "xray",
    }
    for endpoint in interfaces:
        assert endpoint["Properties"]["PrivateDnsEnabled"] is True
        [group] = endpoint["Properties"]["SecurityGroupIds"]
        group_key = group["Fn::GetAtt"][0]
        assert "SecurityGroupIngress" not in synthesized.resources[group_key]["Properties"]
        ingress = [
            rule["Properties"]
            for rule in synthesized.resources_of_type("AWS::EC2::SecurityGroupIngress").values()
            if rule["Properties"]["GroupId"] == {"Fn::GetAtt": [group_key, "GroupId"]}
        ]
        assert sorted(
            (r["FromPort"], r["ToPort"], json.dumps(r["SourceSecurityGroupId"])) for r in ingress
        ) == sorted((443, 443, group) for group in allowed)


def test_the_vpc_records_its_flows(synthesized: Synthesized):
    flow_log = _props(synthesized, "AWS::EC2::FlowLog")

    assert flow_log["TrafficType"] == "ALL"
    assert flow_log["LogDestinationType"] == "cloud-watch-logs"


def test_clients_dial_5432_and_reach_the_proxy_on_6432_with_their_own_address(synthesized: Synthesized):
    listener = _props(synthesized, "AWS::ElasticLoadBalancingV2::Listener")
    group_key = _key(synthesized, "AWS::ElasticLoadBalancingV2::TargetGroup")
    group = synthesized.resources[group_key]["Properties"]
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    [binding] = _props(synthesized, "AWS::ECS::Service")["LoadBalancers"]

    assert listener["Port"] == 5432
    assert listener["Protocol"] == "TCP"  # TLS is the proxy's: Postgres asks for it in-protocol
    assert listener["DefaultActions"] == [{"TargetGroupArn": {"Ref": group_key}, "Type": "forward"}]
    assert group["Port"] == names.PROXY_PORT
    assert group["Protocol"] == "TCP"
    assert group["TargetType"] == "ip"
    assert binding == {
        "ContainerName": "proxy",
        "ContainerPort": names.PROXY_PORT,
        "TargetGroupArn": {"Ref": group_key},
    }
    assert attributes["preserve_client_ip.enabled"] == "true"


def test_health_checks_ask_the_proxy_whether_it_accepts(synthesized: Synthesized):
    group = _props(synthesized, "AWS::ElasticLoadBalancingV2::TargetGroup")

    assert group["HealthCheckProtocol"] == "HTTP"
    assert group["HealthCheckPort"] == str(names.PROXY_HEALTH_PORT)
    assert group["HealthCheckPath"] == "/healthz"
    # 503 (draining) must count as unhealthy: 200 only.
    assert group["Matcher"] == {"HttpCode": "200"}


def test_a_stopping_task_drains_before_it_is_killed(synthesized: Synthesized):
    group = _props(synthesized, "AWS::ElasticLoadBalancingV2::TargetGroup")
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    container = _container(synthesized)
    env = {e["Name"]: e["Value"] for e in container["Environment"]}

    drain = int(env[names.ENV_PROXY_DRAIN_S])
    assert drain == DEFAULTS.proxy_drain_seconds
    assert int(attributes["deregistration_delay.timeout_seconds"]) == drain
    # SIGKILL comes stopTimeout after SIGTERM: after the drain deadline, within Fargate's 120 s.
    assert drain < container["StopTimeout"] <= 120


def test_the_container_gets_the_service_settings_and_the_proxy_settings(synthesized: Synthesized):
    container = _container(synthesized)
    env = {e["Name"]: e["Value"] for e in container["Environment"]}

    assert set(Settings(log_bucket="x").as_env()) <= set(env)
    assert env[names.ENV_LOG_BUCKET] == _ref(synthesized, "AWS::S3::Bucket", ObjectLockEnabled=True)
    assert env[names.ENV_STATE_MACHINE_ARN] == _ref(
        synthesized, "AWS::StepFunctions::StateMachine", StateMachineName=names.STATE_MACHINE_NAME
    )
    assert env[names.ENV_PROXY_TOKEN_KEY_SECRET] == _ref(
        synthesized, "AWS::SecretsManager::Secret", Name=names.PROXY_TOKEN_KEY_SECRET
    )
    assert env[names.ENV_PROXY_LISTEN] == f"0.0.0.0:{names.PROXY_PORT}"
    assert env[names.ENV_PROXY_HEALTH] == f"0.0.0.0:{names.PROXY_HEALTH_PORT}"
    assert env[names.ENV_PROXY_TLS_SECRET] == names.PROXY_TLS_SECRET
    assert env[ENV_PROXY_RECORDING_MODE] == "sync"
    literal = {key: value if isinstance(value, str) else "token" for key, value in env.items()}
    assert Settings.from_env(literal).state_machine_arn == "token"
    assert {m["ContainerPort"] for m in container["PortMappings"]} == {
        names.PROXY_PORT,
        names.PROXY_HEALTH_PORT,
    }
    assert container["ReadonlyRootFilesystem"] is True
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"


def test_container_logs_are_kept_for_the_context_retention(synthesized: Synthesized):
    container = _container(synthesized)
    group_key = container["LogConfiguration"]["Options"]["awslogs-group"]["Ref"]

    assert synthesized.resources[group_key]["Properties"]["RetentionInDays"] == 90  # cdk.json


def test_the_task_role_grants_name_their_resources_and_never_delete(synthesized: Synthesized):
    statements = _task_statements(synthesized)
    actions = {action for s in statements for action in _as_list(s["Action"])}

    assert statements and all(s["Effect"] == "Allow" for s in statements)
    for statement in statements:
        if any(
            a.split(":")[0] in {"s3", "secretsmanager", "dynamodb", "states"}
            for a in _as_list(statement["Action"])
        ):
            assert "*" not in _as_list(statement["Resource"]), statement
    assert not [a for a in actions if "*" in a or "Delete" in a or "Bypass" in a]
    assert {a for a in actions if a.startswith("s3:")} == {
        "s3:PutObject",
        "s3:PutObjectRetention",
        "s3:GetObject",
        "s3:ListBucket",
    }
    [put] = [s for s in statements if "s3:PutObject" in _as_list(s["Action"])]
    assert put["Condition"] == {"StringEqualsIfExists": {"s3:object-lock-mode": "COMPLIANCE"}}


def test_the_task_role_reads_its_four_secrets_only(synthesized: Synthesized):
    [statement] = [
        s
        for s in _task_statements(synthesized)
        if any(a.startswith("secretsmanager:") for a in _as_list(s["Action"]))
    ]
    resources = _as_list(statement["Resource"])

    def secret(name: str) -> dict[str, str]:
        return _ref(synthesized, "AWS::SecretsManager::Secret", Name=name)

    assert sorted(_as_list(statement["Action"])) == [
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
    ]
    for name in (names.MASKING_KEY_SECRET, names.PROXY_TOKEN_KEY_SECRET, names.PROXY_TLS_SECRET):
        assert secret(name) in resources
    [prefix] = [r for r in resources if "Fn::Join" in r]
    assert prefix["Fn::Join"][1][-1] == f":secret:{names.CONNECTION_SECRET_PREFIX}*"
    assert len(resources) == 4
    assert names.SLACK_SECRET not in json.dumps(_task_statements(synthesized))


def test_the_task_role_writes_requests_reads_registries_and_starts_approvals(synthesized: Synthesized):
    statements = _task_statements(synthesized)

    def actions_on(resource: dict[str, Any]) -> set[str]:
        return {a for s in statements if resource in _as_list(s["Resource"]) for a in _as_list(s["Action"])}

    def table(name: str) -> dict[str, Any]:
        return {"Fn::GetAtt": [_ref(synthesized, "AWS::DynamoDB::Table", TableName=name)["Ref"], "Arn"]}

    requests = actions_on(table(names.REQUESTS_TABLE))
    assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"} <= requests
    assert "dynamodb:Scan" not in requests
    for registry in (names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE):
        assert "dynamodb:GetItem" in actions_on(table(registry))
        assert not {"dynamodb:PutItem", "dynamodb:UpdateItem"} & actions_on(table(registry))
    state_machine = _ref(
        synthesized, "AWS::StepFunctions::StateMachine", StateMachineName=names.STATE_MACHINE_NAME
    )
    assert actions_on(state_machine) == {"states:StartExecution"}
    touched = {json.dumps(r) for s in statements for r in _as_list(s["Resource"])}
    for other in (names.IDEMPOTENCY_TABLE, names.SLACK_REPLAY_TABLE):
        assert json.dumps(table(other)) not in touched


def test_the_task_role_is_for_ecs_tasks_of_this_account_only(synthesized: Synthesized):
    role_key = _props(synthesized, "AWS::ECS::TaskDefinition")["TaskRoleArn"]["Fn::GetAtt"][0]
    [trust] = synthesized.resources[role_key]["Properties"]["AssumeRolePolicyDocument"]["Statement"]

    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert "ManagedPolicyArns" not in synthesized.resources[role_key]["Properties"]


def test_the_execution_role_pulls_the_image_and_writes_logs_only(synthesized: Synthesized):
    statements = _role_statements(
        synthesized, _props(synthesized, "AWS::ECS::TaskDefinition")["ExecutionRoleArn"]
    )
    actions = {a for s in statements for a in _as_list(s["Action"])}

    assert actions == {
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:GetAuthorizationToken",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    wildcards = [s for s in statements if "*" in _as_list(s["Resource"])]
    assert [s["Action"] for s in wildcards] == ["ecr:GetAuthorizationToken"]


def _task_sg_key(synthesized: Synthesized) -> str:
    [group] = _props(synthesized, "AWS::ECS::Service")["NetworkConfiguration"]["AwsvpcConfiguration"][
        "SecurityGroups"
    ]
    return str(group["Fn::GetAtt"][0])


def test_only_the_client_cidr_reaches_the_listener_and_the_proxy_port(synthesized: Synthesized):
    vpc_cidr = _props(synthesized, "AWS::EC2::VPC")["CidrBlock"]
    [nlb_group] = _props(synthesized, "AWS::ElasticLoadBalancingV2::LoadBalancer")["SecurityGroups"]
    nlb_sg = synthesized.resources[nlb_group["Fn::GetAtt"][0]]["Properties"]
    task_key = _task_sg_key(synthesized)
    task_sg = synthesized.resources[task_key]["Properties"]
    task_rules = [
        rule["Properties"]
        for rule in synthesized.resources_of_type("AWS::EC2::SecurityGroupIngress").values()
        if rule["Properties"]["GroupId"] == {"Fn::GetAtt": [task_key, "GroupId"]}
    ]

    assert vpc_cidr == DEFAULTS.vpc_cidr
    assert [(r["CidrIp"], r["FromPort"], r["ToPort"]) for r in nlb_sg["SecurityGroupIngress"]] == [
        (vpc_cidr, 5432, 5432)
    ]
    assert [(r["CidrIp"], r["FromPort"], r["ToPort"]) for r in task_sg["SecurityGroupIngress"]] == [
        (vpc_cidr, names.PROXY_PORT, names.PROXY_PORT)
    ]
    # The health port is the load balancer's alone.
    assert {(r["FromPort"], json.dumps(r["SourceSecurityGroupId"])) for r in task_rules} == {
        (names.PROXY_PORT, json.dumps(nlb_group)),
        (names.PROXY_HEALTH_PORT, json.dumps(nlb_group)),
    }


def test_autoscaling_tracks_cpu_and_connections_per_task(synthesized: Synthesized):
    target_key = _key(synthesized, "AWS::ApplicationAutoScaling::ScalableTarget")
    target = synthesized.resources[target_key]["Properties"]
    policies = [
        p["Properties"]
        for p in synthesized.resources_of_type("AWS::ApplicationAutoScaling::ScalingPolicy").values()
        if p["Properties"]["ScalingTargetId"] == {"Ref": target_key}
    ]
    nlb_key = _key(synthesized, "AWS::ElasticLoadBalancingV2::LoadBalancer")

    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (
        DEFAULTS.proxy_min_count,
        DEFAULTS.proxy_max_count,
    )
    assert _props(synthesized, "AWS::ECS::Service")["DesiredCount"] == DEFAULTS.proxy_desired_count
    assert {p["PolicyType"] for p in policies} == {"TargetTrackingScaling"}
    configs = [p["TargetTrackingScalingPolicyConfiguration"] for p in policies]
    [cpu] = [c for c in configs if "PredefinedMetricSpecification" in c]
    assert cpu["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ECSServiceAverageCPUUtilization"
    assert cpu["TargetValue"] == 60
    [connections] = [c for c in configs if "CustomizedMetricSpecification" in c]
    assert connections["TargetValue"] == DEFAULTS.proxy_connections_per_task
    queries = {q["Id"]: q for q in connections["CustomizedMetricSpecification"]["Metrics"]}
    flows = queries["flows"]["MetricStat"]["Metric"]
    assert (flows["Namespace"], flows["MetricName"]) == ("AWS/NetworkELB", "ActiveFlowCount")
    assert flows["Dimensions"] == [
        {"Name": "LoadBalancer", "Value": {"Fn::GetAtt": [nlb_key, "LoadBalancerFullName"]}}
    ]
    tasks = queries["tasks"]["MetricStat"]["Metric"]
    assert (tasks["Namespace"], tasks["MetricName"]) == ("ECS/ContainerInsights", "RunningTaskCount")
    # Exactly one series comes back: the ratio.
    assert [q["Id"] for q in queries.values() if q["ReturnData"]] == ["per_task"]
    assert queries["per_task"]["Expression"] == "flows / tasks"
    # RunningTaskCount exists only with Container Insights on.
    settings = _props(synthesized, "AWS::ECS::Cluster")["ClusterSettings"]
    assert {"Name": "containerInsights", "Value": "enabled"} in settings


def test_outputs_name_the_endpoint_and_the_security_group(
    template_json: dict[str, Any], synthesized: Synthesized
):
    outputs = template_json["Outputs"]
    nlb_key = _key(synthesized, "AWS::ElasticLoadBalancingV2::LoadBalancer")

    assert outputs["ProxyEndpoint"]["Value"] == {
        "Fn::Join": ["", [{"Fn::GetAtt": [nlb_key, "DNSName"]}, ":5432"]]
    }
    assert outputs["ProxySecurityGroup"]["Value"] == {"Fn::GetAtt": [_task_sg_key(synthesized), "GroupId"]}


def test_the_tls_secret_is_a_placeholder_for_the_operators_certificate(synthesized: Synthesized):
    [secret] = [
        s
        for s in synthesized.resources_of_type("AWS::SecretsManager::Secret").values()
        if s["Properties"]["Name"] == names.PROXY_TLS_SECRET
    ]

    assert json.loads(secret["Properties"]["SecretString"]) == {"certificate": "", "private_key": ""}
    assert "GenerateSecretString" not in secret["Properties"]


def _image_context(synthesized: Synthesized) -> Path:
    image = json.dumps(_container(synthesized)["Image"])
    [asset_hash] = re.findall(r":([0-9a-f]{64})\"", image)
    # The staged directory is named by the assets manifest: CDK appends the source directory's
    # "extension", so a checkout in /tmp/tmp.Ab12 stages asset.<hash>.Ab12.
    outdir = synthesized.template_path.parent
    manifest = json.loads(
        (outdir / synthesized.template_path.name.replace(".template.json", ".assets.json")).read_text()
    )
    return outdir / manifest["dockerImages"][asset_hash]["source"]["directory"]


def test_the_image_is_built_from_the_package_and_nothing_else(synthesized: Synthesized):
    context = _image_context(synthesized)
    shipped = {path.relative_to(context).as_posix() for path in context.rglob("*") if path.is_file()}

    assert {
        "pyproject.toml",
        "README.md",
        "infra/Dockerfile.proxy",
        "layers/core/python/gatehouse/names.py",
    } <= shipped
    outside = {p for p in shipped if not p.startswith("layers/core/python/gatehouse/")}
    assert outside == {"pyproject.toml", "README.md", "infra/Dockerfile.proxy", ".dockerignore"}
    assert not [p for p in shipped if "__pycache__" in p or p.endswith(".pyc")]


def test_the_dockerfile_installs_the_package_and_runs_the_proxy_unprivileged(synthesized: Synthesized):
    dockerfile = (_image_context(synthesized) / "infra" / "Dockerfile.proxy").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith(("#", " "))]

    assert instructions[0].startswith("FROM python:3.12-slim")
    assert any(re.match(r"RUN pip install .* \.( |$)", line) for line in instructions)
    [user] = [line for line in instructions if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in {"0", "root"}
    assert instructions.index(user) < instructions.index('CMD ["gatehouse", "proxy", "serve"]')
    assert f"EXPOSE {names.PROXY_PORT} {names.PROXY_HEALTH_PORT}" in instructions


# -- an existing VPC, and the context values ---------------------------------------------------


def _context(**values: object) -> InfraContext:
    return InfraContext.from_node(App(context=dict(values)))


EXISTING_VPC = {
    "vpcId": "vpc-0123456789abcdef0",
    "vpcCidr": "172.31.0.0/16",
    "vpcAvailabilityZones": "eu-west-1a,eu-west-1b",
    "vpcPrivateSubnetIds": '["subnet-0aaa", "subnet-0bbb"]',
}


def test_an_existing_vpc_is_used_as_it_is(tmp_path: Path):
    context = _context(**EXISTING_VPC, proxyClientCidr="172.31.8.0/24", proxyRecordingMode="async")
    app = App(outdir=str(tmp_path))
    stack = Stack(app, "Probe")
    network = ProxyNetwork(stack, "ProxyNetwork", context=context)
    ProxyService(
        stack,
        "Proxy",
        context=context,
        network=network,
        tables=Tables(stack, "Tables"),
        secrets=Secrets(stack, "Secrets"),
        log_bucket=s3.Bucket(stack, "Log"),
        state_machine_arn="arn:aws:states:eu-west-1:123456789012:stateMachine:gatehouse-approvals",
    )

    resources = Template.from_stack(stack).to_json()["Resources"]

    def of(type_: str) -> list[dict[str, Any]]:
        return [r["Properties"] for r in resources.values() if r["Type"] == type_]

    assert not of("AWS::EC2::VPC") and not of("AWS::EC2::VPCEndpoint") and not of("AWS::EC2::FlowLog")
    [nlb] = of("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert nlb["Subnets"] == ["subnet-0aaa", "subnet-0bbb"]
    [service] = of("AWS::ECS::Service")
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["Subnets"] == ["subnet-0aaa", "subnet-0bbb"]
    cidr_rules = [rule for sg in of("AWS::EC2::SecurityGroup") for rule in sg.get("SecurityGroupIngress", [])]
    assert {(r["CidrIp"], r["FromPort"]) for r in cidr_rules} == {
        ("172.31.8.0/24", 5432),
        ("172.31.8.0/24", 6432),
    }
    [task_definition] = of("AWS::ECS::TaskDefinition")
    env = {e["Name"]: e["Value"] for e in task_definition["ContainerDefinitions"][0]["Environment"]}
    assert env[ENV_PROXY_RECORDING_MODE] == "async"


def test_proxy_context_defaults():
    context = _context()

    assert context.vpc_id is None
    assert context.proxy_client_cidr is None
    assert (context.proxy_min_count, context.proxy_desired_count, context.proxy_max_count) == (2, 2, 6)
    assert context.proxy_recording_mode is RecordingMode.SYNC
    assert context.proxy_drain_seconds == 30


def test_proxy_context_reads_cli_strings_and_json_values_the_same():
    from_cli = _context(**EXISTING_VPC, proxyMinCount="1", proxyDesiredCount="3", proxyMaxCount="9")
    from_json = _context(
        **{
            **EXISTING_VPC,
            "vpcAvailabilityZones": ["eu-west-1a", "eu-west-1b"],
            "vpcPrivateSubnetIds": ["subnet-0aaa", "subnet-0bbb"],
        },
        proxyMinCount=1,
        proxyDesiredCount=3,
        proxyMaxCount=9,
    )

    assert from_cli == from_json
    assert from_cli.vpc_private_subnet_ids == ("subnet-0aaa", "subnet-0bbb")
    assert (from_cli.proxy_min_count, from_cli.proxy_desired_count, from_cli.proxy_max_count) == (1, 3, 9)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"vpcId": "vpc-1", "vpcCidr": "10.1.0.0/16"}, "vpcPrivateSubnetIds"),
        ({"vpcId": "vpc-1", "vpcPrivateSubnetIds": "subnet-a", "vpcAvailabilityZones": "az-a"}, "vpcCidr"),
        ({**EXISTING_VPC, "vpcAvailabilityZones": "eu-west-1a"}, "one zone per subnet"),
        ({"vpcPrivateSubnetIds": "subnet-a"}, "vpcId"),
        ({"vpcCidr": "10.0.0.1/16"}, "vpcCidr"),
        ({"proxyClientCidr": "everyone"}, "proxyClientCidr"),
        ({"proxyMinCount": "3", "proxyDesiredCount": "2"}, "proxyDesiredCount"),
        ({"proxyMaxCount": "1"}, "proxyMaxCount"),
        ({"proxyDrainSeconds": "300"}, "proxyDrainSeconds"),
        ({"proxyRecordingMode": "eventually"}, "proxyRecordingMode"),
        ({"proxyConnectionsPerTask": "0"}, "proxyConnectionsPerTask"),
    ],
)
def test_malformed_proxy_context_stops_the_synth_naming_the_key(values: dict[str, object], key: str):
    with pytest.raises(ContextError, match=key):
        _context(**values)
