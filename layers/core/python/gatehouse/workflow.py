"""The approval workflow in Step Functions: start one execution per request, answer its task token,
and run the state machine's steps (the approvals function) against the service.

The state machine itself is defined once in `infra/approvals.py`; the local stack runs the same
definition in moto. An execution is named after its request id, so a request can never hold two.
Its state carries ids and decisions only, never a command's result: a state is limited to 256 KB
and an execution's history is readable by whoever may describe it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse.exceptions import BadRequestError, GatehouseError

log = logging.getLogger(__name__)

# The steps the state machine asks of the approvals function (`event["step"]`).
STEP_PREVIEW = "preview"
STEP_NOTIFY = "notify"
STEP_EXECUTE = "execute"
STEP_DENIED = "denied"
STEP_EXPIRE = "expire"
STEP_FAIL = "fail"  # a step failed for good: the request is failed, never left pending
# The outcome shown in the Slack message. Its own step, run by the notify function: the steps that
# run commands are in the VPC, with no route to Slack and no Slack secret.
STEP_ANNOUNCE = "announce"
STEPS = (STEP_PREVIEW, STEP_NOTIFY, STEP_EXECUTE, STEP_DENIED, STEP_EXPIRE, STEP_FAIL, STEP_ANNOUNCE)

DECISION_APPROVED = "approved"
DECISION_DENIED = "denied"
DECISIONS = (DECISION_APPROVED, DECISION_DENIED)

# StartExecution's `name`: 1 to 80 characters, letters, digits, "-" and "_" (no whitespace,
# wildcards or control characters; we are stricter than the documented set on purpose).
_EXECUTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
# The task's TimeoutSecondsPath must resolve to a positive integer; a year is far beyond any expiry.
MAX_EXPIRES_IN_S = 365 * 24 * 3600

# The service answers these when the token no longer waits: the execution timed out (the request
# expired), the task already received its answer, or the token is not one of ours.
_CLOSED_ERRORS = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"})


class WorkflowUnavailableError(GatehouseError):
    """Step Functions could not start the request's execution: nobody can approve it."""

    code = "approval_unavailable"
    status = 503


class WorkflowAlreadyStartedError(GatehouseError):
    """An execution for this request id exists already (with another input, or finished)."""

    code = "approval_already_started"
    status = 409


class ApprovalClosedError(GatehouseError):
    """The request no longer waits for a decision: expired, already decided, or unknown token."""

    code = "approval_closed"
    status = 409


