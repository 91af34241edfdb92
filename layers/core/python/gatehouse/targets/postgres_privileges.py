"""Least privilege on a Postgres target: what the connection's own role can do that an agent's should not.

Gatehouse classifies every statement before it runs, but the target role is the last line of
defence: a classification mistake, a parser gap or a hostile function can only do what the role
itself is allowed to do. The check logs in with the connection's own credential (as the executor
does) and reads, from the catalog, what that role may do: role attributes, memberships (direct or
inherited, including roles it may `SET ROLE` to), ownership, CREATE and TEMP, EXECUTE on functions
that reach the server's files, processes or other servers, grants it may pass on.

Every finding carries a severity, a plain sentence and the SQL that removes it, to be run by an
administrator (the check itself runs in a READ ONLY transaction and changes nothing).

Written for and tested on PostgreSQL 15; it needs 14 or later (pg_database_owner).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from gatehouse.exceptions import TargetError, TargetUnavailableError
from gatehouse.models import Connection
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres import connect

CHECK_TIMEOUT_MS = 10_000
SOCKET_GRACE_S = 5.0
# Shown in fix SQL when no suitable owner is known: not valid SQL, so it cannot be run by mistake.
OWNER_PLACEHOLDER = "<owner role>"
# The shipped Cedar policies let approved DDL run on `env == "dev"` connections only (dev.cedar);
# there the role owns its tables on purpose, and owning and creating are reported as medium.
DDL_ENVIRONMENTS = frozenset({"dev"})


class Severity(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


SEVERITY_RANK: Mapping[Severity, int] = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2}


@dataclass(frozen=True)
class Finding:
    """One thing the role can do that an agent's role should not, and the SQL that takes it away."""

    code: str  # stable, e.g. "superuser", "member:pg_signal_backend", "owns_table", "schema_create"
    severity: Severity
    subject: str  # the role, schema, table or function concerned
    message: str
    fix: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "subject": self.subject,
            "message": self.message,
            "fix": list(self.fix),
        }


@dataclass(frozen=True)
class PrivilegeReport:
    role: str
    database: str
    server_version: str
    ddl_expected: bool
    findings: tuple[Finding, ...]
    connection: str = ""

    def at_least(self, severity: Severity) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[severity])

    @property
    def passed(self) -> bool:
        """No high finding: the bar provisioning and the CLI's exit code hold a role to."""
        return not self.at_least(Severity.HIGH)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "role": self.role,
            "database": self.database,
            "server_version": self.server_version,
            "ddl_expected": self.ddl_expected,
            "passed": self.passed,
            "counts": {s.value: sum(f.severity is s for f in self.findings) for s in Severity},
            "findings": [f.as_dict() for f in self.findings],
        }

    def format(self) -> str:
        head = (
            f"connection {self.connection or '-'}: role {self.role} on database {self.database} "
            f"(PostgreSQL {self.server_version})"
        )
        if self.ddl_expected:
            head += "; DDL runs here after approval, so owning and creating are medium"
        lines = [head]
        if self.findings:
            lines.append(_findings_table(self.findings))
        counts = ", ".join(f"{sum(f.severity is s for f in self.findings)} {s.value}" for s in Severity)
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: {counts}")
        return "\n".join(lines)


def ddl_expected(attributes: Mapping[str, Any]) -> bool:
    """Whether approved DDL runs on this connection, so its role owns the tables on purpose."""
    return str(attributes.get("env") or "") in DDL_ENVIRONMENTS


def check_connection(
    connection: Connection,
    secrets: SecretStore,
    *,
    new_owner: str | None = None,
    timeout_ms: int = CHECK_TIMEOUT_MS,
) -> PrivilegeReport:
    """Log in with the connection's own credential and report what its role can do."""
    con = connect(
        connection,
        secrets,
        timeout_s=timeout_ms / 1000 + SOCKET_GRACE_S,
        application_name="gatehouse-privilege-check",
    )
    try:
        report = check_privileges(
            con,
            ddl_expected=ddl_expected(connection.attributes),
            new_owner=new_owner,
            timeout_ms=timeout_ms,
        )
    finally:
        try:
            con.close()
        except (InterfaceError, OSError):
            pass  # already gone; the server rolls the read-only transaction back
    return PrivilegeReport(
        role=report.role,
        database=report.database,
        server_version=report.server_version,
        ddl_expected=report.ddl_expected,
        findings=report.findings,
        connection=connection.name,
    )


