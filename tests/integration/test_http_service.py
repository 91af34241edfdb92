"""HTTP targets against a real HTTP(S) server of the test's own on loopback.

The server records every request it receives, so "refused before anything was sent" is checked
where it matters: on the server's side.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gatehouse.exceptions import StatementTimeoutError, TargetUnavailableError
from gatehouse.local.apigw import AuthError, IamCredential, SigV4Verifier
from gatehouse.local.pki import authority
from gatehouse.masking import Masker, load_profile
from gatehouse.models import Connection
from gatehouse.targets.http import (
    HttpCommand,
    HttpRedirectRefusedError,
    HttpRefusedError,
    execute,
)

TOKEN = "tok-4f1d2c9e8b7a6f5e4d3c"
ACCESS_KEY = "AKIA" + "HTTPTARGETTEST01"  # made up; split so it never reads as a real key
SECRET_KEY = "s3cr3t/HttpTargetTestKey+0123456789abcd"
CUSTOMERS = [
    {
        "id": 1,
        "name": "Ann Lee",
        "email": "ann@example.com",
        "ssn": "123-45-6789",
        "card": "4111 1111 1111 1111",
    },
    {
        "id": 2,
        "name": "Bob Roy",
        "email": "bob@example.com",
        "ssn": "987-65-4321",
        "card": "5555 5555 5555 4444",
    },
]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Service:
    port: int
    requests: list[Seen] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.service.requests.append(Seen(self.command, self.path, dict(self.headers.items()), body))
        route = self.path.split("?", 1)[0]
        if route == "/api/echo":
            # A service that reflects what it received, credential included.
            self._json(
                200, {"method": self.command, "target": self.path, "headers": dict(self.headers.items())}
            )
        elif route == "/api/customers":
            self._json(200, {"customers": CUSTOMERS, "total": 2})
        elif route == "/api/customers/list":
            self._json(200, CUSTOMERS)
        elif route.startswith("/api/customers/"):
            ident = route.rsplit("/", 1)[1]
            match = [c for c in CUSTOMERS if str(c["id"]) == ident]
            self._json(200, match[0]) if match else self._json(404, {"error": "no such customer"})
        elif route == "/api/refunds" and self.command == "POST":
            self._json(201, {"refund": json.loads(body), "status": "queued"})
        elif route == "/api/text":
            self._send(200, b"contact ann@example.com about card 4111 1111 1111 1111", "text/plain")
        elif route == "/api/big":
            self._send(200, b"x" * 1_000_000, "text/plain")
        elif route == "/api/big-json":
            self._send(200, json.dumps({"customers": CUSTOMERS * 5000}).encode(), "application/json")
        elif route == "/api/deep":
            self._send(200, b"[" * 100_000 + b"]" * 100_000, "application/json")
        elif route == "/api/empty":
            self._send(204 if self.command != "HEAD" else 200, b"", "application/json")
        elif route == "/api/cookie":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Set-Cookie", "session=server-secret")
            self.send_header("X-Backend-Host", "10.0.3.7")
            self.send_header("X-RateLimit-Remaining", "99")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        elif route == "/api/away":
            self._redirect("http://evil.example/steal")
        elif route == "/api/other-port":
            self._redirect(f"http://127.0.0.1:{self.server.service.port + 1}/api/customers")
        elif route == "/api/here":
            self._redirect("/api/customers/1")
        elif route == "/api/hang":
            time.sleep(2)
            self._json(200, {})
        elif route == "/api/trickle":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        elif route == "/api/signed":
            verifier = SigV4Verifier(
                {ACCESS_KEY: IamCredential(SECRET_KEY, "arn:aws:iam::123456789012:user/gw")}
            )
            try:
                caller = verifier.verify(self.command, self.path, self.headers, body)
            except AuthError as exc:
                self._json(403, {"message": exc.message})
            else:
                self._json(200, {"verified": caller.access_key_id == ACCESS_KEY})
        else:
            self._json(404, {"error": "not found"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    service: Service


def _serve(context: ssl.SSLContext | None = None) -> Iterator[Service]:
    server = _Server(("127.0.0.1", 0), Handler)
    service = Service(port=server.server_address[1])
    server.service = service
    if context is not None:
        context.sni_callback = lambda sock, name, ctx: service.sni.append(name)  # type: ignore[assignment]
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    yield from _serve()


@dataclass(frozen=True)
class Pki:
    ca_pem: str
    context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA and a server certificate for the name `localhost` only (not for 127.0.0.1)."""
    ca = authority("Gatehouse test CA")
    cert_pem, key_pem = ca.issue(["localhost"])
    directory: Path = tmp_path_factory.mktemp("pki")
    (directory / "server.crt").write_bytes(cert_pem)
    (directory / "server.key").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.crt", directory / "server.key")
    return Pki(ca.pem, context)


