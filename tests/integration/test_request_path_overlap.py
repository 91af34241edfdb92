"""The request path with its writes overlapped and its target sessions warm (local stack): the
promises hold whatever runs side by side - the decision is stored before the command runs, the
record is finished only after it, and a warm session is the connection's role, fresh."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from gatehouse.audit.events import parse_events
from gatehouse.config import Settings
from gatehouse.exceptions import AuditWriteError
from gatehouse.runtime import build_runtime
from tests.integration.test_request_path import ANALYST, S3RefusingKinds


@pytest.fixture
def runtime(local_stack):
    return build_runtime(Settings.from_env(), boto3.session.Session())


def notes(local_stack, customer: int) -> str | None:
    db = local_stack.db("demo-dev")
    try:
        [[value]] = db.run("SELECT notes FROM customers WHERE id = :i", i=customer)
    finally:
        db.close()
    return value


def record_of(local_stack, request_id: str) -> dict[str, Any]:
    return local_stack.client().get_request(request_id).body


def test_a_write_is_on_record_as_executed_and_its_session_is_closed(local_stack, runtime):
    outcome = runtime.service.submit(ANALYST, "demo-dev", "UPDATE customers SET notes = 'w1' WHERE id = 3")

    assert outcome.status == "executed"
    record = record_of(local_stack, outcome.request_id)
    assert (record["status"], record["row_count"]) == ("executed", 1)
    assert notes(local_stack, 3) == "w1"
    s3 = local_stack.aws("s3")
    bucket = runtime.settings.log_bucket
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="events/")
        for o in page.get("Contents", [])
        if f"session={outcome.request_id}/" in o["Key"]
    ]
    kinds = [
        e["kind"]
        for key in sorted(keys)
        for e in parse_events(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    ]
    assert kinds == ["received", "decision", "executed", "session_closed"]


def test_a_write_whose_closing_object_fails_after_commit_still_reports_what_ran(local_stack, runtime):
    # Given a session log that refuses only the closing object, written after COMMIT
    runtime.service._s3 = S3RefusingKinds(local_stack.aws("s3"), {"session_closed"})

    outcome = runtime.service.submit(ANALYST, "demo-dev", "UPDATE customers SET notes = 'w2' WHERE id = 4")

    # Then the agent is told it ran (it did: a retry would run it twice) and the record agrees
    assert outcome.status == "executed"
    assert notes(local_stack, 4) == "w2"
    assert record_of(local_stack, outcome.request_id)["status"] == "executed"


def test_a_write_whose_decision_cannot_be_stored_never_runs_though_gatehouse_logged_in(local_stack, runtime):
    # Given a session log that refuses the first object (received + decision), written while the
    # executor logs in to the target
    runtime.service._s3 = S3RefusingKinds(local_stack.aws("s3"), {"decision"})
    before = notes(local_stack, 5)

    with pytest.raises(AuditWriteError):
        runtime.service.submit(ANALYST, "demo-dev", "UPDATE customers SET notes = 'never' WHERE id = 5")

    assert notes(local_stack, 5) == before


def test_reads_in_a_warm_process_share_one_session_as_the_connections_role(local_stack, runtime):
    sql = "SELECT pg_backend_pid() AS pid, current_user AS who, current_setting('application_name') AS app"
    first = runtime.service.submit(ANALYST, "demo-dev", sql)
    second = runtime.service.submit(ANALYST, "demo-dev", sql)

    assert first.result is not None and second.result is not None
    assert first.result.rows == second.result.rows  # the same backend, role and settings
    # and it is the connection's login role, as a fresh login would be
    db = local_stack.db("demo-dev")
    try:
        [[role]] = db.run("SELECT usename FROM pg_stat_activity WHERE pid = :p", p=first.result.rows[0][0])
    finally:
        db.close()
    assert first.result.rows[0][1] == role
