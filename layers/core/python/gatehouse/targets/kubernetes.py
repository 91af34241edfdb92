"""Kubernetes targets: classify a request by verb and resource, run it on the API server's REST API.

A connection is an API server (`attributes["api_server"]`, an https URL), its CA
(`attributes["ca_pem"]`, pinned: the server's certificate must chain to it and to nothing else)
and a service-account token, the credential `{"token": ...}` read from Secrets Manager.

Classes (Cedar actions `k8s:<class>`): `read` (get, list, watch, logs), `write` (create, update,
patch, delete, scale), `exec` (exec, attach, port-forward) and `secrets` (any verb on Secrets).
A resource or subresource this module does not know is `unknown`: policy sees it as the highest
risk, and it is never executed, since its API group and scope (hence its path) are not known.
A verb not in that list, a name or namespace that is not a DNS name, a malformed body: refused
with `KubernetesRefusedError` before anything runs.

Secrets are masked by default: every `data` and `stringData` value of a Secret is redacted in the
result (and so is the `last-applied-configuration` annotation, which holds a copy of them).

`exec` runs one command to completion: `body = {"command": [argv...], "container": name}` (an argv,
never a shell line) goes to `/api/v1/namespaces/{ns}/pods/{name}/exec` as a WebSocket upgrade with
the `v4.channel.k8s.io` channel protocol, no stdin and no terminal; the result is SSH's shape,
`{"exit_status", "stdout", "stderr", "truncated"}`, masked and capped at `max_bytes` in all.
`attach` and `port-forward` are interactive streams: classified, never run.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shlex
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests
import urllib3

from gatehouse.exceptions import (
    GatehouseError,
    ResultTooLargeError,
    SecretUnavailableError,
    StatementTimeoutError,
    TargetUnavailableError,
)
from gatehouse.masking import Masker
from gatehouse.masking.strategies import COLUMN_LABEL
from gatehouse.models import Connection
from gatehouse.targets.commands import (
    K8S_EXEC_VERBS,
    K8S_READ_VERBS,
    K8S_VERBS,
    K8S_WRITE_VERBS,
    KubernetesCommand,
)
from gatehouse.targets.kinds import Classified, KindResult

READ_VERBS, WRITE_VERBS, EXEC_VERBS = K8S_READ_VERBS, K8S_WRITE_VERBS, K8S_EXEC_VERBS
VERBS = K8S_VERBS

# A request body (an object to create, a patch) larger than this is refused before it is sent;
# the API server's own limit is 3 MiB, and etcd stores objects of at most 1.5 MiB.
MAX_BODY_BYTES = 1024 * 1024
# Items asked for per page of a list (`limit`/`continue`): the byte budget is checked page by page.
LIST_PAGE_ITEMS = 100
# Seconds to connect at most, within the request's timeout.
CONNECT_TIMEOUT_S = 10.0
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# An exec's argv travels in the URL (one `command=` parameter each): API servers cap request
# lines and headers near 1 MiB; these bounds keep well inside that, as SSH's command length does.
MAX_EXEC_ARGS = 64
MAX_EXEC_COMMAND_CHARS = 8192

# RFC 1123: a label is what a namespace must be; a name is a DNS subdomain (labels joined by
# dots), as the API server validates most object names. Neither can hold `/`, `%`, `..` or
# whitespace, which is what keeps them from escaping their place in the URL path.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_RESOURCE_NAME = re.compile(r"[a-z][a-z0-9]{0,62}\Z")
_SUBRESOURCE_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}\Z")
_GROUP = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_VERSION = re.compile(r"v[0-9]+((alpha|beta)[0-9]+)?\Z")
# Secret values quoted in validation errors (`Invalid value: "..."`) are cut out of error texts.
_QUOTED_VALUE = re.compile(r'(Invalid value: )"(?:[^"\\]|\\.)*"')

# Query options a read may carry in `body` (Kubernetes' own parameter names and types).
_LIST_OPTIONS: Mapping[str, type] = {"labelSelector": str, "fieldSelector": str}
_LOG_OPTIONS: Mapping[str, type] = {
    "container": str,
    "tailLines": int,
    "sinceSeconds": int,
    "previous": bool,
    "timestamps": bool,
}


class KubernetesRefusedError(GatehouseError):
    """The Kubernetes request is malformed or not allowed here; nothing was sent."""

    code = "k8s_refused"
    status = 400


class KubernetesConfigError(GatehouseError):
    """The connection's registry entry is unusable (no https API server, no pinned CA)."""

    code = "k8s_connection_misconfigured"
    status = 500


@dataclass(frozen=True)
class ResourceType:
    """Where a resource type lives in the API and whether it is namespaced."""

    group: str  # "" for the core group (/api/v1)
    version: str
    namespaced: bool
    subresources: frozenset[str] = frozenset({"status"})

    @property
    def api_path(self) -> str:
        return f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"


def _types(
    group: str, version: str, namespaced: bool, *names: str, subs: tuple[str, ...] = ()
) -> dict[str, ResourceType]:
    return {n: ResourceType(group, version, namespaced, frozenset(("status", *subs))) for n in names}


# The built-in resources of a current cluster. A connection adds its own (custom resources) with
# `attributes["resources"] = {"widgets": {"group": "example.com", "version": "v1", "namespaced": true}}`.
BUILTIN_RESOURCES: Mapping[str, ResourceType] = {
    **_types("", "v1", True, "pods", subs=("log", "exec", "attach", "portforward")),
    **_types("", "v1", True, "replicationcontrollers", subs=("scale",)),
    **_types(
        "",
        "v1",
        True,
        "services",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "persistentvolumeclaims",
        "endpoints",
        "events",
        "limitranges",
        "resourcequotas",
    ),
    **_types("", "v1", False, "namespaces", "nodes", "persistentvolumes"),
    **_types("apps", "v1", True, "deployments", "statefulsets", "replicasets", subs=("scale",)),
    **_types("apps", "v1", True, "daemonsets", "controllerrevisions"),
    **_types("batch", "v1", True, "jobs", "cronjobs"),
    **_types("networking.k8s.io", "v1", True, "ingresses", "networkpolicies"),
    **_types("policy", "v1", True, "poddisruptionbudgets"),
    **_types("autoscaling", "v2", True, "horizontalpodautoscalers"),
    **_types("rbac.authorization.k8s.io", "v1", True, "roles", "rolebindings"),
    **_types("rbac.authorization.k8s.io", "v1", False, "clusterroles", "clusterrolebindings"),
    **_types("storage.k8s.io", "v1", False, "storageclasses"),
    **_types("apiextensions.k8s.io", "v1", False, "customresourcedefinitions"),
}

