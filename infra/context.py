"""The app's context values (cdk.json, `cdk -c key=value`), read once into a frozen, validated record.

From cdk.json a value arrives as JSON (a number, a boolean); from `-c` it arrives as a string.
Both spellings are accepted; anything else stops the synth with the key's name.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from aws_cdk import aws_logs as logs
from constructs import Construct

from gatehouse import names

REPO_ROOT = Path(__file__).resolve().parent.parent

# CloudWatch Logs accepts only these retention periods (PutRetentionPolicy).
_CLOUDWATCH_RETENTION_DAYS = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS,
    2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


class ContextError(ValueError):
    """A context value is missing its expected shape: the synth must not go on."""


class RecordingMode(Enum):
    """How the proxy writes the session log (gatehouse.proxy.postgres): `sync` makes a statement's
    decision durable before it is forwarded; `async` writes chunks at least every second."""

    SYNC = "sync"
    ASYNC = "async"


class BundleDeps(Enum):
    """Whether the third-party dependency layer (built by `make layer`) goes into the template."""

    AUTO = "auto"  # add it when the directory exists, warn otherwise
    REQUIRED = "true"  # add it; fail the synth when it has not been built (use this to deploy)
    NEVER = "false"  # leave it out (template tests)


@dataclass(frozen=True)
class InfraContext:
    log_retention_days: int = names.DEFAULT_LOG_RETENTION_DAYS
    function_log_retention: logs.RetentionDays = logs.RetentionDays.THREE_MONTHS
    bundle_deps: BundleDeps = BundleDeps.AUTO
    deps_layer_dir: Path = REPO_ROOT / "build" / "deps-layer"
    api_throttle_rate_limit: int = 50
    api_throttle_burst_limit: int = 100
    api_reserved_concurrency: int | None = None
    # The approvals function runs approved commands on the targets; None: the account's pool.
    approvals_reserved_concurrency: int | None = None
    # The proxy's network: a new VPC with this CIDR (no vpcId), or an existing one described by its
    # id, CIDR, availability zones and private subnets (from_vpc_attributes: no lookup, no account).
    vpc_id: str | None = None
    vpc_cidr: str = "10.0.0.0/16"
    vpc_availability_zones: tuple[str, ...] = ()
    vpc_private_subnet_ids: tuple[str, ...] = ()
    # Who may connect to the proxy's load balancer; None: the VPC's CIDR.
    proxy_client_cidr: str | None = None
    proxy_desired_count: int = 2
    proxy_min_count: int = 2
    proxy_max_count: int = 6
    # Target tracking on client connections per running task.
    proxy_connections_per_task: int = 100
    proxy_drain_seconds: int = 30
    # Sync by default: the security stance writes a decision's record before the command runs.
    proxy_recording_mode: RecordingMode = RecordingMode.SYNC
    # NAT gateways of a new VPC: 0 keeps it isolated (AWS through endpoints only); N > 0 gives the
    # functions that reach targets a way to the internet (public HTTP APIs, Kubernetes endpoints).
    vpc_nat_gateways: int = 0
    # The approval channel ("C0123456789" or "#approvals"); None: the Slack secret's "channel".
    slack_channel: str | None = None
    # The approver groups this deployment has (approvers carry them in the registry); the synth
    # refuses a packaged policy whose @approval names another (infra/core_layer.py).
    approver_groups: tuple[str, ...] = ("dba",)

    @classmethod
    def from_node(cls, scope: Construct) -> InfraContext:
        def get(key: str) -> Any:
            return scope.node.try_get_context(key)

        defaults = cls()
        function_log_days = _positive_int("functionLogRetentionDays", get("functionLogRetentionDays"), 90)
        if function_log_days not in _CLOUDWATCH_RETENTION_DAYS:
            allowed = ", ".join(str(days) for days in _CLOUDWATCH_RETENTION_DAYS)
            raise ContextError(f"functionLogRetentionDays must be one of {allowed}; got {function_log_days}")
        deps_dir = Path(str(get("depsLayerDir") or defaults.deps_layer_dir))
        raw_reserved = get("apiReservedConcurrency")
        proxy = _proxy_values(get, defaults)
        return cls(
            log_retention_days=_positive_int(
                "logRetentionDays", get("logRetentionDays"), defaults.log_retention_days
            ),
            function_log_retention=_CLOUDWATCH_RETENTION_DAYS[function_log_days],
            bundle_deps=_bundle_deps(get("bundleDeps")),
            deps_layer_dir=deps_dir if deps_dir.is_absolute() else REPO_ROOT / deps_dir,
            api_throttle_rate_limit=_positive_int(
                "apiThrottleRateLimit", get("apiThrottleRateLimit"), defaults.api_throttle_rate_limit
            ),
            api_throttle_burst_limit=_positive_int(
                "apiThrottleBurstLimit", get("apiThrottleBurstLimit"), defaults.api_throttle_burst_limit
            ),
            api_reserved_concurrency=_optional_positive_int("apiReservedConcurrency", raw_reserved),
            approvals_reserved_concurrency=_optional_positive_int(
                "approvalsReservedConcurrency", get("approvalsReservedConcurrency")
            ),
            **proxy,
            vpc_nat_gateways=_nat_gateways(get, proxy["vpc_id"]),
            slack_channel=_slack_channel(get("slackChannel")),
            approver_groups=_approver_groups(get("approverGroups"), defaults.approver_groups),
        )

    @property
    def imports_vpc(self) -> bool:
        return self.vpc_id is not None


# Fargate sends SIGKILL at most 120 s after SIGTERM (stopTimeout); the proxy needs some of that
# after its drain deadline to flush the session log and close.
MAX_PROXY_DRAIN_SECONDS = 100


def _proxy_values(get: Any, defaults: InfraContext) -> dict[str, Any]:
    vpc_id = str(get("vpcId") or "") or None
    vpc_cidr = _cidr("vpcCidr", get("vpcCidr") or defaults.vpc_cidr)
    zones = _string_list("vpcAvailabilityZones", get("vpcAvailabilityZones"))
    subnets = _string_list("vpcPrivateSubnetIds", get("vpcPrivateSubnetIds"))
    if vpc_id is None and (zones or subnets):
        raise ContextError("vpcAvailabilityZones and vpcPrivateSubnetIds describe an existing VPC: set vpcId")
    if vpc_id is not None:
        if get("vpcCidr") in (None, ""):
            raise ContextError("vpcId needs vpcCidr (the existing VPC's CIDR block)")
        if not subnets or len(subnets) != len(zones):
            raise ContextError(
                "vpcId needs vpcPrivateSubnetIds and vpcAvailabilityZones, one zone per subnet, in order"
            )
    raw_client = get("proxyClientCidr")
    desired = _positive_int("proxyDesiredCount", get("proxyDesiredCount"), defaults.proxy_desired_count)
    minimum = _positive_int("proxyMinCount", get("proxyMinCount"), defaults.proxy_min_count)
    maximum = _positive_int("proxyMaxCount", get("proxyMaxCount"), defaults.proxy_max_count)
    if not minimum <= desired <= maximum:
        raise ContextError(
            "proxyMinCount <= proxyDesiredCount <= proxyMaxCount must hold; "
            f"got {minimum}, {desired}, {maximum}"
        )
    drain = _positive_int("proxyDrainSeconds", get("proxyDrainSeconds"), defaults.proxy_drain_seconds)
    if drain > MAX_PROXY_DRAIN_SECONDS:
        raise ContextError(f"proxyDrainSeconds must be at most {MAX_PROXY_DRAIN_SECONDS}; got {drain}")
    raw_mode = get("proxyRecordingMode")
    try:
        mode = (
            RecordingMode(str(raw_mode).lower())
            if raw_mode not in (None, "")
            else defaults.proxy_recording_mode
        )
    except ValueError as exc:
        raise ContextError(f"proxyRecordingMode must be sync or async; got {raw_mode!r}") from exc
    return {
        "vpc_id": vpc_id,
        "vpc_cidr": vpc_cidr,
        "vpc_availability_zones": zones,
        "vpc_private_subnet_ids": subnets,
        "proxy_client_cidr": None if raw_client in (None, "") else _cidr("proxyClientCidr", raw_client),
        "proxy_desired_count": desired,
        "proxy_min_count": minimum,
        "proxy_max_count": maximum,
        "proxy_connections_per_task": _positive_int(
            "proxyConnectionsPerTask", get("proxyConnectionsPerTask"), defaults.proxy_connections_per_task
        ),
        "proxy_drain_seconds": drain,
        "proxy_recording_mode": mode,
    }


# The new VPC spans two zones (infra/proxy.py): one NAT gateway per zone at most.
MAX_NAT_GATEWAYS = 2
# A channel id (C..., G... for a private channel) or "#name" (Slack: lowercase letters, digits,
# "-" and "_", at most 80 characters).
_SLACK_CHANNEL = re.compile(r"[CG][A-Z0-9]{6,}|#[a-z0-9][a-z0-9_-]{0,79}")


def _nat_gateways(get: Any, vpc_id: str | None) -> int:
    raw = get("vpcNatGateways")
    if raw is None or raw == "":
        return 0
    # 0 is valid here, unlike the other counts; everything else is read as they are.
    is_zero = not isinstance(raw, bool) and str(raw).strip() == "0"
    count = 0 if is_zero else _positive_int("vpcNatGateways", raw, 0)
    if count > MAX_NAT_GATEWAYS:
        raise ContextError(f"vpcNatGateways must be between 0 and {MAX_NAT_GATEWAYS}; got {raw!r}")
    if count and vpc_id is not None:
        # An existing VPC is used as it is: its routes are the operator's, not this stack's.
        raise ContextError("vpcNatGateways applies to a new VPC only: leave it out with vpcId")
    return count


def _slack_channel(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not _SLACK_CHANNEL.fullmatch(raw.strip()):
        raise ContextError(f"slackChannel must be a channel id (C0123456789) or #name; got {raw!r}")
    return raw.strip()


def _approver_groups(raw: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if raw is None:
        return default
    groups = _string_list("approverGroups", raw)
    if not groups:
        raise ContextError('approverGroups must name at least one group, e.g. ["dba"]')
    return tuple(dict.fromkeys(groups))


def _cidr(key: str, raw: Any) -> str:
    try:
        return str(ipaddress.IPv4Network(str(raw), strict=True))
    except ValueError as exc:
        raise ContextError(f"{key} must be an IPv4 CIDR block such as 10.0.0.0/16; got {raw!r}") from exc


def _string_list(key: str, raw: Any) -> tuple[str, ...]:
    """A JSON list (cdk.json, or `-c key='["a","b"]'`) or a comma-separated string (`-c key=a,b`)."""
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except ValueError as exc:
                raise ContextError(f"{key} is not a JSON list: {raw!r}") from exc
        else:
            raw = text.split(",")
    if not isinstance(raw, list) or not all(isinstance(item, str) and item.strip() for item in raw):
        raise ContextError(f"{key} must be a list of non-empty strings; got {raw!r}")
    return tuple(item.strip() for item in raw)


def _optional_positive_int(key: str, raw: Any) -> int | None:
    """A reserved concurrency: unset (None, the account's unreserved pool) or a positive integer.

    Unset by default: an account whose concurrency quota is still 10 cannot reserve any, and the
    deploy would fail; set it where the quota allows, to bound what a burst does to a target.
    """
    return None if raw in (None, "") else _positive_int(key, raw, 1)


def _positive_int(key: str, raw: Any, default: int) -> int:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise ContextError(f"{key} must be a positive integer, got {raw!r}")
    try:
        value = int(raw)
    except (TypeError, ValueError) as exc:
        raise ContextError(f"{key} must be a positive integer, got {raw!r}") from exc
    if value <= 0 or value != float(raw):
        raise ContextError(f"{key} must be a positive integer, got {raw!r}")
    return value


def _bundle_deps(raw: Any) -> BundleDeps:
    if raw is None or raw == "":
        return BundleDeps.AUTO
    text = str(raw).lower()  # JSON true/false arrive as Python bools
    try:
        return BundleDeps(text)
    except ValueError as exc:
        raise ContextError(f"bundleDeps must be auto, true or false; got {raw!r}") from exc
