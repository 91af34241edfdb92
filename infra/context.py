"""The app's context values (cdk.json, `cdk -c key=value`), read once into a frozen, validated record.

From cdk.json a value arrives as JSON (a number, a boolean); from `-c` it arrives as a string.
Both spellings are accepted; anything else stops the synth with the key's name.
"""

from __future__ import annotations

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
            api_reserved_concurrency=(
                None
                if raw_reserved in (None, "")
                else _positive_int("apiReservedConcurrency", raw_reserved, 1)
            ),
        )


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
