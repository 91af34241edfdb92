"""Bounded answers from the Postgres executor on a real server: every path that returns rows
respects the row limit and the byte budget while reading, and values the driver cannot decode
come back as the server's text."""

from __future__ import annotations

import json
import secrets
import tracemalloc
from decimal import Decimal

import boto3
import pytest
from moto import mock_aws

from gatehouse.classify.postgres import classify_sql
from gatehouse.exceptions import ResultTooLargeError
from gatehouse.models import Connection, QueryResult
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres import DEFAULT_MAX_BYTES, PostgresExecutor

MiB = 1024 * 1024
# Far below what loading would cost (the results below are 200 MB to 300 MB when loaded whole),
# far above what a bounded read needs (a few times the 4 MiB budget).
MEMORY_BOUND = 64 * MiB


@pytest.fixture(scope="module")
def database(postgres):
    admin = postgres.connect()
    name = f"bounded_{secrets.token_hex(4)}"
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
def run(aws_env, postgres, database):
    """run(sql, **limits) -> QueryResult, with the statements classified as the service does."""
    name, role, password = database
    with mock_aws():
        sm = boto3.client("secretsmanager")
        sm.create_secret(Name="conn", SecretString=json.dumps({"username": role, "password": password}))
        conn = Connection(
            name="t", kind="postgres", host=postgres.host, port=postgres.port, database=name, secret_id="conn"
        )
        executor = PostgresExecutor(SecretStore(sm))

        def _run(sql: str, *, max_rows: int = 1000, max_bytes: int = DEFAULT_MAX_BYTES, **kw) -> QueryResult:
            statements = classify_sql(sql).statements
            return executor.run(
                conn,
                statements,
                timeout_ms=kw.pop("timeout_ms", 20_000),
                max_rows=max_rows,
                max_bytes=max_bytes,
            )

        yield _run


def labels(postgres, database):
    db = postgres.connect(database[0])
    try:
        return db.run("SELECT label FROM items ORDER BY id")
    finally:
        db.close()


def peak_memory(call):
    """(result, peak bytes of Python allocations during the call): pg8000's buffers are Python bytes."""
    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# -- memory stays bounded while reading -----------------------------------------------------------


def test_a_cursor_fetch_all_of_a_million_and_a_half_rows_stops_at_the_byte_budget(run):
    sql = "DECLARE c CURSOR FOR SELECT g, md5(g::text) FROM generate_series(1, 1500000) g; FETCH ALL FROM c"
    result, peak = peak_memory(lambda: run(sql, max_rows=10_000_000))

    assert peak < MEMORY_BOUND
    assert result.truncated and result.truncated_reason == "byte_limit"
    # The rows kept are the first ones, in order, and fill the budget without passing it.
    assert 10_000 < result.row_count < 1_500_000 and result.row_count == len(result.rows)
    assert [r[0] for r in result.rows] == list(range(1, result.row_count + 1))
    assert len(json.dumps([list(r) for r in result.rows])) <= DEFAULT_MAX_BYTES


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT repeat('x', 100000000) FROM generate_series(1, 3)",
        "DECLARE c CURSOR FOR SELECT repeat('x', 100000000) FROM generate_series(1, 3); FETCH ALL FROM c",
        "VALUES (repeat('x', 100000000)), (repeat('x', 100000000)), (repeat('x', 100000000))",
    ],
    ids=["select", "cursor-fetch", "values"],
)
def test_three_hundred_megabyte_values_are_never_loaded(run, sql):
    result, peak = peak_memory(lambda: run(sql))

    assert peak < MEMORY_BOUND
    # Not one of the values fits the budget: the answer is empty and says why.
    assert result.rows == () and result.truncated and result.truncated_reason == "byte_limit"
    assert len(result.columns) == 1


def test_a_value_that_fits_is_kept_and_the_next_one_cuts_the_answer(run):
    result = run("SELECT g, repeat('y', 1000000) FROM generate_series(1, 10) g", max_bytes=3 * MiB)
    assert [r[0] for r in result.rows] == [1, 2, 3]
    assert result.rows[0][1] == "y" * 1_000_000
    assert result.truncated_reason == "byte_limit"


