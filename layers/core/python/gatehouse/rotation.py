"""Secrets Manager rotation of Postgres connection secrets (`gatehouse/connections/<name>`).

Secrets Manager rotates a secret by invoking its rotation function four times, each with the
secret, a ClientRequestToken (the id of the new version, which it has already staged AWSPENDING)
and a Step, and retries a step that failed. Each step here is idempotent, so a retry, or a step
run twice, changes nothing more:

- createSecret: a new random password in the AWSPENDING version (the username is kept);
- setSecret: log in with AWSCURRENT and change the role's own password to AWSPENDING's;
- testSecret: log in with AWSPENDING and run `SELECT 1`;
- finishSecret: move AWSCURRENT to the new version (Secrets Manager stages AWSPREVIOUS itself).

Single-user strategy: the connection's own role changes its own password, so the function needs
no superuser credential. Between setSecret and finishSecret the database accepts only AWSPENDING:
Gatehouse's login paths (gatehouse.targets.postgres, the proxy) then read the secret again and
try AWSPENDING (SecretStore.credential_after_rejection).

The new password reaches the database only as a SCRAM-SHA-256 verifier computed here: the
plaintext never appears in the server's logs (log_statement) or in pg_stat_activity. It is never
logged here either; errors name the secret and the token, never a value.

`schedule_rotation` turns rotation on for one secret (the admin command calls it).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pg8000.exceptions import DatabaseError, InterfaceError
from scramp import ScramMechanism

from gatehouse import aws, names
from gatehouse.exceptions import BadRequestError, GatehouseError, TargetUnavailableError
from gatehouse.models import Connection
from gatehouse.registry import Registry
from gatehouse.secrets import CURRENT, PENDING, DatabaseCredential
from gatehouse.targets.postgres import _login, password_refused

log = logging.getLogger(__name__)

CREATE_SECRET = "createSecret"  # noqa: S105 - a step name
SET_SECRET = "setSecret"  # noqa: S105 - a step name
TEST_SECRET = "testSecret"  # noqa: S105 - a step name
FINISH_SECRET = "finishSecret"  # noqa: S105 - a step name
STEPS = (CREATE_SECRET, SET_SECRET, TEST_SECRET, FINISH_SECRET)

# 32 characters of [A-Za-z0-9] carry about 190 bits, and need no quoting in a connection string,
# a shell, a URL or SQL.
PASSWORD_LENGTH = 32
# Secrets Manager's bounds for RotationRules.AutomaticallyAfterDays.
MIN_ROTATION_DAYS = 1
MAX_ROTATION_DAYS = 1000
# Connect and every read: a step must end well inside the function's timeout (infra/rotation.py).
LOGIN_TIMEOUT_S = 10.0
APPLICATION_NAME = "gatehouse-rotation"
# What PostgreSQL stores in pg_authid.rolpassword for SCRAM (RFC 5803's form): base64 and
# separators only, so the verifier is a safe SQL literal once it matches this.
_SCRAM_VERIFIER = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")


class RotationError(GatehouseError):
    """The secret cannot be rotated by this function, or a step could not be completed."""

    code = "rotation_failed"
    status = 400


@dataclass(frozen=True)
class RotationSettings:
    """The rotation function's configuration, read once from its environment."""

    connections_table: str = names.CONNECTIONS_TABLE
    login_timeout_s: float = LOGIN_TIMEOUT_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RotationSettings:
        return cls(connections_table=env.get(names.ENV_CONNECTIONS_TABLE) or names.CONNECTIONS_TABLE)


@dataclass(frozen=True)
class RotationRequest:
    """Secrets Manager's event: {"SecretId", "ClientRequestToken", "Step"} (and a RotationToken)."""

    secret_id: str
    token: str
    step: str

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> RotationRequest:
        values = [event.get(key) for key in ("SecretId", "ClientRequestToken", "Step")]
        if not all(isinstance(value, str) and value for value in values):
            raise BadRequestError("a rotation event needs SecretId, ClientRequestToken and Step")
        secret_id, token, step = (str(value) for value in values)
        if step not in STEPS:
            raise BadRequestError(f"unknown rotation step {step!r}: expected one of {', '.join(STEPS)}")
        return cls(secret_id=secret_id, token=token, step=step)


@dataclass(frozen=True)
class _Subject:
    """The secret being rotated, checked against the registry."""

    arn: str
    connection: Connection
    stages: dict[str, list[str]]  # version id -> staging labels

    def version_staged(self, stage: str) -> str | None:
        return next((version for version, labels in self.stages.items() if stage in labels), None)