# The subresource each streaming verb reaches (kubectl port-forward is pods/portforward).
_STREAM_SUBRESOURCE = {"exec": "exec", "attach": "attach", "port-forward": "portforward"}


@dataclass(frozen=True)
class _Checked:
    """A request that passed the checks: what it means, before any path is built."""

    verb: str
    resource: str
    namespace: str | None  # None for a cluster-scoped resource
    name: str | None
    subresource: str | None
    body: dict[str, Any] | None
    rtype: ResourceType | None  # None: a resource this module does not know
    known_subresource: bool


def _refuse(code: str, message: str) -> KubernetesRefusedError:
    return KubernetesRefusedError(message, code=code)


def _resource_types(connection: Connection) -> Mapping[str, ResourceType]:
    extra = connection.attributes.get("resources")
    if not extra:
        return BUILTIN_RESOURCES
    if not isinstance(extra, Mapping):
        raise KubernetesConfigError("the connection's `resources` attribute must be a mapping")
    out = dict(BUILTIN_RESOURCES)
    for name, spec in extra.items():
        if not isinstance(name, str) or not _RESOURCE_NAME.match(name) or not isinstance(spec, Mapping):
            raise KubernetesConfigError(f"the connection's resource {name!r} is not well formed")
        group, version = spec.get("group", ""), spec.get("version", "v1")
        subs = spec.get("subresources", ["status"])
        if (
            not isinstance(group, str)
            or (group and not _GROUP.match(group))
            or not isinstance(version, str)
            or not _VERSION.match(version)
            or not isinstance(spec.get("namespaced", True), bool)
            or not isinstance(subs, list)
            or not all(isinstance(s, str) and _SUBRESOURCE_NAME.match(s) for s in subs)
        ):
            raise KubernetesConfigError(f"the connection's resource {name!r} is not well formed")
        out[name] = ResourceType(group, version, bool(spec.get("namespaced", True)), frozenset(subs))
    return out


def _body_size(body: Any) -> int:
    return len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())


def _check_options(body: dict[str, Any] | None, allowed: Mapping[str, type], verb: str) -> None:
    if body is None:
        return
    for key, value in body.items():
        kind = allowed.get(key)
        if kind is None:
            raise _refuse("k8s_bad_body", f"{verb} takes no option {key!r} (allowed: {', '.join(allowed)})")
        # bool is an int in Python: a flag and a count must not stand in for each other.
        if type(value) is not kind:
            raise _refuse("k8s_bad_body", f"the {verb} option {key!r} must be a {kind.__name__}")
        if isinstance(value, str) and (len(value) > 1024 or not value.isprintable()):
            raise _refuse("k8s_bad_body", f"the {verb} option {key!r} must be printable and short")
        if type(value) is int and value < 0:
            raise _refuse("k8s_bad_body", f"the {verb} option {key!r} must not be negative")
    container = body.get("container")
    if container is not None and not _DNS_LABEL.match(container):
        raise _refuse("k8s_bad_body", "the logs option 'container' must be a DNS label")


def _check_exec_body(body: dict[str, Any] | None) -> None:
    """`{"command": [argv...], "container": name}`: an argv, never a shell line to interpret."""
    usage = 'exec takes {"command": ["program", "arg", ...], "container": "name"} (container optional)'
    if body is None:
        raise _refuse("k8s_body_required", f"exec needs a body: {usage}")
    unknown = set(body) - {"command", "container"}
    if unknown:
        raise _refuse("k8s_bad_body", f"exec takes no option {sorted(unknown)[0][:40]!r}: {usage}")
    argv = body.get("command")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise _refuse("k8s_bad_body", f"exec needs a non-empty list of strings as command: {usage}")
    if not argv[0] or len(argv) > MAX_EXEC_ARGS or sum(len(a) for a in argv) > MAX_EXEC_COMMAND_CHARS:
        raise _refuse(
            "k8s_bad_body",
            f"the exec command needs a program name and at most {MAX_EXEC_ARGS} arguments "
            f"of {MAX_EXEC_COMMAND_CHARS} characters in all",
        )
    # No control characters: every argument must read on the approver's one line as it will run.
    if not all(a.isprintable() for a in argv):
        raise _refuse(
            "k8s_bad_body", "the exec command's arguments must be printable (no control characters)"
        )
    container = body.get("container")
    if container is not None and (not isinstance(container, str) or not _DNS_LABEL.match(container)):
        raise _refuse("k8s_bad_body", "the exec option 'container' must be a DNS label")