def check_privileges(
    con: pg8000.native.Connection,
    *,
    ddl_expected: bool = False,
    new_owner: str | None = None,
    timeout_ms: int = CHECK_TIMEOUT_MS,
) -> PrivilegeReport:
    """Report what the session's role (`current_user`) can do, read from the catalog as that role."""
    try:
        con.run("START TRANSACTION READ ONLY")
        con.run(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        report = _Checker(con, ddl_expected=ddl_expected, new_owner=new_owner).run()
        con.run("ROLLBACK")
    except DatabaseError as exc:
        try:
            con.run("ROLLBACK")  # leave the caller's session usable
        except (DatabaseError, InterfaceError, OSError):
            pass
        info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        raise TargetError(
            f"the privilege check failed: {info.get('M') or 'the database refused a catalog query'}",
            sqlstate=_sqlstate(exc),
        ) from exc
    except (InterfaceError, OSError) as exc:
        raise TargetUnavailableError("lost the connection while checking privileges") from exc
    return report


# -- what is looked for -----------------------------------------------------------------------------

# Role attributes: (pg_roles column, keyword, severity, why it matters).
ATTRIBUTES = (
    ("rolsuper", "SUPERUSER", Severity.HIGH, "passes every privilege check, reads and writes server files"),
    ("rolcreaterole", "CREATEROLE", Severity.HIGH, "can create roles and grant itself their memberships"),
    ("rolreplication", "REPLICATION", Severity.HIGH, "can stream every row of the cluster as replication"),
    ("rolbypassrls", "BYPASSRLS", Severity.HIGH, "ignores every row-level security policy"),
    ("rolcreatedb", "CREATEDB", Severity.MEDIUM, "can create databases, which it then owns"),
)

# Predefined roles (PostgreSQL 15): membership, direct or inherited, and why it matters.
PREDEFINED_ROLES: Mapping[str, tuple[Severity, str]] = {
    "pg_execute_server_program": (Severity.HIGH, "runs programs on the database server (COPY ... PROGRAM)"),
    "pg_read_server_files": (Severity.HIGH, "reads any file the server can read (COPY FROM, pg_read_file)"),
    "pg_write_server_files": (Severity.HIGH, "writes files on the database server (COPY TO a file)"),
    "pg_read_all_data": (Severity.HIGH, "reads every table and view, whatever their grants"),
    "pg_write_all_data": (Severity.HIGH, "writes every table, whatever their grants"),
    "pg_signal_backend": (
        Severity.HIGH,
        "cancels and terminates other roles' sessions (pg_cancel_backend, pg_terminate_backend)",
    ),
    "pg_monitor": (Severity.MEDIUM, "sees every session's query text and the server's settings"),
    "pg_read_all_stats": (Severity.MEDIUM, "sees every session's query text, which can hold literal values"),
    "pg_stat_scan_tables": (Severity.LOW, "runs monitoring functions that lock tables"),
    "pg_read_all_settings": (Severity.LOW, "reads every server setting, file paths included"),
    "pg_checkpoint": (Severity.LOW, "forces checkpoints, an I/O load on the whole cluster"),
}
# pg_monitor includes these; when only pg_monitor brings them, its finding says enough.
MONITOR_PARTS = ("pg_read_all_stats", "pg_read_all_settings", "pg_stat_scan_tables")


@dataclass(frozen=True)
class FunctionGroup:
    code: str
    severity: Severity
    why: str
    names: tuple[str, ...]


# Functions by name, in groups reported as one finding each. EXECUTE is traced through PUBLIC and
# role grants. pg_cancel_backend / pg_terminate_backend are EXECUTE to PUBLIC by design and reach
# only the caller's own role's sessions without pg_signal_backend, a membership checked above.
FUNCTION_GROUPS = (
    FunctionGroup(
        "execute:server_files",
        Severity.HIGH,
        "reads or writes files on the database server",
        (
            *("lo_import", "lo_export", "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file"),
            *("pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync"),  # adminpack
        ),
    ),
    FunctionGroup(
        "execute:server_control",
        Severity.HIGH,
        "operates the server: configuration reload, promotion, backups, WAL",
        (
            *("pg_reload_conf", "pg_promote", "pg_backup_start", "pg_backup_stop", "pg_switch_wal"),
            *("pg_create_restore_point", "pg_wal_replay_pause", "pg_wal_replay_resume"),
        ),
    ),
    FunctionGroup(
        "execute:dblink_u",
        Severity.HIGH,
        "opens connections to other servers as the database server's own OS user",
        ("dblink_connect_u",),
    ),
    FunctionGroup(
        "execute:dblink",
        Severity.MEDIUM,
        "opens connections from the database server to other servers",
        ("dblink", "dblink_connect", "dblink_exec", "dblink_send_query"),
    ),
    FunctionGroup(
        "execute:server_config",
        Severity.MEDIUM,
        "reads the server's authentication and configuration files",
        ("pg_hba_file_rules", "pg_ident_file_mappings", "pg_show_all_file_settings", "pg_config"),
    ),
    FunctionGroup(
        "execute:stats_reset",
        Severity.MEDIUM,
        "erases the server's statistics, which monitoring relies on",
        ("pg_stat_reset", "pg_stat_reset_shared", "pg_stat_reset_single_table_counters"),
    ),
    # EXECUTE to PUBLIC by default. They write even inside a READ ONLY transaction (measured on
    # PostgreSQL 15, see FACTS.md), so a statement taken for a read could still store data.
    FunctionGroup(
        "execute:large_objects",
        Severity.MEDIUM,
        "creates, changes and deletes large objects, even in a READ ONLY transaction",
        (
            "lo_create",
            "lo_creat",
            "lo_from_bytea",
            "lo_put",
            "lowrite",
            "lo_truncate",
            "lo_truncate64",
            "lo_unlink",
        ),
    ),
    FunctionGroup(
        "execute:server_logs",
        Severity.LOW,
        "lists the server's log, WAL and temporary files",
        ("pg_ls_logdir", "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_current_logfile"),
    ),
)
FUNCTION_GROUP_BY_NAME: Mapping[str, FunctionGroup] = {n: g for g in FUNCTION_GROUPS for n in g.names}

RELKIND_WORD = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "f": "FOREIGN TABLE",
    "S": "SEQUENCE",
}

