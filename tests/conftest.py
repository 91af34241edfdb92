"""Fixtures shared by every test folder: a real throwaway Postgres and in-process moto."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gatehouse.local.postgres import PostgresInfo, ThrowawayPostgres

REGION = "us-east-1"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresInfo]:
    """One real PostgreSQL server for the whole run (started as an unprivileged user under root)."""
    server = ThrowawayPostgres()
    info = server.start()
    try:
        yield info
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials so nothing can reach a real AWS account."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_DEV", "false")
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