def _check(command: KubernetesCommand, connection: Connection) -> _Checked:
    """Every rule that does not need the network; raises KubernetesRefusedError."""
    verb = command.verb
    if verb not in VERBS:
        raise _refuse(
            "k8s_unknown_verb", f"unknown Kubernetes verb {verb[:40]!r} (known: {', '.join(VERBS)})"
        )
    resource = command.resource
    if not _RESOURCE_NAME.match(resource):
        raise _refuse("k8s_bad_resource", "the resource must be a plural lower-case name such as 'pods'")
    sub = command.subresource
    if sub is not None and not _SUBRESOURCE_NAME.match(sub):
        raise _refuse("k8s_bad_subresource", "the subresource must be a lower-case name such as 'scale'")
    name = command.name
    if name is not None and not (
        len(name) <= 253 and all(_DNS_LABEL.match(label) for label in name.split("."))
    ):
        raise _refuse(
            "k8s_bad_name", "the name must be a DNS subdomain (lower-case letters, digits, '-', '.')"
        )
    ns = command.namespace
    if ns is not None and not _DNS_LABEL.match(ns):
        raise _refuse(
            "k8s_bad_namespace", "the namespace must be a DNS label (lower-case letters, digits, '-')"
        )
    body = command.body
    if body is not None and _body_size(body) > MAX_BODY_BYTES:
        raise _refuse("k8s_body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")

    rtype = _resource_types(connection).get(resource)
    if rtype is not None:
        if rtype.namespaced:
            ns = ns or "default"
        elif ns is not None:
            raise _refuse("k8s_namespace_not_allowed", f"{resource} are cluster-scoped: give no namespace")

    # Normalise the subresource spellings kubectl allows (get pods/log is logs; the streaming
    # verbs name their own subresource), and refuse a streaming subresource reached by any
    # other verb: `get pods/exec` is how a websocket exec starts, not a read.
    if verb == "logs" or (verb == "get" and sub == "log"):
        if resource != "pods" or sub not in (None, "log"):
            raise _refuse("k8s_bad_subresource", "logs are read from pods only")
        verb, sub = "logs", "log"
    elif verb in EXEC_VERBS:
        if sub not in (None, _STREAM_SUBRESOURCE[verb]):
            raise _refuse("k8s_bad_subresource", f"{verb} goes with subresource {_STREAM_SUBRESOURCE[verb]}")
        sub = _STREAM_SUBRESOURCE[verb]
    elif sub in _STREAM_SUBRESOURCE.values() or sub == "log":
        raise _refuse("k8s_bad_subresource", f"subresource {sub} is reached only with its own verb")
    elif verb == "scale":
        if sub not in (None, "scale"):
            raise _refuse("k8s_bad_subresource", "scale goes with subresource scale")
        sub = "scale"
    elif sub is not None and verb in ("list", "watch", "create", "delete") and sub in ("status", "scale"):
        raise _refuse("k8s_bad_subresource", f"{verb} does not apply to subresource {sub}")

    known_sub = sub is None or (rtype is not None and sub in rtype.subresources)

    # Names: a collection verb takes none, an object verb needs one.
    if verb in ("list", "watch") and name is not None:
        raise _refuse("k8s_name_not_allowed", f"{verb} takes no name (use a fieldSelector in body)")
    if verb not in ("list", "watch", "create") and name is None:
        raise _refuse("k8s_name_required", f"{verb} needs the object's name")

    # Bodies.
    if verb in ("create", "update", "patch", "scale") and body is None:
        raise _refuse("k8s_body_required", f"{verb} needs a body")
    if verb == "exec":
        _check_exec_body(body)
    elif verb in ("get", *EXEC_VERBS) and body is not None:
        raise _refuse("k8s_body_not_allowed", f"{verb} takes no body")
    if verb in ("list", "watch"):
        _check_options(body, _LIST_OPTIONS, verb)
    elif verb == "logs":
        _check_options(body, _LOG_OPTIONS, verb)
    elif verb == "scale":
        replicas = (body or {}).get("replicas")
        if set(body or {}) != {"replicas"} or type(replicas) is not int or replicas < 0:
            raise _refuse("k8s_bad_body", 'scale takes {"replicas": N}, N a non-negative integer')
    elif verb in ("create", "update") and body is not None and sub is None:
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise _refuse("k8s_bad_body", "body.metadata must be an object")
        meta = meta or {}
        if verb == "create" and name is None and not isinstance(meta.get("name"), str):
            raise _refuse("k8s_name_required", "create needs a name or body.metadata.name")
        body_name = meta.get("name")
        if name is not None and body_name is not None and body_name != name:
            raise _refuse("k8s_bad_body", "body.metadata.name does not match the name")
        if body_name is not None and (
            not isinstance(body_name, str) or not all(_DNS_LABEL.match(p) for p in body_name.split("."))
        ):
            raise _refuse("k8s_bad_name", "body.metadata.name must be a DNS subdomain")
        body_ns = meta.get("namespace")
        if body_ns is not None and body_ns != ns:
            raise _refuse("k8s_bad_body", "body.metadata.namespace does not match the namespace")
    return _Checked(verb, resource, ns, name, sub, body, rtype, known_sub)


def _redacted_secret_body(body: dict[str, Any]) -> dict[str, Any]:
    out = dict(body)
    for key in ("data", "stringData"):
        if isinstance(out.get(key), dict):
            out[key] = dict.fromkeys(out[key], COLUMN_LABEL)
    meta = out.get("metadata")
    if (
        isinstance(meta, dict)
        and isinstance(meta.get("annotations"), dict)
        and LAST_APPLIED in meta["annotations"]
    ):
        out["metadata"] = {**meta, "annotations": {**meta["annotations"], LAST_APPLIED: COLUMN_LABEL}}
    return out


def _text(checked: _Checked) -> str:
    """kubectl-like, one line: `patch deployments/web -n default --body={"spec":...}`."""
    target = checked.resource + (f"/{checked.name}" if checked.name else "")
    parts = [checked.verb, target]
    if checked.subresource and checked.verb not in ("logs", "scale", *EXEC_VERBS):
        parts.append(f"--subresource={checked.subresource}")
    if checked.namespace:
        parts.append(f"-n {checked.namespace}")
    if checked.verb == "exec" and checked.body is not None:
        # As kubectl spells it: the argv after `--`, quoted so that it splits back exactly.
        if checked.body.get("container"):
            parts.append(f"-c {checked.body['container']}")
        parts.append("-- " + shlex.join(checked.body["command"]))
    elif checked.body is not None:
        body = checked.body
        if checked.resource == "secrets":
            # The text goes to the log and to approvers: a Secret's values never do.
            body = _redacted_secret_body(body)
        # Sorted keys: the same request reads the same way; ensure_ascii keeps it one line.
        parts.append("--body=" + json.dumps(body, sort_keys=True, separators=(",", ":")))
    return " ".join(parts)


