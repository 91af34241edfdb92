"""Run classified SQL on a Postgres target with pg8000.

Every request runs in one transaction of its own: READ ONLY when every statement is a read, with
a `statement_timeout` and a row limit. The caller's `before_commit` hook (mask + record) runs
before COMMIT, so a command whose outcome cannot be recorded is rolled back, not half-done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from gatehouse.exceptions import (
    BadRequestError,
    StatementTimeoutError,
    TargetError,
    TargetUnavailableError,
)
from gatehouse.models import Connection, QueryResult, Statement, StatementClass
from gatehouse.secrets import SecretStore

QUERY_CANCELED = "57014"  # statement_timeout fired
# Extra seconds the socket waits beyond the statement timeout before giving up on the server.
SOCKET_GRACE_S = 5.0
CURSOR = "gatehouse_result"


def _sqlstate(exc: DatabaseError) -> str | None:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    code = info.get("C")
    return str(code) if code else None


def _message(exc: DatabaseError) -> str:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return str(info.get("M") or "the database refused the statement")


class PostgresExecutor:
    def __init__(self, secrets: SecretStore) -> None:
        self._secrets = secrets

    def run(
        self,
        connection: Connection,
        statements: Sequence[Statement],
        *,
        timeout_ms: int,
        max_rows: int,
        before_commit: Callable[[QueryResult], None] | None = None,
    ) -> QueryResult:
        """Run the statements in order and return the last result set.

        Transaction control inside the text is refused: the executor owns the transaction, and a
        COMMIT in the text would end the READ ONLY transaction early.
        """
        if any(s.cls is StatementClass.TRANSACTION for s in statements):
            raise BadRequestError(
                "transaction control statements are not accepted here: each request runs in its "
                "own transaction",
                code="transaction_control_not_supported",
            )
        read_only = all(s.cls is StatementClass.READ for s in statements)
        con = self._connect(connection, timeout_ms)
        started = time.perf_counter()
        try:
            con.run("START TRANSACTION READ ONLY" if read_only else "START TRANSACTION READ WRITE")
            # SET LOCAL: the limit dies with the transaction; the value is an integer we formatted.
            con.run(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            result = QueryResult(columns=(), rows=(), row_count=0)
            for stmt in statements:
                result = self._run_one(con, stmt, max_rows)
            result = QueryResult(
                columns=result.columns,
                rows=result.rows,
                row_count=result.row_count,
                truncated=result.truncated,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            if before_commit is not None:
                before_commit(result)
            con.run("COMMIT")
            return result
        except DatabaseError as exc:
            raise self._translate(exc) from exc
        except (InterfaceError, OSError) as exc:
            raise TargetUnavailableError(
                f"lost the connection to {connection.name} while running the statement",
                code="target_unavailable",
            ) from exc
        finally:
            try:
                con.close()
            except (InterfaceError, OSError):
                pass  # the connection is already gone; closing it rolls back on the server

    def _run_one(self, con: pg8000.native.Connection, stmt: Statement, max_rows: int) -> QueryResult:
        if stmt.command == "copy":
            # COPY streams rows outside the result-set protocol, past column-name masking rules.
            raise BadRequestError(
                "COPY is not accepted through the API: use SELECT", code="copy_not_supported"
            )
        if stmt.cls is StatementClass.READ and stmt.command == "select":
            # A cursor bounds what the server sends: never more than max_rows + 1 rows come back,
            # however large the table. (SHOW and EXPLAIN cannot be cursors; their output is small.)
            con.run(f"DECLARE {CURSOR} NO SCROLL CURSOR FOR {stmt.text}")
            rows = con.run(f"FETCH FORWARD {int(max_rows) + 1} FROM {CURSOR}")
            columns = tuple(c["name"] for c in (con.columns or ()))
            con.run(f"CLOSE {CURSOR}")
            return _bounded(columns, rows or [], max_rows)
        rows = con.run(stmt.text)
        columns = tuple(c["name"] for c in (con.columns or ()))
        if rows is None:
            count = con.row_count if con.row_count is not None and con.row_count >= 0 else 0
            return QueryResult(columns=columns, rows=(), row_count=count)
        return _bounded(columns, rows, max_rows)

    def _connect(self, connection: Connection, timeout_ms: int) -> pg8000.native.Connection:
        cred = self._secrets.database_credential(connection.secret_id)
        try:
            con = pg8000.native.Connection(
                cred.username,
                host=connection.host,
                port=connection.port,
                database=connection.database,
                password=cred.password,
                # One socket timeout for connect and every read: the statement timeout plus a
                # grace period, so a server that stops answering cannot hold the request forever.
                timeout=timeout_ms / 1000 + SOCKET_GRACE_S,
                application_name="gatehouse",
            )
        except DatabaseError as exc:
            # Authentication and "database does not exist" land here. The server's message can
            # name the role: keep it out of what the agent sees.
            raise TargetUnavailableError(
                f"{connection.name} refused Gatehouse's connection ({_sqlstate(exc) or 'error'})",
                code="target_unavailable",
            ) from exc
        except (InterfaceError, OSError) as exc:
            raise TargetUnavailableError(
                f"{connection.name} is not reachable", code="target_unavailable"
            ) from exc
        return con

    @staticmethod
    def _translate(exc: DatabaseError) -> Exception:
        state = _sqlstate(exc)
        if state == QUERY_CANCELED:
            return StatementTimeoutError("the statement ran over its time limit and was cancelled")
        return TargetError(_message(exc), sqlstate=state)


def _bounded(columns: tuple[str, ...], rows: list[Any], max_rows: int) -> QueryResult:
    truncated = len(rows) > max_rows
    kept = rows[:max_rows]
    return QueryResult(
        columns=columns,
        rows=tuple(tuple(r) for r in kept),
        row_count=len(kept),
        truncated=truncated,
    )
