"""Warm target sessions on a real server: reused by one request at a time, and nothing a request
leaves in its session (settings, role, temporary tables, locks, cursors, prepared statements,
LISTENs) reaches the next one."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator

import boto3
import pytest
from moto import mock_aws

from gatehouse.classify.postgres import classify_sql
from gatehouse.exceptions import TargetError
from gatehouse.models import Connection, QueryResult
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres import PostgresExecutor, TargetPool

Run = Callable[..., QueryResult]


@pytest.fixture(scope="module")
def database(postgres):
    admin = postgres.connect()
    name = f"pool_{secrets.token_hex(4)}"
    role, password = f"r_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    other = f"{role}_other"
    admin.run(f'CREATE DATABASE "{name}"')
    admin.run(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    admin.run(f"CREATE ROLE {other} NOLOGIN")
    admin.run(f"GRANT {other} TO {role}")
    admin.close()
    db = postgres.connect(name)
    db.run("CREATE TABLE items (id int primary key, label text)")
    db.run("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5) g")
    db.run(f"GRANT SELECT, INSERT, UPDATE, DELETE ON items TO {role}")
    db.run(f'GRANT CREATE, TEMPORARY ON DATABASE "{name}" TO {role}')
    db.close()
    return name, role, password


@pytest.fixture
def pool() -> Iterator[TargetPool]:
    pool = TargetPool()
    yield pool
    pool.close()


@pytest.fixture
def run(aws_env, postgres, database, pool) -> Iterator[Run]:
    """run(sql) -> QueryResult through a pooled executor, the statements classified as the service does."""
    name, role, password = database
    with mock_aws():
        sm = boto3.client("secretsmanager")
        sm.create_secret(Name="conn", SecretString=json.dumps({"username": role, "password": password}))
        conn = Connection(
            name="t", kind="postgres", host=postgres.host, port=postgres.port, database=name, secret_id="conn"
        )
        # No secret cache: a rotated password is seen by the next request.
        executor = PostgresExecutor(SecretStore(sm, cache_seconds=0), pool=pool)

        def _run(sql: str) -> QueryResult:
            return executor.run(conn, classify_sql(sql).statements, timeout_ms=5000, max_rows=100)

        yield _run


def backend(run: Run) -> int:
    return int(run("SELECT pg_backend_pid()").rows[0][0])


def test_consecutive_requests_reuse_one_warm_session(run, pool):
    first = backend(run)

    assert backend(run) == first
    assert run("SELECT count(*) FROM items").rows == ((5,),)
    assert pool.idle_count == 1


def test_what_a_request_leaves_in_its_session_never_reaches_the_next(run, database, postgres):
    name, role, _ = database
    # Given a request that leaves state behind in its session, in every kind Postgres keeps
    pid = backend(run)
    run(
        "SET application_name = 'left-behind'; SET search_path = pg_catalog; "
        f"SET ROLE {role}_other; RESET ROLE; SET work_mem = '64kB'"
    )
    run("CREATE TEMP TABLE scratch AS SELECT 1 AS x")
    run("SELECT pg_advisory_lock(424242)")
    run("PREPARE leftover AS SELECT 1")
    run("DECLARE held CURSOR WITH HOLD FOR SELECT 1")
    run("LISTEN gatehouse_pool_test")
    run(f"SET ROLE {role}_other")

    # When the next request runs on the same session
    result = run(
        "SELECT pg_backend_pid(), current_user, current_setting('application_name'), "
        "current_setting('work_mem'), current_setting('search_path'), to_regclass('pg_temp.scratch'), "
        "(SELECT count(*) FROM pg_prepared_statements), (SELECT count(*) FROM pg_cursors), "
        "(SELECT count(*) FROM pg_listening_channels())"
    )

    # Then it starts from a fresh session's state, as the connection's own role
    (row,) = result.rows
    assert row[0] == pid
    assert row[1:5] == (role, "gatehouse", "4MB", '"$user", public')
    assert row[5:] == (None, 0, 0, 0)
    # and no lock outlived the request that took it
    admin = postgres.connect(name)
    try:
        assert admin.run("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [[0]]
    finally:
        admin.close()


def test_a_session_the_server_dropped_is_replaced_and_the_request_still_runs(run, database, postgres):
    name, _, _ = database
    pid = backend(run)
    admin = postgres.connect(name)
    try:
        assert admin.run("SELECT pg_terminate_backend(:p)", p=pid) == [[True]]
    finally:
        admin.close()

    assert run("SELECT count(*) FROM items").rows == ((5,),)
    assert backend(run) != pid


def test_after_a_failed_statement_the_next_request_runs_normally(run):
    pid = backend(run)
    with pytest.raises(TargetError):
        run("SELECT * FROM no_such_table")

    # Not "current transaction is aborted": the failed request's session was not kept.
    assert run("SELECT label FROM items WHERE id = 2").rows == (("item 2",),)
    assert backend(run) != pid


def test_requests_at_the_same_time_never_share_a_session(run, pool):
    pids: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            pids.append(int(run("SELECT pg_backend_pid(), pg_sleep(0.3)").rows[0][0]))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    assert len(set(pids)) == 4
    assert pool.idle_count == 2  # bounded: the others were logged out


def test_a_rotated_password_logs_in_afresh(run, database, postgres):
    _, role, _ = database
    pid = backend(run)
    new_password = secrets.token_urlsafe(16)
    admin = postgres.connect()
    try:
        admin.run(f"ALTER ROLE {role} PASSWORD '{new_password}'")
        boto3.client("secretsmanager").put_secret_value(
            SecretId="conn", SecretString=json.dumps({"username": role, "password": new_password})
        )

        # The warm session logged in with the old password: the next request logs in with the new one.
        assert backend(run) != pid
    finally:
        admin.close()
