"""The agent HTTP API: routes, request/response models, and the one exception-to-HTTP map.

`functions/api/handler.py` builds this once per process and hands it every event. OpenAPI is
generated from the same pydantic models that validate requests.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import logging
import uuid
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from gatehouse import __version__
from gatehouse.exceptions import GatehouseError, PayloadTooLargeError, PolicyError
from gatehouse.identity import caller_from_event
from gatehouse.models import Principal
from gatehouse.registry import Registry
from gatehouse.service import Gatehouse, Outcome

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_SQL_CHARS = 100_000


class SubmitRequest(BaseModel):
    """An agent's request to run one command on a connection."""

    model_config = ConfigDict(extra="forbid", strict=True)

    connection: str = Field(min_length=1, max_length=128, description="Registered connection name")
    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS, description="The SQL text to run")
    reason: str = Field(default="", max_length=2_000, description="Why the agent runs it (audited)")


class MaskedColumnOut(BaseModel):
    column: str
    rule: str
    strategy: str


class RequestOut(BaseModel):
    request_id: str
    status: Literal["executed", "pending_approval", "denied", "executing", "failed"]
    connection: str
    statement_class: str
    decision: dict[str, Any]
    columns: list[str] | None = None
    rows: list[list[Any]] | None = None
    row_count: int | None = None
    truncated: bool | None = None
    duration_ms: float | None = None
    masked: list[MaskedColumnOut] | None = None


class ErrorOut(BaseModel):
    error: str
    message: str
    request_id: str | None = None


def jsonable(value: Any) -> Any:
    """Postgres values an agent can read in JSON: exact numbers as strings, times in ISO 8601."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def outcome_body(outcome: Outcome) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": outcome.request_id,
        "status": outcome.status,
        "connection": outcome.record.connection,
        "statement_class": outcome.classification.cls.value,
        "statements": [
            {"class": s.cls.value, "relations": list(s.relations), "reason": s.reason}
            for s in outcome.classification.statements
        ],
        "decision": outcome.decision.as_dict(),
    }
    if outcome.result is not None:
        r = outcome.result
        body.update(
            columns=list(r.columns),
            rows=[[jsonable(v) for v in row] for row in r.rows],
            row_count=r.row_count,
            truncated=r.truncated,
            duration_ms=r.duration_ms,
            masked=[{"column": m.column, "rule": m.rule, "strategy": m.strategy} for m in r.masked],
        )
    return body


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, separators=(",", ":")),
    )


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    return _json(status, {"error": code, "message": message, **extra})


def build_app(service: Gatehouse, registry: Registry) -> APIGatewayHttpResolver:
    app = APIGatewayHttpResolver(enable_validation=True)

    def caller() -> Principal:
        identity = caller_from_event(app.current_event.raw_event)
        return registry.principal(identity.principal_key)

    @app.post(
        "/v1/requests",
        summary="Run a command through Gatehouse",
        responses={
            200: {"description": "Executed; masked result"},
            202: {"description": "Waiting for human approval"},
            400: {"description": "Bad input", "content": {"application/json": {"model": ErrorOut}}},
            403: {"description": "Denied by policy"},
        },
    )
    # Route functions carry no return annotation: powertools would build a response model from it.
    def submit(request: Annotated[SubmitRequest, Body()]):
        principal = caller()
        outcome = service.submit(principal, request.connection, request.sql, request.reason)
        status = {"executed": 200, "pending_approval": 202, "denied": 403}[outcome.status]
        return _json(status, outcome_body(outcome))

    @app.get("/v1/requests/<request_id>", summary="Read back a request's record")
    def get_request(
        request_id: Annotated[str, Path(min_length=1, max_length=64)],
        wait: Annotated[int, Query(ge=0, le=20)] = 0,
    ):
        record = service.get_request(caller(), request_id, wait_s=wait)
        return _json(200, record.public_view())

    @app.get("/v1/connections", summary="Connections the caller may use")
    def list_connections():
        return _json(200, {"connections": service.connections_for(caller())})

    @app.get("/v1/openapi.json", summary="This API's OpenAPI document")
    def openapi():
        return Response(
            status_code=200,
            content_type=content_types.APPLICATION_JSON,
            body=app.get_openapi_json_schema(title="Gatehouse agent API", version=__version__),
        )

    @app.exception_handler(RequestValidationError)
    def bad_request(exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
            if err.get("type") == "json_invalid":
                return error_response(400, "malformed_json", "the request body is not valid JSON")
        return error_response(400, "bad_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(PolicyError)
    def policy_failed(exc: PolicyError) -> Response:
        # Fail closed, and say so: the command did not run.
        log.error("policy evaluation failed: %s", exc.message)
        return error_response(500, exc.code, "the policy could not be evaluated; nothing was run")

    @app.exception_handler(GatehouseError)
    def gatehouse_error(exc: GatehouseError) -> Response:
        extra: dict[str, Any] = {}
        if getattr(exc, "sqlstate", None):
            extra["sqlstate"] = exc.sqlstate  # type: ignore[attr-defined]
        if exc.request_id:
            extra["request_id"] = exc.request_id
        return error_response(exc.status, exc.code, exc.message, **extra)

    @app.exception_handler(Exception)
    def unexpected(exc: Exception) -> Response:
        # A bug must not leak a stack trace to an agent; the log keeps it for us.
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Gatehouse failed; nothing was run")

    @app.not_found
    def not_found(exc: Exception) -> Response:
        return error_response(404, "not_found", "no such route")

    return app


def check_body_size(event: dict[str, Any]) -> None:
    """API Gateway allows 10 MB; Gatehouse takes 256 KiB, before any parsing."""
    body = event.get("body") or ""
    size = len(body) * 3 // 4 if event.get("isBase64Encoded") else len(body.encode("utf-8"))
    if size > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the request body is over {MAX_BODY_BYTES} bytes")