def check_settings(connection: Connection, credential: Mapping[str, Any]) -> None:
    """Read the connection's settings as `execute` will (the API server, its CA, the resources)."""
    _api_server(connection)
    _resource_types(connection)


def classify(command: KubernetesCommand, connection: Connection) -> Classified:
    """The request's class: read, write, exec, secrets or unknown. Bad input raises instead."""
    checked = _check(command, connection)
    text = _text(checked)
    verb, resource = checked.verb, checked.resource
    if resource == "secrets":
        return Classified("secrets", f"{verb} on secrets: anything on Secrets is k8s:secrets", text)
    if checked.rtype is None:
        return Classified(
            "unknown", f"{resource} is not a resource this gateway knows: unknown, the highest risk", text
        )
    if verb in EXEC_VERBS:
        return Classified("exec", f"{verb} on {resource} reaches into a running container", text)
    if not checked.known_subresource:
        return Classified(
            "unknown",
            f"{resource}/{checked.subresource} is not a subresource this gateway knows: unknown",
            text,
        )
    on = (
        f"{resource}/{checked.subresource}"
        if checked.subresource and verb not in ("logs", "scale")
        else resource
    )
    if verb in READ_VERBS:
        return Classified("read", f"{verb} on {on} is a read", text)
    return Classified("write", f"{verb} on {on} is a write", text)


# --- execution -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ApiServer:
    base: str  # scheme://host:port[/prefix], no trailing slash
    ca_pem: str


def _api_server(connection: Connection) -> _ApiServer:
    url = connection.attributes.get("api_server")
    ca_pem = connection.attributes.get("ca_pem")
    if not isinstance(url, str) or not url:
        raise KubernetesConfigError("the connection has no api_server attribute")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.query or parts.fragment:
        raise KubernetesConfigError("the connection's api_server must be a plain https URL")
    if not isinstance(ca_pem, str) or "BEGIN CERTIFICATE" not in ca_pem:
        raise KubernetesConfigError("the connection has no pinned CA (attribute ca_pem, PEM)")
    try:
        ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError):
        raise KubernetesConfigError("the connection's ca_pem is not a valid PEM certificate") from None
    return _ApiServer(url.rstrip("/"), ca_pem)


def _token(credential: Mapping[str, Any]) -> str:
    token = credential.get("token") if isinstance(credential, Mapping) else None
    # A token with a control character or a space would break (or inject into) the
    # Authorization header; the message never quotes it.
    if not isinstance(token, str) or not token or not all(33 <= ord(c) < 127 for c in token):
        raise SecretUnavailableError("the Kubernetes credential has no usable token")
    return token


def _path(checked: _Checked) -> str:
    rtype = checked.rtype
    assert rtype is not None
    parts = [rtype.api_path]
    if checked.namespace:
        parts.append(f"namespaces/{quote(checked.namespace, safe='')}")
    parts.append(checked.resource)
    if checked.name and checked.verb != "create":  # a create is POSTed to the collection
        parts.append(quote(checked.name, safe=""))
    if checked.subresource:
        parts.append(checked.subresource)
    return "/".join(parts)


@contextmanager
def _ca_file(ca_pem: str) -> Iterator[str]:
    # requests verifies against a file; with `verify=<file>` urllib3 loads that file alone, not
    # the system's roots, which is what pins the CA.
    handle = tempfile.NamedTemporaryFile("w", prefix="gatehouse-k8s-ca-", suffix=".pem", delete=False)
    try:
        with handle:
            handle.write(ca_pem)
        yield handle.name
    finally:
        os.unlink(handle.name)


class _Call:
    """One HTTPS exchange with the API server, inside a deadline and a byte budget."""

    def __init__(
        self, session: requests.Session, server: _ApiServer, ca_file: str, token: str, timeout_s: float
    ):
        self._session = session
        self._server = server
        self._ca_file = ca_file
        self._token = token
        self._deadline = time.monotonic() + timeout_s
        self.sent = False

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise StatementTimeoutError("the Kubernetes API server did not answer in time")
        return left

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        budget: int,
        until_deadline: bool = False,
    ) -> tuple[int, bytes, bool]:
        """(status, body bytes, cut short). Redirects are answered, not followed.

        `until_deadline` (a watch): reaching the deadline while the answer streams ends it
        early (cut short) instead of failing.
        """
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/json",
            # Counted bytes are wire bytes: no compressed answer to inflate past the budget.
            "Accept-Encoding": "identity",
        }
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        left = self._left()
        # From here on the request may have reached the server.
        self.sent = True
        try:
            resp = self._session.request(
                method,
                self._server.base + path,
                params=params,
                data=data,
                headers=headers,
                verify=self._ca_file,
                allow_redirects=False,
                stream=True,
                timeout=(min(CONNECT_TIMEOUT_S, left), left),
            )
        except requests.exceptions.SSLError:
            raise TargetUnavailableError(
                "the Kubernetes API server's certificate does not verify against the pinned CA"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise self._failure(exc) from None
        # The read timeout bounds each socket read, not the whole answer: a server that drips
        # a byte at a time could outlast any deadline. The watchdog shuts the socket at the
        # deadline, which unblocks a read in progress.
        watchdog = threading.Timer(max(self._deadline - time.monotonic(), 0.0), _shut, (resp.raw,))
        watchdog.daemon = True
        watchdog.start()
        chunks: list[bytes] = []
        size = 0
        cut = False
        try:
            with resp:
                while True:
                    try:
                        # read1: at most one read from the socket per turn, so the budget and
                        # the deadline are checked between reads of at most 64 KiB.
                        chunk = resp.raw.read1(64 * 1024)
                    except Exception as exc:  # noqa: BLE001 - urllib3 and ssl raise many kinds on a shut socket
                        if until_deadline and time.monotonic() >= self._deadline:
                            cut = True
                            break
                        raise self._failure(exc) from None
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > budget:
                        cut = True
                        break
                    if time.monotonic() >= self._deadline:
                        break
                if not cut and time.monotonic() >= self._deadline:
                    # The watchdog ended the read: what arrived may be incomplete.
                    if not until_deadline:
                        raise StatementTimeoutError("the Kubernetes API server did not answer in time")
                    cut = True
                return resp.status_code, b"".join(chunks), cut
        finally:
            watchdog.cancel()

    def _failure(self, exc: BaseException) -> GatehouseError:
        timeouts = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
        if isinstance(exc, timeouts) or time.monotonic() >= self._deadline:
            return StatementTimeoutError("the Kubernetes API server did not answer in time")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return TargetUnavailableError("the Kubernetes API server could not be reached")
        return TargetUnavailableError("the answer from the Kubernetes API server was cut off")


def _shut(raw: Any) -> None:
    try:
        raw.shutdown()
    except (ValueError, RuntimeError, OSError):
        pass  # already closed or released: nothing left to unblock


def _query(options: Mapping[str, Any] | None) -> dict[str, str]:
    """Read options as query parameters; Kubernetes spells booleans `true`/`false`."""
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (options or {}).items()}


