"""The agent HTTP API's validating app: every route, the request/response models, OpenAPI.

The API function hands this app every request but the common one (gatehouse.api_core: SQL
submissions take a light app there, without pydantic). OpenAPI is generated from the same
pydantic models that validate requests, and declares every answer the API gives (the fuzz test
holds it to that).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gatehouse import __version__
from gatehouse.api_core import (
    COMMAND_FIELDS,
    CONNECTION_NAME_MAX,
    IDEMPOTENCY_KEY_MAX,
    IDEMPOTENCY_KEY_PATTERN,
    JSON_MEDIA_TYPE,
    MAX_REASON_CHARS,
    MAX_SQL_CHARS,
    NO_NUL,
    REQUEST_ID_PATTERN,
    Submissions,
    _json,
    answer_errors,
    dumps,
    error_response,
    parse_json_object,
)
from gatehouse.models import Principal
from gatehouse.registry import Registry
from gatehouse.targets.commands import HttpCommand, KubernetesCommand, SshCommand
from gatehouse.values import jsonable

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer

    from gatehouse.proxy_tokens import ProxyTokenGrants
    from gatehouse.service import Gatehouse


# -- models (they are also the OpenAPI document) ---------------------------------------------


class SubmitRequest(BaseModel):
    """An agent's request to run one command on a connection: exactly one of sql, http, kubernetes, ssh."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # The document says what the validator checks: one command field, of the connection's kind.
        json_schema_extra={
            "oneOf": [
                {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                for name in ("sql", "http", "kubernetes", "ssh")
            ]
        },
    )

    connection: str = Field(
        min_length=1, max_length=CONNECTION_NAME_MAX, pattern=NO_NUL, description="Registered connection name"
    )
    sql: str | None = Field(
        # No NUL pattern here: a NUL in SQL is refused by the classifier, on record (see _check_strings).
        default=None,
        min_length=1,
        max_length=MAX_SQL_CHARS,
        description="The SQL text to run (a connection of kind postgres)",
    )
    http: HttpCommand | None = Field(
        default=None, strict=False, description="An HTTP request (a connection of kind http)"
    )
    kubernetes: KubernetesCommand | None = Field(
        default=None, strict=False, description="A Kubernetes API request (a connection of kind kubernetes)"
    )
    ssh: SshCommand | None = Field(
        default=None, strict=False, description="One shell command (a connection of kind ssh)"
    )
    reason: str = Field(
        default="", max_length=MAX_REASON_CHARS, pattern=NO_NUL, description="Why the agent runs it (audited)"
    )

    @model_validator(mode="after")
    def _one_command(self) -> SubmitRequest:
        given = [name for name in COMMAND_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(COMMAND_FIELDS)} (got {len(given)})")
        return self

    @property
    def command_field(self) -> str:
        return next(name for name in COMMAND_FIELDS if getattr(self, name) is not None)

    def fields(self) -> dict[str, Any]:
        return self.model_dump()


# Response models only describe answers in the OpenAPI document (bodies are built as dicts):
# building their validators at import would cost every cold start for nothing.
_DESCRIBES_ONLY = ConfigDict(defer_build=True)


class MaskedColumnOut(BaseModel):
    model_config = _DESCRIBES_ONLY

    column: str
    rule: str = Field(description="lineage | lineage:undetermined | fallback:<pattern> | detector:<name>")
    strategy: str
    # default=[] rather than default_factory=list: pydantic copies the default for each instance,
    # and inspecting the signature of the builtin `list` costs a cold start ~8 ms (tokenize).
    sources: list[str] = Field(default=[], description="Protected source columns, for lineage")
    reason: str = Field(default="", description='Why, e.g. "customers.ssn via reverse()"')


class StatementOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True, defer_build=True)

    class_: str = Field(alias="class")
    relations: list[str]
    reason: str


class RequestOut(BaseModel):
    """The outcome of POST /v1/requests: executed (200), pending approval (202) or denied (403)."""

    model_config = _DESCRIBES_ONLY

    request_id: str
    status: Literal["executed", "pending_approval", "denied"]
    connection: str
    statement_class: str
    statements: list[StatementOut]
    decision: dict[str, Any]
    columns: list[str] | None = None
    rows: list[list[Any]] | None = None
    row_count: int | None = None
    truncated: bool | None = None
    truncated_reason: Literal["row_limit", "byte_limit"] | None = None
    duration_ms: float | None = None
    masked: list[MaskedColumnOut] | None = None
    preview: dict[str, Any] | None = Field(
        default=None, description="What the command would do (pending approval): EXPLAIN or a dry run"
    )
    expires_at: int | None = Field(default=None, description="Pending approval: when it expires (epoch s)")
    rows_not_kept: bool | None = Field(
        default=None,
        description="On an idempotent replay only: the result was too large to keep, so the rows "
        "are not repeated (the command ran once).",
    )


