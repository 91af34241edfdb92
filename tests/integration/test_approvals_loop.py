"""The approval loop, end to end on the local stack: the agent's signed API, moto's Step Functions
running the state machine synthesized from infra/, the Slack Web API stand-in, signed Slack
interactions through `/slack/interactions`, and the real Postgres.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from gatehouse import names
from gatehouse.audit.events import parse_events
from gatehouse.audit.log import SessionLog
from gatehouse.config import Settings
from gatehouse.ddb import to_item
from gatehouse.exceptions import AuditWriteError
from gatehouse.local.approve import local_voter
from gatehouse.policy import PolicyEngine
from gatehouse.policy.engine import default_schema_path
from gatehouse.runtime import build_runtime

UNDECIDED = {"pending_approval", "approved", "executing"}
EXTRA_APPROVERS = {
    "U_CAROL": {"name": "carol", "groups": ["dba"]},
    "U_DAVE": {"name": "dave", "groups": ["security"]},
    "U_ERIN": {"name": "erin", "groups": ["dba", "security"]},
}


@pytest.fixture(scope="module")
def stack(local_stack):
    ddb = local_stack.aws("dynamodb")
    for user, spec in EXTRA_APPROVERS.items():
        ddb.put_item(
            TableName=names.PRINCIPALS_TABLE,
            Item=to_item(
                {
                    "principal_key": f"slack:{user}",
                    "name": spec["name"],
                    "kind": "approver",
                    "groups": spec["groups"],
                }
            ),
        )
    return local_stack


@pytest.fixture(scope="module")
def voter(stack):
    return local_voter(stack.state)


def amount(stack, order_id: int) -> str:
    db = stack.db("demo-prod")
    try:
        return str(db.run("SELECT amount FROM orders WHERE id = :i", i=order_id)[0][0])
    finally:
        db.close()


def wait_decided(stack, request_id: str, timeout_s: float = 45) -> dict[str, Any]:
    client = stack.client()
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get_request(request_id, wait=20).body
        if body.get("status") not in UNDECIDED or time.monotonic() > deadline:
            return body


def wait_for_message(voter, request_id: str, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = voter.standin.approval_message(request_id)
        if message is not None:
            return message
        time.sleep(0.2)
    raise AssertionError(f"no approval message for {request_id}")


def wait_until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(0.2)


def all_events(stack) -> list[dict[str, Any]]:
    s3 = stack.aws("s3")
    bucket = stack.state["bucket"]
    return [
        e
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="events/")
        for o in page.get("Contents", [])
        for e in parse_events(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
    ]


def session_kinds(stack, request_id: str) -> list[str]:
    s3 = stack.aws("s3")
    bucket = stack.state["bucket"]
    keys = sorted(
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="events/")
        for o in page.get("Contents", [])
        if f"session={request_id}/" in o["Key"]
    )
    return [e["kind"] for k in keys for e in parse_events(s3.get_object(Bucket=bucket, Key=k)["Body"].read())]


def test_a_write_waits_with_its_preview_the_owner_cannot_approve_and_a_dba_can(stack, voter):
    before = amount(stack, 3)
    sql = "UPDATE orders SET amount = amount + 1 WHERE id = 3"
    answer = stack.client().submit("demo-prod", sql, reason="refund correction")
    assert answer.status_code == 202, answer.body
    rid = answer.body["request_id"]
    preview = answer.body["preview"]
    assert preview["mode"] == "dry_run" and preview["statements"][0]["affected_rows"] == 1
    assert answer.body["expires_at"] > time.time()
    assert amount(stack, 3) == before  # the dry run was rolled back

    message = wait_for_message(voter, rid)
    assert "refund correction" in message.text or "refund correction" in str(message.blocks)

    own = voter.vote("U_BOB", rid, approve=True)
    assert own.reply and "own" in own.reply.lower()
    assert stack.client().get_request(rid).body["status"] == "pending_approval"

    yes = voter.vote("U_ALICE", rid, approve=True)
    assert yes.delivered
    done = wait_decided(stack, rid)
    assert done["status"] == "executed", done
    assert done["result"]["row_count"] == 1
    assert float(amount(stack, 3)) == float(before) + 1

    # The approval delivered again runs nothing twice.
    runtime = build_runtime(Settings.from_env())
    assert runtime.service.execute_approved(rid)["status"] == "executed"
    assert float(amount(stack, 3)) == float(before) + 1
    again = voter.vote("U_ALICE", rid, approve=True)
    assert again.reply and "no longer" in again.reply
    # ... and that late vote is on record too, in a session of its own naming the request.
    late = [e for e in all_events(stack) if e["request_id"] == rid and e["session_id"] != rid]
    assert [e["kind"] for e in late] == ["vote_refused", "session_closed"]

    # What ran is byte for byte what was approved: the hash on record, and the logged statement.
    record = stack.client().get_request(rid).body
    assert record["sql"] == sql and record["sql_sha256"] == hashlib.sha256(sql.encode()).hexdigest()
    executed = [e for e in all_events(stack) if e["session_id"] == rid and e["kind"] == "executed"]
    assert len(executed) == 1 and executed[0]["statement"] == sql

    kinds = session_kinds(stack, rid)
    for kind in (
        "received",
        "decision",
        "approval_requested",
        "preview",
        "notified",
        "vote_refused",
        "approved",
        "executed",
        "session_closed",
    ):
        assert kind in kinds, (kind, kinds)
    assert kinds.index("approved") < kinds.index("executed") < kinds.index("session_closed")
    final = voter.standin.approval_message(rid)
    assert final is not None and "gatehouse_approve" not in str(final.blocks)  # buttons gone
    # The outcome reaches the message in the state machine's last step (the notify function).
    deadline = time.monotonic() + 15
    while "executed: 1 rows" not in str(final.blocks) and time.monotonic() < deadline:
        time.sleep(0.1)
        final = voter.standin.approval_message(rid)
        assert final is not None
    assert "executed: 1 rows" in str(final.blocks)


def test_a_denial_carries_its_reason_and_nothing_runs(stack, voter):
    before = amount(stack, 4)
    answer = stack.client().submit("demo-prod", "UPDATE orders SET amount = 0 WHERE id = 4")
    rid = answer.body["request_id"]
    wait_for_message(voter, rid)
    no = voter.vote("U_ALICE", rid, approve=False, reason="not during the close")
    assert no.delivered
    done = wait_decided(stack, rid)
    assert done["status"] == "denied" and done["decided_reason"] == "not during the close"
    assert amount(stack, 4) == before
    assert "denied_by_approver" in session_kinds(stack, rid)


def test_a_request_nobody_answers_expires(stack, voter):
    answer = stack.client().submit("demo-dev", "ALTER TABLE orders ADD COLUMN never_added boolean")
    assert answer.status_code == 202
    rid = answer.body["request_id"]
    done = wait_decided(stack, rid, timeout_s=60)
    assert done["status"] == "expired"
    late = voter.vote("U_ALICE", rid, approve=True)
    assert late.reply and ("expired" in late.reply or "no longer" in late.reply)
    db = stack.db("demo-dev")
    try:
        assert not db.run("SELECT 1 FROM information_schema.columns WHERE column_name = 'never_added'")
    finally:
        db.close()


def test_a_dry_run_that_drifts_rolls_back(stack, voter):
    db = stack.db("demo-prod")
    try:
        db.run("UPDATE orders SET status = 'drift-a' WHERE id = 11")
        answer = stack.client().submit(
            "demo-prod", "UPDATE orders SET status = 'drift-b' WHERE status LIKE 'drift-%'"
        )
        rid = answer.body["request_id"]
        assert answer.body["preview"]["statements"][0]["affected_rows"] == 1
        db.run("UPDATE orders SET status = 'drift-a' WHERE id = 12")  # the data changes under the approval
    finally:
        db.close()
    wait_for_message(voter, rid)
    voter.vote("U_ALICE", rid, approve=True)
    done = wait_decided(stack, rid)
    assert done["status"] == "drifted", done
    db = stack.db("demo-prod")
    try:
        assert [r[0] for r in db.run("SELECT status FROM orders WHERE id IN (11, 12) ORDER BY id")] == [
            "drift-a",
            "drift-a",
        ]
    finally:
        db.close()


SCHEMA = default_schema_path().read_text(encoding="utf-8")
QUORUM_POLICIES = {
    "quorum.cedar": """
