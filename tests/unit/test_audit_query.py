"""Named queries (rendering, quoting) and the Athena backend's polling, against moto."""

from __future__ import annotations

import re

import boto3
import pytest
from moto import mock_aws
from moto.athena.models import QueryResults, athena_backends
from moto.moto_api import state_manager

from gatehouse import names
from gatehouse.audit import events, named_queries
from gatehouse.audit.named_queries import NAMED_QUERIES, ParamKind, normalize_time, render, sql_literal
from gatehouse.audit.query import AthenaAuditQuery, AuditQueryError, run_named

# -- named queries -----------------------------------------------------------------------------


def test_the_auditor_questions_are_there():
    assert {q.name for q in NAMED_QUERIES} >= {
        "activity_on_connection",
        "changes_with_approvers",
        "denied_by_agent",
        "sessions_touching_relation",
    }
    assert len({q.name for q in NAMED_QUERIES}) == len(NAMED_QUERIES)


@pytest.mark.parametrize("query", NAMED_QUERIES, ids=lambda q: q.name)
def test_each_query_declares_exactly_the_placeholders_it_uses(query):
    used = set(re.findall(r"\{([a-z_]+)\}", query.sql))
    assert used == {p.name for p in query.params}
    assert query.description and named_queries.TABLE in query.sql


@pytest.mark.parametrize("query", NAMED_QUERIES, ids=lambda q: q.name)
def test_each_query_has_a_runnable_example_and_reads_only_schema_columns(query):
    sql = query.example_sql()
    assert "{" not in sql and "}" not in sql
    # Qualified column references name real columns (the partition column dt included).
    known = set(events.FIELD_NAMES) | {"dt", "relation", "approvers", "approved_at"}
    for column in re.findall(r"\b[ewra]\.\"?([a-z_]+)\"?", sql):
        assert column in known, column


def test_parameters_become_quoted_literals():
    sql = render("activity_on_connection", {"connection": "o'brien'; DROP TABLE x; --"})
    assert "connection = 'o''brien''; DROP TABLE x; --'" in sql
    assert sql_literal("back\\slash") == "'back\\slash'"  # neither engine treats backslash as an escape
    with pytest.raises(ValueError, match="control"):
        sql_literal("a\x00b")


def test_times_are_normalised_to_the_log_format_and_have_defaults():
    assert normalize_time("2026-11-03") == "2026-11-03T00:00:00.000Z"
    assert normalize_time("2026-11-03T10:00:00+01:00") == "2026-11-03T09:00:00.000Z"
    assert normalize_time("2026-11-03T09:00:00.5Z") == "2026-11-03T09:00:00.500Z"
    assert normalize_time("2026-11-03 09:00") == "2026-11-03T09:00:00.000Z"
    with pytest.raises(ValueError, match="not a date"):
        normalize_time("last tuesday")
    sql = render("denied_by_agent", {"since": "2026-11-01"})
    assert "\"time\" >= '2026-11-01T00:00:00.000Z'" in sql
    assert "\"time\" < '9999-12-31T23:59:59.999Z'" in sql
    assert all(p.kind is ParamKind.TIME for p in named_queries.get("denied_by_agent").params)


def test_missing_and_unknown_parameters_are_refused():
    with pytest.raises(ValueError, match="needs --param connection"):
        render("activity_on_connection", {})
    with pytest.raises(ValueError, match="takes no parameter"):
        render("denied_by_agent", {"agent": "analyst"})
    with pytest.raises(KeyError, match="no named query"):
        named_queries.get("everything")


def test_environment_defaults_to_prod():
    assert "w.connection_env = 'prod'" in render("changes_with_approvers", {})


# -- Athena --------------------------------------------------------------------------------------


@pytest.fixture
def athena(aws_env):
    with mock_aws():
        client = boto3.client("athena")
        client.create_work_group(
            Name=names.ATHENA_WORKGROUP,
            Configuration={"ResultConfiguration": {"OutputLocation": "s3://athena-results/"}},
        )
        yield client
    state_manager.unset_transition("athena::execution")


class Sleeps:
    def __init__(self):
        self.count = 0

    def __call__(self, seconds):
        self.count += 1


def queue_result(rows, columns):
    data = [{"Data": [{"VarCharValue": c["Name"]} for c in columns]}]
    data += [{"Data": [{} if v is None else {"VarCharValue": v} for v in row]} for row in rows]
    athena_backends["123456789012"]["us-east-1"].query_results_queue.append(
        QueryResults(rows=data, column_info=columns)
    )


def test_athena_backend_polls_until_the_query_succeeds(athena):
    state_manager.set_transition(
        model_name="athena::execution", transition={"progression": "manual", "times": 2}
    )
    queue_result(
        [["analyst", "3", "1.5", None]],
        [
            {"Name": "principal_name", "Type": "varchar"},
            {"Name": "denied", "Type": "bigint"},
            {"Name": "ms", "Type": "double"},
            {"Name": "approvers", "Type": "array"},
        ],
    )
    sleeps = Sleeps()
    backend = AthenaAuditQuery(athena, names.ATHENA_WORKGROUP, names.GLUE_DATABASE, sleep=sleeps)

    columns, rows = run_named(backend, "denied_by_agent")

    assert sleeps.count >= 2  # QUEUED, RUNNING, then SUCCEEDED
    assert columns == ["principal_name", "denied", "ms", "approvers"]
    assert rows == [("analyst", 3, 1.5, None)]
    execution = athena.list_query_executions(WorkGroup=names.ATHENA_WORKGROUP)["QueryExecutionIds"]
    detail = athena.get_query_execution(QueryExecutionId=execution[0])["QueryExecution"]
    assert detail["QueryExecutionContext"]["Database"] == names.GLUE_DATABASE
    assert "FROM gatehouse_events" in detail["Query"]


def test_athena_backend_with_moto_returns_no_rows(athena):
    assert AthenaAuditQuery(athena, sleep=Sleeps()).run("SELECT 1") == ([], [])


class FailingAthena:
    def __init__(self, state, reason="SYNTAX_ERROR: line 1:8: Column 'nope' cannot be resolved"):
        self.state, self.reason, self.stopped = state, reason, []

    def start_query_execution(self, **kwargs):
        return {"QueryExecutionId": "q-1"}

    def get_query_execution(self, QueryExecutionId):
        return {"QueryExecution": {"Status": {"State": self.state, "StateChangeReason": self.reason}}}

    def stop_query_execution(self, QueryExecutionId):
        self.stopped.append(QueryExecutionId)


def test_a_failed_athena_query_raises_with_its_reason():
    with pytest.raises(AuditQueryError, match="cannot be resolved"):
        AthenaAuditQuery(FailingAthena("FAILED"), sleep=Sleeps()).run("SELECT nope FROM gatehouse_events")


def test_a_slow_athena_query_is_stopped_at_the_timeout():
    clock = iter(range(0, 1000, 10))
    athena = FailingAthena("RUNNING")
    backend = AthenaAuditQuery(athena, timeout_s=30, sleep=Sleeps(), monotonic=lambda: next(clock))
    with pytest.raises(AuditQueryError, match="timed out"):
        backend.run("SELECT 1")
    assert athena.stopped == ["q-1"]