class Workflow:
    """One Step Functions state machine (names.STATE_MACHINE_NAME) and its executions."""

    def __init__(self, sfn_client: Any, state_machine_arn: str) -> None:
        if not state_machine_arn:
            raise ValueError("the approval state machine's ARN is not set")
        self._sfn = sfn_client
        self.state_machine_arn = state_machine_arn

    def start(self, request_id: str, expires_in_s: int) -> str:
        """Start the request's execution (named after it); return the execution ARN.

        A second start with the same input while the first runs returns the same execution, as
        Step Functions does; any other second start raises WorkflowAlreadyStartedError.
        """
        _check_execution_name(request_id)
        if isinstance(expires_in_s, bool) or not isinstance(expires_in_s, int):
            raise TypeError(f"expires_in_s must be an int, got {type(expires_in_s).__name__}")
        if not 0 < expires_in_s <= MAX_EXPIRES_IN_S:
            raise ValueError(f"expires_in_s must be between 1 and {MAX_EXPIRES_IN_S}, got {expires_in_s}")
        payload = json.dumps({"request_id": request_id, "expires_in_s": expires_in_s})
        try:
            resp = self._sfn.start_execution(
                stateMachineArn=self.state_machine_arn, name=request_id, input=payload
            )
        except ClientError as exc:
            code = _error_code(exc)
            if code == "ExecutionAlreadyExists":
                raise WorkflowAlreadyStartedError(
                    f"request {request_id} already has an approval workflow"
                ) from exc
            log.warning("StartExecution for %s failed: %s", request_id, code)
            raise WorkflowUnavailableError(
                f"the approval workflow could not be started ({code}); the request was not queued"
            ) from exc
        except BotoCoreError as exc:
            log.warning("StartExecution for %s failed: %s", request_id, type(exc).__name__)
            raise WorkflowUnavailableError(
                "the approval workflow is unreachable; the request was not queued"
            ) from exc
        return str(resp["executionArn"])

    def resume(self, task_token: str, decision: str) -> None:
        """Answer the waiting Notify task: the execution goes on to Execute or RecordDenied."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        if not task_token:
            raise ApprovalClosedError("the request holds no task token: it is not waiting for a decision")
        try:
            self._sfn.send_task_success(taskToken=task_token, output=json.dumps({"decision": decision}))
        except ClientError as exc:
            code = _error_code(exc)
            if code in _CLOSED_ERRORS:
                raise ApprovalClosedError(
                    "the request no longer waits for a decision (expired or already decided)"
                ) from exc
            log.warning("SendTaskSuccess failed: %s", code)
            raise WorkflowUnavailableError(
                f"the decision could not be delivered to the approval workflow ({code})"
            ) from exc
        except BotoCoreError as exc:
            log.warning("SendTaskSuccess failed: %s", type(exc).__name__)
            raise WorkflowUnavailableError("the approval workflow is unreachable") from exc


class ApprovalSteps(Protocol):
    """What the state machine asks of the service (gatehouse.service.Gatehouse)."""

    def record_preview(self, request_id: str) -> object: ...

    def notify(self, request_id: str, task_token: str) -> object: ...

    def execute_approved(self, request_id: str) -> Mapping[str, Any]: ...

    def finish_denied(self, request_id: str) -> object: ...

    def expire(self, request_id: str) -> object: ...

    def fail_approval(self, request_id: str) -> object: ...

    def announce_outcome(self, request_id: str) -> object: ...


def run_step(service: ApprovalSteps, event: Mapping[str, Any]) -> dict[str, Any]:
    """One task of the state machine: `{"step": ..., "request_id": ...[, "task_token"]}`.

    Returns what goes into the execution's state: the step, the request id and, after Execute,
    the request's status (the result itself stays in the request record and the session log).
    """
    step = event.get("step")
    request_id = event.get("request_id")
    if step not in STEPS:
        raise BadRequestError(f"unknown approval step {step!r}")
    if not isinstance(request_id, str) or not request_id:
        raise BadRequestError("the approval step has no request_id")
    answer: dict[str, Any] = {"step": step, "request_id": request_id}
    if step == STEP_PREVIEW:
        service.record_preview(request_id)
    elif step == STEP_NOTIFY:
        token = event.get("task_token")
        if not isinstance(token, str) or not token:
            raise BadRequestError("the notify step has no task_token")
        service.notify(request_id, token)
    elif step == STEP_EXECUTE:
        outcome = service.execute_approved(request_id)
        status = outcome.get("status") if isinstance(outcome, Mapping) else None
        if isinstance(status, str):
            answer["status"] = status
    elif step == STEP_DENIED:
        service.finish_denied(request_id)
    elif step == STEP_FAIL:
        service.fail_approval(request_id)
    elif step == STEP_ANNOUNCE:
        service.announce_outcome(request_id)
    else:
        expired = service.expire(request_id)
        status = expired.get("status") if isinstance(expired, Mapping) else None
        if isinstance(status, str):
            answer["status"] = status
    return answer


def execution_arn(state_machine_arn: str, request_id: str) -> str:
    """The ARN Step Functions gives the request's execution (for describe/history lookups)."""
    _check_execution_name(request_id)
    prefix, sep, name = state_machine_arn.rpartition(":stateMachine:")
    if not sep:
        raise ValueError(f"not a state machine ARN: {state_machine_arn!r}")
    return f"{prefix}:execution:{name}:{request_id}"


def _check_execution_name(request_id: str) -> None:
    if not isinstance(request_id, str) or not _EXECUTION_NAME.fullmatch(request_id):
        raise ValueError(f"a request id must be 1-80 letters, digits, '-' or '_': {request_id!r}")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "unknown")