TABLE_PRIVILEGES: Mapping[str, tuple[Severity, str]] = {
    "TRUNCATE": (Severity.MEDIUM, "can TRUNCATE it: every row gone at once, no DELETE triggers fire"),
    "TRIGGER": (Severity.MEDIUM, "can create triggers on it, code that runs on other roles' writes"),
    "REFERENCES": (Severity.LOW, "can reference it from foreign keys, which can block its writes"),
}

USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)
# A grantee written as SQL: PUBLIC, or the role's quoted name.
GRANTEE_SQL = "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(g.rolname) END"
# The ACL entries that reach the session's role: PUBLIC's, its own, or a role it is a member of.
# Grants to predefined roles (pg_*, a reserved prefix) are left to the membership findings, which
# name the grant to revoke; pg_database_owner is the exception: the ownership it stands for is ours.
# (CASE, not OR: SQL does not promise to evaluate OR left to right, and OID 0 is no role.)
REACHES_ME = (
    "CASE WHEN a.grantee = 0 THEN true "
    "WHEN g.rolname LIKE 'pg\\_%' AND g.rolname <> 'pg_database_owner' THEN false "
    "ELSE pg_has_role(a.grantee, 'MEMBER') END"
)

Q_SELF = (
    "SELECT r.oid, r.rolname, quote_ident(r.rolname), current_database(), quote_ident(current_database()), "
    "split_part(current_setting('server_version'), ' ', 1), d.datdba, o.rolname, quote_ident(o.rolname), "
    "pg_has_role(d.datdba, 'MEMBER'), current_setting('lo_compat_privileges') "
    "FROM pg_roles r, pg_database d JOIN pg_roles o ON o.oid = d.datdba "
    "WHERE r.rolname = current_user AND d.datname = current_database()"
)
Q_ROLES = (
    "SELECT oid, rolname, quote_ident(rolname), " + ", ".join(a[0] for a in ATTRIBUTES) + " FROM pg_roles"
)
Q_MEMBERSHIPS = "SELECT roleid, member, admin_option FROM pg_auth_members"
Q_SCHEMA_CREATE = (
    f"SELECT n.nspname, quote_ident(n.nspname), {GRANTEE_SQL}, a.grantee = n.nspowner, "
    "n.nspowner = 'pg_database_owner'::regrole "
    "FROM pg_namespace n "
    "CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a "
    "LEFT JOIN pg_roles g ON g.oid = a.grantee "
    f"WHERE a.privilege_type = 'CREATE' AND {REACHES_ME} AND {USER_SCHEMAS} "
    "ORDER BY 1, 3"
)
Q_DATABASE_PRIVILEGES = (
    f"SELECT d.datname, quote_ident(d.datname), a.privilege_type, {GRANTEE_SQL}, a.grantee = d.datdba "
    "FROM pg_database d "
    "CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
    "LEFT JOIN pg_roles g ON g.oid = a.grantee "
    f"WHERE d.datallowconn AND {REACHES_ME} AND ("
    "  (d.datname = current_database() AND a.privilege_type IN ('CREATE', 'TEMPORARY'))"
    "  OR (d.datname <> current_database() AND a.privilege_type = 'CONNECT')) "
    "ORDER BY d.datname = current_database() DESC, 1, 3, 4"
)
Q_OWNED_RELATIONS = (
    "SELECT format('%I.%I', n.nspname, c.relname), c.relkind, c.relrowsecurity "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {USER_SCHEMAS} "
    "AND pg_has_role(c.relowner, 'MEMBER') "
    # A serial or identity sequence changes owner with its table (and refuses to on its own).
    "AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend dep "
    "  WHERE dep.classid = 'pg_class'::regclass AND dep.objid = c.oid AND dep.deptype IN ('a', 'i'))) "
    "ORDER BY 1"
)
Q_OWNED_FUNCTIONS = (
    "SELECT format('%I.%I(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)), "
    "p.prokind FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    f"WHERE {USER_SCHEMAS} AND pg_has_role(p.proowner, 'MEMBER') "
    # Functions an extension installed belong to the extension's owner, not to a role's choices.
    "AND NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.classid = 'pg_proc'::regclass "
    "  AND dep.objid = p.oid AND dep.deptype = 'e') "
    "ORDER BY 1"
)
Q_TABLE_GRANTS = (
    "SELECT format('%I.%I', n.nspname, c.relname), c.relkind, a.privilege_type, a.is_grantable, "
    f"{GRANTEE_SQL} "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN LATERAL aclexplode(c.relacl) a "
    "LEFT JOIN pg_roles g ON g.oid = a.grantee "
    f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {USER_SCHEMAS} AND {REACHES_ME} "
    "AND a.grantee <> c.relowner "
    "AND (a.privilege_type IN ('TRUNCATE', 'TRIGGER', 'REFERENCES') OR a.is_grantable) "
    "ORDER BY 1, 3, 5"
)
Q_FUNCTION_EXECUTE = (
    # Input argument types only: what REVOKE and ALTER FUNCTION need to name the function.
    "SELECT format('%I.%I(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)), "
    f"p.proname, {GRANTEE_SQL}, a.grantee = p.proowner, p.prosecdef "
    "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    "CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
    "LEFT JOIN pg_roles g ON g.oid = a.grantee "
    f"WHERE a.privilege_type = 'EXECUTE' AND {REACHES_ME} AND NOT pg_has_role(p.proowner, 'MEMBER') "
    "AND (p.proname = ANY(CAST(:names AS text[])) "
    # A SECURITY DEFINER function runs with its owner's rights: one written by another role
    # outside the system schemas is a door into that role.
    f"     OR (p.prosecdef AND {USER_SCHEMAS})) "
    "ORDER BY 1, 3"
)
Q_FOREIGN_SERVERS = (
    f"SELECT s.srvname, quote_ident(s.srvname), {GRANTEE_SQL}, a.grantee = s.srvowner "
    "FROM pg_foreign_server s "
    "CROSS JOIN LATERAL aclexplode(coalesce(s.srvacl, acldefault('S', s.srvowner))) a "
    "LEFT JOIN pg_roles g ON g.oid = a.grantee "
    f"WHERE a.privilege_type = 'USAGE' AND {REACHES_ME} ORDER BY 1, 3"
)


