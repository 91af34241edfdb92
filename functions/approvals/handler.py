"""Step Functions (the approvals state machine) -> the service's approval steps. Thin: build once,
dispatch `event["step"]` (gatehouse.workflow.run_step), return the step's small answer."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from gatehouse import names
from gatehouse.config import Settings
from gatehouse.metrics import approval_step_metrics
from gatehouse.runtime import Runtime, build_runtime
from gatehouse.workflow import run_step

logger = Logger(service=names.APPROVALS_FUNCTION)

_runtime: Runtime | None = None


def _get_runtime() -> Runtime:
    # Built on the first invocation, then reused by the warm container.
    global _runtime
    if _runtime is None:
        _runtime = build_runtime(Settings.from_env())
    return _runtime


# The event carries the task token on Notify: it resumes the execution, so it is not logged.
@logger.inject_lambda_context(clear_state=True, log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(step=event.get("step"), request_id=event.get("request_id"))
    # Errors propagate: the task fails, and the state machine's Retry and Catch decide what follows.
    answer = run_step(_get_runtime().service, event)
    approval_step_metrics(answer)
    return answer
