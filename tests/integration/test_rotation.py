"""Rotation of a Postgres connection secret (gatehouse.rotation) against a real Postgres and
in-process moto (Secrets Manager, DynamoDB, Lambda): the four steps as Secrets Manager runs them,
their retries, their refusals, and Gatehouse's own logins across a rotation.

moto's RotateSecret does not behave like Secrets Manager's (docs: FACTS.md), so `begin_rotation`
puts the secret in the state Secrets Manager hands the function, and the tests call the steps in
order as Secrets Manager would. One test lets moto invoke the real handler for the whole rotation.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pg8000.native
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.secretsmanager.models import secretsmanager_backends
from pg8000.exceptions import DatabaseError

from gatehouse import names
from gatehouse.exceptions import BadRequestError, TargetUnavailableError
from gatehouse.local.moto_server import LambdaDispatcher
from gatehouse.local.postgres import PostgresInfo
from gatehouse.local.stack import LambdaFunction
from gatehouse.models import Connection, Statement, StatementClass
from gatehouse.registry import Registry
from gatehouse.rotation import (
    CREATE_SECRET,
    FINISH_SECRET,
    SET_SECRET,
    STEPS,
    TEST_SECRET,
    Rotation,
    RotationError,
    RotationRequest,
    schedule_rotation,
)
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres import PostgresExecutor

ROTATION_HANDLER = Path(__file__).resolve().parents[2] / "functions" / "rotation" / "handler.py"
INVALID_PASSWORD = "28P01"
ROTATION_DAYS = 30


def begin_rotation(sm: Any, secret_id: str, function_arn: str) -> str:
    """What Secrets Manager does as a rotation starts: rotation on, a new version staged AWSPENDING
    with no value yet (createSecret fills it), and its id handed to the function as the token.

    moto's RotateSecret (RotateImmediately=False) copies AWSCURRENT's value into the new version,
    where Secrets Manager leaves it empty; the copy is removed from moto's state here.
    """
    token = str(uuid.uuid4())
    sm.rotate_secret(
        SecretId=secret_id,
        ClientRequestToken=token,
        RotationLambdaARN=function_arn,
        RotationRules={"AutomaticallyAfterDays": ROTATION_DAYS},
        RotateImmediately=False,
    )
    described = sm.describe_secret(SecretId=secret_id)
    _, _, _, region, account, *_ = described["ARN"].split(":")
    version = secretsmanager_backends[account][region].secrets[described["Name"]].versions[token]
    version.pop("secret_string", None)
    return token


@dataclass
class Aws:
    sm: Any
    ddb: Any
    function_arn: str

    def rotation(self) -> Rotation:
        registry = Registry(self.ddb, names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE)
        return Rotation(self.sm, registry, login_timeout_s=5.0)

    def stages(self, secret_id: str) -> dict[str, list[str]]:
        return self.sm.describe_secret(SecretId=secret_id)["VersionIdsToStages"]

    def value(self, secret_id: str, **kwargs: Any) -> dict[str, Any]:
        return json.loads(self.sm.get_secret_value(SecretId=secret_id, **kwargs)["SecretString"])


@pytest.fixture
def aws(aws_env: None) -> Iterator[Aws]:
    with mock_aws(config={"lambda": {"use_docker": False}}):
        ddb = boto3.client("dynamodb")
        ddb.create_table(
            TableName=names.CONNECTIONS_TABLE,
            KeySchema=[{"AttributeName": "name", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "name", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        role = boto3.client("iam").create_role(RoleName="rotation", AssumeRolePolicyDocument="{}")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("handler.py", ROTATION_HANDLER.read_text())
        function = boto3.client("lambda").create_function(
            FunctionName=names.ROTATION_FUNCTION,
            Runtime="python3.12",
            Role=role["Role"]["Arn"],
            Handler="handler.lambda_handler",
            Code={"ZipFile": archive.getvalue()},
        )
        yield Aws(boto3.client("secretsmanager"), ddb, function["FunctionArn"])


@dataclass
class Subject:
    """A connection whose secret is rotated: its role, its secret, its registry item."""

    name: str
    role: str
    password: str  # the password before the rotation
    secret_arn: str
    connection: Connection
    postgres: PostgresInfo

    def logs_in(self, password: str) -> bool:
        try:
            con = pg8000.native.Connection(
                self.role,
                password=password,
                host=self.postgres.host,
                port=self.postgres.port,
                database="postgres",
            )
        except DatabaseError as exc:
            assert exc.args[0]["C"] == INVALID_PASSWORD, exc
            return False
        con.close()
        return True


def register(
    aws: Aws, name: str, secret_id: str, postgres: PostgresInfo, kind: str = "postgres"
) -> Connection:
    item = {
        "name": {"S": name},
        "kind": {"S": kind},
        "host": {"S": postgres.host},
        "port": {"N": str(postgres.port)},
        "database": {"S": "postgres"},
        "secret_id": {"S": secret_id},
    }
    aws.ddb.put_item(TableName=names.CONNECTIONS_TABLE, Item=item)
    return Connection(
        name=name,
        kind=kind,
        host=postgres.host,
        port=postgres.port,
        database="postgres",
        secret_id=secret_id,
    )


@pytest.fixture
def role(postgres: PostgresInfo) -> Iterator[tuple[str, str]]:
    """A login role whose every statement the server logs (log_statement = all)."""
    name, password = f"rot_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    admin = postgres.connect()
    admin.run(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    admin.run(f"ALTER ROLE {name} SET log_statement = 'all'")
    # As Gatehouse's roles often are: every transaction read-only unless it says otherwise.
    admin.run(f"ALTER ROLE {name} SET default_transaction_read_only = on")
    admin.close()
    try:
        yield name, password
    finally:
        admin = postgres.connect()
        admin.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r", r=name)
        admin.run(f"DROP ROLE IF EXISTS {name}")
        admin.close()


@pytest.fixture
def subject(aws: Aws, postgres: PostgresInfo, role: tuple[str, str]) -> Subject:
    name = f"orders-{secrets.token_hex(3)}"
    arn = aws.sm.create_secret(
        Name=names.connection_secret_name(name),
        SecretString=json.dumps({"username": role[0], "password": role[1]}),
    )["ARN"]
    connection = register(aws, name, arn, postgres)
    return Subject(name, role[0], role[1], arn, connection, postgres)


def step(aws: Aws, secret_id: str, token: str, name: str) -> None:
    aws.rotation().run(
        RotationRequest.from_event({"SecretId": secret_id, "ClientRequestToken": token, "Step": name})
    )


def rotate(aws: Aws, subject: Subject, token: str, *, times: int = 1) -> None:
    for name in STEPS:
        for _ in range(times):
            step(aws, subject.secret_arn, token, name)


def test_the_four_steps_give_the_role_a_new_password_and_make_it_current(aws, subject) -> None:
    old_version = next(v for v, s in aws.stages(subject.secret_arn).items() if "AWSCURRENT" in s)
    token = begin_rotation(aws.sm, subject.secret_arn, aws.function_arn)

    rotate(aws, subject, token)

    current = aws.value(subject.secret_arn, VersionStage="AWSCURRENT")
    assert current["username"] == subject.role
    assert re.fullmatch(r"[A-Za-z0-9]{32}", current["password"])
    assert subject.logs_in(current["password"])
    assert not subject.logs_in(subject.password)
    stages = aws.stages(subject.secret_arn)
    assert "AWSCURRENT" in stages[token]
    assert stages[old_version] == ["AWSPREVIOUS"]
    assert aws.value(subject.secret_arn, VersionStage="AWSPREVIOUS")["password"] == subject.password


def test_the_new_password_reaches_the_server_only_as_a_scram_verifier(aws, subject, postgres) -> None:
    token = begin_rotation(aws.sm, subject.secret_arn, aws.function_arn)
    step(aws, subject.secret_arn, token, CREATE_SECRET)
    new_password = aws.value(subject.secret_arn, VersionId=token, VersionStage="AWSPENDING")["password"]
    # Given an uncommitted change to the role's row, the rotation's ALTER ROLE waits on it, still
    # visible in pg_stat_activity while we look.
    holder = postgres.connect()
    holder.run("BEGIN")
    holder.run(f"ALTER ROLE {subject.role} CONNECTION LIMIT 50")
    failures: list[BaseException] = []

    def set_secret() -> None:
        try:
            step(aws, subject.secret_arn, token, SET_SECRET)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    setter = threading.Thread(target=set_secret)
    setter.start()
    watcher = postgres.connect()
    try:
        seen = ""
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            rows = watcher.run(
                "SELECT query FROM pg_stat_activity WHERE usename = :r AND state = 'active' "
                "AND query LIKE 'ALTER ROLE%'",
                r=subject.role,
            )
            seen = rows[0][0] if rows else ""
            time.sleep(0.02)
    finally:
        holder.run("ROLLBACK")
        holder.close()
        setter.join(10)
    assert not failures, failures
    # Then the statement the server saw carried a verifier, never the password.
    assert seen.startswith("ALTER ROLE CURRENT_USER PASSWORD 'SCRAM-SHA-256$4096:"), seen
    assert new_password not in seen
    stored = watcher.run("SELECT rolpassword FROM pg_authid WHERE rolname = :r", r=subject.role)[0][0]
    log_path = Path(watcher.run("SHOW data_directory")[0][0]).parent / "server.log"
    watcher.close()
    assert stored.startswith("SCRAM-SHA-256$4096:")
    assert subject.logs_in(new_password)
    log_text = log_path.read_text(errors="replace")
    # log_statement = all for the role: the ALTER ROLE is in the log, as its verifier.
    assert "ALTER ROLE CURRENT_USER PASSWORD 'SCRAM-SHA-256$" in log_text
    assert new_password not in log_text


def test_each_step_run_twice_changes_nothing_more(aws, subject) -> None:
    token = begin_rotation(aws.sm, subject.secret_arn, aws.function_arn)
    step(aws, subject.secret_arn, token, CREATE_SECRET)
    first = aws.value(subject.secret_arn, VersionId=token, VersionStage="AWSPENDING")["password"]

    rotate(aws, subject, token, times=2)
    # Secrets Manager may also retry a step after the rotation finished.
    step(aws, subject.secret_arn, token, SET_SECRET)

    stages = aws.stages(subject.secret_arn)
    assert len(stages) == 2
    assert "AWSCURRENT" in stages[token]
    assert aws.value(subject.secret_arn, VersionStage="AWSCURRENT")["password"] == first
    assert subject.logs_in(first)
    assert not subject.logs_in(subject.password)


def test_a_failing_test_step_leaves_the_old_password_current(aws, subject) -> None:
    token = begin_rotation(aws.sm, subject.secret_arn, aws.function_arn)
    step(aws, subject.secret_arn, token, CREATE_SECRET)
    # The pending password never reached the database (setSecret did not run): it cannot log in.

    with pytest.raises(RotationError, match="the new password does not log in"):
        step(aws, subject.secret_arn, token, TEST_SECRET)

    assert aws.value(subject.secret_arn, VersionStage="AWSCURRENT")["password"] == subject.password
    assert "AWSCURRENT" not in aws.stages(subject.secret_arn)[token]
    assert subject.logs_in(subject.password)


def test_set_secret_gives_up_when_neither_password_logs_in(aws, subject, postgres) -> None:
    token = begin_rotation(aws.sm, subject.secret_arn, aws.function_arn)
    step(aws, subject.secret_arn, token, CREATE_SECRET)
    admin = postgres.connect()
    admin.run(f"ALTER ROLE {subject.role} PASSWORD '{secrets.token_urlsafe(18)}'")
    admin.close()

    with pytest.raises(RotationError, match="neither the AWSCURRENT nor the AWSPENDING"):
        step(aws, subject.secret_arn, token, SET_SECRET)
    assert aws.value(subject.secret_arn, VersionStage="AWSCURRENT")["password"] == subject.password


def secret_elsewhere(aws: Aws, postgres: PostgresInfo, role: tuple[str, str], case: str) -> str:
    value = json.dumps({"username": role[0], "password": role[1]})
    if case == "outside the prefix":
        arn = aws.sm.create_secret(Name=f"team/db-{secrets.token_hex(3)}", SecretString=value)["ARN"]
        register(aws, "db", arn, postgres)
        return arn
    name = f"orders-{secrets.token_hex(3)}"
    arn = aws.sm.create_secret(Name=names.connection_secret_name(name), SecretString=value)["ARN"]
    if case == "registry names another secret":
        register(aws, name, names.connection_secret_name("elsewhere"), postgres)
    elif case == "not a postgres connection":
        register(aws, name, arn, postgres, kind="http")
    return arn


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("outside the prefix", "is not a connection secret"),
        ("not in the registry", "no connection"),
        ("registry names another secret", "uses another secret"),
        ("not a postgres connection", "not postgres"),
    ],
)
def test_a_secret_gatehouse_does_not_own_is_refused_and_left_unchanged(
    aws, postgres, role, case, message
) -> None:
    arn = secret_elsewhere(aws, postgres, role, case)
    token = begin_rotation(aws.sm, arn, aws.function_arn)
    before = aws.stages(arn)

    for name in STEPS:
        with pytest.raises(RotationError, match=message):
            step(aws, arn, token, name)

    assert aws.stages(arn) == before
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        aws.sm.get_secret_value(SecretId=arn, VersionId=token, VersionStage="AWSPENDING")
    assert aws.value(arn, VersionStage="AWSCURRENT")["password"] == role[1]


def test_a_secret_without_rotation_or_a_token_not_pending_is_refused(aws, subject) -> None:
    with pytest.raises(RotationError, match="does not have rotation enabled"):
        step(aws, subject.secret_arn, str(uuid.uuid4()), CREATE_SECRET)

    begin_rotation(aws.sm, subject.secret_arn, aws.function_arn)
    with pytest.raises(RotationError, match="has no version"):
        step(aws, subject.secret_arn, str(uuid.uuid4()), CREATE_SECRET)
    with pytest.raises(BadRequestError, match="unknown rotation step"):
        RotationRequest.from_event(
            {"SecretId": subject.secret_arn, "ClientRequestToken": "t", "Step": "dropRole"}
        )


def test_gatehouse_requests_keep_working_through_a_rotation_without_waiting_for_the_cache(
    aws, subject, postgres
) -> None:
    # Given Gatehouse's executor with a credential cached for a minute, as in a warm Lambda.
    executor = PostgresExecutor(SecretStore(aws.sm, cache_seconds=60))
    whoami = [Statement("SELECT current_user", StatementClass.READ, command="select")]

    def request() -> str:
        return executor.run(subject.connection, whoami, timeout_ms=2000, max_rows=10).rows[0][0]

    assert request() == subject.role
    token = begin_rotation(aws.sm, subject.secret_arn, aws.function_arn)
    step(aws, subject.secret_arn, token, CREATE_SECRET)
    step(aws, subject.secret_arn, token, SET_SECRET)
    # Between setSecret and finishSecret only AWSPENDING logs in; AWSCURRENT has not moved.
    assert not subject.logs_in(subject.password)
    assert request() == subject.role
    step(aws, subject.secret_arn, token, TEST_SECRET)
    step(aws, subject.secret_arn, token, FINISH_SECRET)
    assert request() == subject.role
    # A password that is simply wrong still fails closed: no retry loop, the same error.
    admin = postgres.connect()
    admin.run(f"ALTER ROLE {subject.role} PASSWORD '{secrets.token_urlsafe(18)}'")
    admin.close()
    with pytest.raises(TargetUnavailableError, match=INVALID_PASSWORD):
        request()


def test_schedule_rotation_has_secrets_manager_run_the_handler_through_every_step(aws, subject) -> None:
    # moto invokes the function as Secrets Manager does; the dispatcher runs our handler file.
    handler = LambdaFunction(ROTATION_HANDLER)
    dispatcher = LambdaDispatcher({names.ROTATION_FUNCTION: handler})
    dispatcher.install()
    try:
        token = schedule_rotation(aws.sm, subject.secret_arn, aws.function_arn, ROTATION_DAYS)
    finally:
        dispatcher.uninstall()
        handler.close()

    described = aws.sm.describe_secret(SecretId=subject.secret_arn)
    assert described["RotationEnabled"] is True
    assert described["RotationRules"]["AutomaticallyAfterDays"] == ROTATION_DAYS
    assert "AWSCURRENT" in described["VersionIdsToStages"][token]
    current = aws.value(subject.secret_arn, VersionStage="AWSCURRENT")
    assert current["password"] != subject.password
    assert subject.logs_in(current["password"])
    assert not subject.logs_in(subject.password)


@pytest.mark.parametrize("days", [0, 1001])
def test_schedule_rotation_refuses_a_period_secrets_manager_would_refuse(aws, subject, days) -> None:
    with pytest.raises(BadRequestError, match="between 1 and 1000"):
        schedule_rotation(aws.sm, subject.secret_arn, aws.function_arn, days)
    assert not aws.sm.describe_secret(SecretId=subject.secret_arn).get("RotationEnabled")