@id("prod-write-two-dbas")
@approval("dba")
@quorum("2")
permit (principal, action == Gatehouse::Action::"sql:write", resource) when { resource.env == "prod" };

@id("dev-write-dba-and-security")
@approval("dba,security")
permit (principal, action == Gatehouse::Action::"sql:write", resource) when { resource.env == "dev" };

@id("approvers")
permit (principal, action == Gatehouse::Action::"approve", resource) when { principal.groups.contains("dba") || principal.groups.contains("security") };
""",
}


@pytest.fixture(scope="module")
def strict_service(stack):
    """A service on the same stack whose policies ask for more: quorum 2, and two groups."""
    runtime = build_runtime(Settings.from_env())
    runtime.service._policy = PolicyEngine.from_sources(QUORUM_POLICIES, SCHEMA)
    return runtime.service


def test_a_quorum_of_two_needs_two_distinct_approvers(stack, voter, strict_service):
    principal = stack_principal(stack)
    before = amount(stack, 5)
    outcome = strict_service.submit(
        principal, "demo-prod", "UPDATE orders SET amount = amount + 1 WHERE id = 5"
    )
    rid = outcome.request_id
    assert outcome.status == "pending_approval" and outcome.record.approval_quorum == 2
    wait_for_message(voter, rid)
    first = voter.vote("U_ALICE", rid, approve=True)
    assert first.reply and "1 of 2" in first.reply
    assert voter.vote("U_ALICE", rid, approve=True).reply.startswith("You have already voted")
    assert stack.client().get_request(rid).body["status"] == "pending_approval"
    voter.vote("U_CAROL", rid, approve=True)
    assert wait_decided(stack, rid)["status"] == "executed"
    assert float(amount(stack, 5)) == float(before) + 1


def test_two_groups_need_one_approver_from_each(stack, voter, strict_service):
    principal = stack_principal(stack)
    outcome = strict_service.submit(principal, "demo-dev", "UPDATE orders SET status = status WHERE id = 6")
    rid = outcome.request_id
    assert sorted(outcome.record.approval_groups or []) == ["dba", "security"]
    wait_for_message(voter, rid)
    assert "needs a member" not in (voter.vote("U_ALICE", rid, approve=True).reply or "")
    assert strict_service.vote("U_CAROL", rid, True).status == "pending_approval"  # dba again: not enough
    assert strict_service.vote("U_DAVE", rid, True).status == "approved"
    assert wait_decided(stack, rid)["status"] == "executed"


def approved_under_a_freeze(stack, voter, strict_service, rid: str) -> dict[str, Any]:
    """Approve `rid` behind the stack's workflow after the policies changed to forbid prod writes;
    what strict_service's Execute step answers."""
    # The stack's own Notify step has run to its end (message posted, `notified` recorded): the
    # record is changed below behind the workflow's back, and a Notify still running would see
    # it approved and hand the approval to the stack's workflow as well.
    wait_for_message(voter, rid)
    wait_until(lambda: "notified" in session_kinds(stack, rid))
    forbid = {
        "forbid.cedar": '@id("freeze") forbid (principal, action == Gatehouse::Action::"sql:write", resource);',
        **QUORUM_POLICIES,
    }
    strict_service._policy = PolicyEngine.from_sources(forbid, SCHEMA)
    try:
        strict_service._requests.transition(
            rid, expect=("pending_approval",), status="approved", decided_by="alice"
        )
        return dict(strict_service.execute_approved(rid))
    finally:
        strict_service._policy = PolicyEngine.from_sources(QUORUM_POLICIES, SCHEMA)


