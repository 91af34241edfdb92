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
