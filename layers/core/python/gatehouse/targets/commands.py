"""The command models of the non-SQL target kinds: the API's request fields and their OpenAPI schema.

Kept apart from the executors (gatehouse.targets.http, .kubernetes, .ssh) so that validating a
request, and a cold start of the API function, import pydantic and nothing else: the SSH client
alone costs ~400 ms to import, and a request that is refused never needs it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

MAX_HTTP_PATH = 2048
MAX_HTTP_BODY_BYTES = 1024 * 1024
K8S_READ_VERBS = ("get", "list", "watch", "logs")
K8S_WRITE_VERBS = ("create", "update", "patch", "delete", "scale")
K8S_EXEC_VERBS = ("exec", "attach", "port-forward")
K8S_VERBS = K8S_READ_VERBS + K8S_WRITE_VERBS + K8S_EXEC_VERBS
MAX_SSH_COMMAND_CHARS = 8192


class HttpCommand(BaseModel):
    """One HTTP request to the connection's service. The gateway adds the credential."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    method: str = Field(
        description=(
            "HTTP method: GET, HEAD or OPTIONS (reads) or POST, PUT, PATCH, DELETE (writes, unless "
            "the connection maps the path to another class). TRACE, CONNECT and others are refused."
        ),
        examples=["GET", "POST"],
    )
    path: str = Field(
        description=(
            "Path under the connection's base URL, starting with '/', e.g. '/customers/42'. No scheme, "
            "host, query string or fragment; '..' segments, '//', '@', backslashes and percent-encoded "
            f"dots, slashes or percent signs are refused. At most {MAX_HTTP_PATH} characters."
        ),
        examples=["/customers/42"],
    )
    query: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="Query parameters; a list value repeats the parameter. Sent percent-encoded.",
        examples=[{"limit": "10", "tag": ["a", "b"]}],
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Extra request headers. Authorization, Proxy-Authorization, Cookie, Host, hop-by-hop and "
            "framing headers, X-Forwarded-*, method overrides and X-Amz-* are refused: the gateway "
            "injects the connection's own credential."
        ),
        examples=[{"Accept": "application/json"}],
    )
    body: JsonValue = Field(
        default=None,
        description=(
            "Request body. A string is sent as it is (text/plain unless a Content-Type header says "
            f"otherwise); any other JSON value is sent as JSON. At most {MAX_HTTP_BODY_BYTES} bytes."
        ),
        examples=[{"customer_id": 42, "amount_cents": 1500}],
    )


class KubernetesCommand(BaseModel):
    """One request to a Kubernetes API server, in kubectl's terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verb: str = Field(
        description=(
            "What to do: get, list, watch, logs (reads); create, update, patch, delete, scale "
            "(writes); exec (runs one command in a pod's container to completion, no stdin, no "
            "terminal); attach and port-forward (classified for policy, refused: interactive)."
        ),
        json_schema_extra={"enum": list(K8S_VERBS)},
        examples=["get", "list", "logs", "patch", "scale"],
    )
    resource: str = Field(
        description=(
            "The resource type, plural and lower case as in the API path: pods, deployments, "
            "secrets, services, configmaps, namespaces, nodes, jobs, ..."
        ),
        examples=["pods", "deployments"],
    )
    namespace: str | None = Field(
        default=None,
        description=(
            "The namespace (a DNS label) for a namespaced resource; `default` when omitted. "
            "Must be omitted for cluster-scoped resources (nodes, namespaces, ...)."
        ),
        examples=["default"],
    )
    name: str | None = Field(
        default=None,
        description=(
            "The object's name (a DNS subdomain). Required by get, logs, update, patch, delete "
            "and scale; not allowed with list and watch; optional with create (it must match "
            "body.metadata.name)."
        ),
        examples=["web-1"],
    )
    body: dict[str, Any] | None = Field(
        default=None,
        description=(
            "JSON. create/update: the object. patch: a JSON merge patch (RFC 7386). scale: "
            '{"replicas": N}. delete: optional DeleteOptions. list/watch: optional '
            '{"labelSelector", "fieldSelector"}. logs: optional {"container", "tailLines", '
            '"sinceSeconds", "previous", "timestamps"}. exec: {"command": ["program", "arg", ...], '
            '"container": "name"}: an argv run as it is, never through a shell (put `sh -c` in it '
            "yourself if the container has one); container may be omitted for a pod's only or "
            "default container. get, attach, port-forward: none."
        ),
        examples=[{"spec": {"replicas": 3}}, {"replicas": 3}, {"command": ["ls", "-l"], "container": "web"}],
    )
    subresource: str | None = Field(
        default=None,
        description=(
            "A subresource: status (get, update, patch), scale (get, update, patch, scale), "
            "log (get, logs). exec, attach and portforward go with the verbs of those names."
        ),
        examples=["scale", "status"],
    )


class SshCommand(BaseModel):
    """One command line to run on the connection's host."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    command: str = Field(
        description=(
            "The shell command line to run on the host, exactly as typed at a shell prompt; it is run "
            "once by the login user's shell, with no terminal and no standard input. Read-only "
            "programs (for example `df -h`, `journalctl -u nginx -n 50 --no-pager`, "
            "`grep ERROR /var/log/app.log | tail -n 20`) are classified `ssh:read`; any other command, "
            "redirection to a file, variable assignment or nested shell that is not itself a read "
            "is `ssh:write`; what the parser does not understand is `ssh:unknown`. "
            f"At most {MAX_SSH_COMMAND_CHARS} characters; tab and newline are the only control "
            "characters allowed."
        ),
        examples=["df -h /", "systemctl status nginx --no-pager", "tail -n 50 /var/log/syslog"],
    )
