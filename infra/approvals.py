"""The approval flow: the `gatehouse-approvals` and `gatehouse-approvals-notify` functions and the
state machine that holds a request while humans decide.

    Preview -> Notify (waits for a task token, at most $.expires_in_s) -> Decision
        approved -> Execute            denied -> RecordDenied
        Notify times out -> Expire
    each of those -> Announce (the outcome in the Slack message, best effort) -> Done

Both functions are the same code (functions/approvals, dispatching on the step). Notify and
Announce run in `gatehouse-approvals-notify`, outside the VPC: they post to Slack (the internet)
and read the bot token, never a connection secret. Every other step runs in `gatehouse-approvals`,
in the VPC's private subnets, where the targets are: it reads connection secrets, never a Slack
secret.

One execution per request, named after its request id (gatehouse.workflow). The same construct is
synthesized by `approvals_definition()` for the local stack, so the laptop runs the very ASL that
is deployed, with moto's function ARNs in place of CloudFormation's.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from aws_cdk import App, CfnElement, Duration, Environment, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from gatehouse import names
from gatehouse.workflow import (
    DECISION_APPROVED,
    DECISION_DENIED,
    STEP_ANNOUNCE,
    STEP_DENIED,
    STEP_EXECUTE,
    STEP_EXPIRE,
    STEP_FAIL,
    STEP_NOTIFY,
    STEP_PREVIEW,
)
from infra.context import REPO_ROOT, InfraContext
from infra.functions import GatehouseFunction, grant_session_log, service_settings
from infra.nag import acknowledge
from infra.proxy import ProxyNetwork
from infra.secrets import Secrets
from infra.slack import grant_operator_secret_read, slack_environment
from infra.tables import Tables

APPROVALS_CODE_DIR = REPO_ROOT / "functions" / "approvals"

# A step runs one statement under its statement timeout (gatehouse.config: 5 s by default) plus the
# session-log writes and a Slack call; Notify returns as soon as the message is posted.
APPROVALS_TIMEOUT = Duration.seconds(60)

# Slack (or the function) failing in Notify: retried with backoff while the request stays pending.
# Six retries after the first attempt, 2 + 4 + 8 + 16 + 32 + 64 s apart: two minutes of outage
# are absorbed.
NOTIFY_RETRY_INTERVAL = Duration.seconds(2)
NOTIFY_RETRY_BACKOFF = 2.0
NOTIFY_MAX_ATTEMPTS = 6
# Showing the outcome is worth less waiting than asking: two retries, 2 and 4 s after the first.
ANNOUNCE_MAX_ATTEMPTS = 2

# Where the task token's answer (gatehouse.workflow.Workflow.resume) lands in the state.
VOTE_PATH = "$.vote"


class ApprovalsFunction(Construct):
    """The state machine's tasks but Notify, in the network's private subnets, with grants on what
    they touch; `security_group` is its own: the operator admits it on each target's port."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: InfraContext,
        layers: Sequence[lambda_.ILayerVersion],
        tables: Tables,
        secrets: Secrets,
        log_bucket: s3.IBucket,
        network: ProxyNetwork,
    ) -> None:
        super().__init__(scope, construct_id)
        settings = service_settings(
            context=context,
            tables=tables,
            secrets=secrets,
            log_bucket=log_bucket,
        )
        built = GatehouseFunction(
            self,
            "Approvals",
            function_name=names.APPROVALS_FUNCTION,
            description="Gatehouse approvals: preview, execute the approved command, deny, expire, fail.",
            code_dir=APPROVALS_CODE_DIR,
            handler="handler.lambda_handler",
            service_name=names.APPROVALS_FUNCTION,
            layers=layers,
            environment=settings.as_env(),
            context=context,
            timeout=APPROVALS_TIMEOUT,
            reserved_concurrency=context.approvals_reserved_concurrency,
        )
        self.function = built.function
        role = built.role
        self.security_group = network.place_function(self.function, role, source="approvals function")
        # Status, token and outcome are updated on the request record; it is created by the API
        # function, so no PutItem here, and never a delete.
        tables.requests.grant(
            role,
            "dynamodb:GetItem",
            "dynamodb:UpdateItem",
            "dynamodb:ConditionCheckItem",
            "dynamodb:DescribeTable",
        )
        tables.connections.grant_read_data(role)
        tables.principals.grant_read_data(role)
        # Execute logs in to the target (connection secret) and masks (masking key). No Slack secret:
        # the private subnets have no route to Slack, and the notify function posts.
        secrets.grant_read(role)
        # Each step appends to the request's session: put (COMPLIANCE only) and read, never delete.
        grant_session_log(
            role,
            log_bucket,
            "A request's session continues under new keys (events/dt=<day>/session=<id>/<seq>.json) at "
            "every step, so objects are granted by the bucket's key wildcard (put and get, never delete).",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:"
            f"<AWS::AccountId>:secret:{names.CONNECTION_SECRET_PREFIX}*]",
            "Execute logs in to the request's connection: one operator-created secret per connection "
            "under gatehouse/connections/, read by that prefix only.",
        )


