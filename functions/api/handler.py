"""API Gateway (HTTP API, IAM auth) -> the agent API. Thin: parse, delegate, shape the response."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.utilities.typing import LambdaContext

from gatehouse.api import build_app, check_body_size
from gatehouse.config import Settings
from gatehouse.exceptions import GatehouseError
from gatehouse.runtime import build_runtime

logger = Logger(service="gatehouse-api")
tracer = Tracer(service="gatehouse-api")

_app: APIGatewayHttpResolver | None = None


def _get_app() -> APIGatewayHttpResolver:
    # Built on the first invocation, then reused by the warm container.
    global _app
    if _app is None:
        runtime = build_runtime(Settings.from_env())
        _app = build_app(runtime.service, runtime.registry)
    return _app


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)  # responses carry query results
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        check_body_size(event)
    except GatehouseError as exc:
        return {
            "statusCode": exc.status,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"error": exc.code, "message": exc.message}),
            "isBase64Encoded": False,
        }
    return _get_app().resolve(event, context)