@pytest.fixture(scope="module")
def tls_service(pki: Pki) -> Iterator[Service]:
    yield from _serve(pki.context)


@pytest.fixture(scope="module")
def masker() -> Masker:
    return Masker(load_profile("default"), b"k" * 32)


def connection(
    service: Service, host: str = "127.0.0.1", scheme: str = "http", **attributes: Any
) -> Connection:
    attrs = {"base_url": f"{scheme}://{host}:{service.port}/api", "local": True, **attributes}
    return Connection(
        name="demo-http",
        kind="http",
        host=host,
        port=service.port,
        database="",
        secret_id="s",
        attributes=attrs,
    )


def run(
    service: Service,
    masker: Masker,
    conn: Connection | None = None,
    credential: dict[str, Any] | None = None,
    *,
    timeout_s: float = 5.0,
    max_bytes: int = 1_000_000,
    **fields: Any,
) -> Any:
    return execute(
        HttpCommand.model_validate(fields),
        conn or connection(service),
        credential or {"token": TOKEN},
        timeout_s=timeout_s,
        max_bytes=max_bytes,
        masker=masker,
    )


def test_read_injects_the_bearer_token_and_masks_the_answer(service: Service, masker: Masker) -> None:
    conn = connection(service, mask_paths=["$.ssn"])
    result = run(
        service, masker, conn, method="GET", path="/customers/1", headers={"Accept": "application/json"}
    )
    # The service got the gateway's token, under the base URL's prefix.
    seen = service.requests[-1]
    assert (seen.method, seen.path) == ("GET", "/api/customers/1")
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["Host"] == f"127.0.0.1:{service.port}"
    # The agent gets the JSON masked: by path (ssn) and by the detectors (email, card).
    assert result.status == "ok"
    assert result.body["status_code"] == 200
    assert result.body["body"] == {
        "id": 1,
        "name": "Ann Lee",
        "email": "[EMAIL]",
        "ssn": "[REDACTED]",
        "card": "[CARD_NUMBER]",
    }
    assert result.body["headers"]["content-type"] == "application/json"
    assert result.truncated is False and result.body["truncated"] is False
    assert result.duration_ms > 0


def test_mask_paths_reach_into_arrays_and_a_list_counts_rows(service: Service, masker: Masker) -> None:
    conn = connection(service, mask_paths=["$.customers[*].name"])
    result = run(service, masker, conn, method="GET", path="/customers")
    assert [c["name"] for c in result.body["body"]["customers"]] == ["[REDACTED]", "[REDACTED]"]
    assert result.body["body"]["total"] == 2
    listed = run(
        service, masker, connection(service, mask_paths=["$[*].name"]), method="GET", path="/customers/list"
    )
    assert listed.row_count == 2
    assert all(c["name"] == "[REDACTED]" for c in listed.body["body"])


def test_a_credential_the_service_echoes_back_never_reaches_the_agent(
    service: Service, masker: Masker
) -> None:
    result = run(service, masker, method="GET", path="/echo")
    assert result.body["body"]["headers"]["Authorization"] == "Bearer [REDACTED]"
    assert TOKEN not in json.dumps(result.body)
    assert TOKEN not in repr(result)


def test_basic_auth_is_injected_and_scrubbed(service: Service, masker: Masker) -> None:
    conn = connection(service, auth="basic")
    result = run(
        service, masker, conn, {"username": "gw", "password": "pa55-word-xyz"}, method="GET", path="/echo"
    )
    assert service.requests[-1].headers["Authorization"] == "Basic Z3c6cGE1NS13b3JkLXh5eg=="
    assert "Z3c6cGE1NS13b3JkLXh5eg==" not in json.dumps(result.body)


