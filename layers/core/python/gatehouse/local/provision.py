"""Create, in moto and the throwaway Postgres, the resources the CDK app declares.

Names come from `gatehouse.names` (as in `infra/`), so the laptop stack cannot drift from the
deployed one. Database passwords are generated here and handed to Secrets Manager only: they
are not returned, printed, or written to `.gatehouse/local.json`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from gatehouse import names
from gatehouse.config import Settings
from gatehouse.exceptions import GatehouseError
from gatehouse.local.moto_server import DEFAULT_ACCOUNT_ID
from gatehouse.local.postgres import PostgresInfo
from gatehouse.local.seed import grant_table_access, quote_ident
from gatehouse.registry import connection_from_item
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres_privileges import PrivilegeReport, Severity, check_connection, ddl_expected

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
# moto accepts any credentials; these fixed ones make it clear nothing real is involved.
LOCAL_AWS_KEY = "testing"
AGENT_USER_PREFIX = f"{names.PREFIX}-agent-"
MASKING_KEY_BYTES = 32

_serializer = TypeSerializer()


class ProvisionError(RuntimeError):
    """A local resource could not be created."""


@dataclass(frozen=True)
class AwsClients:
    """The boto3 clients provisioning needs, injectable for tests."""

    s3: Any
    dynamodb: Any
    secretsmanager: Any
    iam: Any

    @classmethod
    def from_session(cls, session: boto3.session.Session, endpoint_url: str | None = None) -> AwsClients:
        def client(service: str) -> Any:
            return session.client(service, endpoint_url=endpoint_url)

        return cls(
            s3=client("s3"),
            dynamodb=client("dynamodb"),
            secretsmanager=client("secretsmanager"),
            iam=client("iam"),
        )

    @classmethod
    def for_endpoint(cls, endpoint_url: str, region: str = DEFAULT_REGION) -> AwsClients:
        session = boto3.session.Session(
            aws_access_key_id=LOCAL_AWS_KEY, aws_secret_access_key=LOCAL_AWS_KEY, region_name=region
        )
        return cls.from_session(session, endpoint_url)


@dataclass(frozen=True)
class DemoConfig:
    """`config/demo.json`: connections, agents (with attributes), approvers (with groups)."""

    connections: Mapping[str, Mapping[str, Any]]
    agents: Mapping[str, Mapping[str, Any]]
    approvers: Mapping[str, Mapping[str, Any]]

    @classmethod
    def load(cls, path: Path) -> DemoConfig:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"cannot read the demo configuration {path}: {exc}") from exc
        return cls(
            connections=dict(raw.get("connections") or {}),
            agents=dict(raw.get("agents") or {}),
            approvers=dict(raw.get("approvers") or {}),
        )


@dataclass(frozen=True)
class AgentCredentials:
    """A local agent's IAM user and access key (moto's: valid nowhere but this stack)."""

    name: str
    user_arn: str
    user_id: str
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True)
class ProvisionResult:
    region: str
    account_id: str
    settings: Settings
    agents: Mapping[str, AgentCredentials]
    connection_secrets: Mapping[str, str]  # connection name -> secret ARN
    database_roles: Mapping[str, str]  # connection name -> Postgres role

    @property
    def bucket(self) -> str:
        return self.settings.log_bucket


def database_role(connection: str) -> str:
    """The Postgres role Gatehouse uses for a connection, e.g. `gatehouse_demo_dev`."""
    return f"{names.PREFIX}_" + re.sub(r"[^a-z0-9_]", "_", connection.lower())


def local_settings(region: str = DEFAULT_REGION, account_id: str = DEFAULT_ACCOUNT_ID) -> Settings:
    return Settings(
        log_bucket=names.session_log_bucket(account_id, region),
        log_retention_days=names.LOCAL_LOG_RETENTION_DAYS,
    )


def provision(
    aws: AwsClients,
    *,
    postgres: PostgresInfo,
    demo_config_path: Path,
    region: str = DEFAULT_REGION,
    account_id: str = DEFAULT_ACCOUNT_ID,
    settings: Settings | None = None,
) -> ProvisionResult:
    """Create the bucket, tables, secrets, database roles, registry items and agent users."""
    settings = settings or local_settings(region, account_id)
    config = DemoConfig.load(demo_config_path)
    try:
        create_log_bucket(aws.s3, settings.log_bucket, region, settings.log_retention_days)
        create_tables(aws.dynamodb, settings)
        create_masking_key(aws.secretsmanager, settings.masking_key_secret)
        secrets_by_connection: dict[str, str] = {}
        roles: dict[str, str] = {}
        for name, spec in config.connections.items():
            if spec.get("kind") != "postgres":
                # Other kinds (http, kubernetes, ssh) have no local target yet.
                log.warning("connection %s: kind %s is not provisioned locally", name, spec.get("kind"))
                continue
            role, secret_arn = create_postgres_connection(aws.secretsmanager, postgres, name, spec)
            item = connection_item(name, spec, postgres, secret_arn)
            put_item(aws.dynamodb, settings.connections_table, item)
            # Refuse a stack whose agent-facing role could do more than its connection should.
            check_least_privilege(aws.secretsmanager, item)
            secrets_by_connection[name], roles[name] = secret_arn, role
        agents = {
            name: create_agent(aws.iam, aws.dynamodb, settings.principals_table, name, attributes)
            for name, attributes in config.agents.items()
        }
        for user_id, approver in config.approvers.items():
            put_item(aws.dynamodb, settings.principals_table, approver_item(user_id, approver))
    except (ClientError, BotoCoreError) as exc:
        raise ProvisionError(f"provisioning the local AWS resources failed: {exc}") from exc
    return ProvisionResult(
        region=region,
        account_id=account_id,
        settings=settings,
        agents=agents,
        connection_secrets=secrets_by_connection,
        database_roles=roles,
    )


def create_log_bucket(s3: Any, bucket: str, region: str, retention_days: int) -> None:
    """The session log: Object Lock in COMPLIANCE mode, so nobody can erase a record early."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "ObjectLockEnabledForBucket": True}
    if region != "us-east-1":  # us-east-1 refuses an explicit LocationConstraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    s3.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": retention_days}},
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def create_tables(dynamodb: Any, settings: Settings) -> None:
    for table, key in (
        (settings.requests_table, "request_id"),
        (settings.connections_table, "name"),
        (settings.principals_table, "principal_key"),
    ):
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            SSESpecification={"Enabled": True, "SSEType": "KMS"},
        )
    # As in infra/tables.py: pending requests expire (moto records the setting, never expires).
    dynamodb.update_time_to_live(
        TableName=settings.requests_table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
    )
    create_idempotency_table(dynamodb, names.IDEMPOTENCY_TABLE)