@dataclass(frozen=True)
class _Role:
    oid: int
    name: str
    sql: str  # quoted
    flags: Mapping[str, bool]


@dataclass
class _Checker:
    con: pg8000.native.Connection
    ddl_expected: bool
    new_owner: str | None
    findings: list[Finding] = field(default_factory=list)

    def run(self) -> PrivilegeReport:
        (
            me_oid,
            me_name,
            self.me,
            database,
            self.db_sql,
            version,
            _datdba,
            db_owner,
            db_owner_sql,
            owns_database,
            lo_compat,
        ) = self.con.run(Q_SELF)[0]
        self.owner_sql = self._owner_target(db_owner_sql, owns_database)
        roles = {
            row[0]: _Role(
                row[0],
                row[1],
                row[2],
                {col: bool(v) for (col, *_), v in zip(ATTRIBUTES, row[3:], strict=True)},
            )
            for row in self.con.run(Q_ROLES)
        }
        via = _memberships(me_oid, self.con.run(Q_MEMBERSHIPS))
        self._attributes(roles[me_oid], roles, via)
        if roles[me_oid].flags["rolsuper"]:
            # A superuser passes every privilege check: listing grants would add nothing.
            return self._report(me_name, database, version)
        self._predefined_roles(roles, via)
        if owns_database:
            self._add(
                "owns_database",
                Severity.HIGH,
                database,
                "owns the database: it can alter or drop it, grant access to it, and owns its "
                "schema public through pg_database_owner",
                f"ALTER DATABASE {self.db_sql} OWNER TO {self.owner_sql}",
            )
        if str(lo_compat).lower() == "on":
            self._add(
                "lo_compat_privileges",
                Severity.HIGH,
                "lo_compat_privileges",
                "the server skips privilege checks on large objects: every role reads and writes all of them",
                "ALTER SYSTEM SET lo_compat_privileges = off",
                "SELECT pg_reload_conf()",
            )
        self._schemas()
        self._database_privileges(db_owner)
        self._owned_relations()
        self._owned_functions()
        self._table_grants()
        self._functions()
        self._foreign_servers()
        return self._report(me_name, database, version)

    # -- the checks ----------------------------------------------------------------------------------

    def _attributes(self, me: _Role, roles: Mapping[int, _Role], via: Mapping[int, set[int]]) -> None:
        for column, keyword, severity, why in ATTRIBUTES:
            if me.flags[column]:
                self._add(
                    keyword.lower(),
                    severity,
                    me.name,
                    f"has {keyword}: {why}",
                    f"ALTER ROLE {me.sql} NO{keyword}",
                )
            # Attributes are not inherited, but a member may SET ROLE to the role that has them.
            for oid in sorted(via, key=lambda o: roles[o].name):
                other = roles[oid]
                if other.flags[column]:
                    self._add(
                        f"{keyword.lower()}_by_membership",
                        severity,
                        other.name,
                        f"can SET ROLE to {other.name}, which has {keyword}: {why}",
                        *self._revoke_memberships(via[oid], roles),
                    )

    def _predefined_roles(self, roles: Mapping[int, _Role], via: Mapping[int, set[int]]) -> None:
        by_name = {roles[oid].name: oid for oid in via}
        monitor = by_name.get("pg_monitor")
        for name, (severity, why) in PREDEFINED_ROLES.items():
            oid = by_name.get(name)
            if oid is None:
                continue
            if name in MONITOR_PARTS and monitor is not None and via[oid] <= via[monitor]:
                continue
            direct = oid in via[oid]
            how = "is a member of" if direct else "inherits"
            self._add(
                f"member:{name}",
                severity,
                name,
                f"{how} {name}: {why}",
                *self._revoke_memberships(via[oid], roles),
            )

    def _schemas(self) -> None:
        grouped: dict[str, list[str]] = {}
        for schema, schema_sql, grantee, by_ownership, owned_by_db_owner in self.con.run(Q_SCHEMA_CREATE):
            fixes = grouped.setdefault(schema, [])
            if by_ownership and owned_by_db_owner:
                fixes.append(f"ALTER DATABASE {self.db_sql} OWNER TO {self.owner_sql}")
            elif by_ownership:
                fixes.append(f"ALTER SCHEMA {schema_sql} OWNER TO {self.owner_sql}")
            else:
                fixes.append(f"REVOKE CREATE ON SCHEMA {schema_sql} FROM {grantee}")
        for schema, fixes in grouped.items():
            self._add(
                "schema_create",
                self._ddl_severity(),
                schema,
                "can CREATE in this schema: new tables it then owns, and functions or operators that "
                "can shadow the ones other roles call through search_path",
                *dict.fromkeys(fixes),
            )

    def _database_privileges(self, db_owner: str) -> None:
        grouped: dict[tuple[str, str], list[str]] = {}
        names: dict[str, str] = {}
        for datname, datname_sql, privilege, grantee, by_ownership in self.con.run(Q_DATABASE_PRIVILEGES):
            names[datname] = datname_sql
            fixes = grouped.setdefault((datname, privilege), [])
            if by_ownership:
                fixes.append(f"ALTER DATABASE {datname_sql} OWNER TO {self.owner_sql}")
            else:
                fixes.append(f"REVOKE {privilege} ON DATABASE {datname_sql} FROM {grantee}")
        for (datname, privilege), fixes in grouped.items():
            if privilege == "CONNECT":
                severity, code = Severity.LOW, "database_connect"
                message = "can connect to this database too: the credential reaches past its connection"
            elif privilege == "CREATE":
                severity, code = self._ddl_severity(), "database_create"
                message = "can CREATE schemas in the connection's database, and owns what it creates"
            else:
                severity, code = Severity.LOW, "database_temp"
                message = "can create temporary tables, which no grant governs"
            self._add(code, severity, datname, message, *dict.fromkeys(fixes))

    def _owned_relations(self) -> None:
        for relation, relkind, rls in self.con.run(Q_OWNED_RELATIONS):
            word = RELKIND_WORD[relkind]
            rls_note = ", switch its row-level security off" if rls else ""
            self._add(
                "owns_" + word.lower().replace(" ", "_"),
                self._ddl_severity(),
                relation,
                f"owns this {word.lower()}: it can ALTER, DROP or empty it{rls_note} and grant it to anyone",
                f"ALTER {word} {relation} OWNER TO {self.owner_sql}",
            )

    def _owned_functions(self) -> None:
        for function, prokind in self.con.run(Q_OWNED_FUNCTIONS):
            word = "PROCEDURE" if prokind == "p" else "AGGREGATE" if prokind == "a" else "FUNCTION"
            self._add(
                "owns_function",
                Severity.MEDIUM,
                function,
                f"owns this {word.lower()}: it can replace its body, which other roles then run",
                f"ALTER {word} {function} OWNER TO {self.owner_sql}",
            )

    def _table_grants(self) -> None:
        for relation, relkind, privilege, grantable, grantee in self.con.run(Q_TABLE_GRANTS):
            word = RELKIND_WORD[relkind]
            if privilege in TABLE_PRIVILEGES:
                severity, why = TABLE_PRIVILEGES[privilege]
                self._add(
                    f"table_{privilege.lower()}",
                    severity,
                    relation,
                    why,
                    f"REVOKE {privilege} ON {_grant_word(word)} {relation} FROM {grantee}",
                )
            elif grantable:
                self._add(
                    "grant_option",
                    Severity.MEDIUM,
                    relation,
                    f"holds {privilege} WITH GRANT OPTION: it can pass it on to any role",
                    f"REVOKE GRANT OPTION FOR {privilege} ON {_grant_word(word)} {relation} FROM {grantee}",
                )

    def _functions(self) -> None:
        groups: dict[str, tuple[FunctionGroup, dict[str, None], dict[str, None]]] = {}
        definers: dict[str, dict[str, None]] = {}
        rows = self.con.run(Q_FUNCTION_EXECUTE, names=sorted(FUNCTION_GROUP_BY_NAME))
        for function, proname, grantee, _by_owner, _secdef in rows:
            fix = f"REVOKE EXECUTE ON FUNCTION {function} FROM {grantee}"
            group = FUNCTION_GROUP_BY_NAME.get(proname)
            if group is None:
                definers.setdefault(function, {})[fix] = None
                continue
            _, names, fixes = groups.setdefault(group.code, (group, {}, {}))
            names[proname] = None
            fixes[fix] = None
        for group, names, fixes in groups.values():
            self._add(group.code, group.severity, ", ".join(names), f"can execute these: {group.why}", *fixes)
        for function, fixes in definers.items():
            self._add(
                "execute:security_definer",
                Severity.MEDIUM,
                function,
                "can execute it, and it runs with its owner's privileges (SECURITY DEFINER)",
                *fixes,
            )

    def _foreign_servers(self) -> None:
        for server, server_sql, grantee, by_owner in self.con.run(Q_FOREIGN_SERVERS):
            fix = (
                f"ALTER SERVER {server_sql} OWNER TO {self.owner_sql}"
                if by_owner
                else f"REVOKE USAGE ON FOREIGN SERVER {server_sql} FROM {grantee}"
            )
            self._add(
                "foreign_server_usage",
                Severity.MEDIUM,
                server,
                "can use this foreign server: queries from here reach another database",
                fix,
            )

    # -- helpers -------------------------------------------------------------------------------------

    def _ddl_severity(self) -> Severity:
        return Severity.MEDIUM if self.ddl_expected else Severity.HIGH

    def _owner_target(self, db_owner_sql: str, owns_database: bool) -> str:
        if self.new_owner:
            return _quote_ident(self.new_owner)
        # The database's owner is the natural owner of its objects, unless it is the role itself.
        return OWNER_PLACEHOLDER if owns_database else db_owner_sql

    def _revoke_memberships(self, direct: Iterable[int], roles: Mapping[int, _Role]) -> list[str]:
        return [
            f"REVOKE {roles[oid].sql} FROM {self.me}" for oid in sorted(direct, key=lambda o: roles[o].name)
        ]

    def _add(self, code: str, severity: Severity, subject: str, message: str, *fix: str) -> None:
        self.findings.append(Finding(code, severity, subject, message, tuple(fix)))

    def _report(self, role: str, database: str, version: str) -> PrivilegeReport:
        ordered = sorted(self.findings, key=lambda f: -SEVERITY_RANK[f.severity])  # stable within a rank
        return PrivilegeReport(
            role=role,
            database=database,
            server_version=str(version),
            ddl_expected=self.ddl_expected,
            findings=tuple(ordered),
        )


