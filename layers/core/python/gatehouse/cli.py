"""The `gatehouse` command."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Sequence
from typing import Any

from gatehouse.client import ApiAnswer, ClientConfigError, GatehouseClient
from gatehouse.terminal import safe_json, safe_text

EXIT_OK, EXIT_ERROR, EXIT_DENIED, EXIT_PENDING = 0, 1, 2, 3


def _client(args: argparse.Namespace) -> GatehouseClient:
    if args.as_agent:
        return GatehouseClient.from_local(args.as_agent)
    return GatehouseClient.from_env()


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 40) -> str:
    # Values and column names come from the database: their control characters are shown, not run.
    def cell(v: Any) -> str:
        text = "NULL" if v is None else safe_text(v)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    columns = [safe_text(c) for c in columns]
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    sep = "-+-".join("-" * w for w in widths)
    body = [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, sep, *body])


def describe(answer: ApiAnswer) -> str:
    """A human-readable rendering of an API answer, every line of it safe for a terminal."""
    return "\n".join(safe_text(line) for line in _describe_lines(answer))


def _describe_lines(answer: ApiAnswer) -> list[str]:
    b = answer.body
    if "error" in b:
        return [f"error {answer.status_code} {b['error']}: {b.get('message', '')}"]
    decision = b.get("decision") or {}
    if not isinstance(decision, dict):  # a request record: the effect, and its policies beside it
        decision = {"effect": decision, "policy_ids": b.get("policy_ids") or []}
    if isinstance(b.get("result"), dict):  # a record of a command run after approval
        b = {**b, **b["result"]}
    policies = ", ".join(decision.get("policy_ids") or []) or "none"
    head = (
        f"request {b.get('request_id')}: {b.get('status')} "
        f"(class {b.get('statement_class')}, decision {decision.get('effect')}, policies {policies})"
    )
    lines = [head]
    if b.get("status") == "denied" and decision.get("reasons"):
        lines.append("  reason: " + "; ".join(decision["reasons"]))
    if b.get("status") == "pending_approval" and decision.get("approval"):
        appr = decision["approval"]
        groups = ", ".join(appr.get("groups") or [appr.get("group")])
        lines.append(f"  waiting for {appr.get('quorum', 1)} approval(s) from each of: {groups}")
        if b.get("expires_at"):
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(b["expires_at"])))
            lines.append(f"  expires at {when}")
        for stmt in (b.get("preview") or {}).get("statements") or ():
            lines.append("  preview: " + _preview_line(stmt))
        if (b.get("preview") or {}).get("fallback"):
            lines.append(f"  (dry run not possible: {b['preview']['fallback']})")
    if b.get("status") in ("denied", "expired", "drifted", "failed") and (
        b.get("error") or b.get("decided_reason")
    ):
        who = f" by {b['decided_by']}" if b.get("decided_by") else ""
        lines.append(f"  {b.get('status')}{who}: {b.get('decided_reason') or b.get('error')}")
    if b.get("columns"):
        lines.extend(format_table(b["columns"], b.get("rows") or []).split("\n"))
    if "row_count" in b and b.get("status") == "executed":
        limit = {"byte_limit": "the byte budget"}.get(str(b.get("truncated_reason")), "the row limit")
        more = f" (truncated at {limit})" if b.get("truncated") else ""
        lines.append(f"({b['row_count']} rows, {b.get('duration_ms')} ms){more}")
    if b.get("masked"):
        masked = ", ".join(f"{m['column']} by {m['rule']} ({m['strategy']})" for m in b["masked"])
        lines.append(f"masked: {masked}")
    return lines


UNDECIDED = frozenset({"pending_approval", "approved", "executing"})


def _preview_line(stmt: dict[str, Any]) -> str:
    if stmt.get("error"):
        return f"{stmt.get('text', '')[:60]}: {stmt['error']}"
    if stmt.get("affected_rows") is not None:
        return f"dry run: {stmt['affected_rows']} rows would change ({stmt.get('text', '')[:60]})"
    if stmt.get("estimated_rows") is None:
        return str(stmt.get("plan") or "no estimate")[:100]
    return f"about {stmt['estimated_rows']} rows by the planner's estimate ({str(stmt.get('plan', ''))[:60]})"


def _exit_code(answer: ApiAnswer) -> int:
    if answer.status_code >= 400 and answer.body.get("status") != "denied":
        return EXIT_ERROR
    status = str(answer.body.get("status"))
    if status in ("expired", "drifted", "failed"):
        return EXIT_ERROR
    return {"denied": EXIT_DENIED, "pending_approval": EXIT_PENDING, "approved": EXIT_PENDING}.get(
        status, EXIT_PENDING if status == "executing" else EXIT_OK
    )


def cmd_exec(args: argparse.Namespace) -> int:
    client = _client(args)
    answer = client.submit(args.connection, args.sql, args.reason or "")
    deadline = time.monotonic() + (args.wait or 0)
    while answer.body.get("status") in UNDECIDED and time.monotonic() < deadline:
        remaining = max(1, min(20, int(deadline - time.monotonic())))
        polled = client.get_request(answer.body["request_id"], wait=remaining)
        if polled.body.get("status") not in UNDECIDED:
            # The record of a request run after approval holds its masked result: show it as
            # the POST would have.
            body = {**polled.body, **(polled.body.get("result") or {})}
            answer = ApiAnswer(polled.status_code, body)
            break
        time.sleep(0.2)
    print(safe_json(answer.body, indent=2) if args.json else describe(answer))
    return _exit_code(answer)


def cmd_requests_get(args: argparse.Namespace) -> int:
    answer = _client(args).get_request(args.request_id)
    print(safe_json(answer.body, indent=2) if args.json else describe(answer))
    return EXIT_OK if answer.ok else EXIT_ERROR


def cmd_requests_list(args: argparse.Namespace) -> int:
    answer = _client(args).list_requests(pending=args.pending)
    if args.json or not answer.ok:
        print(safe_json(answer.body, indent=2) if args.json else describe(answer))
        return EXIT_OK if answer.ok else EXIT_ERROR
    listed = answer.body.get("requests") or []
    if not listed:
        print("no pending requests" if args.pending else "no requests")
        return EXIT_OK
    rows = [
        [
            r.get("request_id"),
            r.get("status"),
            r.get("connection"),
            r.get("statement_class"),
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(r.get("created_at") or 0))),
            " ".join(str(r.get("sql") or "").split()),
        ]
        for r in listed
    ]
    print(format_table(["request", "status", "connection", "class", "created (UTC)", "sql"], rows))
    return EXIT_OK


def cmd_connections(args: argparse.Namespace) -> int:
    answer = _client(args).list_connections()
    if args.json or not answer.ok:
        print(safe_json(answer.body, indent=2))
        return EXIT_OK if answer.ok else EXIT_ERROR
    for conn in answer.body.get("connections", []):
        actions = ", ".join(f"{k}={v}" for k, v in (conn.get("actions") or {}).items())
        line = f"{conn['name']} ({conn['kind']}) {safe_json(conn.get('attributes', {}))} {actions}"
        print(safe_text(line))
    return EXIT_OK


PROXY_TOKEN_KEYS = ("host", "port", "username", "password", "database", "expires_at")


def cmd_proxy_token(args: argparse.Namespace) -> int:
    answer = _client(args).proxy_token(args.connection, args.ttl)
    if not answer.ok:
        print(safe_json(answer.body, indent=2) if args.json else describe(answer))
        return EXIT_ERROR
    body = answer.body
    if args.json:
        print(safe_json({**{k: body.get(k) for k in PROXY_TOKEN_KEYS}, **body}, indent=2))
        return EXIT_OK
    for key in PROXY_TOKEN_KEYS:
        value = body.get(key)
        if key == "expires_at" and value is not None:
            value = f"{value} ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(int(value)))})"
        print(safe_text(f"{key}: {'null' if value is None else value}"))
    if body.get("host") is None:
        print(safe_text(str(body.get("message") or "the Postgres proxy is not running")))
    else:
        # The password stays out of the command line shown: ps and shell history would keep it.
        conninfo = f"host={body['host']} port={body['port']} dbname={body['database']}"
        print(safe_text(f'PGPASSWORD=<password> psql "{conninfo}" -U {body["username"]}'))
    return EXIT_OK


def cmd_proxy_serve(_args: argparse.Namespace) -> int:
    from gatehouse.proxy.postgres.app import main as serve

    return serve()


def cmd_mcp(args: argparse.Namespace) -> int:
    # Imported here: the MCP package (starlette, uvicorn) is only needed by this command.
    from gatehouse.mcp_server import run

    return run(_client(args), http=args.http, port=args.port)


def _agent_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--as",
        dest="as_agent",
        metavar="AGENT",
        help="act as this agent of the local stack (.gatehouse/local.json)",
    )


def build_parser() -> argparse.ArgumentParser:
    from gatehouse.admin.cli import register as register_admin
    from gatehouse.audit.cli import register as register_audit
    from gatehouse.targets.privileges_cli import register as register_connections_check

    parser = argparse.ArgumentParser(
        prog="gatehouse", description="Gatehouse: an access gateway for AI agents"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("exec", help="run a command through Gatehouse")
    p.add_argument("--connection", required=True)
    p.add_argument("--sql", required=True)
    p.add_argument("--reason", default="")
    p.add_argument(
        "--wait",
        type=int,
        default=0,
        metavar="SECONDS",
        help="wait this long for an approval before returning",
    )
    p.add_argument("--json", action="store_true")
    _agent_option(p)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("requests", help="read back requests")
    rsub = p.add_subparsers(dest="requests_command", required=True)
    g = rsub.add_parser("get", help="a request's record")
    g.add_argument("request_id")
    g.add_argument("--json", action="store_true")
    _agent_option(g)
    g.set_defaults(func=cmd_requests_get)
    g = rsub.add_parser("list", help="your requests, newest first")
    g.add_argument("--pending", action="store_true", help="only those waiting for approval")
    g.add_argument("--json", action="store_true")
    _agent_option(g)
    g.set_defaults(func=cmd_requests_list)

    p = sub.add_parser("connections", help="connections you may use (`check NAME`: least privilege)")
    p.add_argument("--json", action="store_true")
    _agent_option(p)
    p.set_defaults(func=cmd_connections)
    register_connections_check(p)

    p = sub.add_parser("admin", help="register connections, agents and approvers (the deployed registry)")
    register_admin(p)

    p = sub.add_parser("proxy-token", help="a short-lived password for the Postgres proxy")
    p.add_argument("--connection", required=True)
    p.add_argument(
        "--ttl", type=int, default=None, metavar="SECONDS", help="lifetime, 60 to 43200 (default 900)"
    )
    p.add_argument("--json", action="store_true")
    _agent_option(p)
    p.set_defaults(func=cmd_proxy_token)

    p = sub.add_parser("proxy", help="the Postgres wire-protocol proxy")
    psub = p.add_subparsers(dest="proxy_command", required=True)
    g = psub.add_parser("serve", help="serve until SIGTERM (configured by GATEHOUSE_* variables)")
    g.set_defaults(func=cmd_proxy_serve)

    p = sub.add_parser("mcp", help="serve the agent API as MCP tools (stdio, or streamable HTTP)")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP on 127.0.0.1 instead of stdio")
    p.add_argument("--port", type=int, default=8790, help="the --http port (default 8790)")
    _agent_option(p)
    p.set_defaults(func=cmd_mcp)

    # The local stack needs the `local` extra (moto); the proxy image installs the runtime
    # dependencies only and must still run `gatehouse proxy serve`.
    if importlib.util.find_spec("moto") is not None:
        from gatehouse.local.approve import register as register_approve
        from gatehouse.local.cli import register as register_local

        register_local(sub)
        register_approve(sub)
    register_audit(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClientConfigError as exc:
        print(f"gatehouse: {safe_text(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
