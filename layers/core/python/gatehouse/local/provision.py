"""Create, in moto and the throwaway Postgres, the resources the CDK app declares.

Names come from `gatehouse.names` (as in `infra/`), so the laptop stack cannot drift from the
deployed one. Database passwords are generated here and handed to Secrets Manager only: they
are not returned, printed, or written to `.gatehouse/local.json`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib
import importlib.metadata
import io
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import zipfile
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
from gatehouse.proxy_tokens import new_key_text
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
    # The approval workflow's (create_approval_workflow); None: provision no workflow.
    lambda_: Any = None
    stepfunctions: Any = None

    @classmethod
    def from_session(cls, session: boto3.session.Session, endpoint_url: str | None = None) -> AwsClients:
        def client(service: str) -> Any:
            return session.client(service, endpoint_url=endpoint_url)

        return cls(
            s3=client("s3"),
            dynamodb=client("dynamodb"),
            secretsmanager=client("secretsmanager"),
            iam=client("iam"),
            lambda_=client("lambda"),
            stepfunctions=client("stepfunctions"),
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
    asl_cache_dir: Path | None = None,
) -> ProvisionResult:
    """Create the bucket, tables, secrets, database roles, registry items, agent users and the
    approval workflow (its functions and state machine, when `aws` has those clients)."""
    settings = settings or local_settings(region, account_id)
    config = DemoConfig.load(demo_config_path)
    try:
        create_log_bucket(aws.s3, settings.log_bucket, region, settings.log_retention_days)
        create_tables(aws.dynamodb, settings)
        if aws.lambda_ is not None and aws.stepfunctions is not None:
            arn = create_approval_workflow(
                aws.iam, aws.lambda_, aws.stepfunctions, region=region, cache_dir=asl_cache_dir
            )
            settings = dataclasses.replace(settings, state_machine_arn=arn)
        create_masking_key(aws.secretsmanager, settings.masking_key_secret)
        create_proxy_token_key(aws.secretsmanager, settings.proxy_token_key_secret)
        secrets_by_connection: dict[str, str] = {}
        roles: dict[str, str] = {}
        for name, spec in config.connections.items():
            if spec.get("kind") != "postgres":
                # Other kinds (http, kubernetes, ssh) are registered by the local stack once their
                # servers run (gatehouse.local.demo_targets): their address and credential come from them.
                log.debug("connection %s: kind %s is registered with its server", name, spec.get("kind"))
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
    create_slack_replay_table(dynamodb, names.SLACK_REPLAY_TABLE)


def create_slack_replay_table(dynamodb: Any, table: str) -> None:
    """Slack interaction signatures already seen (gatehouse.slack.replay), as infra declares."""
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "signature", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "signature", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        SSESpecification={"Enabled": True, "SSEType": "KMS"},
    )
    dynamodb.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )


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


def create_proxy_token_key(secretsmanager: Any, secret_name: str) -> str:
    resp = secretsmanager.create_secret(
        Name=secret_name,
        Description="Gatehouse: HMAC key that signs the Postgres proxy's passwords (base64 text).",
        SecretString=new_key_text(),
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
        "recording": str(spec.get("recording") or "sync_writes"),
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
            "attributes": {k: attributes[k] for k in ("team", "clearance", "owner") if k in attributes},
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


# -- the approval workflow: its functions and the state machine infra/approvals.py defines --------

# This file is layers/core/python/gatehouse/local/provision.py: the repository is five levels up.
_REPO_ROOT = Path(__file__).resolve().parents[5]
# What the ASL is synthesized from: a change to either file makes a new cache entry.
_ASL_SOURCES = (_REPO_ROOT / "infra" / "approvals.py", Path(__file__).resolve().parents[1] / "workflow.py")
# The approvals function (every step but Notify), the notify function (Notify: the same code, which
# a deployed stack runs outside the VPC), and the Slack function (its own async invocations).
WORKFLOW_FUNCTIONS = (names.APPROVALS_FUNCTION, names.APPROVALS_NOTIFY_FUNCTION, names.SLACK_FUNCTION)
_LAMBDA_ROLE = f"{names.PREFIX}-local-functions"
_STATES_ROLE = f"{names.PREFIX}-local-states"
# moto stores the code and never runs it: the LambdaDispatcher (gatehouse.local.moto_server)
# runs functions/<name>/handler.py in its place.
_PLACEHOLDER_SOURCE = (
    b"def lambda_handler(event, context):\n    raise RuntimeError('run by the local dispatcher')\n"
)


def create_approval_workflow(
    iam: Any, lambda_client: Any, sfn: Any, *, region: str, cache_dir: Path | None = None
) -> str:
    """The approvals, notify and Slack functions (names only: the dispatcher runs them) and the
    state machine over them, from the very ASL the CDK app deploys. Returns the state machine's ARN."""
    lambda_role = _service_role(iam, _LAMBDA_ROLE, "lambda.amazonaws.com")
    arns = {
        name: str(
            lambda_client.create_function(
                FunctionName=name,
                Runtime="python3.12",
                Role=lambda_role,
                Handler="handler.lambda_handler",
                Code={"ZipFile": _placeholder_zip()},
                Timeout=60,
            )["FunctionArn"]
        )
        for name in WORKFLOW_FUNCTIONS
    }
    account_id = arns[names.APPROVALS_FUNCTION].split(":")[4]
    definition = approvals_asl(arns, account_id=account_id, region=region, cache_dir=cache_dir)
    resp = sfn.create_state_machine(
        name=names.STATE_MACHINE_NAME,
        definition=json.dumps(definition),
        roleArn=_service_role(iam, _STATES_ROLE, "states.amazonaws.com"),
        type="STANDARD",
    )
    return str(resp["stateMachineArn"])


