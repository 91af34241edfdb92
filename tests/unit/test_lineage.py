"""Lineage on PostgreSQL's parse tree against a catalog snapshot (no server needed)."""

from __future__ import annotations

import pytest

from gatehouse.lineage import Catalog, CatalogCache, Flow, LineageEngine, Relation
from gatehouse.masking import Strategy, load_profile
from gatehouse.masking.plan import UNDETERMINED, plan_columns, protected_names

CUSTOMERS = Relation(
    oid=100,
    schema="public",
    name="customers",
    kind="r",
    columns=("id", "name", "email", "phone", "card_number", "ssn", "notes"),
    attnums=(1, 2, 3, 4, 5, 6, 7),
)
ORDERS = Relation(
    101, "public", "orders", "r", ("id", "customer_id", "amount", "status"), attnums=(1, 2, 3, 4)
)
PEOPLE = Relation(
    102, "public", "people", "v", ("id", "who", "mail"),
    view_sql=" SELECT customers.id, customers.name AS who, upper(customers.email) AS mail FROM customers;",
)  # fmt: skip
SHADOW = Relation(103, "app", "customers", "r", ("id", "ssn"), attnums=(1, 2))
ACTIVITY = Relation(200, "pg_catalog", "pg_stat_activity", "v", ("pid", "usename", "query"))
CATALOG = Catalog.build([CUSTOMERS, ORDERS, PEOPLE, SHADOW, ACTIVITY], ["pg_catalog", "public"])
PROFILE = load_profile("pii-strict")


def trace(sql: str, catalog: Catalog = CATALOG):
    return LineageEngine().trace(sql, catalog)


def masked(sql: str, count: int) -> list[tuple[str, str, str] | None]:
    """(rule, strategy, reason) per output column, or None where no rule applies."""
    flows = trace(sql)[-1].columns(count)
    names = [f"c{i}" for i in range(count)]
    return [p and (p.rule, p.strategy.value, p.reason) for p in plan_columns(PROFILE, names, flows)]


def test_an_alias_keeps_the_source_and_its_strategy():
    assert masked("SELECT name AS who, id FROM customers", 2) == [("lineage", "hash", "customers.name"), None]


def test_a_computed_value_gets_the_strictest_treatment_and_names_the_transformation():
    [(rule, strategy, reason)] = masked("SELECT reverse(ssn) FROM customers", 1)
    assert (rule, strategy, reason) == ("lineage", "redact", "customers.ssn via reverse()")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'x' || ssn FROM customers",
        "SELECT md5(ssn) FROM customers",
        "SELECT translate(card_number, ' -', '')::bigint FROM customers",
        "SELECT string_agg(name, ' | ') FROM customers",
        "SELECT CASE WHEN true THEN email END FROM customers",
        "SELECT COALESCE(phone, '') FROM customers",
        "SELECT (SELECT ssn FROM customers LIMIT 1)::text || ''",
        "SELECT x FROM customers c, LATERAL (SELECT c.ssn || '' AS x) l",
        "SELECT to_json(c) FROM customers c",
        "SELECT c FROM customers c",
        "SELECT c.row_to_json FROM customers c",
        "SELECT ARRAY[ssn] FROM customers",
        "SELECT json_build_object('a', name) FROM customers",
        "SELECT format('%s', phone) FROM customers",
        "SELECT xmlelement(name x, ssn) FROM customers",
        "SELECT lag(ssn) OVER () FROM customers",
        "SELECT mail FROM people",
    ],
)
def test_every_form_of_computation_is_masked(sql):
    [plan] = masked(sql, 1)
    assert plan is not None and plan[1] == "redact", plan


def test_a_cte_that_shadows_a_table_is_traced_to_the_real_table():
    sql = "WITH customers AS (SELECT id, ssn AS notes FROM customers) SELECT notes FROM customers"
    assert masked(sql, 1) == [("lineage", "redact", "customers.ssn")]


def test_star_and_table_star_expand_with_each_columns_own_rule():
    plans = masked("SELECT c.* FROM customers c", 7)
    assert plans[0] is None and plans[6] is None
    assert [p and p[1] for p in plans[1:6]] == ["hash", "hash", "partial", "partial", "redact"]


def test_a_field_of_a_whole_row_is_that_column():
    assert masked("SELECT (c).email FROM customers c", 1) == [("lineage", "hash", "customers.email")]


def test_set_operations_take_the_strictest_strategy_of_their_branches():
    [(rule, strategy, _)] = masked("SELECT name FROM customers UNION SELECT ssn FROM customers", 1)
    assert (rule, strategy) == ("lineage", "redact")


def test_views_are_traced_through_their_definition():
    assert masked("SELECT who, id FROM people", 2) == [("lineage", "hash", "customers.name"), None]


