"""Classify PostgreSQL text with PostgreSQL's own parser (pglast, i.e. libpg_query).

Every pglast import lives in this module, so the parser can be swapped without touching callers.

How a statement gets its class:
1. its top-level kind gives a base class (`SELECT` read, `INSERT` write, `GRANT` privilege, ...);
   a kind this module does not know is `unknown`;
2. the whole parse tree is then walked, and everything found inside can only make the class
   stricter: a data-modifying CTE (write), `SELECT ... FOR UPDATE` (write: row locks),
   `SELECT INTO` (ddl: creates a table), a nested statement (`EXECUTE` in `CREATE TABLE AS`, a
   `GRANT` inside `CREATE SCHEMA`, ...: its own class), and every function call
   (`gatehouse.classify.functions`: read only when known to be side-effect free);
3. the class is the strictest of these (`models.CLASS_RISK`), the reason that of the first finding
   with that class.

Decisions where the product brief left a choice:
- `EXPLAIN` without `ANALYZE` plans but does not run its statement: it is a read, whatever the
  statement; function calls still count (the planner may evaluate them while folding constants)
  and `EXPLAIN EXECUTE` is unknown. `EXPLAIN ANALYZE` runs the statement: it takes its class.
  A repeated option counts as Postgres counts it: the last `ANALYZE` wins
  (`EXPLAIN (ANALYZE false, ANALYZE true) DELETE ...` deletes). `ANALYZE` is the only option that
  makes EXPLAIN execute (BUFFERS, SUMMARY and SETTINGS do not; TIMING and WAL require ANALYZE).
- Attribute notation calls a one-argument function: `(pid).pg_terminate_backend` and
  `a.pid.pg_terminate_backend` are `pg_terminate_backend(pid)`. A field name known to act
  (`functions.is_known_to_act`) is such a call and gives its class; any other field name is left
  alone here (it is almost always a column) and resolved against the catalog by `lineage`.
- A CTE name hides a table only where Postgres lets it: in the statement after the WITH, in later
  CTEs of the same WITH, and in every CTE of a WITH RECURSIVE. A non-recursive CTE's own body, the
  target of INSERT, UPDATE, DELETE or MERGE, and the table SELECT INTO creates name the real table.
- `NOTIFY` (and `pg_notify`) is a write: other sessions see it. `LISTEN`/`UNLISTEN` are session.
- `SELECT INTO`, `CREATE TABLE AS` and `CREATE MATERIALIZED VIEW` create a table: ddl.
- `REFRESH MATERIALIZED VIEW` rewrites rows: write.
- Changing who the session acts as is privilege: `SET ROLE`, `SET SESSION AUTHORIZATION`, their
  `RESET`s, `set_config('role', ...)`, and `DISCARD ALL` (which includes
  `SET SESSION AUTHORIZATION DEFAULT`). So is changing who may see what: `ALTER ... OWNER TO`,
  row-level security switches and policies, security labels, user mappings; and the settings
  that escalate without a role (`search_path`, `session_replication_role`), lift the time limit
  Gatehouse sets on every run (`statement_timeout`, `lock_timeout` and the idle timeouts, `RESET
  ALL`), or write `pg_settings` (whose rules call `set_config`).
- Cluster-wide objects and code loaded into the server are admin: databases, tablespaces,
  extensions, languages, foreign-data wrappers and servers, publications, subscriptions, event
  triggers.
- `SET TRANSACTION` and `SET transaction_*` are transaction control (the executor owns the
  transaction and refuses them); other `SET`/`RESET`, `DISCARD`, `DEALLOCATE`, `CLOSE`,
  `SET CONSTRAINTS` are session.
- `DO`, `CALL` and `EXECUTE` run code we cannot see: unknown.
- `COPY ... TO STDOUT` takes the class of what it copies (a table: read); `COPY ... FROM STDIN` is
  a write; `COPY` to or from a server file or `PROGRAM` is admin.
- Functions inside DDL (column defaults, index expressions, view bodies) count too: some DDL runs
  them at once (`ALTER TABLE ... ADD COLUMN ... DEFAULT f()`, expression indexes).

What a parser alone cannot see (the executor's READ ONLY transaction is the backstop for reads):
views and rules that call functions, functions of unknown names called with attribute notation
(`t.f` where `f` is not a column: `lineage` resolves those against the catalog), user-defined
operators and casts, and `search_path` changes that shadow a built-in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from gatehouse.classify.functions import (
    ESCALATING_SETTINGS,
    classify_field_call,
    classify_function,
    is_known_to_act,
)
from gatehouse.models import CLASS_RISK, Classification, Statement, StatementClass

READ = StatementClass.READ
WRITE = StatementClass.WRITE
DDL = StatementClass.DDL
PRIVILEGE = StatementClass.PRIVILEGE
SESSION = StatementClass.SESSION
TRANSACTION = StatementClass.TRANSACTION
ADMIN = StatementClass.ADMIN
UNKNOWN = StatementClass.UNKNOWN

KIND = "postgres"
EMPTY_STATEMENT = "empty statement"
# Planning a chain of CTEs takes time that grows faster than their number and that the statement
# timeout does not bound (3,000 chained CTEs held a backend, deaf to cancel and terminate, for
# over ten minutes): a text with more is refused before it reaches the server.
MAX_CTES = 100

Node = dict[str, Any]
Finding = tuple[StatementClass, str]

# The statements that change rows; nested in a query they make a data-modifying CTE.
DML = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE"}

# Parse nodes with nothing inside worth walking.
LEAVES = frozenset(
    {
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "A_Const",
        "A_Star",
        "ParamRef",
        "SQLValueFunction",
    }
)


def _ddl(label: str) -> Finding:
    return DDL, f"{label} changes the schema"


def _admin(label: str, what: str) -> Finding:
    return ADMIN, f"{label} {what}"


def _privilege(label: str, what: str) -> Finding:
    return PRIVILEGE, f"{label} {what}"


# Statement kinds whose class does not depend on their content.
FIXED: dict[str, Finding] = {
    "InsertStmt": (WRITE, "INSERT writes rows"),
    "UpdateStmt": (WRITE, "UPDATE writes rows"),
    "DeleteStmt": (WRITE, "DELETE writes rows"),
    "MergeStmt": (WRITE, "MERGE writes rows"),
    "TruncateStmt": (WRITE, "TRUNCATE empties tables"),
    "LockStmt": (WRITE, "LOCK takes a table lock"),
    "NotifyStmt": (WRITE, "NOTIFY signals other sessions"),
    "RefreshMatViewStmt": (WRITE, "REFRESH MATERIALIZED VIEW rewrites its rows"),
    "VariableShowStmt": (READ, "SHOW reads a setting"),
    "FetchStmt": (READ, "FETCH reads from an open cursor"),
    "ClosePortalStmt": (SESSION, "CLOSE closes a cursor"),
    "DeallocateStmt": (SESSION, "DEALLOCATE drops a prepared statement"),
    "ListenStmt": (SESSION, "LISTEN subscribes the session to notifications"),
    "UnlistenStmt": (SESSION, "UNLISTEN unsubscribes the session from notifications"),
    "ConstraintsSetStmt": (SESSION, "SET CONSTRAINTS changes when constraints are checked"),
    "DoStmt": (UNKNOWN, "DO runs procedural code that cannot be classified"),
    "CallStmt": (UNKNOWN, "CALL runs a procedure that cannot be classified"),
    "ExecuteStmt": (UNKNOWN, "EXECUTE runs a prepared statement that cannot be seen here"),
    # maintenance and server administration
    "CheckPointStmt": _admin("CHECKPOINT", "forces a checkpoint"),
    "ClusterStmt": _admin("CLUSTER", "rewrites a table"),
    "ReindexStmt": _admin("REINDEX", "rebuilds indexes"),
    "AlterSystemStmt": _admin("ALTER SYSTEM", "changes the server configuration"),
    "LoadStmt": _admin("LOAD", "loads a shared library into the server"),
    "CreatedbStmt": _admin("CREATE DATABASE", "changes the cluster"),
    "DropdbStmt": _admin("DROP DATABASE", "changes the cluster"),
    "AlterDatabaseStmt": _admin("ALTER DATABASE", "changes the cluster"),
    "AlterDatabaseSetStmt": _admin("ALTER DATABASE ... SET", "changes every session's settings"),
    "AlterDatabaseRefreshCollStmt": _admin("ALTER DATABASE", "changes the cluster"),
    "CreateTableSpaceStmt": _admin("CREATE TABLESPACE", "changes the cluster"),
    "DropTableSpaceStmt": _admin("DROP TABLESPACE", "changes the cluster"),
    "AlterTableSpaceOptionsStmt": _admin("ALTER TABLESPACE", "changes the cluster"),
    "AlterTableMoveAllStmt": _admin("ALTER ... SET TABLESPACE", "moves storage"),
    "CreateExtensionStmt": _admin("CREATE EXTENSION", "loads code into the database"),
    "AlterExtensionStmt": _admin("ALTER EXTENSION", "loads code into the database"),
    "AlterExtensionContentsStmt": _admin("ALTER EXTENSION", "changes installed code"),
    "CreatePLangStmt": _admin("CREATE LANGUAGE", "loads code into the database"),
    "CreateAmStmt": _admin("CREATE ACCESS METHOD", "loads code into the database"),
    "CreateFdwStmt": _admin("CREATE FOREIGN DATA WRAPPER", "reaches outside the database"),
    "AlterFdwStmt": _admin("ALTER FOREIGN DATA WRAPPER", "reaches outside the database"),
    "CreateForeignServerStmt": _admin("CREATE SERVER", "reaches outside the database"),
    "AlterForeignServerStmt": _admin("ALTER SERVER", "reaches outside the database"),
    "CreatePublicationStmt": _admin("CREATE PUBLICATION", "changes replication"),
    "AlterPublicationStmt": _admin("ALTER PUBLICATION", "changes replication"),
    "CreateSubscriptionStmt": _admin("CREATE SUBSCRIPTION", "changes replication"),
    "AlterSubscriptionStmt": _admin("ALTER SUBSCRIPTION", "changes replication"),
    "DropSubscriptionStmt": _admin("DROP SUBSCRIPTION", "changes replication"),
    "CreateEventTrigStmt": _admin("CREATE EVENT TRIGGER", "runs code on every DDL statement"),
    "AlterEventTrigStmt": _admin("ALTER EVENT TRIGGER", "changes code run on every DDL statement"),
    # who may do what
    "GrantRoleStmt": _privilege("GRANT/REVOKE role", "changes role membership"),
    "CreateRoleStmt": _privilege("CREATE ROLE", "creates a role"),
    "AlterRoleStmt": _privilege("ALTER ROLE", "changes a role"),
    "AlterRoleSetStmt": _privilege("ALTER ROLE ... SET", "changes a role's settings"),
    "DropRoleStmt": _privilege("DROP ROLE", "removes a role"),
    "AlterDefaultPrivilegesStmt": _privilege("ALTER DEFAULT PRIVILEGES", "changes future grants"),
    "ReassignOwnedStmt": _privilege("REASSIGN OWNED", "changes ownership"),
    "DropOwnedStmt": _privilege("DROP OWNED", "drops objects and revokes privileges"),
    "AlterOwnerStmt": _privilege("ALTER ... OWNER TO", "changes ownership"),
    "CreatePolicyStmt": _privilege("CREATE POLICY", "changes row-level security"),
    "AlterPolicyStmt": _privilege("ALTER POLICY", "changes row-level security"),
    "SecLabelStmt": _privilege("SECURITY LABEL", "changes mandatory access control"),
    "CreateUserMappingStmt": _privilege("CREATE USER MAPPING", "stores credentials for a server"),
    "AlterUserMappingStmt": _privilege("ALTER USER MAPPING", "changes credentials for a server"),
    "DropUserMappingStmt": _privilege("DROP USER MAPPING", "removes credentials for a server"),
    # schema changes
    "CreateStmt": _ddl("CREATE TABLE"),
    "IndexStmt": _ddl("CREATE INDEX"),
    "ViewStmt": _ddl("CREATE VIEW"),
    "CreateSeqStmt": _ddl("CREATE SEQUENCE"),
    "AlterSeqStmt": _ddl("ALTER SEQUENCE"),
    "CreateFunctionStmt": _ddl("CREATE FUNCTION"),
    "AlterFunctionStmt": _ddl("ALTER FUNCTION"),
    "CreateTrigStmt": _ddl("CREATE TRIGGER"),
    "RuleStmt": _ddl("CREATE RULE"),
    "CreateDomainStmt": _ddl("CREATE DOMAIN"),
    "AlterDomainStmt": _ddl("ALTER DOMAIN"),
    "CompositeTypeStmt": _ddl("CREATE TYPE"),
    "CreateEnumStmt": _ddl("CREATE TYPE"),
    "CreateRangeStmt": _ddl("CREATE TYPE"),
    "AlterEnumStmt": _ddl("ALTER TYPE"),
    "AlterTypeStmt": _ddl("ALTER TYPE"),
    "DefineStmt": _ddl("CREATE (aggregate, operator, type, collation, ...)"),
    "AlterObjectSchemaStmt": _ddl("ALTER ... SET SCHEMA"),
    "AlterObjectDependsStmt": _ddl("ALTER ... DEPENDS ON EXTENSION"),
    "CommentStmt": _ddl("COMMENT ON"),
    "CreateCastStmt": _ddl("CREATE CAST"),
    "CreateConversionStmt": _ddl("CREATE CONVERSION"),
    "CreateOpClassStmt": _ddl("CREATE OPERATOR CLASS"),
    "CreateOpFamilyStmt": _ddl("CREATE OPERATOR FAMILY"),
    "AlterOpFamilyStmt": _ddl("ALTER OPERATOR FAMILY"),
    "AlterOperatorStmt": _ddl("ALTER OPERATOR"),
    "CreateTransformStmt": _ddl("CREATE TRANSFORM"),
    "CreateStatsStmt": _ddl("CREATE STATISTICS"),
    "AlterStatsStmt": _ddl("ALTER STATISTICS"),
    "AlterCollationStmt": _ddl("ALTER COLLATION"),
    "AlterTSConfigurationStmt": _ddl("ALTER TEXT SEARCH CONFIGURATION"),
    "AlterTSDictionaryStmt": _ddl("ALTER TEXT SEARCH DICTIONARY"),
    "CreateForeignTableStmt": _ddl("CREATE FOREIGN TABLE"),
    "ImportForeignSchemaStmt": _ddl("IMPORT FOREIGN SCHEMA"),
    "ReplicaIdentityStmt": _ddl("ALTER TABLE ... REPLICA IDENTITY"),
}

# ALTER TABLE subcommands that change who may see or own the rows.
PRIVILEGE_ALTER_TABLE = {
    "AT_ChangeOwner": "ALTER TABLE ... OWNER TO changes ownership",
    "AT_EnableRowSecurity": "ALTER TABLE ... ENABLE ROW LEVEL SECURITY changes row-level security",
    "AT_DisableRowSecurity": "ALTER TABLE ... DISABLE ROW LEVEL SECURITY changes row-level security",
    "AT_ForceRowSecurity": "ALTER TABLE ... FORCE ROW LEVEL SECURITY changes row-level security",
    "AT_NoForceRowSecurity": "ALTER TABLE ... NO FORCE ROW LEVEL SECURITY changes row-level security",
}

# Object types (DROP, ALTER ... RENAME) that are cluster-wide or load code: admin.
ADMIN_OBJECTS = frozenset(
    {
        "OBJECT_DATABASE", "OBJECT_TABLESPACE", "OBJECT_EXTENSION", "OBJECT_FDW",
        "OBJECT_FOREIGN_SERVER", "OBJECT_EVENT_TRIGGER", "OBJECT_LANGUAGE", "OBJECT_PUBLICATION",
        "OBJECT_SUBSCRIPTION", "OBJECT_ACCESS_METHOD",
    }
)  # fmt: skip
PRIVILEGE_OBJECTS = frozenset({"OBJECT_ROLE", "OBJECT_POLICY"})
# DROP of these names relations: they are listed among the statement's relations.
RELATION_OBJECTS = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_INDEX",
        "OBJECT_SEQUENCE",
        "OBJECT_FOREIGN_TABLE",
    }
)

IDENTITY_SETTINGS = {"role": "ROLE", "session_authorization": "SESSION AUTHORIZATION"}
TRANSACTION_SETTINGS = frozenset(
    {"TRANSACTION", "transaction_isolation", "transaction_read_only", "transaction_deferrable"}
)
TRANSACTION_LABELS = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE SAVEPOINT",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT",
}
TWO_PHASE = {
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION leaves a two-phase transaction on the server",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED finishes a two-phase transaction",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED finishes a two-phase transaction",
}
LOCK_STRENGTHS = {
    "LCS_FORKEYSHARE": "KEY SHARE",
    "LCS_FORSHARE": "SHARE",
    "LCS_FORNOKEYUPDATE": "NO KEY UPDATE",
    "LCS_FORUPDATE": "UPDATE",
}
# What Postgres's defGetBoolean reads as false (case-insensitively); any other word is an error
# there, and counts as true here so that a version accepting more words cannot run unseen.
FALSE_WORDS = frozenset({"false", "off"})


def classify_sql(text: str) -> Classification:
    """Classify every statement of a Postgres text. Never raises for bad SQL.

    Unparseable text gives one `unknown` statement and `parse_error` set to the parser's message;
    text with no statement (empty, only comments) gives `parse_error` "empty statement".
    """
    if "\x00" in text:
        # libpg_query reads a C string: it would see only the text before the NUL.
        return _unparseable(text, "the text contains a NUL character")
    try:
        tree = json.loads(parse_sql_json(text))
    except ParseError as exc:
        return _unparseable(text, str(exc))
    except (UnicodeError, RecursionError, ValueError) as exc:
        return _unparseable(text, f"the text cannot be parsed ({type(exc).__name__})")
    raw_statements = tree.get("stmts") or []
    if not raw_statements:
        return _unparseable(text, EMPTY_STATEMENT)
    ctes = _count_ctes(tree)
    if ctes > MAX_CTES:
        return _unparseable(
            text, f"the text defines {ctes} CTEs; Gatehouse takes at most {MAX_CTES} in one text"
        )
    # The parser's locations count UTF-8 bytes; a missing length means "to the end".
    encoded = text.encode("utf-8")
    statements = []
    for raw in raw_statements:
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len", 0)
        chunk = encoded[start : start + length] if length else encoded[start:]
        statements.append(classify_statement(raw["stmt"], chunk.decode("utf-8").strip()))
    return Classification(kind=KIND, statements=tuple(statements))


def classify_statement(node: Node, text: str) -> Statement:
    """Classify one parsed statement (a pglast JSON node `{"SelectStmt": {...}}`)."""
    ((kind, body),) = node.items()
    walk = _Walk(plan_only=kind == "ExplainStmt" and not _explain_analyze(body))
    walk.run(body, kind)
    if kind == "DropStmt" and body.get("removeType") in RELATION_OBJECTS:
        for obj in body.get("objects") or ():
            walk.relations.setdefault(_dotted(obj), None)
    cls, reason = _statement_class(kind, body)
    for found_cls, found_reason in walk.findings:
        if CLASS_RISK[found_cls] > CLASS_RISK[cls]:
            cls, reason = found_cls, found_reason
    return Statement(
        text=text,
        cls=cls,
        relations=tuple(walk.relations),
        functions=tuple(walk.functions),
        reason=reason,
        command=kind.removesuffix("Stmt").lower(),
    )


def _count_ctes(tree: Any) -> int:
    count = 0
    stack = [tree]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            if "CommonTableExpr" in node:
                count += 1
            stack.extend(v for v in node.values() if type(v) is dict or type(v) is list)
        elif type(node) is list:
            stack.extend(node)
    return count


def _unparseable(text: str, message: str) -> Classification:
    reason = message if message == EMPTY_STATEMENT else f"does not parse: {message}"
    statement = Statement(text=text.strip(), cls=UNKNOWN, reason=reason)
    return Classification(kind=KIND, statements=(statement,), parse_error=message)


# -- the class of a statement's own kind ---------------------------------------------------------


def _statement_class(kind: str, body: Node) -> Finding:
    fixed = FIXED.get(kind)
    if fixed is not None:
        return fixed
    special = SPECIAL.get(kind)
    if special is not None:
        return special(body)
    return UNKNOWN, f"{kind} is not a statement Gatehouse can classify"


def _inner(body: Node, field: str = "query") -> Finding:
    inner = body.get(field)
    if not inner:
        return UNKNOWN, "statement without a query"
    ((kind, inner_body),) = inner.items()
    return _statement_class(kind, inner_body)


def _select(body: Node) -> Finding:
    if body.get("intoClause"):
        return DDL, "SELECT INTO creates a table"
    return READ, "SELECT reads rows"


def _explain(body: Node) -> Finding:
    if not _explain_analyze(body):
        return READ, "EXPLAIN without ANALYZE plans the statement but does not run it"
    cls, reason = _inner(body)
    return cls, f"EXPLAIN ANALYZE runs the statement: {reason}"


def _explain_analyze(body: Node) -> bool:
    # ExplainQuery reads the options in order and each ANALYZE overwrites the last: the last wins.
    analyze = False
    for option in body.get("options") or ():
        elem = option.get("DefElem") or {}
        if elem.get("defname") == "analyze":
            analyze = _option_true(elem.get("arg"))
    return analyze


def _option_true(arg: Node | None) -> bool:
    if arg is None:
        return True
    # `(ANALYZE false)`, `(ANALYZE off)`, `(ANALYZE 0)`: an Integer 0 has no "ival" field.
    if "String" in arg:
        return str(arg["String"].get("sval", "")).lower() not in FALSE_WORDS
    if "Integer" in arg:
        return bool(arg["Integer"].get("ival", 0))
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval", False))
    return True


def _prepare(body: Node) -> Finding:
    cls, reason = _inner(body)
    return cls, f"PREPARE: {reason}"


def _declare(body: Node) -> Finding:
    cls, reason = _inner(body)
    return cls, f"DECLARE CURSOR: {reason}"


def _copy(body: Node) -> Finding:
    direction = "FROM" if body.get("is_from") else "TO"
    if body.get("is_program"):
        return ADMIN, f"COPY {direction} PROGRAM runs a shell command on the database server"
    if body.get("filename"):
        return ADMIN, f"COPY {direction} a server file reads or writes the database server's disk"
    if body.get("is_from"):
        return WRITE, "COPY FROM loads rows"
    if body.get("query"):
        cls, reason = _inner(body)
        return cls, f"COPY of a query: {reason}"
    return READ, "COPY TO STDOUT reads rows"


def _create_table_as(body: Node) -> Finding:
    if body.get("objtype") == "OBJECT_MATVIEW":
        return DDL, "CREATE MATERIALIZED VIEW creates a relation"
    return DDL, "CREATE TABLE AS creates a table"


def _variable_set(body: Node) -> Finding:
    kind = body.get("kind", "")
    name = body.get("name", "")
    verb = "RESET" if kind in ("VAR_RESET", "VAR_RESET_ALL") else "SET"
    if name in IDENTITY_SETTINGS:
        return PRIVILEGE, f"{verb} {IDENTITY_SETTINGS[name]} changes the role the session acts as"
    if name.lower() in ESCALATING_SETTINGS:
        return PRIVILEGE, f"{verb} {name.lower()} {ESCALATING_SETTINGS[name.lower()]}"
    if name in TRANSACTION_SETTINGS:
        label = "SET TRANSACTION" if name == "TRANSACTION" else f"SET {name}"
        return TRANSACTION, f"{label} changes the transaction's characteristics"
    if kind == "VAR_RESET_ALL":
        return PRIVILEGE, "RESET ALL also resets the statement timeout Gatehouse sets"
    return SESSION, f"{verb} {name.lower()} changes a session setting"


def _discard(body: Node) -> Finding:
    if body.get("target") == "DISCARD_ALL":
        return PRIVILEGE, "DISCARD ALL also resets the session's role (SET SESSION AUTHORIZATION DEFAULT)"
    return SESSION, "DISCARD drops session state"


def _transaction(body: Node) -> Finding:
    kind = body.get("kind", "")
    if kind in TWO_PHASE:
        return ADMIN, TWO_PHASE[kind]
    label = TRANSACTION_LABELS.get(kind, "transaction control")
    return TRANSACTION, f"{label} controls the transaction"


def _grant(body: Node) -> Finding:
    verb = "GRANT" if body.get("is_grant") else "REVOKE"
    return PRIVILEGE, f"{verb} changes privileges"


def _alter_table(body: Node) -> Finding:
    for cmd in body.get("cmds") or ():
        subtype = (cmd.get("AlterTableCmd") or {}).get("subtype")
        if subtype in PRIVILEGE_ALTER_TABLE:
            return PRIVILEGE, PRIVILEGE_ALTER_TABLE[subtype]
    return _ddl(f"ALTER {_object_label(body.get('objtype'), 'TABLE')}")


def _drop(body: Node) -> Finding:
    obj = body.get("removeType", "")
    return _object_change(obj, f"DROP {_object_label(obj)}")


def _rename(body: Node) -> Finding:
    obj = body.get("renameType", "")
    return _object_change(obj, f"ALTER {_object_label(obj)} ... RENAME")


def _object_change(obj: str, label: str) -> Finding:
    """Changing a role or policy is privilege, a database or extension admin, the rest DDL."""
    if obj in PRIVILEGE_OBJECTS:
        return PRIVILEGE, f"{label} changes who may see what"
    if obj in ADMIN_OBJECTS:
        return ADMIN, f"{label} changes the cluster or its code"
    return _ddl(label)


def _create_schema(body: Node) -> Finding:
    if body.get("authrole"):
        return PRIVILEGE, "CREATE SCHEMA ... AUTHORIZATION gives another role ownership"
    return _ddl("CREATE SCHEMA")


def _vacuum(body: Node) -> Finding:
    label = "VACUUM" if body.get("is_vacuumcmd") else "ANALYZE"
    return ADMIN, f"{label} is database maintenance"


def _object_label(obj: str | None, default: str = "OBJECT") -> str:
    return obj.removeprefix("OBJECT_").replace("_", " ") if obj else default


SPECIAL: dict[str, Callable[[Node], Finding]] = {
    "SelectStmt": _select,
    "ExplainStmt": _explain,
    "PrepareStmt": _prepare,
    "DeclareCursorStmt": _declare,
    "CopyStmt": _copy,
    "CreateTableAsStmt": _create_table_as,
    "VariableSetStmt": _variable_set,
    "DiscardStmt": _discard,
    "TransactionStmt": _transaction,
    "GrantStmt": _grant,
    "AlterTableStmt": _alter_table,
    "DropStmt": _drop,
    "RenameStmt": _rename,
    "CreateSchemaStmt": _create_schema,
    "VacuumStmt": _vacuum,
}


# -- what is inside ---------------------------------------------------------------------------------


class _Walk:
    """One pass over a statement's parse tree: relations, functions, and stricter findings.

    pglast's JSON wraps a node as `{"TypeName": {fields}}` where the field's type is generic and
    leaves it bare where the field has a fixed type (a statement's `relation` is a bare RangeVar),
    so nodes are recognised by their fields: `relname` (RangeVar), `funcname` + `funcformat`
    (FuncCall), `lockingClause` / `intoClause` / `withClause` (SelectStmt and DML); ColumnRef and
    A_Indirection (field selection, i.e. attribute notation) are always wrapped.
    Each stack entry carries the CTE names in scope there.
    The walk is iterative: a deeply nested expression cannot exhaust Python's stack.
    """

    __slots__ = ("findings", "functions", "plan_only", "relations")

    def __init__(self, *, plan_only: bool) -> None:
        # Under EXPLAIN without ANALYZE nothing runs: only what the planner may evaluate counts.
        self.plan_only = plan_only
        self.relations: dict[str, None] = {}
        self.functions: dict[str, None] = {}
        self.findings: list[Finding] = []

    def run(self, root: Node, kind: str = "") -> None:
        """Walk `root`, the body of a statement of `kind` (`"DeleteStmt"`, ...)."""
        no_ctes: frozenset[str] = frozenset()
        if kind in DML:
            self._target(root)
        stack: list[tuple[Any, frozenset[str]]] = [(root, no_ctes)]
        pop, push = stack.pop, stack.append
        while stack:
            node, ctes = pop()
            if type(node) is list:
                for item in reversed(node):
                    push((item, ctes))
                continue
            if len(node) == 1:
                key = next(iter(node))
                if key[0].isupper():
                    if key in LEAVES:
                        continue
                    body = node[key]
                    if key == "ColumnRef":
                        # `t.f`, `s.t.f`: every field after the first may call a function.
                        self._field_calls(body.get("fields") or (), 1)
                        continue  # nothing but names inside
                    if key == "A_Indirection":
                        self._field_calls(body.get("indirection") or (), 0)
                    elif key.endswith("Stmt"):
                        self._nested_statement(key, body)
                        if key in DML:
                            self._target(body)
                    elif key == "CommonTableExpr" and not self.plan_only:
                        self._cte(body)
                    node = body
                    if type(node) is not dict:
                        continue
            if "relname" in node:
                self._relation(node, ctes)
            elif "funcformat" in node and "funcname" in node:
                self._function(node)
            elif not self.plan_only:
                if node.get("lockingClause"):
                    self.findings.append(_locking(node["lockingClause"]))
                into = node.get("intoClause")
                if into:
                    self.findings.append((DDL, "SELECT INTO creates a table"))
                    # the table SELECT INTO creates is new: a CTE of the same name does not hide it
                    if into.get("rel"):
                        self._relation(into["rel"], frozenset())
            with_clause = node.get("withClause")
            if with_clause:
                bodies, ctes = _cte_scopes(with_clause, ctes)
                for value in reversed(node.values()):
                    if value is with_clause:
                        stack.extend(reversed(bodies))
                    elif type(value) is dict or type(value) is list:
                        push((value, ctes))
                continue
            for value in reversed(node.values()):
                if type(value) is dict or type(value) is list:
                    push((value, ctes))

    def _nested_statement(self, kind: str, body: Node) -> None:
        if kind == "SelectStmt":
            return  # its locking and INTO clauses are found on the way down
        if self.plan_only and kind != "ExecuteStmt":
            return
        self.findings.append(_statement_class(kind, body))

    def _cte(self, body: Node) -> None:
        query = body.get("ctequery") or {}
        for kind, label in DML.items():
            if kind in query:
                self.findings.append((WRITE, f"data-modifying CTE ({label} in WITH {body.get('ctename')})"))

    def _target(self, body: Node) -> None:
        # The table INSERT, UPDATE, DELETE or MERGE changes is never a CTE, whatever the WITH says.
        target = body.get("relation")
        if target:
            self._relation(target, frozenset())
            if target.get("relname") == "pg_settings" and target.get("schemaname") in (None, "pg_catalog"):
                # The view's rules run set_config for each row written: any setting, the role and
                # the read-only mode included, named by a WHERE clause this cannot judge.
                self.findings.append(
                    (PRIVILEGE, "writing pg_settings runs set_config on the settings it names, role included")
                )

    def _field_calls(self, items: list[Node] | tuple[()], start: int) -> None:
        for item in items[start:]:
            field = item.get("String")
            if field is None:
                continue  # `*` or a subscript
            name = str(field.get("sval", ""))
            if is_known_to_act(name):
                self.functions.setdefault(name, None)
                self.findings.append(classify_field_call(name))

    def _relation(self, node: Node, ctes: frozenset[str]) -> None:
        name = node["relname"]
        schema = node.get("schemaname")
        if schema is None and name in ctes:
            return  # a reference to a CTE, not to a table
        catalog = node.get("catalogname")
        qualified = f"{schema}.{name}" if schema else name
        self.relations.setdefault(f"{catalog}.{qualified}" if catalog else qualified, None)

    def _function(self, node: Node) -> None:
        parts = tuple(str(part.get("String", {}).get("sval", "")) for part in node["funcname"])
        self.functions.setdefault(".".join(parts), None)
        cls, reason = classify_function(parts, _constant_string(node.get("args")))
        if cls is not READ:
            self.findings.append((cls, reason))


def _cte_scopes(
    with_clause: Node, outer: frozenset[str]
) -> tuple[list[tuple[Node, frozenset[str]]], frozenset[str]]:
    """Each CTE with the CTE names its body sees, and the names the rest of the statement sees.

    A non-recursive CTE sees the CTEs before it, not itself: in `WITH t AS (SELECT * FROM t)` the
    inner `t` is the table. Under WITH RECURSIVE every CTE sees all of them, itself included.
    """
    items = with_clause.get("ctes") or []
    names = [str(item["CommonTableExpr"].get("ctename", "")) for item in items if "CommonTableExpr" in item]
    everything = outer.union(names)
    if with_clause.get("recursive"):
        return [(item, everything) for item in items], everything
    bodies = []
    seen = outer
    for item in items:
        bodies.append((item, seen))
        name = (item.get("CommonTableExpr") or {}).get("ctename")
        if name is not None:
            seen = seen | {name}
    return bodies, everything


def _locking(clauses: list[Node]) -> Finding:
    strength = (clauses[0].get("LockingClause") or {}).get("strength", "")
    return WRITE, f"SELECT ... FOR {LOCK_STRENGTHS.get(strength, 'UPDATE')} takes row locks"


def _constant_string(args: list[Node] | None) -> str | None:
    """The first argument when it is a string constant (possibly cast), else None."""
    if not args:
        return None
    arg = args[0]
    if "TypeCast" in arg:
        arg = arg["TypeCast"].get("arg") or {}
    const = arg.get("A_Const")
    if const is None or "sval" not in const:
        return None
    return str(const["sval"].get("sval", ""))


def _dotted(obj: Node) -> str:
    """A dotted name from a DROP's object list item (`{"List": {"items": [String, ...]}}`)."""
    items = obj["List"].get("items", ()) if "List" in obj else (obj,)
    return ".".join(str(item.get("String", {}).get("sval", "")) for item in items)