def _scrub_token(raw: bytes, token: str) -> bytes:
    # Defence in depth: should the server ever echo the token (a TokenReview, a debug
    # handler), it still never reaches the agent. Tokens hold no JSON-special characters.
    needle = token.encode()
    return raw.replace(needle, COLUMN_LABEL.encode()) if needle in raw else raw


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _is_secret(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("kind") == "Secret"


def _redact_secrets(value: Any, *, secret: bool = False) -> Any:
    """Every Secret's data and stringData values redacted, wherever a Secret appears."""
    if isinstance(value, list):
        return [_redact_secrets(v, secret=secret) for v in value]
    if not isinstance(value, dict):
        return value
    if secret or _is_secret(value):
        value = _redacted_secret_body(value)
        secret = False
    out: dict[str, Any] = {}
    for key, item in value.items():
        # A SecretList's items carry no kind: they are Secrets because the list is.
        item_secret = key == "items" and value.get("kind") == "SecretList"
        out[key] = _redact_secrets(item, secret=item_secret) if item_secret else _redact_secrets(item)
    return out


def _mask_json(value: Any, masker: Masker) -> Any:
    """Keys kept; every string value through the content detectors."""
    if isinstance(value, str):
        return masker.mask_text(value)
    if isinstance(value, list):
        return [_mask_json(v, masker) for v in value]
    if isinstance(value, dict):
        return {k: _mask_json(v, masker) for k, v in value.items()}
    return value


def _safe(value: Any, masker: Masker, *, secrets: bool) -> Any:
    value = _redact_secrets(value, secret=secrets)
    return _mask_json(value, masker)


def _error_result(status: int, raw: bytes, masker: Masker, *, secrets: bool, started: float) -> KindResult:
    decoded = _decode(raw)
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        status_obj: Any = decoded
    else:
        text = raw[:4096].decode("utf-8", errors="replace")
        status_obj = {"message": text if status < 300 or status >= 400 else "redirect not followed"}
    if secrets:
        # Validation errors on a Secret quote the offending value.
        status_obj = json.loads(_QUOTED_VALUE.sub(r'\1"' + COLUMN_LABEL + '"', json.dumps(status_obj)))
    status_obj = _mask_json(_redact_secrets(status_obj, secret=False), masker)
    body: dict[str, Any] = {"http_status": status, "status": status_obj}
    if isinstance(status_obj, dict):
        for key in ("reason", "message"):
            if key in status_obj:
                body[key] = status_obj[key]
    return KindResult("error", body, duration_ms=(time.monotonic() - started) * 1000)


def execute(
    command: KubernetesCommand,
    connection: Connection,
    credential: Mapping[str, Any],
    *,
    timeout_s: float,
    max_bytes: int,
    masker: Masker,
    session: requests.Session | None = None,
) -> KindResult:
    """Run the request on the connection's API server; the answer comes back masked.

    A non-2xx answer from the API server is a result with status "error" (its Status object,
    masked). Unreachable, untrusted or slow servers raise TargetUnavailableError or
    StatementTimeoutError; a get or write answer over `max_bytes` raises ResultTooLargeError
    (a list or a log is cut instead, with `truncated`). An injected `session` has its
    `trust_env` turned off: proxies and .netrc from the environment never see the token.

    An exec opens its own WebSocket (no session, no proxy) and returns `exit_status`, `stdout`,
    `stderr`, `truncated`: status "ok" for exit 0 (or output cut at the cap before the end),
    "error" otherwise. Past `timeout_s` it raises StatementTimeoutError with `command_sent` set.
    """
    checked = _check(command, connection)
    if checked.verb in ("attach", "port-forward"):
        raise KubernetesRefusedError(
            f"{checked.verb} opens an interactive stream, which this gateway does not hold open for an "
            "agent; run one command to completion with exec instead",
            code="k8s_interactive_not_supported",
            status=501,
        )
    if checked.rtype is None or not checked.known_subresource:
        raise _refuse(
            "k8s_unknown_resource",
            f"{checked.resource}{'/' + checked.subresource if checked.subresource else ''} is not a "
            "resource this gateway knows how to reach",
        )
    server = _api_server(connection)
    token = _token(credential)
    started = time.monotonic()
    if checked.verb == "exec":
        return _exec(checked, server, token, timeout_s, max_bytes, masker, started)
    own_session = session is None
    http = session or requests.Session()
    # No proxy from the environment (it would see the token) and no .netrc credentials.
    http.trust_env = False
    try:
        with _ca_file(server.ca_pem) as ca_file:
            call = _Call(http, server, ca_file, token, timeout_s)
            try:
                return _run(call, checked, token, max_bytes, masker, started, timeout_s)
            except GatehouseError as err:
                err.command_sent = err.command_sent or (call.sent and checked.verb in WRITE_VERBS)
                raise
    finally:
        if own_session:
            http.close()


def _run(
    call: _Call,
    checked: _Checked,
    token: str,
    max_bytes: int,
    masker: Masker,
    started: float,
    timeout_s: float,
) -> KindResult:
    path = _path(checked)
    secrets = checked.resource == "secrets"
    verb = checked.verb

    def elapsed() -> float:
        return (time.monotonic() - started) * 1000

    if verb == "list":
        return _list(call, path, checked, token, max_bytes, masker, started)
    if verb == "watch":
        params = {**_query(checked.body), "watch": "1", "timeoutSeconds": str(max(1, int(timeout_s) - 1))}
        status, raw, over = call.send("GET", path, params=params, budget=max_bytes, until_deadline=True)
        raw = _scrub_token(raw, token)
        if not 200 <= status < 300:
            return _error_result(status, raw, masker, secrets=secrets, started=started)
        lines = raw.split(b"\n")
        if over:
            lines = lines[:-1]  # the last line was cut by the budget
        events = [e for e in map(_decode, lines) if isinstance(e, dict)]
        masked = [_safe(e, masker, secrets=False) for e in events]
        for event, original in zip(masked, events, strict=True):
            if secrets and isinstance(original.get("object"), dict):
                event["object"] = _safe(original["object"], masker, secrets=True)
        return KindResult("ok", {"http_status": status, "events": masked}, over, elapsed(), len(masked))
    if verb == "logs":
        params = {**_query(checked.body), "limitBytes": str(max_bytes + 1)}
        status, raw, over = call.send("GET", path, params=params, budget=max_bytes)
        raw = _scrub_token(raw, token)
        if not 200 <= status < 300:
            return _error_result(status, raw, masker, secrets=False, started=started)
        over = over or len(raw) > max_bytes
        text = raw[:max_bytes].decode("utf-8", errors="ignore" if over else "replace")
        return KindResult("ok", {"http_status": status, "log": masker.mask_text(text)}, over, elapsed())

    method, body, content_type = "GET", None, "application/json"
    if verb == "create":
        method, body = "POST", dict(checked.body or {})
        if checked.name is not None:
            body["metadata"] = {**(body.get("metadata") or {}), "name": checked.name}
    elif verb == "update":
        method, body = "PUT", checked.body
    elif verb == "patch":
        method, body, content_type = "PATCH", checked.body, "application/merge-patch+json"
    elif verb == "scale":
        method, content_type = "PATCH", "application/merge-patch+json"
        body = {"spec": {"replicas": (checked.body or {})["replicas"]}}
    elif verb == "delete":
        method, body = "DELETE", checked.body
    status, raw, over = call.send(method, path, body=body, content_type=content_type, budget=max_bytes)
    if over:
        raise ResultTooLargeError(f"the API server's answer is over {max_bytes} bytes")
    raw = _scrub_token(raw, token)
    if not 200 <= status < 300:
        return _error_result(status, raw, masker, secrets=secrets, started=started)
    obj = _decode(raw)
    if not isinstance(obj, dict):
        raise TargetUnavailableError(
            "the Kubernetes API server answered with something other than a JSON object"
        )
    row_count = 1 if verb == "get" else None
    return KindResult(
        "ok",
        {"http_status": status, "object": _safe(obj, masker, secrets=secrets)},
        False,
        elapsed(),
        row_count,
    )


def _list(
    call: _Call, path: str, checked: _Checked, token: str, max_bytes: int, masker: Masker, started: float
) -> KindResult:
    """Page through the list (`limit`/`continue`) until it ends or the byte budget is spent."""
    secrets = checked.resource == "secrets"
    items: list[Any] = []
    head: dict[str, Any] = {}
    left = max_bytes
    token_continue: str | None = None
    truncated = False
    while True:
        params: dict[str, Any] = {**_query(checked.body), "limit": str(LIST_PAGE_ITEMS)}
        if token_continue:
            params["continue"] = token_continue
        status, raw, over = call.send("GET", path, params=params, budget=left)
        if over:
            truncated = True
            break
        raw = _scrub_token(raw, token)
        if not 200 <= status < 300:
            return _error_result(status, raw, masker, secrets=secrets, started=started)
        page = _decode(raw)
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise TargetUnavailableError("the Kubernetes API server's list answer is not a list")
        left -= len(raw)
        items.extend(page["items"])
        head = {k: v for k, v in page.items() if k != "items"}
        token_continue = (page.get("metadata") or {}).get("continue") or None
        if not token_continue:
            break
    if not head:
        head = {"kind": "List", "metadata": {}}
    meta = dict(head.get("metadata") or {})
    if truncated:
        # The agent gets what fit; a continue token would only lead past the budget again.
        meta.pop("continue", None)
        meta.pop("remainingItemCount", None)
    obj = {**head, "metadata": meta, "items": items}
    masked = _safe(obj, masker, secrets=False)
    if secrets:
        masked["items"] = [_safe(i, masker, secrets=True) for i in items]
    return KindResult(
        "ok",
        {"http_status": 200, "object": masked},
        truncated,
        (time.monotonic() - started) * 1000,
        len(items),
    )


# --- exec: one command to completion over a WebSocket ---------------------------------------------

# The API server's channel protocol for exec (what kubectl speaks): every binary message starts
# with its channel byte; channel 3 carries one metav1.Status when the command has ended.
EXEC_PROTOCOL = "v4.channel.k8s.io"
_STDOUT, _STDERR, _ERROR = 1, 2, 3
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# Output is read this far past the cap, so that output cut at the cap is known to be cut.
_EXEC_LOOKAHEAD_BYTES = 4096
# A Status is a few hundred bytes and a response head a few hundred more: anything far larger
# is not an API server speaking the protocol.
_MAX_STATUS_BYTES = 64 * 1024
_MAX_HEAD_BYTES = 64 * 1024
# How much of an answer that refuses the upgrade (a Status object) is read.
_MAX_REFUSAL_BYTES = 1024 * 1024


class _ExecStream:
    """The client end of one exec WebSocket (RFC 6455): every read bounded by the deadline.

    Written here rather than taken from websocket-client because that library reads a whole frame
    of whatever length the server announces into memory, follows redirects and proxies from the
    environment; this reads at most what the byte budget has room for and nothing else.
    """

    def __init__(self, sock: ssl.SSLSocket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buffer = bytearray()

    def _fill(self) -> bool:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        # An SSL socket's timeout bounds the whole recv, not each underlying read.
        self._sock.settimeout(left)
        chunk = self._sock.recv(64 * 1024)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if not self._fill():
                raise ConnectionError("the exec stream ended in the middle of a frame")
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def read_head(self) -> bytes:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > _MAX_HEAD_BYTES:
                raise _protocol_error("the API server's answer to the exec upgrade has no end of headers")
            if not self._fill():
                raise ConnectionError("the API server closed the connection before answering the exec")
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        return head

    def read_body(self, headers: Mapping[str, str], limit: int) -> bytes:
        """The body of an answer that refused the upgrade, at most `limit` bytes of it."""
        length = headers.get("content-length", "")
        want = min(int(length), limit) if length.isdigit() else limit
        while len(self._buffer) < want and self._fill():
            pass
        return bytes(self._buffer[:want])

    def read_frame_header(self) -> tuple[bool, int, int] | None:
        """(fin, opcode, payload length); None when the server closed the connection between frames."""
        if not self._buffer and not self._fill():
            return None
        first, second = self.read_exact(2)
        # RFC 6455 5.1 and 5.2: a server never masks, and sets no reserved bit without an extension.
        if second & 0x80 or first & 0x70:
            raise _protocol_error("the exec stream sent a masked or extended frame")
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self.read_exact(2), "big")
        elif length == 127:
            length = int.from_bytes(self.read_exact(8), "big")
        return bool(first & 0x80), first & 0x0F, length

    def send(self, opcode: int, payload: bytes) -> None:
        """A control frame (close or pong, at most 125 bytes), masked with a fresh key (RFC 6455 5.3)."""
        key = os.urandom(4)
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload[:125]))
        self._sock.settimeout(max(self._deadline - time.monotonic(), 0.05))
        self._sock.sendall(bytes([0x80 | opcode, 0x80 | len(masked)]) + key + masked)


