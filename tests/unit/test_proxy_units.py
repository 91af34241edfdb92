"""The proxy's own rules: startup parameters, read-only lifting, the decision cache, row masking."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gatehouse.classify import classify
from gatehouse.lineage import Flow
from gatehouse.masking import Masker, load_profile
from gatehouse.masking.plan import plan_columns
from gatehouse.models import Connection, Decision, Effect, Principal
from gatehouse.policy import PolicyEngine
from gatehouse.proxy.postgres import messages as m
from gatehouse.proxy.postgres.codec import BackendParser
from gatehouse.proxy.postgres.decisions import DecisionCache, fingerprintable, literal_shape
from gatehouse.proxy.postgres.exceptions import ProtocolError
from gatehouse.proxy.postgres.guard import (
    StartupRefused,
    copies_to_client,
    lifts_read_only,
    upstream_parameters,
)
from gatehouse.proxy.postgres.rowmask import BinaryFormatRefused, ResultMasker, python_encoding
from gatehouse.service import Decided, Traced

KEY = b"unit-test-masking-key-0123456789"
TEXT, INT8, JSONB = 25, 20, 3802


# -- startup parameters -------------------------------------------------------------------------


def test_formatting_parameters_pass_and_user_database_are_the_proxys():
    passed = upstream_parameters(
        {"user": "analyst", "database": "demo-prod", "application_name": "psql", "DateStyle": "ISO",
         "options": "-c statement_timeout=5000 --lock_timeout=100", "_pq_.x": "1", "geqo": "off"}
    )  # fmt: skip
    assert passed == {"application_name": "psql", "DateStyle": "ISO", "statement_timeout": "5000",
                      "lock_timeout": "100"}  # fmt: skip


@pytest.mark.parametrize(
    "params",
    [
        {"options": "-c role=postgres"},
        {"options": "-csearch_path=evil,public"},
        {"options": "--session_authorization=postgres"},
        {"options": "-c default_transaction_read_only=off"},
        {"options": "-c statement_timeout=1 -c role=x"},
        {"options": "-c"},
        {"options": "-P"},
        {"search_path": "evil"},
        {"role": "postgres"},
        {"replication": "database"},
        {"default_transaction_read_only": "off"},
    ],
)
def test_identity_and_safety_parameters_refuse_the_connection(params: dict[str, str]):
    with pytest.raises(StartupRefused):
        upstream_parameters({"user": "a", "database": "b", **params})


# -- statements that would lift read-only --------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN READ WRITE",
        "begin isolation level serializable, read write",
        "START TRANSACTION READ WRITE",
        "SET TRANSACTION READ WRITE",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ WRITE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET default_transaction_read_only = off",
        "SET LOCAL transaction_read_only TO false",
        "set session default_transaction_read_only = 0",
        "SELECT 1; SET transaction_read_only = 'no'",
        "SELECT set_config('transaction_read_only', 'off', true)",
        "SELECT set_config('DEFAULT_TRANSACTION_READ_ONLY', 'off', false)",
        "SELECT set_config(name, 'off', false) FROM (VALUES ('transaction_read_only')) v(name)",
    ],
)
def test_lifting_read_only_is_seen(sql: str):
    assert lifts_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN",
        "BEGIN READ ONLY",
        "SET TRANSACTION READ ONLY",
        "RESET transaction_read_only",
        "SET default_transaction_read_only TO DEFAULT",
        "RESET ALL",
        "SELECT set_config('application_name', 'x', false)",
        "SELECT read_write FROM t",
        "not sql at all",
    ],
)
def test_statements_that_keep_read_only_pass(sql: str):
    assert lifts_read_only(sql) == ""


# -- the decision cache ---------------------------------------------------------------------------


class _CountingService:
    """Decides with the real classifier and Cedar policies; counts how often it is asked."""

    def __init__(self) -> None:
        self.policy = PolicyEngine.default()
        self.calls = 0
        self.masker = Masker(load_profile("default"), KEY)

    def decide(self, principal: Principal, connection: Connection, sql: str) -> Decided:
        self.calls += 1
        classification = classify("postgres", sql)
        decision = self.policy.authorize(principal, connection, classification)
        return Decided(connection, classification, Traced(classification), decision, self.masker)


PRINCIPAL = Principal(arn="arn:aws:iam::1:user/a", name="analyst", kind="agent", attributes={"team": "data"})
CONNECTION = Connection(
    name="demo-dev",
    kind="postgres",
    host="h",
    port=5432,
    database="d",
    secret_id="s",
    attributes={"env": "dev"},
)


def test_a_hot_loop_with_other_constants_is_decided_once():
    service = _CountingService()
    cache = DecisionCache(service)  # type: ignore[arg-type]
    for aid in range(50):
        sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"
        decided = cache.cached(PRINCIPAL, CONNECTION, sql) or cache.decide(PRINCIPAL, CONNECTION, sql)
        assert decided.decision.effect is Effect.ALLOW
    assert service.calls == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SELECT set_config('application_name', 'x', false)", "SELECT set_config('role', 'postgres', false)"),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", "EXPLAIN (ANALYZE true) DELETE FROM t"),
        (
            "SELECT query_to_xml('SELECT 1', true, true, '')",
            "SELECT query_to_xml('DELETE FROM t', true, true, '')",
        ),
        ("SELECT nextval('a')", "SELECT nextval('b')"),
        ("SET statement_timeout = 5", "SET statement_timeout = 0"),
        # A constant in these clauses may be a column's position: ORDER BY 2 may sort by an SSN.
        (
            "SELECT id, ssn FROM customers ORDER BY 1 LIMIT 3",
            "SELECT id, ssn FROM customers ORDER BY 2 LIMIT 3",
        ),
        ("SELECT id, ssn FROM customers ORDER BY 'x'", "SELECT id, ssn FROM customers ORDER BY 2"),
        ("SELECT id, ssn FROM customers GROUP BY 1, 2", "SELECT id, ssn FROM customers GROUP BY 2, 1"),
        ("SELECT DISTINCT ON (1) id, ssn FROM customers", "SELECT DISTINCT ON (2) id, ssn FROM customers"),
        (
            "SELECT * FROM (SELECT id, ssn FROM customers ORDER BY 1 DESC LIMIT 5) s",
            "SELECT * FROM (SELECT id, ssn FROM customers ORDER BY 2 DESC LIMIT 5) s",
        ),
        (
            "SELECT id, ssn FROM customers GROUP BY ROLLUP (1, 2)",
            "SELECT id, ssn FROM customers GROUP BY ROLLUP (2, 1)",
        ),
        # pglast's fingerprint ignores a target list's order, its aliases and its constants: each
        # pair shares one, and the first's lineage would mask the wrong column of the second.
        ("SELECT id, ssn || '' FROM customers", "SELECT ssn || '', id FROM customers"),
        (
            "SELECT x.a FROM (SELECT id AS a, ssn || '' AS b FROM customers) x",
            "SELECT x.a FROM (SELECT ssn || '' AS a, id AS b FROM customers) x",
        ),
        ("SELECT 'x', ssn || '' FROM customers", "SELECT ssn || '', 'x' FROM customers"),
        ("SELECT 'a' AS x, 'b' AS y FROM customers", "SELECT 1 FROM customers"),
    ],
)
def test_a_constant_that_may_matter_is_decided_afresh(first: str, second: str):
    service = _CountingService()
    cache = DecisionCache(service)  # type: ignore[arg-type]
    cache.decide(PRINCIPAL, CONNECTION, first)
    assert cache.cached(PRINCIPAL, CONNECTION, second) is None
    cache.decide(PRINCIPAL, CONNECTION, second)
    assert service.calls == 2


def test_decisions_are_per_principal_and_connection():
    service = _CountingService()
    cache = DecisionCache(service)  # type: ignore[arg-type]
    sql = "SELECT 1 FROM customers WHERE id = 1"
    cache.decide(PRINCIPAL, CONNECTION, sql)
    other = dataclasses.replace(PRINCIPAL, name="intruder", arn="arn:aws:iam::1:user/i")
    assert cache.cached(other, CONNECTION, sql) is None
    assert cache.cached(PRINCIPAL, dataclasses.replace(CONNECTION, name="demo-prod"), sql) is None
    assert cache.cached(PRINCIPAL, CONNECTION, sql) is not None


def test_texts_that_differ_only_in_literal_values_share_a_shape():
    assert literal_shape("SELECT abalance FROM a WHERE aid = 17") == literal_shape(
        "SELECT abalance FROM a WHERE aid = 42 -- another"
    )
    assert literal_shape("SELECT 'é' FROM t") == literal_shape("SELECT 'ü' FROM t")
    assert literal_shape("SELECT 1 FROM t") != literal_shape("SELECT '1' FROM t")
    assert literal_shape("SELECT a, b FROM t") != literal_shape("SELECT b, a FROM t")
    assert literal_shape("SELECT a AS x FROM t") != literal_shape("SELECT a AS y FROM t")


def test_only_plain_statements_are_fingerprintable():
    service = _CountingService()
    plain = service.decide(PRINCIPAL, CONNECTION, "UPDATE t SET a = 1 WHERE id = 2")
    call = service.decide(PRINCIPAL, CONNECTION, "SELECT lower(a) FROM t")
    utility = service.decide(PRINCIPAL, CONNECTION, "SHOW search_path")
    assert fingerprintable(plain)
    assert not fingerprintable(call)
    assert not fingerprintable(utility)


# -- masking rows on the wire ---------------------------------------------------------------------


def _rows(*rows: tuple[bytes | None, ...]) -> list[m.DataRow]:
    raw = b"".join(m.encode_data_row(list(r)) for r in rows)
    found = BackendParser().feed(raw)
    assert all(isinstance(r, m.DataRow) for r in found)
    return found  # type: ignore[return-value]


def _masker(fields: list[m.FieldDescription], flows: list[Flow]) -> ResultMasker:
    masker = Masker(load_profile("pii-strict"), KEY)
    plans = plan_columns(masker.profile, [f.name for f in fields], flows)
    return ResultMasker(masker, fields, plans)


def _values(raw: Any) -> list[bytes | None]:
    (row,) = BackendParser().feed(bytes(raw))
    assert isinstance(row, m.DataRow)
    return [None if v is None else bytes(v) for v in row.values]


def test_rows_with_nothing_to_mask_pass_as_the_servers_bytes():
    fields = [m.FieldDescription("id", type_oid=INT8), m.FieldDescription("n", type_oid=INT8)]
    masker = _masker(fields, [Flow(), Flow()])
    assert masker.passthrough
    rows = _rows((b"1", b"2"), (b"3", None))
    out = masker.mask(rows)
    assert [bytes(o) for o in out] == [bytes(r.raw) for r in rows]


def test_a_protected_source_is_masked_whatever_the_column_is_called():
    fields = [m.FieldDescription("id", type_oid=INT8), m.FieldDescription("x", type_oid=TEXT)]
    masker = _masker(fields, [Flow(), Flow(frozenset({"public.customers.ssn"}))])
    out = masker.mask(_rows((b"1", b"123-45-6789"), (b"2", None)))
    assert _values(out[0])[0] == b"1"
    assert b"6789" not in (_values(out[0])[1] or b"")
    assert _values(out[1]) == [b"2", None]


def test_detectors_run_on_text_values_only_where_they_hit():
    fields = [m.FieldDescription("note", type_oid=TEXT)]
    masker = _masker(fields, [Flow()])
    rows = _rows((b"call me at alice@example.com",), (b"nothing here",))
    out = masker.mask(rows)
    assert b"alice@example.com" not in bytes(out[0])
    assert out[1] is rows[1].raw  # untouched rows are the very bytes received


def test_a_rule_on_a_non_text_column_sends_null_not_an_invalid_value():
    fields = [m.FieldDescription("card", type_oid=INT8)]
    masker = _masker(fields, [Flow(frozenset({"public.customers.card_number"}))])
    out = masker.mask(_rows((b"4111111111111111",)))
    assert _values(out[0]) == [None]


def test_binary_format_on_an_unreadable_type_is_refused():
    fields = [m.FieldDescription("doc", type_oid=JSONB, format=m.BINARY_FORMAT)]
    with pytest.raises(BinaryFormatRefused):
        _masker(fields, [Flow()])
    # plain scalars in binary have nothing to scan: allowed
    _masker([m.FieldDescription("n", type_oid=INT8, format=m.BINARY_FORMAT)], [Flow()])


def test_client_encodings_map_to_byte_preserving_codecs():
    assert python_encoding("UTF8") == "utf-8"
    assert python_encoding("SQL_ASCII") == "latin-1"
    assert python_encoding("EUC_JP") == "latin-1"  # unknown: every byte survives


def test_the_decided_effect_is_what_cedar_said():
    service = _CountingService()
    prod = dataclasses.replace(CONNECTION, name="demo-prod", attributes={"env": "prod"})
    denied = service.decide(PRINCIPAL, prod, "DROP TABLE customers")
    assert isinstance(denied.decision, Decision) and denied.decision.effect is Effect.DENY


def test_a_masked_json_value_stays_json():
    import json as _json

    fields = [m.FieldDescription("j", type_oid=114)]
    masker = _masker(fields, [Flow(frozenset({"public.customers.email"}), computed=True)])
    out = masker.mask(_rows((b'"alice@example.com"',)))
    value = _values(out[0])[0]
    assert value is not None and "alice" not in _json.loads(value)


@pytest.mark.parametrize(
    ("sql", "out"),
    [
        ("COPY customers TO STDOUT", True),
        ("copy (select ssn from customers) to stdout with (format binary)", True),
        ("SELECT 1; COPY customers (ssn) TO STDOUT", True),
        ("COPY customers FROM STDIN", False),
        ("SELECT 'COPY x TO STDOUT'", False),
    ],
)
def test_copy_to_the_client_is_recognised(sql: str, out: bool):
    assert copies_to_client(sql) is out


def _run(*rows: tuple[bytes | None, ...]) -> m.DataRows:
    (run,) = BackendParser(batch_rows=True).feed(b"".join(m.encode_data_row(list(r)) for r in rows))
    assert isinstance(run, m.DataRows)
    return run


def test_a_run_of_rows_is_masked_as_the_same_rows_one_by_one():
    fields = [
        m.FieldDescription("id", type_oid=INT8),
        m.FieldDescription("card", type_oid=INT8),
        m.FieldDescription("x", type_oid=TEXT),
        m.FieldDescription("note", type_oid=TEXT),
        m.FieldDescription("j", type_oid=114),
    ]
    flows = [
        Flow(),
        Flow(frozenset({"public.customers.card_number"})),
        Flow(frozenset({"public.customers.ssn"})),
        Flow(),
        Flow(frozenset({"public.customers.email"}), computed=True),
    ]
    rows = [
        (b"1", b"4111111111111111", b"123-45-6789", b"call alice@example.com", b'"a@b.co"'),
        (b"2", None, None, b"nothing here", None),
        (b"3", b"1", b"", "caf\u00e9 \xff".encode("latin-1"), b"{}"),
        (b"4", None, None, None, None),
    ]
    one_by_one, batched = _masker(fields, flows), _masker(fields, flows)
    expected = b"".join(bytes(r) for r in one_by_one.mask(_rows(*rows)))
    assert b"".join(batched.mask_run(_run(*rows))) == expected
    assert batched.masked_rules == one_by_one.masked_rules


def test_rows_of_a_run_nothing_changes_are_the_servers_bytes():
    masker = _masker([m.FieldDescription("note", type_oid=TEXT)], [Flow()])
    run = _run((b"plain",), (b"mail alice@example.com",), (b"also plain",), (b"more",))
    out = masker.mask_run(run)
    wire = run.encode()
    # The rows around the masked one go out as slices of what was received, one per stretch.
    assert len(out) == 3 and isinstance(out[0], memoryview) and isinstance(out[2], memoryview)
    assert bytes(out[0]) == m.encode_data_row([b"plain"])
    assert bytes(out[2]) == wire[len(bytes(out[0])) + len(m.encode_data_row([b"mail alice@example.com"])) :]
    assert b"alice@example.com" not in out[1]


def test_a_row_with_more_columns_than_its_description_is_refused():
    masker = _masker([m.FieldDescription("note", type_oid=TEXT)], [Flow()])
    with pytest.raises(ProtocolError, match="columns"):
        masker.mask_run(_run((b"a", b"alice@example.com")))
