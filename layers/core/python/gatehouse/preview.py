"""What a write would do, shown to approvers before anyone is asked to decide.

`preview_statements` takes an open pg8000 native connection (not in a transaction; the caller
opens it with `gatehouse.targets.postgres.connect` and closes it) and the classified statements
of the waiting command, and answers in one of two modes:

- "explain": `EXPLAIN (FORMAT JSON)` of each statement, no ANALYZE, so nothing is executed. It runs
  in a READ ONLY transaction (PostgreSQL skips the read-only check for a plan that is only
  explained, so `EXPLAIN UPDATE` works there; anything the planner might evaluate still cannot
  write). Each statement under its own savepoint, so one that cannot be planned does not hide
  the others. Statements without a plan (DDL, SET, BEGIN...) are listed, never sent.
- "dry_run": the statements run once, in order, in a transaction that is always rolled back,
  with a short `statement_timeout` and `lock_timeout`. Each INSERT, UPDATE or DELETE is re-deparsed
  with `RETURNING *` and wrapped in a CTE, so the server counts the affected rows and sends back at
  most `SAMPLE_ROWS` of them however many it changed; samples go through `mask_rows`.
  A rollback undoes table changes, not everything: a dry run falls back to "explain" (and says
  why in "fallback") when any statement is not an INSERT, UPDATE, DELETE or MERGE of class write,
  calls a function that is not a known read (`classify_function`: sequences, dblink, user code),
  or targets a relation whose own code would run: a user trigger, a foreign or non-table
  relation, or (for an INSERT, a MERGE or an UPDATE that sets DEFAULT) a column default that is an
  identity, calls a sequence or anything else that is not a known read.

Nothing here raises for what the database says: a statement that fails (a constraint, a lock
timeout) is reported with its SQLSTATE in its "error", and statements after a failed one in a dry
run are reported as not run, since the real command would stop there too. The transaction is
rolled back on every path; if even the ROLLBACK fails, the connection is closed, which makes the
server abort it.

The answer (JSON-ready):
    {"mode": "explain" | "dry_run", "fallback": str | None,
     "statements": [{"text", "estimated_rows": int | None, "plan": str,
                     "affected_rows": int | None, "sample_rows": {"columns", "rows"} | None,
                     "error": str | None}]}
`mask_rows(columns, rows)` masks sample rows (the target table's own columns, as `RETURNING *`
names them); `mask_text(text)` (e.g. `Masker.mask_text`) masks each statement's text and error
message (an error can quote a value); without it they are returned as they are.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError
from pglast import ast, parse_sql
from pglast.enums import CmdType
from pglast.parser import ParseError
from pglast.stream import RawStream

from gatehouse.classify import classify
from gatehouse.classify.functions import classify_function
from gatehouse.models import Statement, StatementClass

MODES = ("explain", "dry_run")
SAMPLE_ROWS = 5
DEFAULT_TIMEOUT_MS = 2000
# Waiting on another session's row lock is the likeliest way a preview gets slow; it must not
# hold the agent's 202 (and that session) for long.
MAX_LOCK_TIMEOUT_MS = 500
PLAN_NODES = 3  # nodes of the plan's first branch shown in "plan"
EXPLAINABLE = frozenset({"select", "insert", "update", "delete", "merge"})
DRY_RUN_COMMANDS = frozenset({"insert", "update", "delete", "merge"})
# PostgreSQL 15 has no MERGE ... RETURNING (it came in 17), nor MERGE in a WITH: count only.
SAMPLED_COMMANDS = frozenset({"insert", "update", "delete"})
# Commands that may fill a column from its default (an UPDATE only through SET col = DEFAULT).
DEFAULT_FILLING = frozenset({"insert", "merge"})
SAMPLE_CTE = "gatehouse_preview_rows"
SAVEPOINT = "gatehouse_preview"
NOT_RUN = "not run: an earlier statement failed"

MaskRows = Callable[[Sequence[str], list[list[Any]]], Sequence[Sequence[Any]]]
MaskText = Callable[[str], str]

# What the target relation brings along when it is changed: its kind, user triggers (on it or
# any partition), and its columns' defaults (identity columns spelled as such).
_TARGET_CODE = """
SELECT c.relkind::text,
  (SELECT string_agg(DISTINCT t.tgname, ', ')
     FROM pg_trigger t
    WHERE NOT t.tgisinternal AND t.tgenabled <> 'D'
      AND t.tgrelid IN (SELECT c.oid UNION ALL SELECT relid FROM pg_partition_tree(c.oid))),
  (SELECT json_agg(json_build_array(a.attname, a.attidentity::text, pg_get_expr(d.adbin, d.adrelid))
           ORDER BY a.attnum)
     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
      AND (a.attidentity <> '' OR d.adbin IS NOT NULL))
