"""Masking follows the data: renaming and transforming reads through the signed API on demo-prod.

Every answer (the response, the request record, the session log) is compared with the real values
read directly from the database, in every form an agent could undo: raw, lower case, digits only,
reversed, base64 or hex encoded (and every base64 or hex token of the answer decoded), md5 and
sha256. No real value may come back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

PROD = "demo-prod"
SETUP = (
    "CREATE OR REPLACE VIEW public.contact_book AS "
    "SELECT id, name AS who, lower(email) AS mail, phone FROM customers",
    "CREATE OR REPLACE VIEW public.contact_book_2 AS SELECT who AS person, mail FROM public.contact_book",
    "GRANT SELECT ON public.contact_book, public.contact_book_2 TO PUBLIC",
)

# Reads that rename or transform protected columns. None filters, joins, groups or orders on a
# protected column (those are oracles: see test_oracle_reads_need_approval), so each runs.
RENAMING_AND_TRANSFORMING = {
    # aliases
    "alias": "SELECT name AS who FROM customers",
    "alias-quoted": 'SELECT ssn AS "harmless" FROM customers',
    "alias-to-unprotected-name": "SELECT card_number AS id FROM customers",
    "table-alias": "SELECT x.email AS e FROM customers x",
    "schema-qualified": "SELECT public.customers.phone AS p FROM public.customers",
    # operators and expressions
    "concat-left": "SELECT 'x' || ssn AS note FROM customers",
    "concat-right": "SELECT ssn || '0' FROM customers",
    "concat-card": "SELECT card_number || 'x' FROM customers",
    "sentence": "SELECT 'Please write to ' || email || '.' AS hint FROM customers",
    "two-columns": "SELECT name || ' <' || email || '>' FROM customers",
    # function calls
    "replace": "SELECT replace(ssn, '-', '') FROM customers",
    "translate-cast": "SELECT translate(card_number, ' -', '')::bigint FROM customers",
    "reverse": "SELECT reverse(ssn) FROM customers",
    "md5": "SELECT md5(ssn) FROM customers",
    "sha256": "SELECT sha256(convert_to(email, 'UTF8')) FROM customers",
    "base64": "SELECT encode(convert_to(ssn, 'UTF8'), 'base64') FROM customers",
    "hex": "SELECT encode(convert_to(card_number, 'UTF8'), 'hex') FROM customers",
    "upper": "SELECT upper(name) FROM customers",
    "regexp": "SELECT regexp_replace(phone, '[^0-9]', '', 'g') FROM customers",
    "split-part": "SELECT split_part(email, '@', 1) FROM customers",
    "substr-two-columns": "SELECT substr(ssn, 1, 3) AS a, substr(ssn, 5) AS b FROM customers",
    "left-right": "SELECT left(card_number, 8), right(card_number, 8) FROM customers",
    "lpad": "SELECT lpad(ssn, 20, '*') FROM customers",
    "length-number": "SELECT length(name) FROM customers",
    "ascii-number": "SELECT ascii(ssn) FROM customers",
    "to-hex-number": "SELECT to_hex(length(email)) FROM customers",
    # casts
    "cast-text": "SELECT ssn::text FROM customers",
    "cast-varchar": "SELECT CAST(email AS varchar(200)) FROM customers",
    "cast-bytea": "SELECT ssn::bytea FROM customers",
    "cast-numeric-digits": "SELECT replace(replace(card_number, ' ', ''), '-', '')::numeric FROM customers",
    # CASE and COALESCE
    "case": "SELECT CASE WHEN id > 0 THEN ssn ELSE 'none' END FROM customers",
    "case-number": "SELECT CASE WHEN ssn LIKE '1%' THEN 1 ELSE 0 END AS bit FROM customers",
    "coalesce": "SELECT COALESCE(phone, 'none') FROM customers",
    "nullif": "SELECT NULLIF(email, '') FROM customers",
    "greatest": "SELECT GREATEST(ssn, '') FROM customers",
    # aggregates and window functions
    "string-agg": "SELECT string_agg(name, ' | ') FROM customers",
    "array-agg": "SELECT array_agg(ssn) FROM customers",
    "json-agg": "SELECT json_agg(email) FROM customers",
    "min-max": "SELECT min(ssn), max(card_number) FROM customers",
    "window-lag": "SELECT id, lag(ssn) OVER (ORDER BY id) FROM customers",
    "window-first": "SELECT first_value(email) OVER () FROM customers",
    # subqueries, CTEs, set operations, views
    "scalar-subquery": "SELECT (SELECT ssn FROM customers c2 WHERE c2.id = c.id) FROM customers c",
    "lateral": "SELECT l.x FROM customers c, LATERAL (SELECT c.email AS x) l",
    "from-subquery": "SELECT s.v FROM (SELECT phone AS v FROM customers) s",
    "cte": "WITH t AS (SELECT card_number AS c FROM customers) SELECT c FROM t",
    "cte-shadows-table": "WITH customers AS (SELECT id, ssn AS notes FROM customers) SELECT notes FROM customers",
    "cte-chain": "WITH a AS (SELECT email AS e FROM customers), b AS (SELECT upper(e) AS u FROM a) SELECT u FROM b",
    "union": "SELECT name FROM customers UNION ALL SELECT email FROM customers",
    "union-all-with-literal": "SELECT 'nobody' UNION ALL SELECT ssn FROM customers",
    "view": "SELECT who, mail, phone FROM public.contact_book",
    "view-of-view": "SELECT * FROM public.contact_book_2",
    "view-unqualified": "SELECT mail FROM contact_book",
    # stars and whole rows
    "star": "SELECT * FROM customers",
    "table-star": "SELECT c.* FROM customers c",
    "whole-row": "SELECT c FROM customers c",
    "to-json": "SELECT to_json(c) FROM customers c",
    "row-to-json": "SELECT row_to_json(c) FROM customers c",
    "field-of-row": "SELECT (c).name FROM customers c",
    "attribute-notation": "SELECT c.row_to_json FROM customers c",
    "row-constructor": "SELECT ROW(name, ssn) FROM customers",
    "row-text": "SELECT (c)::text FROM customers c",
    "json-each": "SELECT j.value FROM customers c, json_each_text(row_to_json(c)) j",
    # arrays, JSON, format, xml
    "array": "SELECT ARRAY[ssn, phone] FROM customers",
    "array-element": "SELECT (ARRAY[ssn])[1] FROM customers",
    "json-build": "SELECT json_build_object('n', name, 'e', email) FROM customers",
    "jsonb-build-array": "SELECT jsonb_build_array(card_number) FROM customers",
    "json-arrow": "SELECT json_build_object('s', ssn)->>'s' FROM customers",
    "format": "SELECT format('%s / %s', name, ssn) FROM customers",
    "concat-ws": "SELECT concat_ws(',', phone, email) FROM customers",
    "xmlelement": "SELECT xmlelement(name person, name) FROM customers",
    "xmlforest": "SELECT xmlforest(ssn, email) FROM customers",
    "unnest": "SELECT u FROM customers, unnest(ARRAY[ssn]) u",
    # found by red-teaming: scoping, output names, joins, recursion (each a mechanism)
    "non-lateral-subquery-sibling": "SELECT (SELECT t.v FROM (SELECT 'zz'::text AS ssn) l, (SELECT reverse(ssn) AS v) t) FROM customers",
    "non-lateral-join-sibling": "SELECT (SELECT t.v FROM (SELECT 'zz'::text AS name) l JOIN (SELECT name AS v) t ON true) AS x FROM customers",
    "non-lateral-values-sibling": "SELECT (SELECT v.x FROM (SELECT 1 AS ssn) l, (VALUES (reverse(ssn))) v(x)) AS x FROM customers",
    "duplicate-output-names": "SELECT s.text FROM (SELECT COALESCE('safe')::text, (reverse(ssn) || '')::text FROM customers) s",
    "duplicate-names-in-cte": "WITH t AS (SELECT GREATEST('safe')::text, (name || '')::text FROM customers) SELECT text FROM t",
    "natural-join-renamed": "SELECT s.c2 FROM (SELECT * FROM (SELECT reverse(ssn) AS x, 1 AS k FROM customers) a NATURAL JOIN (SELECT 1 AS k) b) s(c1, c2)",
    "recursive-rotation": "WITH RECURSIVE r(a,b,c,d,n) AS (SELECT reverse(ssn), ''::text, ''::text, ''::text, 0 FROM customers UNION ALL SELECT d, a, b, c, n+1 FROM r WHERE n < 3) SELECT d FROM r",
    "recursive-forward-reference": "WITH RECURSIVE a AS (SELECT * FROM orders), orders(id, customer_id, amount, created_at, status) AS (SELECT id, id, 1, 1, reverse(ssn) FROM customers) SELECT status FROM a",
    "paren-star": "SELECT (c).* FROM customers c",
}

_SESSIONS: dict[str, str] = {}  # test name -> request id, for the session-log check at the end


@pytest.fixture(scope="module")
def secrets_in_db(local_stack) -> list[str]:
    db = local_stack.db(PROD)
    try:
        for statement in SETUP:
            db.run(statement)
        rows = db.run("SELECT name, email, phone, card_number, ssn FROM customers")
    finally:
        db.close()
    return sorted({v for row in rows for v in row if v})


def _forms(value: str) -> set[str]:
    forms = {value.lower(), value[::-1].lower()}
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 7:
        forms |= {digits, digits[::-1]}
    data = value.encode()
    forms |= {
        hashlib.md5(data).hexdigest(),  # noqa: S324 - what an agent's md5() would return
        hashlib.sha256(data).hexdigest(),
        base64.b64encode(data).decode().lower(),
        data.hex(),
    }
    return forms


_TOKEN = re.compile(r"[A-Za-z0-9+/=]{8,}")


def _decoded(text: str) -> Iterator[str]:
    """Every base64 or hex token of `text`, decoded (what an agent would try)."""
    for token in _TOKEN.findall(text):
        for decode in (
            lambda t: base64.b64decode(t + "=" * (-len(t) % 4), validate=True),
            bytes.fromhex,
        ):
            try:
                yield decode(token.removeprefix("\\x")).decode("utf-8", "ignore").lower()
            except (ValueError, binascii.Error):
                continue


def assert_no_leak(secrets: list[str], *documents: Any) -> None:
    haystack = "\n".join(json.dumps(d) if not isinstance(d, str) else d for d in documents)
    lowered = haystack.lower()
    decoded = "\n".join(_decoded(haystack.replace("\\\\x", " ")))
    for secret in secrets:
        for form in _forms(secret):
            assert form not in lowered, f"{secret!r} came back as {form!r}"
        assert secret.lower() not in decoded, f"{secret!r} came back encoded"


@pytest.mark.parametrize("name", list(RENAMING_AND_TRANSFORMING))
def test_no_real_value_comes_back(local_stack, secrets_in_db, name):
    sql = RENAMING_AND_TRANSFORMING[name]
    client = local_stack.client()
    answer = client.submit(PROD, sql, reason="lineage corpus")
    assert answer.status_code == 200, answer.body
    assert answer.body["row_count"] > 0
    record = client.get_request(answer.body["request_id"])
    assert record.status_code == 200
    assert_no_leak(secrets_in_db, answer.body, record.body)
    # Every masked column says what masked it and, for lineage, from which source.
    for masked in answer.body["masked"]:
        if masked["rule"] == "lineage":
            assert masked["sources"] and masked["reason"].startswith(masked["sources"][0])
    _SESSIONS[name] = answer.body["request_id"]


def test_the_session_log_holds_no_real_value_either(local_stack, secrets_in_db):
    assert len(_SESSIONS) == len(RENAMING_AND_TRANSFORMING), "run with the corpus test above"
    s3 = local_stack.aws("s3")
    bucket = local_stack.state["bucket"]
    wanted = {f"session={rid}/" for rid in _SESSIONS.values()}
    bodies = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            if any(w in obj["Key"] for w in wanted):
                bodies.append(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode())
    assert len(bodies) >= len(_SESSIONS)
    assert_no_leak(secrets_in_db, *bodies)


def test_a_masked_column_names_its_source_and_the_transformation(local_stack):
    answer = local_stack.client().submit(PROD, "SELECT id, reverse(ssn) AS r, name AS who FROM customers")
    masked = {m["column"]: m for m in answer.body["masked"]}
    assert "id" not in masked
    assert (
        masked["r"]["sources"] == ["customers.ssn"] and masked["r"]["reason"] == "customers.ssn via reverse()"
    )
    assert masked["r"]["strategy"] == "redact"
    assert masked["who"]["strategy"] == "hash" and masked["who"]["reason"] == "customers.name"
    assert all(row[1] == "[REDACTED]" and row[2].startswith("hash:") for row in answer.body["rows"])


def test_numbers_and_dates_computed_from_a_protected_column_are_null(local_stack):
    answer = local_stack.client().submit(
        PROD,
        "SELECT id, length(ssn) AS n, to_date('2020-01-01', 'YYYY-MM-DD') + length(name) AS d FROM customers",
    )
    assert answer.status_code == 200
    assert all(row[1] is None and row[2] is None and isinstance(row[0], int) for row in answer.body["rows"])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'hello world' AS name",
        "SELECT 'hello world' AS ssn, 42 AS card_number",
        "SELECT id, amount, status FROM orders ORDER BY id LIMIT 20",
        "SELECT id, created_at FROM orders WHERE amount > 10 ORDER BY id LIMIT 20",
        "SELECT count(*) FROM customers",
        "SELECT id FROM customers ORDER BY id LIMIT 5",
        "SELECT relname AS name FROM pg_class WHERE relname = 'customers'",
    ],
)
def test_unprotected_data_comes_back_unchanged(local_stack, sql):
    answer = local_stack.client().submit(PROD, sql)
    assert answer.status_code == 200, answer.body
    db = local_stack.db(PROD)
    try:
        direct = db.run(sql)
    finally:
        db.close()
    assert answer.body["rows"] == json.loads(json.dumps(direct, default=str)) or _same(
        answer.body["rows"], direct
    )
    assert answer.body["masked"] == []


def _same(returned: list[list[Any]], direct: list[list[Any]]) -> bool:
    return [[str(v) for v in row] for row in returned] == [[str(v) for v in row] for row in direct]


def test_show_all_comes_back_unchanged(local_stack):
    answer = local_stack.client().submit(PROD, "SHOW ALL")
    assert answer.status_code == 200, answer.body
    assert answer.body["columns"] == ["name", "setting", "description"]
    assert not [m for m in answer.body["masked"] if not m["rule"].startswith("detector:")]
    names = [row[0] for row in answer.body["rows"]]
    assert "statement_timeout" in names and all(not n.startswith("hash:") for n in names)


ORACLES = {
    "where-like": "SELECT id FROM customers WHERE ssn LIKE '4%'",
    "where-equals": "SELECT count(*) FROM customers WHERE email = 'ann@example.com'",
    "order-by": "SELECT id FROM customers ORDER BY ssn",
    "order-by-alias": "SELECT id, name AS n FROM customers ORDER BY n",
    "order-by-position": "SELECT id, card_number FROM customers ORDER BY 2",
    "group-by": "SELECT count(*) FROM customers GROUP BY phone",
    "having": "SELECT count(*) FROM customers HAVING max(ssn) > '5'",
    "join-on": "SELECT a.id FROM customers a JOIN customers b ON a.ssn = b.ssn",
    "window-partition": "SELECT id, row_number() OVER (PARTITION BY email) FROM customers",
    "window-order": "SELECT id, rank() OVER (ORDER BY ssn) FROM customers",
    "distinct-on": "SELECT DISTINCT ON (name) id FROM customers",
    "exists": "SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM customers d WHERE d.ssn < c.ssn)",
    "in-subquery": "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn > '5')",
    "filter-clause": "SELECT count(*) FILTER (WHERE ssn LIKE '1%') FROM customers",
    "view-column": "SELECT id FROM public.contact_book WHERE mail LIKE 'a%'",
    "explain": "EXPLAIN SELECT id FROM customers WHERE ssn LIKE '12%'",
    "join-using": "SELECT count(*) FROM customers JOIN (SELECT '434-70-9213'::text AS ssn) b USING (ssn)",
    "natural-join": "SELECT count(*) FROM (SELECT ssn FROM customers) a NATURAL JOIN (SELECT '434-70-9213'::text AS ssn) b",
    "intersect": "SELECT count(*) FROM (SELECT ssn FROM customers INTERSECT SELECT '434-70-9213') s",
    "except": "SELECT count(*) FROM (SELECT substr(ssn,1,1) FROM customers EXCEPT SELECT '4') s",
    "union-distinct": "SELECT count(*) FROM (SELECT ssn FROM customers WHERE id = 1 UNION SELECT '434-70-9213') s",
    "distinct": "SELECT count(*) FROM (SELECT DISTINCT substr(ssn,1,1) FROM customers) s",
    "row-count-from-function": "SELECT count(*) FROM customers c, generate_series(1, ascii(substr(c.name,2,1))) g WHERE c.id = 1",
    "row-count-from-srf": "SELECT count(*) FROM (SELECT unnest(string_to_array(name, NULL)) FROM customers WHERE id = 1) s",
}


@pytest.mark.parametrize("name", list(ORACLES))
def test_oracle_reads_need_approval(local_stack, secrets_in_db, name):
    answer = local_stack.client().submit(PROD, ORACLES[name])
    assert answer.status_code == 202, answer.body
    assert answer.body["decision"]["policy_ids"] == ["prod-oracle-read-needs-dba"]
    assert answer.body["status"] == "pending_approval"


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        ("SELECT name::int FROM customers", "22P02"),
        ("SELECT email::int FROM customers", "22P02"),
        ("SELECT ssn::date FROM customers", "22008"),
        ("SELECT card_number::bigint FROM customers", "22P02"),
        ("SELECT (c).name::numeric FROM customers c", "22P02"),
        ("SELECT to_json(c)::text::int FROM customers c", "22P02"),
        ("SELECT reverse(phone)::uuid FROM customers", "22P02"),
    ],
)
def test_errors_do_not_carry_protected_values(local_stack, secrets_in_db, sql, sqlstate):
    client = local_stack.client()
    answer = client.submit(PROD, sql)
    assert answer.status_code == 422, answer.body
    assert answer.body["sqlstate"] == sqlstate
    assert "[REDACTED]" in answer.body["message"]
    record = client.get_request(answer.body["request_id"])
    assert_no_leak(secrets_in_db, answer.body, record.body)
    _SESSIONS_ERRORS.append(answer.body["request_id"])


_SESSIONS_ERRORS: list[str] = []


def test_errors_in_the_session_log_carry_no_protected_values(local_stack, secrets_in_db):
    assert _SESSIONS_ERRORS, "run with the error test above"
    s3 = local_stack.aws("s3")
    bucket = local_stack.state["bucket"]
    wanted = {f"session={rid}/" for rid in _SESSIONS_ERRORS}
    bodies = [
        s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", ())
        if any(w in obj["Key"] for w in wanted)
    ]
    assert any("[REDACTED]" in b for b in bodies)
    assert_no_leak(secrets_in_db, *bodies)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT make_date(replace(ssn,'-','')::int, 13, 1) FROM customers WHERE id = 1",
        "SELECT make_date(regexp_replace(phone,'[^0-9]','','g')::bigint::int, 13, 1) FROM customers WHERE id = 2",
        "SELECT make_date(left(replace(card_number,' ',''),8)::int, 13, 1) FROM customers WHERE id = 1",
        "SELECT chr(replace(ssn,'-','')::int + 1114112) FROM customers WHERE id = 1",
        "SELECT make_time(ascii(name),0,0) FROM customers WHERE id = 1",
        "SELECT xmlparse(document name) FROM customers",
        "SELECT ('<' || name)::xml FROM customers",
        "SELECT xmlparse(document reverse(ssn)) FROM customers",
        "SELECT s.text::int FROM (SELECT COALESCE('a')::text, (name || '')::text FROM customers) s",
    ],
)
def test_errors_that_repeat_values_unquoted_carry_none(local_stack, secrets_in_db, sql):
    answer = local_stack.client().submit(PROD, sql)
    assert answer.status_code in (422, 202), answer.body
    assert_no_leak(secrets_in_db, answer.body)
    if answer.status_code == 422:
        record = local_stack.client().get_request(answer.body["request_id"])
        assert_no_leak(secrets_in_db, record.body)
        # Digits of an SSN or a card number, and letters of a name encoded as a number, are gone.
        assert not re.search(r"\d{3,}", answer.body["message"]), answer.body["message"]


def test_an_error_on_unprotected_data_keeps_its_value(local_stack):
    answer = local_stack.client().submit(PROD, "SELECT status::int FROM orders")
    assert answer.status_code == 422
    assert '"[REDACTED]"' not in answer.body["message"] and "invalid input syntax" in answer.body["message"]


def test_an_agent_cannot_read_another_sessions_sql_in_flight(local_stack):
    # Given another session of the connection's own database role whose last statement holds a secret
    import pg8000.native

    secret_id = "gatehouse/connections/demo-prod"
    cred = json.loads(local_stack.aws("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"])
    pg = local_stack.postgres
    other = pg8000.native.Connection(
        cred["username"], host=pg.host, port=pg.port, database="demo-prod", password=cred["password"]
    )
    try:
        other.run("SELECT 'marker-4242-secret-plan' AS note")
        # When the agent lists what the role's sessions are running
        answer = local_stack.client().submit(
            PROD, "SELECT pid, state, query FROM pg_stat_activity WHERE usename = current_user"
        )
        # Then it sees that they exist, not what they run
        assert answer.status_code == 200, answer.body
        assert "marker-4242" not in json.dumps(answer.body)
        queries = [row[2] for row in answer.body["rows"]]
        assert len(queries) >= 2  # the other session is listed (and this request's own)
        assert all(q in ("[REDACTED]", None) for q in queries)
        star = local_stack.client().submit(PROD, "SELECT * FROM pg_stat_activity")
        assert star.status_code == 200 and "marker-4242" not in json.dumps(star.body)
    finally:
        other.close()


# Found by red-teaming: an unaliased output that Postgres names after what is inside it (a scalar
# subquery after its column, CASE after its ELSE, COALESCE/ARRAY/ROW after the construct, a
# function in FROM after its alias), then referenced by that name beside a clean column of it.
NAMED_AS_POSTGRES_NAMES_THEM = {
    "scalar-subquery-using": "SELECT reverse FROM (SELECT (SELECT reverse(ssn)) FROM customers) x "
    "LEFT JOIN (SELECT NULL::text AS reverse) y USING (reverse) LIMIT 3",
    "scalar-subquery-outer-level": "SELECT (SELECT reverse FROM (SELECT (SELECT reverse(c.ssn))) x) "
    "FROM customers c, (SELECT 'clean'::text AS reverse) o LIMIT 3",
    "scalar-subquery-alias": "SELECT e FROM (SELECT (SELECT replace(email, '@', ' at ') AS e) FROM customers) x "
    "LEFT JOIN (SELECT NULL::text AS e) y USING (e)",
    "case-else": "SELECT reverse FROM (SELECT CASE WHEN id < 0 THEN 'a' ELSE reverse(ssn) END FROM customers) x "
    "LEFT JOIN (SELECT NULL::text AS reverse) y USING (reverse)",
    "coalesce": "SELECT x.coalesce FROM (SELECT COALESCE(reverse(ssn)) FROM customers) x, "
    "(SELECT 'clean'::text AS coalesce) y",
    "function-alias": "SELECT (SELECT reverse(u) FROM customers c, unnest(ARRAY[c.ssn]) AS u LIMIT 1) "
    "FROM (SELECT 'x'::text AS u) o",
}


@pytest.mark.parametrize("name", list(NAMED_AS_POSTGRES_NAMES_THEM))
def test_outputs_are_named_as_postgres_names_them(local_stack, secrets_in_db, name):
    answer = local_stack.client().submit(PROD, NAMED_AS_POSTGRES_NAMES_THEM[name])
    # A join on the protected value is an oracle (approval); a plain read is masked.
    assert answer.status_code in (200, 202), answer.body
    assert_no_leak(secrets_in_db, answer.body)
    if answer.status_code == 200:
        assert answer.body["row_count"] > 0 and answer.body["masked"]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE customers SET notes = name WHERE id <= 2",
        "UPDATE customers SET notes = reverse(ssn) WHERE id <= 3",
        "UPDATE orders SET status = (SELECT translate(email, '@.', '#,') FROM customers c "
        "WHERE c.id = orders.customer_id) WHERE id <= 3",
        "INSERT INTO orders (customer_id, amount, created_at, status) "
        "SELECT id, 1, now(), phone FROM customers WHERE id <= 2",
    ],
)
def test_a_dry_run_preview_masks_what_the_write_put_in_each_column(local_stack, secrets_in_db, sql):
    # The 202 carries the preview's sample rows: the values after the write, not the table's own.
    answer = local_stack.client().submit(PROD, sql, reason="preview masking")
    assert answer.status_code == 202, answer.body
    assert answer.body["preview"]["mode"] in ("dry_run", "explain")
    assert_no_leak(secrets_in_db, answer.body)


@pytest.mark.parametrize("offset", [1, 4, 7])
def test_an_encoding_error_lists_no_bytes_of_a_protected_value(local_stack, secrets_in_db, offset):
    sql = (
        f"SELECT convert_from(decode('f0' || substr(replace(ssn, '-', ''), {offset}, 6), 'hex'), 'UTF8') "
        "FROM customers WHERE id = 1"
    )
    answer = local_stack.client().submit(PROD, sql)
    assert answer.status_code == 422, answer.body
    assert "0x" not in answer.body["message"], answer.body["message"]
    assert_no_leak(secrets_in_db, answer.body)
