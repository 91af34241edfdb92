"""The impact preview on a real PostgreSQL server: what approvers see before they decide.

Given a database with a `customers` table (and a few tables that bring code along: a trigger, a
sequence), when a write is previewed by EXPLAIN or by a dry run, then the estimate, the affected
row count and the masked sample rows match what the statement would do, and the database is
exactly as it was: no row, no sequence, no setting changed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pg8000.native
import pytest

from gatehouse.classify import classify
from gatehouse.local.postgres import PostgresInfo
from gatehouse.masking.engine import Masker
from gatehouse.masking.profiles import load_profile
from gatehouse.preview import preview_statements

CUSTOMERS = 200

SCHEMA = (
    "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE,"
    " ssn text, balance int NOT NULL DEFAULT 0)",
    f"INSERT INTO customers (name, email, ssn, balance) SELECT 'person ' || g,"
    f" 'person' || g || '@example.org', '123-45-' || lpad(g::text, 4, '0'), g"
    f" FROM generate_series(1, {CUSTOMERS}) g",
    "CREATE TABLE ledger (id int PRIMARY KEY, amount int NOT NULL)",
    "CREATE SEQUENCE invoice_seq",
    "CREATE TABLE audited (id int PRIMARY KEY, note text)",
    "INSERT INTO audited VALUES (1, 'a'), (2, 'b')",
    "CREATE FUNCTION audited_touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$",
    "CREATE TRIGGER audited_t BEFORE UPDATE ON audited FOR EACH ROW EXECUTE FUNCTION audited_touch()",
    "ANALYZE",
)


@pytest.fixture(scope="module")
def database(postgres: PostgresInfo) -> Iterator[str]:
    name = f"gatehouse_preview_{secrets.token_hex(4)}"
    admin = postgres.connect()
    admin.run(f"CREATE DATABASE {name}")
    setup = postgres.connect(name)
    for statement in SCHEMA:
        setup.run(statement)
    setup.close()
    try:
        yield name
    finally:
        admin.run(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def con(postgres: PostgresInfo, database: str) -> Iterator[pg8000.native.Connection]:
    connection = postgres.connect(database)
    try:
        yield connection
    finally:
        connection.close()


MASKER = Masker(load_profile("pii-strict"), hash_key=b"preview-test-key" * 2)


def mask_rows(columns: Sequence[str], rows: list[list[Any]]) -> Sequence[Sequence[Any]]:
    return MASKER.mask_rows(columns, rows).rows


def preview(con: pg8000.native.Connection, sql: str, mode: str, **kw: Any) -> dict[str, Any]:
    statements = classify("postgres", sql).statements
    return preview_statements(
        con, statements, mode=mode, mask_rows=mask_rows, mask_text=MASKER.mask_text, **kw
    )


def snapshot(con: pg8000.native.Connection) -> list[Any]:
    """Everything a preview could change: every table's rows, the sequences, the settings."""
    return [
        con.run("SELECT * FROM customers ORDER BY id"),
        con.run("SELECT * FROM ledger ORDER BY id"),
        con.run("SELECT * FROM audited ORDER BY id"),
        con.run("SELECT last_value, is_called FROM invoice_seq"),
        con.run("SELECT last_value, is_called FROM customers_id_seq"),
        con.run("SHOW statement_timeout"),
        con.run("SHOW lock_timeout"),
    ]


# -- explain -----------------------------------------------------------------------------------------


def test_explain_estimates_the_rows_an_update_and_a_delete_would_change(
    con: pg8000.native.Connection,
) -> None:
    before = snapshot(con)

    answer = preview(con, "update customers set balance = 0 where id <= 40; delete from customers", "explain")

    update, delete = answer["statements"]
    assert (answer["mode"], answer["fallback"]) == ("explain", None)
    assert 30 <= update["estimated_rows"] <= 50
    assert update["plan"] == f"Update on customers -> Seq Scan on customers (rows={update['estimated_rows']})"
    assert delete["estimated_rows"] == CUSTOMERS
    assert delete["plan"] == f"Delete on customers -> Seq Scan on customers (rows={CUSTOMERS})"
    for entry in (update, delete):
        assert (entry["affected_rows"], entry["sample_rows"], entry["error"]) == (None, None, None)
    assert snapshot(con) == before


def test_explain_lists_statements_without_a_plan_and_goes_on_after_one_that_fails(
    con: pg8000.native.Connection,
) -> None:
    answer = preview(
        con, "create index on ledger (amount); update no_such_table set a = 1; delete from ledger", "explain"
    )

    ddl, broken, delete = answer["statements"]
    assert ddl["plan"] == "no plan: only queries and writes are planned (CREATE INDEX changes the schema)"
    assert ddl["error"] is None
    assert broken["error"] == '42P01: relation "no_such_table" does not exist'
    assert delete["plan"].startswith("Delete on ledger")
    assert delete["error"] is None


