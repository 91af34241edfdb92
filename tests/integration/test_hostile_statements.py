"""Hostile SQL through the front door, under the demo prod policy, checked in the database.

Given the whole local stack (SigV4 API stand-in, the real API handler, moto, a real Postgres) and
the agent `analyst` on `demo-prod` (reads allowed and masked, writes wait for one DBA, DDL and
privilege statements forbidden, admin and unknown denied, unparseable text refused as bad input),
when the agent sends a text that tries to change data or escape while looking harmless,
then the answer is the refusal the policy calls for (never 200, never 5xx), and a superuser
connection finds the database exactly as it was: rows, sequences, relations, roles, grants,
server settings, large objects, locks, and no file written by the server.

Most texts aim at `orders` or use UPDATE: `orders` references `customers`, so a plain
`DELETE FROM customers` would be stopped by the foreign key even if it ran, and would prove less.
`test_the_attacks_are_real` shows, with the connection's own credential in a rolled-back
transaction, that such statements do change data when they run. (TRUNCATE would not: the prod
role holds no TRUNCATE privilege; it is still a write to the policy and must wait for a DBA.)

Three texts are reads to the parser but run code it cannot see (a view, attribute notation, a
user-defined operator, each calling a function that writes): the executor's READ ONLY
transaction is the backstop, and the database refuses them (SQLSTATE 25006).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pg8000.native
import pytest

from gatehouse import names
from gatehouse.audit.events import parse_events
from gatehouse.local.provision import database_role
from gatehouse.local.seed import quote_ident

if TYPE_CHECKING:
    from tests.integration.conftest import RunningStack

CONNECTION = "demo-prod"
PWNED_FILES = ("/tmp/gatehouse-pwned", "/tmp/gatehouse-pwned-copy")
READ_ONLY_SQL_TRANSACTION = "25006"
LOCK_WAIT_S = 5.0

# Functions and a view the superuser plants before the agent arrives: each looks like a read
# and writes when called (the prod role may UPDATE customers and DELETE orders).
EVIL_BODY = "UPDATE customers SET email = 'pwned@example.com'; DELETE FROM orders; SELECT 1"
PLANTED = (
    f"CREATE FUNCTION public.evil() RETURNS integer LANGUAGE sql AS $$ {EVIL_BODY} $$",
    f"CREATE FUNCTION public.evil(customers) RETURNS integer LANGUAGE sql AS $$ {EVIL_BODY} $$",
    "CREATE FUNCTION public.evil_eq(integer, integer) RETURNS boolean LANGUAGE sql "
    "AS $$ UPDATE customers SET email = 'pwned@example.com'; DELETE FROM orders; SELECT true $$",
    "CREATE OPERATOR public.=== (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.evil_eq)",
    "CREATE VIEW public.innocent AS SELECT id, name, public.evil() AS touched FROM customers",
    "CREATE DOMAIN public.evil_dom AS integer CHECK (public.evil() > 0)",
    # An overload pg_catalog lacks: an unqualified initcap(42) resolves to it, not to the built-in.
    f"CREATE FUNCTION public.initcap(integer) RETURNS text LANGUAGE sql AS $$ {EVIL_BODY}::text $$",
)


@dataclass(frozen=True)
class Hostile:
    name: str
    sql: str
    status: int  # 202 pending_approval | 403 denied | 400 sql_parse_error | 422 read-only backstop
    statement_class: str | None = None  # as the API reports it (202 and 403)


def pending(name: str, sql: str) -> Hostile:
    return Hostile(name, sql, 202, "write")


def denied(name: str, sql: str, statement_class: str) -> Hostile:
    return Hostile(name, sql, 403, statement_class)


def unparseable(name: str, sql: str) -> Hostile:
    return Hostile(name, sql, 400)


def read_only_backstop(name: str, sql: str) -> Hostile:
    return Hostile(name, sql, 422, "read")


HOSTILE: tuple[Hostile, ...] = (
    # Writes dressed as reads: each waits for a DBA and does not run.
    pending("cte-delete", "WITH d AS (DELETE FROM customers RETURNING *) SELECT * FROM d"),
    pending(
        "cte-delete-in-subquery",
        "SELECT count(*) FROM (WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d) s",
    ),
    pending(
        "cte-update-in-where",
        "SELECT name FROM customers WHERE id IN "
        "(WITH u AS (UPDATE customers SET email = 'x@example.com' RETURNING id) SELECT id FROM u)",
    ),
    pending(
        "cte-materialized-update",
        "WITH x AS MATERIALIZED (UPDATE customers SET name = upper(name) RETURNING id) "
        "SELECT count(*) FROM x",
    ),
    pending("explain-analyze-delete", "EXPLAIN ANALYZE DELETE FROM orders"),
    pending(
        "explain-analyze-options", "EXPLAIN (ANALYZE true, FORMAT json) UPDATE customers SET email = 'x'"
    ),
    pending("stacked-no-space", "select 1;delete from orders"),
    pending("stacked-after-line-comment", "SELECT 1 -- harmless\n; DELETE FROM orders"),
    pending("stacked-after-dollar-quote", "SELECT $q$;$q$; DELETE FROM orders"),
    pending("table-then-truncate", "TABLE customers; TRUNCATE customers CASCADE"),
    pending("nextval", "SELECT nextval('customers_id_seq')"),
    pending("setval-qualified", "SELECT pg_catalog.setval('customers_id_seq', 1000)"),
    pending("select-for-update", "SELECT * FROM customers FOR UPDATE"),
    pending("select-for-share", "select id from customers where id = 7 for share skip locked"),
    pending("lock-table", "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"),
    pending("advisory-lock", "SELECT pg_advisory_lock(42)"),
    pending("truncate", "TRUNCATE customers CASCADE"),
    pending("update", "UPDATE customers SET email = 'x'"),
    pending(
        "merge",
        "MERGE INTO customers c USING (SELECT 7 AS id) s ON c.id = s.id "
        "WHEN MATCHED THEN UPDATE SET email = 'x'",
    ),
    pending("insert-select", "INSERT INTO customers (name) SELECT name FROM customers"),
    pending("copy-from-stdin", "COPY customers FROM STDIN"),
    pending("mixed-case", "DeLeTe FrOm OrDeRs"),
    pending("block-comments", "/* a harmless read */ DELETE /* SELECT */ FROM orders -- SELECT 1"),
    pending("odd-whitespace", "\tUPDATE\r\n\fcustomers\n\n   SET   email = 'x'\t"),
    pending("unicode-escaped-identifier", 'DELETE FROM U&"\\006frders"'),
    pending("unicode-escape-uescape", "UPDATE U&\"cust!006fmers\" UESCAPE '!' SET email = 'x'"),
    pending("commit-then-delete", "COMMIT; DELETE FROM orders"),
    pending("begin-read-write-delete", "BEGIN; SET TRANSACTION READ WRITE; DELETE FROM orders"),
    # Schema and privilege changes: forbidden on prod.
    denied("select-into", "SELECT * INTO stolen FROM customers", "ddl"),
    denied("create-table-as", "CREATE TABLE x AS SELECT * FROM customers", "ddl"),
    denied("stacked-drop", "SELECT 1; DROP TABLE customers", "ddl"),
    denied("commit-then-drop", "SELECT 1; COMMIT; DROP TABLE customers", "ddl"),
    denied("create-rule", "CREATE RULE r AS ON SELECT TO customers DO INSTEAD NOTHING", "ddl"),
    denied("set-role", "SET ROLE gatehouse_admin", "privilege"),
    denied("set-session-authorization", "SET SESSION AUTHORIZATION DEFAULT", "privilege"),
    denied("reset-role", "RESET ROLE", "privilege"),
    denied("discard-all", "DISCARD ALL", "privilege"),
    denied("set-config-role", "SELECT set_config('role', 'postgres', false)", "privilege"),
    denied("grant-public", "GRANT ALL ON customers TO PUBLIC", "privilege"),
    denied("alter-role-superuser", f"ALTER ROLE {database_role(CONNECTION)} SUPERUSER", "privilege"),
    # Server-side files, programs and administration: no permit anywhere.
    denied("copy-to-program", "COPY customers TO PROGRAM 'touch /tmp/gatehouse-pwned'", "admin"),
    denied("copy-from-server-file", "COPY customers FROM '/etc/passwd'", "admin"),
    denied("copy-query-to-server-file", "COPY (SELECT 1) TO '/tmp/gatehouse-pwned-copy'", "admin"),
    denied("terminate-backends", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "admin"),
    denied("lo-import", "SELECT lo_import('/etc/passwd')", "admin"),
    denied("pg-read-file", "SELECT pg_read_file('/etc/passwd')", "admin"),
    denied("dblink-exec", "SELECT dblink_exec('dbname=demo-prod', 'delete from orders')", "admin"),
    denied("vacuum-full", "VACUUM FULL customers", "admin"),
    denied("alter-system", "ALTER SYSTEM SET default_transaction_read_only = off", "admin"),
    # Session settings: no permit on prod (the READ ONLY backstop must not be switched off).
    denied(
        "set-config-read-only-off",
        "SELECT set_config('default_transaction_read_only','off',false)",
        "session",
    ),
    denied("set-read-only-off", "SET default_transaction_read_only = off", "session"),
    # Code the parser cannot see into: unknown, denied.
    denied("do-block", "DO $$BEGIN DELETE FROM orders; END$$", "unknown"),
    denied("do-named-dollar-quote", "DO $x$ BEGIN EXECUTE 'DELETE FROM ' || 'orders'; END $x$", "unknown"),
    denied("call-procedure", "CALL p()", "unknown"),
    denied("prepare-execute", "PREPARE p AS DELETE FROM orders; EXECUTE p", "unknown"),
    denied("query-to-xml", "SELECT query_to_xml('delete from orders', true, true, '')", "unknown"),
    denied("planted-function", "SELECT public.evil()", "unknown"),
    denied("planted-function-in-where", "SELECT name FROM customers WHERE evil() > 0", "unknown"),
    denied("planted-overload-of-a-built-in", "SELECT initcap(42)", "unknown"),
    denied("planted-overload-in-where", "SELECT id FROM orders WHERE initcap(id) = 'x'", "unknown"),
    denied("quoted-function-name", "SELECT \"NextVal\"('customers_id_seq')", "unknown"),
    # Text the parser rejects: bad input, nothing runs.
    unparseable("truncated-delete", "DELETE FROM orders WHERE"),
    unparseable("read-then-broken-write", "SELECT 1; DELETE FROM orders WHERE ("),
    unparseable("nul-hides-a-write", "SELECT 1\x00; DELETE FROM orders"),
    unparseable("no-break-space", "DELETE\u00a0FROM orders"),
    # Reads to the parser that call the planted writer: the READ ONLY transaction refuses them.
    # Code the text does not name: lineage reads the view's definition and the catalog's domains.
    denied("view-calls-writer", "SELECT * FROM innocent", "unknown"),
    denied("view-calls-writer-in-explain-analyze", "EXPLAIN ANALYZE SELECT * FROM innocent", "unknown"),
    denied("domain-check-calls-writer", "SELECT 5::public.evil_dom", "unknown"),
    # Attribute notation in every clause, found by a plain walk of the whole tree.
    denied(
        "attribute-notation-in-frame-offset",
        "SELECT sum(id) OVER (ORDER BY id ROWS BETWEEN (1).evil PRECEDING AND CURRENT ROW) FROM orders",
        "unknown",
    ),
    denied(
        "attribute-notation-in-tablesample",
        "SELECT count(*) FROM orders TABLESAMPLE bernoulli (100) REPEATABLE ((1).evil)",
        "unknown",
    ),
    denied("attribute-notation-in-values-limit", "VALUES (1) LIMIT (1).evil", "unknown"),
    denied("attribute-notation-in-values-order", "VALUES (1) ORDER BY (1).evil", "unknown"),
    denied(
        "attribute-notation-past-deep-nesting",
        "SELECT ((1 IS NULL" + " IS NULL" * 400 + ") OR (1).evil > 0)",
        "unknown",
    ),
    denied(
        "attribute-notation-in-on-conflict",
        "EXPLAIN INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET status = (1).evil::text",
        "unknown",
    ),
    denied(
        "attribute-notation-in-dml-cte",
        "WITH x AS (SELECT (1).evil AS k) UPDATE orders SET status = status WHERE id IN (SELECT k FROM x)",
        "unknown",
    ),
    # Lineage resolves `c.evil` against the catalog: evil is no column of customers, so it is the
    # call evil(c), a function Gatehouse cannot see into: unknown, denied before it runs.
    denied("attribute-notation-calls-writer", "SELECT c.evil FROM customers c", "unknown"),
    denied("attribute-notation-in-parens-calls-writer", "SELECT (c).evil FROM customers c", "unknown"),
    denied("attribute-notation-on-a-value-calls-writer", "SELECT (id).evil FROM customers", "unknown"),
    denied("operator-calls-writer", "SELECT count(*) FROM customers WHERE id === id", "unknown"),
)


# -- what the database looks like ------------------------------------------------------------------

# The rows of both demo tables, as a count and a checksum of their text.
CONTENT = {
    "customers": "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM customers t",
    "orders": "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM orders t",
}


def database_state(con: pg8000.native.Connection) -> dict[str, Any]:
    """Everything a hostile statement could change, read as the superuser."""
    queries = {
        **CONTENT,
        "customers_seq": "SELECT last_value, is_called FROM customers_id_seq",
        "orders_seq": "SELECT last_value, is_called FROM orders_id_seq",
        "relations": "SELECT n.nspname, c.relname, c.relkind, c.relowner::regrole::text, c.relacl::text "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2",
        "rules": "SELECT tablename, rulename FROM pg_rules ORDER BY 1, 2",
        "functions": "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1",
        "roles": "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, "
        "rolreplication, rolbypassrls, rolconnlimit FROM pg_roles ORDER BY rolname",
        "memberships": "SELECT roleid::regrole::text, member::regrole::text FROM pg_auth_members "
        "ORDER BY 1, 2",
        "role_settings": "SELECT setdatabase, setrole, setconfig::text FROM pg_db_role_setting ORDER BY 1, 2",
        "database_acl": "SELECT datname, datacl::text FROM pg_database ORDER BY 1",
        "server_settings": "SELECT sourcefile, name, setting FROM pg_file_settings ORDER BY 1, 2",
        "large_objects": "SELECT count(*) FROM pg_largeobject_metadata",
        "prepared_transactions": "SELECT count(*) FROM pg_prepared_xacts",
    }
    return {key: con.run(sql) for key, sql in queries.items()}


def foreign_locks(con: pg8000.native.Connection) -> list[list[Any]]:
    """Row, table and advisory locks held on this database by any session but ours."""
    return con.run(
        "SELECT locktype, relation::regclass::text, mode, pid FROM pg_locks "
        "WHERE pid <> pg_backend_pid() "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND (locktype IN ('advisory', 'tuple') "
        "     OR relation IN ('customers'::regclass, 'orders'::regclass))"
    )


def wait_for_no_foreign_locks(con: pg8000.native.Connection) -> list[list[Any]]:
    # A session the gateway closed ends on the server a moment later; its locks go with it.
    deadline = time.monotonic() + LOCK_WAIT_S
    locks = foreign_locks(con)
    while locks and time.monotonic() < deadline:
        time.sleep(0.05)
        locks = foreign_locks(con)
    return locks


@pytest.fixture(scope="module")
def superuser(local_stack: RunningStack) -> Iterator[pg8000.native.Connection]:
    con = local_stack.db(CONNECTION)
    try:
        yield con
    finally:
        con.close()


@pytest.fixture(scope="module")
def baseline(superuser: pg8000.native.Connection) -> dict[str, Any]:
    """Plant the writers, grant the view to the prod role, and take the state every case must keep."""
    for path in PWNED_FILES:
        assert not os.path.exists(path), f"{path} exists before the test: remove it and rerun"
    for sql in PLANTED:
        superuser.run(sql)
    superuser.run(f"GRANT SELECT ON public.innocent TO {quote_ident(database_role(CONNECTION))}")
    state = database_state(superuser)
    assert state["customers"][0][0] > 0 and state["orders"][0][0] > 0
    return state


# -- what the session log and the request table hold ---------------------------------------------


def event_keys(local_stack: RunningStack) -> set[str]:
    s3 = local_stack.aws("s3")
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=local_stack.state["bucket"], Prefix=names.EVENTS_PREFIX
    ):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    return keys


def read_events(local_stack: RunningStack, keys: set[str]) -> list[dict[str, Any]]:
    s3 = local_stack.aws("s3")
    out = []
    for key in keys:
        body = s3.get_object(Bucket=local_stack.state["bucket"], Key=key)["Body"].read()
        out.extend(parse_events(body))
    return sorted(out, key=lambda e: (e["session_id"], e["seq"]))


def request_record(local_stack: RunningStack, request_id: str) -> dict[str, Any]:
    item = local_stack.aws("dynamodb").get_item(
        TableName=names.REQUESTS_TABLE, Key={"request_id": {"S": request_id}}, ConsistentRead=True
    )
    assert "Item" in item, f"no request record for {request_id}"
    return {k: next(iter(v.values())) for k, v in item["Item"].items()}


# -- the cases ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_hostile_statement_is_refused_and_changes_nothing(
    local_stack: RunningStack,
    superuser: pg8000.native.Connection,
    baseline: dict[str, Any],
    case: Hostile,
) -> None:
    # Given the database as planted and a log whose keys we know
    keys_before = event_keys(local_stack)

    # When the agent sends the hostile text through the signed API
    answer = local_stack.client("analyst").submit(CONNECTION, case.sql, reason="routine check")

    # Then the answer is the refusal the policy calls for
    body = answer.body
    assert answer.status_code == case.status, body
    if case.status == 202:
        assert body["status"] == "pending_approval"
        assert body["decision"]["effect"] == "approval"
        assert (
            body["decision"]["approval"]["groups"] == ["dba"] and body["decision"]["approval"]["quorum"] == 1
        )
        assert body["decision"]["policy_ids"] == ["prod-write-needs-dba"]
        assert "rows" not in body
    elif case.status == 403:
        assert body["status"] == "denied"
        assert body["decision"]["effect"] == "deny"
        assert "rows" not in body
        if case.statement_class in ("ddl", "privilege"):
            assert "prod-no-ddl-or-privilege" in body["decision"]["policy_ids"]
    elif case.status == 400:
        assert body["error"] == "sql_parse_error"
        assert body["request_id"]  # the refusal can be found in the session log
    else:
        assert body["error"] == "target_error"
        assert body["sqlstate"] == READ_ONLY_SQL_TRANSACTION
        assert body["request_id"]
    if case.status in (202, 403):
        assert body["statement_class"] == case.statement_class

    # And the database is as it was: nothing written, created, granted, locked or read off disk
    assert database_state(superuser) == baseline
    assert wait_for_no_foreign_locks(superuser) == []
    for path in PWNED_FILES:
        assert not os.path.exists(path)

    # And the session log holds one new session that says what happened, and never "executed".
    # (Sessions of earlier requests that wait for approval may gain events meanwhile: the state
    # machine records their preview and notification. None of them may say "executed" either.)
    new_events = read_events(local_stack, event_keys(local_stack) - keys_before)
    assert "executed" not in {e["kind"] for e in new_events}
    started = {e["session_id"] for e in new_events if e["kind"] == "received"}
    assert len(started) == 1, started
    (session_id,) = started
    new_events = [e for e in new_events if e["session_id"] == session_id]
    kinds = [e["kind"] for e in new_events]
    assert kinds[0] == "received"
    assert session_id == body["request_id"]
    if case.status == 202:
        assert "approval_requested" in kinds and kinds.index("approval_requested") == 2
        assert "refused" not in kinds
    elif case.status == 403:
        refused = [e for e in new_events if e["kind"] == "refused"]
        assert [e["outcome"] for e in refused] == ["denied"]
        assert [e["decision"] for e in new_events if e["kind"] == "decision"] == ["deny"]
    elif case.status == 400:
        refused = [e for e in new_events if e["kind"] == "refused"]
        assert len(refused) == 1
        assert refused[0]["error"].startswith("sql_parse_error")
        assert "decision" not in kinds
    else:
        failed = [e for e in new_events if e["kind"] == "failed"]
        assert len(failed) == 1 and failed[0]["outcome"] == "error"

    # And a request the API answered for is on record with the exact text and its SHA-256
    if case.status != 400:
        # A refused command's session id is its request id (the 422 answer does not carry it).
        record = request_record(local_stack, session_id)
        assert record["command"] == case.sql
        assert record["command_sha256"] == hashlib.sha256(case.sql.encode("utf-8")).hexdigest()
        assert record["principal_name"] == "analyst"
        assert record["connection"] == CONNECTION
        assert record["statement_class"] == case.statement_class
        assert record["status"] == {202: "pending_approval", 403: "denied", 422: "failed"}[case.status]


def test_a_pending_write_stays_pending_and_unrun(
    local_stack: RunningStack, superuser: pg8000.native.Connection, baseline: dict[str, Any]
) -> None:
    # Given a write that waits for a DBA
    sql = "UPDATE customers SET email = 'pending@example.com' WHERE id = 7"
    answer = local_stack.client("analyst").submit(CONNECTION, sql, reason="fix a typo")
    assert answer.status_code == 202, answer.body

    # When the agent reads its request back, a moment later
    time.sleep(0.2)
    again = local_stack.client("analyst").get_request(answer.body["request_id"])

    # Then it still waits, for the same exact command, and the row is untouched
    assert again.status_code == 200, again.body
    assert again.body["status"] == "pending_approval"
    assert again.body["sql"] == sql
    assert again.body["sql_sha256"] == hashlib.sha256(sql.encode("utf-8")).hexdigest()
    assert superuser.run("SELECT email FROM customers WHERE id = 7") != [["pending@example.com"]]
    assert database_state(superuser) == baseline


def test_a_command_the_database_refused_is_on_record_as_failed(
    local_stack: RunningStack, superuser: pg8000.native.Connection, baseline: dict[str, Any]
) -> None:
    # Given a read the database refuses (it divides by zero)
    keys_before = event_keys(local_stack)
    answer = local_stack.client("analyst").submit(CONNECTION, "SELECT 1 / (count(*) - count(*)) FROM orders")
    assert answer.status_code == 422, answer.body
    new_events = read_events(local_stack, event_keys(local_stack) - keys_before)
    (request_id,) = {e["session_id"] for e in new_events if e["kind"] == "received"}
    assert answer.body["request_id"] == request_id

    # When the agent reads its request back
    again = local_stack.client("analyst").get_request(request_id)

    # Then the record says it failed, and why (not "executing" forever)
    assert again.status_code == 200, again.body
    assert again.body["status"] == "failed", again.body
    assert again.body["error"].startswith("target_error")
    assert database_state(superuser) == baseline


def prod_role_connection(local_stack: RunningStack) -> pg8000.native.Connection:
    secret = local_stack.aws("secretsmanager").get_secret_value(
        SecretId=names.connection_secret_name(CONNECTION)
    )
    cred = json.loads(secret["SecretString"])
    pg = local_stack.postgres
    return pg8000.native.Connection(
        cred["username"], host=pg.host, port=pg.port, database=CONNECTION, password=cred["password"]
    )


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE customers SET email = 'x'",
        "DELETE FROM orders",
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
        "MERGE INTO customers c USING (SELECT 7 AS id) s ON c.id = s.id "
        "WHEN MATCHED THEN UPDATE SET email = 'x'",
        "SELECT public.evil()",
        "SELECT * FROM innocent",
        "SELECT c.evil FROM customers c",
        "SELECT count(*) FROM customers WHERE id === id",
    ],
)
def test_the_attacks_are_real(
    local_stack: RunningStack, superuser: pg8000.native.Connection, baseline: dict[str, Any], sql: str
) -> None:
    """With the connection's own credential and a read-write transaction, the text does change data."""
    con = prod_role_connection(local_stack)
    try:
        con.run("START TRANSACTION READ WRITE")
        con.run(sql)
        inside = {key: con.run(query) for key, query in CONTENT.items()}
        con.run("ROLLBACK")
    finally:
        con.close()
    assert inside != {key: baseline[key] for key in CONTENT}
    assert wait_for_no_foreign_locks(superuser) == []
    assert database_state(superuser) == baseline