def create_idempotency_table(dynamodb: Any, table: str) -> None:
    """powertools' idempotency records (POST /v1/requests with an Idempotency-Key), as infra declares."""
    key = names.IDEMPOTENCY_KEY_ATTRIBUTE
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        SSESpecification={"Enabled": True, "SSEType": "KMS"},
    )
    dynamodb.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": names.IDEMPOTENCY_TTL_ATTRIBUTE},
    )


def create_masking_key(secretsmanager: Any, secret_name: str) -> str:
    key = base64.b64encode(secrets.token_bytes(MASKING_KEY_BYTES)).decode("ascii")
    resp = secretsmanager.create_secret(
        Name=secret_name,
        Description="Gatehouse: HMAC key for keyed-hash masking (base64 text).",
        SecretString=key,
    )
    return str(resp["ARN"])


def create_postgres_connection(
    secretsmanager: Any, postgres: PostgresInfo, name: str, spec: Mapping[str, Any]
) -> tuple[str, str]:
    """A login role for the connection, its grants, and its secret. Returns (role, secret ARN)."""
    database = str(spec.get("database") or name)
    role = database_role(name)
    password = secrets.token_urlsafe(24)
    create_login_role(postgres, role, password)
    # Where approved DDL runs (env=dev), the role owns its tables so it can; elsewhere DML only.
    owner = ddl_expected(spec.get("attributes") or {})
    grant_table_access(postgres, database, role, owner=owner)
    resp = secretsmanager.create_secret(
        Name=names.connection_secret_name(name),
        Description=f"Gatehouse: Postgres credential for connection {name}.",
        SecretString=json.dumps({"username": role, "password": password}),
    )
    return role, str(resp["ARN"])