def _protocol_error(message: str) -> TargetUnavailableError:
    return TargetUnavailableError(message, code="k8s_exec_protocol_error")


@dataclass
class _ExecOutcome:
    stdout: bytearray
    stderr: bytearray
    status: bytearray  # the error channel: one metav1.Status, JSON
    cut: bool = False  # the read limit was reached: the stream was closed, the tail dropped


def _exec_request(checked: _Checked, server: _ApiServer, token: str, key: str) -> bytes:
    body = checked.body or {}
    params = [("command", arg) for arg in body["command"]]
    if body.get("container"):
        params.append(("container", body["container"]))
    # No stdin and no terminal: the command runs to completion, as an SSH command does here.
    params += [("stdin", "false"), ("stdout", "true"), ("stderr", "true"), ("tty", "false")]
    parts = urlsplit(server.base)
    target = parts.path.rstrip("/") + _path(checked) + "?" + urlencode(params, quote_via=quote)
    return (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Protocol: {EXEC_PROTOCOL}\r\n"
        "User-Agent: gatehouse\r\n"
        "\r\n"
    ).encode()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
        raise _protocol_error("the API server's answer to the exec upgrade is not HTTP")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return int(status_line[1]), headers


def _check_upgrade(headers: Mapping[str, str], key: str) -> None:
    """RFC 6455 4.1: the server proves it read this handshake (the accept hash) and names the protocol."""
    # SHA-1 is what the RFC fixes for this proof; it protects nothing here.
    digest = hashlib.sha1((key + _WS_GUID).encode(), usedforsecurity=False).digest()
    accept = base64.b64encode(digest).decode()
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if (
        headers.get("upgrade", "").lower() != "websocket"
        or "upgrade" not in connection
        or not hmac.compare_digest(headers.get("sec-websocket-accept", ""), accept)
    ):
        raise _protocol_error("the API server's answer to the exec upgrade is not a WebSocket handshake")
    if headers.get("sec-websocket-protocol", "").strip() != EXEC_PROTOCOL:
        raise _protocol_error(f"the API server did not open the exec stream with {EXEC_PROTOCOL}")