def test_the_budget_counts_json_escapes(run):
    # 300 KB of control characters are 1.8 MB once JSON-escaped: that is what leaves the Lambda.
    result = run("SELECT repeat(chr(1), 300000) FROM generate_series(1, 3)", max_bytes=MiB)
    assert result.rows == () and result.truncated_reason == "byte_limit"


def test_a_write_whose_returning_is_over_the_budget_is_rolled_back(run, postgres, database):
    before = labels(postgres, database)
    with pytest.raises(ResultTooLargeError) as err:
        run("UPDATE items SET label = label || 'z' RETURNING repeat(label, 100000)", max_bytes=MiB)
    assert err.value.code == "result_too_large" and 400 <= err.value.status < 500
    assert err.value.command_sent
    assert labels(postgres, database) == before


def test_an_error_text_too_large_to_read_is_refused(run):
    # The server's error quotes the whole 2 MB literal; reading it whole is what must not happen.
    with pytest.raises(ResultTooLargeError) as err:
        run("SELECT repeat('1', 2000000)::int")
    assert err.value.command_sent


# -- the row limit on every path that returns rows ------------------------------------------------

CURSOR = "DECLARE c SCROLL CURSOR FOR SELECT g FROM generate_series(1, 100) g; "


@pytest.mark.parametrize(
    ("sql", "first_rows", "truncated"),
    [
        (CURSOR + "FETCH FROM c", [(1,)], False),
        (CURSOR + "FETCH FORWARD 3 FROM c", [(1,), (2,), (3,)], False),
        (CURSOR + "FETCH FORWARD 5 FROM c", [(1,), (2,), (3,), (4,), (5,)], False),
        (CURSOR + "FETCH FORWARD 50 FROM c", [(1,), (2,), (3,), (4,), (5,)], True),
        (CURSOR + "FETCH ALL FROM c", [(1,), (2,), (3,), (4,), (5,)], True),
        (CURSOR + "FETCH 1000 c", [(1,), (2,), (3,), (4,), (5,)], True),
        (CURSOR + "MOVE 10 IN c; FETCH ALL FROM c", [(11,), (12,), (13,), (14,), (15,)], True),
        (CURSOR + "MOVE LAST IN c; FETCH BACKWARD ALL FROM c", [(99,), (98,), (97,), (96,), (95,)], True),
        (CURSOR + "MOVE LAST IN c; FETCH -20 FROM c", [(99,), (98,), (97,), (96,), (95,)], True),
        (CURSOR + "FETCH ABSOLUTE 42 FROM c", [(42,)], False),
        (
            'DECLARE "My C" CURSOR FOR SELECT g FROM generate_series(1, 9) g; FETCH ALL IN "My C"',
            [(1,), (2,), (3,), (4,), (5,)],
            True,
        ),
        # The cursor is not moved past what a statement asked for.
        (CURSOR + "FETCH 3 FROM c; FETCH 2 FROM c", [(4,), (5,)], False),
        ("VALUES (1), (2), (3), (4), (5), (6), (7)", [(1,), (2,), (3,), (4,), (5,)], True),
        ("TABLE items", [(i, f"item {i}") for i in range(1, 6)], True),
        ("SELECT id FROM items ORDER BY id", [(1,), (2,), (3,), (4,), (5,)], True),
    ],
)
def test_rows_past_the_limit_are_cut_and_the_answer_says_so(run, sql, first_rows, truncated):
    result = run(sql, max_rows=5)
    assert list(result.rows) == first_rows
    assert result.truncated is truncated
    assert result.truncated_reason == ("row_limit" if truncated else None)


def test_show_all_and_explain_respect_the_row_limit(run):
    shown = run("SHOW ALL", max_rows=5)
    assert len(shown.rows) == 5 and shown.truncated_reason == "row_limit"
    assert shown.columns == ("name", "setting", "description")

    plan = run("EXPLAIN SELECT * FROM items a JOIN items b USING (id) ORDER BY a.label", max_rows=2)
    assert len(plan.rows) == 2 and plan.truncated_reason == "row_limit"


def test_show_all_respects_the_byte_budget(run):
    result = run("SHOW ALL", max_bytes=2000)
    assert 0 < len(result.rows) < 50 and result.truncated_reason == "byte_limit"


