"""Least privilege of a connection's role, checked on the real Postgres (and, for the CLI and
provisioning, with the credential read from Secrets Manager in moto)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pg8000.native
import pytest

from gatehouse import cli, names
from gatehouse.local.moto_server import MotoServer
from gatehouse.local.postgres import PostgresInfo
from gatehouse.local.provision import AwsClients, ProvisionError, database_role, provision, put_item
from gatehouse.local.seed import quote_ident, seed, seed_database
from gatehouse.local.stack import DEMO_CONFIG_PATH
from gatehouse.targets.postgres_privileges import PrivilegeReport, Severity, check_privileges
from tests.integration.local_fixtures import REGION, running_moto

CHECK_DB = "privilege_check"


@pytest.fixture(scope="module")
def check_db(postgres: PostgresInfo) -> Iterator[str]:
    """A database of our own, owned by the cluster superuser, with PostgreSQL's defaults."""
    admin = postgres.connect()
    admin.run(f"DROP DATABASE IF EXISTS {CHECK_DB} WITH (FORCE)")
    admin.run(f"CREATE DATABASE {CHECK_DB}")
    try:
        yield CHECK_DB
    finally:
        admin.run(f"DROP DATABASE IF EXISTS {CHECK_DB} WITH (FORCE)")
        admin.close()


@dataclass
class Role:
    name: str
    password: str
    postgres: PostgresInfo
    database: str

    def check(self) -> PrivilegeReport:
        con = pg8000.native.Connection(
            self.name,
            password=self.password,
            host=self.postgres.host,
            port=self.postgres.port,
            database=self.database,
        )
        try:
            return check_privileges(con)
        finally:
            con.close()


def drop_role(postgres: PostgresInfo, databases: list[str], role: str) -> None:
    for database in databases:
        con = postgres.connect(database)
        try:
            con.run(f"DROP OWNED BY {quote_ident(role)}")
        finally:
            con.close()
    admin = postgres.connect()
    try:
        admin.run(f"DROP ROLE IF EXISTS {quote_ident(role)}")
    finally:
        admin.close()


