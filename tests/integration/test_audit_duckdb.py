"""The session log end to end: SessionLog writes to moto's S3 server, DuckDB answers the auditor's SQL,
and the `gatehouse audit` commands run against it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from gatehouse.audit import cli, named_queries
from gatehouse.audit.events import COLUMNS, serialize_many
from gatehouse.audit.log import SessionLog, event_key
from gatehouse.audit.query import AuditQueryError, DuckDBAuditQuery, run_named
from tests.unit.audit_fixtures import (
    SteppingClock,
    copy_bucket,
    fast_retry,
    make_log_bucket,
    rehashed,
)

REGION = "us-east-1"
BUCKET = "gatehouse-session-log-it"
EMPTY_BUCKET = "gatehouse-session-log-empty"
ACCOUNT = "arn:aws:iam::123456789012:user/"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3(endpoint) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=cli.LOCAL_ACCESS_KEY,
        aws_secret_access_key=cli.LOCAL_SECRET_KEY,
    )


def at(day: int, hour: int) -> SteppingClock:
    return SteppingClock(datetime(2026, 11, day, hour, 0, tzinfo=UTC), step=timedelta(seconds=1))


def session(s3, session_id, clock, *, agent="analyst", connection="demo-prod") -> SessionLog:
    return SessionLog.start(
        s3,
        BUCKET,
        session_id=session_id,
        request_id=session_id,
        principal_arn=ACCOUNT + agent,
        principal_name=agent,
        connection=connection,
        target_kind="postgres",
        retention_days=1,
        clock=clock,
        retry=fast_retry(),
    )


def ran(log, sql, cls, relations, env, *, policy, rows=1, approvers=None):
    """As the API writes a command that runs: two objects of two events each."""
    described = {"statement": sql, "statement_class": cls, "relations": relations, "connection_env": env}
    log.stage("received", statement=sql, connection_env=env)
    log.stage("decision", decision="allow", policy_ids=[policy], **described)
    log.flush()
    log.stage("executed", outcome="ok", row_count=rows, duration_ms=4.2, **described)
    log.close()


def denied(log, sql, cls, relations, env, *, policy):
    """A refusal needs nothing durable before it: one object of four events."""
    described = {"statement": sql, "statement_class": cls, "relations": relations, "connection_env": env}
    log.stage("received", statement=sql, connection_env=env)
    log.stage("decision", decision="deny", policy_ids=[policy], **described)
    log.stage("refused", outcome="denied", error="denied: forbidden on prod", **described)
    log.close()


@pytest.fixture(scope="module")
def log_bucket(s3) -> str:
    """Seven sessions over three days: reads, approved and denied writes, denied DDL, a dev write."""
    make_log_bucket(s3, BUCKET)
    s3.create_bucket(Bucket=EMPTY_BUCKET)

    ran(session(s3, "read-1", at(2, 10)), "SELECT email FROM public.customers", "read", ["public.customers"],
        "prod", policy="prod-read", rows=3)  # fmt: skip

    # A prod write that waits for approval; the approval arrives in a later process.
    write = session(s3, "write-1", at(3, 9))
    sql = "UPDATE customers SET notes = 'vip' WHERE id = 2"
    described = {
        "statement": sql,
        "statement_class": "write",
        "relations": ["customers"],
        "connection_env": "prod",
    }
    write.stage("received", statement=sql, connection_env="prod", reason="customer asked")
    write.stage("decision", decision="approval", policy_ids=["prod-write-approval"], **described)
    write.stage("approval_requested", outcome="pending", **described)
    write.flush()
    later = SessionLog.resume(s3, BUCKET, session_id="write-1", retention_days=1, clock=at(3, 9 + 1))
    later.stage("approved", approvers=["U_ALICE"], outcome="approved", **described)
    later.stage("executed", outcome="ok", row_count=1, duration_ms=3.1, **described)
    later.close()

    denied(session(s3, "ddl-1", at(3, 11)), "DROP TABLE customers", "ddl", ["customers"], "prod",
           policy="prod-forbid-ddl")  # fmt: skip
    denied(session(s3, "ddl-2", at(4, 8), agent="reporter"), "ALTER TABLE customers ADD x int", "ddl",
           ["customers"], "prod", policy="prod-forbid-ddl")  # fmt: skip
    ran(session(s3, "dev-write", at(4, 9), connection="demo-dev"), "DELETE FROM orders", "write", ["orders"],
        "dev", policy="dev-write", rows=7)  # fmt: skip
    ran(session(s3, "admin-1", at(4, 10), agent="ops"), "CREATE INDEX ON customers (email)", "ddl",
        ["customers"], "prod", policy="ops-ddl", rows=0)  # fmt: skip

    # Written one event per object, as the log did before objects held several: both layouts read alike.
    rejected = session(s3, "write-2", at(4, 11))
    sql = "UPDATE customers SET email = NULL"
    rejected.append("received", statement=sql, connection_env="prod")
    rejected.append(
        "decision",
        decision="approval",
        policy_ids=["prod-write-approval"],
        statement_class="write",
        relations=["customers"],
    )
    rejected.append("approval_requested", outcome="pending")
    rejected.append("denied_by_approver", approvers=["U_BOB"], outcome="denied", reason="no WHERE clause")
    rejected.close()
    return BUCKET


@pytest.fixture(scope="module")
def duck(endpoint, log_bucket) -> Iterator[DuckDBAuditQuery]:
    with DuckDBAuditQuery(
        endpoint, log_bucket, REGION, cli.LOCAL_ACCESS_KEY, cli.LOCAL_SECRET_KEY
    ) as backend:
        yield backend


def as_dicts(result) -> list[dict[str, Any]]:
    columns, rows = result
    return [dict(zip(columns, row, strict=True)) for row in rows]


# -- plain SQL ---------------------------------------------------------------------------------


def test_duckdb_reads_every_event_from_moto_s3(duck):
    rows = as_dicts(duck.run("SELECT kind, count(*) AS n FROM gatehouse_events GROUP BY kind ORDER BY kind"))
    counts = {r["kind"]: r["n"] for r in rows}
    assert counts["session_closed"] == 7
    assert counts["executed"] == 4 and counts["refused"] == 2
    assert counts["approved"] == 1 and counts["denied_by_approver"] == 1


def test_the_view_has_the_schema_columns_with_their_types_and_dt(duck):
    _, rows = duck.run("DESCRIBE gatehouse_events")
    types = {row[0]: row[1] for row in rows}
    assert list(types) == [*[c.name for c in COLUMNS], "dt"]
    assert types["seq"] == "BIGINT" and types["relations"] == "VARCHAR[]" and types["duration_ms"] == "DOUBLE"
    assert types["dt"] == "VARCHAR"


def test_partition_and_list_columns_come_back_typed(duck):
    (row,) = as_dicts(
        duck.run(
            "SELECT dt, relations, policy_ids, row_count, duration_ms FROM gatehouse_events "
            "WHERE session_id = 'read-1' AND kind = 'executed'"
        )
    )
    assert row == {
        "dt": "2026-11-02",
        "relations": ["public.customers"],
        "policy_ids": None,
        "row_count": 3,
        "duration_ms": 4.2,
    }


def test_an_empty_log_still_has_the_columns(endpoint):
    with DuckDBAuditQuery(
        endpoint, EMPTY_BUCKET, REGION, cli.LOCAL_ACCESS_KEY, cli.LOCAL_SECRET_KEY
    ) as empty:
        assert empty.run("SELECT count(*) AS n FROM gatehouse_events") == (["n"], [(0,)])
        columns, rows = run_named(empty, "denied_by_agent")
        assert rows == [] and columns[:3] == ["principal_name", "principal_arn", "denied"]


def test_bad_sql_is_a_query_error(duck):
    with pytest.raises(AuditQueryError, match="query failed"):
        duck.run("SELECT nope FROM gatehouse_events")


# -- the named queries -------------------------------------------------------------------------


def test_activity_on_a_connection_in_a_period(duck):
    rows = as_dicts(
        run_named(
            duck,
            "activity_on_connection",
            {"connection": "demo-prod", "since": "2026-11-03", "until": "2026-11-04"},
        )
    )
    assert [(r["principal_name"], r["kind"], r["statement_class"], r["session_id"]) for r in rows] == [
        ("analyst", "executed", "write", "write-1")
    ]
    everything = as_dicts(run_named(duck, "activity_on_connection", {"connection": "demo-prod"}))
    assert [r["session_id"] for r in everything] == ["read-1", "write-1", "admin-1"]


def test_prod_changes_and_who_approved_them(duck):
    rows = as_dicts(run_named(duck, "changes_with_approvers"))
    assert [(r["session_id"], r["statement_class"], r["approvers"]) for r in rows] == [
        ("write-1", "write", ["U_ALICE"]),
        ("admin-1", "ddl", None),  # allowed by policy, no approval
    ]
    assert rows[0]["approved_at"] == "2026-11-03T10:00:00.000Z"
    dev = as_dicts(run_named(duck, "changes_with_approvers", {"env": "dev"}))
    assert [(r["session_id"], r["row_count"]) for r in dev] == [("dev-write", 7)]


def test_denied_attempts_by_agent(duck):
    rows = as_dicts(run_named(duck, "denied_by_agent"))
    assert [(r["principal_name"], r["denied"]) for r in rows] == [("analyst", 2), ("reporter", 1)]
    assert rows[0]["principal_arn"] == ACCOUNT + "analyst"
    recent = as_dicts(run_named(duck, "denied_by_agent", {"since": "2026-11-04"}))
    assert [(r["principal_name"], r["denied"]) for r in recent] == [("analyst", 1), ("reporter", 1)]


def test_denied_attempts_in_detail(duck):
    rows = as_dicts(run_named(duck, "denied_attempts"))
    assert [(r["session_id"], r["kind"], r["policy_ids"], r["approvers"]) for r in rows] == [
        ("ddl-1", "decision", ["prod-forbid-ddl"], None),
        ("ddl-2", "decision", ["prod-forbid-ddl"], None),
        ("write-2", "denied_by_approver", None, ["U_BOB"]),
    ]


def test_sessions_that_touched_a_table(duck):
    rows = as_dicts(run_named(duck, "sessions_touching_relation", {"relation": "customers"}))
    by_session = {r["session_id"]: r for r in rows}
    assert list(by_session) == ["read-1", "write-1", "ddl-1", "ddl-2", "admin-1", "write-2"]
    assert (by_session["read-1"]["executed"], by_session["read-1"]["denied"]) == (1, 0)
    assert (by_session["ddl-1"]["executed"], by_session["ddl-1"]["denied"]) == (0, 1)
    assert by_session["write-1"]["statement_classes"] == ["write"]

    qualified = as_dicts(run_named(duck, "sessions_touching_relation", {"relation": "PUBLIC.customers"}))
    assert [r["session_id"] for r in qualified] == ["read-1"]
    orders = as_dicts(
        run_named(duck, "sessions_touching_relation", {"relation": "orders", "since": "2026-11-04"})
    )
    assert [(r["session_id"], r["connection"]) for r in orders] == [("dev-write", "demo-dev")]


def test_approval_decisions(duck):
    rows = as_dicts(run_named(duck, "approval_decisions"))
    assert [(r["session_id"], r["kind"], r["approvers"], r["requested_by"]) for r in rows] == [
        ("write-1", "approved", ["U_ALICE"], "analyst"),
        ("write-2", "denied_by_approver", ["U_BOB"], "analyst"),
    ]


def test_one_sessions_events(duck):
    rows = as_dicts(run_named(duck, "session_events", {"session_id": "write-1"}))
    assert [r["kind"] for r in rows] == [
        "received",
        "decision",
        "approval_requested",
        "approved",
        "executed",
        "session_closed",
    ]
    assert [r["seq"] for r in rows] == list(range(6))


def test_every_named_query_runs_with_its_example(duck):
    for query in named_queries.NAMED_QUERIES:
        columns, _ = duck.run(query.example_sql())
        assert columns, query.name


# -- the CLI -----------------------------------------------------------------------------------


def run_cli(target: cli.AuditTarget, *argv: str) -> int:
    root = argparse.ArgumentParser(prog="gatehouse")
    sub = root.add_subparsers(dest="command", required=True)
    cli.register(sub, lambda: target)
    args = root.parse_args(["audit", *argv])
    return args.func(args)


@pytest.fixture
def local_target(endpoint, log_bucket) -> cli.AuditTarget:
    return cli.AuditTarget(kind="local", bucket=log_bucket, region=REGION, endpoint_url=endpoint)


def test_cli_query_named_as_json(local_target, capsys):
    assert (
        run_cli(local_target, "query", "--named", "denied_by_agent", "--param", "since=2026-11-04", "--json")
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["columns"][:3] == ["principal_name", "principal_arn", "denied"]
    assert [row[2] for row in out["rows"]] == [1, 1]


def test_cli_query_plain_sql_as_a_table(local_target, capsys):
    assert (
        run_cli(local_target, "query", "SELECT count(DISTINCT session_id) AS sessions FROM gatehouse_events")
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sessions" and out[2] == "7" and out[-1] == "(1 row)"


def test_cli_query_with_bad_sql_exits_1(local_target, capsys):
    assert run_cli(local_target, "query", "SELEC 1") == 1
    assert "query failed" in capsys.readouterr().err


def test_cli_verify_and_replay_an_intact_log(local_target, capsys):
    assert run_cli(local_target, "verify") == 0
    assert (
        "7 session(s) (7 closed, 0 open), 31 event(s): chain and manifests intact" in capsys.readouterr().out
    )
    assert run_cli(local_target, "verify", "--session", "write-1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert run_cli(local_target, "replay", "write-1") == 0
    out = capsys.readouterr().out
    assert "approved            by U_ALICE, approved" in out and "chain intact: 6 events" in out


def test_cli_verify_of_a_tampered_copy_exits_1(s3, endpoint, log_bucket, capsys):
    copy = copy_bucket(s3, log_bucket, "gatehouse-session-log-it-copy")
    key = event_key("write-1", 3, "2026-11-03")  # approved, executed, session_closed
    approved, *rest = (json.loads(x) for x in s3.get_object(Bucket=copy, Key=key)["Body"].read().splitlines())
    forged = rehashed(approved, approvers=["U_MALLORY"])
    s3.put_object(Bucket=copy, Key=key, Body=serialize_many([forged, *rest]))
    target = cli.AuditTarget(kind="local", bucket=copy, region=REGION, endpoint_url=endpoint)

    assert run_cli(target, "verify") == 1
    out = capsys.readouterr().out
    assert "altered          write-1 #3: replaced: seq 4 chains from" in out
    assert run_cli(target, "replay", "write-1") == 0
    assert "!! altered" in capsys.readouterr().out
    assert run_cli(target, "replay", "never-was") == 1


def test_cli_finds_the_local_stack_from_gatehouse_local_json(
    endpoint, log_bucket, tmp_path, monkeypatch, capsys
):
    (tmp_path / ".gatehouse").mkdir()
    state = {"aws": endpoint, "region": REGION, "bucket": log_bucket}
    (tmp_path / ".gatehouse" / "local.json").write_text(json.dumps(state))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEHOUSE_LOG_BUCKET", raising=False)

    root = argparse.ArgumentParser(prog="gatehouse")
    cli.register(root.add_subparsers(dest="command", required=True))  # the default context loader
    args = root.parse_args(["audit", "verify", "--session", "read-1"])
    assert args.func(args) == 0
    assert "1 session(s) (1 closed, 0 open), 4 event(s)" in capsys.readouterr().out
