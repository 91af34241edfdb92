"""`gatehouse admin ...` against in-process moto and the real Postgres: what an operator registers
is what the registry, the identity lookup and the executor then find, and a refusal writes nothing."""

from __future__ import annotations

import datetime
import io
import json
import secrets
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncssh
import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws

from gatehouse import cli, names
from gatehouse.exceptions import UnknownConnectionError, UnknownPrincipalError
from gatehouse.identity import CallerIdentity
from gatehouse.local.postgres import PostgresInfo, free_port
from gatehouse.local.provision import AwsClients, create_tables, local_settings
from gatehouse.local.seed import quote_ident
from gatehouse.registry import Registry
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres import connect
from tests.integration.local_fixtures import running_moto

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
DATABASE = "admin_registry"


# -- the stack: moto in process, the registry tables as provisioning creates them ------------------


@dataclass
class Stack:
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION)

    @property
    def registry(self) -> Registry:
        return Registry(self.client("dynamodb"), names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE)

    def run(self, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = cli.main(["admin", *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def secret(self, connection: str) -> dict[str, Any]:
        # moto answers a read without a stage from its own default version, which moving AWSCURRENT
        # back (the undo of a replacement) does not update; AWS answers AWSCURRENT. Ask for that.
        value = self.client("secretsmanager").get_secret_value(
            SecretId=names.connection_secret_name(connection), VersionStage="AWSCURRENT"
        )
        return json.loads(value["SecretString"])

    def secret_exists(self, connection: str) -> bool:
        sm = self.client("secretsmanager")
        try:
            sm.describe_secret(SecretId=names.connection_secret_name(connection))
        except sm.exceptions.ResourceNotFoundException:
            return False
        return True

    def nothing_registered(self) -> bool:
        ddb, sm = self.client("dynamodb"), self.client("secretsmanager")
        items = [ddb.scan(TableName=t)["Items"] for t in (names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE)]
        return items == [[], []] and sm.list_secrets(IncludePlannedDeletion=True)["SecretList"] == []


@pytest.fixture
def stack(aws_env, monkeypatch, capsys, tmp_path) -> Iterator[Stack]:
    for key in (names.ENV_CONNECTIONS_TABLE, names.ENV_PRINCIPALS_TABLE, names.ENV_POLICY_DIR):
        monkeypatch.delenv(key, raising=False)
    # No .gatehouse/local.json here: the commands take the deployed-stack path (AWS from the env).
    monkeypatch.chdir(tmp_path)
    with mock_aws(config={"lambda": {"use_docker": False}}):
        create_tables(boto3.client("dynamodb", region_name=REGION), local_settings(REGION))
        yield Stack(monkeypatch, capsys)


# -- the database: one table, a least-privilege role and an over-privileged one ---------------------


@pytest.fixture(scope="module")
def database(postgres: PostgresInfo) -> Iterator[str]:
    admin = postgres.connect()
    admin.run(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    admin.run(f"CREATE DATABASE {DATABASE}")
    admin.close()
    con = postgres.connect(DATABASE)
    con.run("CREATE TABLE customers (id int PRIMARY KEY, email text)")
    con.run("INSERT INTO customers VALUES (1, 'a@example.com'), (2, 'b@example.com'), (3, 'c@example.com')")
    con.close()
    try:
        yield DATABASE
    finally:
        admin = postgres.connect()
        admin.run(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.close()


@dataclass(frozen=True)
class Role:
    name: str
    password: str


@pytest.fixture
def make_role(postgres: PostgresInfo, database: str) -> Iterator[Any]:
    """Login roles that may read `customers`; `createrole=True` gives one privilege too many."""
    made: list[str] = []

    def make(*, createrole: bool = False) -> Role:
        role = Role(f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(18))
        admin = postgres.connect()
        extra = " CREATEROLE" if createrole else ""
        admin.run(f"CREATE ROLE {role.name} LOGIN{extra} PASSWORD '{role.password}'")
        admin.run(f"GRANT CONNECT ON DATABASE {DATABASE} TO {role.name}")
        admin.close()
        con = postgres.connect(database)
        con.run(f"GRANT SELECT ON customers TO {role.name}")
        con.close()
        made.append(role.name)
        return role

    yield make
    for name in made:
        con = postgres.connect(database)
        con.run(f"DROP OWNED BY {quote_ident(name)}")
        con.close()
        admin = postgres.connect()
        admin.run(f"DROP OWNED BY {quote_ident(name)}")
        admin.run(f"DROP ROLE IF EXISTS {quote_ident(name)}")
        admin.close()


def add_postgres(
    stack: Stack, postgres: PostgresInfo, name: str, role: Role, *extra: str
) -> tuple[int, str, str]:
    return stack.run(
        "connections", "add", name, "--kind", "postgres",
        "--host", postgres.host, "--port", str(postgres.port), "--database", DATABASE,
        "--username", role.name, "--password-stdin", *extra,
        stdin=role.password + "\n",
    )  # fmt: skip


# -- postgres connections ---------------------------------------------------------------------------


def test_a_least_privilege_role_is_registered_and_gatehouse_can_use_it(stack, postgres, make_role):
    role = make_role()

    code, out, err = add_postgres(
        stack, postgres, "orders-prod", role,
        "--attribute", "env=prod", "--attribute", "data_classification=pii",
        "--masking-profile", "pii-strict", "--recording", "sync",
    )  # fmt: skip

    assert code == 0, err
    assert "registered connection orders-prod" in out and "PASS: 0 high" in out
    assert role.password not in out + err
    # The registry finds it as the API will, with what the operator gave.
    connection = stack.registry.get_connection("orders-prod")
    assert (connection.kind, connection.host, connection.port, connection.database) == (
        "postgres",
        postgres.host,
        postgres.port,
        DATABASE,
    )
    assert connection.attributes == {"env": "prod", "data_classification": "pii"}
    assert (connection.masking_profile, connection.recording) == ("pii-strict", "sync")
    assert stack.secret("orders-prod") == {"username": role.name, "password": role.password}
    # And the executor's own login, with the credential from Secrets Manager, reads the table.
    con = connect(connection, SecretStore(stack.client("secretsmanager"), cache_seconds=0), timeout_s=5)
    try:
        assert con.run("SELECT count(*) FROM customers") == [[3]]
    finally:
        con.close()


def test_an_over_privileged_role_is_refused_with_its_fix_and_nothing_is_left(stack, postgres, make_role):
    role = make_role(createrole=True)

    code, out, err = add_postgres(stack, postgres, "risky", role, "--attribute", "env=prod")

    assert code == 1
    assert "has CREATEROLE" in out and f"fix: ALTER ROLE {role.name} NOCREATEROLE;" in out
    assert "nothing was registered" in err
    assert role.password not in out + err
    with pytest.raises(UnknownConnectionError):
        stack.registry.get_connection("risky")
    assert not stack.secret_exists("risky")
    # Once the administrator runs the fix, the same command (no --replace) registers it: the
    # refused attempt held nothing back, not even the secret's name.
    admin = postgres.connect()
    admin.run(f"ALTER ROLE {role.name} NOCREATEROLE")
    admin.close()
    code, out, err = add_postgres(stack, postgres, "risky", role, "--attribute", "env=prod")
    assert code == 0, err
    assert stack.registry.get_connection("risky").name == "risky"


def test_a_refused_replacement_leaves_the_working_registration_as_it_was(stack, postgres, make_role):
    good, bad = make_role(), make_role(createrole=True)
    assert add_postgres(stack, postgres, "orders", good, "--attribute", "env=prod")[0] == 0

    code, _, _ = add_postgres(stack, postgres, "orders", bad, "--attribute", "env=dev", "--replace")

    assert code == 1
    assert stack.registry.get_connection("orders").attributes["env"] == "prod"
    assert stack.secret("orders") == {"username": good.name, "password": good.password}


def test_an_unreachable_database_registers_nothing(stack, make_role):
    role = make_role()

    code, _, err = stack.run(
        "connections", "add", "far-away", "--kind", "postgres", "--host", "127.0.0.1",
        "--port", str(free_port()), "--username", role.name, "--password-stdin", "--attribute", "env=prod",
        stdin=role.password,
    )  # fmt: skip

    assert code == 2
    assert "far-away is not reachable" in err
    assert stack.nothing_registered()


def test_an_existing_connection_is_only_overwritten_with_replace(stack, postgres, make_role):
    role = make_role()
    assert add_postgres(stack, postgres, "orders", role, "--attribute", "env=prod")[0] == 0

    again, _, err = add_postgres(stack, postgres, "orders", role, "--attribute", "env=dev")
    assert again == 2
    assert "connection orders and secret gatehouse/connections/orders already exist" in err
    assert stack.registry.get_connection("orders").attributes["env"] == "prod"

    replaced, out, err = add_postgres(stack, postgres, "orders", role, "--attribute", "env=dev", "--replace")
    assert replaced == 0, err
    assert "(replaced)" in out
    assert stack.registry.get_connection("orders").attributes["env"] == "dev"


def test_the_password_comes_from_the_environment_never_from_argv(stack, postgres, make_role):
    role = make_role()
    stack.monkeypatch.setenv("ORDERS_PASSWORD", role.password)
    argv = ["connections", "add", "orders", "--kind", "postgres", "--host", postgres.host,
            "--port", str(postgres.port), "--database", DATABASE, "--username", role.name,
            "--attribute", "env=prod"]  # fmt: skip

    # There is no option that takes the password itself.
    with pytest.raises(SystemExit) as refused:
        stack.run(*argv, "--password", role.password)
    assert refused.value.code == 2
    assert stack.nothing_registered()

    code, out, err = stack.run(*argv, "--password-env", "ORDERS_PASSWORD")
    assert code == 0, err
    assert role.password not in out + err
    assert stack.secret("orders")["password"] == role.password


PG = ["--kind", "postgres"]
HTTP = ["--kind", "http", "--url", "https://api.example.com"]
SSH = ["--kind", "ssh", "--host", "h", "--username", "u"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*PG, "--attribute", "env=prdo"], "env='prdo' is named by no policy"),
        (PG, "needs --attribute env=..."),
        ([*PG, "--attribute", "env=prod", "--attribute", "colour=red"], "colour means nothing"),
        ([*PG, "--attribute", "env=prod", "--masking-profile", "pii"], "--masking-profile must"),
        ([*PG, "--attribute", "env=[1]"], "env must be a non-empty line of text"),
        ([*HTTP, "--rotation-days", "30"], "only Postgres"),
        (["--kind", "http", "--url", "http://api.example.com"], "plain http is only allowed when local"),
        ([*HTTP, "--attribute", "mask_path=[]"], "mask_path means nothing"),
        ([*SSH, "--host-key", "ssh-ed25519 junk"], "cannot be read"),
        (["--kind", "kubernetes", "--url", "https://k8s.example.com"], "needs --ca-file"),
    ],
    ids=[
        "env-typo", "no-env", "unknown-attribute", "unknown-profile", "env-not-text", "rotation-not-postgres",
        "http-plaintext", "http-attribute-typo", "ssh-bad-host-key", "k8s-no-ca",
    ],
)  # fmt: skip
def test_a_registration_the_policies_or_the_executor_would_not_understand_is_refused(
    stack, postgres, argv, message
):
    code, _, err = stack.run(
        "connections", "add", "c1", *_with_defaults(argv, postgres), "--password-stdin", stdin="s3cret"
    )

    assert code == 2
    assert message in err
    assert "s3cret" not in err
    assert stack.nothing_registered()


def _with_defaults(argv: list[str], postgres: PostgresInfo) -> list[str]:
    if argv[1] == "postgres":
        return [*argv, "--host", postgres.host, "--port", str(postgres.port), "--username", "nobody"]
    return argv


# -- other kinds ------------------------------------------------------------------------------------


def ca_pem() -> str:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_an_http_connection_keeps_json_attributes_and_shows_agents_none_of_its_settings(stack):
    token = "tok-" + secrets.token_hex(8)
    stack.monkeypatch.setenv("CRM_TOKEN", token)

    code, out, err = stack.run(
        "connections", "add", "crm", "--kind", "http", "--url", "https://crm.example.com/api",
        "--attribute", "env=prod", "--attribute", 'mask_paths=["$.email", "$..ssn"]',
        "--attribute", "allow_private=true", "--password-env", "CRM_TOKEN",
    )  # fmt: skip

    assert code == 0, err
    connection = stack.registry.get_connection("crm")
    assert connection.attributes == {
        "env": "prod",
        "mask_paths": ["$.email", "$..ssn"],
        "allow_private": True,
        "base_url": "https://crm.example.com/api",
    }
    assert (connection.host, connection.port) == ("crm.example.com", 443)
    assert connection.public_view() == {"name": "crm", "kind": "http", "attributes": {"env": "prod"}}
    assert stack.secret("crm") == {"token": token}
    assert token not in out + err


def test_kubernetes_and_ssh_connections_store_what_their_executors_read(stack, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(ca_pem())
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    client_key = tmp_path / "id_ed25519"
    client_key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())

    k8s = stack.run(
        "connections", "add", "cluster", "--kind", "kubernetes", "--url", "https://k8s.example.com:6443",
        "--ca-file", str(ca), "--attribute", "env=prod", "--password-stdin", stdin="sa-token-1\n",
    )  # fmt: skip
    ssh = stack.run(
        "connections", "add", "bastion", "--kind", "ssh", "--host", "10.0.0.5", "--username", "ops",
        "--host-key", host_key, "--private-key-file", str(client_key), "--attribute", "env=prod",
    )  # fmt: skip

    assert (k8s[0], ssh[0]) == (0, 0), (k8s[2], ssh[2])
    cluster, bastion = stack.registry.get_connection("cluster"), stack.registry.get_connection("bastion")
    assert cluster.attributes["api_server"] == "https://k8s.example.com:6443"
    assert cluster.attributes["ca_pem"] == ca.read_text()
    assert stack.secret("cluster") == {"token": "sa-token-1"}
    assert (bastion.host, bastion.port, bastion.attributes["username"]) == ("10.0.0.5", 22, "ops")
    assert bastion.attributes["host_key"] == host_key
    assert stack.secret("bastion") == {"private_key": client_key.read_text()}
    assert "PRIVATE KEY" not in k8s[1] + ssh[1] + ssh[2]


# -- rotation ---------------------------------------------------------------------------------------


def rotation_function(stack: Stack) -> str:
    role = stack.client("iam").create_role(RoleName="rotation", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def lambda_handler(event, context):\n    return None\n")
    return stack.client("lambda").create_function(
        FunctionName=names.ROTATION_FUNCTION,
        Runtime="python3.12",
        Role=role,
        Handler="handler.lambda_handler",
        Code={"ZipFile": code.getvalue()},
    )["FunctionArn"]


def test_rotation_days_turn_on_rotation_by_the_stacks_function(stack, postgres, make_role):
    function_arn = rotation_function(stack)

    code, out, err = add_postgres(
        stack, postgres, "orders", make_role(), "--attribute", "env=prod", "--rotation-days", "30"
    )

    assert code == 0, err
    assert f"rotation every 30 days by {function_arn}" in out
    described = stack.client("secretsmanager").describe_secret(
        SecretId=names.connection_secret_name("orders")
    )
    assert described["RotationEnabled"] is True
    assert described["RotationLambdaARN"] == function_arn
    assert described["RotationRules"]["AutomaticallyAfterDays"] == 30


def test_rotation_without_a_rotation_function_registers_nothing(stack, postgres, make_role):
    code, _, err = add_postgres(
        stack, postgres, "orders", make_role(), "--attribute", "env=prod", "--rotation-days", "30"
    )

    assert code == 2
    assert f"no Lambda function {names.ROTATION_FUNCTION}" in err
    assert stack.nothing_registered()


# -- agents and approvers ---------------------------------------------------------------------------


def test_an_agent_is_found_for_any_session_of_its_role(stack):
    # A role with a path: its sessions' ARNs name the role, not the path.
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/agents/analyst-bot"

    code, out, err = stack.run(
        "agents", "add", "analyst", "--role-arn", role_arn, "--team", "data", "--clearance", "pii",
        "--owner", "U0BOB",
    )  # fmt: skip

    assert code == 0, err
    caller = CallerIdentity(
        arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/analyst-bot/botocore-session-1700000000",
        account_id=ACCOUNT,
        access_key="ASIAEXAMPLE",
        user_id="AROAEXAMPLE:botocore-session-1700000000",
    )
    agent = stack.registry.principal(caller.principal_key)
    assert (agent.name, agent.kind, agent.arn) == (
        "analyst",
        "agent",
        f"arn:aws:iam::{ACCOUNT}:role/analyst-bot",
    )
    assert dict(agent.attributes) == {"team": "data", "clearance": "pii", "owner": "U0BOB"}
    assert caller.principal_key in out


@pytest.mark.parametrize(
    ("role_arn", "message"),
    [
        (f"arn:aws:sts::{ACCOUNT}:assumed-role/analyst-bot/session", "assumed-role session ARN"),
        (f"arn:aws:iam::{ACCOUNT}:user/analyst", "is not an IAM role ARN"),
        ("arn:aws:iam::12345:role/analyst", "is not an IAM role ARN"),
    ],
)
def test_an_agent_arn_that_is_not_a_role_is_refused(stack, role_arn, message):
    code, _, err = stack.run("agents", "add", "analyst", "--role-arn", role_arn)

    assert code == 2
    assert message in err
    assert stack.nothing_registered()


def test_agent_names_and_roles_are_not_silently_taken_over(stack):
    first = f"arn:aws:iam::{ACCOUNT}:role/analyst-bot"
    assert stack.run("agents", "add", "analyst", "--role-arn", first)[0] == 0

    same_role, _, err_role = stack.run("agents", "add", "other", "--role-arn", first)
    same_name, _, err_name = stack.run(
        "agents", "add", "analyst", "--role-arn", f"arn:aws:iam::{ACCOUNT}:role/b"
    )
    replaced, _, _ = stack.run("agents", "add", "analyst", "--role-arn", first, "--team", "ops", "--replace")

    assert (same_role, same_name, replaced) == (2, 2, 0)
    assert "is already agent analyst: pass --replace" in err_role
    assert "agent name analyst is taken" in err_name
    assert stack.registry.principal(f"iam:{first}").attributes == {"team": "ops"}


def test_an_approver_gets_only_groups_a_policy_asks_for(stack):
    code, _, err = stack.run("approvers", "add", "U0ALICE", "--name", "Alice", "--group", "dba")
    assert code == 0, err
    approver = stack.registry.principal("slack:U0ALICE")
    assert (approver.name, approver.kind, approver.groups) == ("Alice", "approver", ("dba",))

    typo, _, err = stack.run("approvers", "add", "U0CAROL", "--name", "Carol", "--group", "dbas")
    assert typo == 2
    assert "no policy asks group(s) dbas for approval" in err and "(groups the policies ask for: dba)" in err
    with pytest.raises(UnknownPrincipalError):
        stack.registry.principal("slack:U0CAROL")


# -- list and remove --------------------------------------------------------------------------------


def test_list_then_remove_each_kind_of_registration(stack, postgres, make_role):
    role = make_role()
    assert add_postgres(stack, postgres, "orders", role, "--attribute", "env=prod")[0] == 0
    assert stack.run("agents", "add", "analyst", "--role-arn", f"arn:aws:iam::{ACCOUNT}:role/bot")[0] == 0
    assert stack.run("approvers", "add", "U0ALICE", "--name", "Alice", "--group", "dba")[0] == 0

    _, table, _ = stack.run("connections", "list")
    _, listed, _ = stack.run("connections", "list", "--json")
    _, agents, _ = stack.run("agents", "list", "--json")
    _, approvers, _ = stack.run("approvers", "list")

    assert table.splitlines()[0].split()[:3] == ["name", "|", "kind"]
    assert f"orders | postgres | {postgres.host}:{postgres.port}/{DATABASE}" in table
    assert [c["name"] for c in json.loads(listed)["connections"]] == ["orders"]
    assert role.password not in table + listed
    assert json.loads(agents)["agents"][0]["principal_key"] == f"iam:arn:aws:iam::{ACCOUNT}:role/bot"
    assert "U0ALICE    | Alice | dba" in approvers

    kept = stack.run("connections", "remove", "orders")
    assert kept[0] == 0 and "kept" in kept[1]
    assert stack.secret("orders")["password"] == role.password  # the secret stays
    assert stack.run("agents", "remove", "analyst")[0] == 0
    assert stack.run("approvers", "remove", "U0ALICE")[0] == 0
    assert stack.run("connections", "list")[1].strip() == "no connections"
    assert stack.run("agents", "list")[1].strip() == "no agents"
    assert stack.run("approvers", "list")[1].strip() == "no approvers"
    assert stack.run("connections", "remove", "orders")[0] == 2  # gone already


def test_remove_with_delete_secret_schedules_the_secrets_deletion(stack, postgres, make_role):
    assert add_postgres(stack, postgres, "orders", make_role(), "--attribute", "env=prod")[0] == 0

    code, out, err = stack.run("connections", "remove", "orders", "--delete-secret")

    assert code == 0, err
    assert "scheduled for deletion" in out
    described = stack.client("secretsmanager").describe_secret(
        SecretId=names.connection_secret_name("orders")
    )
    assert described.get("DeletedDate") is not None
    with pytest.raises(UnknownConnectionError):
        stack.registry.get_connection("orders")


def test_a_listing_shows_control_characters_escaped_not_run(stack):
    # Written by something other than these commands, which refuse control characters.
    stack.client("dynamodb").put_item(
        TableName=names.PRINCIPALS_TABLE,
        Item={
            "principal_key": {"S": f"iam:arn:aws:iam::{ACCOUNT}:role/x"},
            "name": {"S": "evil\x1b[2J"},
            "kind": {"S": "agent"},
            "arn": {"S": f"arn:aws:iam::{ACCOUNT}:role/x"},
            "attributes": {"M": {"team": {"S": "a\x1b]0;owned\x07"}}},
        },
    )

    code, out, _ = stack.run("agents", "list")

    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "evil\\x1b[2J" in out


def test_a_secret_scheduled_for_deletion_is_restored_only_with_replace(stack, postgres, make_role):
    role = make_role()
    assert add_postgres(stack, postgres, "orders", role, "--attribute", "env=prod")[0] == 0
    assert stack.run("connections", "remove", "orders", "--delete-secret")[0] == 0

    refused, _, err = add_postgres(stack, postgres, "orders", role, "--attribute", "env=prod")
    restored, _, _ = add_postgres(stack, postgres, "orders", role, "--attribute", "env=prod", "--replace")

    assert (refused, restored) == (2, 0)
    assert "secret gatehouse/connections/orders (scheduled for deletion) already exist" in err
    described = stack.client("secretsmanager").describe_secret(
        SecretId=names.connection_secret_name("orders")
    )
    assert described.get("DeletedDate") is None
    assert stack.registry.get_connection("orders").name == "orders"


def test_with_a_local_stack_here_the_commands_write_to_its_moto(aws_env, monkeypatch, capsys, tmp_path):
    with running_moto() as server:
        aws = AwsClients.for_endpoint(server.endpoint_url, REGION)
        create_tables(aws.dynamodb, local_settings(REGION))
        (tmp_path / ".gatehouse").mkdir()
        (tmp_path / ".gatehouse" / "local.json").write_text(
            json.dumps({"aws": server.endpoint_url, "region": REGION})
        )
        monkeypatch.chdir(tmp_path)

        code = cli.main(["admin", "approvers", "add", "U0DAVE", "--name", "Dave", "--group", "dba"])

        assert code == 0, capsys.readouterr().err
        registry = Registry(aws.dynamodb, names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE)
        assert registry.principal("slack:U0DAVE").groups == ("dba",)
