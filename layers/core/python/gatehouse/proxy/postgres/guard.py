"""What a client may not change about its upstream session: identity and the read-only guarantee.

The proxy logs in upstream as the connection's role, with `default_transaction_read_only=on`
(so a transaction is read-only unless the proxy itself lifts it for a write Cedar allowed). A
client must not undo either: not through startup parameters (`options=-c role=...`, a
`search_path` that would make lineage resolve names to other tables), and not through a
statement (`BEGIN READ WRITE`, `SET TRANSACTION READ WRITE`, `SET default_transaction_read_only`,
`set_config('transaction_read_only', ...)`). These are transport rules of the proxy's session,
not classification: what a statement does is still decided by the one classifier and Cedar.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor

# Startup parameters passed on to the target: formatting and labels, nothing that changes who
# the session is, what it may do, or how names resolve.
PASSED_ON = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "bytea_output",
        "statement_timeout",
        "lock_timeout",
    }
)
# Refused outright (the connection is refused, naming it): identity, name resolution, safety.
REFUSED = frozenset(
    {
        "role",
        "session_authorization",
        "search_path",
        "default_transaction_read_only",
        "transaction_read_only",
        "replication",
        "session_replication_role",
        "default_transaction_isolation",
        "temp_tablespaces",
        "local_preload_libraries",
        "session_preload_libraries",
        "row_security",
        "check_function_bodies",
    }
)
_READ_ONLY_SETTINGS = frozenset({"transaction_read_only", "default_transaction_read_only"})


class StartupRefused(ValueError):
    """A startup parameter the proxy will not pass on; the message names it."""


def upstream_parameters(client: Mapping[str, str]) -> dict[str, str]:
    """The client's startup parameters that go upstream (`user` and `database` are the proxy's)."""
    out: dict[str, str] = {}
    for name, value in client.items():
        key = name.lower()
        if key in ("user", "database"):
            continue
        if key == "options":
            out.update(_options(value))
            continue
        if key in REFUSED:
            raise StartupRefused(f"the startup parameter {name!r} is not allowed through Gatehouse")
        if key in PASSED_ON:
            out[name] = value
        # Anything else (protocol extensions `_pq_.*`, unknown settings) is dropped, not refused:
        # drivers send such extras, and none of them changes who the session is.
    return out


def _options(value: str) -> dict[str, str]:
    """`-c name=value` / `--name=value` pairs of `options`, only for settings passed on."""
    out: dict[str, str] = {}
    try:
        words = shlex.split(value.replace("\\ ", "\x00"))
    except ValueError as exc:
        raise StartupRefused("the startup parameter 'options' does not parse") from exc
    words = [w.replace("\x00", " ") for w in words]
    pending_c = False
    for word in words:
        if pending_c:
            setting, pending_c = word, False
        elif word == "-c":
            pending_c = True
            continue
        elif word.startswith("-c"):
            setting = word[2:]
        elif word.startswith("--"):
            setting = word[2:]
        else:
            raise StartupRefused(f"the option {word!r} in 'options' is not allowed through Gatehouse")
        name, sep, val = setting.partition("=")
        key = name.strip().lower().replace("-", "_")
        if not sep or key not in PASSED_ON:
            raise StartupRefused(f"the setting {name!r} in 'options' is not allowed through Gatehouse")
        out[key] = val
    if pending_c:
        raise StartupRefused("the startup parameter 'options' ends with -c")
    return out


def _is_false(arg: Any) -> bool:
    """A DefElem argument that turns `transaction_read_only` off (READ WRITE)."""
    if isinstance(arg, ast.A_Const):
        val = arg.val
        if isinstance(val, ast.Integer):
            return val.ival == 0
        if isinstance(val, ast.String):
            return (val.sval or "").lower() in ("off", "false", "0", "f", "no", "n")
        if isinstance(val, ast.Boolean):
            return not val.boolval
    return True  # anything not plainly "on" is treated as lifting it


class _Lifts(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.reason = ""

    def visit_TransactionStmt(self, _ancestors: Any, node: ast.TransactionStmt) -> None:
        for opt in node.options or ():
            if isinstance(opt, ast.DefElem) and opt.defname == "transaction_read_only" and _is_false(opt.arg):
                self.reason = "a client cannot open a READ WRITE transaction: Gatehouse decides that"

    def visit_VariableSetStmt(self, _ancestors: Any, node: ast.VariableSetStmt) -> None:
        name = (node.name or "").lower()
        if name in _READ_ONLY_SETTINGS:
            if getattr(node.kind, "name", "") in ("VAR_RESET", "VAR_SET_DEFAULT"):
                return  # back to the session's start value, which the proxy set: read only
            self.reason = f"a client cannot change {name}: Gatehouse decides it"
            return
        if name in ("transaction", "session characteristics"):
            for arg in node.args or ():
                if (
                    isinstance(arg, ast.DefElem)
                    and arg.defname == "transaction_read_only"
                    and _is_false(arg.arg)
                ):
                    self.reason = "a client cannot make its transaction READ WRITE: Gatehouse decides that"

    def visit_FuncCall(self, _ancestors: Any, node: ast.FuncCall) -> None:
        name = node.funcname[-1].sval.lower() if node.funcname else ""
        if name != "set_config" or not node.args:
            return
        first = node.args[0]
        setting = (
            (first.val.sval or "").lower()
            if isinstance(first, ast.A_Const) and isinstance(first.val, ast.String)
            else None
        )
        if setting is None or setting in _READ_ONLY_SETTINGS:
            self.reason = "set_config() cannot change the transaction's read-only mode through Gatehouse"


def lifts_read_only(sql: str) -> str:
    """Why `sql` would lift the read-only guarantee (empty when it would not, or does not parse)."""
    try:
        tree = parse_sql(sql)
    except ParseError:
        return ""  # the decision path refuses text that does not parse
    found = _Lifts()
    found(tree)
    return found.reason


def copies_to_client(sql: str) -> bool:
    """`COPY ... TO STDOUT`: rows that would stream as CopyData, past the row masker.

    Gatehouse masks DataRows by lineage; COPY's text or binary stream is not split into columns
    the masker can plan, so the proxy refuses it (use SELECT, which is masked) rather than let
    protected values out unmasked. COPY FROM STDIN is a write and decided as one.
    """
    try:
        tree = parse_sql(sql)
    except ParseError:
        return False
    return any(
        isinstance(raw.stmt, ast.CopyStmt)
        and not raw.stmt.is_from
        and not raw.stmt.filename
        and not raw.stmt.is_program
        for raw in tree
    )