class Rotation:
    """The four steps for one secret at a time. Clients injected; nothing is read at construction."""

    def __init__(
        self, secretsmanager: Any, registry: Registry, *, login_timeout_s: float = LOGIN_TIMEOUT_S
    ) -> None:
        self._sm = secretsmanager
        self._registry = registry
        self._timeout_s = login_timeout_s

    def run(self, request: RotationRequest) -> None:
        subject = self._subject(request.secret_id, request.token)
        if CURRENT in subject.stages[request.token]:
            # Already finished (Secrets Manager retried the last step, or ran a step late).
            log.info("rotation %s: version %s is already AWSCURRENT", request.step, request.token)
            return
        steps = {
            CREATE_SECRET: self.create_secret,
            SET_SECRET: self.set_secret,
            TEST_SECRET: self.test_secret,
            FINISH_SECRET: self.finish_secret,
        }
        log.info("rotation %s of %s, version %s", request.step, subject.arn, request.token)
        steps[request.step](subject, request.token)

    # -- the steps ------------------------------------------------------------------------------

    def create_secret(self, subject: _Subject, token: str) -> None:
        current = self._value(subject, stage=CURRENT)
        _credential(current, subject)  # a secret without a username and a password is refused
        if self._pending_value_exists(subject, token):
            return  # a retry: the version already holds its password, and a version never changes
        password = self._call(
            "GetRandomPassword",
            subject,
            self._sm.get_random_password,
            PasswordLength=PASSWORD_LENGTH,
            ExcludePunctuation=True,
            IncludeSpace=False,
            RequireEachIncludedType=True,
        )["RandomPassword"]
        # Every other key of the secret is kept as it is: only the password rotates.
        value = {**current, "password": password}
        self._call(
            "PutSecretValue",
            subject,
            self._sm.put_secret_value,
            SecretId=subject.arn,
            ClientRequestToken=token,
            SecretString=json.dumps(value),
            VersionStages=[PENDING],
        )

    def set_secret(self, subject: _Subject, token: str) -> None:
        current = _credential(self._value(subject, stage=CURRENT), subject)
        pending = _credential(self._value(subject, version=token), subject)
        if pending.username != current.username:
            raise RotationError(
                f"rotation of {subject.arn}: the new version names another role than AWSCURRENT "
                "(single-user rotation changes one role's password)"
            )
        try:
            con = self._login(subject, current)
        except TargetUnavailableError as exc:
            if not password_refused(exc):
                raise
            # A retry after the password was changed: the new one already logs in.
            try:
                self._login(subject, pending).close()
            except TargetUnavailableError as again:
                raise RotationError(
                    f"rotation of {subject.arn}: {subject.connection.name} accepts neither the "
                    "AWSCURRENT nor the AWSPENDING password"
                ) from again
            log.info("rotation setSecret: %s already accepts the new password", subject.connection.name)
            return
        try:
            # READ WRITE: a role kept read-only (default_transaction_read_only) still changes its
            # own password; the verifier is base64 and separators only, a safe literal.
            con.run("START TRANSACTION READ WRITE")
            con.run(f"ALTER ROLE CURRENT_USER PASSWORD '{scram_verifier(pending.password)}'")
            con.run("COMMIT")
        except (DatabaseError, InterfaceError, OSError) as exc:
            raise RotationError(
                f"rotation of {subject.arn}: {subject.connection.name} refused the password change "
                f"({type(exc).__name__})"
            ) from exc
        finally:
            con.close()

    def test_secret(self, subject: _Subject, token: str) -> None:
        pending = _credential(self._value(subject, version=token), subject)
        try:
            con = self._login(subject, pending)
        except TargetUnavailableError as exc:
            raise RotationError(
                f"rotation of {subject.arn}: the new password does not log in to "
                f"{subject.connection.name} ({exc.message})"
            ) from exc
        try:
            if con.run("SELECT 1") != [[1]]:
                raise RotationError(f"rotation of {subject.arn}: SELECT 1 did not answer 1")
        finally:
            con.close()

    def finish_secret(self, subject: _Subject, token: str) -> None:
        current_version = subject.version_staged(CURRENT)
        if current_version == token:
            return
        self._call(
            "UpdateSecretVersionStage",
            subject,
            self._sm.update_secret_version_stage,
            SecretId=subject.arn,
            VersionStage=CURRENT,
            MoveToVersionId=token,
            RemoveFromVersionId=current_version,
        )
        log.info("rotation finishSecret: version %s of %s is now AWSCURRENT", token, subject.arn)

    # -- helpers --------------------------------------------------------------------------------

    def _subject(self, secret_id: str, token: str) -> _Subject:
        """Refuse, before anything is changed, a secret this function must not rotate."""
        described = self._call_id("DescribeSecret", secret_id, self._sm.describe_secret, SecretId=secret_id)
        arn, name = str(described["ARN"]), str(described["Name"])
        if not name.startswith(names.CONNECTION_SECRET_PREFIX):
            raise RotationError(
                f"secret {name} is not a connection secret (under {names.CONNECTION_SECRET_PREFIX})"
            )
        connection_name = name[len(names.CONNECTION_SECRET_PREFIX) :]
        try:
            connection = self._registry.get_connection(connection_name)
        except GatehouseError as exc:
            raise RotationError(
                f"secret {name}: no connection {connection_name!r} in the registry ({exc.code})"
            ) from exc
        if connection.secret_id not in (arn, name):
            raise RotationError(
                f"secret {name}: connection {connection_name!r} uses another secret ({connection.secret_id})"
            )
        if connection.kind != "postgres":
            raise RotationError(
                f"secret {name}: connection {connection_name!r} is of kind {connection.kind}, not postgres"
            )
        if not described.get("RotationEnabled"):
            raise RotationError(f"secret {name} does not have rotation enabled")
        stages = {str(k): list(v) for k, v in (described.get("VersionIdsToStages") or {}).items()}
        if token not in stages:
            raise RotationError(f"secret {name} has no version {token} to rotate to")
        if CURRENT not in stages[token] and PENDING not in stages[token]:
            raise RotationError(f"version {token} of secret {name} is not staged AWSPENDING")
        return _Subject(arn=arn, connection=connection, stages=stages)

    def _value(
        self, subject: _Subject, *, stage: str | None = None, version: str | None = None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"SecretId": subject.arn}
        if version is not None:
            kwargs.update(VersionId=version, VersionStage=PENDING)
        else:
            kwargs["VersionStage"] = stage
        resp = self._call("GetSecretValue", subject, self._sm.get_secret_value, **kwargs)
        try:
            value = json.loads(resp["SecretString"])
        except (KeyError, ValueError) as exc:
            raise RotationError(f"secret {subject.arn}: {kwargs['VersionStage']} is not JSON text") from exc
        if not isinstance(value, dict):
            raise RotationError(f"secret {subject.arn}: {kwargs['VersionStage']} is not a JSON object")
        return value

    def _pending_value_exists(self, subject: _Subject, token: str) -> bool:
        try:
            resp = self._sm.get_secret_value(SecretId=subject.arn, VersionId=token, VersionStage=PENDING)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return False  # staged, but no value yet: what Secrets Manager hands createSecret
            raise RotationError(f"rotation of {subject.arn}: GetSecretValue failed ({_code(exc)})") from exc
        except BotoCoreError as exc:
            raise RotationError(f"rotation of {subject.arn}: GetSecretValue failed") from exc
        return "SecretString" in resp or "SecretBinary" in resp

    def _login(self, subject: _Subject, cred: DatabaseCredential) -> Any:
        return _login(subject.connection, cred, timeout_s=self._timeout_s, application_name=APPLICATION_NAME)

    def _call(self, action: str, subject: _Subject, fn: Any, **kwargs: Any) -> Any:
        return self._call_id(action, subject.arn, fn, **kwargs)

    @staticmethod
    def _call_id(action: str, secret_id: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ClientError as exc:
            raise RotationError(f"rotation of {secret_id}: {action} failed ({_code(exc)})") from exc
        except BotoCoreError as exc:
            raise RotationError(f"rotation of {secret_id}: {action} failed") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "error")