def test_a_statement_over_the_budget_before_the_last_one_refuses_the_request(run):
    # Its rows are not the answer and the connection had to be dropped: the rest cannot run.
    with pytest.raises(ResultTooLargeError) as err:
        run("SELECT repeat('x', 10000000); SELECT 1")
    assert err.value.command_sent


def test_a_fetch_all_of_a_million_and_a_half_rows_stops_at_the_row_limit(run):
    result, peak = peak_memory(
        lambda: run("DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 1500000) g; FETCH ALL FROM c")
    )
    assert result.row_count == 1000 and result.truncated_reason == "row_limit"
    assert peak < 8 * MiB


def test_a_write_returning_more_rows_than_the_limit_commits_and_counts_every_row(run, postgres, database):
    result = run("UPDATE items SET label = label RETURNING id", max_rows=3)
    assert len(result.rows) == 3 and result.truncated_reason == "row_limit"
    assert result.row_count == 50  # every row the write changed, not only those shown


def test_a_result_within_both_limits_is_not_marked_truncated(run):
    result = run("SELECT id FROM items", max_rows=50)
    assert result.row_count == 50 and not result.truncated and result.truncated_reason is None


# -- values the driver cannot decode come back as their text -----------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("'24:00:00'::time", "24:00:00"),
        ("'[2:3]={1,2}'::int[]", "[2:3]={1,2}"),
        ("'infinity'::date", "infinity"),
        ("'infinity'::timestamp", "infinity"),
        ("'-infinity'::timestamptz", "-infinity"),
        ("'-infinity'::date", "-infinity"),
        ("'5874897-12-31'::date", "5874897-12-31"),
        ("10::numeric ^ 400", Decimal(10) ** 400),
        ("'NaN'::numeric", "NaN"),
        ("interval '1 month'", "1 mon"),
        ("interval '1 year 2 months 3 days 04:05:06'", "1 year 2 mons 3 days 04:05:06"),
        ("'12.34'::money", "$12.34"),
        ("B'101'::bit(3)", "101"),
        ("B'1101'::varbit", "1101"),
        ("ARRAY['24:00:00'::time, '01:00:00']", "{24:00:00,01:00:00}"),
        ("ARRAY[interval '1 month']", '{"1 mon"}'),
        ("ARRAY['infinity'::date]", ["infinity"]),
        ("ARRAY[B'101'::bit(3)]", "{101}"),
        ("ARRAY['12.34'::money]", ["$12.34"]),
        ("ROW(1, 'a', '24:00:00'::time)", ("1", "a", "24:00:00")),
        ("int4range(1, 5)", "[1,5)"),
    ],
)
def test_values_the_driver_cannot_decode_come_back_as_text(run, expression, expected):
    result = run(f"SELECT {expression} AS v")
    (value,) = result.rows[0]
    if isinstance(expected, str) and expected == "NaN":
        assert isinstance(value, Decimal) and value.is_nan()
    else:
        assert value == expected


def test_a_value_that_cannot_be_decoded_does_not_spoil_its_neighbours(run):
    result = run("SELECT 7 AS n, '24:00:00'::time AS t, DATE '2024-02-29' AS d")
    (n, t, d) = result.rows[0]
    assert n == 7 and t == "24:00:00" and d.isoformat() == "2024-02-29"


def test_a_binary_cursor_comes_back_as_hex_not_as_a_crash(run):
    result = run("DECLARE b BINARY CURSOR FOR SELECT 1::int4; FETCH ALL FROM b")
    assert result.rows == (("\\x00000001",),)


# -- what the server said about each column --------------------------------------------------------


def test_column_types_and_origins_come_from_the_row_description(run, postgres, database):
    db = postgres.connect(database[0])
    try:
        ((items_oid,),) = db.run("SELECT 'items'::regclass::oid")
    finally:
        db.close()
    result = run("SELECT id, label, upper(label) AS shout FROM items WHERE id = 1")
    assert result.column_types == (23, 25, 25)  # int4, text, text
    assert result.column_origins == ((items_oid, 1), (items_oid, 2), None)

    fetched = run("DECLARE c CURSOR FOR SELECT label FROM items; FETCH 2 FROM c")
    assert fetched.column_origins == ((items_oid, 2),)
