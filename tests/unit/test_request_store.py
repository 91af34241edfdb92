"""Request records in DynamoDB (moto in-process)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from gatehouse import names
from gatehouse.approvals import RequestRecord, RequestStore, RequestStoreUnavailableError, sql_sha256
from gatehouse.exceptions import NotFoundError


@pytest.fixture
def store(aws_env):
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(
            TableName=names.REQUESTS_TABLE,
            KeySchema=[{"AttributeName": "request_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "request_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield RequestStore(ddb, names.REQUESTS_TABLE, clock=lambda: 1_000_000.0)


def record(status: str = "executing", request_id: str = "r1") -> RequestRecord:
    sql = "UPDATE t SET x = 1"
    return RequestRecord(
        request_id=request_id,
        status=status,
        principal_arn="arn",
        principal_name="analyst",
        connection="demo-dev",
        command=sql,
        command_sha256=sql_sha256(sql),
        statement_class="write",
        decision="allow",
        policy_ids=["dev-read-write"],
    )


def test_a_record_reads_back_as_stored(store):
    store.put_new(record())
    got = store.get("r1")
    assert got.command == "UPDATE t SET x = 1" and got.command_sha256 == sql_sha256("UPDATE t SET x = 1")
    assert got.policy_ids == ["dev-read-write"] and got.created_at == 1_000_000


def test_a_request_id_is_used_once(store):
    store.put_new(record())
    with pytest.raises(RequestStoreUnavailableError):
        store.put_new(record())


def test_finishing_records_the_outcome_including_an_error(store):
    store.put_new(record())
    store.finish("r1", status="failed", duration_ms=1.5, error="target_error: boom")
    got = store.get("r1")
    assert (got.status, got.error, got.duration_ms) == ("failed", "target_error: boom", 1.5)


def test_only_an_executing_record_can_be_finished(store):
    store.put_new(record(status="pending_approval"))
    with pytest.raises(RequestStoreUnavailableError):
        store.finish("r1", status="executed", row_count=3)
    assert store.get("r1").status == "pending_approval"


def test_pending_records_expire_sooner_than_finished_ones(store):
    pending = store.put_new(record(status="pending_approval", request_id="p"))
    done = store.put_new(record(status="executing", request_id="d"))
    assert pending.expires_at < done.expires_at


def test_a_missing_record_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.get("nope")


# -- the approval flow's conditional writes ------------------------------------------------------


def test_a_vote_is_kept_once_per_approver(store):
    from gatehouse.approvals import TransitionError

    store.put_new(record("pending_approval"))
    updated = store.add_vote("r1", {"user": "U_ALICE", "name": "alice", "groups": ["dba"], "vote": "approve"})
    assert [v["user"] for v in updated.votes] == ["U_ALICE"] and updated.voters == ["U_ALICE"]
    with pytest.raises(TransitionError):
        store.add_vote("r1", {"user": "U_ALICE", "name": "alice", "groups": ["dba"], "vote": "approve"})
    second = store.add_vote("r1", {"user": "U_CAROL", "name": "carol", "groups": ["dba"], "vote": "approve"})
    assert [v["user"] for v in second.votes] == ["U_ALICE", "U_CAROL"]


def test_no_vote_counts_once_the_request_is_decided(store):
    from gatehouse.approvals import TransitionError

    store.put_new(record("pending_approval"))
    store.transition("r1", expect=("pending_approval",), status="expired")
    with pytest.raises(TransitionError):
        store.add_vote("r1", {"user": "U_ALICE", "name": "alice", "groups": ["dba"], "vote": "approve"})


def test_a_transition_has_exactly_one_winner(store):
    from gatehouse.approvals import TransitionError

    store.put_new(record("pending_approval"))
    store.transition("r1", expect=("pending_approval",), status="approved", decided_by="alice")
    store.transition("r1", expect=("approved",), status="executing")
    with pytest.raises(TransitionError):
        store.transition("r1", expect=("approved",), status="executing")  # the approval delivered twice
    got = store.get("r1")
    assert got.status == "executing" and got.decided_by == "alice"


def test_the_task_token_is_never_shown_to_the_agent(store):
    store.put_new(record("pending_approval"))
    store.set_notified("r1", task_token="t" * 3000, channel="C1", ts="1.2")
    view = store.get("r1").public_view()
    assert "task_token" not in view and "slack_ts" not in view and "voters" not in view
