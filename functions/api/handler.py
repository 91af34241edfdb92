"""API Gateway (HTTP API, IAM auth) -> the agent API. Thin: check, delegate, shape the response."""

# ruff: noqa: E402 (in Lambda, the imports below run with the cyclic collector paused: see _collect_again)
from __future__ import annotations

import gc
import os

# Lambda's own variable (powertools reads it too): this process is an execution environment, the
# only one it will ever hold.
_PAUSES_COLLECTOR = bool(os.environ.get("LAMBDA_TASK_ROOT"))
if _PAUSES_COLLECTOR:
    gc.disable()

from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.shared import constants
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice
from aws_lambda_powertools.utilities.typing import LambdaContext

from gatehouse import names
from gatehouse.api_core import AgentApi, dynamodb_store_factory, error_answer, first_request, preflight
from gatehouse.config import Settings
from gatehouse.exceptions import GatehouseError
from gatehouse.runtime import build_runtime

logger = Logger(service=names.API_FUNCTION)

_app: AgentApi | None = None


def _collect_again() -> None:
    """The end of a pause of the cyclic collector, which a cold start spends building objects.

    Importing this module (~600 modules) and the first invocation's build (botocore's service
    models, the policy set) create hundreds of thousands of objects that live as long as the
    process, and almost no garbage: meanwhile the collector would walk that growing heap again and
    again (a full pass costs ~20 ms on a cold interpreter), ~50 ms of CPU in all. So in Lambda it
    is paused while they are built; then they are frozen (gc.freeze: left out of every later pass,
    as they would survive each one) and collection is on again, whatever the pause found: the warm
    function always runs with it. Only in Lambda: frozen objects are never collected, which is
    right for an environment that lives as long as its process, not for the local stack's, which
    are loaded and dropped by the dozen in one process.
    """
    if _PAUSES_COLLECTOR:
        gc.freeze()
        gc.enable()


Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def tracing_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """powertools' own rule: no tracing when POWERTOOLS_TRACE_DISABLED is set or outside Lambda."""
    if resolve_truthy_env_var_choice(env=env.get(constants.TRACER_DISABLED_ENV, "false")):
        return False
    in_lambda = bool(env.get(constants.LAMBDA_TASK_ROOT_ENV))
    emulated = bool(env.get(constants.SAM_LOCAL_ENV) or env.get(constants.CHALICE_LOCAL_ENV))
    return in_lambda and not emulated


def traced(handler: Handler) -> Handler:
    # Building a Tracer imports aws-xray-sdk, whose recorder creates two botocore clients
    # (~200 ms of a cold start); a disabled Tracer would do nothing with them.
    if not tracing_enabled():
        return handler
    from aws_lambda_powertools import Tracer

    tracer = Tracer(service=names.API_FUNCTION)
    # capture_response=False: responses carry query results.
    return tracer.capture_lambda_handler(capture_response=False)(handler)


def _get_app(event: dict[str, Any]) -> AgentApi:
    # Built on the first invocation, then reused by the warm container.
    global _app
    if _app is None:
        if _PAUSES_COLLECTOR:
            gc.disable()  # see _collect_again
        try:
            runtime = build_runtime(Settings.from_env(), first=first_request(event))
            # The table's name is fixed (gatehouse.names), in infra/tables.py as in the local stack;
            # its client is the service's: a keyed request builds no second DynamoDB client.
            store = dynamodb_store_factory(names.IDEMPOTENCY_TABLE, runtime.dynamodb)
            _app = AgentApi(
                runtime.service,
                runtime.registry,
                idempotency_store=store,
                proxy_tokens=runtime.proxy_token_grants,
            )
        finally:
            _collect_again()
    return _app


@logger.inject_lambda_context(clear_state=True)
@traced
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        # Malformed requests are refused before anything is built or parsed.
        event = preflight(event)
    except GatehouseError as exc:
        return error_answer(exc)
    return _get_app(event).resolve(event, context)


_collect_again()
