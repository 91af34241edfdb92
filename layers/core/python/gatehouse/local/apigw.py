"""A local stand-in for the HTTP API (API Gateway v2, IAM authorization, Lambda proxy).

It does for each request what API Gateway does in front of `functions/api`:

1. match the route (an unknown route is 404 `{"message":"Not Found"}`, before any auth);
2. on IAM-authorized routes, verify the SigV4 signature (service `execute-api`) against the
   secret of the access key, refusing with 403 and API Gateway's messages:
   no `Authorization` header -> `Missing Authentication Token`; unknown access key ->
   `The security token included in the request is invalid.`; a wrong signature, a body whose
   SHA-256 differs from `x-amz-content-sha256`, or an `X-Amz-Date` more than 5 minutes from now
   -> their own messages. The handler never sees a refused request;
3. build the payload format 2.0 event (with `requestContext.authorizer.iam`) and a Lambda
   context, call the handler, and turn its proxy response into the HTTP answer.

All refusals are 403 (none is 401), as API Gateway answers for IAM-authorized routes.
Not emulated: throttling, presigned (query-string) SigV4, session tokens, chunked uploads (411),
the 30-second integration timeout (the context reports remaining time, nothing is cut off).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from gatehouse import names

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]

SERVICE = "execute-api"
DEFAULT_REGION = "us-east-1"
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit; Gatehouse enforces 256 KiB itself
FUNCTION_TIMEOUT_S = 29  # infra/api.py: under API Gateway's 30 s integration limit
FUNCTION_MEMORY_MB = 512
SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

# Media types API Gateway passes as text; any other body reaches the function base64-encoded
# (application/x-www-form-urlencoded too, which is how Slack's interactions arrive).
_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
    }
)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # API Gateway syntax: "/v1/requests/{id}"
    iam: bool = True  # False: the route authenticates its callers itself (Slack signs its requests)

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters when this route takes the request, else None."""
        if method != self.method:
            return None
        want, got = self.path.split("/"), path.split("/")
        if len(want) != len(got):
            return None
        params: dict[str, str] = {}
        for w, g in zip(want, got, strict=True):
            if w.startswith("{") and w.endswith("}"):
                if not g:
                    return None
                params[w[1:-1]] = unquote(g)
            elif w != g:
                return None
        return params


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/requests"),
    Route("GET", "/v1/requests"),
    Route("GET", "/v1/requests/{id}"),
    Route("GET", "/v1/connections"),
    Route("POST", "/v1/proxy-tokens"),
    Route("GET", "/v1/openapi.json"),
    Route("POST", "/slack/interactions", iam=False),
)


@dataclass(frozen=True)
class IamCredential:
    """What IAM knows about an access key: its secret and whose it is."""

    secret_access_key: str = field(repr=False)
    user_arn: str
    user_id: str = ""

    @property
    def account_id(self) -> str:
        parts = self.user_arn.split(":")
        return parts[4] if len(parts) > 4 else ""


@dataclass(frozen=True)
class VerifiedCaller:
    access_key_id: str
    credential: IamCredential