def test_a_policy_change_after_the_request_is_honoured(stack, voter, strict_service):
    before = amount(stack, 7)
    answer = stack.client().submit("demo-prod", "UPDATE orders SET amount = amount + 100 WHERE id = 7")
    rid = answer.body["request_id"]
    # The policies change before the approval lands: prod writes are now forbidden.
    assert approved_under_a_freeze(stack, voter, strict_service, rid)["status"] == "denied"
    assert amount(stack, 7) == before
    assert "policy_changed" in (stack.client().get_request(rid).body.get("error") or "")


def test_a_refusal_whose_closing_write_fails_still_answers_denied(stack, voter, strict_service, monkeypatch):
    # The policies change before the approval lands, and the session log refuses the refusal's
    # closing write: the record says denied (nothing ran), and so must the step's answer.
    before = amount(stack, 13)
    answer = stack.client().submit("demo-prod", "UPDATE orders SET amount = amount + 100 WHERE id = 13")
    rid = answer.body["request_id"]
    resume = strict_service._approvals._resume

    def resume_failing_close(request_id: str) -> SessionLog:
        session = resume(request_id)

        def close() -> dict[str, Any]:
            raise AuditWriteError("the session log is unavailable (injected)")

        monkeypatch.setattr(session, "close", close)
        return session

    monkeypatch.setattr(strict_service._approvals, "_resume", resume_failing_close)
    assert approved_under_a_freeze(stack, voter, strict_service, rid)["status"] == "denied"
    assert amount(stack, 13) == before
    record = stack.client().get_request(rid).body
    assert record["status"] == "denied" and "policy_changed" in (record.get("error") or "")


def stack_principal(stack):
    runtime = build_runtime(Settings.from_env())
    arn = stack.state["agents"]["analyst"].get("arn")
    if arn:
        return runtime.registry.principal(f"iam:{arn}")
    table = stack.aws("dynamodb").scan(TableName=names.PRINCIPALS_TABLE)["Items"]
    key = next(
        i["principal_key"]["S"]
        for i in table
        if i["principal_key"]["S"].startswith("iam:") and i.get("name", {}).get("S") == "analyst"
    )
    return runtime.registry.principal(key)


