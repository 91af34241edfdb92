"""The Postgres proxy against a client that knows the protocol better than a driver does.

Each test is a finding of a red-team pass on the proxy's session state machine, or a variant of
one, driven through the same local stack as `test_pg_proxy` (its fixtures and raw socket client):

- statement and portal names: the server runs whatever it holds under a name, so a name the proxy
  did not decide the text of must never run (reused names, SQL `PREPARE`, records the server
  refused or skipped, SQL `FETCH` of a protocol portal);
- the read-only default: a lift the client's own transaction could undo must not leave the
  session read-write;
- approval with parameters: an approved text must not run with values bound later;
- LISTEN/NOTIFY payloads and the backend PID they carry;
- extended-protocol writes (psycopg, pg8000): they run, and one that cannot be lifted any more
  is refused before it runs, without using up an approval;
- a refused fast-path call in a block, and a Query in the middle of a batch.

What the proxy claims is checked where it shows: the client's answers, the database through the
cluster's superuser, and the request records.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pg8000.exceptions
import psycopg
import pytest

from gatehouse.audit.verify import load_objects
from gatehouse.local.provision import database_role
from gatehouse.local.seed import quote_ident
from gatehouse.proxy.postgres import messages as m
from tests.integration.conftest import RunningStack
from tests.integration.test_pg_proxy import (
    REQUEST_ID,
    Proxy,
    RawClient,
    approve,
    customer,
    psql,
    request_status,
    wait_for,
)

# Masked on demo-prod by lineage alone (computed values: no table column for the server to name).
MASKED_READ = (
    "SELECT name || '' AS x, email || '' AS y, replace(ssn, '-', ' ') AS z FROM customers ORDER BY id LIMIT 3"
)
# The same columns, nothing to mask. (With a FROM: a constant-only SELECT shares its query
# fingerprint with `SELECT 1`, and the decision cache would lend it another statement's lineage.)
HARMLESS = "SELECT 'a' AS x, 'b' AS y, 'c' AS z FROM orders WHERE id = 1"
INSERT_ORDER = "INSERT INTO orders (customer_id, amount, created_at, status) VALUES (1, 1, now(), '{status}')"
# A read that writes when it runs (a user-defined operator calling a function that inserts an
# order, `hidden_write`): if lineage does not see through it (it does once its catalog knows the
# operator), only the executor's read-only transaction stops it.
HIDDEN_WRITE = "SELECT 1 === 1"
HIDDEN_STATUS = "gh-hidden-write"


@pytest.fixture(scope="module")
def proxy(local_stack: RunningStack) -> Proxy:
    """The stack's proxy, with test_pg_proxy's logins and superuser connections."""
    assert local_stack.state.get("pg_proxy"), local_stack.state
    return Proxy(local_stack, {})


@pytest.fixture(scope="module")
def hidden_write(proxy: Proxy) -> str:
    """Plant HIDDEN_WRITE's operator in demo-dev, directly as superuser; it is a read to Gatehouse."""
    body = (
        "INSERT INTO orders (customer_id, amount, created_at, status) "
        f"VALUES (1, 1, now(), '{HIDDEN_STATUS}'); SELECT true"
    )
    con = proxy.superuser("demo-dev")
    try:
        con.run(
            f"CREATE FUNCTION public.gh_eq(integer, integer) RETURNS boolean LANGUAGE sql AS $$ {body} $$"
        )
        con.run("CREATE OPERATOR public.=== (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.gh_eq)")
        role = quote_ident(database_role("demo-dev"))
        con.run(f"GRANT EXECUTE ON FUNCTION public.gh_eq(integer, integer) TO {role}")
    finally:
        con.close()
    return HIDDEN_WRITE


# -- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def session(proxy: Proxy, connection: str, **parameters: str) -> Iterator[tuple[RawClient, int]]:
    """A raw protocol session, logged in; with the process id the proxy gave it (BackendKeyData)."""
    client = RawClient(proxy.address)
    try:
        login = client.login(proxy.login(connection), **parameters)
        assert isinstance(login[-1], m.ReadyForQuery), login
        keys = [msg for msg in login if isinstance(msg, m.BackendKeyData)]
        assert len(keys) == 1, login
        yield client, keys[0].process_id
    finally:
        client.close()


def cycle(client: RawClient, *messages: m.Message, ready: int = 1) -> list[m.Message]:
    """Send `messages` at once; what comes back up to the `ready`-th ReadyForQuery."""
    client.send(*messages)
    got: list[m.Message] = []
    while ready:
        message = client.receive()
        assert message is not None, f"the proxy closed the session after {got}"
        if isinstance(message, m.DataRow):
            # Its values are views of the client's receive buffer, which the next read reuses.
            message = m.DataRow([None if v is None else bytes(v) for v in message.values])
        got.append(message)
        if isinstance(message, m.ReadyForQuery):
            ready -= 1
    return got


def errors(got: list[m.Message]) -> list[tuple[str, str]]:
    return [(e.sqlstate, e.message) for e in got if isinstance(e, m.ErrorResponse)]


def codes(got: list[m.Message]) -> list[str]:
    return [code for code, _ in errors(got)]


def rows(got: list[m.Message]) -> list[list[str | None]]:
    return [
        [None if v is None else bytes(v).decode() for v in msg.values]
        for msg in got
        if isinstance(msg, m.DataRow)
    ]