class AuthError(Exception):
    """A request API Gateway would refuse before calling the function."""

    def __init__(self, message: str, error_type: str = "ForbiddenException", status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.status = status


class _RecomputingSigner(SigV4Auth):
    """botocore's SigV4 over exactly the headers the client says it signed.

    botocore would pick the headers itself (and skip some, such as user-agent), which would
    reject a correct signature that covers them.
    """

    def __init__(self, credentials: Credentials, region: str, signed: HTTPHeaders) -> None:
        super().__init__(credentials, SERVICE, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed


class SigV4Verifier:
    """Verify an `execute-api` SigV4 `Authorization` header the way API Gateway's IAM auth does."""

    def __init__(
        self,
        credentials: Mapping[str, IamCredential],
        region: str = DEFAULT_REGION,
        *,
        max_skew: dt.timedelta = MAX_CLOCK_SKEW,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._credentials = credentials
        self._region = region
        self._max_skew = max_skew
        self._clock = clock

    def verify(self, method: str, target: str, headers: Any, body: bytes) -> VerifiedCaller:
        """`target` is the request line's path and query as sent; `headers` an HTTPMessage."""
        authorization = headers.get("authorization")
        if not authorization:
            raise AuthError("Missing Authentication Token", "MissingAuthenticationTokenException")
        fields = _parse_authorization(authorization)
        credential, signed_names, signature = (
            fields["Credential"],
            fields["SignedHeaders"],
            fields["Signature"],
        )
        scope = credential.split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise AuthError(
                f"Authorization header requires 'Credential' parameter. Authorization={authorization[:64]}",
                "IncompleteSignatureException",
            )
        access_key_id, scope_date, scope_region, scope_service, _ = scope

        amz_date = headers.get("x-amz-date")
        if not amz_date:
            raise AuthError(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
                "IncompleteSignatureException",
            )
        signed_at = _parse_amz_date(amz_date)
        self._check_clock(amz_date, signed_at)
        if scope_date != amz_date[:8]:
            raise AuthError(
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                f"from HTTP: '{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.",
                "InvalidSignatureException",
            )
        if scope_region != self._region:
            raise AuthError(
                f"Credential should be scoped to a valid region, not '{scope_region}'. ",
                "InvalidSignatureException",
            )
        if scope_service != SERVICE:
            raise AuthError(
                f"Credential should be scoped to correct service: '{SERVICE}'. ", "InvalidSignatureException"
            )
        if headers.get("x-amz-security-token"):
            # Local keys are long-term IAM user keys; nobody here issues session tokens.
            raise AuthError(
                "The security token included in the request is invalid.", "UnrecognizedClientException"
            )
        iam = self._credentials.get(access_key_id)
        if iam is None:
            raise AuthError(
                "The security token included in the request is invalid.", "UnrecognizedClientException"
            )

        # botocore trusts x-amz-content-sha256 when it computes the canonical request; the body is
        # what the handler will act on, so hash it ourselves.
        body_hash = hashlib.sha256(body).hexdigest()
        claimed = headers.get("x-amz-content-sha256")
        if claimed is not None and not hmac.compare_digest(claimed.strip().lower(), body_hash):
            raise AuthError(
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                "InvalidSignatureException",
            )

        names_list = [n.strip().lower() for n in signed_names.split(";") if n.strip()]
        if "host" not in names_list:
            raise AuthError(
                "'Host' must be a 'SignedHeader' in the AWS Authorization.", "IncompleteSignatureException"
            )
        signed = HTTPHeaders()
        for name in names_list:
            values = headers.get_all(name)
            if not values:
                raise AuthError(_SIGNATURE_MISMATCH, "InvalidSignatureException")
            for value in values:
                signed[name] = value

        parts = urlsplit(target)
        # Always http: botocore then hashes the real body rather than trusting a header or
        # accepting UNSIGNED-PAYLOAD. The query goes in decoded: botocore re-encodes each name
        # and value (RFC 3986) and sorts them, as SigV4 canonicalization asks; taken from the
        # URL it would be used as sent, and a client's "+" for a space would never match.
        request = AWSRequest(
            method=method.upper(),
            url=f"http://{headers.get('host', 'localhost')}{parts.path or '/'}",
            data=body,
            params=parse_qsl(parts.query, keep_blank_values=True),
        )
        request.context["timestamp"] = amz_date
        signer = _RecomputingSigner(Credentials(access_key_id, iam.secret_access_key), self._region, signed)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, signature.strip().lower()):
            raise AuthError(_SIGNATURE_MISMATCH, "InvalidSignatureException")
        return VerifiedCaller(access_key_id, iam)

    def _check_clock(self, amz_date: str, signed_at: dt.datetime) -> None:
        now = self._clock()
        fmt = AMZ_DATE_FORMAT
        if signed_at < now - self._max_skew:
            raise AuthError(
                f"Signature expired: {amz_date} is now earlier than "
                f"{(now - self._max_skew).strftime(fmt)} ({now.strftime(fmt)} - 5 min.)",
                "InvalidSignatureException",
            )
        if signed_at > now + self._max_skew:
            raise AuthError(
                f"Signature not yet current: {amz_date} is still later than "
                f"{(now + self._max_skew).strftime(fmt)} ({now.strftime(fmt)} + 5 min.)",
                "InvalidSignatureException",
            )


_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)


def _parse_authorization(value: str) -> dict[str, str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != SIGV4_ALGORITHM:
        raise AuthError(
            f"Authorization header requires '{SIGV4_ALGORITHM}' as the algorithm.",
            "IncompleteSignatureException",
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key.strip()] = val.strip()
    for required in ("Credential", "SignedHeaders", "Signature"):
        if not fields.get(required):
            raise AuthError(
                f"Authorization header requires '{required}' parameter. Authorization={value[:64]}",
                "IncompleteSignatureException",
            )
    return fields


def _parse_amz_date(value: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, AMZ_DATE_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise AuthError(
            f"Date must be in ISO-8601 'basic format'. Got '{value}'. See "
            "http://en.wikipedia.org/wiki/ISO_8601",
            "IncompleteSignatureException",
        ) from exc


@dataclass
class LambdaContext:
    """What the Lambda runtime hands a handler; powertools reads these attributes."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str
    memory_limit_in_mb: int = FUNCTION_MEMORY_MB
    function_version: str = "$LATEST"
    timeout_s: float = FUNCTION_TIMEOUT_S
    log_group_name: str = ""
    log_stream_name: str = ""
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"
        self.log_stream_name = self.log_stream_name or (
            f"{dt.datetime.now(dt.UTC):%Y/%m/%d}/[{self.function_version}]{uuid.uuid4().hex}"
        )
        self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _is_text(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml"))


def _request_id() -> str:
    # API Gateway's request ids look like "JKJaXmPLvHcESHA=".
    return base64.b64encode(os.urandom(11)).decode("ascii")


def build_event(
    *,
    route: Route,
    path_parameters: Mapping[str, str],
    method: str,
    target: str,
    headers: Any,
    body: bytes,
    source_ip: str,
    api_id: str,
    account_id: str,
    request_id: str,
    caller: VerifiedCaller | None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The HTTP API payload format 2.0 event for one request."""
    now = now or dt.datetime.now(dt.UTC)
    parts = urlsplit(target)
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name in dict.fromkeys(k.lower() for k in headers):
        values = headers.get_all(name) or []
        if name == "cookie":
            # Format 2.0 moves cookies out of the headers into their own list.
            cookies += [c.strip() for v in values for c in v.split(";") if c.strip()]
            continue
        merged[name] = ",".join(values)
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value
    domain = (headers.get("host") or "localhost").rsplit(":", 1)[0]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "headers": merged,
        "requestContext": {
            "accountId": account_id,
            "apiId": api_id,
            "domainName": domain,
            "domainPrefix": domain.split(".", 1)[0],
            "http": {
                "method": method,
                "path": parts.path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route.route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if caller is not None:
        event["requestContext"]["authorizer"] = {
            "iam": {
                "accessKey": caller.access_key_id,
                "accountId": caller.credential.account_id,
                "callerId": caller.credential.user_id,
                "cognitoIdentity": None,
                "principalOrgId": None,
                "userArn": caller.credential.user_arn,
                "userId": caller.credential.user_id,
            }
        }
    if body:
        text: str | None = None
        if _is_text(merged.get("content-type")):
            with contextlib.suppress(UnicodeDecodeError):
                text = body.decode("utf-8")
        if text is None:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
    return event


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class BadProxyResponseError(ValueError):
    """The function returned something API Gateway cannot turn into an HTTP answer."""


def answer_from_result(result: Any) -> HttpAnswer:
    """Map a Lambda proxy response (format 2.0 rules) to status, headers and body bytes."""
    if not isinstance(result, dict) or "statusCode" not in result:
        # Format 2.0: a JSON value without statusCode is the body of a 200.
        try:
            text = json.dumps(result)
        except (TypeError, ValueError) as exc:
            raise BadProxyResponseError("the function returned a value that is not JSON") from exc
        return HttpAnswer(200, [("Content-Type", "application/json")], text.encode())
    status = result["statusCode"]
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise BadProxyResponseError(f"statusCode {status!r} is not an HTTP status")
    raw_body = result.get("body")
    if raw_body is None:
        raw_body = ""
    if not isinstance(raw_body, str):
        raise BadProxyResponseError("body must be a string")
    try:
        body = (
            base64.b64decode(raw_body, validate=True) if result.get("isBase64Encoded") else raw_body.encode()
        )
    except ValueError as exc:
        raise BadProxyResponseError("body is flagged base64 but does not decode") from exc
    out: list[tuple[str, str]] = []
    for key, value in (result.get("headers") or {}).items():
        out.append((str(key), str(value)))
    for key, values in (result.get("multiValueHeaders") or {}).items():
        out += [(str(key), str(v)) for v in values]
    out += [("Set-Cookie", str(c)) for c in result.get("cookies") or ()]
    return HttpAnswer(status, out, body)


def _json_answer(status: int, body: dict[str, Any], extra: Sequence[tuple[str, str]] = ()) -> HttpAnswer:
    return HttpAnswer(
        status,
        [("Content-Type", "application/json"), *extra],
        json.dumps(body, separators=(",", ":")).encode(),
    )


class _Server(ThreadingHTTPServer):
    # Request threads are ours: not daemons, joined by server_close().
    daemon_threads = False
    block_on_close = True
    gateway: ApiGateway


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as API Gateway offers
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK hold the body back ~40 ms on every keep-alive request.
    disable_nagle_algorithm = True
    timeout = 60  # idle keep-alive connections are closed after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.gateway._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.gateway._track(self.connection, False)

    def _dispatch(self) -> None:
        answer = self.server.gateway._handle(self)
        if answer is None:
            return
        self.send_response(answer.status)
        for key, value in answer.headers:
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def version_string(self) -> str:
        return "gatehouse-local-apigw"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)


class ApiGateway:
    """The HTTP API stand-in: `start()` serves on 127.0.0.1 in a thread, `stop()` joins it."""

    def __init__(
        self,
        handler: Handler,
        credentials: Mapping[str, IamCredential],
        *,
        region: str = DEFAULT_REGION,
        account_id: str = "123456789012",
        host: str = "127.0.0.1",
        port: int = 0,
        api_id: str = "gatehouselocal",
        routes: Sequence[Route] = ROUTES,
        route_handlers: Mapping[str, Handler] | None = None,
        function_name: str = names.API_FUNCTION,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._handler = handler
        self._route_handlers = dict(route_handlers or {})
        self._verifier = SigV4Verifier(credentials, region)
        self._region = region
        self._account_id = account_id
        self._host = host
        self._port = port
        self._api_id = api_id
        self._routes = tuple(routes)
        self._function_name = function_name
        self._max_body = max_body_bytes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the API stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the API stand-in is not running")
        return int(self._server.server_address[1])

    def start(self) -> str:
        if self._server is not None:
            return self.url
        server = _Server((self._host, self._port), _RequestHandler)
        server.gateway = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="gatehouse-apigw", daemon=False
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        # Idle keep-alive connections would hold their threads until the idle timeout: end the
        # read side so each finishes the answer it is writing, if any, and exits.
        with self._lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        server.server_close()  # joins the request threads (block_on_close)

    def __enter__(self) -> ApiGateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _handle(self, req: _RequestHandler) -> HttpAnswer | None:
        request_id = _request_id()
        id_header = [("apigw-requestid", request_id)]
        started = time.perf_counter()
        target = req.path
        if "://" in target:  # absolute-form request target
            split = urlsplit(target)
            target = split.path + (f"?{split.query}" if split.query else "")
        path = urlsplit(target).path

        if req.headers.get("transfer-encoding"):
            req.close_connection = True
            return _json_answer(411, {"message": "Length Required"}, id_header)
        try:
            length = int(req.headers.get("content-length") or 0)
        except ValueError:
            req.close_connection = True
            return _json_answer(400, {"message": "Bad Request"}, id_header)
        if length > self._max_body or length < 0:
            req.close_connection = True  # the unread body would otherwise be parsed as a request
            return _json_answer(413, {"message": "Request Entity Too Large"}, id_header)
        body = req.rfile.read(length) if length else b""
        if len(body) != length:
            req.close_connection = True
            return None  # the client went away mid-body

        route, params = self._match(req.command, path)
        if route is None:
            answer = _json_answer(404, {"message": "Not Found"}, id_header)
            self._log(req, answer.status, started, "-")
            return answer

        caller: VerifiedCaller | None = None
        if route.iam:
            try:
                caller = self._verifier.verify(req.command, target, req.headers, body)
            except AuthError as exc:
                answer = _json_answer(
                    exc.status, {"message": exc.message}, [*id_header, ("x-amzn-ErrorType", exc.error_type)]
                )
                self._log(req, answer.status, started, route.route_key)
                return answer

        event = build_event(
            route=route,
            path_parameters=params,
            method=req.command,
            target=target,
            headers=req.headers,
            body=body,
            source_ip=req.client_address[0],
            api_id=self._api_id,
            account_id=self._account_id,
            request_id=request_id,
            caller=caller,
        )
        answer = self._invoke(self._route_handlers.get(route.route_key, self._handler), event)
        answer = HttpAnswer(answer.status, [*answer.headers, *id_header], answer.body)
        self._log(req, answer.status, started, route.route_key)
        return answer

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in self._routes:
            params = route.match(method, path)
            if params is not None:
                return route, params
        return None, {}

    def _invoke(self, handler: Handler, event: dict[str, Any]) -> HttpAnswer:
        context = LambdaContext(
            function_name=self._function_name,
            invoked_function_arn=(
                f"arn:aws:lambda:{self._region}:{self._account_id}:function:{self._function_name}"
            ),
            aws_request_id=str(uuid.uuid4()),
        )
        try:
            return answer_from_result(handler(event, context))
        except Exception:  # a failed invocation is API Gateway's 500, as in AWS
            log.exception("the function failed")
            return _json_answer(500, {"message": "Internal Server Error"})

    def _log(self, req: _RequestHandler, status: int, started: float, route_key: str) -> None:
        log.info(
            "%s %s %s [%s] -> %d (%.1f ms)",
            req.client_address[0],
            req.command,
            req.path.split("?", 1)[0],
            route_key,
            status,
            (time.perf_counter() - started) * 1000,
        )
