"""`make demo`: bring up the local stack, play the scenario as the agent `analyst`, print a
readable transcript, tear everything down.

Every step checks what it shows: the demo exits non-zero if Gatehouse does not behave as the
transcript says, so it doubles as a smoke test a new user can read.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

import boto3
import requests
from botocore.exceptions import ClientError
from requests_aws4auth import AWS4Auth

from gatehouse import cli
from gatehouse.audit.events import parse_events, serialize_many
from gatehouse.audit.verify import verify_log
from gatehouse.local.stack import LocalStack

WIDTH = 100


class DemoError(RuntimeError):
    """Gatehouse did not do what the transcript says it does."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(number: int, title: str) -> None:
    say()
    say(f"== {number}. {title} " + "=" * max(0, WIDTH - len(title) - 8))


def run_cli(argv: Sequence[str], expect: int = 0) -> str:
    """Run `gatehouse ...` in-process and echo it as a user would see it in a terminal."""
    say("$ gatehouse " + " ".join(shlex.quote(a) for a in argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    text = out.getvalue().rstrip()
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

    step(10, "Every step is in S3, under Object Lock in COMPLIANCE mode")
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

    step(11, "The auditor's questions, in SQL (DuckDB here, Athena on AWS: the same SQL)")
    run_cli(["audit", "query", "--named", "denied_attempts"])
    run_cli(["audit", "query", "--named", "activity_on_connection", "--param", "connection=demo-prod"])
    run_cli(["audit", "replay", read_id])
    run_cli(["audit", "replay", pending_id])  # the approval story: request, preview, votes, outcome

    step(12, "The hash chains verify; a tampered copy does not")
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


def main() -> int:
    started = time.perf_counter()
    say("Gatehouse demo: an agent's SQL through the gateway, on this machine (no AWS account)")
    say("Starting the local stack: Postgres, moto (S3, Secrets Manager, DynamoDB, Step Functions, IAM, STS),")
    say("the API Gateway stand-in (SigV4) and the API Lambda handler ...")
    stack = LocalStack()
    try:
        state = stack.up()
    except Exception as exc:  # noqa: BLE001 (a clear line, not a traceback, for the first thing a user runs)
        say(f"could not start the local stack: {exc}")
        return 1
    try:
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in stack.timings.items())
        say(f"up ({timings}); API {state['api']}, moto {state['aws']}")
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