# -- dry run -----------------------------------------------------------------------------------------


def test_a_dry_run_counts_and_samples_what_the_update_would_change_then_undoes_it(
    con: pg8000.native.Connection,
) -> None:
    sql = "update customers set balance = balance + 1000 where id % 7 = 0"
    expected = con.run("SELECT count(*) FROM customers WHERE id % 7 = 0")[0][0]
    before = snapshot(con)

    answer = preview(con, sql, "dry_run")

    (entry,) = answer["statements"]
    assert (answer["mode"], answer["fallback"], entry["error"]) == ("dry_run", None, None)
    assert entry["affected_rows"] == expected == CUSTOMERS // 7
    sample = entry["sample_rows"]
    assert sample["columns"] == ["id", "name", "email", "ssn", "balance"]
    assert len(sample["rows"]) == 5
    for customer_id, name, email, ssn, balance in sample["rows"]:
        assert customer_id % 7 == 0
        assert balance == customer_id + 1000  # the new values, as the update would leave them
        # masked like any result: hashed names and emails, redacted SSNs
        assert name != f"person {customer_id}"
        assert "example.org" not in email
        assert "123-45" not in ssn
    assert entry["estimated_rows"] is not None
    assert entry["plan"].startswith("Update on customers")
    assert snapshot(con) == before


def test_a_dry_run_of_a_delete_and_of_dependent_statements_runs_them_in_order(
    con: pg8000.native.Connection,
) -> None:
    before = snapshot(con)

    answer = preview(
        con,
        "insert into ledger values (1, 10), (2, 20), (3, -5);"
        " update ledger set amount = amount * 2 where amount > 0;"
        " delete from customers where balance > 150",
        "dry_run",
    )

    insert, update, delete = answer["statements"]
    assert answer["mode"] == "dry_run"
    assert insert["affected_rows"] == 3
    assert insert["sample_rows"] == {"columns": ["id", "amount"], "rows": [[1, 10], [2, 20], [3, -5]]}
    # the update sees the rows the insert made, as the real command would
    assert update["affected_rows"] == 2
    assert update["sample_rows"]["rows"] == [[1, 20], [2, 40]]
    assert delete["affected_rows"] == CUSTOMERS - 150
    assert len(delete["sample_rows"]["rows"]) == 5
    assert snapshot(con) == before


def test_a_dry_run_reports_a_constraint_violation_and_stops_there(con: pg8000.native.Connection) -> None:
    before = snapshot(con)

    answer = preview(con, "insert into ledger values (7, 1), (7, 2); delete from ledger", "dry_run")

    failing, after = answer["statements"]
    assert answer["mode"] == "dry_run"
    assert failing["error"] == '23505: duplicate key value violates unique constraint "ledger_pkey"'
    assert failing["affected_rows"] is None
    assert after["error"] == "not run: an earlier statement failed"
    assert con.run("SELECT 1") == [[1]]  # the session is usable: the transaction was rolled back
    assert snapshot(con) == before


def test_a_dry_run_gives_up_quickly_on_a_row_another_session_holds(
    postgres: PostgresInfo, database: str, con: pg8000.native.Connection
) -> None:
    holder = postgres.connect(database)
    try:
        holder.run("START TRANSACTION")
        holder.run("SELECT * FROM customers WHERE id = 3 FOR UPDATE")
        started = time.monotonic()

        answer = preview(con, "update customers set balance = 0 where id between 1 and 5", "dry_run")

        elapsed = time.monotonic() - started
    finally:
        holder.close()
    (entry,) = answer["statements"]
    assert entry["error"] == "55P03: canceling statement due to lock timeout"
    assert entry["affected_rows"] is None
    assert elapsed < 1.5  # the lock wait is at most 500 ms, well inside the 2 s statement timeout


def test_a_dry_run_that_runs_too_long_is_cancelled(con: pg8000.native.Connection) -> None:
    before = snapshot(con)
    sql = "update customers set balance = (select count(*) from generate_series(1, 100000000)) where id = 1"
    started = time.monotonic()

    answer = preview(con, sql, "dry_run", timeout_ms=300)

    assert time.monotonic() - started < 2
    assert answer["statements"][0]["error"] == "57014: canceling statement due to statement timeout"
    assert snapshot(con) == before


# -- falling back to explain -------------------------------------------------------------------------


def test_nextval_in_the_text_falls_back_to_explain_and_the_sequence_does_not_move(
    con: pg8000.native.Connection,
) -> None:
    before = snapshot(con)

    answer = preview(con, "update customers set balance = nextval('invoice_seq') where id <= 3", "dry_run")

    assert answer["mode"] == "explain"
    assert answer["fallback"] == (
        "the statement calls nextval, which a rollback may not undo (nextval advances a sequence)"
    )
    (entry,) = answer["statements"]
    assert 1 <= entry["estimated_rows"] <= 5
    assert entry["affected_rows"] is None
    assert snapshot(con) == before