def test_search_path_decides_which_table_a_name_means():
    other = Catalog.build(CATALOG.relations.values(), ["pg_catalog", "app", "public"])
    flows = LineageEngine().trace("SELECT ssn FROM customers", other)[-1].columns(1)
    assert flows[0].sources == frozenset({"app.customers.ssn"})


def test_unprotected_outputs_get_no_rule_whatever_their_name():
    assert masked("SELECT 'hello world' AS name, 42 AS ssn", 2) == [None, None]
    assert masked("SELECT status AS email FROM orders", 1) == [None]


def test_an_unknown_relation_is_undetermined_and_masked():
    [flow] = trace("SELECT secret FROM nowhere")[-1].columns(1)
    assert flow.opaque and "nowhere" in flow.opaque
    [plan] = plan_columns(PROFILE, ["x"], [flow])
    assert plan is not None and plan.rule == "lineage:undetermined" and plan.computed


def test_the_name_fallback_is_used_only_when_the_source_is_undetermined_and_says_so():
    [plan] = plan_columns(PROFILE, ["email"], [Flow(opaque="no catalog")])
    assert plan is not None and plan.rule == "fallback:email" and plan.strategy is Strategy.HASH
    assert "masked by its name" in plan.reason


def test_a_function_gatehouse_cannot_see_into_makes_the_value_undetermined():
    [flow] = trace("SELECT my_lookup(id) FROM customers")[-1].columns(1)
    assert flow.opaque


def test_a_shape_that_does_not_match_the_result_fails_closed():
    [flow, other] = trace("SELECT id FROM customers")[-1].columns(2)
    assert flow.opaque and other.opaque


def test_predicates_orderings_and_windows_are_oracles():
    cases = {
        "SELECT id FROM customers WHERE ssn LIKE '4%'": ["customers.ssn"],
        "SELECT id FROM customers ORDER BY email": ["customers.email"],
        "SELECT id, name AS n FROM customers ORDER BY n": ["customers.name"],
        "SELECT id, phone FROM customers ORDER BY 2": ["customers.phone"],
        "SELECT count(*) FROM customers GROUP BY card_number": ["customers.card_number"],
        "SELECT a.id FROM customers a JOIN customers b ON a.ssn = b.ssn": ["customers.ssn"],
        "SELECT rank() OVER (PARTITION BY name ORDER BY ssn) FROM customers": [
            "customers.name",
            "customers.ssn",
        ],
        "SELECT id FROM customers WHERE id = 1 ORDER BY id": [],
        "SELECT DISTINCT ON (email) id FROM customers": ["customers.email"],
    }
    for sql, expected in cases.items():
        [lineage] = trace(sql)
        assert protected_names(PROFILE, [Flow(lineage.filtered)]) == expected, sql


def test_attribute_notation_calls_are_reported():
    assert trace("SELECT (pid).pg_terminate_backend FROM pg_stat_activity")[0].field_calls == (
        "pg_terminate_backend",
    )
    assert trace("SELECT pid.pg_cancel_backend FROM pg_stat_activity")[0].field_calls == (
        "pg_cancel_backend",
    )
    assert trace("SELECT c.lo_unlink FROM customers c")[0].field_calls == ("lo_unlink",)
    assert trace("SELECT c.name, (c).email FROM customers c")[0].field_calls == ()


def test_other_sessions_statements_are_protected_in_every_profile():
    flows = trace("SELECT query FROM pg_stat_activity")[-1].columns(1)
    [plan] = plan_columns(load_profile("default"), ["query"], flows)
    assert plan is not None and plan.strategy is Strategy.REDACT


def test_a_cursor_declared_in_the_text_gives_the_fetch_its_lineage():
    lineage = trace("DECLARE c CURSOR FOR SELECT ssn FROM customers; FETCH 5 FROM c")
    [plan] = plan_columns(PROFILE, ["ssn"], lineage[-1].columns(1))
    assert plan is not None and plan.strategy is Strategy.REDACT


def test_undetermined_reads_are_reported_to_policy():
    names = protected_names(PROFILE, [Flow(opaque="x")])
    assert names == [UNDETERMINED]


def test_the_catalog_cache_refreshes_by_age_and_after_a_miss_but_not_too_often():
    loads: list[float] = []
    now = [1000.0]

    def loader(_connection):
        loads.append(now[0])
        return CATALOG

    class Conn:
        name = "demo-prod"

    cache = CatalogCache(loader, ttl_s=60, clock=lambda: now[0])
    first = cache.get(Conn())
    assert cache.get(Conn()) is first and len(loads) == 1
    assert cache.refresh_after_miss(Conn(), first) is None  # too soon after the load
    now[0] += 5
    second = cache.refresh_after_miss(Conn(), first)
    assert second is not None and second is not first and len(loads) == 2
    now[0] += 61
    cache.get(Conn())
    assert len(loads) == 3