class RequestRecordOut(BaseModel):
    """A request's record, as its agent may read it back."""

    model_config = _DESCRIBES_ONLY

    request_id: str
    status: Literal[
        "executing", "executed", "failed", "denied", "pending_approval", "approved", "expired", "drifted"
    ]
    principal_name: str
    connection: str
    sql: str
    sql_sha256: str
    statement_class: str
    decision: str
    policy_ids: list[str]
    reason: str
    created_at: int
    updated_at: int
    expires_at: int
    approval_group: str | None = None
    approval_quorum: int | None = None
    approval_groups: list[str] | None = None
    approval_expires_at: int | None = None
    relations: list[str] | None = None
    preview: dict[str, Any] | None = None
    owner: str | None = None
    votes: list[dict[str, Any]] | None = None
    decided_by: str | None = None
    decided_reason: str | None = None
    row_count: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = Field(
        default=None, description="Once executed after approval: the masked result (as POST returns it)"
    )


class RequestListOut(BaseModel):
    model_config = _DESCRIBES_ONLY

    requests: list[RequestRecordOut]


class ConnectionOut(BaseModel):
    model_config = _DESCRIBES_ONLY

    name: str
    kind: str
    attributes: dict[str, Any]
    actions: dict[str, Literal["allow", "approval", "deny"]]


class ConnectionsOut(BaseModel):
    model_config = _DESCRIBES_ONLY

    connections: list[ConnectionOut]


class ProxyTokenRequest(BaseModel):
    """A short-lived password for the Postgres proxy, for one connection."""

    model_config = ConfigDict(extra="forbid", strict=True)

    connection: str = Field(
        min_length=1,
        max_length=CONNECTION_NAME_MAX,
        pattern=NO_NUL,
        description="Registered postgres connection name",
    )
    # Bounds as gatehouse.proxy_tokens MIN_TTL_S / MAX_TTL_S (12 h); default 15 minutes.
    ttl_s: int | None = Field(default=None, ge=60, le=43_200, description="Lifetime in seconds (900)")

    @field_validator("ttl_s", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        # JSON Schema (and so the OpenAPI document) counts 300.0 as an integer; strict mode would not.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class ProxyTokenOut(BaseModel):
    model_config = _DESCRIBES_ONLY

    host: str | None = Field(description="The proxy's host; null while no proxy is running")
    port: int | None
    username: str = Field(description="The agent's registered name")
    password: str = Field(description="The signed, short-lived token (ASCII, no NUL)")
    database: str = Field(description="The connection's name (the proxy maps it to the database)")
    expires_at: int = Field(description="Epoch seconds")
    issued_at: int
    connection: str
    proxy_running: bool
    message: str | None = None


class ErrorOut(BaseModel):
    model_config = _DESCRIBES_ONLY

    error: str = Field(description="A stable code, e.g. bad_request, unknown_connection")
    message: str
    request_id: str | None = None
    sqlstate: str | None = None
    outcome: Literal["uncertain"] | None = Field(
        default=None, description="Present when the command may have run: look the request up"
    )


def _answer(description: str, model: Any = ErrorOut) -> OpenAPIResponse:
    return {"description": description, "content": {JSON_MEDIA_TYPE: {"model": model}}}


# Every route can answer these: the caller is not a registered agent (403), a bug or an
# unavailable dependency (500/503).
_COMMON_ANSWERS: dict[int, OpenAPIResponse] = {
    400: _answer("Bad input"),
    403: _answer("The caller is not a registered agent"),
    500: _answer("Gatehouse failed (policy could not be evaluated, or a bug)"),
    503: _answer("A dependency Gatehouse needs is unavailable; retry later"),
}
_SUBMIT_ANSWERS: dict[int, OpenAPIResponse] = {
    **_COMMON_ANSWERS,
    200: _answer("Executed; the masked result", RequestOut),
    202: _answer("Waiting for human approval", RequestOut),
    403: _answer("Denied by policy, or the caller is not a registered agent", RequestOut | ErrorOut),
    404: _answer("No such connection"),
    408: _answer("The command ran over its statement timeout and was cancelled"),
    409: _answer("A request with this Idempotency-Key is still in progress"),
    413: _answer("The body is over 256 KiB"),
    415: _answer("The body is not application/json"),
    422: _answer("The target refused the command (with its SQLSTATE), or the Idempotency-Key was reused"),
}


# -- the app ---------------------------------------------------------------------------------


def openapi_document(app: APIGatewayHttpResolver) -> str:
    """powertools' document, without the 422 it adds to every validated route: this API answers
    invalid input with 400 (ErrorOut), and the document must only declare answers it gives."""
    doc = json.loads(app.get_openapi_json_schema(title="Gatehouse agent API", version=__version__))
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {})
            schema = responses.get("422", {}).get("content", {}).get(JSON_MEDIA_TYPE, {}).get("schema", {})
            if str(schema.get("$ref", "")).endswith("/HTTPValidationError"):
                del responses["422"]
    schemas = doc.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in json.dumps(doc.get("paths", {})):
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
    return dumps(doc)


