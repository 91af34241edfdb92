"""The registry's short-lived cache: how long a removed or changed entry can still be used (moto)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from gatehouse import names
from gatehouse.exceptions import UnknownConnectionError, UnknownPrincipalError
from gatehouse.registry import CACHE_SECONDS, Registry

AGENT_KEY = "iam:arn:aws:iam::123456789012:user/gatehouse-agent-analyst"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ddb(aws_env):
    with mock_aws():
        client = boto3.client("dynamodb")
        for table, key in ((names.CONNECTIONS_TABLE, "name"), (names.PRINCIPALS_TABLE, "principal_key")):
            client.create_table(
                TableName=table,
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        yield client


def put_agent(ddb, team: str = "data") -> None:
    ddb.put_item(
        TableName=names.PRINCIPALS_TABLE,
        Item={
            "principal_key": {"S": AGENT_KEY},
            "name": {"S": "analyst"},
            "kind": {"S": "agent"},
            "attributes": {"M": {"team": {"S": team}}},
        },
    )


def remove_agent(ddb) -> None:
    ddb.delete_item(TableName=names.PRINCIPALS_TABLE, Key={"principal_key": {"S": AGENT_KEY}})


def put_connection(ddb, env: str = "dev") -> None:
    ddb.put_item(
        TableName=names.CONNECTIONS_TABLE,
        Item={
            "name": {"S": "demo-dev"},
            "kind": {"S": "postgres"},
            "secret_id": {"S": "gatehouse/connections/demo-dev"},
            "attributes": {"M": {"env": {"S": env}}},
        },
    )


def cached_registry(ddb, clock: Clock) -> Registry:
    return Registry(
        ddb, names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE, cache_seconds=CACHE_SECONDS, clock=clock
    )


def test_a_removed_agent_stops_working_within_the_cache_bound(ddb):
    # Given an agent a warm process has just looked up
    clock = Clock()
    put_agent(ddb)
    registry = cached_registry(ddb, clock)
    assert registry.principal(AGENT_KEY).name == "analyst"

    # When it is removed from the registry
    remove_agent(ddb)

    # Then the process may still accept it until the bound, and refuses it from then on
    clock.now += CACHE_SECONDS - 0.1
    assert registry.principal(AGENT_KEY).name == "analyst"
    clock.now += 0.1
    with pytest.raises(UnknownPrincipalError):
        registry.principal(AGENT_KEY)


def test_using_an_entry_does_not_extend_its_life(ddb):
    clock = Clock()
    put_agent(ddb)
    registry = cached_registry(ddb, clock)
    registry.principal(AGENT_KEY)
    remove_agent(ddb)

    # Requests every second keep hitting the entry, but its age counts from the read.
    for _ in range(int(CACHE_SECONDS) - 1):
        clock.now += 1
        registry.principal(AGENT_KEY)
    clock.now += 1
    with pytest.raises(UnknownPrincipalError):
        registry.principal(AGENT_KEY)


def test_a_changed_connection_is_seen_within_the_bound(ddb):
    clock = Clock()
    put_connection(ddb, env="dev")
    registry = cached_registry(ddb, clock)
    assert registry.get_connection("demo-dev").attributes["env"] == "dev"

    # The connection is reclassified as production: policy must see it within the bound.
    put_connection(ddb, env="prod")
    clock.now += CACHE_SECONDS
    assert registry.get_connection("demo-dev").attributes["env"] == "prod"


def test_a_newly_added_agent_or_connection_works_at_once(ddb):
    # A lookup that found nothing is not remembered: onboarding needs no wait.
    clock = Clock()
    registry = cached_registry(ddb, clock)
    with pytest.raises(UnknownPrincipalError):
        registry.principal(AGENT_KEY)
    with pytest.raises(UnknownConnectionError):
        registry.get_connection("demo-dev")

    put_agent(ddb)
    put_connection(ddb)

    assert registry.principal(AGENT_KEY).name == "analyst"
    assert registry.get_connection("demo-dev").kind == "postgres"


def test_without_a_cache_a_removal_takes_effect_at_once(ddb):
    put_agent(ddb)
    registry = Registry(ddb, names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE)
    registry.principal(AGENT_KEY)

    remove_agent(ddb)

    with pytest.raises(UnknownPrincipalError):
        registry.principal(AGENT_KEY)