def statuses(got: list[m.Message]) -> list[str]:
    return [msg.status for msg in got if isinstance(msg, m.ReadyForQuery)]


def show(client: RawClient, setting: str) -> str:
    got = cycle(client, m.Query(f"SHOW {setting}"))
    (value,) = rows(got)
    assert value[0] is not None
    return value[0]


def secrets(proxy: Proxy, database: str) -> set[str]:
    """Every name, email and SSN of the database (also the SSNs as MASKED_READ spells them)."""
    con = proxy.superuser(database)
    try:
        found = con.run("SELECT name, email, ssn FROM customers")
    finally:
        con.close()
    out = {str(v) for row in found for v in row if v}
    return out | {str(row[2]).replace("-", " ") for row in found if row[2]}


def leaked(got: Any, known: set[str]) -> list[str]:
    text = repr(got)
    return [s for s in known if s in text]


def orders_with(proxy: Proxy, database: str, status: str) -> int:
    con = proxy.superuser(database)
    try:
        return int(con.run("SELECT count(*) FROM orders WHERE status = :s", s=status)[0][0])
    finally:
        con.close()


def marker() -> str:
    return f"gh-{uuid.uuid4().hex[:10]}"


def pg8000_code(exc: pg8000.exceptions.DatabaseError) -> str:
    return str(exc.args[0]["C"])


def assert_read_only(client: RawClient, proxy: Proxy) -> None:
    """The session default is read-only again, down to the executor's own guard."""
    assert show(client, "default_transaction_read_only") == "on"
    assert show(client, "transaction_read_only") == "on"
    assert codes(cycle(client, m.Query(HIDDEN_WRITE))) in (["25006"], ["42501"])
    assert orders_with(proxy, "demo-dev", HIDDEN_STATUS) == 0


def closed_session_events(proxy: Proxy, tag: str) -> list[dict[str, Any]] | None:
    """The events of the closed proxy session whose log mentions `tag`, in order."""
    sessions, _ = load_objects(proxy.stack.aws("s3"), proxy.stack.state["bucket"])
    for objs in sessions.values():
        found = [line.event for obj in objs.objects for line in obj.lines if line.event is not None]
        if any(tag in str(e.get("statement") or "") for e in found) and any(
            e.get("kind") == "session_closed" for e in found
        ):
            return sorted(found, key=lambda e: int(e["seq"]))
    return None


# -- 1. statement and portal names ------------------------------------------------------------


def test_a_reused_statement_name_is_refused_and_runs_what_the_proxy_decided(proxy: Proxy) -> None:
    known = secrets(proxy, "demo-prod")
    with session(proxy, "demo-prod") as (client, _):
        assert not errors(cycle(client, m.Parse("s", MASKED_READ), m.Sync()))

        # The server would keep the first text (42P05); so does the proxy, without forwarding
        again = cycle(client, m.Parse("s", HARMLESS), m.Sync())
        assert errors(again) == [("42P05", 'prepared statement "s" already exists')]

        got = cycle(client, m.Bind("", "s"), m.Execute(""), m.Sync())
    assert len(rows(got)) == 3 and not errors(got)
    assert not leaked(got, known), "masked with the plan of a text the server did not run"


def test_a_name_prepared_in_sql_cannot_be_reparsed_or_bound(proxy: Proxy) -> None:
    """SQL PREPARE shares the protocol's namespace: the server holds the name, the proxy does not."""
    known = secrets(proxy, "demo-prod")
    with session(proxy, "demo-prod") as (client, _):
        assert not errors(cycle(client, m.Query(f"PREPARE w AS {MASKED_READ}")))
        # Pipelined: the Bind comes before the proxy has heard that the server refused the Parse
        got = cycle(
            client, m.Parse("w", HARMLESS), m.Sync(), m.Bind("", "w"), m.Execute(""), m.Sync(), ready=2
        )
    assert errors(got) == [
        ("42P05", 'prepared statement "w" already exists'),  # the server's
        ("26000", 'prepared statement "w" does not exist'),  # the proxy's: it never decided w
    ]
    assert not rows(got) and not leaked(got, known)


def test_an_unnamed_parse_the_server_skipped_leaves_nothing_to_bind(proxy: Proxy) -> None:
    """After an error the server skips the rest of the batch: it keeps its old unnamed statement."""
    known = secrets(proxy, "demo-prod")
    with session(proxy, "demo-prod") as (client, _):
        assert not errors(cycle(client, m.Query("PREPARE taken AS SELECT 1")))
        assert not errors(cycle(client, m.Parse("", MASKED_READ), m.Sync()))
        got = cycle(
            client,
            m.Parse("taken", "SELECT 2"),  # the server refuses it (42P05) and skips to Sync
            m.Parse("", HARMLESS),  # so this one never replaces the masked read
            m.Sync(),
            m.Bind("", ""),
            m.Execute(""),
            m.Sync(),
            ready=2,
        )
    assert codes(got) == ["42P05", "26000"]
    assert not rows(got) and not leaked(got, known)