def test_api_key_goes_in_the_connection_header(service: Service, masker: Masker) -> None:
    conn = connection(service, auth="api_key", api_key_header="X-Api-Key")
    run(service, masker, conn, {"api_key": "key-0123456789"}, method="GET", path="/echo")
    seen = service.requests[-1].headers
    assert seen["X-Api-Key"] == "key-0123456789"
    assert "Authorization" not in seen


def test_sigv4_signature_verifies_with_botocore(service: Service, masker: Masker) -> None:
    conn = connection(service, auth="sigv4", aws_service="execute-api", aws_region="us-east-1")
    credential = {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}
    result = run(
        service,
        masker,
        conn,
        credential,
        method="POST",
        path="/signed",
        query={"b": "2 3", "a": ["x", "y"]},
        body={"amount_cents": 1500},
    )
    assert result.body["body"] == {"verified": True}, result.body
    # A tampered secret is refused by the same verifier: the check above can fail.
    bad = run(
        service, masker, conn, {**credential, "secret_access_key": "wrong" * 8}, method="GET", path="/signed"
    )
    assert bad.body["status_code"] == 403 and bad.status == "error"


def test_write_sends_the_json_body(service: Service, masker: Masker) -> None:
    result = run(
        service, masker, method="POST", path="/refunds", body={"customer_id": 2, "amount_cents": 1500}
    )
    seen = service.requests[-1]
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == {"customer_id": 2, "amount_cents": 1500}
    assert result.body["status_code"] == 201
    assert result.body["body"]["status"] == "queued"


def test_text_body_is_masked_as_text(service: Service, masker: Masker) -> None:
    result = run(service, masker, method="GET", path="/text")
    assert result.body["body"] == "contact [EMAIL] about card [CARD_NUMBER]"


def test_only_safe_response_headers_come_back(service: Service, masker: Masker) -> None:
    headers = run(service, masker, method="GET", path="/cookie").body["headers"]
    assert "set-cookie" not in headers and "x-backend-host" not in headers
    assert headers["x-ratelimit-remaining"] == "99"


def test_a_large_answer_is_cut_at_max_bytes(service: Service, masker: Masker) -> None:
    result = run(service, masker, method="GET", path="/big", max_bytes=1000)
    assert result.truncated is True and result.body["truncated"] is True
    assert result.body["body"] == "x" * 1000


def test_a_cut_json_answer_with_mask_paths_is_withheld(service: Service, masker: Masker) -> None:
    conn = connection(service, mask_paths=["$.customers[*].name"])
    result = run(service, masker, conn, method="GET", path="/big-json", max_bytes=5000)
    assert result.truncated is True
    assert result.body["body"] is None  # the names could not be found in a cut document


def test_a_json_bomb_too_deep_to_parse_is_withheld_or_text(service: Service, masker: Masker) -> None:
    withheld = run(service, masker, connection(service, mask_paths=["$..email"]), method="GET", path="/deep")
    assert withheld.body["body"] is None
    as_text = run(service, masker, method="GET", path="/deep")
    assert as_text.body["body"].startswith("[[[")


def test_an_empty_answer_and_a_head_request(service: Service, masker: Masker) -> None:
    empty = run(service, masker, connection(service, mask_paths=["$.x"]), method="DELETE", path="/empty")
    assert (empty.body["status_code"], empty.body["body"]) == (204, "")
    head = run(service, masker, method="HEAD", path="/customers/1")
    assert head.body["status_code"] == 200 and head.body["body"] == ""
    assert service.requests[-1].method == "HEAD"


def test_a_trickling_answer_hits_the_timeout(service: Service, masker: Masker) -> None:
    started = time.monotonic()
    with pytest.raises(StatementTimeoutError) as timed_out:
        run(service, masker, method="GET", path="/trickle", timeout_s=0.5)
    assert time.monotonic() - started < 2
    assert timed_out.value.command_sent is True


def test_a_silent_service_hits_the_timeout(service: Service, masker: Masker) -> None:
    with pytest.raises(StatementTimeoutError):
        run(service, masker, method="GET", path="/hang", timeout_s=0.3)


def test_a_redirect_to_another_host_is_refused_not_followed(service: Service, masker: Masker) -> None:
    for path in ("/away", "/other-port"):
        before = len(service.requests)
        with pytest.raises(HttpRedirectRefusedError) as refused:
            run(service, masker, method="GET", path=path)
        assert refused.value.status == 422 and refused.value.command_sent is True
        assert len(service.requests) == before + 1  # the redirect's target was never asked