def build_app(
    service: Gatehouse,
    registry: Registry,
    *,
    idempotency_store: Callable[[], BasePersistenceLayer] | None = None,
    proxy_tokens: Callable[[], ProxyTokenGrants] | None = None,
    submissions: Submissions | None = None,
) -> APIGatewayHttpResolver:
    """`idempotency_store` builds the persistence layer on the first keyed request; `proxy_tokens`
    the proxy password issuer on the first POST /v1/proxy-tokens (default: from the environment).
    `submissions` is the routes' work when another app shares it (gatehouse.api_core.AgentApi)."""
    app = APIGatewayHttpResolver(enable_validation=True, json_body_deserializer=parse_json_object)
    work = submissions or Submissions(service, registry, idempotency_store)

    document: list[str] = []  # built on first request, then served as is
    grants: list[ProxyTokenGrants] = []  # built on first use, then kept

    def caller() -> Principal:
        return work.caller(app)

    @app.post("/v1/requests", summary="Run a command through Gatehouse", responses=_SUBMIT_ANSWERS)
    # Route functions carry no return annotation: powertools would build a response model from it.
    def submit(
        request: Annotated[SubmitRequest, Body()],
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=IDEMPOTENCY_KEY_MAX,
                pattern=IDEMPOTENCY_KEY_PATTERN,
                description="Retries with the same key and body within 24 h return the first answer "
                "and run nothing; another body with the key is a 422.",
            ),
        ] = None,
    ):
        return work.answer(app, request, idempotency_key)

    @app.get(
        "/v1/requests/<request_id>",
        summary="Read back a request's record",
        responses={
            **_COMMON_ANSWERS,
            200: _answer("The request's record", RequestRecordOut),
            404: _answer("No such request (or not the caller's)"),
        },
    )
    def get_request(
        request_id: Annotated[str, Path(min_length=1, max_length=64, pattern=REQUEST_ID_PATTERN)],
        wait: Annotated[int, Query(ge=0, le=20)] = 0,
    ):
        record = service.get_request(caller(), request_id, wait_s=wait)
        return _json(200, jsonable(record.public_view()))

    @app.get(
        "/v1/requests",
        summary="The caller's requests, newest first",
        responses={**_COMMON_ANSWERS, 200: _answer("The caller's requests", RequestListOut)},
    )
    def list_requests(pending: Annotated[bool, Query()] = False):
        records = service.list_requests(caller(), pending_only=pending)
        return _json(200, {"requests": [jsonable(r.public_view()) for r in records]})

    @app.get(
        "/v1/connections",
        summary="Connections the caller may use",
        responses={
            **_COMMON_ANSWERS,
            200: _answer("The connections and what each action needs", ConnectionsOut),
        },
    )
    def list_connections():
        return _json(200, {"connections": jsonable(service.connections_for(caller()))})

    @app.post(
        "/v1/proxy-tokens",
        summary="A short-lived password for the Postgres proxy",
        responses={
            **_COMMON_ANSWERS,
            200: _answer("Connection parameters and the password (Cache-Control: no-store)", ProxyTokenOut),
            400: _answer("Bad input, or the connection is not of kind postgres"),
            404: _answer("No such connection (or the caller may use none of its actions)"),
            413: _answer("The body is over 256 KiB"),
            415: _answer("The body is not application/json"),
            422: _answer("The password would be too long for a Postgres client"),
        },
    )
    def proxy_token(request: Annotated[ProxyTokenRequest, Body()]):
        principal = caller()
        if not grants:
            from gatehouse.proxy_tokens import default_grants

            grants.append((proxy_tokens or default_grants)())
        # The same rule as GET /v1/connections: usable when at least one action is not denied.
        usable = service.connections_for(principal)
        body = grants[0].grant(principal, request.connection, usable, request.ttl_s)
        # RFC 9111: a credential must not be kept by any cache on the way.
        return _json(200, body, {"Cache-Control": "no-store"})

    @app.get(
        "/v1/openapi.json",
        summary="This API's OpenAPI document",
        responses={
            200: {
                "description": "The OpenAPI 3 document",
                "content": {JSON_MEDIA_TYPE: {"schema": {"type": "object"}}},
            }
        },
    )
    def openapi():
        if not document:
            document.append(openapi_document(app))
        return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=document[0])

    @app.exception_handler(RequestValidationError)
    def bad_request(exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
            if err.get("type") == "json_invalid":
                return error_response(400, "malformed_json", "the request body is not valid JSON")
        return error_response(400, "bad_request", "; ".join(problems) or "invalid request")

    answer_errors(app)
    return app