def test_a_close_the_server_skipped_leaves_no_name_to_run(proxy: Proxy) -> None:
    known = secrets(proxy, "demo-prod")
    with session(proxy, "demo-prod") as (client, _):
        assert not errors(cycle(client, m.Query("PREPARE taken AS SELECT 1")))
        assert not errors(cycle(client, m.Parse("w", MASKED_READ), m.Sync()))
        got = cycle(
            client,
            m.Parse("taken", "SELECT 2"),  # fails, so the server skips the Close: it still holds w
            m.Close("S", "w"),
            m.Sync(),
            m.Parse("w", HARMLESS),  # the server refuses it: w exists
            m.Sync(),
            m.Bind("", "w"),
            m.Execute(""),
            m.Sync(),
            ready=3,
        )
    assert codes(got) == ["42P05", "42P05", "26000"]
    assert not rows(got) and not leaked(got, known)


@pytest.mark.parametrize(
    ("message", "sqlstate"),
    [
        (m.Bind("", "nosuch"), "26000"),
        (m.Describe("S", "nosuch"), "26000"),
        (m.Describe("P", "nosuch"), "34000"),
        (m.Execute("nosuch"), "34000"),
        (m.Execute(""), "34000"),
    ],
)
def test_a_name_the_proxy_does_not_hold_is_refused(proxy: Proxy, message: m.Message, sqlstate: str) -> None:
    with session(proxy, "demo-dev") as (client, _):
        got = cycle(client, message, m.Sync())
        assert codes(got) == [sqlstate]
        assert cycle(client, m.Query("SELECT 1"))[-1] == m.ReadyForQuery("I")


def test_a_cursor_declared_in_sql_cannot_be_run_by_execute(proxy: Proxy) -> None:
    known = secrets(proxy, "demo-dev")
    with session(proxy, "demo-dev") as (client, _):
        cycle(client, m.Query("BEGIN"))
        declared = cycle(client, m.Query("DECLARE c CURSOR FOR SELECT replace(ssn, '-', ' ') FROM customers"))
        assert not errors(declared)
        got = cycle(client, m.Execute("c"), m.Sync())
        assert codes(got) == ["34000"]
        cycle(client, m.Query("ROLLBACK"))
    assert not rows(got) and not leaked(got, known)


@pytest.mark.parametrize("sql", ["FETCH ALL FROM p", "MOVE FORWARD ALL IN p"])
def test_a_protocol_portal_cannot_be_run_by_sql_fetch_or_move(proxy: Proxy, sql: str) -> None:
    """A portal of a statement that needs approval would run unclaimed, and with FETCH's masking."""
    status = marker()
    with session(proxy, "demo-prod") as (client, _):
        cycle(client, m.Query("BEGIN"))
        write = f"UPDATE orders SET status = '{status}' WHERE id = 3 RETURNING id"
        bound = cycle(client, m.Parse("u", write), m.Bind("p", "u"), m.Sync())
        assert not errors(bound), bound
        got = cycle(client, m.Query(sql))
        assert codes(got) == ["42501"], got
        assert "bound through the protocol" in errors(got)[0][1]
        assert statuses(got) == ["E"]  # refused in a block: the block is aborted
        cycle(client, m.Query("ROLLBACK"))
    assert orders_with(proxy, "demo-prod", status) == 0


def test_close_deallocate_and_discard_keep_the_names_in_step(proxy: Proxy) -> None:
    def run(client: RawClient, name: str) -> list[m.Message]:
        return cycle(client, m.Bind("", name), m.Execute(""), m.Sync())

    with session(proxy, "demo-dev") as (client, _):
        cycle(client, m.Parse("w", "SELECT 1 AS a"), m.Sync())
        assert cycle(client, m.Close("S", "w"), m.Sync())[0] == m.CloseComplete()
        cycle(client, m.Parse("w", "SELECT 2 AS a"), m.Sync())
        assert rows(run(client, "w")) == [["2"]]

        assert not errors(cycle(client, m.Query("DEALLOCATE w")))
        cycle(client, m.Parse("w", "SELECT 3 AS a"), m.Sync())
        assert rows(run(client, "w")) == [["3"]]

        assert not errors(cycle(client, m.Query("DEALLOCATE ALL")))
        assert codes(run(client, "w")) == ["26000"]
        # and the name is free again, for the server and the proxy alike
        assert not errors(cycle(client, m.Parse("w", "SELECT 4 AS a"), m.Sync()))
        assert rows(run(client, "w")) == [["4"]]


def test_a_named_portal_can_be_bound_again_in_the_next_pipelined_batch(proxy: Proxy) -> None:
    """Autocommit: a portal ends with its batch; the proxy learns it from the batch's answer."""
    with session(proxy, "demo-dev") as (client, _):
        cycle(client, m.Parse("s", "SELECT 7 AS n FROM orders WHERE id = 1"), m.Sync())
        got = cycle(
            client,
            *(m.Bind("p", "s"), m.Execute("p"), m.Sync()),
            *(m.Bind("p", "s"), m.Execute("p"), m.Sync()),
            ready=2,
        )
    assert not errors(got) and rows(got) == [["7"], ["7"]]


def test_a_statement_that_needs_approval_runs_only_through_a_claimed_execute(proxy: Proxy) -> None:
    """Prod: the Parse of a write that needs approval is forwarded; nothing can run it unclaimed."""
    status = marker()
    write = f"UPDATE orders SET status = '{status}' WHERE id = 4"
    with session(proxy, "demo-prod") as (client, _):
        assert not errors(cycle(client, m.Parse("u", write), m.Sync()))
        got = cycle(client, m.Bind("", "u"), m.Execute(""), m.Sync())
        (error,) = errors(got)
        assert error[0] == "42501" and REQUEST_ID.search(error[1]), got
        # SQL EXECUTE of the same name is a statement no policy allows
        assert codes(cycle(client, m.Query("EXECUTE u"))) == ["42501"]
    assert orders_with(proxy, "demo-prod", status) == 0