def approvals_asl(
    function_arns: Mapping[str, str], *, account_id: str, region: str, cache_dir: Path | None = None
) -> dict[str, Any]:
    """`infra.approvals.approvals_definition`, cached under `cache_dir` (the stack's .gatehouse/).

    Synthesizing starts jsii's Node kernel and CDK: about 4.5 s, most of a `local up`. The cache
    key covers the sources the ASL comes from, the CDK version and the ARNs, so a stale entry
    cannot be read.
    """
    key = _asl_cache_key(function_arns, account_id, region)
    path = cache_dir / f"approvals-asl-{key[:20]}.json" if cache_dir is not None else None
    if path is not None:
        try:
            cached: dict[str, Any] = json.loads(path.read_text())
            return cached
        except (OSError, ValueError):
            pass
    definition = _synthesize_asl(function_arns, account_id, region)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(definition, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return definition


def _synthesize_asl(function_arns: Mapping[str, str], account_id: str, region: str) -> dict[str, Any]:
    """Synthesize in a child process: jsii's Node kernel and its reader threads stay there, not in
    the local stack's process (which must stop with nothing left running)."""
    if not (_REPO_ROOT / "infra" / "approvals.py").is_file():
        raise ProvisionError(
            f"the approval state machine is defined in infra/approvals.py, not found under {_REPO_ROOT}: "
            "run the local stack from the repository, with the infra extra (aws-cdk-lib) installed"
        )
    program = (
        "import json, sys\n"
        "from infra.approvals import approvals_definition\n"
        "a = json.load(sys.stdin)\n"
        "json.dump(approvals_definition(a['arns'], account=a['account'], region=a['region']), sys.stdout)\n"
    )
    # jsii prints an end-of-life banner for Node 20 unless told not to (as the Makefile does).
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-c", program],
            input=json.dumps({"arns": dict(function_arns), "account": account_id, "region": region}),
            capture_output=True,
            text=True,
            cwd=_REPO_ROOT,
            env=env,
            timeout=180,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisionError(f"synthesizing the approval state machine failed: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ProvisionError(f"synthesizing the approval state machine failed:\n{tail}")
    definition: dict[str, Any] = json.loads(done.stdout)
    return definition


def default_asl_cache_dir() -> Path:
    """Shared by every local stack of this user: the ASL depends on sources, not on a stack."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gatehouse"


def _asl_cache_key(function_arns: Mapping[str, str], account_id: str, region: str) -> str:
    digest = hashlib.sha256()
    for source in _ASL_SOURCES:
        try:
            digest.update(source.read_bytes())
        except OSError:
            digest.update(b"missing:" + str(source).encode())
    try:
        digest.update(importlib.metadata.version("aws-cdk-lib").encode())
    except importlib.metadata.PackageNotFoundError:
        digest.update(b"no-cdk")
    digest.update(json.dumps([dict(function_arns), account_id, region], sort_keys=True).encode())
    return digest.hexdigest()


def _service_role(iam: Any, name: str, service: str) -> str:
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }
    return str(iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"])


def _placeholder_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("handler.py", _PLACEHOLDER_SOURCE)
    return buf.getvalue()
