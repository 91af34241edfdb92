"""The Postgres executor against a real server: transactions, limits, failures."""

from __future__ import annotations

import json
import secrets
import threading
import time

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
    # Checked at COMMIT, not at the INSERT: the way to make COMMIT itself fail.
    db.run("CREATE TABLE tickets (code int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    db.run("INSERT INTO tickets VALUES (1)")
    db.run(f"GRANT SELECT, INSERT ON tickets TO {role}")
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

    with pytest.raises(AuditWriteError) as err:
        ex.run(
            conn,
            [Statement("DELETE FROM items WHERE id > 40", W)],
            timeout_ms=2000,
            max_rows=10,
            before_commit=recorder_down,
        )
    assert count(postgres, database) == 50
    assert err.value.code == "audit_unavailable" and err.value.command_sent


def test_any_error_of_the_hook_goes_up_unchanged_and_marked_as_sent(executor_and_conn, postgres, database):
    # An OSError from the recorder is the recorder's, not a lost database connection.
    ex, conn = executor_and_conn
    raised = ConnectionResetError("the log's endpoint hung up")

    def recorder_down(result):
        raise raised

    with pytest.raises(ConnectionResetError) as err:
        ex.run(
            conn,
            [Statement("DELETE FROM items WHERE id > 40", W)],
            timeout_ms=2000,
            max_rows=10,
            before_commit=recorder_down,
        )
    assert err.value is raised and err.value.command_sent is True
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
    assert not err.value.command_sent


def test_a_target_that_is_down_is_a_503(executor_and_conn):
    ex, conn = executor_and_conn
    down = Connection(**{**conn.__dict__, "port": free_port()})
    with pytest.raises(TargetUnavailableError) as err:
        ex.run(down, [select("SELECT 1")], timeout_ms=2000, max_rows=10)
    assert err.value.status == 503
    assert not err.value.command_sent


def test_a_refused_login_is_a_503_before_anything_was_sent(executor_and_conn, database):
    _, conn = executor_and_conn
    sm = boto3.client("secretsmanager")  # the fixture's moto is still active
    sm.create_secret(Name="wrong", SecretString=json.dumps({"username": database[1], "password": "wrong"}))
    ex = PostgresExecutor(SecretStore(sm))
    with pytest.raises(TargetUnavailableError) as err:
        ex.run(
            Connection(**{**conn.__dict__, "secret_id": "wrong"}),
            [select("SELECT 1")],
            timeout_ms=2000,
            max_rows=10,
        )
    assert not err.value.command_sent


def test_sql_errors_carry_their_sqlstate(executor_and_conn):
    ex, conn = executor_and_conn
    with pytest.raises(TargetError) as err:
        ex.run(conn, [select("SELECT * FROM no_such_table")], timeout_ms=2000, max_rows=10)
    assert err.value.sqlstate == "42P01"
    assert err.value.command_sent


def test_the_servers_detail_is_passed_on(executor_and_conn):
    ex, conn = executor_and_conn
    with pytest.raises(TargetError) as err:
        ex.run(conn, [Statement("INSERT INTO items VALUES (1, 'again')", W)], timeout_ms=2000, max_rows=10)
    assert err.value.sqlstate == "23505"
    assert err.value.detail == "Key (id)=(1) already exists."
    assert err.value.command_sent


def test_a_commit_that_fails_is_a_target_error_after_the_command_was_sent(
    executor_and_conn, postgres, database
):
    ex, conn = executor_and_conn
    recorded = []
    with pytest.raises(TargetError) as err:
        ex.run(
            conn,
            [Statement("INSERT INTO tickets VALUES (1)", W)],
            timeout_ms=2000,
            max_rows=10,
            before_commit=recorded.append,
        )
    assert err.value.sqlstate == "23505" and err.value.detail == "Key (code)=(1) already exists."
    assert err.value.command_sent
    assert len(recorded) == 1  # the statement itself had run: only COMMIT refused it


def test_a_connection_lost_mid_statement_is_a_503_after_the_command_was_sent(executor_and_conn, postgres):
    ex, conn = executor_and_conn
    stop = threading.Event()

    def terminate_the_backend():
        admin = postgres.connect()
        try:
            while not stop.is_set():
                killed = admin.run(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'gatehouse' AND wait_event = 'PgSleep'"
                )
                if killed:
                    return
                time.sleep(0.02)
        finally:
            admin.close()

    killer = threading.Thread(target=terminate_the_backend)
    killer.start()
    try:
        with pytest.raises(TargetUnavailableError) as err:
            ex.run(conn, [select("SELECT pg_sleep(10)")], timeout_ms=20_000, max_rows=10)
    finally:
        stop.set()
        killer.join()
    assert err.value.command_sent


def test_a_timeout_is_marked_as_sent(executor_and_conn):
    ex, conn = executor_and_conn
    with pytest.raises(StatementTimeoutError) as err:
        ex.run(conn, [select("SELECT pg_sleep(5)")], timeout_ms=200, max_rows=10)
    assert err.value.command_sent


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
    assert not err.value.command_sent


def test_copy_after_a_write_is_refused_before_the_write_is_sent(executor_and_conn, postgres, database):
    ex, conn = executor_and_conn
    with pytest.raises(BadRequestError) as err:
        ex.run(
            conn,
            [Statement("DELETE FROM items", W), Statement("COPY items TO STDOUT", R, command="copy")],
            timeout_ms=2000,
            max_rows=10,
        )
    assert err.value.code == "copy_not_supported" and not err.value.command_sent
    assert count(postgres, database) == 50


def test_results_name_each_columns_type_and_origin(executor_and_conn):
    ex, conn = executor_and_conn
    result = ex.run(
        conn, [select("SELECT id, id + 1 AS next FROM items WHERE id = 1")], timeout_ms=2000, max_rows=10
    )
    assert result.column_types == (23, 23)
    (origin, computed) = result.column_origins
    assert origin is not None and origin[1] == 1 and computed is None
