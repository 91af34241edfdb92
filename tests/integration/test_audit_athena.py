"""The named queries on real Athena against a deployed stack (opt-in: pytest -m aws, with credentials,
GATEHOUSE_LOG_BUCKET and the Athena workgroup / Glue database the stack created)."""

from __future__ import annotations

import os

import boto3
import pytest

from gatehouse import names
from gatehouse.audit import named_queries
from gatehouse.audit.cli import ENV_ATHENA_WORKGROUP, ENV_GLUE_DATABASE
from gatehouse.audit.events import FIELD_NAMES
from gatehouse.audit.query import AthenaAuditQuery
from gatehouse.audit.verify import verify_log

pytestmark = pytest.mark.aws


@pytest.fixture(scope="module")
def deployed() -> tuple[str, AthenaAuditQuery]:
    # Deselected by default (pyproject: -m "not aws"); asked for, it fails loudly without a stack.
    bucket = os.environ.get(names.ENV_LOG_BUCKET)
    if not bucket:
        pytest.fail(f"pytest -m aws needs a deployed stack: set {names.ENV_LOG_BUCKET} and AWS credentials")
    athena = AthenaAuditQuery(
        boto3.client("athena"),
        os.environ.get(ENV_ATHENA_WORKGROUP) or names.ATHENA_WORKGROUP,
        os.environ.get(ENV_GLUE_DATABASE) or names.GLUE_DATABASE,
    )
    return bucket, athena


def test_the_glue_table_has_the_event_columns(deployed):
    _, athena = deployed
    columns, _ = athena.run(f"SELECT * FROM {named_queries.TABLE} LIMIT 0")
    assert sorted(columns) == sorted([*FIELD_NAMES, "dt"])  # the SerDe maps JSON keys by name


@pytest.mark.parametrize("query", named_queries.NAMED_QUERIES, ids=lambda q: q.name)
def test_each_named_query_runs_on_athena(deployed, query):
    _, athena = deployed
    columns, _ = athena.run(query.example_sql())
    assert columns


def test_the_deployed_log_verifies(deployed):
    bucket, _ = deployed
    report = verify_log(boto3.client("s3"), bucket)
    assert report.ok, report.format()