def test_a_same_origin_redirect_is_returned_not_followed(service: Service, masker: Masker) -> None:
    before = len(service.requests)
    result = run(service, masker, method="GET", path="/here")
    assert result.body["status_code"] == 302
    assert result.body["headers"]["location"] == "/api/customers/1"
    assert len(service.requests) == before + 1


def test_a_missing_page_is_an_error_result(service: Service, masker: Masker) -> None:
    result = run(service, masker, method="GET", path="/customers/99")
    assert result.status == "error" and result.body["status_code"] == 404


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "GET", "path": "/customers/../echo"},
        {"method": "GET", "path": "//evil.example/echo"},
        {"method": "GET", "path": "/echo", "headers": {"Authorization": "Bearer agent"}},
        {"method": "GET", "path": "/echo", "headers": {"X-A": "1\r\nX-Injected: 1"}},
        {"method": "TRACE", "path": "/echo"},
    ],
)
def test_bad_input_never_reaches_the_service(
    service: Service, masker: Masker, fields: dict[str, Any]
) -> None:
    before = len(service.requests)
    with pytest.raises(HttpRefusedError):
        run(service, masker, **fields)
    assert len(service.requests) == before


def test_loopback_is_refused_unless_the_connection_is_local(
    tls_service: Service, pki: Pki, masker: Masker
) -> None:
    # `localhost` resolves to 127.0.0.1; the connection is not marked local.
    conn = connection(tls_service, host="localhost", scheme="https", local=False, ca_pem=pki.ca_pem)
    before = len(tls_service.requests)
    with pytest.raises(HttpRefusedError) as refused:
        run(tls_service, masker, conn, method="GET", path="/customers/1")
    assert refused.value.code == "http_forbidden_address"
    assert len(tls_service.requests) == before


@pytest.mark.parametrize("base_url", ["http://169.254.169.254/latest", "http://[fd00:ec2::254]/latest"])
def test_metadata_addresses_are_refused_even_when_local(
    base_url: str, service: Service, masker: Masker
) -> None:
    conn = connection(service, base_url=base_url)
    with pytest.raises(HttpRefusedError) as refused:
        run(service, masker, conn, method="GET", path="/meta-data/iam/security-credentials/")
    assert refused.value.code == "http_forbidden_address"


def test_tls_connects_to_the_pinned_address_with_the_name_as_sni(
    tls_service: Service, pki: Pki, masker: Masker
) -> None:
    conn = connection(tls_service, host="localhost", scheme="https", ca_pem=pki.ca_pem)
    result = run(tls_service, masker, conn, method="GET", path="/customers/2")
    assert result.body["body"]["email"] == "[EMAIL]"
    assert tls_service.sni[-1] == "localhost"
    assert tls_service.requests[-1].headers["Host"] == f"localhost:{tls_service.port}"


def test_tls_refuses_a_certificate_for_another_name(tls_service: Service, pki: Pki, masker: Masker) -> None:
    # The certificate names `localhost`, not 127.0.0.1: same server, same CA, refused.
    conn = connection(tls_service, host="127.0.0.1", scheme="https", ca_pem=pki.ca_pem)
    before = len(tls_service.requests)
    with pytest.raises(TargetUnavailableError):
        run(tls_service, masker, conn, method="GET", path="/customers/2")
    assert len(tls_service.requests) == before


def test_tls_refuses_an_untrusted_certificate(tls_service: Service, masker: Masker) -> None:
    conn = connection(tls_service, host="localhost", scheme="https")
    with pytest.raises(TargetUnavailableError):
        run(tls_service, masker, conn, method="GET", path="/customers/2")


def test_the_name_is_resolved_once_and_the_checked_address_is_used(
    tls_service: Service, pki: Pki, masker: Masker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DNS-rebinding service answers differently the second time; there must be no second time.
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    conn = connection(tls_service, host="localhost", scheme="https", ca_pem=pki.ca_pem)
    run(tls_service, masker, conn, method="GET", path="/customers/1")
    assert looked_up.count("localhost") == 1
    assert set(looked_up) <= {"localhost", "127.0.0.1"}
