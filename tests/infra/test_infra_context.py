"""Context values: both spellings (cdk.json numbers, `-c` strings), refusals, the dependency layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_logs as logs
from aws_cdk.assertions import Template

from gatehouse import names
from gatehouse.policy.engine import PolicyEngine, default_schema_path
from infra import cdk_json_context, create_app
from infra.context import BundleDeps, ContextError, InfraContext
from infra.core_layer import (
    CoreLayers,
    DepsLayerMissingError,
    UnknownApproverGroupError,
    check_approver_groups,
)


def _context(**values: object) -> InfraContext:
    return InfraContext.from_node(App(context=dict(values)))


def test_defaults_come_from_names_and_cdk_json():
    context = InfraContext.from_node(App(context=cdk_json_context()))

    assert context.log_retention_days == names.DEFAULT_LOG_RETENTION_DAYS
    assert context.bundle_deps is BundleDeps.AUTO
    assert context.deps_layer_dir.parts[-2:] == ("build", "deps-layer")
    assert context.api_reserved_concurrency is None
    assert context.approvals_reserved_concurrency is None
    assert context.slack_channel is None
    assert context.vpc_nat_gateways == 0
    assert context.proxy_recording_mode.value == "sync"


def test_cli_strings_and_json_numbers_read_the_same():
    from_cli = _context(logRetentionDays="30", functionLogRetentionDays="14", bundleDeps="false")
    from_json = _context(logRetentionDays=30, functionLogRetentionDays=14, bundleDeps=False)

    assert from_cli == from_json
    assert from_cli.log_retention_days == 30
    assert from_cli.function_log_retention is logs.RetentionDays.TWO_WEEKS
    assert from_cli.bundle_deps is BundleDeps.NEVER


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("logRetentionDays", "0"),
        ("logRetentionDays", "-1"),
        ("logRetentionDays", "1.5"),
        ("logRetentionDays", "a year"),
        ("logRetentionDays", True),
        ("functionLogRetentionDays", "10"),
        ("bundleDeps", "maybe"),
        ("apiReservedConcurrency", "0"),
        ("approvalsReservedConcurrency", "-2"),
    ],
)
def test_malformed_values_stop_the_synth_naming_the_key(key: str, value: object):
    with pytest.raises(ContextError, match=key):
        _context(**{key: value})


def test_bundle_deps_true_refuses_to_synthesize_without_the_built_layer(tmp_path: Path):
    stack = Stack(App(), "Probe")
    context = InfraContext(bundle_deps=BundleDeps.REQUIRED, deps_layer_dir=tmp_path / "missing")

    with pytest.raises(DepsLayerMissingError, match="make layer"):
        CoreLayers(stack, "Layers", context=context)


def test_bundle_deps_auto_goes_without_the_layer_when_it_is_not_built(tmp_path: Path):
    stack = Stack(App(), "Probe")
    context = InfraContext(bundle_deps=BundleDeps.AUTO, deps_layer_dir=tmp_path / "missing")

    layers = CoreLayers(stack, "Layers", context=context)

    assert layers.deps is None
    assert layers.layers == [layers.core]


# -- approverGroups ----------------------------------------------------------------------------


def test_approver_groups_default_to_dba_as_cdk_json_says_and_read_both_spellings():
    assert InfraContext.from_node(App(context=cdk_json_context())).approver_groups == ("dba",)
    assert _context().approver_groups == ("dba",)
    from_cli = _context(approverGroups="dba,security")
    assert from_cli == _context(approverGroups=["dba", "security"])
    assert from_cli.approver_groups == ("dba", "security")


@pytest.mark.parametrize("value", [[], "", ["dba", ""], [5], "[not json"])
def test_malformed_approver_groups_stop_the_synth_naming_the_key(value: object):
    with pytest.raises(ContextError, match="approverGroups"):
        _context(approverGroups=value)


def test_a_packaged_policy_asking_for_a_group_the_deployment_lacks_stops_the_synth():
    # Given a deployment whose approvers are in "dbas" (a typo: the packaged policies say "dba")
    with pytest.raises(UnknownApproverGroupError) as refused:
        create_app(context={"approverGroups": ["dbas"], "bundleDeps": "false"})

    # Then the synth names the group, a policy that asks for it, and the way out
    message = str(refused.value)
    assert 'prod.cedar: policy prod-write-needs-dba asks for @approval by "dba"' in message
    assert "approverGroups ['dbas']" in message


def test_a_typo_in_a_policys_approval_group_is_refused_and_the_right_group_passes():
    schema = default_schema_path().read_text()
    policy = """
