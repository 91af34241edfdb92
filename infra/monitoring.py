"""Alarms and one dashboard: what an operator must hear about, and where to look when they do.

Every alarm notifies one SNS topic; subscribe a pager, an email list or AWS Chatbot to it after
deploy. Missing data is not breaching: a function nobody called, or a proxy that has not published
yet, is quiet, not broken.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from gatehouse import names

PERIOD = Duration.minutes(5)

# The proxy's recorder refuses new statements at 50,000 pending events (its max_backlog_events
# default, gatehouse.proxy.postgres.recorder): alarm at half, while agents are still served.
LOG_BACKLOG_THRESHOLD = 25_000


def proxy_metric(metric_name: str, statistic: str) -> cloudwatch.Metric:
    """A metric the proxy publishes (gatehouse.proxy.postgres.metrics): EMF lines on its stdout, which
    the task's awslogs driver sends to CloudWatch Logs. No dimension, as published: every task writes
    into the one series, so an alarm sees the Sum and the Maximum over all of them."""
    return cloudwatch.Metric(
        namespace=names.PROXY_METRICS_NAMESPACE,
        metric_name=metric_name,
        statistic=statistic,
        period=PERIOD,
    )


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: Mapping[str, lambda_.IFunction],
        state_machine: sfn.IStateMachine,
        http_api: apigwv2.IHttpApi,
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            topic_name=names.ALARM_TOPIC_NAME,
            display_name="Gatehouse alarms",
            # The AWS-managed key: CloudWatch may publish to it without a key policy of ours.
            master_key=kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"),
            enforce_ssl=True,
        )
        self.alarms: dict[str, cloudwatch.Alarm] = {}

        for label, function in functions.items():
            # Any error is worth a look: the API maps domain errors to 4xx answers, so an
            # invocation error is a bug or an outage, never a refused request.
            self._alarm(
                f"{label}Errors",
                function.metric_errors(period=PERIOD, statistic="Sum"),
                f"{label} function: invocations failed.",
            )
            # A throttled API call is an agent refused; a throttled approvals step is retried by
            # the state machine, but repeated throttling delays approvals.
            self._alarm(
                f"{label}Throttles",
                function.metric_throttles(period=PERIOD, statistic="Sum"),
                f"{label} function: invocations throttled.",
            )

        # An expired approval (nobody answered in time) is caught and recorded by the Expire step,
        # so the execution succeeds (ApprovalsExpired counts those); a timed-out execution
        # outlived the state machine's 24 hours.
        self._alarm(
            "ApprovalsTimedOut",
            state_machine.metric_timed_out(period=PERIOD, statistic="Sum"),
            "Approvals: executions timed out (held past the state machine's 24-hour bound).",
        )
        self._alarm(
            "ApprovalsFailed",
            state_machine.metric_failed(period=PERIOD, statistic="Sum"),
            "Approvals: executions failed (a step failed past its retries; the request is marked failed).",
        )
        # Nobody decided in time: the approvers may be away, or the channel unwatched.
        self._alarm(
            "ApprovalsExpired",
            cloudwatch.Metric(
                namespace=names.APPROVALS_METRICS_NAMESPACE,
                metric_name=names.METRIC_APPROVALS_EXPIRED,
                statistic="Sum",
                period=PERIOD,
            ),
            "Approvals: requests expired with nobody deciding (is anyone watching the channel?).",
        )
        recorder_failures = proxy_metric(names.METRIC_RECORDER_FAILURES, "Sum")
        self._alarm(
            "ProxyRecorderFailures",
            recorder_failures,
            "Proxy: session-log writes failed; statements that must be recorded are being refused.",
        )
        backlog = proxy_metric(names.METRIC_LOG_BACKLOG_EVENTS, "Maximum")
        self._alarm(
            "ProxyLogBacklog",
            backlog,
            f"Proxy: over {LOG_BACKLOG_THRESHOLD} events wait for the session log; at twice that the "
            "proxy refuses statements.",
            threshold=LOG_BACKLOG_THRESHOLD,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        )

        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=names.DASHBOARD_NAME, default_interval=Duration.hours(3)
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="API latency (p50, p99)",
                left=[
                    http_api.metric_latency(period=PERIOD, statistic="p50"),
                    http_api.metric_latency(period=PERIOD, statistic="p99"),
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="API 4xx and 5xx",
                left=[
                    http_api.metric_client_error(period=PERIOD, statistic="Sum"),
                    http_api.metric_server_error(period=PERIOD, statistic="Sum"),
                ],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Function errors",
                left=[f.metric_errors(period=PERIOD, statistic="Sum", label=k) for k, f in functions.items()],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Function throttles",
                left=[
                    f.metric_throttles(period=PERIOD, statistic="Sum", label=k) for k, f in functions.items()
                ],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Approval executions",
                left=[
                    state_machine.metric_started(period=PERIOD, statistic="Sum"),
                    state_machine.metric_succeeded(period=PERIOD, statistic="Sum"),
                    state_machine.metric_failed(period=PERIOD, statistic="Sum"),
                    state_machine.metric_timed_out(period=PERIOD, statistic="Sum"),
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(title="Proxy recorder failures", left=[recorder_failures], width=8),
            cloudwatch.GraphWidget(
                title="Proxy log backlog (events)",
                left=[backlog],
                left_annotations=[
                    cloudwatch.HorizontalAnnotation(value=LOG_BACKLOG_THRESHOLD, label="alarm")
                ],
                width=8,
            ),
            cloudwatch.AlarmStatusWidget(
                title="Alarms", alarms=list(self.alarms.values()), width=24, height=4
            ),
        )

    def _alarm(
        self,
        alarm_id: str,
        metric: cloudwatch.IMetric,
        description: str,
        *,
        threshold: float = 1,
        comparison: cloudwatch.ComparisonOperator = (
            cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
        ),
    ) -> None:
        alarm = cloudwatch.Alarm(
            self,
            alarm_id,
            alarm_name=f"{names.PREFIX}-{alarm_id}",
            alarm_description=description,
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(actions.SnsAction(self.topic))
        # Told when it clears too, so nobody chases an alarm that is already over.
        alarm.add_ok_action(actions.SnsAction(self.topic))
        self.alarms[alarm_id] = alarm