def test_a_catalog_maps_row_description_origins_to_columns():
    assert CATALOG.origin(100, 6) == "public.customers.ssn"
    assert CATALOG.origin(999, 1) is None


# -- found by red-teaming: each a mechanism, with a variant -------------------------------------


def redacted(sql: str, count: int, index: int) -> bool:
    plan = masked(sql, count)[index]
    return plan is not None and plan[1] in ("redact", "hash", "partial", "null")


def test_a_subquery_that_is_not_lateral_does_not_see_the_items_beside_it():
    # Postgres resolves `ssn` in the second subquery at the outer level (customers), not in `l`.
    sql = "SELECT (SELECT t.v FROM (SELECT 'zz'::text AS ssn) l, (SELECT reverse(ssn) AS v) t) FROM customers"
    assert redacted(sql, 1, 0)
    join = "SELECT (SELECT t.v FROM (SELECT 'zz'::text AS name) l JOIN (SELECT name AS v) t ON true) FROM customers"
    assert redacted(join, 1, 0)
    values = "SELECT (SELECT v.x FROM (SELECT 1 AS ssn) l, (VALUES (reverse(ssn))) v(x)) FROM customers"
    assert redacted(values, 1, 0)
    # A LATERAL one does see them: here `ssn` is the constant.
    assert masked("SELECT t.v FROM (SELECT 'zz'::text AS ssn) l, LATERAL (SELECT l.ssn AS v) t", 1) == [None]


def test_output_names_follow_postgres_and_duplicates_are_never_resolved_to_one():
    for first in (
        "COALESCE('safe')",
        "GREATEST('safe')",
        "NULLIF('safe','x')",
        "(SELECT 'safe')",
        "CURRENT_USER",
        "ROW('safe')",
        "EXISTS(SELECT 1)",
    ):
        sql = f"SELECT s.text FROM (SELECT {first}::text, (reverse(ssn) || '')::text FROM customers) s"
        assert redacted(sql, 1, 0), first
    cte = "WITH t AS (SELECT COALESCE('safe')::text, (name || '')::text FROM customers) SELECT text FROM t"
    assert redacted(cte, 1, 0)


def test_natural_joins_put_common_columns_first_and_are_oracles():
    sql = "SELECT s.c2 FROM (SELECT * FROM (SELECT reverse(ssn) AS x, 1 AS k FROM customers) a NATURAL JOIN (SELECT 1 AS k) b) s(c1, c2)"
    assert redacted(sql, 1, 0)
    [lineage] = trace(
        "SELECT count(*) FROM (SELECT ssn FROM customers) a NATURAL JOIN (SELECT '1'::text AS ssn) b"
    )
    assert protected_names(PROFILE, [Flow(lineage.filtered)]) == ["customers.ssn"]
    [using] = trace("SELECT count(*) FROM customers JOIN (SELECT '1'::text AS ssn) b USING (ssn)")
    assert protected_names(PROFILE, [Flow(using.filtered)]) == ["customers.ssn"]


def test_recursive_ctes_are_traced_to_a_fixed_point_and_may_name_later_ctes():
    rotate = (
        "WITH RECURSIVE r(a,b,c,d,e,n) AS (SELECT reverse(ssn), '', '', '', '', 0 FROM customers "
        "UNION ALL SELECT e, a, b, c, d, n+1 FROM r WHERE n < 5) SELECT e FROM r"
    )
    assert redacted(rotate, 1, 0)
    forward = (
        "WITH RECURSIVE a AS (SELECT * FROM orders), orders(id, customer_id, amount, status) AS "
        "(SELECT id, id, 1, reverse(ssn) FROM customers) SELECT status FROM a"
    )
    assert redacted(forward, 1, 0)
    # An ordinary recursive CTE over unprotected data stays unmasked.
    plain = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT i FROM n"
    assert masked(plain, 1) == [None]


def test_comparing_rows_is_an_oracle_set_operations_and_distinct_included():
    for sql in (
        "SELECT count(*) FROM (SELECT ssn FROM customers INTERSECT SELECT '1') s",
        "SELECT count(*) FROM (SELECT substr(ssn,1,1) FROM customers EXCEPT SELECT '4') s",
        "SELECT count(*) FROM (SELECT ssn FROM customers UNION SELECT '1') s",
        "SELECT count(*) FROM (SELECT DISTINCT substr(ssn,1,1) FROM customers) s",
    ):
        [lineage] = trace(sql)
        assert protected_names(PROFILE, [Flow(lineage.filtered)]) == ["customers.ssn"], sql
    [union_all] = trace("SELECT count(*) FROM (SELECT ssn FROM customers UNION ALL SELECT '1') s")
    assert protected_names(PROFILE, [Flow(union_all.filtered)]) == []


