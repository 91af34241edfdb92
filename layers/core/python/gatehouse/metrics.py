"""CloudWatch metrics as Embedded Metric Format (EMF) lines on stdout.

CloudWatch Logs turns each EMF line of a Lambda function's or a Fargate task's output into metric
data: no PutMetricData call, so no permission, no endpoint in the VPC and no request on the path
that serves agents. infra/monitoring.py alarms on exactly these names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from gatehouse import names
from gatehouse.workflow import STEP_EXPIRE


def emit_counts(namespace: str, values: Mapping[str, float]) -> None:
    """One EMF line on stdout with these counts, without dimensions.

    EphemeralMetrics, not Metrics: Metrics keeps its data in class attributes, shared by every
    instance in the process. service="" keeps POWERTOOLS_SERVICE_NAME from adding a `service`
    dimension the alarms do not name; with no dimension powertools writes "Dimensions": [[]], the
    EMF spelling of a metric without dimensions (one series for every task or environment).
    """
    metrics = EphemeralMetrics(namespace=namespace, service="")
    for name, value in values.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    metrics.flush_metrics(raise_on_empty_metrics=True)  # print(): one JSON line on sys.stdout


def approval_step_metrics(answer: Mapping[str, Any], env: Mapping[str, str] | None = None) -> None:
    """After an approval step (gatehouse.workflow.run_step's answer): count an expired request.

    Only in Lambda, whose output CloudWatch Logs reads: the local stack runs the same handler in
    its own process, where an EMF line would be noise in the demo's output.
    """
    env = os.environ if env is None else env
    if not env.get("LAMBDA_TASK_ROOT"):
        return
    if answer.get("step") == STEP_EXPIRE and answer.get("status") == "expired":
        emit_counts(names.APPROVALS_METRICS_NAMESPACE, {names.METRIC_APPROVALS_EXPIRED: 1.0})
