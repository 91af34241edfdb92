"""The Postgres executor against a real server: transactions, limits, failures."""

from __future__ import annotations

import json
import secrets

import boto3
import pytest
from moto import mock_aws

from gatehouse.exceptions import (
    AuditWriteError,
    BadRequestError,
    StatementTimeoutError,
    TargetError,
    TargetUnavailableError,
)
from gatehouse.local.postgres import free_port
from gatehouse.models import Connection, Statement, StatementClass
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres import PostgresExecutor

R, W = StatementClass.READ, StatementClass.WRITE


@pytest.fixture(scope="module")
def database(postgres):
    admin = postgres.connect()
    name = f"exec_{secrets.token_hex(4)}"
    role, password = f"r_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    admin.run(f'CREATE DATABASE "{name}"')
    admin.run(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    admin.close()
    db = postgres.connect(name)
    db.run("CREATE TABLE items (id int primary key, label text)")
    db.run("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
    db.run(f"GRANT SELECT, INSERT, UPDATE, DELETE ON items TO {role}")
    db.close()
    return name, role, password


@pytest.fixture
def executor_and_conn(aws_env, postgres, database):
    name, role, password = database
    with mock_aws():
        sm = boto3.client("secretsmanager")
        sm.create_secret(Name="conn", SecretString=json.dumps({"username": role, "password": password}))
        conn = Connection(
            name="t", kind="postgres", host=postgres.host, port=postgres.port, database=name, secret_id="conn"
        )
        yield PostgresExecutor(SecretStore(sm)), conn


def count(postgres, database):
    db = postgres.connect(database[0])
    try:
        return db.run("SELECT count(*) FROM items")[0][0]
    finally:
        db.close()


def select(text: str) -> Statement:
    return Statement(text, R, command="select")


def test_a_read_returns_columns_and_rows(executor_and_conn):
    ex, conn = executor_and_conn
    result = ex.run(
        conn,
        [select("SELECT id, label FROM items WHERE id <= 3 ORDER BY id")],
        timeout_ms=2000,
        max_rows=100,
    )
    assert result.columns == ("id", "label")
    assert result.rows == ((1, "item 1"), (2, "item 2"), (3, "item 3"))
    assert result.row_count == 3 and not result.truncated


def test_the_row_limit_truncates_and_says_so(executor_and_conn):
    ex, conn = executor_and_conn
    result = ex.run(conn, [select("SELECT id FROM items ORDER BY id")], timeout_ms=2000, max_rows=10)
    assert result.row_count == 10 and result.truncated
    assert result.rows[-1] == (10,)


def test_reads_run_in_a_read_only_transaction(executor_and_conn, postgres, database):
    # Defence in depth: even a write mislabelled as a read cannot change anything.
    ex, conn = executor_and_conn
    with pytest.raises(TargetError) as err:
        ex.run(conn, [Statement("DELETE FROM items", R)], timeout_ms=2000, max_rows=10)
    assert err.value.sqlstate == "25006"  # read_only_sql_transaction
    assert count(postgres, database) == 50


def test_a_statement_over_the_timeout_is_cancelled(executor_and_conn):
    ex, conn = executor_and_conn
    with pytest.raises(StatementTimeoutError):
        ex.run(conn, [select("SELECT pg_sleep(5)")], timeout_ms=200, max_rows=10)


def test_a_failed_record_rolls_the_write_back(executor_and_conn, postgres, database):
    ex, conn = executor_and_conn

    def recorder_down(result):
        raise AuditWriteError("log unavailable")

    with pytest.raises(AuditWriteError):
        ex.run(
            conn,
            [Statement("DELETE FROM items WHERE id > 40", W)],
            timeout_ms=2000,
            max_rows=10,
            before_commit=recorder_down,
        )
    assert count(postgres, database) == 50


def test_a_write_commits_and_reports_its_row_count(executor_and_conn, postgres, database):
    ex, conn = executor_and_conn
    result = ex.run(
        conn, [Statement("UPDATE items SET label = 'x' WHERE id <= 2", W)], timeout_ms=2000, max_rows=10
    )
    assert result.row_count == 2


def test_transaction_control_in_the_text_is_refused(executor_and_conn):
    ex, conn = executor_and_conn
    with pytest.raises(BadRequestError) as err:
        ex.run(
            conn,
            [Statement("COMMIT", StatementClass.TRANSACTION), select("SELECT 1")],
            timeout_ms=2000,
            max_rows=10,
        )
    assert err.value.code == "transaction_control_not_supported"


def test_a_target_that_is_down_is_a_503(executor_and_conn):
    ex, conn = executor_and_conn
    down = Connection(**{**conn.__dict__, "port": free_port()})
    with pytest.raises(TargetUnavailableError) as err:
        ex.run(down, [select("SELECT 1")], timeout_ms=2000, max_rows=10)
    assert err.value.status == 503


def test_sql_errors_carry_their_sqlstate(executor_and_conn):
    ex, conn = executor_and_conn
    with pytest.raises(TargetError) as err:
        ex.run(conn, [select("SELECT * FROM no_such_table")], timeout_ms=2000, max_rows=10)
    assert err.value.sqlstate == "42P01"


def test_reads_that_cannot_be_cursors_still_run(executor_and_conn):
    ex, conn = executor_and_conn
    result = ex.run(
        conn, [Statement("SHOW statement_timeout", R, command="variableshow")], timeout_ms=2000, max_rows=10
    )
    assert result.rows == (("2s",),)


def test_copy_is_refused_rather_than_streamed_past_masking(executor_and_conn):
    ex, conn = executor_and_conn
    with pytest.raises(BadRequestError) as err:
        ex.run(conn, [Statement("COPY items TO STDOUT", R, command="copy")], timeout_ms=2000, max_rows=10)
    assert err.value.code == "copy_not_supported"