def _credential(value: Mapping[str, Any], subject: _Subject) -> DatabaseCredential:
    if not value.get("username") or not value.get("password"):
        raise RotationError(f"secret {subject.arn} has no username/password")
    return DatabaseCredential(username=str(value["username"]), password=str(value["password"]))


def scram_verifier(password: str) -> str:
    """What PostgreSQL stores for `password` under SCRAM-SHA-256, computed here (as libpq's
    PQencryptPasswordConn does): random salt, 4096 iterations (PostgreSQL's scram_iterations)."""
    salt, stored_key, server_key, iterations = ScramMechanism("SCRAM-SHA-256").make_auth_info(password)
    verifier = f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"
    if not _SCRAM_VERIFIER.fullmatch(verifier):
        raise RotationError("the SCRAM verifier is malformed")  # never reached: base64 only
    return verifier


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def schedule_rotation(secretsmanager: Any, secret_id: str, function_arn: str, days: int) -> str:
    """Turn on rotation of a connection secret every `days` days by `function_arn`, and rotate it now.

    Rotating at once proves, while the operator watches, that the function reaches the database
    (its security group admitted on the database's port) and that the role may change its own
    password. Returns the id of the version the first rotation creates.
    """
    if not MIN_ROTATION_DAYS <= days <= MAX_ROTATION_DAYS:
        raise BadRequestError(
            f"rotation days must be between {MIN_ROTATION_DAYS} and {MAX_ROTATION_DAYS}, not {days}"
        )
    try:
        resp = secretsmanager.rotate_secret(
            SecretId=secret_id,
            RotationLambdaARN=function_arn,
            RotationRules={"AutomaticallyAfterDays": days},
            RotateImmediately=True,
        )
    except ClientError as exc:
        raise RotationError(f"rotation of {secret_id} could not be scheduled ({_code(exc)})") from exc
    except BotoCoreError as exc:
        raise RotationError(f"rotation of {secret_id} could not be scheduled") from exc
    return str(resp.get("VersionId") or "")


def build_rotation(settings: RotationSettings, session: Any = None) -> Rotation:
    """The rotation with clients from `session` (a boto3 Session; tests point it at moto)."""
    session = session or aws.session()
    registry = Registry(
        session.client("dynamodb"),
        settings.connections_table,
        # The function reads connections only; the principals table is never touched.
        names.PRINCIPALS_TABLE,
    )
    return Rotation(session.client("secretsmanager"), registry, login_timeout_s=settings.login_timeout_s)