class ApprovalsNotifyFunction(Construct):
    """The state machine's Notify task: posts the approval message to Slack, outside the VPC.

    Its role reads the request record (and keeps the task token and the message's place on it),
    the connection's registry entry and the masking key (the message shows the statement masked,
    by the connection's profile), the Slack bot token, and appends to the session log. It reads no
    connection secret and runs no command.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: InfraContext,
        layers: Sequence[lambda_.ILayerVersion],
        tables: Tables,
        secrets: Secrets,
        log_bucket: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        settings = service_settings(context=context, tables=tables, secrets=secrets, log_bucket=log_bucket)
        built = GatehouseFunction(
            self,
            "Notify",
            function_name=names.APPROVALS_NOTIFY_FUNCTION,
            description="Gatehouse approvals: post the approval request to Slack.",
            code_dir=APPROVALS_CODE_DIR,
            handler="handler.lambda_handler",
            service_name=names.APPROVALS_NOTIFY_FUNCTION,
            layers=layers,
            environment={**settings.as_env(), **slack_environment(context)},
            context=context,
            timeout=APPROVALS_TIMEOUT,
        )
        self.function = built.function
        role = built.role
        # The task token and the message's channel and timestamp go on the pending record.
        tables.requests.grant(role, "dynamodb:GetItem", "dynamodb:UpdateItem")
        tables.connections.grant(role, "dynamodb:GetItem")
        secrets.masking_key.grant_read(role)
        grant_operator_secret_read(role, names.SLACK_SECRET)
        grant_session_log(
            role,
            log_bucket,
            "The notification continues the request's session under a new key (events/dt=<day>/"
            "session=<id>/<seq>.json), so objects are granted by the bucket's key wildcard (put and "
            "get, never delete).",
        )


class ApprovalsStateMachine(Construct):
    """The state machine over `function` (every step but Notify) and `notify_function` (Notify):
    the stack's functions, or imported ones for the local definition."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        function: lambda_.IFunction,
        notify_function: lambda_.IFunction,
        log_retention: logs.RetentionDays = logs.RetentionDays.THREE_MONTHS,
    ) -> None:
        super().__init__(scope, construct_id)

        def step(state_id: str, name: str, **kwargs: Any) -> tasks.LambdaInvoke:
            return tasks.LambdaInvoke(
                self,
                state_id,
                lambda_function=function,
                payload=sfn.TaskInput.from_object(
                    {"step": name, "request_id": sfn.JsonPath.string_at("$.request_id")}
                ),
                # The function's answer alone, not Lambda's envelope (StatusCode, headers).
                payload_response_only=True,
                **kwargs,
            )

        # The request record already holds the preview (computed before the 202); this step puts
        # it in the request's session. The state keeps its input for the steps after it.
        preview = step("Preview", STEP_PREVIEW, result_path=sfn.JsonPath.DISCARD)

        notify = tasks.LambdaInvoke(
            self,
            "Notify",
            lambda_function=notify_function,
            integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
            payload=sfn.TaskInput.from_object(
                {
                    "step": STEP_NOTIFY,
                    "request_id": sfn.JsonPath.string_at("$.request_id"),
                    "task_token": sfn.JsonPath.task_token,
                }
            ),
            # The request's own expiry (policy annotation @expires, default 30 min) bounds the wait.
            task_timeout=sfn.Timeout.at("$.expires_in_s"),
            result_path=VOTE_PATH,
        )
        # A failing notification (Slack down, a throttled function) is retried, not decided:
        # States.TaskFailed matches every task error except States.Timeout, which is the expiry.
        notify.add_retry(
            errors=["States.TaskFailed"],
            interval=NOTIFY_RETRY_INTERVAL,
            backoff_rate=NOTIFY_RETRY_BACKOFF,
            max_attempts=NOTIFY_MAX_ATTEMPTS,
        )
        expire = step("Expire", STEP_EXPIRE, result_path="$.outcome")
        notify.add_catch(
            expire, errors=["States.Timeout", "States.HeartbeatTimeout"], result_path="$.timeout"
        )

        def announce(state_id: str, after: sfn.IChainable) -> sfn.Chain:
            # The outcome in the Slack message, from the notify function (the steps above run in
            # the VPC, without a route to Slack). Best effort: the outcome is already decided and
            # recorded, so a Slack outage past the retries ends the execution as it would have.
            task = tasks.LambdaInvoke(
                self,
                state_id,
                lambda_function=notify_function,
                payload=sfn.TaskInput.from_object(
                    {"step": STEP_ANNOUNCE, "request_id": sfn.JsonPath.string_at("$.request_id")}
                ),
                payload_response_only=True,
                result_path=sfn.JsonPath.DISCARD,
            )
            task.add_retry(
                errors=["States.TaskFailed"],
                interval=NOTIFY_RETRY_INTERVAL,
                backoff_rate=NOTIFY_RETRY_BACKOFF,
                max_attempts=ANNOUNCE_MAX_ATTEMPTS,
            )
            task.add_catch(after, errors=["States.ALL"], result_path="$.announce_failure")
            return task.next(after)

        done = sfn.Succeed(self, "Done")
        announced = announce("Announce", done)
        execute = step("Execute", STEP_EXECUTE, result_path="$.outcome")
        denied = step("RecordDenied", STEP_DENIED, result_path="$.outcome")
        for ending in (execute, denied, expire):
            ending.next(announced)
        # A step that fails for good (Slack down past every retry, a bug) fails the request: it is
        # never left pending with nothing holding it.
        failed = step("RecordFailed", STEP_FAIL, result_path="$.outcome").next(
            announce(
                "AnnounceFailure",
                sfn.Fail(self, "Failed", error="Gatehouse.ApprovalFailed", cause="an approval step failed"),
            )
        )
        for task in (preview, notify, execute, denied):
            task.add_catch(failed, errors=["States.ALL"], result_path="$.failure")
        # Only Workflow.resume answers the token, with one of the two decisions; anything else is a
        # bug that must not execute anything.
        unknown = sfn.Fail(
            self,
            "UnknownDecision",
            error="Gatehouse.UnknownDecision",
            cause="the approval answered neither approved nor denied",
        )
        decision = (
            sfn.Choice(self, "Decision")
            .when(sfn.Condition.string_equals(f"{VOTE_PATH}.decision", DECISION_APPROVED), execute)
            .when(sfn.Condition.string_equals(f"{VOTE_PATH}.decision", DECISION_DENIED), denied)
            .otherwise(unknown)
        )

        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention,
            # Operational logs; the record that must survive is the session log in S3.
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=names.STATE_MACHINE_NAME,
            comment="Gatehouse: one execution per request awaiting approval, named after its id.",
            definition_body=sfn.DefinitionBody.from_chainable(preview.next(notify).next(decision)),
            # A request waits at most its expiry; a day bounds any execution whatever its input.
            timeout=Duration.hours(24),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel.ALL,
                # Execution data holds the task token, which resumes the execution: keep it out.
                include_execution_data=False,
            ),
        )
        for invoked in (function, notify_function):
            function_logical_id = _logical_id_of(invoked)
            if function_logical_id is not None:  # an imported function (local definition) has none
                acknowledge(
                    self.state_machine.role,
                    f"AwsSolutions-IAM5[Resource::<{function_logical_id}.Arn>:*]",
                    "CDK grants lambda:InvokeFunction on each approvals function and its versions "
                    "(<arn>:*), so a published version could be invoked; it is that function only.",
                )
        acknowledge(
            self.state_machine.role,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray (PutTraceSegments, GetSamplingRules...) and CloudWatch Logs' log delivery APIs "
            "(CreateLogDelivery, ...) support no resource-level permissions.",
        )

    def grant_start(self, grantee: iam.IGrantable) -> None:
        """The API function starts one execution per request needing approval."""
        self.state_machine.grant_start_execution(grantee)

    def grant_task_response(self, grantee: iam.IGrantable) -> None:
        """Whoever answers the token (the Slack function, on quorum or denial)."""
        self.state_machine.grant_task_response(grantee)