@pytest.fixture
def role(postgres: PostgresInfo, check_db: str) -> Iterator[Role]:
    """A fresh login role with nothing granted to it but PUBLIC's defaults."""
    name, password = f"agent_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    admin = postgres.connect()
    admin.run(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    admin.close()
    try:
        yield Role(name, password, postgres, check_db)
    finally:
        drop_role(postgres, [check_db, "postgres"], name)


def as_superuser(postgres: PostgresInfo, database: str, *statements: str) -> None:
    con = postgres.connect(database)
    try:
        for sql in statements:
            con.run(sql)
    finally:
        con.close()


def finding(report: PrivilegeReport, code: str, subject: str):
    found = [f for f in report.findings if (f.code, f.subject) == (code, subject)]
    return found[0] if found else None


# (case id, setup run as superuser with {role} filled in, finding code, subject, fix SQL)
CASES = [
    ("superuser", ["ALTER ROLE {role} SUPERUSER"], "superuser", "{role}", ["ALTER ROLE {role} NOSUPERUSER"]),
    (
        "createrole",
        ["ALTER ROLE {role} CREATEROLE"],
        "createrole",
        "{role}",
        ["ALTER ROLE {role} NOCREATEROLE"],
    ),
    (
        "signal-backend",
        ["GRANT pg_signal_backend TO {role}"],
        "member:pg_signal_backend",
        "pg_signal_backend",
        ["REVOKE pg_signal_backend FROM {role}"],
    ),
    (
        "signal-backend-inherited",
        [
            "CREATE ROLE {role}_ops NOLOGIN",
            "GRANT pg_signal_backend TO {role}_ops",
            "GRANT {role}_ops TO {role}",
        ],
        "member:pg_signal_backend",
        "pg_signal_backend",
        ["REVOKE {role}_ops FROM {role}"],
    ),
    (
        "owns-table",
        ["CREATE TABLE {role}_t (id serial PRIMARY KEY)", "ALTER TABLE {role}_t OWNER TO {role}"],
        "owns_table",
        "public.{role}_t",
        ["ALTER TABLE public.{role}_t OWNER TO gatehouse_admin"],
    ),
    (
        "create-on-public",
        ["GRANT CREATE ON SCHEMA public TO {role}"],
        "schema_create",
        "public",
        ["REVOKE CREATE ON SCHEMA public FROM {role}"],
    ),
    (
        "create-on-public-for-everyone",  # what PostgreSQL 14 and older granted by default
        ["GRANT CREATE ON SCHEMA public TO PUBLIC"],
        "schema_create",
        "public",
        ["REVOKE CREATE ON SCHEMA public FROM PUBLIC"],
    ),
    (
        "server-files",
        ["GRANT EXECUTE ON FUNCTION lo_import(text) TO {role}"],
        "execute:server_files",
        "lo_import",
        ["REVOKE EXECUTE ON FUNCTION pg_catalog.lo_import(text) FROM {role}"],
    ),
]


@pytest.mark.parametrize(
    ("setup", "code", "subject", "fix"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_excess_privilege_is_a_high_finding_whose_fix_removes_it(
    role, postgres, setup, code, subject, fix
):
    fill = {"role": role.name}
    # Given a role with one privilege too many
    as_superuser(postgres, role.database, *(s.format(**fill) for s in setup))
    try:
        # When it checks itself
        before = role.check()

        # Then the finding is there, high, with the SQL that removes it
        found = finding(before, code, subject.format(**fill))
        assert found is not None, [f.as_dict() for f in before.findings]
        assert found.severity is Severity.HIGH
        assert list(found.fix) == [s.format(**fill) for s in fix]
        assert not before.passed

        # And once an administrator runs that SQL, it is gone and nothing high is left
        as_superuser(postgres, role.database, *found.fix)
        after = role.check()
        assert finding(after, code, subject.format(**fill)) is None
        assert after.passed, [f.as_dict() for f in after.at_least(Severity.HIGH)]
    finally:
        as_superuser(
            postgres,
            role.database,
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            f"DROP ROLE IF EXISTS {role.name}_ops",
        )


def test_a_role_with_only_public_defaults_passes_with_the_lesser_findings_listed(role):
    report = role.check()

    assert report.passed
    codes = {f.code for f in report.findings}
    # PostgreSQL's defaults that an agent's role should still not have, at medium or low.
    assert {"database_temp", "database_connect", "execute:large_objects"} <= codes
    temp = next(f for f in report.findings if f.code == "database_temp")
    assert temp.fix == (f"REVOKE TEMPORARY ON DATABASE {CHECK_DB} FROM PUBLIC",)


def test_a_superuser_report_reads_as_a_failure_naming_the_fix(role, postgres):
    as_superuser(postgres, role.database, f"ALTER ROLE {role.name} SUPERUSER")

    text = role.check().format()

    assert f"ALTER ROLE {role.name} NOSUPERUSER;" in text
    assert text.splitlines()[-1].startswith("FAIL: 1 high")


def test_the_check_changes_nothing_and_leaves_no_transaction_open(role, postgres):
    con = pg8000.native.Connection(
        role.name, password=role.password, host=postgres.host, port=postgres.port, database=role.database
    )
    try:
        check_privileges(con)
        status = con.run("SELECT current_setting('transaction_read_only'), txid_current_if_assigned()")
    finally:
        con.close()

    assert status == [["off", None]]


# -- the demo stack, provisioning and the CLI ----------------------------------------------------------


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture(scope="module")
def demo(moto_server, postgres, tmp_path_factory) -> Path:
    """The demo databases and connections, provisioned (which runs the check), and a local.json."""
    seed(postgres, ["demo-dev", "demo-prod"])
    provision(
        AwsClients.for_endpoint(moto_server.endpoint_url, REGION),
        postgres=postgres,
        demo_config_path=DEMO_CONFIG_PATH,
        region=REGION,
    )
    cwd = tmp_path_factory.mktemp("check-cwd")
    (cwd / ".gatehouse").mkdir()
    (cwd / ".gatehouse" / "local.json").write_text(
        json.dumps({"aws": moto_server.endpoint_url, "region": REGION})
    )
    return cwd


def run_cli(monkeypatch, capsys, cwd: Path, *argv: str) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("connection", ["demo-dev", "demo-prod"])
def test_the_demo_roles_pass(demo, monkeypatch, capsys, connection):
    code, out, _ = run_cli(monkeypatch, capsys, demo, "connections", "check", connection, "--json")

    report = json.loads(out)
    assert code == cli.EXIT_OK
    assert (report["connection"], report["role"], report["passed"]) == (
        connection,
        database_role(connection),
        True,
    )
    assert report["counts"]["high"] == 0


def test_the_prod_role_owns_nothing_and_creates_nothing(demo, monkeypatch, capsys):
    _, out, _ = run_cli(monkeypatch, capsys, demo, "connections", "check", "demo-prod", "--json")

    codes = {f["code"] for f in json.loads(out)["findings"]}
    assert not codes & {
        "owns_table",
        "owns_database",
        "schema_create",
        "database_temp",
        "execute:large_objects",
    }


def test_the_dev_role_owns_its_tables_for_approved_ddl_reported_as_medium(demo, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, demo, "connections", "check", "demo-dev")

    assert code == cli.EXIT_OK
    assert "DDL runs here after approval" in out
    assert "fix: ALTER TABLE public.customers OWNER TO gatehouse_demo_owner;" in out
    assert out.splitlines()[-1].startswith("PASS: 0 high")
    # Asked to hold medium findings against it too, the same role fails.
    strict, _, _ = run_cli(
        monkeypatch, capsys, demo, "connections", "check", "demo-dev", "--fail-on", "medium"
    )
    assert strict == 1


@pytest.fixture
def risky_connection(demo, moto_server, postgres) -> Iterator[str]:
    """A registered connection whose role has CREATEROLE, its credential in Secrets Manager."""
    name, role, password = "check-risky", f"risky_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    as_superuser(postgres, "postgres", f"CREATE ROLE {role} LOGIN CREATEROLE PASSWORD '{password}'")
    aws = AwsClients.for_endpoint(moto_server.endpoint_url, REGION)
    arn = aws.secretsmanager.create_secret(
        Name=names.connection_secret_name(name),
        SecretString=json.dumps({"username": role, "password": password}),
    )["ARN"]
    item = {
        "name": name,
        "kind": "postgres",
        "host": postgres.host,
        "port": postgres.port,
        "database": "demo-dev",
        "secret_id": arn,
        "attributes": {"env": "prod"},
    }
    put_item(aws.dynamodb, names.CONNECTIONS_TABLE, item)
    as_superuser(postgres, "demo-dev", f'GRANT CONNECT ON DATABASE "demo-dev" TO {role}')
    try:
        yield name
    finally:
        aws.dynamodb.delete_item(TableName=names.CONNECTIONS_TABLE, Key={"name": {"S": name}})
        aws.secretsmanager.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
        drop_role(postgres, ["demo-dev"], role)


def test_the_cli_exits_non_zero_on_a_high_finding_and_prints_the_fix(
    risky_connection, demo, monkeypatch, capsys
):
    code, out, _ = run_cli(monkeypatch, capsys, demo, "connections", "check", risky_connection)

    assert code == 1
    assert "has CREATEROLE" in out and "NOCREATEROLE;" in out
    assert out.splitlines()[-1].startswith("FAIL: 1 high")


def test_the_cli_says_plainly_when_the_connection_is_unknown(demo, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, demo, "connections", "check", "no-such-connection")

    assert (code, out) == (2, "")
    assert "no connection named 'no-such-connection'" in err


def test_the_cli_without_a_stack_says_where_it_looked(tmp_path, monkeypatch, capsys):
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)

    code, _, err = run_cli(monkeypatch, capsys, tmp_path, "connections", "check", "demo-dev")

    assert code == 2
    assert "gatehouse local up" in err


def test_provisioning_refuses_a_connection_role_with_a_high_finding(postgres, tmp_path):
    # Given a role left behind with pg_signal_backend, which provisioning reuses for its connection
    connection = "check-poisoned"
    role = database_role(connection)
    seed_database(postgres, connection, customers=3)
    as_superuser(postgres, "postgres", f"CREATE ROLE {role} LOGIN", f"GRANT pg_signal_backend TO {role}")
    config = tmp_path / "demo.json"
    config.write_text(
        json.dumps({"connections": {connection: {"kind": "postgres", "attributes": {"env": "prod"}}}})
    )
    try:
        with running_moto() as server:
            # When the stack is provisioned, then it refuses, naming the finding and its fix
            with pytest.raises(ProvisionError) as err:
                provision(
                    AwsClients.for_endpoint(server.endpoint_url, REGION),
                    postgres=postgres,
                    demo_config_path=config,
                    region=REGION,
                )
    finally:
        as_superuser(postgres, "postgres", f'DROP DATABASE IF EXISTS "{connection}" WITH (FORCE)')
        drop_role(postgres, [], role)

    message = str(err.value)
    assert f"connection {connection}" in message
    assert "pg_signal_backend" in message
    assert f"REVOKE pg_signal_backend FROM {role}" in message
