"""`make demo`: bring up the local stack, play the scenario as the agent `analyst`, print a
readable transcript, tear everything down.

Every step checks what it shows: the demo exits non-zero if Gatehouse does not behave as the
transcript says, so it doubles as a smoke test a new user can read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import boto3
import requests
from botocore.exceptions import ClientError
from requests_aws4auth import AWS4Auth

from gatehouse import cli
from gatehouse.audit.events import parse_events, serialize_many
from gatehouse.audit.verify import verify_log
from gatehouse.local.stack import LocalStack
from gatehouse.terminal import safe_json, safe_text

WIDTH = 100
# Debian's psql; the PostgreSQL server binaries the stack needs come with it.
PSQL = "/usr/bin/psql"
PSQL_TIMEOUT_S = 60.0
# A login takes tens of milliseconds here; a stuck one fails the demo with libpq's own message.
PSQL_CONNECT_TIMEOUT_S = 10
REQUEST_ID = re.compile(r"request ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


class DemoError(RuntimeError):
    """Gatehouse did not do what the transcript says it does."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(number: int, title: str) -> None:
    say()
    say(f"== {number}. {title} " + "=" * max(0, WIDTH - len(title) - 8))


def run_cli(argv: Sequence[str], expect: int = 0, *, echo: bool = True) -> str:
    """Run `gatehouse ...` in-process and echo it as a user would see it in a terminal."""
    say("$ gatehouse " + " ".join(shlex.quote(a) for a in argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    text = out.getvalue().rstrip()
    if echo:
        say(textwrap.indent(text, "  ") if text else "  (no output)")
    if code != expect:
        raise DemoError(f"`gatehouse {argv[0]}` exited {code}, expected {expect}")
    return text


def agent_exec(sql: str, *, connection: str = "demo-prod", reason: str = "", expect: int = 0) -> str:
    """`gatehouse exec` as the demo agent."""
    argv = ["exec", "--as", "analyst", "--connection", connection]
    if reason:
        argv += ["--reason", reason]
    return run_cli([*argv, "--sql", sql], expect=expect)


def request_id_of(text: str) -> str:
    first = text.splitlines()[0]
    return first.split()[1].rstrip(":")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoError(what)
    say(f"  ok: {what}")


def wait_for(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.2)


@dataclass(frozen=True)
class ProxyLogin:
    """What `gatehouse proxy-token` hands the agent: where the proxy is and a short-lived password."""

    host: str
    port: int
    username: str
    database: str
    password: str

    @property
    def conninfo(self) -> str:
        # The local proxy's certificate is a throwaway: `require` encrypts without verifying it
        # (against a deployed proxy, use verify-full with its CA as sslrootcert).
        return (
            f"host={self.host} port={self.port} dbname={self.database} user={self.username} sslmode=require"
        )


def proxy_login(connection: str = "demo-prod") -> ProxyLogin:
    """`gatehouse proxy-token --json` as the agent; the transcript shows it with the password held back."""
    text = run_cli(["proxy-token", "--as", "analyst", "--connection", connection, "--json"], echo=False)
    body = json.loads(text)
    if not body.get("host") or not body.get("password"):
        raise DemoError(
            f"no proxy login for {connection}: {body.get('message') or 'the proxy is not running'}"
        )
    shown = {key: body.get(key) for key in cli.PROXY_TOKEN_KEYS}
    shown["password"] = "<held back>"  # noqa: S105 (a placeholder: transcripts get pasted and kept)
    say("  " + safe_json(shown))
    return ProxyLogin(
        host=str(body["host"]),
        port=int(body["port"]),
        username=str(body["username"]),
        database=str(body["database"]),
        password=str(body["password"]),
    )


def psql_binary() -> str:
    found = PSQL if os.access(PSQL, os.X_OK) else shutil.which("psql")
    if found is None:
        raise DemoError(f"psql is not installed (looked for {PSQL} and on PATH)")
    return found


def shown_sql(sql: str) -> str:
    """SQL as a user would type it in a shell: double quotes read better around SQL's single quotes."""
    if "'" in sql and not any(c in sql for c in '"$`\\!'):
        return f'"{sql}"'
    return shlex.quote(sql)


def run_psql(login: ProxyLogin, sql: str, *, expect: int = 0) -> str:
    """`psql -c SQL` through the proxy, echoed with its output as a user would see it."""
    say(f'$ PGPASSWORD=<password> psql -X "{login.conninfo}" -c {shown_sql(sql)}')
    # The password goes in the environment, never on the command line, where `ps` would show it.
    # The user's own PG* settings (PGHOST, PGSERVICE, PGOPTIONS...) must not redirect the demo.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(PGPASSWORD=login.password, PGCONNECT_TIMEOUT=str(PSQL_CONNECT_TIMEOUT_S))
    try:
        proc = subprocess.run(
            [psql_binary(), "-X", "-v", "VERBOSITY=verbose", login.conninfo, "-c", sql],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PSQL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"psql did not finish in {PSQL_TIMEOUT_S:.0f} s") from exc
    # Result values and error texts come from the proxy: shown escaped, never run by the terminal.
    lines = [line.rstrip() for part in (proc.stdout, proc.stderr) for line in part.splitlines()]
    text = "\n".join(lines).strip("\n")
    say(textwrap.indent(safe_text(text, multiline=True), "  ") if text else "  (no output)")
    if proc.returncode != expect:
        raise DemoError(f"psql exited {proc.returncode}, expected {expect}")
    return text


def request_id_in(text: str) -> str:
    found = REQUEST_ID.search(text)
    if found is None:
        raise DemoError("the proxy's answer names no approval request")
    return found.group(1)


def wait_for_record(state: dict[str, Any], request_id: str, status: str, timeout_s: float = 20.0) -> None:
    client = agent_client(state)
    wait_for(
        lambda: client.get_request(request_id).body.get("status") == status,
        f"{request_id} {status}",
        timeout_s,
    )


def agent_client(state: dict[str, Any]) -> Any:
    from gatehouse.client import GatehouseClient

    keys = state["agents"]["analyst"]
    auth = AWS4Auth(keys["access_key_id"], keys["secret_access_key"], state["region"], "execute-api")
    return GatehouseClient(state["api"], auth)


def wait_for_status(state: dict[str, Any], request_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """The agent's long-poll: GET /v1/requests/{id}?wait=20 until the request is decided."""
    client = agent_client(state)
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get_request(request_id, wait=20).body
        if body.get("status") not in cli.UNDECIDED or time.monotonic() > deadline:
            return body


def slack_message_for(state: dict[str, Any], request_id: str) -> str | None:
    """The approval message as the Slack stand-in holds it, as plain text."""
    try:
        messages = requests.get(state["slack_api"].rstrip("/") + "/_standin/messages", timeout=5).json()
    except (requests.RequestException, ValueError):
        return None
    for message in messages if isinstance(messages, list) else messages.get("messages", []):
        text = json.dumps(message.get("blocks") or [])
        if request_id in text:
            return message.get("text") or text
    return None


def superuser_query(stack: LocalStack, database: str, sql: str) -> Any:
    """One value, read directly from the demo's Postgres: what really changed."""
    assert stack.postgres is not None
    con = stack.postgres.connect(database)
    try:
        return con.run(sql)[0][0]
    finally:
        con.close()


def play(state: dict[str, Any], stack: LocalStack) -> None:
    api, region = state["api"], state["region"]
    s3 = boto3.client(
        "s3",
        endpoint_url=state["aws"],
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 (moto accepts any key)
    )
    bucket = state["bucket"]

    step(1, "What may the agent `analyst` do?")
    run_cli(["connections", "--as", "analyst"])

    step(2, "A read on prod: allowed, and masked before it leaves")
    out = agent_exec(
        "SELECT id, name, email, phone, card_number, ssn, notes FROM customers ORDER BY id LIMIT 5",
        reason="churn analysis",
    )
    read_id = request_id_of(out)
    check("[REDACTED]" in out and "hash:" in out, "SSNs redacted, names and emails are keyed-hash tokens")

    step(3, "Requests that are not signed by a known identity never reach Gatehouse")
    body = json.dumps({"connection": "demo-prod", "sql": "SELECT * FROM customers"})
    unsigned = requests.post(f"{api}/v1/requests", data=body, timeout=10)
    say(f"$ curl -X POST {api}/v1/requests  (no signature)")
    say(f"  {unsigned.status_code} {unsigned.text}")
    keys = state["agents"]["analyst"]
    forged = requests.post(
        f"{api}/v1/requests",
        data=body,
        timeout=10,
        auth=AWS4Auth(keys["access_key_id"], "not-the-secret", region, "execute-api"),
    )
    say("$ curl ... signed with the right access key id and a wrong secret")
    say(f"  {forged.status_code} {forged.text}")
    check(unsigned.status_code in (401, 403) and forged.status_code == 403, "both refused by the gateway")

    step(4, "A write on prod waits for a dba's approval, with what it would do")
    out = agent_exec(
        "UPDATE customers SET notes = 'Do not call' WHERE id = 2",
        reason="customer asked",
        expect=cli.EXIT_PENDING,
    )
    pending_id = request_id_of(out)
    check("dry run: 1 rows would change" in out, "the preview: a dry run, rolled back, changed 1 row")
    say("  The approvers' Slack message (here: the local Slack stand-in, also shown by the console):")
    wait_for(lambda: slack_message_for(state, pending_id) is not None, "the approval message to be posted")
    say(textwrap.indent(slack_message_for(state, pending_id) or "", "    | "))

    step(5, "The agent's owner may not approve; another dba does, and the agent gets its result")
    run_cli(["approve", pending_id, "--as", "U_BOB"], expect=2)
    run_cli(["approve", pending_id, "--as", "U_ALICE"])
    record = wait_for_status(state, pending_id)
    check(record.get("status") == "executed", "the exact approved command ran, once")
    run_cli(["requests", "get", pending_id, "--as", "analyst"])
    db_note = superuser_query(stack, "demo-prod", "SELECT notes FROM customers WHERE id = 2")
    check(db_note == "Do not call", "the database holds the approved change")

    step(6, "A denial carries its reason")
    out = agent_exec(
        "DELETE FROM orders WHERE status = 'cancelled'", reason="cleanup", expect=cli.EXIT_PENDING
    )
    denied_id = request_id_of(out)
    wait_for(lambda: slack_message_for(state, denied_id) is not None, "the approval message to be posted")
    run_cli(["approve", denied_id, "--as", "U_ALICE", "--deny", "--reason", "not during the month-end close"])
    record = wait_for_status(state, denied_id)
    check(record.get("status") == "denied", "denied, with the approver's reason on record")
    run_cli(["requests", "get", denied_id, "--as", "analyst"])

    step(7, "Nobody answers: the request expires (dev DDL waits 15 s in the demo policy)")
    out = agent_exec(
        "ALTER TABLE orders ADD COLUMN gift_wrap boolean", connection="demo-dev", expect=cli.EXIT_PENDING
    )
    expiring_id = request_id_of(out)
    record = wait_for_status(state, expiring_id, timeout_s=60)
    check(record.get("status") == "expired", "expired: the state machine's timeout fired")

    step(8, "Writes hidden inside reads are seen for what they are")
    agent_exec(
        "WITH gone AS (DELETE FROM customers RETURNING id) SELECT count(*) FROM gone", expect=cli.EXIT_PENDING
    )
    agent_exec("SELECT 1; DROP TABLE customers", expect=cli.EXIT_DENIED)

    step(9, "DDL and privilege changes on prod are forbidden")
    agent_exec("ALTER TABLE customers ADD COLUMN exported boolean", expect=cli.EXIT_DENIED)
    agent_exec("GRANT SELECT ON customers TO PUBLIC", expect=cli.EXIT_DENIED)

    psql_steps(state, stack)
    target_steps(state, stack)

    step(14, "Every step is in S3, under Object Lock in COMPLIANCE mode")
    keys_ = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="events/")
        for o in page.get("Contents", [])
    ]
    mine = sorted(k for k in keys_ if f"session={read_id}/" in k)
    say(f"  {len(keys_)} event objects in s3://{bucket}/events/; the prod read's session:")
    for key in mine:
        head = s3.head_object(Bucket=bucket, Key=key)
        say(f"    {key}  {head['ObjectLockMode']} until {head['ObjectLockRetainUntilDate']:%Y-%m-%d %H:%M}")
    head = s3.head_object(Bucket=bucket, Key=mine[0])
    try:
        s3.delete_object(Bucket=bucket, Key=mine[0], VersionId=head["VersionId"])
        raise DemoError("a locked event version could be deleted")
    except ClientError as exc:
        say(f"  deleting {mine[0]} (version {head['VersionId'][:8]}...): {exc.response['Error']['Code']}")
    kinds = [
        e["kind"] for key in mine for e in parse_events(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    ]
    say(f"  {len(mine)} objects (received+decision before the read ran; executed+close before it ended)")
    check(
        len(mine) == 2 and kinds == ["received", "decision", "executed", "session_closed"],
        "received, decision, executed, session_closed",
    )

    step(15, "The auditor's questions, in SQL (DuckDB here, Athena on AWS: the same SQL)")
    run_cli(["audit", "query", "--named", "denied_attempts"])
    run_cli(["audit", "query", "--named", "activity_on_connection", "--param", "connection=demo-prod"])
    run_cli(["audit", "replay", read_id])
    run_cli(["audit", "replay", pending_id])  # the approval story: request, preview, votes, outcome

    step(16, "The hash chains verify; a tampered copy does not")
    run_cli(["audit", "verify"])
    tampered = f"{bucket}-tampered-copy"
    s3.create_bucket(Bucket=tampered)
    for key in keys_:
        s3.copy_object(Bucket=tampered, Key=key, CopySource={"Bucket": bucket, "Key": key})
    # In the copy: the read's outcome says it read no rows, and the decision line is gone.
    after = parse_events(s3.get_object(Bucket=tampered, Key=mine[1])["Body"].read())
    after[0]["row_count"] = 0
    s3.put_object(Bucket=tampered, Key=mine[1], Body=serialize_many(after))
    before = parse_events(s3.get_object(Bucket=tampered, Key=mine[0])["Body"].read())
    s3.put_object(Bucket=tampered, Key=mine[0], Body=serialize_many(before[:1]))
    say(f"  copied the log to s3://{tampered}, changed one event's row_count and deleted another")
    report = verify_log(s3, tampered)
    say(textwrap.indent(report.format(), "  "))
    check(not report.ok, "verify catches the altered and the missing event")


def psql_steps(state: dict[str, Any], stack: LocalStack) -> None:
    """Steps 10 to 12: any Postgres client, here psql, through the proxy, under the same rules."""
    step(10, "Any Postgres client: psql through the Gatehouse proxy, masked the same way")
    login = proxy_login("demo-prod")
    out = run_psql(login, "SELECT id, name, email, card_number, ssn FROM customers LIMIT 3")
    real = superuser_query(
        stack,
        "demo-prod",
        "SELECT array_agg(v) FROM customers, LATERAL (VALUES (name), (email), (card_number), (ssn)) AS t(v)",
    )
    leaked = [value for value in real if value and value in out]
    check(
        "(3 rows)" in out and out.count("[REDACTED]") == 3 and out.count("hash:") == 6 and not leaked,
        "SSNs redacted, names and emails keyed-hash tokens: no real value reached psql",
    )
    check(len(re.findall(r"\| \*{4}[ *-]*\d{4} +\|", out)) == 3, "card numbers keep only their last 4 digits")

    step(11, "DDL through psql: refused with SQLSTATE 42501, naming the policy")
    out = run_psql(login, "DROP TABLE customers", expect=1)
    check(
        "42501" in out and "prod-no-ddl-or-privilege" in out,
        "an ERROR with SQLSTATE 42501 that names the policy",
    )
    exists = superuser_query(stack, "demo-prod", "SELECT to_regclass('customers') IS NOT NULL")
    check(exists is True, "the table is still there")

    step(12, "A write through psql waits for a dba; approved, the same statement runs once")
    update = "UPDATE customers SET notes = 'Prefers email (via psql)' WHERE id = 3"
    out = run_psql(login, update, expect=1)
    held_id = request_id_in(out)
    check("needs approval by dba" in out and "1 row would change" in out, "held, with its dry-run preview")
    wait_for(lambda: slack_message_for(state, held_id) is not None, "the approval message to be posted")
    run_cli(["approve", held_id, "--as", "U_ALICE"])
    wait_for_record(state, held_id, "approved")
    out = run_psql(login, update)
    check("UPDATE 1" in out.splitlines(), "sent again, the approved statement ran: UPDATE 1")
    db_note = superuser_query(stack, "demo-prod", "SELECT notes FROM customers WHERE id = 3")
    check(db_note == "Prefers email (via psql)", "the database holds the approved change")
    wait_for_record(state, held_id, "executed")
    run_cli(["requests", "get", held_id, "--as", "analyst"])
    out = run_psql(login, update, expect=1)
    check(request_id_in(out) != held_id, "once: sent a third time, it is a new request for a dba")


def agent_command(state: dict[str, Any], connection: str, command: dict[str, Any], reason: str) -> Any:
    """POST /v1/requests with a command of another kind, shown as the agent sends it."""
    body = {"connection": connection, **command, "reason": reason}
    say(f"  $ POST /v1/requests {safe_json(body)}")
    answer = agent_client(state)._call("POST", "/v1/requests", body)
    shown = {k: answer.body.get(k) for k in ("status", "statement_class", "request_id") if k in answer.body}
    say(f"    -> {answer.status_code} {safe_json(shown)}")
    return answer


def target_steps(state: dict[str, Any], stack: LocalStack) -> None:
    """Step 13: an HTTP service, a Kubernetes cluster and an SSH host, under the same decision path."""
    step(13, "HTTP, Kubernetes and SSH: reads run masked, changes wait for a dba, then run once")
    read = agent_command(
        state, "demo-http", {"http": {"method": "GET", "path": "/customers/3"}}, "support ticket 118"
    )
    customer = (read.body.get("result") or {}).get("body") or {}
    say(f"    body: {safe_json(customer)}")
    real = stack_customer(stack)
    check(
        read.status_code == 200 and not any(v and str(v) in json.dumps(customer) for v in real),
        "the service's answer reached the agent masked (JSON path for the name, detectors for the rest)",
    )
    refund = {"customer_id": 3, "cents": 1500}
    scale = {"verb": "scale", "resource": "deployments", "name": "web", "namespace": "default"}
    changes: list[tuple[str, dict[str, Any]]] = [
        ("demo-http", {"http": {"method": "POST", "path": "/refunds", "body": refund}}),
        ("demo-k8s", {"kubernetes": {**scale, "body": {"replicas": 3}}}),
        ("demo-ssh", {"ssh": {"command": "touch /tmp/gatehouse-demo-ran"}}),
    ]
    for connection, command in changes:
        answer = agent_command(state, connection, command, "demo")
        request_id = str(answer.body.get("request_id"))
        check(
            answer.status_code == 202,
            f"{connection}: the change waits for a dba ({answer.body.get('statement_class')})",
        )
        wait_for(lambda rid=request_id: slack_message_for(state, rid) is not None, "the approval message")
        run_cli(["approve", request_id, "--as", "U_ALICE"], echo=False)
        record = wait_for_status(state, request_id)
        check(record.get("status") == "executed", f"{connection}: approved by U_ALICE, it ran once")
    web = {"verb": "get", "resource": "deployments", "name": "web", "namespace": "default"}
    pods = agent_command(state, "demo-k8s", {"kubernetes": web}, "check")
    replicas = (((pods.body.get("result") or {}).get("object") or {}).get("spec") or {}).get("replicas")
    check(replicas == 3, "the cluster holds the approved change (3 replicas)")
    secret = agent_command(
        state,
        "demo-k8s",
        {"kubernetes": {"verb": "get", "resource": "secrets", "name": "db-credentials"}},
        "why",
    )
    check(secret.status_code == 202, "anything on a Secret is its own class, and waits for a dba")


def stack_customer(stack: LocalStack) -> list[Any]:
    """The demo HTTP service's own record of customer 3 (what must not reach the agent)."""
    targets = stack._targets
    service = targets.customers if targets is not None else None
    person = service.customers.get(3, {}) if service is not None else {}
    return [person.get(k) for k in ("name", "email", "phone", "card_number", "ssn")]


def main() -> int:
    started = time.perf_counter()
    say("Gatehouse demo: an agent's SQL through the gateway, on this machine (no AWS account)")
    say("Starting the local stack: Postgres, moto (S3, Secrets Manager, DynamoDB, Step Functions, IAM, STS),")
    say("the API Gateway stand-in (SigV4), the API Lambda handler and the Postgres proxy ...")
    stack = LocalStack()
    try:
        state = stack.up()
    except Exception as exc:  # noqa: BLE001 (a clear line, not a traceback, for the first thing a user runs)
        say(f"could not start the local stack: {exc}")
        return 1
    try:
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in stack.timings.items())
        say(
            f"up ({timings}); API {state['api']}, moto {state['aws']}, Postgres proxy {state.get('pg_proxy')}"
        )
        play(state, stack)
    except DemoError as exc:
        say(f"\nDEMO FAILED: {exc}")
        return 1
    finally:
        stack.down()
    say(f"\nDone in {time.perf_counter() - started:.1f} s; the local stack is stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