def test_row_counts_that_depend_on_a_protected_value_are_oracles():
    for sql in (
        "SELECT count(*) FROM customers c, generate_series(1, ascii(substr(c.name,2,1))) g",
        "SELECT count(*) FROM (SELECT unnest(string_to_array(name, NULL)) FROM customers) s",
        "SELECT count(*) FROM customers c, regexp_matches(c.ssn, '4', 'g') m",
        "SELECT 1 FROM customers c, generate_series(1, ascii(c.ssn)) g",
    ):
        [lineage] = trace(sql)
        assert protected_names(PROFILE, [Flow(lineage.filtered)]), sql


def test_a_whole_row_expanded_with_parens_keeps_each_columns_rule():
    plans = masked("SELECT (c).* FROM customers c", 7)
    assert plans[0] is None and plans[6] is None and plans[5] is not None and plans[5][1] == "redact"


# Postgres names an unaliased output after what is inside it (FigureColname); a later reference by
# that name (the other side of a USING, an outer level) must find the same column Postgres reads.
CLEAN_NAMED = "LEFT JOIN (SELECT NULL::text AS {n}) clean USING ({n})"


@pytest.mark.parametrize(
    ("inner", "name"),
    [
        ("(SELECT reverse(ssn))", "reverse"),
        ("(SELECT replace(email, '@', ' at ') AS e)", "e"),
        ("(SELECT reverse(ssn) UNION SELECT 'a' LIMIT 1)", "reverse"),
        ("(SELECT * FROM (SELECT reverse(ssn) FROM customers LIMIT 1) q)", "reverse"),
        ("CASE WHEN id > 0 THEN 'a' ELSE reverse(ssn) END", "reverse"),
        ("COALESCE(reverse(ssn))", "coalesce"),
        ("GREATEST(reverse(ssn), '')", "greatest"),
        ("NULLIF(reverse(ssn), '')", "nullif"),
        ("ROW(reverse(ssn))", '"row"'),
        ("ARRAY[reverse(name)]", '"array"'),
        ("ARRAY(SELECT reverse(name))", '"array"'),
        ("(reverse(ssn))::text", "reverse"),
        ("(ssn || '')::text", '"text"'),
        ("CASE WHEN true THEN ssn || '' END", '"case"'),
        ('reverse(ssn) COLLATE "C"', "reverse"),
    ],
)
def test_an_unnamed_output_is_named_as_postgres_names_it(inner, name):
    sql = f"SELECT {name} FROM (SELECT {inner} FROM customers) x {CLEAN_NAMED.format(n=name)}"
    [plan] = masked(sql, 1)
    assert plan is not None and plan[1] == "redact", plan


def test_a_reference_from_an_outer_level_finds_the_subquery_column():
    sql = (
        "SELECT (SELECT reverse FROM (SELECT (SELECT reverse(c.ssn))) x) "
        "FROM customers c, (SELECT 'clean'::text AS reverse) o"
    )
    [plan] = masked(sql, 1)
    assert plan is not None and plan[1] == "redact", plan


def test_a_function_in_from_with_an_alias_names_its_column_after_the_alias():
    sql = "SELECT (SELECT reverse(u) FROM customers c, unnest(ARRAY[c.ssn]) AS u LIMIT 1) FROM (SELECT 'x'::text AS u) o"
    [plan] = masked(sql, 1)
    assert plan is not None and plan[1] == "redact", plan
    # ... and with column aliases, the column takes those
    assert masked("SELECT v FROM customers c, unnest(ARRAY[c.ssn]) AS u(v)", 1)[0] is not None


def test_a_name_lineage_cannot_tell_makes_the_statement_untraceable():
    # `*` over a function lineage cannot list: Postgres names the subquery after its first column.
    [lineage] = trace("SELECT (SELECT * FROM some_function() f) FROM customers")
    assert lineage.untraceable


def test_a_call_a_user_function_of_the_name_could_take_is_hidden_code():
    # public.lower(integer) exists: lower(42) resolves to it, not to pg_catalog.lower(text).
    planted = Catalog.build([CUSTOMERS], ["pg_catalog", "public"], functions=["lower"])
    [lineage] = trace("SELECT lower(42)", planted)
    assert lineage.hidden_code and "lower" in lineage.hidden_code[0]
    [lineage] = trace("SELECT upper(name) FROM customers", planted)
    assert not lineage.hidden_code
    # qualified with pg_catalog, it can only be the built-in
    [lineage] = trace("SELECT pg_catalog.lower(name) FROM customers", planted)
    assert not lineage.hidden_code