def _collect_exec(stream: _ExecStream, read_limit: int) -> _ExecOutcome:
    """Read the channels until the server closes the stream or `read_limit` output bytes arrived."""
    outcome = _ExecOutcome(bytearray(), bytearray(), bytearray())
    channel: int | None = None  # of the message that continuation frames add to
    total = 0
    while (header := stream.read_frame_header()) is not None:
        fin, opcode, length = header
        if opcode in (_OP_CLOSE, _OP_PING, _OP_PONG):
            if length > 125 or not fin:  # RFC 6455 5.5
                raise _protocol_error("the exec stream sent an oversized or fragmented control frame")
            payload = stream.read_exact(length)
            if opcode == _OP_CLOSE:
                stream.send(_OP_CLOSE, payload[:2])  # RFC 6455 5.5.1: echo the status code
                return outcome
            if opcode == _OP_PING:
                stream.send(_OP_PONG, payload)
            continue
        if opcode in (_OP_TEXT, _OP_BINARY):
            if length == 0:
                continue  # no channel byte: nothing to deliver
            channel = stream.read_exact(1)[0]
            length -= 1
        elif opcode != _OP_CONT or channel is None:
            raise _protocol_error("the exec stream sent a frame of an unknown kind")
        if channel in (_STDOUT, _STDERR):
            take = min(length, read_limit - total)
            data = stream.read_exact(take)
            (outcome.stdout if channel == _STDOUT else outcome.stderr).extend(data)
            total += take
            if take < length or total >= read_limit:
                outcome.cut = True
                return outcome
        else:
            # The status channel, or a channel an exec without stdin never uses: small or wrong.
            if len(outcome.status) + length > _MAX_STATUS_BYTES:
                raise _protocol_error("the exec stream's status channel is over its size limit")
            data = stream.read_exact(length)
            if channel == _ERROR:
                outcome.status.extend(data)
        if fin:
            channel = None
    return outcome