@id("prod-write-needs-dba")
@approval("dab")
permit (principal, action == Gatehouse::Action::"sql:write", resource)
when { resource.env == "prod" };
"""
    with pytest.raises(
        UnknownApproverGroupError, match='policy prod-write-needs-dba asks for @approval by "dab"'
    ):
        check_approver_groups(["dba"], PolicyEngine.from_sources({"prod.cedar": policy}, schema))

    check_approver_groups(
        ["dba"], PolicyEngine.from_sources({"prod.cedar": policy.replace("dab", "dba")}, schema)
    )


def test_nat_gateways_and_the_slack_channel_default_to_none():
    context = InfraContext.from_node(App(context=cdk_json_context()))

    assert context.vpc_nat_gateways == 0
    assert context.slack_channel is None


def test_nat_gateways_and_the_slack_channel_read_cli_strings_and_json_values_the_same():
    from_cli = _context(vpcNatGateways="1", slackChannel="C0123456789")
    from_json = _context(vpcNatGateways=1, slackChannel="C0123456789")

    assert from_cli == from_json
    assert from_cli.vpc_nat_gateways == 1
    assert _context(vpcNatGateways="0").vpc_nat_gateways == 0
    assert _context(slackChannel="#approvals").slack_channel == "#approvals"


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"vpcNatGateways": "-1"}, "vpcNatGateways"),
        ({"vpcNatGateways": "3"}, "vpcNatGateways"),
        ({"vpcNatGateways": True}, "vpcNatGateways"),
        ({"vpcNatGateways": "one"}, "vpcNatGateways"),
        (
            {
                "vpcNatGateways": 1,
                "vpcId": "vpc-1",
                "vpcCidr": "10.1.0.0/16",
                "vpcPrivateSubnetIds": "subnet-a",
                "vpcAvailabilityZones": "az-a",
            },
            "new VPC only",
        ),
        ({"slackChannel": "approvals"}, "slackChannel"),
        ({"slackChannel": "#Approvals"}, "slackChannel"),
        ({"slackChannel": "#"}, "slackChannel"),
        ({"slackChannel": 12}, "slackChannel"),
    ],
)
def test_malformed_network_and_slack_values_stop_the_synth_naming_the_key(
    values: dict[str, object], key: str
):
    with pytest.raises(ContextError, match=key):
        _context(**values)


@pytest.fixture(scope="module")
def with_nat(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole app with NAT gateways and a channel named in context, cdk-nag included."""
    app = create_app(
        context={"bundleDeps": "false", "vpcNatGateways": 1, "slackChannel": "#approvals"},
        outdir=str(tmp_path_factory.mktemp("cdk.out")),
    )
    stack = app.node.find_child(names.STACK_NAME)
    assert isinstance(stack, Stack)
    resources: dict[str, Any] = Template.from_stack(stack).to_json()["Resources"]
    return resources


def _of(resources: dict[str, Any], type_: str) -> dict[str, Any]:
    return {key: value for key, value in resources.items() if value["Type"] == type_}


def _function(resources: dict[str, Any], name: str) -> dict[str, Any]:
    [function] = [
        f["Properties"]
        for f in _of(resources, "AWS::Lambda::Function").values()
        if f["Properties"].get("FunctionName") == name
    ]
    return function


def test_with_nat_gateways_the_functions_reach_the_internet_through_them(with_nat: dict[str, Any]):
    nat_gateways = _of(with_nat, "AWS::EC2::NatGateway")
    routes = [r["Properties"] for r in _of(with_nat, "AWS::EC2::Route").values()]
    subnets = _of(with_nat, "AWS::EC2::Subnet")
    public = {k for k, s in subnets.items() if s["Properties"].get("MapPublicIpOnLaunch")}
    private = set(subnets) - public

    assert len(nat_gateways) == 1
    assert len(public) == 2 and len(private) == 2
    # The private subnets' default route is the NAT gateway.
    assert [r for r in routes if "NatGatewayId" in r and r["DestinationCidrBlock"] == "0.0.0.0/0"]
    for name in (names.API_FUNCTION, names.APPROVALS_FUNCTION):
        assert {s["Ref"] for s in _function(with_nat, name)["VpcConfig"]["SubnetIds"]} == private, name
    assert "VpcConfig" not in _function(with_nat, names.APPROVALS_NOTIFY_FUNCTION)


def test_the_context_channel_reaches_the_functions_that_post(with_nat: dict[str, Any]):
    for name in (names.APPROVALS_NOTIFY_FUNCTION, names.SLACK_FUNCTION):
        env = _function(with_nat, name)["Environment"]["Variables"]
        assert env[names.ENV_SLACK_CHANNEL] == "#approvals", name
    for name in (names.API_FUNCTION, names.APPROVALS_FUNCTION):
        assert names.ENV_SLACK_CHANNEL not in _function(with_nat, name)["Environment"]["Variables"], name


def test_reserved_concurrency_reaches_the_functions_that_run_commands(tmp_path: Path):
    app = create_app(
        context={"bundleDeps": "false", "apiReservedConcurrency": "20", "approvalsReservedConcurrency": 5},
        outdir=str(tmp_path),
    )
    template = Template.from_stack(app.node.find_child(names.STACK_NAME))  # type: ignore[arg-type]

    reserved = {
        props["Properties"]["FunctionName"]: props["Properties"].get("ReservedConcurrentExecutions")
        for props in template.find_resources("AWS::Lambda::Function").values()
        if str(props["Properties"].get("FunctionName", "")).startswith("gatehouse-")
    }
    assert reserved[names.API_FUNCTION] == 20
    assert reserved[names.APPROVALS_FUNCTION] == 5
    assert all(
        v is None for k, v in reserved.items() if k not in (names.API_FUNCTION, names.APPROVALS_FUNCTION)
    )