def test_an_insert_that_fills_a_serial_column_falls_back_and_the_sequence_does_not_move(
    con: pg8000.native.Connection,
) -> None:
    before = snapshot(con)

    answer = preview(con, "insert into customers (name) values ('new person')", "dry_run")

    assert answer["mode"] == "explain"
    assert answer["fallback"].startswith(
        "the default of \"customers\".id (nextval('customers_id_seq'::regclass)) may not be undone"
    )
    assert answer["statements"][0]["estimated_rows"] == 1
    assert snapshot(con) == before


def test_an_update_leaves_a_serial_column_alone_so_it_is_dry_run(con: pg8000.native.Connection) -> None:
    answer = preview(con, "update customers set name = 'x' where id = 9", "dry_run")

    assert (answer["mode"], answer["statements"][0]["affected_rows"]) == ("dry_run", 1)


@pytest.mark.parametrize(
    ("sql", "fallback"),
    [
        (
            "update audited set note = 'x'",
            '"audited" has triggers (audited_t) whose effects a rollback may not undo',
        ),
        (
            "select * from customers",
            "the statement is SELECT: only INSERT, UPDATE, DELETE and MERGE are dry-run",
        ),
        (
            "delete from ledger; drop table ledger",
            "statement 2 is DROP: only INSERT, UPDATE, DELETE and MERGE",
        ),
        (
            "update ledger set amount = dblink_exec('x')",
            "the statement calls dblink_exec, which a rollback may not undo",
        ),
        (
            "update ledger set amount = my_func(1)",
            "the statement calls my_func, which a rollback may not undo",
        ),
    ],
)
def test_what_a_rollback_cannot_undo_falls_back_to_explain_saying_why(
    con: pg8000.native.Connection, sql: str, fallback: str
) -> None:
    before = snapshot(con)

    answer = preview(con, sql, "dry_run")

    assert answer["mode"] == "explain"
    assert answer["fallback"].startswith(fallback)
    assert all(entry["affected_rows"] is None for entry in answer["statements"])
    assert snapshot(con) == before


def test_a_merge_is_counted_without_samples(con: pg8000.native.Connection) -> None:
    before = snapshot(con)
    sql = (
        "merge into ledger l using (select id, balance from customers where id <= 4) c on l.id = c.id"
        " when not matched then insert values (c.id, c.balance)"
    )

    answer = preview(con, sql, "dry_run")

    (entry,) = answer["statements"]
    assert (answer["mode"], entry["affected_rows"], entry["sample_rows"]) == ("dry_run", 4, None)
    assert snapshot(con) == before


def test_the_statement_text_and_errors_are_masked(con: pg8000.native.Connection) -> None:
    sql = (
        "update customers set email = 'carol@example.com' where id = 1;"
        " update ledger set amount = 'carol@example.com'"
    )

    answer = preview(con, sql, "explain")

    first, second = answer["statements"]
    assert first["text"].startswith("update customers set email = '")
    assert "carol@example.com" not in first["text"]
    assert second["error"].startswith("22P02: invalid input syntax for type integer")
    assert "carol@example.com" not in second["error"]


def test_a_write_with_its_own_ctes_is_dry_run_with_them(con: pg8000.native.Connection) -> None:
    before = snapshot(con)
    sql = (
        "with gone as (delete from ledger returning *),"
        " src as (select id, balance from customers where id <= 3)"
        " insert into ledger select id, balance from src"
    )

    answer = preview(con, sql, "dry_run")

    (entry,) = answer["statements"]
    assert (answer["mode"], entry["error"], entry["affected_rows"]) == ("dry_run", None, 3)
    assert entry["sample_rows"]["rows"] == [[1, 1], [2, 2], [3, 3]]
    assert snapshot(con) == before


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        (
            # the CTE's INSERT fills customers.id from its sequence; the top-level UPDATE does not
            "with x as (insert into customers (name) values ('new') returning id)"
            " update ledger set amount = amount where id in (select id from x)",
            "the default of \"customers\".id (nextval('customers_id_seq'::regclass)) may not be undone",
        ),
        (
            "with x as (update audited set note = note returning id)"
            " delete from ledger where id in (select id from x)",
            '"audited" has triggers (audited_t)',
        ),
    ],
)
def test_what_a_data_modifying_cte_writes_is_checked_like_the_statements_own_target(
    con: pg8000.native.Connection, sql: str, why: str
) -> None:
    before = snapshot(con)

    answer = preview(con, sql, "dry_run")

    assert answer["mode"] == "explain"
    assert answer["fallback"].startswith(why), answer["fallback"]
    assert snapshot(con) == before