def _exit_status(raw: bytes) -> tuple[int | None, str | None]:
    """(exit status, failure message) from the error channel's metav1.Status."""
    status = _decode(raw)
    if not isinstance(status, dict):
        raise _protocol_error("the exec stream's status channel did not carry a Status object")
    if status.get("status") == "Success":
        return 0, None
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else []:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", "")), None
            except ValueError:
                break
    # A failure with no exit code: the command never started (no such container or program).
    message = status.get("message")
    return None, message if isinstance(message, str) else "the exec failed without an exit status"


def _exec(
    checked: _Checked,
    server: _ApiServer,
    token: str,
    timeout_s: float,
    max_bytes: int,
    masker: Masker,
    started: float,
) -> KindResult:
    """Run the argv in the pod's container and wait for its exit status (no stdin, no terminal)."""
    deadline = started + timeout_s
    parts = urlsplit(server.base)
    host = parts.hostname or ""
    # Pinned: a context loaded with the connection's CA alone (cadata loads no system roots).
    context = ssl.create_default_context(cadata=server.ca_pem)
    key = base64.b64encode(os.urandom(16)).decode()
    sent = False
    try:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        raw_sock = socket.create_connection((host, parts.port or 443), timeout=min(CONNECT_TIMEOUT_S, left))
        try:
            raw_sock.settimeout(max(deadline - time.monotonic(), 0.001))
            with context.wrap_socket(raw_sock, server_hostname=host) as tls:
                stream = _ExecStream(tls, deadline)
                tls.settimeout(max(deadline - time.monotonic(), 0.001))
                tls.sendall(_exec_request(checked, server, token, key))
                # From here on the command may be running in the container.
                sent = True
                status, headers = _parse_head(stream.read_head())
                if status != 101:
                    raw = _scrub_token(stream.read_body(headers, _MAX_REFUSAL_BYTES), token)
                    return _error_result(status, raw, masker, secrets=False, started=started)
                _check_upgrade(headers, key)
                outcome = _collect_exec(stream, max_bytes + _EXEC_LOOKAHEAD_BYTES)
                if outcome.cut:
                    # Enough for the budget: stop the stream rather than pull output for nothing.
                    try:
                        stream.send(_OP_CLOSE, (1000).to_bytes(2, "big"))
                    except OSError:
                        pass  # the server is gone already: nothing left to tell it
        finally:
            raw_sock.close()
    except ssl.SSLCertVerificationError:
        raise TargetUnavailableError(
            "the Kubernetes API server's certificate does not verify against the pinned CA"
        ) from None
    except TimeoutError:
        raise _sent(
            StatementTimeoutError(
                f"the exec ran over its time limit of {timeout_s:g} s and its stream was closed "
                "(the process in the container may still run)"
                if sent
                else f"the Kubernetes API server did not open the exec stream within {timeout_s:g} s"
            ),
            sent,
        ) from None
    except GatehouseError as err:
        _sent(err, sent)
        raise
    except OSError as exc:
        raise _sent(
            TargetUnavailableError(
                "the exec stream to the Kubernetes API server was cut off"
                if sent
                else "the Kubernetes API server could not be reached"
            ),
            sent,
        ) from exc
    exit_status: int | None = None
    failure: str | None = None
    if not outcome.cut:
        if not outcome.status:
            raise _sent(_protocol_error("the exec stream ended before the command's exit status"), True)
        exit_status, failure = _exit_status(bytes(outcome.status))
    stdout = _exec_text(_scrub_token(bytes(outcome.stdout), token), outcome.cut, masker)
    stderr = _exec_text(_scrub_token(bytes(outcome.stderr), token), outcome.cut, masker)
    stdout, out_clipped = _clip(stdout, max_bytes)
    stderr, err_clipped = _clip(stderr, max_bytes - len(stdout.encode()))
    truncated = outcome.cut or out_clipped or err_clipped
    body: dict[str, Any] = {
        "exit_status": exit_status,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": truncated,
    }
    if failure is not None:
        body["message"] = masker.mask_text(failure)
    succeeded = exit_status == 0 or (outcome.cut and exit_status is None)
    return KindResult(
        "ok" if succeeded else "error", body, truncated, (time.monotonic() - started) * 1000, None
    )


def _sent(err: GatehouseError, sent: bool) -> GatehouseError:
    err.command_sent = err.command_sent or sent
    return err


def _exec_text(raw: bytes, cut: bool, masker: Masker) -> str:
    if cut:
        # The last line was cut mid-way: a value in it could be too short for any detector.
        newline = raw.rfind(b"\n")
        if newline >= 0:
            raw = raw[: newline + 1]
    return masker.mask_text(raw.decode("utf-8", errors="replace"))


def _clip(text: str, budget: int) -> tuple[str, bool]:
    """At most `budget` bytes of masked text (masking can lengthen it), cut at a character."""
    encoded = text.encode()
    if len(encoded) <= budget:
        return text, False
    return encoded[: max(budget, 0)].decode("utf-8", errors="ignore"), True
