"""The MCP server's tool list is a contract; its argument checks answer before the API is asked.

The server is driven by the `mcp` package's own client, in process. Its API client points at a
closed loopback port: a call that got past the argument check would come back `gateway_unreachable`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from requests_aws4auth import AWS4Auth

from gatehouse.cli import main
from gatehouse.client import GatehouseClient
from gatehouse.mcp_server import build_server

TOOLS_FILE = Path(__file__).parent / "data" / "mcp_tools.json"
REGENERATE = (
    ".venv/bin/python -c 'import json; from gatehouse.mcp_server import tool_definitions; "
    "print(json.dumps(tool_definitions(), indent=2, ensure_ascii=False))' > tests/unit/data/mcp_tools.json"
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_session(body: Callable[[Client], Awaitable[Any]]) -> Any:
    api = GatehouseClient(
        f"http://127.0.0.1:{closed_port()}",
        AWS4Auth("AKIATESTNOTUSED0", "unused", "us-east-1", "execute-api"),
    )

    async def main() -> Any:
        async with Client(build_server(api)) as client:
            return await body(client)

    return anyio.run(main)


def call(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    async def body(client: Client) -> types.CallToolResult:
        return await client.call_tool(name, arguments)

    result = with_session(body)
    assert isinstance(result, types.CallToolResult)
    return result


def test_the_listed_tools_are_exactly_the_checked_in_definitions() -> None:
    async def body(client: Client) -> list[dict[str, Any]]:
        listed = await client.list_tools()
        return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed.tools]

    listed = with_session(body)
    expected = json.loads(TOOLS_FILE.read_text())
    # A difference is a change every configured agent sees: write it in the release notes, then
    # regenerate the file with the command below.
    assert listed == expected, f"the MCP tool definitions changed; if on purpose: {REGENERATE}"
    assert [t["name"] for t in listed] == [
        "run_sql",
        "http_request",
        "kubernetes_request",
        "ssh_command",
        "get_request",
        "list_connections",
    ]


def test_every_tool_says_results_are_masked_or_how_to_wait_and_refuses_unknown_arguments() -> None:
    for tool in json.loads(TOOLS_FILE.read_text()):
        schema = tool["inputSchema"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False, tool["name"]
        assert "$ref" not in json.dumps(schema), f"{tool['name']}: clients that do not resolve $ref"
        if tool["name"] not in ("get_request", "list_connections"):
            assert "masked" in tool["description"] and "get_request" in tool["description"]
    get_request = next(t for t in json.loads(TOOLS_FILE.read_text()) if t["name"] == "get_request")
    assert get_request["inputSchema"]["properties"]["wait"]["maximum"] == 20


@pytest.mark.parametrize(
    ("name", "arguments", "problem"),
    [
        ("run_sql", {"connection": "demo-dev"}, "sql: Field required"),
        ("run_sql", {"connection": "demo-dev", "sql": "SELECT 1", "sqll": "x"}, "sqll: Extra inputs"),
        ("run_sql", {"connection": "", "sql": "SELECT 1"}, "connection: String should have at least 1"),
        ("run_sql", {"connection": "demo-dev", "sql": 42}, "sql: Input should be a valid string"),
        ("http_request", {"connection": "demo-http", "http": {"path": "/x"}}, "http.method: Field required"),
        ("http_request", {"connection": "demo-http", "http": "GET /x"}, "http: Input should be"),
        ("kubernetes_request", {"connection": "k", "kubernetes": {"verb": "get"}}, "kubernetes.resource"),
        (
            "ssh_command",
            {"connection": "demo-ssh", "ssh": {"command": ["ls"]}},
            "ssh.command: Input should be",
        ),
        ("http_request", {"connection": "h", "http": {"method": "GET", "path": "/", "url": "x"}}, "http.url"),
        ("ssh_command", {"connection": "demo-ssh", "command": "ls"}, "ssh: Field required"),
        # The id becomes a path segment: nothing that could point the call at another route.
        ("get_request", {"request_id": "../connections"}, "request_id: String should match pattern"),
        ("get_request", {"request_id": "abc?wait=1"}, "request_id: String should match pattern"),
        ("get_request", {"request_id": "abc", "wait": 21}, "wait: Input should be less than or equal to 20"),
        ("get_request", {"request_id": "abc", "wait": -1}, "wait: Input should be greater than or equal"),
        ("list_connections", {"all": True}, "all: Extra inputs are not permitted"),
    ],
)
def test_malformed_arguments_are_a_tool_error_before_the_api_is_called(
    name: str, arguments: dict[str, Any], problem: str
) -> None:
    result = call(name, arguments)
    assert result.is_error
    assert result.structured_content["error"] == "bad_arguments"
    assert problem in result.structured_content["message"]
    text = result.content[0]
    assert isinstance(text, types.TextContent) and problem in text.text


def test_an_unreachable_gateway_is_a_tool_error_that_names_no_credential() -> None:
    result = call("list_connections", {})
    assert result.is_error
    assert result.structured_content == {
        "error": "gateway_unreachable",
        "message": "Gatehouse could not be reached: ConnectionError",
    }
    assert "AKIATESTNOTUSED0" not in json.dumps(result.model_dump(mode="json"))


def test_an_unknown_tool_is_a_protocol_error_naming_the_tools() -> None:
    async def body(client: Client) -> MCPError:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("drop_database", {})
        return raised.value

    error = with_session(body)
    assert error.code == -32602  # JSON-RPC invalid params, the spec's answer for an unknown tool
    assert "unknown tool 'drop_database'" in error.message
    assert "run_sql" in error.message


def test_gatehouse_mcp_without_a_local_stack_says_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["mcp", "--as", "analyst"]) == 1
    assert "gatehouse local up" in capsys.readouterr().err
