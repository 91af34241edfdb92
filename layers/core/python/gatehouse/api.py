"""The agent HTTP API: routes, request/response models, and the one exception-to-HTTP map.

`functions/api/handler.py` builds this once per process and hands it every event, after
`preflight` has refused what is malformed. OpenAPI is generated from the same pydantic models
that validate requests, and declares every answer the API gives (the fuzz test holds it to that).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gatehouse import __version__, names
from gatehouse.exceptions import (
    BadRequestError,
    GatehouseError,
    PayloadTooLargeError,
    PolicyError,
    StatementTimeoutError,
    TargetError,
)
from gatehouse.identity import caller_from_event
from gatehouse.models import Principal
from gatehouse.registry import Registry

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer

    from gatehouse.proxy_tokens import ProxyTokenGrants
    from gatehouse.runtime import FirstRequest
    from gatehouse.service import Gatehouse, Outcome
from gatehouse.targets.commands import HttpCommand, KubernetesCommand, SshCommand
from gatehouse.values import jsonable, result_view

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_SQL_CHARS = 100_000
CONNECTION_NAME_MAX = 128
# Our bodies are flat objects; 32 levels leaves room for nested `http`/`kubernetes` commands and
# stays far below the recursion limit a deep document would otherwise hit inside json.loads.
MAX_JSON_DEPTH = 32
# Python refuses ints over 4,300 digits with a ValueError; no field of ours needs more than this.
MAX_NUMBER_CHARS = 100
# RFC 9110: a request with content the resource does not accept in that media type is a 415.
JSON_MEDIA_TYPE = "application/json"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

IDEMPOTENCY_HEADER = "idempotency-key"
IDEMPOTENCY_KEY_MAX = 128
# Visible ASCII and inner spaces: a header value survives every proxy unchanged (RFC 9110 5.5).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?$"
IDEMPOTENCY_TTL_S = 24 * 3600
IDEMPOTENCY_KEY_PREFIX = f"{names.API_FUNCTION}.submit"
# DynamoDB items are at most 400 KB; a bigger stored answer is kept without its rows.
MAX_STORED_BODY_BYTES = 300_000
REPLAYED_HEADER = "Idempotent-Replayed"

# Postgres text cannot hold U+0000 (and its wire protocol ends a query at one): refused, and the
# OpenAPI document says so.
NO_NUL = r"^[^\x00]*$"
# Request ids are UUIDs; the pattern keeps them free of anything a URL path would encode.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9-]{1,64}$"

_IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)
_JSON_STRUCTURE = re.compile(r'[\[\]{}"\\]')


class UnsupportedMediaTypeError(GatehouseError):
    """The body is not `application/json` (UTF-8)."""

    code = "unsupported_media_type"
    status = 415


class IdempotencyInProgressError(GatehouseError):
    """A request with this Idempotency-Key is still running."""

    code = "idempotency_in_progress"
    status = 409


class IdempotencyKeyReusedError(GatehouseError):
    """The Idempotency-Key was used before with a different body."""

    code = "idempotency_key_reused"
    status = 422


class IdempotencyUnavailableError(GatehouseError):
    """The idempotency store could not be read or written before the command ran."""

    code = "idempotency_unavailable"
    status = 503


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
        default="", max_length=2_000, pattern=NO_NUL, description="Why the agent runs it (audited)"
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


COMMAND_FIELDS = ("sql", "http", "kubernetes", "ssh")


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


# -- strict JSON, both ways ------------------------------------------------------------------


def dumps(body: Any) -> str:
    # allow_nan=False: a non-finite float that slipped past jsonable fails here, loudly, rather
    # than going out as a bare NaN that strict JSON parsers reject.
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays/objects nest deeper than `limit` (strings skipped, one linear pass)."""
    depth = 0
    in_string = False
    skip_to = -1
    for match in _JSON_STRUCTURE.finditer(text):
        pos = match.start()
        if pos < skip_to:
            continue
        char = match.group()
        if in_string:
            if char == "\\":
                skip_to = pos + 2  # the escaped character, whatever it is
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8259 leaves duplicate names to the parser; a proxy that keeps the first while we keep
    # the last would act on a body nobody reviewed. Refuse them.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadRequestError(f"the key {key!r} appears twice in one object", code="duplicate_key")
        out[key] = value
    return out


