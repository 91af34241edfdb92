"""The whole local stack with the real API handler, for tests that go through the front door."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from requests_aws4auth import AWS4Auth

from gatehouse.client import GatehouseClient
from gatehouse.local.postgres import PostgresInfo
from gatehouse.local.stack import LocalStack


@dataclass
class RunningStack:
    stack: LocalStack
    state: dict[str, Any]

    @property
    def postgres(self) -> PostgresInfo:
        info = self.stack.postgres
        assert info is not None
        return info

    def client(self, agent: str = "analyst") -> GatehouseClient:
        keys = self.state["agents"][agent]
        auth = AWS4Auth(keys["access_key_id"], keys["secret_access_key"], self.state["region"], "execute-api")
        return GatehouseClient(self.state["api"], auth)

    def aws(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.state["aws"],
            region_name=self.state["region"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def db(self, database: str) -> Any:
        """A superuser connection to a demo database, to check what really changed."""
        return self.postgres.connect(database)


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # Module scope: the stack points this process's AWS environment at its moto server while
    # it runs, so it must not overlap tests that use in-process moto.
    stack = LocalStack(state_dir=tmp_path_factory.mktemp("gatehouse-state"))
    state = stack.up()
    try:
        yield RunningStack(stack, state)
    finally:
        stack.down()