# -- 2. the read-only default comes back -------------------------------------------------------


@pytest.mark.parametrize(
    "opening",
    [
        "BEGIN; " + INSERT_ORDER,  # the restore ran inside the block the client then rolled back
        "BEGIN; " + INSERT_ORDER + "; SELECT 1/0",  # the restore ran in a failed block: it failed
        INSERT_ORDER + "; BEGIN",  # the block began after the write, in the lifted transaction
    ],
)
def test_a_write_that_leaves_a_block_open_does_not_leave_the_session_read_write(
    proxy: Proxy, hidden_write: str, opening: str
) -> None:
    status = marker()
    with session(proxy, "demo-dev") as (client, _):
        opened = cycle(client, m.Query(opening.format(status=status)))
        assert statuses(opened) in (["T"], ["E"]), opened
        cycle(client, m.Query("ROLLBACK"))
        assert_read_only(client, proxy)
    assert orders_with(proxy, "demo-dev", status) == 0


def test_the_read_only_default_comes_back_for_a_pipelined_client(proxy: Proxy, hidden_write: str) -> None:
    status = marker()
    with session(proxy, "demo-dev") as (client, _):
        got = cycle(
            client,
            m.Query("BEGIN; " + INSERT_ORDER.format(status=status)),
            m.Query("ROLLBACK"),
            m.Query("SHOW transaction_read_only"),
            m.Query(hidden_write),
            ready=4,
        )
    assert rows(got) == [["on"]] and codes(got) in (["25006"], ["42501"])
    assert orders_with(proxy, "demo-dev", status) == 0
    assert orders_with(proxy, "demo-dev", HIDDEN_STATUS) == 0


def test_after_a_rollback_in_the_same_message_the_restore_cannot_come_between(
    proxy: Proxy, hidden_write: str
) -> None:
    status = marker()
    with session(proxy, "demo-dev") as (client, _):
        cycle(client, m.Query("BEGIN; " + INSERT_ORDER.format(status=status)))
        got = cycle(client, m.Query("ROLLBACK; SHOW transaction_read_only"))
        assert codes(got) == ["0A000"] and not rows(got)
        cycle(client, m.Query("ROLLBACK"))
        assert_read_only(client, proxy)


def test_a_batch_cannot_go_on_past_a_rollback_while_the_restore_is_uncertain(
    proxy: Proxy, hidden_write: str
) -> None:
    status = marker()
    with session(proxy, "demo-dev") as (client, _):
        cycle(client, m.Query("BEGIN; " + INSERT_ORDER.format(status=status)))
        got = cycle(
            client,
            m.Parse("", "ROLLBACK"),
            m.Bind("", ""),
            m.Execute(""),
            m.Parse("", hidden_write),  # would run outside the block, the restore undone
            m.Bind("", ""),
            m.Execute(""),
            m.Sync(),
        )
        assert codes(got) == ["0A000"] and statuses(got) == ["I"], got
        assert_read_only(client, proxy)
    assert orders_with(proxy, "demo-dev", status) == 0


def test_a_block_cannot_begin_in_a_lifted_extended_batch(proxy: Proxy, hidden_write: str) -> None:
    """What followed BEGIN there would run in a read-write block, whatever it is."""
    status = marker()
    with session(proxy, "demo-dev") as (client, _):
        got = cycle(
            client,
            m.Parse("", INSERT_ORDER.format(status=status)),
            m.Bind("", ""),
            m.Execute(""),
            m.Parse("b", "BEGIN"),
            m.Bind("", "b"),
            m.Execute(""),
            m.Parse("r", hidden_write),
            m.Bind("", "r"),
            m.Execute(""),
            m.Sync(),
        )
        assert codes(got) == ["0A000"] and statuses(got) == ["I"], got
        assert_read_only(client, proxy)
    assert orders_with(proxy, "demo-dev", status) == 0  # the batch failed: its INSERT too


def test_a_lifted_message_cannot_leave_open_a_block_that_began_with_a_read(proxy: Proxy) -> None:
    status = marker()
    insert = INSERT_ORDER.format(status=status)
    with session(proxy, "demo-dev") as (client, _):
        got = cycle(client, m.Query(f"BEGIN; SELECT count(*) FROM orders; {insert}"))
        assert codes(got) == ["0A000"] and statuses(got) == ["I"], got
        # closed in the same message, the block is only part of the lifted transaction
        closed = cycle(client, m.Query(f"BEGIN; SELECT count(*) FROM orders; {insert}; COMMIT"))
        assert not errors(closed) and statuses(closed) == ["I"], closed
        assert show(client, "transaction_read_only") == "on"
    assert orders_with(proxy, "demo-dev", status) == 1


