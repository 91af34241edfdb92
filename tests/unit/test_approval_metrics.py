"""The approvals function counts expired requests as an EMF line CloudWatch Logs turns into a metric."""

from __future__ import annotations

import json

import pytest

from gatehouse import names
from gatehouse.metrics import approval_step_metrics

IN_LAMBDA = {"LAMBDA_TASK_ROOT": "/var/task"}


def _emf_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_an_expired_request_is_counted_once_under_the_alarms_name(capsys: pytest.CaptureFixture[str]):
    approval_step_metrics({"step": "expire", "request_id": "r1", "status": "expired"}, IN_LAMBDA)

    [line] = _emf_lines(capsys.readouterr().out)
    [directive] = line["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == names.APPROVALS_METRICS_NAMESPACE
    assert directive["Dimensions"] == [[]]
    assert [m["Name"] for m in directive["Metrics"]] == [names.METRIC_APPROVALS_EXPIRED]
    assert line[names.METRIC_APPROVALS_EXPIRED] == [1.0]  # powertools writes each value as a list


@pytest.mark.parametrize(
    "answer",
    [
        # Already decided when the expiry came: not an expiry.
        {"step": "expire", "request_id": "r2", "status": "executed"},
        {"step": "execute", "request_id": "r3", "status": "executed"},
        {"step": "notify", "request_id": "r4"},
    ],
)
def test_other_steps_and_requests_decided_in_time_count_nothing(answer, capsys: pytest.CaptureFixture[str]):
    approval_step_metrics(answer, IN_LAMBDA)
    assert _emf_lines(capsys.readouterr().out) == []


def test_outside_lambda_nothing_is_written(capsys: pytest.CaptureFixture[str]):
    approval_step_metrics({"step": "expire", "request_id": "r1", "status": "expired"}, {})
    assert capsys.readouterr().out == ""
