"""The agent HTTP API without pydantic: what most requests need, and the lane they take.

`functions/api/handler.py` builds an `AgentApi` once per process and hands it every event, after
`preflight` has refused what is malformed. A `POST /v1/requests` that runs SQL (the body almost
every agent sends) takes the light app here: its body is checked by `sql_submission`, which
accepts only what the validating model (gatehouse.api.SubmitRequest) certainly accepts, with the
same values. Every other request, and every body the check is not sure of, goes to the app of
gatehouse.api, which validates with pydantic and is built (pydantic imported: ~60 ms) the first
time one comes. Both apps share the routes' work (`Submissions`) and the exception-to-HTTP map
(`answer_errors`), so an answer does not depend on the lane it took; a property test holds the
check to the model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types

from gatehouse import names
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
from gatehouse.values import jsonable, result_view

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer

    from gatehouse.proxy_tokens import ProxyTokenGrants
    from gatehouse.runtime import FirstRequest
    from gatehouse.service import Gatehouse, Outcome

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_SQL_CHARS = 100_000
CONNECTION_NAME_MAX = 128
MAX_REASON_CHARS = 2_000
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


def _strings(*roots: Any) -> Iterator[str]:
    """Every string in `roots`, keys included, however deep (no recursion)."""
    stack = list(roots)
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_encodable(text: str) -> None:
    """No lone surrogate in `text` (it cannot be encoded, logged or hashed)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequestError("a string holds a lone surrogate escape", code="invalid_text") from exc


def _check_strings(value: Any) -> None:
    """Strings must be Unicode text the database accepts: no lone surrogates, no NUL.

    The one exception is NUL in the top-level `sql`: the classifier refuses it (libpg_query would
    read only the text before it, so a NUL can hide a statement), and that refusal belongs in the
    session log as the hostile attempt it is.
    """
    roots: list[Any] = [value]
    if isinstance(value, dict):
        # NUL is checked where it matters past the API: the SQL classifier refuses it on record,
        # and each target kind refuses control characters in paths, headers and commands (a NUL
        # inside an HTTP body's JSON is content, not an attack). Lone surrogates are refused here.
        commands = [value[name] for name in ("sql", *TARGET_FIELDS) if name in value]
        for text in _strings(*commands):
            _check_encodable(text)
        roots = [*value.keys(), *(v for k, v in value.items() if k not in ("sql", *TARGET_FIELDS))]
    for text in _strings(*roots):
        if "\x00" in text:
            raise BadRequestError("strings may not contain U+0000", code="invalid_text")
        _check_encodable(text)


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


def request_digest(fields: Mapping[str, Any]) -> str:
    """The body's identity: the same fields with the same values, however the JSON was spaced.

    `fields` are the body as SubmitRequest reads it, defaults included (`Submission.fields`)."""
    canonical = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"))
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


# -- the routes' work, shared by both apps ---------------------------------------------------

COMMAND_FIELDS = ("sql", "http", "kubernetes", "ssh")
SUBMIT_ROUTE = "POST /v1/requests"
_SQL_SUBMISSION_FIELDS = frozenset({"connection", "sql", "reason"})


