"""The proxy's CloudWatch metrics: CloudWatch Embedded Metric Format (EMF) lines on stdout.

The Fargate task's awslogs driver sends stdout to CloudWatch Logs, which turns each EMF line into
metric data: no PutMetricData call, so no permission, no monitoring endpoint in the VPC and no
request on the proxy's path. infra/monitoring.py alarms on exactly what is published here:

- `names.METRIC_RECORDER_FAILURES` (alarmed on its Sum): session-log writes that failed since the
  previous emission (`ProxyRecorder.stats["failures"]`, a count of failed session writes, each
  retry counted);
- `names.METRIC_LOG_BACKLOG_EVENTS` (alarmed on its Maximum): events recorded and not yet stored,
  at the moment of the emission.

Both under `names.PROXY_METRICS_NAMESPACE` with no dimension: the tasks of one service publish
into the same series, so the Sum adds every task's failures and the Maximum is the worst task's
backlog, and an alarm (which cannot match a dimension by wildcard) sees them whatever the task ids.

One emission every `interval_s` (60 s: CloudWatch's standard resolution), and one more when the
proxy drains, so the failures of its last minute are not lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gatehouse import names
from gatehouse.metrics import emit_counts

log = logging.getLogger(__name__)

# Seconds between emissions (`gatehouse proxy serve`); tests shorten it.
ENV_PROXY_METRICS_INTERVAL_S = "GATEHOUSE_PROXY_METRICS_INTERVAL_S"
DEFAULT_INTERVAL_S = 60.0


class RecorderMetrics:
    """Publishes a `ProxyRecorder`'s failures and backlog; `run` is a task its server owns."""

    def __init__(self, recorder: Any, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._recorder = recorder
        self._interval = float(interval_s)
        self._reported_failures = 0

    def emit(self) -> dict[str, float]:
        """Write one EMF line to stdout; returns the values written."""
        stats = self._recorder.stats
        failures = int(stats["failures"])
        values = {
            names.METRIC_RECORDER_FAILURES: float(failures - self._reported_failures),
            names.METRIC_LOG_BACKLOG_EVENTS: float(stats["pending_events"]),
        }
        self._reported_failures = failures
        emit_counts(names.PROXY_METRICS_NAMESPACE, values)
        return values

    async def run(self) -> None:
        """Emit every interval until cancelled (the server cancels it, then emits a last time)."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.emit()
            except Exception:  # a failed emission must not end the series: the next one may work
                log.exception("proxy metrics: an emission failed")
