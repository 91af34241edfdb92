"""The local stack's non-SQL targets: a customers HTTP service, the Kubernetes stand-in, OpenSSH.

Each is a real server on loopback, registered the way an operator registers a connection: a
registry item (kind, address, attributes such as the pinned CA or host key) and a secret holding
the credential Gatehouse injects. Agents never see the secret; the demo's policies
(`policy/policies/targets.cedar`) allow reads and send everything else to a DBA.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gatehouse import names
from gatehouse.local.k8s_standin import KubernetesStandIn
from gatehouse.local.provision import put_item
from gatehouse.local.seed import generate_customers
from gatehouse.local.sshd import ThrowawaySshd

log = logging.getLogger(__name__)

_CUSTOMER_PATH = re.compile(r"^/customers/(\d{1,6})$")


@dataclass
class _Registered:
    kind: str
    host: str
    port: int
    attributes: dict[str, Any]
    credential: dict[str, Any] = field(repr=False)


class CustomersService:
    """`GET /customers/{id}` (the demo's made-up people as JSON) and `POST /refunds`, bearer-token."""

    def __init__(self, token: str, seed: str = "gatehouse/demo-prod") -> None:
        people = generate_customers(seed)
        self.customers = {
            i: {"id": i, "name": p.name, "email": p.email, "phone": p.phone, "card_number": p.card_number,
                "ssn": p.ssn, "notes": p.notes}
            for i, p in enumerate(people, start=1)
        }  # fmt: skip
        self.refunds: list[dict[str, Any]] = []
        self._token = token
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> CustomersService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {service._token}":
                    return True
                self._answer(401, {"error": "unauthorized"})
                return False

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                found = _CUSTOMER_PATH.match(self.path)
                customer = service.customers.get(int(found.group(1))) if found else None
                self._answer(200 if customer else 404, customer or {"error": "not found"})

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                if self.path != "/refunds":
                    self._answer(404, {"error": "not found"})
                    return
                length = min(int(self.headers.get("Content-Length") or 0), 64 * 1024)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._answer(400, {"error": "not JSON"})
                    return
                service.refunds.append(body)
                self._answer(201, {"refund_id": len(service.refunds), "status": "accepted"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class DemoTargets:
    """Start the three servers, register `demo-http`, `demo-k8s` and `demo-ssh`, stop them again."""

    def __init__(self) -> None:
        self._http: CustomersService | None = None
        self._k8s: KubernetesStandIn | None = None
        self._sshd: ThrowawaySshd | None = None
        self.registered: dict[str, _Registered] = {}

    def start(self, specs: Mapping[str, Mapping[str, Any]]) -> None:
        """`specs`: the demo config's connections of kinds http, kubernetes and ssh."""
        import secrets

        for name, spec in specs.items():
            kind = spec.get("kind")
            attributes = dict(spec.get("attributes") or {})
            if kind == "http" and self._http is None:
                token = secrets.token_urlsafe(24)
                self._http = CustomersService(token).start()
                attributes.update(base_url=f"http://127.0.0.1:{self._http.port}", local=True)
                self.registered[name] = _Registered(
                    "http", "127.0.0.1", self._http.port, attributes, {"token": token}
                )
            elif kind == "kubernetes" and self._k8s is None:
                self._k8s = KubernetesStandIn().start()
                attributes.update(self._k8s.connection_attributes())
                self.registered[name] = _Registered(
                    "kubernetes", "127.0.0.1", 0, attributes, self._k8s.credential()
                )
            elif kind == "ssh" and self._sshd is None:
                self._sshd = ThrowawaySshd()
                info = self._sshd.start()
                attributes.update(username=info.username, host_key=info.host_key)
                self.registered[name] = _Registered(
                    "ssh", info.host, info.port, attributes, info.credential()
                )
            else:
                log.warning("connection %s: kind %s has no local target", name, kind)

    def register(self, secretsmanager: Any, dynamodb: Any, connections_table: str,
                 specs: Mapping[str, Mapping[str, Any]]) -> None:  # fmt: skip
        for name, live in self.registered.items():
            secret_name = names.connection_secret_name(name)
            value = json.dumps(live.credential)
            try:
                arn = secretsmanager.create_secret(Name=secret_name, SecretString=value)["ARN"]
            except secretsmanager.exceptions.ResourceExistsException:
                arn = secretsmanager.put_secret_value(SecretId=secret_name, SecretString=value)["ARN"]
            put_item(
                dynamodb,
                connections_table,
                {
                    "name": name,
                    "kind": live.kind,
                    "host": live.host,
                    "port": live.port,
                    "database": "",
                    "secret_id": arn,
                    "attributes": live.attributes,
                    "masking_profile": str(specs[name].get("masking_profile") or "default"),
                },
            )

    @property
    def customers(self) -> CustomersService | None:
        return self._http

    def stop(self) -> None:
        for stop in (
            self._http.stop if self._http else None,
            self._k8s.stop if self._k8s else None,
            self._sshd.stop if self._sshd else None,
        ):
            if stop is not None:
                try:
                    stop()
                except Exception:  # one failed stop must not leave the others running
                    log.exception("stopping a demo target failed")
        self._http, self._k8s, self._sshd = None, None, None