# -- the same ASL for the local stack ---------------------------------------------------------

_LOCAL_STACK_ID = "GatehouseApprovalsDefinition"
_PSEUDO = {"AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}


def approvals_definition(
    function_arns: Mapping[str, str], *, account: str = "123456789012", region: str = "us-east-1"
) -> dict[str, Any]:
    """The state machine's ASL, from the construct above, over the functions named in `function_arns`.

    `function_arns` maps each function name (names.APPROVALS_FUNCTION and
    names.APPROVALS_NOTIFY_FUNCTION) to its ARN: moto's, locally.
    """
    needed = (names.APPROVALS_FUNCTION, names.APPROVALS_NOTIFY_FUNCTION)
    missing = [name for name in needed if name not in function_arns]
    if missing:
        raise ValueError(f"no ARN for {', '.join(missing)} in {sorted(function_arns)}")
    with tempfile.TemporaryDirectory(prefix="gatehouse-asl-") as outdir:
        app = App(outdir=outdir)
        stack = Stack(app, _LOCAL_STACK_ID, env=Environment(account=account, region=region))

        def imported(construct_id: str, name: str) -> lambda_.IFunction:
            return lambda_.Function.from_function_attributes(
                stack, construct_id, function_arn=function_arns[name], same_environment=True
            )

        ApprovalsStateMachine(
            stack,
            "Approvals",
            function=imported("ApprovalsFunction", names.APPROVALS_FUNCTION),
            notify_function=imported("ApprovalsNotifyFunction", names.APPROVALS_NOTIFY_FUNCTION),
        )
        template = app.synth().get_stack_by_name(_LOCAL_STACK_ID).template
    [definition] = [
        resource["Properties"]["DefinitionString"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::StepFunctions::StateMachine"
    ]
    pseudo = {**_PSEUDO, "AWS::AccountId": account, "AWS::Region": region}
    resolved = _resolve(definition, pseudo)
    if not isinstance(resolved, str):
        raise ValueError(f"the state machine's definition did not resolve to text: {resolved!r}")
    asl: dict[str, Any] = json.loads(resolved)
    return asl


def _resolve(value: Any, pseudo: Mapping[str, str]) -> Any:
    """Evaluate the intrinsic functions CDK leaves in a DefinitionString (Fn::Join, pseudo Refs)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [_resolve(item, pseudo) for item in value]
    if isinstance(value, dict) and len(value) == 1:
        [(key, arg)] = value.items()
        if key == "Fn::Join":
            separator, parts = arg
            return separator.join(str(_resolve(part, pseudo)) for part in parts)
        if key == "Ref" and arg in pseudo:
            return pseudo[arg]
    raise ValueError(f"cannot resolve {value!r} outside CloudFormation")


def _logical_id_of(function: lambda_.IFunction) -> str | None:
    resource = function.node.default_child
    if not isinstance(resource, CfnElement):
        return None
    stack = Stack.of(resource)
    logical_id = stack.resolve(stack.get_logical_id(resource))
    return str(logical_id)