class Submission(Protocol):
    """A validated POST /v1/requests body: SqlSubmission here, SubmitRequest in gatehouse.api."""

    connection: str
    sql: str | None
    reason: str

    @property
    def command_field(self) -> str: ...

    def fields(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SqlSubmission:
    """A body that runs SQL, as SubmitRequest reads it (see `sql_submission`)."""

    connection: str
    sql: str
    reason: str = ""

    @property
    def command_field(self) -> str:
        return "sql"

    def fields(self) -> dict[str, Any]:
        """What SubmitRequest.model_dump() gives for the same body: the idempotency digest's input,
        so a retry hashes alike whichever app reads it."""
        return {
            "connection": self.connection,
            "sql": self.sql,
            **dict.fromkeys(TARGET_FIELDS),
            "reason": self.reason,
        }


def sql_submission(body: Mapping[str, Any]) -> SqlSubmission | None:
    """The body as an SqlSubmission when SubmitRequest certainly accepts it as one, else None.

    The model's rules for the one shape most requests have: no field but connection, sql and
    reason; connection a string of 1 to CONNECTION_NAME_MAX characters without NUL; sql a string
    of 1 to MAX_SQL_CHARS (a NUL in it is the classifier's to refuse, on record); reason, when
    given, a string of at most MAX_REASON_CHARS without NUL. Anything else (another command, a
    null, a number, a bound crossed) is None, and the validating app gives the answer in its own
    words. `tests/unit/test_sql_submission.py` holds this to the model.
    """
    if not body.keys() <= _SQL_SUBMISSION_FIELDS:
        return None
    connection, sql, reason = body.get("connection"), body.get("sql"), body.get("reason", "")
    if type(connection) is not str or not 0 < len(connection) <= CONNECTION_NAME_MAX or "\x00" in connection:
        return None
    if type(sql) is not str or not 0 < len(sql) <= MAX_SQL_CHARS:
        return None
    if type(reason) is not str or len(reason) > MAX_REASON_CHARS or "\x00" in reason:
        return None
    return SqlSubmission(connection, sql, reason)


class Submissions:
    """POST /v1/requests's work, whichever app read the body: the caller, the run, the answer."""

    def __init__(
        self,
        service: Gatehouse,
        registry: Registry,
        idempotency_store: Callable[[], BasePersistenceLayer] | None = None,
    ) -> None:
        self.service = service
        self._registry = registry
        self._idempotent = IdempotentSubmissions(
            idempotency_store or dynamodb_store_factory(names.IDEMPOTENCY_TABLE)
        )

    def caller(self, app: APIGatewayHttpResolver) -> Principal:
        identity = caller_from_event(app.current_event.raw_event)
        return self._registry.principal(identity.principal_key)

    def answer(
        self, app: APIGatewayHttpResolver, request: Submission, idempotency_key: str | None
    ) -> Response:
        principal = self.caller(app)
        if idempotency_key is None:
            answer = self._run(app, principal, request)
        else:
            answer = self._idempotent.run(
                principal,
                idempotency_key,
                request_digest(request.fields()),
                lambda: self._run(app, principal, request),
                app.lambda_context,
            )
        headers = {REPLAYED_HEADER: "true"} if answer.replayed else None
        return _json(answer.status, answer.body, headers)

    def _run(self, app: APIGatewayHttpResolver, principal: Principal, request: Submission) -> StoredAnswer:
        # From here on the command may reach the target: no handler may say "nothing was run".
        app.append_context(command_may_have_run=True)
        try:
            if request.sql is not None:
                outcome = self.service.submit(principal, request.connection, request.sql, request.reason)
            else:
                from gatehouse.target_requests import FIELD_KIND, TargetCommand

                field_name = request.command_field
                command = TargetCommand(FIELD_KIND[field_name], getattr(request, field_name))
                outcome = self.service.submit_command(principal, request.connection, command, request.reason)
        except GatehouseError as exc:
            if not is_final(exc):
                raise
            status, body = error_body(exc)
            return StoredAnswer(status, body)
        status = {"executed": 200, "pending_approval": 202, "denied": 403}[outcome.status]
        return StoredAnswer(status, outcome_body(outcome))


def answer_errors(app: APIGatewayHttpResolver) -> None:
    """The one exception-to-HTTP map, registered on both apps."""

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


# -- the lanes -------------------------------------------------------------------------------


def build_sql_app(submissions: Submissions) -> APIGatewayHttpResolver:
    """POST /v1/requests for a body `sql_submission` accepted, handed over in the app's context
    (powertools' validation is not on: the body was checked before)."""
    app = APIGatewayHttpResolver()

    @app.post("/v1/requests")
    def submit():
        return submissions.answer(app, app.context["submission"], app.context["idempotency_key"])

    answer_errors(app)
    return app


def _sql_lane(event: Mapping[str, Any]) -> SqlSubmission | None:
    if event.get("routeKey") != SUBMIT_ROUTE:
        return None
    try:
        body = parse_json_object(str(event.get("body") or ""))
    except GatehouseError:
        return None  # the validating app parses it again and answers the error
    return sql_submission(body)


class AgentApi:
    """The API function's app: SQL submissions on the light app, the rest on gatehouse.api's."""

    def __init__(
        self,
        service: Gatehouse,
        registry: Registry,
        *,
        idempotency_store: Callable[[], BasePersistenceLayer] | None = None,
        proxy_tokens: Callable[[], ProxyTokenGrants] | None = None,
    ) -> None:
        self._submissions = Submissions(service, registry, idempotency_store)
        self._registry = registry
        self._proxy_tokens = proxy_tokens
        self._sql_app = build_sql_app(self._submissions)
        self._validating: APIGatewayHttpResolver | None = None

    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        submission = _sql_lane(event)
        if submission is None:
            return self.validating().resolve(event, context)
        headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
        self._sql_app.append_context(submission=submission, idempotency_key=headers.get(IDEMPOTENCY_HEADER))
        return self._sql_app.resolve(event, context)

    def validating(self) -> APIGatewayHttpResolver:
        """gatehouse.api's app, with the same routes' work; built on the first request it takes."""
        if self._validating is None:
            from gatehouse.api import build_app

            self._validating = build_app(
                self._submissions.service,
                self._registry,
                proxy_tokens=self._proxy_tokens,
                submissions=self._submissions,
            )
        return self._validating
