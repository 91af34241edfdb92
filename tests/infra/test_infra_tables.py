"""The DynamoDB tables: the names and keys gatehouse reads, on-demand, recoverable, encrypted."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gatehouse import names

if TYPE_CHECKING:
    from tests.infra.conftest import Synthesized


def _table(synthesized: Synthesized, table_name: str) -> dict:
    tables = synthesized.resources_of_type("AWS::DynamoDB::Table")
    [table] = [table for table in tables.values() if table["Properties"]["TableName"] == table_name]
    return table


@pytest.mark.parametrize(
    ("table_name", "key"),
    [
        (names.REQUESTS_TABLE, "request_id"),
        (names.CONNECTIONS_TABLE, "name"),
        (names.PRINCIPALS_TABLE, "principal_key"),
        (names.IDEMPOTENCY_TABLE, "id"),
    ],
)
def test_table_has_its_key_and_is_on_demand_recoverable_and_encrypted(
    synthesized: Synthesized, table_name: str, key: str
):
    table = _table(synthesized, table_name)
    props = table["Properties"]

    assert props["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": key, "AttributeType": "S"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["DeletionProtectionEnabled"] is True
    assert table["DeletionPolicy"] == "Retain"


def test_only_pending_requests_expire(synthesized: Synthesized):
    assert _table(synthesized, names.REQUESTS_TABLE)["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at",
        "Enabled": True,
    }
    for name in (names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE):
        assert "TimeToLiveSpecification" not in _table(synthesized, name)["Properties"]


def test_idempotency_records_expire_on_the_attribute_powertools_writes(synthesized: Synthesized):
    assert _table(synthesized, names.IDEMPOTENCY_TABLE)["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expiration",
        "Enabled": True,
    }


def test_the_api_function_may_lock_and_store_idempotency_records_but_not_delete_them(
    synthesized: Synthesized,
):
    tables = synthesized.resources_of_type("AWS::DynamoDB::Table")
    [key] = [k for k, t in tables.items() if t["Properties"]["TableName"] == names.IDEMPOTENCY_TABLE]
    actions = {
        action
        for policy in synthesized.resources_of_type("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if {"Fn::GetAtt": [key, "Arn"]} in _as_list(statement["Resource"])
        for action in _as_list(statement["Action"])
    }
    assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"} <= actions
    # A failed run's record is expired by an update, never deleted: the role deletes nothing.
    assert not {"dynamodb:DeleteItem", "dynamodb:Scan", "dynamodb:Query"} & actions


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]