def test_a_request_no_workflow_can_hold_fails_with_a_503_and_is_not_left_pending(stack):
    runtime = build_runtime(Settings.from_env())

    class DownWorkflow:
        def start(self, request_id: str, expires_in_s: int) -> str:
            from gatehouse.workflow import WorkflowUnavailableError

            raise WorkflowUnavailableError("Step Functions is down")

    runtime.service._workflow_client = DownWorkflow()
    from gatehouse.exceptions import GatehouseError

    with pytest.raises(GatehouseError) as caught:
        runtime.service.submit(
            stack_principal(stack), "demo-prod", "UPDATE orders SET status = status WHERE id = 8"
        )
    assert caught.value.status == 503 and caught.value.code == "approval_unavailable"
    record = runtime.service._requests.get(caught.value.request_id)
    assert record.status == "failed"


def test_an_approval_the_workflow_cannot_take_fails_the_request_and_says_so(stack, voter, strict_service):
    principal = stack_principal(stack)
    before = amount(stack, 9)
    outcome = strict_service.submit(
        principal, "demo-prod", "UPDATE orders SET amount = amount + 1 WHERE id = 9"
    )
    rid = outcome.request_id
    wait_for_message(voter, rid)
    working = strict_service._workflow()

    class UnreachableWorkflow:
        def resume(self, task_token: str, decision: str) -> None:
            from gatehouse.workflow import WorkflowUnavailableError

            raise WorkflowUnavailableError("SendTaskSuccess: the endpoint could not be reached")

    strict_service._workflow_client = UnreachableWorkflow()
    try:
        strict_service.vote("U_ALICE", rid, True)
        result = strict_service.vote("U_CAROL", rid, True)  # the quorum of two
    finally:
        strict_service._workflow_client = working

    # Not left "approved" with nothing to run it: failed, honestly, and the approver is told.
    assert (result.ok, result.status) == (False, "failed")
    assert "will not run" in result.message
    record = stack.client().get_request(rid).body
    assert record["status"] == "failed" and "nothing was run" in record["error"]
    assert "failed" in session_kinds(stack, rid)
    assert amount(stack, 9) == before


def test_an_approval_that_never_reached_the_workflow_fails_at_the_expiry(stack, strict_service):
    principal = stack_principal(stack)
    outcome = strict_service.submit(
        principal, "demo-prod", "UPDATE orders SET amount = amount + 1 WHERE id = 10"
    )
    rid = outcome.request_id
    # The vote's transition happened, its resume did not (the Slack function died in between).
    strict_service._requests.transition(
        rid, expect=("pending_approval",), status="approved", decided_by="alice"
    )

    assert strict_service.expire(rid)["status"] == "failed"
    assert "never reached the workflow" in stack.client().get_request(rid).body["error"]


class RecordingWorkflow:
    """Starts nothing (so no Notify runs by itself) and records every answer to a task token."""

    def __init__(self) -> None:
        self.resumed: list[tuple[str, str]] = []

    def start(self, request_id: str, expires_in_s: int) -> str:
        return f"arn:aws:states:us-east-1:123456789012:execution:gatehouse-approvals:{request_id}"

    def resume(self, task_token: str, decision: str) -> None:
        self.resumed.append((task_token, decision))


@pytest.mark.parametrize("approve", [True, False])
def test_a_decision_taken_before_the_notification_is_delivered_by_it(stack, approve):
    runtime = build_runtime(Settings.from_env())
    workflow = RecordingWorkflow()
    runtime.service._workflow_client = workflow
    service = runtime.service
    outcome = service.submit(
        stack_principal(stack), "demo-prod", "UPDATE orders SET amount = amount WHERE id = 11"
    )
    rid = outcome.request_id
    assert outcome.status == "pending_approval"

    # The vote lands before the state machine's Notify step stored its token (the console and
    # `gatehouse approve` show pending requests at once): there is nothing to answer yet.
    voted = service.vote("U_ALICE", rid, approve, "" if approve else "not now")
    assert voted.ok and voted.status == ("approved" if approve else "denied")
    assert workflow.resumed == []

    # Notify runs: it finds the decision and answers its own token with it, instead of waiting
    # for a vote that already came (and expiring, with the approval lost).
    service.notify(rid, "token-from-notify")

    assert workflow.resumed == [("token-from-notify", "approved" if approve else "denied")]
    assert service._requests.get(rid).status == ("approved" if approve else "denied")
