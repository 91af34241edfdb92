"""A stand-in Kubernetes API server on loopback, for the local stack, the demo and the tests.

No Kubernetes API server installs here (none is packaged for Debian, PyPI or npm), so this one
serves the REST paths the gateway uses, with the real API's URLs, JSON shapes and status codes,
over HTTPS with its own self-signed CA and bearer-token authentication. The official `kubernetes`
Python client drives it in the tests, which keeps it honest.

What is real: the paths (`/api/v1/...`, `/apis/apps/v1/...`), list/get/create/update/patch/delete,
`limit`/`continue` paging, `watch=1` event streams (newline-delimited JSON), pod logs as text with
`limitBytes`/`tailLines`, the deployment `scale` subresource (an `autoscaling/v1` Scale), `Status`
objects for errors (401, 404, 409, 400), merge, strategic-merge and JSON patches, and pod `exec`
as a real WebSocket (RFC 6455 handshake, the `v4.channel.k8s.io` channels: 1 stdout, 2 stderr,
3 the exit Status with its ExitCode cause; the close handshake).
What is stood in: there is no etcd, scheduler or controller (pods never change phase, scaling a
deployment creates no pods), strategic merge is applied as a JSON merge patch (lists are
replaced), any valid token is allowed everything (no RBAC), and only pods, secrets, configmaps,
services, namespaces and deployments exist. An exec's "container" is a local subprocess run
without a shell in a fresh temporary directory holding `index.html`, with a four-variable
environment; only echo, ls, cat, uname, env, id, true, false, sleep and seq run (anything else,
`sh` included, exits 126 with a message on stderr), `ls` and `cat` see that directory only, `env`
takes no arguments; the process is killed after 30 s or when the client closes the stream. No
stdin, no tty, no attach or port-forward.

    with KubernetesStandIn() as k8s:
        k8s.url, k8s.ca_pem, k8s.token   # api_server, pinned CA, service-account token
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import hmac
import http.server
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# The biggest request body the stand-in reads; the real API server's limit is 3 MiB.
MAX_REQUEST_BYTES = 3 * 1024 * 1024
# exec: the channel protocol served (kubectl's), what the stood-in container may run, for how long.
EXEC_PROTOCOL = "v4.channel.k8s.io"
EXEC_PROGRAMS = frozenset({"echo", "ls", "cat", "uname", "env", "id", "true", "false", "sleep", "seq"})
EXEC_PATH = "/usr/bin:/bin"
MAX_EXEC_S = 30.0
_STDOUT, _STDERR, _ERROR = 1, 2, 3
_OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x2, 0x8, 0x9, 0xA
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_MAX_CLIENT_FRAME_BYTES = 64 * 1024
# A watch ends after the client's timeoutSeconds, and never later than this (the real default
# is 30-60 minutes; a stand-in that holds a thread that long only slows tests down).
MAX_WATCH_S = 10.0


@dataclass(frozen=True)
class _Kind:
    api: str  # "/api/v1" or "/apis/<group>/<version>"
    api_version: str  # the objects' apiVersion
    kind: str
    namespaced: bool


_RESOURCES: dict[tuple[str, str], _Kind] = {
    ("/api/v1", "pods"): _Kind("/api/v1", "v1", "Pod", True),
    ("/api/v1", "secrets"): _Kind("/api/v1", "v1", "Secret", True),
    ("/api/v1", "configmaps"): _Kind("/api/v1", "v1", "ConfigMap", True),
    ("/api/v1", "services"): _Kind("/api/v1", "v1", "Service", True),
    ("/api/v1", "namespaces"): _Kind("/api/v1", "v1", "Namespace", False),
    ("/apis/apps/v1", "deployments"): _Kind("/apis/apps/v1", "apps/v1", "Deployment", True),
}

POD_LOGS = {
    "web-1": [
        "2026-12-01T09:00:00Z GET /healthz 200",
        "2026-12-01T09:00:01Z GET /customers/42 200 user=ada@example.com",
        "2026-12-01T09:00:02Z POST /refunds 201",
    ],
    "web-2": [
        "2026-12-01T09:00:00Z GET /healthz 200",
        "2026-12-01T09:00:03Z GET /customers/7 404",
    ],
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _seed_objects() -> list[tuple[_Kind, str, dict[str, Any]]]:
    """Pods web-1 and web-2 in `default`, their deployment `web`, one Secret, the namespaces."""
    pods = _RESOURCES[("/api/v1", "pods")]
    deployments = _RESOURCES[("/apis/apps/v1", "deployments")]
    secrets_ = _RESOURCES[("/api/v1", "secrets")]
    namespaces = _RESOURCES[("/api/v1", "namespaces")]
    out: list[tuple[_Kind, str, dict[str, Any]]] = []
    for ns in ("default", "kube-system"):
        out.append((namespaces, "", {"metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}}))
    for name in ("web-1", "web-2"):
        pod = {
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
                ],
                "nodeName": "node-1",
            },
            "status": {"phase": "Running", "podIP": f"10.1.0.{name[-1]}"},
        }
        out.append((pods, "default", pod))
    deployment = {
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            },
        },
        "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2},
    }
    out.append((deployments, "default", deployment))
    secret = {
        "metadata": {"name": "db-credentials", "namespace": "default"},
        "type": "Opaque",
        "data": {"username": _b64("app"), "password": _b64("s3cr3t-Pa55word")},
    }
    out.append((secrets_, "default", secret))
    return out


def generate_certificates() -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate it signs for 127.0.0.1 and localhost (PEM)."""
    # Imported here: cryptography is only needed when a stand-in starts.
    from gatehouse.local.pki import authority

    ca = authority("gatehouse k8s stand-in CA", days=30)
    cert_pem, key_pem = ca.issue(["localhost"], ["127.0.0.1"], days=30)
    return ca.pem.encode("ascii"), cert_pem, key_pem