def test_a_block_begun_after_the_write_in_one_message_is_read_only(proxy: Proxy) -> None:
    """`INSERT ...; BEGIN`: the block begins in the lifted transaction, but not with the write, so
    it is read-only as a block that begins with a read is; `BEGIN; INSERT ...` stays read-write, as
    BEGIN and then the write do."""
    status = marker()
    insert = INSERT_ORDER.format(status=status)
    with session(proxy, "demo-dev") as (client, _):
        assert statuses(cycle(client, m.Query(f"{insert}; BEGIN"))) == ["T"]
        assert show(client, "transaction_read_only") == "on"
        assert codes(cycle(client, m.Query(insert))) == ["25006"]
        cycle(client, m.Query("ROLLBACK"))

        assert statuses(cycle(client, m.Query(f"BEGIN; {insert}"))) == ["T"]
        assert show(client, "transaction_read_only") == "off"
        assert not errors(cycle(client, m.Query(insert)))
        cycle(client, m.Query("COMMIT"))
        assert show(client, "transaction_read_only") == "on"
    # BEGIN took the first INSERT into its block (a Query's statements share a transaction), so
    # the ROLLBACK undid it: the two of the second block remain
    assert orders_with(proxy, "demo-dev", status) == 2


def test_copy_from_stdin_is_lifted_and_restored_after_its_data(proxy: Proxy) -> None:
    """The server takes nothing but COPY data until CopyDone: the restore waits for it."""
    status = marker()
    with proxy.login("demo-dev").psycopg(autocommit=True) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY orders (customer_id, amount, created_at, status) FROM STDIN") as copy:
                for customer_id in (1, 2, 3):
                    copy.write_row((customer_id, 1, "2024-01-01", status))
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
    assert orders_with(proxy, "demo-dev", status) == 3


def test_psql_begin_and_a_write_in_one_message_then_rollback(proxy: Proxy) -> None:
    status = marker()
    script = (
        f"BEGIN \\; {INSERT_ORDER.format(status=status)};\n"
        "ROLLBACK;\nSHOW default_transaction_read_only;\nSHOW transaction_read_only;\n"
    )
    result = psql(proxy.login("demo-dev"), "-A", "-t", stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["on", "on"], result.stdout
    assert orders_with(proxy, "demo-dev", status) == 0


# -- 4. an approval covers the statement that runs -------------------------------------------------


def test_a_statement_that_needs_approval_cannot_take_parameter_values(proxy: Proxy) -> None:
    status = marker()
    with session(proxy, "demo-prod") as (client, _):
        got = cycle(
            client,
            m.Parse("", "UPDATE orders SET status = $1 WHERE id >= $2"),
            m.Bind("", "", (), (status.encode(), b"0")),
            m.Execute(""),
            m.Sync(),
        )
    ((code, message),) = errors(got)
    assert code == "42501" and "inline" in message and not REQUEST_ID.search(message), message
    assert orders_with(proxy, "demo-prod", status) == 0


def test_drivers_binding_values_to_a_statement_that_needs_approval_are_refused(proxy: Proxy) -> None:
    ssn = str(customer(proxy, "demo-prod", 1)["ssn"])
    with proxy.login("demo-prod").psycopg(autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="inline"):
            conn.execute("UPDATE orders SET status = %s WHERE id = %s", ("bound", 1))
        # A read that filters on a protected column waits for approval: an approved text with a
        # parameter would let any value be tried afterwards
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="inline"):
            conn.execute("SELECT id FROM customers WHERE ssn = %s", (ssn,))
        assert conn.execute("SELECT id FROM customers WHERE id = 1").fetchone() == (1,)
    con = proxy.login("demo-prod").pg8000()
    try:
        with pytest.raises(pg8000.exceptions.DatabaseError, match="inline"):
            con.run("UPDATE orders SET status = :s WHERE id = 1", s="bound")
    finally:
        con.close()


