"""The auditor's named queries, on DuckDB, over a session log produced by real API requests."""

from __future__ import annotations

import pytest

from gatehouse.audit.query import DuckDBAuditQuery, run_named
from gatehouse.audit.verify import verify_log


@pytest.fixture(scope="module")
def history(local_stack):
    """Given an agent that read prod, tried DDL on prod, asked for a prod write, wrote on dev."""
    client = local_stack.client()
    ids = {
        "prod_read": client.submit("demo-prod", "SELECT count(*) FROM customers", reason="kpi").body,
        "prod_ddl": client.submit("demo-prod", "DROP TABLE customers").body,
        "prod_write": client.submit("demo-prod", "UPDATE orders SET status = 'x' WHERE id = 1").body,
        "dev_write": client.submit("demo-dev", "UPDATE orders SET status = status WHERE id = 2").body,
    }
    assert [ids[k]["status"] for k in ids] == ["executed", "denied", "pending_approval", "executed"]
    state = local_stack.state
    backend = DuckDBAuditQuery(state["aws"], state["bucket"], state["region"], "testing", "testing")
    yield {k: v["request_id"] for k, v in ids.items()}, backend
    backend.close()


def rows_as_dicts(result):
    columns, rows = result
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_who_ran_what_on_a_connection(history):
    ids, backend = history
    rows = rows_as_dicts(run_named(backend, "activity_on_connection", {"connection": "demo-prod"}))
    assert [(r["session_id"], r["principal_name"], r["kind"]) for r in rows] == [
        (ids["prod_read"], "analyst", "executed")
    ]
    assert rows[0]["statement"] == "SELECT count(*) FROM customers"


def test_denied_attempts_by_agent(history):
    ids, backend = history
    rows = rows_as_dicts(run_named(backend, "denied_by_agent"))
    assert [(r["principal_name"], r["denied"]) for r in rows] == [("analyst", 1)]
    attempts = rows_as_dicts(run_named(backend, "denied_attempts"))
    assert [a["session_id"] for a in attempts] == [ids["prod_ddl"]]
    assert list(attempts[0]["policy_ids"]) == ["prod-no-ddl-or-privilege"]


def test_writes_and_who_approved_them(history):
    _, backend = history
    # The pending prod write has not run: it is not a change yet.
    assert rows_as_dicts(run_named(backend, "changes_with_approvers", {"env": "prod"})) == []
    dev = rows_as_dicts(run_named(backend, "changes_with_approvers", {"env": "dev"}))
    assert [(r["principal_name"], r["approvers"]) for r in dev] == [("analyst", None)]


def test_sessions_that_touched_a_table(history):
    ids, backend = history
    rows = rows_as_dicts(run_named(backend, "sessions_touching_relation", {"relation": "customers"}))
    assert {r["session_id"] for r in rows} == {ids["prod_read"], ids["prod_ddl"]}


def test_the_real_log_verifies(history, local_stack):
    report = verify_log(local_stack.aws("s3"), local_stack.state["bucket"])
    assert report.ok, report.format()
    assert len(report.sessions) == 4
