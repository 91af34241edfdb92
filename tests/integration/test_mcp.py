"""`gatehouse mcp` against the whole local stack, driven by the `mcp` package's own client.

The server runs as the command a user configures in an MCP host (`gatehouse mcp --as analyst`),
spawned over stdio, and once over streamable HTTP (`--http`). Everything it answers comes from the
signed agent API: the same policies, approvals, masking and session log as `gatehouse exec`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.to_thread
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from gatehouse.cli import main

GATEHOUSE = str(Path(sys.executable).parent / "gatehouse")
TOOLS_FILE = Path(__file__).parents[1] / "unit" / "data" / "mcp_tools.json"
PROD_READ = "SELECT id, name, email, card_number, ssn FROM customers ORDER BY id LIMIT 3"
EXIT_OK = 0


@pytest.fixture(scope="module")
def stack_dir(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The server reads .gatehouse/local.json from its working directory, as a user's shell would.
    workdir = tmp_path_factory.mktemp("mcp-workdir")
    (workdir / ".gatehouse").symlink_to(local_stack.stack.state_dir.resolve(), target_is_directory=True)
    return workdir


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[TextIO]:
    # The server's stderr, shown when a test fails: pytest's captured stderr has no file descriptor.
    path = tmp_path / "mcp-server.log"
    with path.open("w+") as log:
        yield log
        log.seek(0)
        sys.stderr.write(log.read())


def over_stdio(stack_dir: Path, log: TextIO, body: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    params = StdioServerParameters(command=GATEHOUSE, args=["mcp", "--as", "analyst"], cwd=stack_dir)

    async def session() -> Any:
        async with stdio_client(params, errlog=log) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            return await body(client)

    return anyio.run(session)


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


def answer_of(result: types.CallToolResult) -> dict[str, Any]:
    # The structured content is the API's JSON; the first text block says the same as text.
    structured = dict(result.structured_content)
    shown = [b.text for b in result.content if isinstance(b, types.TextContent) and b.text.startswith("{")]
    assert shown and json.loads(shown[0]) == structured
    return structured


def test_the_tools_listed_over_stdio_are_the_checked_in_ones_and_each_reaches_the_api(
    local_stack: Any, stack_dir: Path, server_log: TextIO
) -> None:
    async def body(client: ClientSession) -> dict[str, Any]:
        listed = await client.list_tools()
        calls = {
            "connections": await client.call_tool("list_connections", {}),
            "read": await client.call_tool(
                "run_sql", {"connection": "demo-prod", "sql": PROD_READ, "reason": "mcp test"}
            ),
            "ddl": await client.call_tool(
                "run_sql", {"connection": "demo-prod", "sql": "DROP TABLE customers"}
            ),
            "http": await client.call_tool(
                "http_request", {"connection": "demo-prod", "http": {"method": "GET", "path": "/customers/1"}}
            ),
            "kubernetes": await client.call_tool(
                "kubernetes_request",
                {"connection": "demo-prod", "kubernetes": {"verb": "list", "resource": "pods"}},
            ),
            "ssh": await client.call_tool(
                "ssh_command", {"connection": "demo-prod", "ssh": {"command": "id"}}
            ),
        }
        calls["lookup"] = await client.call_tool(
            "get_request", {"request_id": str(calls["read"].structured_content["request_id"])}
        )
        return {"tools": listed.tools, **calls}

    got = over_stdio(stack_dir, server_log, body)

    # The MCP host sees exactly the checked-in tool definitions, over the wire
    wire = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in got["tools"]]
    assert wire == json.loads(TOOLS_FILE.read_text())

    # list_connections is the API's list
    assert not got["connections"].is_error
    kinds = {c["name"]: c["kind"] for c in answer_of(got["connections"])["connections"]}
    assert kinds["demo-prod"] == "postgres" and kinds["demo-dev"] == "postgres"

    # A prod read runs at once and comes back masked: no real email, card number or ssn leaves
    assert not got["read"].is_error, text_of(got["read"])
    read = answer_of(got["read"])
    assert read["status"] == "executed" and read["row_count"] == 3
    assert [row[0] for row in read["rows"]] == [1, 2, 3]
    db = local_stack.db("demo-prod")
    real = db.run("SELECT email, card_number, ssn FROM customers ORDER BY id LIMIT 3")
    db.close()
    for value in (v for row in real for v in row):
        assert value not in text_of(got["read"])
    assert {m["column"] for m in read["masked"]} >= {"name", "email", "card_number", "ssn"}

    # The request is on record in the API, as the agent that the server acts for
    lookup = answer_of(got["lookup"])
    assert lookup["request_id"] == read["request_id"] and lookup["sql"] == PROD_READ
    assert lookup["status"] == "executed"

    # A denial is a tool error carrying the policy's decision
    assert got["ddl"].is_error
    denied = answer_of(got["ddl"])
    assert denied["status"] == "denied" and denied["decision"]["policy_ids"] == ["prod-no-ddl-or-privilege"]
    assert text_of(got["ddl"]).startswith("Gatehouse answered 403 denied")

    # http, kubernetes and ssh commands reach the API, which refuses them on a Postgres connection
    # (a command that does not match the connection's kind is a 400): its code and message come back
    for kind in ("http", "kubernetes", "ssh"):
        result = got[kind]
        assert result.is_error, kind
        error = answer_of(result)
        assert error["error"] in ("kind_mismatch", "bad_request") and error["message"], (kind, error)
        assert text_of(result).startswith(f"Gatehouse answered 400 {error['error']}: {error['message']}")


def test_http_kubernetes_and_ssh_tools_run_on_the_demo_targets_masked_as_the_api_masks(
    local_stack: Any, stack_dir: Path, server_log: TextIO
) -> None:
    async def body(client: ClientSession) -> dict[str, types.CallToolResult]:
        return {
            "http": await client.call_tool(
                "http_request",
                {"connection": "demo-http", "http": {"method": "GET", "path": "/customers/1"}, "reason": "t"},
            ),
            "kubernetes": await client.call_tool(
                "kubernetes_request",
                {"connection": "demo-k8s", "kubernetes": {"verb": "list", "resource": "pods"}},
            ),
            "ssh": await client.call_tool(
                "ssh_command", {"connection": "demo-ssh", "ssh": {"command": "uname -s"}}
            ),
        }

    got = over_stdio(stack_dir, server_log, body)
    for kind, result in got.items():
        assert not result.is_error, (kind, text_of(result))
        assert answer_of(result)["status"] == "executed", kind

    # The customer comes back with the demo service's answer, its personal data masked
    customer = answer_of(got["http"])["result"]["body"]
    assert customer["id"] == 1
    db = local_stack.db("demo-prod")
    real = db.run("SELECT email, card_number, ssn FROM customers WHERE id = 1")[0]
    db.close()
    assert not any(value in text_of(got["http"]) for value in real)

    pods = answer_of(got["kubernetes"])["result"]["object"]["items"]
    assert {pod["metadata"]["name"] for pod in pods} == {"web-1", "web-2"}
    assert answer_of(got["ssh"])["result"]["stdout"] == "Linux\n"


def test_a_prod_write_over_mcp_waits_for_alice_then_get_request_returns_it_executed(
    local_stack: Any, stack_dir: Path, server_log: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    note = f"approved over mcp {time.time_ns()}"
    sql = f"UPDATE customers SET notes = '{note}' WHERE id = 8"
    monkeypatch.chdir(stack_dir)  # `gatehouse approve` reads .gatehouse/local.json from here

    async def body(client: ClientSession) -> dict[str, Any]:
        submitted = await client.call_tool(
            "run_sql", {"connection": "demo-prod", "sql": sql, "reason": "fix"}
        )
        request_id = str(submitted.structured_content["request_id"])
        before = await client.call_tool("get_request", {"request_id": request_id, "wait": 1})
        code = await anyio.to_thread.run_sync(main, ["approve", request_id, "--as", "U_ALICE"])
        waited = [await client.call_tool("get_request", {"request_id": request_id, "wait": 20})]
        while waited[-1].structured_content.get("status") in ("approved", "executing") and len(waited) < 3:
            waited.append(await client.call_tool("get_request", {"request_id": request_id, "wait": 20}))
        return {"submitted": submitted, "before": before, "approve_exit": code, "waited": waited}

    got = over_stdio(stack_dir, server_log, body)

    # The write is not run: the agent is given the request id, the dry run's preview and how to wait
    submitted = got["submitted"]
    assert not submitted.is_error, text_of(submitted)
    pending = answer_of(submitted)
    assert pending["status"] == "pending_approval"
    assert pending["preview"]["statements"][0]["affected_rows"] == 1
    how = submitted.content[-1]
    assert isinstance(how, types.TextContent)
    assert f"get_request with request_id={pending['request_id']!r} and wait=20" in how.text
    assert answer_of(got["before"])["status"] == "pending_approval"

    # Once U_ALICE approves, get_request with wait returns it executed, and the row changed
    assert got["approve_exit"] == EXIT_OK
    final = got["waited"][-1]
    assert not final.is_error, text_of(final)
    record = answer_of(final)
    assert record["status"] == "executed" and record["decided_by"] == "alice"
    assert record["result"]["row_count"] == 1
    db = local_stack.db("demo-prod")
    assert db.run("SELECT notes FROM customers WHERE id = 8")[0][0] == note
    db.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server(stack_dir: Path, server_log: TextIO) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [GATEHOUSE, "mcp", "--as", "analyst", "--http", "--port", str(port)],
        cwd=stack_dir,
        stdin=subprocess.DEVNULL,
        stdout=server_log,
        stderr=server_log,
    )
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        assert proc.poll() is None, "gatehouse mcp --http exited"
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_streamable_http_session_lists_the_tools_and_runs_a_masked_read(
    local_stack: Any, http_server: str
) -> None:
    async def session() -> tuple[list[str], types.CallToolResult]:
        async with streamable_http_client(http_server) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            names = [t.name for t in (await client.list_tools()).tools]
            result = await client.call_tool("run_sql", {"connection": "demo-prod", "sql": PROD_READ})
            return names, result

    names, result = anyio.run(session)
    assert names == [t["name"] for t in json.loads(TOOLS_FILE.read_text())]
    assert not result.is_error, text_of(result)
    body = answer_of(result)
    assert body["status"] == "executed" and body["row_count"] == 3
    db = local_stack.db("demo-prod")
    emails = [row[0] for row in db.run("SELECT email FROM customers ORDER BY id LIMIT 3")]
    db.close()
    assert not any(email in text_of(result) for email in emails)
