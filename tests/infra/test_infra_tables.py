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
