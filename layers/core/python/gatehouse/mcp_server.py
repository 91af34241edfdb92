"""`gatehouse mcp`: the agent API as MCP tools, over stdio or streamable HTTP.

Every tool is a thin translation to one call of the signed agent API (`GatehouseClient`), so an
agent that speaks MCP meets exactly the policies, approvals, masking and session log of the HTTP
API: this module decides nothing, runs nothing and masks nothing itself. It checks only the shape
of a tool's arguments (its input schema); what the values mean (a method, a path, SQL) is the
API's to judge, so that a refusal is made, and recorded, in one place.

The tool definitions are a contract with every agent configured against them: they are checked
in (tests/unit/data/mcp_tools.json) and a test fails when they drift, so a change is a release
note rather than a surprise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import mcp_types as types
import requests
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gatehouse import __version__
from gatehouse.client import ApiAnswer, GatehouseClient

# The API's own command models (pydantic only): a tool's schema is the request field's schema.
from gatehouse.targets.commands import HttpCommand, KubernetesCommand, SshCommand
from gatehouse.terminal import safe_json

if TYPE_CHECKING:
    from mcp.server import ServerRequestContext

SERVER_NAME = "gatehouse"
DEFAULT_HTTP_PORT = 8790
# The API long-polls at most this long (GET /v1/requests/{id}?wait=N, N <= 20): API Gateway's
# HTTP API integrations time out at 30 s.
MAX_WAIT_S = 20
# Request ids are UUIDs; the id becomes a path segment, so nothing that a URL would reinterpret
# (`/`, `..`, `?`) may reach the client (the API's REQUEST_ID_PATTERN).
REQUEST_ID_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
UNDECIDED = frozenset({"pending_approval", "approved", "executing"})

INSTRUCTIONS = (
    "Gatehouse runs commands on databases, HTTP services, Kubernetes clusters and SSH hosts on your "
    "behalf, under the same policies as its HTTP API. Call list_connections first to see the "
    "connections you may use and their kinds. Each command is classified and decided by policy: it "
    "runs at once (status executed), is denied (status denied, with the reasons), or waits for a "
    "human approval (status pending_approval, with a request_id). To wait for an approval, call "
    f"get_request with that request_id and wait={MAX_WAIT_S}, again until the status is no longer "
    "pending_approval; do not resubmit the command. Results are masked before you see them: "
    "redacted values are not errors, and asking for them again will not reveal them."
)

_RESULT_NOTE = (
    "Results are masked by policy before they reach you (personal data, secrets and tokens are "
    "redacted or partially hidden). If the answer's status is pending_approval, a human must approve "
    f"first: call get_request with its request_id and wait={MAX_WAIT_S} until the status changes; "
    "do not resubmit. A denied command comes back as an error with the policy's reasons."
)


class _Arguments(BaseModel):
    # Unknown arguments are refused: a misspelt field would otherwise be dropped without a word.
    model_config = ConfigDict(extra="forbid", strict=True)


class _Submission(_Arguments):
    connection: str = Field(
        min_length=1,
        description="The connection's name, as list_connections shows it.",
    )
    reason: str = Field(
        default="",
        description="Why you run this, in a sentence. It is recorded and shown to the human approver.",
    )


class RunSqlArguments(_Submission):
    sql: str = Field(min_length=1, description="The SQL text to run (PostgreSQL dialect).")


class HttpRequestArguments(_Submission):
    http: HttpCommand = Field(description="The HTTP request to send.")


class KubernetesRequestArguments(_Submission):
    kubernetes: KubernetesCommand = Field(description="The Kubernetes API request to make.")


class SshCommandToolArguments(_Submission):
    ssh: SshCommand = Field(description="The command to run.")


class GetRequestArguments(_Arguments):
    request_id: str = Field(
        pattern=REQUEST_ID_PATTERN, description="The request_id a submitting tool returned."
    )
    wait: int = Field(
        default=0,
        ge=0,
        le=MAX_WAIT_S,
        description=(
            f"Seconds to wait (0 to {MAX_WAIT_S}) for a pending request to be decided and run before "
            "answering. Use the maximum while waiting for an approval."
        ),
    )


class NoArguments(_Arguments):
    pass


Forward = Callable[[GatehouseClient, Any], ApiAnswer]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    arguments: type[_Arguments]
    forward: Forward
    read_only: bool


def _submit(kind: str) -> Forward:
    def forward(client: GatehouseClient, args: Any) -> ApiAnswer:
        command = getattr(args, kind)
        value = command if isinstance(command, str) else command.model_dump(mode="json", exclude_none=True)
        return client.submit_command(args.connection, {kind: value}, args.reason)

    return forward


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "run_sql",
        "Run SQL",
        "Run one SQL text (one or more statements) on a Postgres connection through Gatehouse. "
        "Reads usually run at once and return columns and rows; writes, DDL and reads of protected "
        "columns may need a human approval or be denied, depending on the connection's policy. "
        + _RESULT_NOTE,
        RunSqlArguments,
        _submit("sql"),
        read_only=False,
    ),
    ToolSpec(
        "http_request",
        "Call an HTTP service",
        "Send one HTTP request to an HTTP connection's service through Gatehouse, which adds the "
        "credential and returns the status, headers and body. GET and HEAD are reads; other methods "
        "are writes and may need approval. " + _RESULT_NOTE,
        HttpRequestArguments,
        _submit("http"),
        read_only=False,
    ),
    ToolSpec(
        "kubernetes_request",
        "Call a Kubernetes API server",
        "Make one request to a Kubernetes connection's API server through Gatehouse. get, list, "
        "watch and logs are reads; create, update, patch, delete and scale are writes; exec, attach "
        "and port-forward are exec; anything on secrets is its own class, with values redacted. "
        "Writes, exec and secrets may need approval. " + _RESULT_NOTE,
        KubernetesRequestArguments,
        _submit("kubernetes"),
        read_only=False,
    ),
    ToolSpec(
        "ssh_command",
        "Run a command over SSH",
        "Run one shell command on an SSH connection's host through Gatehouse and return its exit "
        "status, stdout and stderr (size-capped). A short list of read-only commands are reads; "
        "anything else (pipes into writers, redirections, sh -c, unknown commands) may need "
        "approval or be denied. " + _RESULT_NOTE,
        SshCommandToolArguments,
        _submit("ssh"),
        read_only=False,
    ),
    ToolSpec(
        "get_request",
        "Get a request",
        "Read one of your requests by request_id: its status (pending_approval, approved, "
        "executing, executed, denied, expired, failed), the decision, and once it has run after "
        f"approval, its masked result. With wait (up to {MAX_WAIT_S} s) it blocks until the request "
        "is decided and run or the time is up; call it again while the status is still "
        "pending_approval.",
        GetRequestArguments,
        lambda client, args: client.get_request(args.request_id, wait=args.wait),
        read_only=True,
    ),
    ToolSpec(
        "list_connections",
        "List connections",
        "List the connections you may use: each with its name, kind (postgres, http, kubernetes, "
        "ssh) and attributes such as env. Call it first to learn the names the other tools take.",
        NoArguments,
        lambda client, _args: client.list_connections(),
        read_only=True,
    ),
)
TOOLS_BY_NAME = {spec.name: spec for spec in TOOLS}


def input_schema(arguments: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, self-contained: nested objects inlined, optional fields not nullable.

    Several MCP clients hand the schema to a model as is and do not resolve `$ref`; and `null` for an
    optional field only invites the model to send one. Leaving a field out is how to omit it.
    """
    schema = arguments.model_json_schema()
    defs = schema.pop("$defs", {})

    def simplify(node: Any) -> Any:
        if isinstance(node, list):
            return [simplify(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        options = node.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options and node.get("default", 0) is None:
            rest = [o for o in options if o != {"type": "null"}]
            node = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            node = {**(rest[0] if len(rest) == 1 else {"anyOf": rest}), **node}
        return {k: simplify(v) for k, v in node.items() if not (k == "default" and v is None)}

    return dict(simplify(schema))


def _tool(spec: ToolSpec) -> types.Tool:
    return types.Tool(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        input_schema=input_schema(spec.arguments),
        annotations=types.ToolAnnotations(
            read_only_hint=spec.read_only,
            # Writes are possible but never unreviewed: policy and approvals stand in front of them.
            destructive_hint=not spec.read_only,
            idempotent_hint=spec.read_only,
            open_world_hint=not spec.read_only,
        ),
    )


def tool_list() -> list[types.Tool]:
    return [_tool(spec) for spec in TOOLS]


def tool_definitions() -> list[dict[str, Any]]:
    """The tools as MCP lists them (name, title, description, inputSchema, annotations): the contract."""
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tool_list()]


def _how_to_wait(body: dict[str, Any]) -> str:
    status = body.get("status")
    why = "a human approver must decide first" if status == "pending_approval" else "it is about to run"
    return (
        f"Request {body.get('request_id')} is {status}: {why}. Call get_request with "
        f"request_id={body.get('request_id')!r} and wait={MAX_WAIT_S}, again until the status is "
        f"no longer {status}; do not submit the command again."
    )


def shape_result(answer: ApiAnswer) -> types.CallToolResult:
    """The API's answer as a tool result: its JSON (already masked by the API) as text and structure.

    A 4xx/5xx (a bad input, an unknown connection, a denial) is a tool error, so the model sees that
    its call did not do what it asked, with the API's stable error code and message.
    """
    body = dict(answer.body)
    content: list[types.ContentBlock] = []
    if answer.status_code >= 400:
        code = body.get("error") or body.get("status") or "error"
        message = body.get("message") or "; ".join(
            str(r) for r in ((body.get("decision") or {}).get("reasons") or [])
        )
        content.append(types.TextContent(text=f"Gatehouse answered {answer.status_code} {code}: {message}"))
    content.append(types.TextContent(text=safe_json(body, indent=2)))
    if body.get("status") in UNDECIDED and body.get("request_id"):
        content.append(types.TextContent(text=_how_to_wait(body)))
    return types.CallToolResult(content=content, structured_content=body, is_error=answer.status_code >= 400)


def _tool_error(code: str, message: str) -> types.CallToolResult:
    body = {"error": code, "message": message}
    return types.CallToolResult(
        content=[types.TextContent(text=f"{code}: {message}")], structured_content=body, is_error=True
    )


def _argument_problems(exc: ValidationError) -> str:
    # Without the input values: the model has them, and they would only lengthen the answer.
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(problems)


def call_tool(client: GatehouseClient, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
    """Validate a call's arguments, forward it to the API (blocking) and shape the answer."""
    spec = TOOLS_BY_NAME.get(name)
    if spec is None:
        # JSON-RPC "Invalid params": the MCP spec's answer to a call of a tool that does not exist.
        raise MCPError(
            types.INVALID_PARAMS, f"unknown tool {name!r}; the tools are: {', '.join(TOOLS_BY_NAME)}"
        )
    try:
        args = spec.arguments.model_validate(arguments or {})
    except ValidationError as exc:
        return _tool_error("bad_arguments", _argument_problems(exc))
    try:
        answer = spec.forward(client, args)
    except requests.RequestException as exc:
        # Its type is enough for the model; the text is the HTTP library's, meant for an operator.
        return _tool_error("gateway_unreachable", f"Gatehouse could not be reached: {type(exc).__name__}")
    return shape_result(answer)


def build_server(client: GatehouseClient) -> Server[Any]:
    """An MCP server whose every tool is a call of the agent API as `client`'s agent."""
    tools = tool_list()

    async def list_tools(
        _ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def on_call_tool(
        _ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        # The client is blocking (requests) and get_request may wait 20 s: off the event loop, so
        # one session's long poll does not stall another's (the HTTP transport serves many).
        return await anyio.to_thread.run_sync(call_tool, client, params.name, params.arguments)

    return Server(
        SERVER_NAME,
        version=__version__,
        title="Gatehouse",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=on_call_tool,
    )


async def serve_stdio(server: Server[Any]) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def serve_http(server: Server[Any], port: int) -> None:
    """Streamable HTTP on loopback only: the server holds an agent's credentials and asks for none."""
    import uvicorn

    host = "127.0.0.1"
    # On loopback the package turns on its DNS-rebinding protection (Host and Origin checks).
    app = server.streamable_http_app(host=host)
    print(f"gatehouse mcp: serving on http://{host}:{port}/mcp", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def run(client: GatehouseClient, *, http: bool = False, port: int = DEFAULT_HTTP_PORT) -> int:
    server = build_server(client)
    if http:
        serve_http(server, port)
    else:
        anyio.run(serve_stdio, server)
    return 0