def test_an_approved_write_runs_once_through_pg8000s_extended_protocol(
    proxy: Proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    note = f"extended protocol {marker()}"
    sql = f"UPDATE customers SET notes = '{note}' WHERE id = 13"
    con = proxy.login("demo-prod").pg8000()
    try:
        with pytest.raises(pg8000.exceptions.DatabaseError) as held:
            con.run(sql)
        found = REQUEST_ID.search(str(held.value))
        assert found and pg8000_code(held.value) == "42501", held.value
        approve(proxy, found.group(1), capsys)

        con.run(sql)
        assert con.row_count == 1
        assert customer(proxy, "demo-prod", 13)["notes"] == note
        with pytest.raises(pg8000.exceptions.DatabaseError) as again:
            con.run(sql)
        assert found.group(1) not in str(again.value) and REQUEST_ID.search(str(again.value))
        assert con.run("SHOW transaction_read_only") == [["on"]]
    finally:
        con.close()


# -- 6. LISTEN/NOTIFY ------------------------------------------------------------------------------


def upstream_pids(proxy: Proxy, application_name: str) -> list[int]:
    con = proxy.superuser("postgres")
    try:
        found = con.run("SELECT pid FROM pg_stat_activity WHERE application_name = :a", a=application_name)
        return [int(row[0]) for row in found]
    finally:
        con.close()


def test_a_notification_is_masked_and_names_the_proxys_key_not_the_backend(proxy: Proxy) -> None:
    real = customer(proxy, "demo-dev", 1)
    app = marker()
    with session(proxy, "demo-dev", application_name=app) as (client, key_pid):
        cycle(client, m.Query("LISTEN c"))
        got = cycle(client, m.Query("SELECT pg_notify('c', ssn || ' ' || email) FROM customers WHERE id = 1"))
        notes = [msg for msg in got if isinstance(msg, m.NotificationResponse)]
        (upstream,) = upstream_pids(proxy, app)
    assert len(notes) == 1, got
    note = notes[0]
    assert note.channel == "c"
    assert real["ssn"] not in note.payload and real["email"] not in note.payload, note.payload
    assert note.process_id == key_pid != upstream


def test_psycopg_sees_another_sessions_notification_masked_and_without_its_pid(proxy: Proxy) -> None:
    real = customer(proxy, "demo-dev", 2)
    login = proxy.login("demo-dev")
    with login.psycopg(autocommit=True) as listener, login.psycopg(autocommit=True) as sender:
        listener.execute("LISTEN news")
        sender.execute(f"NOTIFY news, 'write to {real['email']} about {real['ssn']}'")
        (note,) = list(listener.notifies(timeout=10, stop_after=1))
        own_key = listener.info.backend_pid
    assert note.channel == "news"
    assert real["email"] not in note.payload and real["ssn"] not in note.payload, note.payload
    assert note.pid == 0 and own_key != 0


# -- 8. writes through the extended protocol -------------------------------------------------------


def test_psycopg_writes_with_parameters_run_and_the_session_stays_read_only(proxy: Proxy) -> None:
    status = marker()
    insert = "INSERT INTO orders (customer_id, amount, created_at, status) VALUES (%s, 1, now(), %s)"
    login = proxy.login("demo-dev")
    with login.psycopg(autocommit=True) as conn:
        conn.execute(insert, (1, status))
        conn.execute(insert, (2, status), prepare=True)
        conn.execute(insert, (3, status), prepare=True)
        with conn.pipeline():
            for customer_id in (4, 5, 6):
                conn.execute(insert, (customer_id, status))
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
    with login.psycopg() as conn:  # a transaction: BEGIN, then the write first in it
        conn.execute(insert, (7, status))
        conn.execute("SELECT count(*) FROM orders").fetchone()
        conn.execute(insert, (8, status))
        conn.commit()
    assert orders_with(proxy, "demo-dev", status) == 8


def test_pg8000_writes_with_parameters_run(proxy: Proxy) -> None:
    status = marker()
    insert = "INSERT INTO orders (customer_id, amount, created_at, status) VALUES (:c, 1, now(), :s)"
    con = proxy.login("demo-dev").pg8000()
    try:
        con.run(insert, c=1, s=status)
        con.run("BEGIN")
        con.run(insert, c=2, s=status)
        con.run("COMMIT")
        statement = con.prepare(insert)
        try:
            for customer_id in (3, 4):
                statement.run(c=customer_id, s=status)
        finally:
            statement.close()
        assert con.run("SHOW transaction_read_only") == [["on"]]
    finally:
        con.close()
    assert orders_with(proxy, "demo-dev", status) == 4


def test_a_write_after_a_read_in_one_batch_is_refused_before_anything_runs(proxy: Proxy) -> None:
    status = marker()
    with session(proxy, "demo-dev") as (client, _):
        got = cycle(
            client,
            m.Parse("", "SELECT count(*) FROM orders"),
            m.Bind("", ""),
            m.Execute(""),
            m.Parse("", INSERT_ORDER.format(status=status)),
            m.Bind("", ""),
            m.Execute(""),
            m.Sync(),
        )
        ((code, message),) = errors(got)
        assert code == "25006" and "first in a batch" in message, message
        # the same write, first in its own batch, runs
        alone = cycle(
            client, m.Parse("", INSERT_ORDER.format(status=status)), m.Bind("", ""), m.Execute(""), m.Sync()
        )
        assert not errors(alone)
    assert orders_with(proxy, "demo-dev", status) == 1


def test_psycopg_a_write_in_a_transaction_that_began_with_a_read_is_refused(proxy: Proxy) -> None:
    status = marker()
    insert = "INSERT INTO orders (customer_id, amount, created_at, status) VALUES (%s, 1, now(), %s)"
    with proxy.login("demo-dev").psycopg() as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="began read-only"):
            conn.execute(insert, (1, status))
        conn.rollback()
        conn.execute(insert, (1, status))
        conn.commit()
    assert orders_with(proxy, "demo-dev", status) == 1