def _number(text: str, convert: Callable[[str], Any]) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadRequestError(
            f"a number in the body is over {MAX_NUMBER_CHARS} characters", code="number_too_large"
        )
    value = convert(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequestError(f"the number {text[:20]} is out of range", code="number_too_large")
    return value


def _not_json_constant(name: str) -> Any:
    raise BadRequestError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)", code="malformed_json")


TARGET_FIELDS = ("http", "kubernetes", "ssh")


def _check_encodable(value: Any) -> None:
    """No lone surrogate anywhere in `value` (it cannot be encoded, logged or hashed)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadRequestError("a string holds a lone surrogate escape", code="invalid_text") from exc
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_strings(value: Any) -> None:
    """Strings must be Unicode text the database accepts: no lone surrogates, no NUL.

    The one exception is NUL in the top-level `sql`: the classifier refuses it (libpg_query would
    read only the text before it, so a NUL can hide a statement), and that refusal belongs in the
    session log as the hostile attempt it is.
    """
    stack: list[Any] = [value]
    if isinstance(value, dict):
        # NUL is checked where it matters past the API: the SQL classifier refuses it on record,
        # and each target kind refuses control characters in paths, headers and commands (a NUL
        # inside an HTTP body's JSON is content, not an attack). Lone surrogates are refused here.
        own = {k: v for k, v in value.items() if k not in ("sql", *TARGET_FIELDS)}
        stack = [*value.keys(), *own.values()]
        for name in ("sql", *TARGET_FIELDS):
            if name in value:
                _check_encodable(value[name])
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise BadRequestError("strings may not contain U+0000", code="invalid_text")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadRequestError("a string holds a lone surrogate escape", code="invalid_text") from exc
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json_object(text: str) -> dict[str, Any]:
    """The request body as a JSON object, or a BadRequestError: strict RFC 8259, bounded."""
    if json_depth_exceeds(text):
        raise BadRequestError(f"the body nests deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_int=lambda s: _number(s, int),
            parse_float=lambda s: _number(s, float),
            parse_constant=_not_json_constant,
        )
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"the request body is not valid JSON ({exc.msg} at {exc.pos})", code="malformed_json"
        ) from exc
    except RecursionError as exc:  # json_depth_exceeds should have caught it; never a 500
        raise BadRequestError("the body nests too deep", code="json_too_deep") from exc
    if not isinstance(value, dict):
        raise BadRequestError(
            f"the request body must be a JSON object, not {type(value).__name__}", code="bad_request"
        )
    _check_strings(value)
    return value


# -- before anything is built or parsed ------------------------------------------------------


def check_body_size(event: Mapping[str, Any]) -> None:
    """API Gateway allows 10 MB; Gatehouse takes 256 KiB, before any parsing."""
    body = event.get("body") or ""
    size = len(body) * 3 // 4 if event.get("isBase64Encoded") else len(body.encode("utf-8"))
    if size > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the request body is over {MAX_BODY_BYTES} bytes")


def _check_media_type(content_type: str | None) -> None:
    media, _, params = (content_type or "").partition(";")
    if media.strip().lower() != JSON_MEDIA_TYPE:
        raise UnsupportedMediaTypeError(
            f"the body must be {JSON_MEDIA_TYPE}, not {media.strip()[:64] or 'untyped'}"
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            # RFC 8259 section 8.1: JSON exchanged between systems is UTF-8.
            raise UnsupportedMediaTypeError(f"JSON is UTF-8, not {value.strip()[:32]}")


def check_idempotency_key(value: str | None) -> None:
    if value is not None and not _IDEMPOTENCY_KEY_RE.match(value):
        raise BadRequestError(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters",
            code="bad_idempotency_key",
        )


def preflight(event: dict[str, Any]) -> dict[str, Any]:
    """Refuse a malformed request before any work is done; return the event with a text body.

    Size (413), media type (415), an empty body (400), invalid UTF-8 (400) and a malformed
    Idempotency-Key (400) are checked here, on the raw event, without building the service.
    The JSON itself is parsed once, by `parse_json_object`, when the route asks for the body.
    """
    check_body_size(event)
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    check_idempotency_key(headers.get(IDEMPOTENCY_HEADER))
    method = str(((event.get("requestContext") or {}).get("http") or {}).get("method") or "").upper()
    if method not in BODY_METHODS:
        return event
    raw = event.get("body") or ""
    if not raw:
        raise BadRequestError("the request body is empty; send a JSON object", code="empty_body")
    _check_media_type(headers.get("content-type"))
    if not event.get("isBase64Encoded"):
        return event
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError("the request body could not be decoded", code="bad_request") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"the request body is not UTF-8 (byte {exc.start})", code="invalid_utf8"
        ) from exc
    return {**event, "body": text, "isBase64Encoded": False}


def first_request(event: Mapping[str, Any]) -> FirstRequest | None:
    """What a `POST /v1/requests` event will read first (gatehouse.runtime.FirstRequest), or None.

    Read off a preflighted event for a cold process's head start only: the route parses and
    validates the body again, and refuses it with the right answer when it is wrong.
    """
    from gatehouse.runtime import FirstRequest

    if (event.get("routeKey") or "") != "POST /v1/requests":
        return None
    try:
        principal_key = caller_from_event(event).principal_key
        body = parse_json_object(str(event.get("body") or ""))
    except GatehouseError:
        return None
    connection = body.get("connection")
    if not isinstance(connection, str) or not 0 < len(connection) <= CONNECTION_NAME_MAX:
        return None
    return FirstRequest(principal_key=principal_key, connection=connection)


def error_answer(exc: GatehouseError) -> dict[str, Any]:
    """A proxy response for an error caught before the app runs (the same shape as `error_body`)."""
    status, body = error_body(exc)
    return {
        "statusCode": status,
        "headers": {"Content-Type": content_types.APPLICATION_JSON},
        "body": dumps(body),
        "isBase64Encoded": False,
    }


# -- answers ---------------------------------------------------------------------------------


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
        body.update(result_view(outcome.result))
    if outcome.target_result is not None:
        from gatehouse.target_requests import target_result_view

        body.update(jsonable(target_result_view(outcome.target_result)))
    if outcome.record.preview is not None:
        body["preview"] = outcome.record.preview
    if outcome.status == "pending_approval" and outcome.record.approval_expires_at:
        body["expires_at"] = outcome.record.approval_expires_at
    return body


UNCERTAIN = (
    "The command had been sent to the target, so it may have run: look the request up "
    "(GET /v1/requests/{id}) before you send it again."
)


UNCERTAIN_UNEXPECTED = (
    "Gatehouse failed after the command may have been sent to the target, so it may have run: "
    "look your requests up (GET /v1/requests/{id}) before you send it again."
)


def error_body(exc: GatehouseError) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if getattr(exc, "sqlstate", None):
        body["sqlstate"] = exc.sqlstate  # type: ignore[attr-defined]
    if exc.request_id:
        body["request_id"] = exc.request_id
    if exc.command_sent and exc.status >= 500:
        body["outcome"] = "uncertain"
        body["message"] = f"{exc.message.rstrip('. ')}. {UNCERTAIN}"
    return exc.status, body


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=dumps(body),
        headers=dict(headers) if headers else None,
    )


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    return _json(status, {"error": code, "message": message, **extra})


# -- idempotent submissions ------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


def is_final(exc: GatehouseError) -> bool:
    """An error to store and replay: the command reached the target, so running it again is a
    second run. Errors before that (503 unavailable, unknown connection...) stay retryable."""
    return exc.command_sent or isinstance(exc, TargetError | StatementTimeoutError)


def request_digest(request: SubmitRequest) -> str:
    """The body's identity: the same fields with the same values, however the JSON was spaced."""
    canonical = json.dumps(request.model_dump(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _stored(answer: StoredAnswer) -> dict[str, Any]:
    """What DynamoDB keeps of an answer (the agent that asked first gets it whole)."""
    body = answer.body
    if len(dumps(body)) > MAX_STORED_BODY_BYTES:
        body = {**body, "rows": None, "rows_not_kept": True}
    return {"status": answer.status, "body": body}


def _replayed(stored: dict[str, Any]) -> StoredAnswer:
    return StoredAnswer(int(stored["status"]), dict(stored["body"]), replayed=True)


class IdempotentSubmissions:
    """POST /v1/requests with an Idempotency-Key: run once per (principal, key), replay after.

    powertools' idempotency utility holds the lock and the stored answer in DynamoDB: a record
    is INPROGRESS while the command runs (a second request gets 409), COMPLETED with the answer
    after (a retry within 24 h gets it back). The body's digest is the payload validation, so the
    key reused with another body is a 422 (draft-ietf-httpapi-idempotency-key-header, section 2.7).
    The utility is imported on first use: requests without a key never pay for it.
    """

    def __init__(self, store_factory: Callable[[], BasePersistenceLayer]) -> None:
        self._store_factory = store_factory
        self._run_once: Callable[..., StoredAnswer] | None = None
        self._config: Any = None

    def _build(self) -> Callable[..., StoredAnswer]:
        from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
        from aws_lambda_powertools.utilities.idempotency.serialization.custom_dict import (
            CustomDictSerializer,
        )

        self._config = IdempotencyConfig(
            event_key_jmespath="[principal, key]",
            payload_validation_jmespath="body_sha256",
            expires_after_seconds=IDEMPOTENCY_TTL_S,
            raise_on_no_idempotency_key=True,
            # The record id hashes principal and key: a collision would replay one agent's answer
            # to another, so not powertools' default md5.
            hash_function="sha256",
        )

        @idempotent_function(
            data_keyword_argument="identity",
            persistence_store=self._store_factory(),
            config=self._config,
            key_prefix=IDEMPOTENCY_KEY_PREFIX,
            # from_dict runs only when a stored answer is replayed.
            output_serializer=CustomDictSerializer(to_dict=_stored, from_dict=_replayed),
        )
        def run_once(*, identity: dict[str, str], work: Callable[[], StoredAnswer]) -> StoredAnswer:
            return work()

        return run_once

    def run(
        self,
        principal: Principal,
        key: str,
        digest: str,
        work: Callable[[], StoredAnswer],
        lambda_context: Any = None,
    ) -> StoredAnswer:
        from aws_lambda_powertools.utilities.idempotency.exceptions import (
            IdempotencyAlreadyInProgressError,
            IdempotencyInconsistentStateError,
            IdempotencyPersistenceLayerError,
            IdempotencyValidationError,
        )

        if self._run_once is None:
            self._run_once = self._build()
        if lambda_context is not None and hasattr(lambda_context, "get_remaining_time_in_millis"):
            # An invocation killed mid-flight frees its key at the function's deadline.
            self._config.register_lambda_context(lambda_context)
        ran: list[StoredAnswer] = []
        failed: list[BaseException] = []

        def tracked() -> StoredAnswer:
            try:
                ran.append(work())
            except BaseException as exc:
                failed.append(exc)
                raise
            return ran[-1]

        identity = {"principal": principal.arn or principal.name, "key": key, "body_sha256": digest}
        try:
            stored = self._run_once(identity=identity, work=tracked)
        except IdempotencyAlreadyInProgressError as exc:
            raise IdempotencyInProgressError(
                "a request with this Idempotency-Key is still in progress; retry shortly"
            ) from exc
        except IdempotencyValidationError as exc:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was used with a different body; use a new key for a new request"
            ) from exc
        except (IdempotencyPersistenceLayerError, IdempotencyInconsistentStateError) as exc:
            if failed:
                raise failed[-1] from None  # the command's own error is the one to report
            if ran:
                # It ran but its answer could not be stored: the agent gets it now, once.
                log.error("idempotency: could not store the answer for %s", ran[-1].body.get("request_id"))
                return ran[-1]
            raise IdempotencyUnavailableError(
                "the idempotency store is unavailable; nothing was run, retry later"
            ) from exc
        return stored


def dynamodb_store_factory(
    table_name: str, dynamodb_client: Any = None
) -> Callable[[], BasePersistenceLayer]:
    """powertools' DynamoDB layer, except that a failed run's record is expired, not deleted.

    The API function's role may delete nothing (infra/api.py); an expired record frees the key
    just the same (powertools' put overwrites a record whose `expiration` has passed), and TTL
    removes it.
    """

    def build() -> BasePersistenceLayer:
        from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

        class ExpiringDynamoDBPersistenceLayer(DynamoDBPersistenceLayer):
            def _delete_record(self, data_record: Any) -> None:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=self._get_key(data_record.idempotency_key),
                    UpdateExpression="SET #expiry = :expired",
                    ExpressionAttributeNames={"#expiry": self.expiry_attr},
                    ExpressionAttributeValues={":expired": {"N": "0"}},
                )

        return ExpiringDynamoDBPersistenceLayer(
            table_name=table_name,
            key_attr=names.IDEMPOTENCY_KEY_ATTRIBUTE,
            expiry_attr=names.IDEMPOTENCY_TTL_ATTRIBUTE,
            boto3_client=dynamodb_client,
        )

    return build


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
) -> APIGatewayHttpResolver:
    """`idempotency_store` builds the persistence layer on the first keyed request; `proxy_tokens`
    the proxy password issuer on the first POST /v1/proxy-tokens (default: from the environment)."""
    app = APIGatewayHttpResolver(enable_validation=True, json_body_deserializer=parse_json_object)
    idempotent = IdempotentSubmissions(idempotency_store or dynamodb_store_factory(names.IDEMPOTENCY_TABLE))

    document: list[str] = []  # built on first request, then served as is
    grants: list[ProxyTokenGrants] = []  # built on first use, then kept

    def caller() -> Principal:
        identity = caller_from_event(app.current_event.raw_event)
        return registry.principal(identity.principal_key)

    def submit_answer(principal: Principal, request: SubmitRequest) -> StoredAnswer:
        # From here on the command may reach the target: no handler may say "nothing was run".
        app.append_context(command_may_have_run=True)
        try:
            if request.sql is not None:
                outcome = service.submit(principal, request.connection, request.sql, request.reason)
            else:
                from gatehouse.target_requests import FIELD_KIND, TargetCommand

                field_name = request.command_field
                command = TargetCommand(FIELD_KIND[field_name], getattr(request, field_name))
                outcome = service.submit_command(principal, request.connection, command, request.reason)
        except GatehouseError as exc:
            if not is_final(exc):
                raise
            status, body = error_body(exc)
            return StoredAnswer(status, body)
        status = {"executed": 200, "pending_approval": 202, "denied": 403}[outcome.status]
        return StoredAnswer(status, outcome_body(outcome))

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
        principal = caller()
        if idempotency_key is None:
            answer = submit_answer(principal, request)
        else:
            answer = idempotent.run(
                principal,
                idempotency_key,
                request_digest(request),
                lambda: submit_answer(principal, request),
                app.lambda_context,
            )
        headers = {REPLAYED_HEADER: "true"} if answer.replayed else None
        return _json(answer.status, answer.body, headers)

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

    @app.exception_handler(PolicyError)
    def policy_failed(exc: PolicyError) -> Response:
        # Fail closed, and say so: the policy decides before anything runs.
        log.error("policy evaluation failed: %s", exc.message)
        extra = {"request_id": exc.request_id} if exc.request_id else {}
        return error_response(500, exc.code, "the policy could not be evaluated; nothing was run", **extra)

    @app.exception_handler(GatehouseError)
    def gatehouse_error(exc: GatehouseError) -> Response:
        status, body = error_body(exc)
        return _json(status, body)

    @app.exception_handler(Exception)
    def unexpected(exc: Exception) -> Response:
        # A bug must not leak a stack trace to an agent; the log keeps it for us. "Nothing was
        # run" only when the failure came before the command could have been sent.
        log.exception("unhandled error")
        if not app.context.get("command_may_have_run"):
            return error_response(500, "internal_error", "Gatehouse failed; nothing was run")
        request_id = getattr(exc, "request_id", None)
        extra: dict[str, Any] = {"outcome": "uncertain"}
        if request_id:
            extra["request_id"] = request_id
        return error_response(500, "internal_error", UNCERTAIN_UNEXPECTED, **extra)

    @app.not_found
    def not_found(exc: Exception) -> Response:
        return error_response(404, "not_found", "no such route")

    return app