class _ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _json_patch(target: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    """RFC 6902 add / replace / remove / test (enough for the client's list bodies)."""
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "path" not in op:
            raise _ApiError(400, "BadRequest", "a JSON patch operation needs an op and a path")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op["path"]).split("/")[1:]]
        if not parts:
            raise _ApiError(422, "Invalid", "the JSON patch path must not be empty")
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        kind = op.get("op")
        if kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op.get("value"))
                elif kind == "add":
                    parent.insert(int(last), op.get("value"))
                else:
                    parent[int(last)] = op.get("value")
            else:
                parent[last] = op.get("value")
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                parent.pop(last, None)
        elif kind == "test":
            got = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if got != op.get("value"):
                raise _ApiError(422, "Invalid", f"the JSON patch test at {op['path']} failed")
        else:
            raise _ApiError(400, "BadRequest", f"unsupported JSON patch op {kind!r}")
    return doc


class _Store:
    """Objects keyed by (api, resource, namespace, name), with a cluster-wide resourceVersion."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._version = 1000
        for kind, ns, obj in _seed_objects():
            resource = next(r for (a, r), k in _RESOURCES.items() if k is kind)
            self._put(kind, resource, ns, obj, new=True)

    def _put(self, kind: _Kind, resource: str, ns: str, obj: dict[str, Any], *, new: bool) -> dict[str, Any]:
        self._version += 1
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if new:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta.setdefault("generation", 1)
        else:
            meta["generation"] = int(meta.get("generation", 1)) + 1
        meta["resourceVersion"] = str(self._version)
        obj["kind"] = kind.kind
        obj["apiVersion"] = kind.api_version
        if kind.kind == "Secret" and isinstance(obj.get("stringData"), dict):
            # As the real API server does: stringData is write-only, folded into data as base64.
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = _b64(str(value))
        self._objects[(kind.api, resource, ns, meta["name"])] = obj
        return copy.deepcopy(obj)

    def list(self, kind: _Kind, resource: str, ns: str) -> tuple[list[dict[str, Any]], str]:
        with self._lock:
            items = [
                copy.deepcopy(o)
                for (a, r, n, _), o in sorted(self._objects.items())
                if a == kind.api and r == resource and n == ns
            ]
            return items, str(self._version)

    def get(self, kind: _Kind, resource: str, ns: str, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self._objects.get((kind.api, resource, ns, name))
            if obj is None:
                raise _not_found(resource, name)
            return copy.deepcopy(obj)

    def create(self, kind: _Kind, resource: str, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise _ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value")
        with self._lock:
            if (kind.api, resource, ns, name) in self._objects:
                raise _ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource} "{name}" already exists',
                    {"name": name, "kind": resource},
                )
            return self._put(kind, resource, ns, obj, new=True)

    def replace(self, kind: _Kind, resource: str, ns: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            current = self._objects.get((kind.api, resource, ns, name))
            if current is None:
                raise _not_found(resource, name)
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise _ApiError(
                    400, "BadRequest", "the name of the object does not match the name on the URL"
                )
            meta["name"] = name
            for kept in ("uid", "creationTimestamp", "generation"):
                meta[kept] = current["metadata"].get(kept)
            return self._put(kind, resource, ns, obj, new=False)

    def delete(self, kind: _Kind, resource: str, ns: str, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self._objects.pop((kind.api, resource, ns, name), None)
            if obj is None:
                raise _not_found(resource, name)
            self._version += 1
            return obj


def _not_found(resource: str, name: str) -> _ApiError:
    return _ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.1 keeps the official client's pooled connections alive; every answer carries a
    # Content-Length, except a watch, which closes the connection when it ends.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a test run's output is not the place for an access log

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        try:
            body = self._read_body()
            if not self._authorized():
                raise _ApiError(401, "Unauthorized", "Unauthorized")
            self.server.requests.append((method, self.path))
            self._route(method, body)
        except _ApiError as err:
            self._send_json(err.code, err.status())

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self.server.token.encode())

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True
            raise _ApiError(413, "RequestEntityTooLarge", "the request body is too large")
        return self.rfile.read(length) if length else b""

    def _send_json(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, text: str) -> None:
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str, raw: bytes) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if parts == ["version"] and method == "GET":
            self._send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-gatehouse-standin"})
            return
        if parts[:2] == ["api", "v1"]:
            api, rest = "/api/v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            api, rest = f"/apis/{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        ns = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or (api, rest[0]) not in _RESOURCES or len(rest) > 3:
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        resource = rest[0]
        kind = _RESOURCES[(api, resource)]
        if kind.namespaced != bool(ns):
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        store = self.server.store
        if name is None:
            if method == "GET" and query.get("watch") in ("1", "true"):
                self._watch(kind, resource, ns, query)
            elif method == "GET":
                self._send_json(200, self._list(kind, resource, ns, query))
            elif method == "POST":
                self._send_json(201, store.create(kind, resource, ns, self._object(raw)))
            else:
                raise _ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
            return
        if sub is None:
            if method == "GET":
                self._send_json(200, store.get(kind, resource, ns, name))
            elif method == "PUT":
                self._send_json(200, store.replace(kind, resource, ns, name, self._object(raw)))
            elif method == "PATCH":
                current = store.get(kind, resource, ns, name)
                self._send_json(200, store.replace(kind, resource, ns, name, self._patched(current, raw)))
            elif method == "DELETE":
                self._send_json(200, store.delete(kind, resource, ns, name))
            else:
                raise _ApiError(405, "MethodNotAllowed", f"{method} is not supported on an object")
            return
        if resource == "pods" and sub == "exec" and method in ("GET", "POST"):
            pod = store.get(kind, resource, ns, name)  # 404 for a pod that does not exist
            self._exec(pod, parse_qs(url.query, keep_blank_values=True))
        elif resource == "pods" and sub == "log" and method == "GET":
            store.get(kind, resource, ns, name)  # 404 for a pod that does not exist
            self._send_text(self._log(name, query))
        elif resource == "deployments" and sub == "scale" and method in ("GET", "PUT", "PATCH"):
            self._scale(kind, resource, ns, name, method, raw)
        else:
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")

    def _exec(self, pod: dict[str, Any], params: dict[str, list[str]]) -> None:
        """The API server's checks, the WebSocket handshake, then the stood-in container."""
        argv = params.get("command", [])
        if not argv:
            raise _ApiError(400, "BadRequest", "you must specify at least 1 command")
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = (params.get("container") or [""])[-1] or containers[0]
        if container not in containers:
            raise _ApiError(
                400, "BadRequest", f"container {container} is not valid for pod {pod['metadata']['name']}"
            )
        flags = {
            k: _parse_bool((params.get(k) or ["false"])[-1]) for k in ("stdin", "stdout", "stderr", "tty")
        }
        if flags["stdin"] or flags["tty"]:
            raise _ApiError(
                400, "BadRequest", "stood in: this server runs exec without stdin and without a tty"
            )
        if not (flags["stdout"] or flags["stderr"]):
            raise _ApiError(400, "BadRequest", "you must specify at least 1 of stdin, stdout, stderr")
        connection = {t.strip().lower() for t in self.headers.get("Connection", "").split(",")}
        if self.headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection:
            raise _ApiError(400, "BadRequest", "Upgrade request required")
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Sec-WebSocket-Version") != "13" or len(_b64decode(key)) != 16:
            raise _ApiError(400, "BadRequest", "a WebSocket upgrade needs version 13 and a 16-byte key")
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if EXEC_PROTOCOL not in offered:
            raise _ApiError(400, "BadRequest", f"stood in: this server speaks only {EXEC_PROTOCOL}")
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket_accept(key))
        self.send_header("Sec-WebSocket-Protocol", EXEC_PROTOCOL)
        self.end_headers()
        self.close_connection = True  # the connection is the stream's now; it ends with it
        session = _ExecSession(self.connection, pod["metadata"]["name"], flags, self.server.stopping)
        try:
            session.run(argv)
        except OSError:
            pass  # the client went away mid-stream: its process was killed, nothing to answer

    def _object(self, raw: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(raw)
        except ValueError:
            raise _ApiError(400, "BadRequest", "the request body is not JSON") from None
        if not isinstance(obj, dict):
            raise _ApiError(400, "BadRequest", "the request body must be a JSON object")
        return obj

    def _patched(self, current: dict[str, Any], raw: bytes) -> dict[str, Any]:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            patch = json.loads(raw)
        except ValueError:
            raise _ApiError(400, "BadRequest", "the patch is not JSON") from None
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise _ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            return _json_patch(current, patch)
        if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            # Stood in: strategic merge is applied as a JSON merge patch (lists are replaced).
            merged: dict[str, Any] = _merge_patch(current, patch)
            return merged
        raise _ApiError(
            415, "UnsupportedMediaType", f"the patch content type {content_type!r} is not supported"
        )

    def _list(self, kind: _Kind, resource: str, ns: str, query: dict[str, str]) -> dict[str, Any]:
        items, version = self.server.store.list(kind, resource, ns)
        items = _select(items, query.get("labelSelector"))
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0)
        page = items[start : start + limit] if limit else items[start:]
        meta: dict[str, Any] = {"resourceVersion": version}
        if limit and start + limit < len(items):
            meta["continue"] = str(start + limit)
            meta["remainingItemCount"] = len(items) - start - limit
        for item in page:
            # As the real API server does, items of a list carry no kind or apiVersion.
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta, "items": page}

    def _watch(self, kind: _Kind, resource: str, ns: str, query: dict[str, str]) -> None:
        items, _ = self.server.store.list(kind, resource, ns)
        timeout_s = min(float(query.get("timeoutSeconds") or MAX_WATCH_S), MAX_WATCH_S)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for item in _select(items, query.get("labelSelector")):
            line = json.dumps({"type": "ADDED", "object": item}).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        # Stood in: no object changes while a watch is open, so after the initial ADDED events
        # the stream stays quiet until the client's timeoutSeconds, as a real one does.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            self.server.stopping.wait(0.05)
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def _log(self, name: str, query: dict[str, str]) -> str:
        lines = POD_LOGS.get(name, [])
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]) :] if int(query["tailLines"]) else []
        text = "".join(line + "\n" for line in lines)
        if "limitBytes" in query:
            text = text.encode()[: int(query["limitBytes"])].decode(errors="ignore")
        return text

    def _scale(self, kind: _Kind, resource: str, ns: str, name: str, method: str, raw: bytes) -> None:
        store = self.server.store
        deployment = store.get(kind, resource, ns, name)
        if method != "GET":
            scale = self._object(raw) if method == "PUT" else self._patched(_scale_of(deployment), raw)
            replicas = (scale.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise _ApiError(
                    422, "Invalid", "Scale.spec.replicas: Invalid value: must be a non-negative integer"
                )
            deployment["spec"]["replicas"] = replicas
            deployment = store.replace(kind, resource, ns, name, deployment)
        self._send_json(200, _scale_of(deployment))


def _scale_of(deployment: dict[str, Any]) -> dict[str, Any]:
    meta = deployment["metadata"]
    labels = deployment["spec"].get("selector", {}).get("matchLabels", {})
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        },
        "spec": {"replicas": deployment["spec"].get("replicas", 1)},
        "status": {
            "replicas": deployment.get("status", {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        },
    }


def _select(items: list[dict[str, Any]], selector: str | None) -> list[dict[str, Any]]:
    """Equality-based label selectors (`app=web,tier!=db`), the subset the demo uses."""
    if not selector:
        return items
    out = items
    for term in selector.split(","):
        if "!=" in term:
            key, value = term.split("!=", 1)
            out = [i for i in out if i.get("metadata", {}).get("labels", {}).get(key) != value]
        elif "=" in term:
            key, value = term.split("=", 1)
            value = value.lstrip("=")
            out = [i for i in out if i.get("metadata", {}).get("labels", {}).get(key) == value]
        else:
            out = [i for i in out if term in i.get("metadata", {}).get("labels", {})]
    return out


def _parse_bool(value: str) -> bool:
    """Query flags as the API server parses them (Go's strconv.ParseBool)."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise _ApiError(400, "BadRequest", f"invalid boolean value {value!r}")


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


def websocket_accept(key: str) -> str:
    """RFC 6455 4.2.2: the Sec-WebSocket-Accept that proves the server read the client's key."""
    digest = hashlib.sha1((key + _WS_GUID).encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


class _ClientFrames:
    """Frames the client sends, parsed from bytes as they arrive (no I/O): RFC 6455 5.2 and 5.3."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """(opcode, unmasked payload) of every complete frame so far; ValueError on a protocol error."""
        self._buffer += data
        out: list[tuple[int, bytes]] = []
        while len(self._buffer) >= 2:
            first, second = self._buffer[0], self._buffer[1]
            if not second & 0x80:
                raise ValueError("a client frame must be masked")
            length, offset = second & 0x7F, 2
            if length == 126:
                length, offset = int.from_bytes(self._buffer[2:4], "big"), 4
            elif length == 127:
                length, offset = int.from_bytes(self._buffer[2:10], "big"), 10
            if length > _MAX_CLIENT_FRAME_BYTES:
                raise ValueError("a client frame is too large")
            if len(self._buffer) < offset + 4 + length:
                break
            mask = self._buffer[offset : offset + 4]
            body = self._buffer[offset + 4 : offset + 4 + length]
            out.append((first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(body))))
            del self._buffer[: offset + 4 + length]
        return out


class _ExecSession:
    """One exec stream: the argv runs as a local subprocess standing in for the container.

    Stood in: the "container" is a temporary working directory (holding `index.html`) with a small
    environment, and only the programs in EXEC_PROGRAMS run (never a shell); `ls` and `cat` see
    that directory only. The process is killed after MAX_EXEC_S, or when the client closes the
    stream (a real kubelet may leave it running). Its exit status goes out on channel 3 as the
    API server sends it: a Success Status, or a NonZeroExitCode Status with the ExitCode cause.
    """

    def __init__(self, sock: Any, pod: str, flags: dict[str, bool], stopping: threading.Event) -> None:
        self._sock = sock
        self._pod = pod
        self._flags = flags
        self._stopping = stopping
        self._frames = _ClientFrames()
        self._client_closed = False

    def _send(self, channel: int, data: bytes) -> None:
        self._sock.sendall(_frame(_OP_BINARY, bytes([channel]) + data))

    def run(self, argv: list[str]) -> None:
        with tempfile.TemporaryDirectory(prefix="gatehouse-k8s-exec-") as workdir:
            Path(workdir, "index.html").write_text(f"<h1>{self._pod}</h1>\n")
            refusal, program = _program(argv)
            if program is None:
                self._send(_STDERR, refusal.encode())
                exit_code: int | None = 126  # what a container runtime answers for a program it cannot run
            else:
                exit_code = self._run_process(program, argv, workdir)
            if exit_code is None:
                return  # the client closed the stream: nobody to tell
            self._send(_ERROR, json.dumps(_exit_status(exit_code, argv)).encode())
            self._sock.sendall(_frame(_OP_CLOSE, (1000).to_bytes(2, "big")))
            self._await_close()

    def _run_process(self, program: str, argv: list[str], workdir: str) -> int | None:
        env = {"PATH": EXEC_PATH, "HOME": workdir, "HOSTNAME": self._pod, "LANG": "C.UTF-8"}
        # The argv of an allowlisted program, never a shell: nothing in it is interpreted.
        proc = subprocess.Popen(
            argv,
            executable=program,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        deadline = time.monotonic() + MAX_EXEC_S
        selector = selectors.DefaultSelector()
        try:
            selector.register(proc.stdout, selectors.EVENT_READ, _STDOUT)
            selector.register(proc.stderr, selectors.EVENT_READ, _STDERR)
            selector.register(self._sock, selectors.EVENT_READ, 0)
            pipes = 2
            while pipes:
                if time.monotonic() >= deadline or self._stopping.is_set():
                    _kill(proc)
                    break
                # Decrypted bytes already inside the SSL object are invisible to select().
                ready = [0] if self._sock.pending() else []
                ready += [key.data for key, _ in selector.select(timeout=0.05)]
                for which in ready:
                    if which == 0:
                        if not self._read_client():
                            _kill(proc)
                            return None
                        continue
                    stream = proc.stdout if which == _STDOUT else proc.stderr
                    data = os.read(stream.fileno(), 64 * 1024)
                    if not data:
                        selector.unregister(stream)
                        pipes -= 1
                    elif self._flags["stdout" if which == _STDOUT else "stderr"]:
                        self._send(which, data)
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _kill(proc)
                code = proc.wait()
            # Killed by a signal: a container runtime reports 128 + the signal number, as a shell does.
            return 128 - code if code < 0 else code
        except OSError:
            _kill(proc)
            raise
        finally:
            selector.close()
            proc.stdout.close()
            proc.stderr.close()
            if proc.poll() is None:
                _kill(proc)

    def _read_client(self) -> bool:
        """Handle what the client sent; False when it closed the stream or the connection."""
        self._sock.settimeout(1.0)
        data = self._sock.recv(64 * 1024)
        if not data:
            return False
        try:
            frames = self._frames.feed(data)
        except ValueError:
            self._sock.sendall(_frame(_OP_CLOSE, (1002).to_bytes(2, "big")))  # protocol error
            return False
        for opcode, payload in frames:
            if opcode == _OP_CLOSE:
                self._sock.sendall(_frame(_OP_CLOSE, payload[:2]))
                self._client_closed = True
                return False
            if opcode == _OP_PING:
                self._sock.sendall(_frame(_OP_PONG, payload))
        return True

    def _await_close(self) -> None:
        """After our close frame, the client's answer (RFC 6455 7.1.1), or give up after a second."""
        deadline = time.monotonic() + 1.0
        try:
            while not self._client_closed and time.monotonic() < deadline:
                if not self._read_client():
                    return
        except OSError:
            pass  # closed without a close frame: the connection ends either way


def _program(argv: list[str]) -> tuple[str, str | None]:
    """(refusal text, path of the program to run): the stand-in's container runs little."""
    name = argv[0]
    if name not in EXEC_PROGRAMS:
        allowed = ", ".join(sorted(EXEC_PROGRAMS))
        return f"stood in: {name!r} cannot run in this stand-in's containers (only {allowed})\n", None
    if name == "env" and len(argv) > 1:
        return "stood in: env takes no arguments here (it would run another program)\n", None
    if name in ("ls", "cat") and any("/" in a or a == ".." for a in argv[1:]):
        return f"stood in: {name} sees the working directory only\n", None
    path = shutil.which(name, path=EXEC_PATH)
    if path is None:
        return f"stood in: {name} is not installed on this machine\n", None
    return "", path


def _exit_status(code: int, argv: list[str]) -> dict[str, Any]:
    """The metav1.Status the API server sends on the error channel when the command ends."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {argv}, "
        f"exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the process group (the command and anything it started), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it has ended already
    proc.wait(timeout=5)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str, context: ssl.SSLContext) -> None:
        super().__init__(address, _Handler)
        self.token = token
        self.store = _Store()
        self.requests: list[tuple[str, str]] = []
        self.stopping = threading.Event()
        self._context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        # Headers and body leave in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add about 40 ms to every answer.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The TLS handshake runs in the handler's thread (on first read), so one client that
        # connects and stays silent cannot hold up the accept loop.
        return self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class KubernetesStandIn:
    """The stand-in API server: start(), then `url`, `ca_pem` and `token`; stop() when done."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self._address = (host, port)
        self.token = token or secrets.token_urlsafe(32)
        self.ca_pem = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> KubernetesStandIn:
        ca_pem, cert_pem, key_pem = generate_certificates()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only; the key lives on disk for as long as the call takes.
        with tempfile.TemporaryDirectory(prefix="gatehouse-k8s-") as tmp:
            cert_file, key_file = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            cert_file.write_bytes(cert_pem)
            key_file.write_bytes(key_pem)
            key_file.chmod(0o600)
            context.load_cert_chain(cert_file, key_file)
        self.ca_pem = ca_pem.decode()
        self._server = _Server(self._address, self.token, context)
        self._thread = threading.Thread(
            # A short poll: stop() waits up to one interval for the loop to notice.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="k8s-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> KubernetesStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        # The token is a credential: never in a repr.
        return f"KubernetesStandIn(url={self.url if self._server else None!r})"

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Kubernetes stand-in is not running")
        return f"https://{self._address[0]}:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every authenticated request served, oldest first."""
        return list(self._server.requests) if self._server else []

    def connection_attributes(self) -> dict[str, str]:
        """The registry attributes of a connection to this server."""
        return {"api_server": self.url, "ca_pem": self.ca_pem}

    def credential(self) -> dict[str, str]:
        """The secret value to store in Secrets Manager for that connection."""
        return {"token": self.token}


def running(**kwargs: Any) -> Iterator[KubernetesStandIn]:
    """Generator form for fixtures: `yield from running()`."""
    standin = KubernetesStandIn(**kwargs).start()
    try:
        yield standin
    finally:
        standin.stop()