FROM pg_class c WHERE c.oid = to_regclass(:name)
"""
_PLAIN_RELKINDS = frozenset({"r", "p"})  # ordinary and partitioned tables


# pg8000 raises DatabaseError for what the server answers, InterfaceError (or a bare OSError) when
# the connection itself fails.
_DRIVER_ERRORS = (DatabaseError, InterfaceError, OSError)


class _Blocked(Exception):
    """A reason a dry run could leave something behind: fall back to explain."""


def preview_statements(
    con: pg8000.native.Connection,
    statements: Sequence[Statement],
    *,
    mode: str,
    mask_rows: MaskRows,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    mask_text: MaskText | None = None,
) -> dict[str, Any]:
    """Preview `statements` on `con` in `mode` ("explain" or "dry_run"); see the module doc.

    `timeout_ms` bounds each statement (`statement_timeout`); the lock wait is bounded by the
    smaller of it and MAX_LOCK_TIMEOUT_MS.
    """
    if mode not in MODES:
        raise ValueError(f"preview mode must be one of {MODES}, got {mode!r}")
    if timeout_ms < 1:
        raise ValueError("timeout_ms must be positive")
    limits = (timeout_ms, min(timeout_ms, MAX_LOCK_TIMEOUT_MS))
    masks = _Masks(mask_rows, mask_text or _as_is)
    fallback = None
    if mode == "dry_run":
        fallback = dry_run_blocker(statements)
        if fallback is None:
            dry = _dry_run(con, statements, masks, limits)
            if isinstance(dry, list):
                return {"mode": "dry_run", "fallback": None, "statements": dry}
            fallback = dry
    explained = _explain(con, statements, masks, limits)
    return {"mode": "explain", "fallback": fallback, "statements": explained}


# -- explain ---------------------------------------------------------------------------------------


def _explain(
    con: pg8000.native.Connection,
    statements: Sequence[Statement],
    masks: _Masks,
    limits: tuple[int, int],
) -> list[dict[str, Any]]:
    out = [_entry(stmt, masks) for stmt in statements]
    with _transaction(con, "READ ONLY", limits) as problem:
        if problem is not None:
            for entry in out:
                entry["error"] = masks.text(problem)
            return out
        for stmt, entry in zip(statements, out, strict=True):
            if stmt.command not in EXPLAINABLE:
                entry["plan"] = (
                    f"no plan: only queries and writes are planned ({stmt.reason or stmt.command})"
                )
                continue
            try:
                con.run(f"SAVEPOINT {SAVEPOINT}")
                rows = con.run(f"EXPLAIN (FORMAT JSON) {stmt.text}")
                con.run(f"RELEASE SAVEPOINT {SAVEPOINT}")
            except _DRIVER_ERRORS as exc:
                entry["error"] = masks.text(_error_text(exc))
                try:
                    con.run(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
                except _DRIVER_ERRORS:
                    break  # the transaction (or the connection) is gone: the rest stays unexplained
                continue
            entry["estimated_rows"], entry["plan"] = _read_plan(rows)
    return out


def _read_plan(rows: Any) -> tuple[int | None, str]:
    document = rows[0][0]
    if isinstance(document, str):
        document = json.loads(document)
    top = document[0]["Plan"]
    node: dict[str, Any] | None = top
    parts: list[str] = []
    while node is not None and len(parts) < PLAN_NODES:
        parts.append(_describe(node))
        children = node.get("Plans") or []
        node = children[0] if children else None
    # A ModifyTable node estimates the rows it returns (0 without RETURNING): the rows it would
    # change are those its input produces.
    counted = top
    if top.get("Node Type") == "ModifyTable" and top.get("Plans"):
        counted = top["Plans"][0]
    estimate = counted.get("Plan Rows")
    return (round(estimate) if isinstance(estimate, int | float) else None), " -> ".join(parts)


def _describe(node: dict[str, Any]) -> str:
    kind = str(node.get("Node Type", "?"))
    relation = node.get("Relation Name")
    if kind == "ModifyTable":
        # Its own row estimate counts RETURNING rows (0 without): the input's is what it changes.
        return f"{node.get('Operation', 'Modify')} on {relation}"
    if relation:
        index = node.get("Index Name")
        text = f"{kind} using {index} on {relation}" if index else f"{kind} on {relation}"
    else:
        text = kind
    return f"{text} (rows={node.get('Plan Rows')})"


# -- dry run ---------------------------------------------------------------------------------------


def dry_run_blocker(statements: Sequence[Statement]) -> str | None:
    """Why the text alone rules a dry run out, or None (the target's catalog is checked later)."""
    for number, stmt in enumerate(statements, start=1):
        where = f"statement {number}" if len(statements) > 1 else "the statement"
        if stmt.command not in DRY_RUN_COMMANDS:
            command = (stmt.command or stmt.cls.value).upper()
            return f"{where} is {command}: only INSERT, UPDATE, DELETE and MERGE are dry-run"
        for name in stmt.functions:
            cls, reason = classify_function(tuple(name.split(".")))
            if cls is not StatementClass.READ:
                return f"{where} calls {name}, which a rollback may not undo ({reason})"
        if stmt.cls is not StatementClass.WRITE:
            return f"{where} is of class {stmt.cls.value}, not write ({stmt.reason or 'no reason given'})"
    return None


def _dry_run(
    con: pg8000.native.Connection,
    statements: Sequence[Statement],
    masks: _Masks,
    limits: tuple[int, int],
) -> list[dict[str, Any]] | str:
    """The dry run's entries, or the reason (a string) it must fall back to explain."""
    out = [_entry(stmt, masks) for stmt in statements]
    with _transaction(con, "READ WRITE", limits) as problem:
        if problem is not None:
            return f"the dry run could not start ({problem})"
        try:
            plans = [_rewrite(stmt) for stmt in statements]
            for stmt, (target, _sampled, sets_default) in zip(statements, plans, strict=True):
                _check_target(con, stmt.command, target, sets_default)
                for other, command, other_default in written_by_ctes(parse_sql(stmt.text)[0].stmt):
                    _check_target(con, command, other, other_default)
        except _Blocked as exc:
            return str(exc)
        except _DRIVER_ERRORS as exc:
            return f"the dry run could not inspect its target ({_error_text(exc)})"
        failed = False
        for stmt, entry, (_target, sampled, _sets_default) in zip(statements, out, plans, strict=True):
            if failed:
                entry["error"] = NOT_RUN
                continue
            try:
                entry["estimated_rows"], entry["plan"] = _read_plan(
                    con.run(f"EXPLAIN (FORMAT JSON) {stmt.text}")
                )
                if sampled is None:
                    con.run(stmt.text)
                    entry["affected_rows"] = con.row_count
                    continue
                rows = con.run(sampled)
                columns = [str(c["name"]) for c in (con.columns or [])[1:]]
                entry["affected_rows"] = int(rows[0][0]) if rows else 0
                sample = [list(r[1:]) for r in rows[:SAMPLE_ROWS]]
                entry["sample_rows"] = {"columns": columns, "rows": masks.rows_of(columns, sample)}
            except _DRIVER_ERRORS as exc:
                entry["error"] = masks.text(_error_text(exc))
                failed = True
    return out


# The commands a data-modifying CTE can hold, as Statement.command names them.
_CTE_WRITES = {
    ast.InsertStmt: "insert",
    ast.UpdateStmt: "update",
    ast.DeleteStmt: "delete",
    ast.MergeStmt: "merge",
}


def _quoted_target(relation: ast.RangeVar) -> str:
    parts = [p for p in (relation.catalogname, relation.schemaname, relation.relname) if p]
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def written_by_ctes(node: Any) -> list[tuple[str, str, bool]]:
    """(target, command, sets a column to DEFAULT) for each table the statement's own
    data-modifying CTEs write: their defaults and triggers run in a dry run too."""
    with_clause = getattr(node, "withClause", None)
    found = []
    for cte in (with_clause.ctes or ()) if with_clause is not None else ():
        query = getattr(cte, "ctequery", None)
        command = _CTE_WRITES.get(type(query))
        if command is None:
            continue
        relation = getattr(query, "relation", None)
        if not isinstance(relation, ast.RangeVar) or relation.relname is None:
            raise _Blocked(f"a data-modifying WITH ({command.upper()}) names no table to dry-run on")
        found.append((_quoted_target(relation), command, "SetToDefault" in _node_names(query)))
    return found


def _rewrite(stmt: Statement) -> tuple[str, str | None, bool]:
    """(target relation, the sampling query or None for a count only, sets a column to DEFAULT)."""
    try:
        parsed = parse_sql(stmt.text)
    except ParseError as exc:
        raise _Blocked(f"the statement does not parse for a dry run: {exc}") from exc
    if len(parsed) != 1:
        raise _Blocked("a statement text holds more than one statement")
    node: Any = parsed[0].stmt
    relation = getattr(node, "relation", None)
    if not isinstance(relation, ast.RangeVar) or relation.relname is None:
        raise _Blocked(f"the {stmt.command.upper()} names no table to dry-run on")
    target = _quoted_target(relation)
    sets_default = "SetToDefault" in _node_names(node)
    if stmt.command not in SAMPLED_COMMANDS:
        return target, None, sets_default
    # A data-modifying WITH must be at the top level: hoist the statement's own CTEs next to ours.
    ctes: list[str] = []
    recursive = False
    with_clause = getattr(node, "withClause", None)
    if with_clause is not None:
        recursive = bool(with_clause.recursive)
        ctes = [RawStream()(cte) for cte in with_clause.ctes or ()]
        node.withClause = None
    # RETURNING * replaces any RETURNING of the statement: the sample shows the changed rows.
    node.returningClause = ast.ReturningClause(
        exprs=(ast.ResTarget(val=ast.ColumnRef(fields=(ast.A_Star(),))),)
    )
    ctes.append(f"{SAMPLE_CTE} AS ({RawStream()(node)})")
    head = "WITH RECURSIVE " if recursive else "WITH "
    # The CTE runs to completion whatever the LIMIT (PostgreSQL runs data-modifying WITH
    # statements exactly once, fully), so the window count is every affected row.
    sampled = (
        f"{head}{', '.join(ctes)} SELECT count(*) OVER () AS gatehouse_affected, {SAMPLE_CTE}.* "
        f"FROM {SAMPLE_CTE} LIMIT {SAMPLE_ROWS}"
    )
    return target, sampled, sets_default


def assigned_columns(statements: Sequence[Statement]) -> frozenset[str] | None:
    """The columns the statements' writes assign (UPDATE SET, INSERT and MERGE column lists),
    or None when they may assign every column (an INSERT or MERGE INSERT without a column list,
    a text that does not parse here)."""
    names: set[str] = set()
    for stmt in statements:
        try:
            parsed = parse_sql(stmt.text)
        except ParseError:
            return None
        for raw in parsed:
            node = raw.stmt
            if isinstance(node, ast.InsertStmt):
                if not node.cols:
                    return None
                names.update(str(c.name) for c in node.cols)
            elif isinstance(node, ast.UpdateStmt):
                names.update(str(t.name) for t in node.targetList or ())
            elif isinstance(node, ast.MergeStmt):
                for clause in node.mergeWhenClauses or ():
                    if clause.commandType == CmdType.CMD_INSERT and not clause.targetList:
                        return None
                    names.update(str(t.name) for t in clause.targetList or ())
    return frozenset(names)


def _node_names(node: Any) -> set[str]:
    names: set[str] = set()
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Node):
            names.add(type(item).__name__)
            stack.extend(getattr(item, slot, None) for slot in getattr(item, "__slots__", ()))
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return names