def test_an_approval_is_not_used_up_by_a_write_that_cannot_run(
    proxy: Proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    note = f"kept approval {marker()}"
    sql = f"UPDATE customers SET notes = '{note}' WHERE id = 14"
    login = proxy.login("demo-prod")
    first = psql(login, "-c", sql)
    found = REQUEST_ID.search(first.stderr)
    assert found, first.stderr
    request_id = found.group(1)
    approve(proxy, request_id, capsys)

    with login.psycopg() as conn:  # a transaction that begins with a read
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(sql)
        conn.rollback()
    assert request_status(proxy, request_id) == "approved"
    assert customer(proxy, "demo-prod", 14)["notes"] != note

    with login.psycopg(autocommit=True) as conn:
        assert conn.execute(sql).rowcount == 1
    assert customer(proxy, "demo-prod", 14)["notes"] == note


def test_an_approval_claimed_by_an_execute_the_server_skipped_is_given_back(
    proxy: Proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Execute claims the approval before the server has answered the batch's earlier
    messages; when one of those fails the server skips the Execute: the write never ran, so its
    approval must still be there for the statement's next coming, and run it once."""
    note = f"skipped approval {marker()}"
    sql = f"UPDATE customers SET notes = '{note}' WHERE id = 15"
    login = proxy.login("demo-prod")
    found = REQUEST_ID.search(psql(login, "-c", sql).stderr)
    assert found
    request_id = found.group(1)
    approve(proxy, request_id, capsys)

    with session(proxy, "demo-prod") as (client, _):
        got = cycle(
            client,
            m.Parse("", sql),
            m.Parse("bad", "SELECT 'not a number'::integer FROM orders WHERE id = 1"),  # fails at Parse
            m.Bind("", ""),
            m.Execute(""),
            m.Sync(),
        )
    assert codes(got) == ["22P02"], got
    assert customer(proxy, "demo-prod", 15)["notes"] != note
    assert wait_for(lambda: request_status(proxy, request_id) == "approved"), request_status(
        proxy, request_id
    )

    with login.psycopg(autocommit=True) as conn:
        assert conn.execute(sql).rowcount == 1
    assert customer(proxy, "demo-prod", 15)["notes"] == note
    assert wait_for(lambda: request_status(proxy, request_id) == "executed")


def test_a_batch_lifted_for_a_write_that_needs_approval_runs_nothing_else_first(proxy: Proxy) -> None:
    """Prod: the Parse of such a write lifts its batch before its approval is claimed at Execute;
    a read in that batch (a hidden write, say) must not ride on it."""
    status = marker()
    with session(proxy, "demo-prod") as (client, _):
        got = cycle(
            client,
            m.Parse("", f"UPDATE orders SET status = '{status}' WHERE id = 5"),
            m.Parse("r", "SELECT count(*) FROM orders"),
            m.Bind("", "r"),
            m.Execute(""),
            m.Sync(),
        )
    ((code, message),) = errors(got)
    assert code == "42501" and "not claimed" in message, message
    assert not rows(got)


# -- minor: the fast path, and a Query in the middle of a batch --------------------------------------


def test_a_refused_function_call_in_a_block_aborts_the_block(proxy: Proxy) -> None:
    with session(proxy, "demo-prod") as (client, _):
        cycle(client, m.Query("BEGIN"))
        got = cycle(client, m.FunctionCall(1299))  # now()
        assert codes(got) == ["42501"] and statuses(got) == ["E"]
        after = cycle(client, m.Query("SELECT 1"))
        assert codes(after) == ["25P02"]
        cycle(client, m.Query("ROLLBACK"))


def test_a_query_in_the_middle_of_a_failed_batch_keeps_every_answer_in_its_place(proxy: Proxy) -> None:
    """Postgres skips a Query sent after an error in an unsynced batch and answers nothing for it:
    the proxy ends the batch first, so no answer is taken for another message's (and masked with
    its plan)."""
    known = secrets(proxy, "demo-prod")
    with session(proxy, "demo-prod") as (client, _):
        cycle(client, m.Query("PREPARE taken AS SELECT 1"))
        got = cycle(client, m.Parse("taken", "SELECT 2"), m.Query(HARMLESS), m.Query(MASKED_READ), ready=2)
        assert codes(got) == ["42P05"]
        assert rows(got)[0] == ["a", "b", "c"] and len(rows(got)) == 4
        assert not leaked(got, known)
        assert rows(cycle(client, m.Query(HARMLESS))) == [["a", "b", "c"]]


def test_the_session_log_records_the_text_that_ran(proxy: Proxy) -> None:
    """The red team's log said `executed | SELECT 1` for a DELETE: it names what the server ran."""
    tag = marker()
    first, second = f"SELECT 'first {tag}' AS v", f"SELECT 'second {tag}' AS v"
    with session(proxy, "demo-dev") as (client, _):
        cycle(client, m.Parse("w", first), m.Sync())
        assert codes(cycle(client, m.Parse("w", second), m.Sync())) == ["42P05"]
        assert rows(cycle(client, m.Bind("", "w"), m.Execute(""), m.Sync())) == [[f"first {tag}"]]

    events = wait_for(lambda: closed_session_events(proxy, tag), timeout_s=20, interval_s=0.5)
    assert events, "no closed proxy session with the tag in the log"
    executed = [e for e in events if e["kind"] == "executed"]
    refused = [e for e in events if e["kind"] == "refused"]
    assert [e["statement"] for e in executed] == [first] and executed[0]["row_count"] == 1
    assert [e["statement"] for e in refused] == [second] and refused[0]["error"].startswith("42P05")


def test_a_write_rolled_back_by_a_later_error_of_its_batch_is_not_logged_as_executed(proxy: Proxy) -> None:
    """Extended protocol: the Executes up to Sync share one implicit transaction. A write that
    completed and then lost its effects to a later error of the batch is `failed` in the log,
    whereas one whose batch ended well is `executed` (and a statement in a block stays as it ran)."""
    kept, lost = marker(), marker()
    insert = INSERT_ORDER.format(status="{}")
    with session(proxy, "demo-dev") as (client, _):
        got = cycle(
            client,
            m.Parse("", insert.format(lost)),
            m.Bind("", ""),
            m.Execute(""),
            m.Parse("", f"SELECT 1 / (id - id) FROM orders WHERE id = 1 AND '{lost}' <> ''"),
            m.Bind("", ""),
            m.Execute(""),
            m.Sync(),
        )
        assert codes(got) == ["22012"], got  # division by zero
        assert statuses(got) == ["I"]
        got = cycle(client, m.Parse("", insert.format(kept)), m.Bind("", ""), m.Execute(""), m.Sync())
        assert not codes(got), got
    assert orders_with(proxy, "demo-dev", lost) == 0
    assert orders_with(proxy, "demo-dev", kept) == 1

    events = wait_for(lambda: closed_session_events(proxy, lost), timeout_s=20, interval_s=0.5)
    assert events, "no closed proxy session with the tag in the log"
    outcomes = [
        (e["kind"], e["outcome"])
        for e in events
        if lost in str(e["statement"]) or kept in str(e["statement"])
    ]
    ran = [o for o in outcomes if o[0] in ("executed", "failed")]
    assert ran == [("failed", "error"), ("failed", "error"), ("executed", "ok")], outcomes
    rolled = next(e for e in events if e["kind"] == "failed" and "INSERT" in str(e["statement"]))
    assert rolled["error"].startswith("rolled back"), rolled["error"]


def test_the_proxys_lift_and_restore_are_not_reported_to_the_client(proxy: Proxy) -> None:
    """Postgres reports each change of default_transaction_read_only (ParameterStatus): the
    client is told the session's default at login and nothing of the proxy's own flips after."""
    status = marker()
    with session(proxy, "demo-dev") as (client, _):
        got = cycle(client, m.Query(INSERT_ORDER.format(status=status)))
        got += cycle(
            client, m.Parse("", INSERT_ORDER.format(status=status)), m.Bind("", ""), m.Execute(""), m.Sync()
        )
        got += cycle(client, m.Query("SELECT 1"))
        assert not codes(got), got
    reported = [msg for msg in got if isinstance(msg, m.ParameterStatus)]
    assert all(msg.name != "default_transaction_read_only" for msg in reported), reported
    assert orders_with(proxy, "demo-dev", status) == 2


def test_psycopg_pipeline_transactions_run_their_writes_and_refuse_one_after_a_read(proxy: Proxy) -> None:
    """psycopg's pipeline mode outside autocommit: the block begun for the write is lifted for
    it; one that began with a read stays read-only."""
    status = marker()
    insert = "INSERT INTO orders (customer_id, amount, created_at, status) VALUES (%s, 1, now(), %s)"
    with proxy.login("demo-dev").psycopg() as conn:
        with conn.pipeline():
            conn.execute(insert, (1, status))
            conn.execute(insert, (2, status))
        conn.commit()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="began read-only"):
            with conn.pipeline():
                conn.execute("SELECT count(*) FROM orders")
                conn.execute(insert, (3, status))
        conn.rollback()
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
    assert orders_with(proxy, "demo-dev", status) == 2


def test_a_write_bound_first_in_a_block_keeps_its_unnamed_statement(proxy: Proxy, hidden_write: str) -> None:
    """A write parsed before the block (unnamed), bound in it: the block's lift must not drop the
    unnamed statement the Bind names (a Query would, and the server would answer 26000)."""
    status = marker()
    with session(proxy, "demo-dev") as (client, _):
        assert not codes(cycle(client, m.Parse("", INSERT_ORDER.format(status=status)), m.Sync()))
        assert not codes(cycle(client, m.Parse("b", "BEGIN"), m.Bind("", "b"), m.Execute(""), m.Sync()))
        got = cycle(client, m.Bind("", ""), m.Execute(""), m.Sync())
        assert not codes(got), got
        assert statuses(got) == ["T"]
        assert not codes(cycle(client, m.Query("COMMIT")))
        assert_read_only(client, proxy)
    assert orders_with(proxy, "demo-dev", status) == 1


def test_a_block_begun_in_the_batch_of_its_first_write_is_lifted_where_the_write_comes(
    proxy: Proxy, hidden_write: str
) -> None:
    """BEGIN and the write in one batch (a pipelining client): the proxy lifts the block with
    messages of its own between them; a block that something else used first is not lifted."""
    kept, refused = marker(), marker()
    with session(proxy, "demo-dev") as (client, _):
        got = cycle(
            client,
            m.Parse("b", "BEGIN"),
            m.Bind("", "b"),
            m.Execute(""),
            m.Parse("", INSERT_ORDER.format(status=kept)),
            m.Bind("", ""),
            m.Execute(""),
            m.Sync(),
        )
        assert not codes(got), got
        # The client sees the answers to its own messages only.
        assert [type(x).__name__ for x in got] == [
            "ParseComplete", "BindComplete", "CommandComplete",
            "ParseComplete", "BindComplete", "CommandComplete", "ReadyForQuery",
        ]  # fmt: skip
        assert statuses(got) == ["T"]
        assert not codes(cycle(client, m.Query("COMMIT")))
        got = cycle(
            client,
            m.Parse("", "BEGIN"),
            m.Bind("", ""),
            m.Execute(""),
            m.Parse("r", "SELECT count(*) FROM orders"),
            m.Parse("", INSERT_ORDER.format(status=refused)),
            m.Bind("", ""),
            m.Execute(""),
            m.Sync(),
        )
        ((code, message),) = errors(got)
        assert code == "25006" and "began read-only" in message, message
        cycle(client, m.Query("ROLLBACK"))
        assert_read_only(client, proxy)
    assert orders_with(proxy, "demo-dev", kept) == 1
    assert orders_with(proxy, "demo-dev", refused) == 0