def check_least_privilege(secretsmanager: Any, item: Mapping[str, Any]) -> PrivilegeReport:
    """Log in as the connection's role (credential from Secrets Manager) and refuse any high finding."""
    connection = connection_from_item(dict(item))
    try:
        report = check_connection(connection, SecretStore(secretsmanager, cache_seconds=0))
    except GatehouseError as exc:
        raise ProvisionError(
            f"connection {connection.name}: the privilege check failed: {exc.message}"
        ) from exc
    for finding in report.findings:
        log.info(
            "connection %s: %s %s: %s", connection.name, finding.severity, finding.subject, finding.message
        )
    if not report.passed:
        raise ProvisionError(
            f"connection {connection.name}: role {report.role} can do more than an agent's role should "
            "(see `gatehouse connections check`):\n"
            + "\n".join(
                f"  [{f.severity}] {f.subject}: {f.message}\n    fix: {'; '.join(f.fix)}"
                for f in report.at_least(Severity.HIGH)
            )
        )
    return report


def create_login_role(postgres: PostgresInfo, role: str, password: str) -> None:
    """Create the role, or reset its password when an earlier run left it behind."""
    literal = "'" + password.replace("'", "''") + "'"
    admin = postgres.connect()
    try:
        exists = admin.run("SELECT 1 FROM pg_roles WHERE rolname = :role", role=role)
        verb = "ALTER" if exists else "CREATE"
        admin.run(
            f"{verb} ROLE {quote_ident(role)} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
            f"PASSWORD {literal}"
        )
    finally:
        admin.close()


def connection_item(
    name: str, spec: Mapping[str, Any], postgres: PostgresInfo, secret_arn: str
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": spec["kind"],
        "host": postgres.host,
        "port": postgres.port,
        "database": str(spec.get("database") or name),
        "secret_id": secret_arn,
        "attributes": dict(spec.get("attributes") or {}),
        "masking_profile": str(spec.get("masking_profile") or "default"),
    }


def create_agent(
    iam: Any, dynamodb: Any, principals_table: str, name: str, attributes: Mapping[str, Any]
) -> AgentCredentials:
    user = iam.create_user(UserName=f"{AGENT_USER_PREFIX}{name}")["User"]
    key = iam.create_access_key(UserName=user["UserName"])["AccessKey"]
    put_item(
        dynamodb,
        principals_table,
        {
            "principal_key": f"iam:{user['Arn']}",
            "name": name,
            "kind": "agent",
            "arn": user["Arn"],
            "attributes": {k: attributes[k] for k in ("team", "clearance") if k in attributes},
            "groups": [],
        },
    )
    return AgentCredentials(
        name=name,
        user_arn=user["Arn"],
        user_id=user["UserId"],
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
    )


def approver_item(user_id: str, approver: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "principal_key": f"slack:{user_id}",
        "name": str(approver.get("name") or user_id),
        "kind": "approver",
        "attributes": {},
        "groups": list(approver.get("groups") or []),
    }


def put_item(dynamodb: Any, table: str, item: Mapping[str, Any]) -> None:
    dynamodb.put_item(TableName=table, Item={k: _serializer.serialize(v) for k, v in item.items()})
