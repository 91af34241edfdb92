"""Provisioning against moto in server mode and a real Postgres: the resources the CDK app declares."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator

import boto3
import pg8000.native
import pytest
from botocore.exceptions import ClientError

from gatehouse import names
from gatehouse.local.moto_server import MotoServer
from gatehouse.local.provision import AwsClients, ProvisionError, database_role, provision
from gatehouse.local.seed import seed
from gatehouse.local.stack import DEMO_CONFIG_PATH
from gatehouse.registry import Registry
from tests.integration.local_fixtures import ACCOUNT, REGION, running_moto

BUCKET = names.session_log_bucket(ACCOUNT, REGION)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture(scope="module")
def provisioned(moto_server, postgres):
    seed(postgres, ["demo-dev", "demo-prod"])
    return provision(
        AwsClients.for_endpoint(moto_server.endpoint_url, REGION),
        postgres=postgres,
        demo_config_path=DEMO_CONFIG_PATH,
        region=REGION,
    )


@pytest.fixture
def aws(moto_server):
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    return lambda service: session.client(service, endpoint_url=moto_server.endpoint_url)


def connection_secret(aws, name):
    value = aws("secretsmanager").get_secret_value(SecretId=names.connection_secret_name(name))
    return json.loads(value["SecretString"])


def test_the_session_log_bucket_is_locked_in_compliance_mode(provisioned, aws):
    s3 = aws("s3")

    lock = s3.get_object_lock_configuration(Bucket=BUCKET)["ObjectLockConfiguration"]

    assert provisioned.bucket == BUCKET
    assert lock["ObjectLockEnabled"] == "Enabled"
    retention = lock["Rule"]["DefaultRetention"]
    assert (retention["Mode"], retention["Days"]) == ("COMPLIANCE", names.LOCAL_LOG_RETENTION_DAYS)
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"


def test_a_logged_object_cannot_be_deleted(provisioned, aws):
    s3 = aws("s3")
    version = s3.put_object(Bucket=BUCKET, Key="events/probe.jsonl", Body=b"{}\n")["VersionId"]

    with pytest.raises(ClientError) as err:
        s3.delete_object(Bucket=BUCKET, Key="events/probe.jsonl", VersionId=version)

    assert err.value.response["Error"]["Code"] == "AccessDenied"


def test_the_three_tables_have_the_documented_keys(provisioned, aws):
    ddb = aws("dynamodb")
    keys = {
        table: ddb.describe_table(TableName=table)["Table"]["KeySchema"]
        for table in (names.REQUESTS_TABLE, names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE)
    }

    assert keys == {
        names.REQUESTS_TABLE: [{"AttributeName": "request_id", "KeyType": "HASH"}],
        names.CONNECTIONS_TABLE: [{"AttributeName": "name", "KeyType": "HASH"}],
        names.PRINCIPALS_TABLE: [{"AttributeName": "principal_key", "KeyType": "HASH"}],
    }


def test_the_masking_key_is_32_random_bytes_in_base64(provisioned, aws):
    value = aws("secretsmanager").get_secret_value(SecretId=names.MASKING_KEY_SECRET)["SecretString"]

    assert len(base64.b64decode(value, validate=True)) == 32


@pytest.mark.parametrize(("connection", "database"), [("demo-dev", "demo-dev"), ("demo-prod", "demo-prod")])
def test_each_connection_role_logs_in_with_its_secret_and_reads_and_writes(
    provisioned, aws, postgres, connection, database
):
    cred = connection_secret(aws, connection)
    assert set(cred) == {"username", "password"}
    assert cred["username"] == database_role(connection) == provisioned.database_roles[connection]

    db = pg8000.native.Connection(
        cred["username"], password=cred["password"], host=postgres.host, port=postgres.port, database=database
    )
    try:
        assert db.run("SELECT count(*) FROM customers")[0][0] == 50
        db.run("START TRANSACTION")
        db.run("INSERT INTO orders (customer_id, amount, created_at, status) VALUES (1, 9.99, now(), 'paid')")
        db.run("UPDATE customers SET notes = 'touched' WHERE id = 1")
        db.run("ROLLBACK")
    finally:
        db.close()


def test_a_connection_role_cannot_reach_the_other_database(provisioned, aws, postgres):
    cred = connection_secret(aws, "demo-dev")

    with pytest.raises(pg8000.native.DatabaseError) as err:
        pg8000.native.Connection(
            cred["username"],
            password=cred["password"],
            host=postgres.host,
            port=postgres.port,
            database="demo-prod",
        )

    assert err.value.args[0]["C"] == "42501"  # insufficient_privilege: no CONNECT


def test_only_the_dev_role_may_run_ddl(provisioned, aws, postgres):
    def try_ddl(connection: str) -> str | None:
        cred = connection_secret(aws, connection)
        db = pg8000.native.Connection(
            cred["username"],
            password=cred["password"],
            host=postgres.host,
            port=postgres.port,
            database=connection,
        )
        try:
            db.run("START TRANSACTION")
            db.run("ALTER TABLE customers ADD COLUMN probe text")
            return None
        except pg8000.native.DatabaseError as exc:
            return str(exc.args[0]["C"])
        finally:
            db.run("ROLLBACK")
            db.close()

    assert try_ddl("demo-dev") is None
    assert try_ddl("demo-prod") == "42501"


def test_the_registry_holds_the_connections_and_principals(provisioned, aws, postgres):
    registry = Registry(aws("dynamodb"), names.CONNECTIONS_TABLE, names.PRINCIPALS_TABLE)

    conns = {c.name: c for c in registry.list_connections()}
    analyst = registry.principal(f"iam:arn:aws:iam::{ACCOUNT}:user/gatehouse-agent-analyst")
    alice = registry.principal("slack:U_ALICE")

    assert set(conns) == {"demo-dev", "demo-prod"}
    prod = conns["demo-prod"]
    assert (prod.kind, prod.host, prod.port, prod.database) == (
        "postgres",
        postgres.host,
        postgres.port,
        "demo-prod",
    )
    assert prod.secret_id == provisioned.connection_secrets["demo-prod"]
    assert prod.secret_id.startswith(
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:gatehouse/connections/demo-prod"
    )
    assert prod.attributes == {"env": "prod", "data_classification": "pii"}
    assert prod.masking_profile == "pii-strict"
    assert conns["demo-dev"].attributes["env"] == "dev"
    assert (analyst.name, analyst.kind) == ("analyst", "agent")
    assert analyst.attributes == {"team": "data", "clearance": "standard", "owner": "U_BOB"}
    assert analyst.groups == ()
    assert (alice.name, alice.kind, alice.groups, dict(alice.attributes)) == (
        "alice",
        "approver",
        ("dba",),
        {},
    )
    assert registry.principal("slack:U_BOB").groups == ("dba",)


def test_the_registry_items_hold_no_credentials(provisioned, aws):
    items = aws("dynamodb").scan(TableName=names.CONNECTIONS_TABLE)["Items"]
    passwords = [connection_secret(aws, name)["password"] for name in ("demo-dev", "demo-prod")]

    text = json.dumps(items)
    assert not any(p in text for p in passwords)


def test_each_agent_is_an_iam_user_with_a_working_access_key(provisioned, aws):
    agent = provisioned.agents["analyst"]
    user = aws("iam").get_user(UserName="gatehouse-agent-analyst")["User"]
    keys = aws("iam").list_access_keys(UserName="gatehouse-agent-analyst")["AccessKeyMetadata"]

    assert agent.user_arn == user["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/gatehouse-agent-analyst"
    assert [k["AccessKeyId"] for k in keys] == [agent.access_key_id]
    assert re.fullmatch(r"AKIA[A-Z0-9]{16}", agent.access_key_id)
    assert agent.secret_access_key not in repr(agent) and agent.secret_access_key not in repr(provisioned)


def test_a_missing_demo_config_is_a_clear_error(moto_server, postgres, tmp_path):
    with pytest.raises(ProvisionError, match="demo configuration"):
        provision(
            AwsClients.for_endpoint(moto_server.endpoint_url),
            postgres=postgres,
            demo_config_path=tmp_path / "absent.json",
        )