def _check_target(con: pg8000.native.Connection, command: str, target: str, sets_default: bool) -> None:
    rows = con.run(_TARGET_CODE, name=target)
    if not rows:
        raise _Blocked(f"{target} is not a table the dry run can find")
    relkind, triggers, defaults = rows[0]
    if relkind not in _PLAIN_RELKINDS:
        raise _Blocked(f"{target} is not a plain table (relkind {relkind}): its changes may run elsewhere")
    if triggers:
        raise _Blocked(f"{target} has triggers ({triggers}) whose effects a rollback may not undo")
    if command not in DEFAULT_FILLING and not sets_default:
        return
    if isinstance(defaults, str):
        defaults = json.loads(defaults)
    for column, identity, expression in defaults or ():
        if identity:
            raise _Blocked(f"{target}.{column} is an identity column: filling it advances a sequence")
        classified = classify("postgres", f"SELECT {expression}")
        if classified.cls is not StatementClass.READ:
            why = classified.statements[0].reason if classified.statements else "unknown"
            raise _Blocked(f"the default of {target}.{column} ({expression}) may not be undone: {why}")


# -- shared ----------------------------------------------------------------------------------------


class _transaction:
    """START TRANSACTION with local timeouts; always ROLLBACK. Yields None, or why it did not start."""

    def __init__(self, con: pg8000.native.Connection, access: str, limits: tuple[int, int]) -> None:
        self._con, self._access, self._limits = con, access, limits

    def __enter__(self) -> str | None:
        statement_ms, lock_ms = self._limits
        try:
            self._con.run(f"START TRANSACTION {self._access}")
            self._con.run(f"SET LOCAL statement_timeout = {int(statement_ms)}")
            self._con.run(f"SET LOCAL lock_timeout = {int(lock_ms)}")
        except _DRIVER_ERRORS as exc:
            return _error_text(exc)
        return None

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._con.run("ROLLBACK")
        except _DRIVER_ERRORS:
            # Closing the session makes the server abort whatever it still holds.
            try:
                self._con.close()
            except _DRIVER_ERRORS:
                pass


def _entry(stmt: Statement, masks: _Masks) -> dict[str, Any]:
    return {
        "text": masks.text(stmt.text),
        "estimated_rows": None,
        "plan": "",
        "affected_rows": None,
        "sample_rows": None,
        "error": None,
    }


@dataclass(frozen=True)
class _Masks:
    rows: MaskRows
    text: MaskText

    def rows_of(self, columns: list[str], rows: list[list[Any]]) -> list[list[Any]]:
        if not rows:
            return []
        return [[_plain(v) for v in row] for row in self.rows(columns, rows)]


def _as_is(text: str) -> str:
    return text


def _error_text(exc: Exception) -> str:
    if not isinstance(exc, DatabaseError):
        # The driver lost the server (a socket timeout, a reset): SQLSTATE class 08.
        return "08006: the connection to the database was lost"
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    code = fields.get("C") or "XX000"
    message = fields.get("M") or "the database refused the statement"
    return f"{code}: {message}"


def _plain(value: Any) -> Any:
    """A value JSON can hold (the preview is stored with the request and shown in Slack)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