def _memberships(me: int, edges: Sequence[Sequence[Any]]) -> dict[int, set[int]]:
    """Every role `me` is a member of, directly or not, each with the direct grants that lead to it.

    Revoking those direct grants is what removes the membership; revoking an inherited role from
    `me` would do nothing.
    """
    parents: dict[int, list[int]] = {}
    for roleid, member, _admin in edges:
        parents.setdefault(member, []).append(roleid)
    via: dict[int, set[int]] = {}
    queue: deque[tuple[int, int]] = deque((r, r) for r in parents.get(me, ()))
    while queue:
        role, first = queue.popleft()
        seen = via.setdefault(role, set())
        if first in seen:
            continue
        seen.add(first)
        queue.extend((parent, first) for parent in parents.get(role, ()))
    return via


def _grant_word(word: str) -> str:
    # GRANT and REVOKE name every relation kind TABLE, except sequences.
    return "SEQUENCE" if word == "SEQUENCE" else "TABLE"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlstate(exc: DatabaseError) -> str | None:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    code = info.get("C")
    return str(code) if code else None


def _findings_table(findings: Sequence[Finding]) -> str:
    """One row per finding, its fix SQL on the line below it in full (it is meant to be copied)."""
    columns = ("severity", "subject", "finding")
    rows = [(f.severity.value, f.subject, " ".join(f.message.split())) for f in findings]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns[:2])]
    lines = [f"{columns[0].ljust(widths[0])} | {columns[1].ljust(widths[1])} | {columns[2]}"]
    lines.append(f"{'-' * widths[0]}-+-{'-' * widths[1]}-+-{'-' * len(columns[2])}")
    indent = " " * (widths[0] + 3)
    for f, (severity, subject, message) in zip(findings, rows, strict=True):
        lines.append(f"{severity.ljust(widths[0])} | {subject.ljust(widths[1])} | {message}")
        lines += [f"{indent}fix: {sql};" for sql in f.fix]
    return "\n".join(lines)
