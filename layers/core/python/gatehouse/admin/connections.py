"""Register a connection: its secret, its registry item, and (Postgres) its role's least privilege.

The order is what keeps a refusal clean. The secret is written first, because the privilege check
logs in exactly as Gatehouse will: with the credential read back from Secrets Manager. The
registry item is written only once the check passed, so no agent can use a connection whose role
could do more than its policies allow. Every write is paired with its undo (a new secret is
deleted without a recovery window, a replaced one gets its previous version back as AWSCURRENT, a
replaced item is put back), and a failure at any step runs the undos in reverse: a refused
registration leaves the stack as it found it.

Rotation (`rotation_days`, gatehouse.rotation.schedule_rotation) is turned on last, after the item
exists: the rotation function looks the secret's connection up in the registry, and its first
rotation runs at once, so an unreachable database or a role that may not change its password is
found while the operator watches (and undoes the registration like any other failure).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse import names
from gatehouse.admin.exceptions import (
    AlreadyRegisteredError,
    LeastPrivilegeError,
    NotRegisteredError,
    RegistrationError,
    RegistryWriteError,
)
from gatehouse.admin.policies import PolicyFacts
from gatehouse.ddb import from_item, to_item
from gatehouse.exceptions import GatehouseError
from gatehouse.masking.profiles import PROFILE_NAMES
from gatehouse.models import PUBLIC_ATTRIBUTES, Connection
from gatehouse.registry import Registry, connection_from_item
from gatehouse.rotation import MAX_ROTATION_DAYS, MIN_ROTATION_DAYS, schedule_rotation
from gatehouse.secrets import SecretStore
from gatehouse.targets.postgres_privileges import PrivilegeReport, Severity, check_connection
from gatehouse.targets.postgres_tls import TLS_MODES, PostgresTls
from gatehouse.terminal import safe_text

KINDS = ("postgres", "http", "kubernetes", "ssh")
RECORDING_MODES = ("sync", "sync_writes", "async")
DEFAULT_PORTS = {"postgres": 5432, "ssh": 22}

# A connection's name is part of its secret's name (Secrets Manager allows /_+=.@-) and the
# database name agents give the Postgres proxy: letters, digits and . _ - keep it one token.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ATTRIBUTE_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_LAMBDA_ARN = re.compile(
    r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9_$-]+)?$"
)

# What each kind's executor reads from `Connection.attributes`, beyond the public ones policies
# see (models.PUBLIC_ATTRIBUTES). A key outside these is refused: a typo (`mask_path`) would
# otherwise be stored, ignored, and leave the field it meant to hide unmasked.
KIND_ATTRIBUTES: Mapping[str, frozenset[str]] = {
    # TLS mode and verify-full's CA bundle (gatehouse.targets.postgres_tls), on both login paths.
    "postgres": frozenset({"tls", "ca_pem"}),
    # gatehouse.targets.http.parse_target
    "http": frozenset(
        {
            "base_url",
            "local",
            "allow_private",
            "auth",
            "api_key_header",
            "aws_service",
            "aws_region",
            "ca_pem",
            "path_classes",
            "mask_paths",
        }
    ),
    # gatehouse.targets.kubernetes: the API server, its pinned CA, extra resource types.
    "kubernetes": frozenset({"api_server", "ca_pem", "resources"}),
    # gatehouse.targets.ssh: the login name and the pinned host key(s).
    "ssh": frozenset({"username", "host_key"}),
}
# Set by their own options (a file, a URL): `--attribute` may not set them as well.
_OPTION_ATTRIBUTES = {
    "base_url": "--url",
    "api_server": "--url",
    "ca_pem": "--ca-file",
    "host_key": "--host-key",
    "username": "--username",
}
POSTGRES_TLS_MODES = TLS_MODES


@dataclass(frozen=True)
class ConnectionOptions:
    """What the operator asked for, before validation (the CLI's options, files already read)."""

    name: str
    kind: str
    host: str | None = None
    port: int | None = None
    database: str | None = None
    username: str | None = None
    # The one secret value read from stdin or the environment: the Postgres or SSH password, the
    # HTTP token (password, API key, secret access key), the Kubernetes token, or, with a
    # private key, the key's passphrase.
    secret: str | None = field(default=None, repr=False)
    url: str | None = None
    ca_pem: str | None = None
    host_key: str | None = None
    private_key: str | None = field(default=None, repr=False)
    access_key_id: str | None = None
    attributes: Sequence[str] = ()  # "key=value" texts
    masking_profile: str = "default"
    recording: str = "sync_writes"
    rotation_days: int | None = None


@dataclass(frozen=True)
class ConnectionPlan:
    """A validated connection: the registry item (but its secret id) and the secret's value."""

    name: str
    kind: str
    host: str
    port: int
    database: str
    attributes: Mapping[str, Any]
    masking_profile: str
    recording: str
    credential: Mapping[str, str] = field(repr=False)
    rotation_days: int | None = None

    @property
    def secret_name(self) -> str:
        return names.connection_secret_name(self.name)

    def item(self, secret_id: str) -> dict[str, Any]:
        """The registry item (gatehouse.local.provision.connection_item's shape)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "secret_id": secret_id,
            "attributes": dict(self.attributes),
            "masking_profile": self.masking_profile,
            "recording": self.recording,
        }

    def connection(self, secret_id: str) -> Connection:
        return connection_from_item(self.item(secret_id))


@dataclass(frozen=True)
class Registered:
    """What `register` did."""

    connection: Connection
    secret_arn: str
    secret_replaced: bool
    item_replaced: bool
    report: PrivilegeReport | None = None  # Postgres only
    rotation_function: str | None = None


def validate_name(name: str, what: str = "connection") -> str:
    if not _NAME.match(name):
        raise RegistrationError(
            f"{what} name {safe_text(name)!r} must be 1 to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_attributes(texts: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; a value that parses as JSON (a list, true, 3) is kept as that JSON."""
    out: dict[str, Any] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        if not sep or not _ATTRIBUTE_KEY.match(key):
            raise RegistrationError(
                f"--attribute {safe_text(text)!r} must be key=value, the key in lower case (env=prod)"
            )
        if key in out:
            raise RegistrationError(f"--attribute {key} is given twice")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value
    return out


def plan_connection(options: ConnectionOptions, facts: PolicyFacts) -> ConnectionPlan:
    """Validate everything that can be validated without a network: raises RegistrationError."""
    name = validate_name(options.name)
    kind = options.kind
    if kind not in KINDS:
        raise RegistrationError(f"--kind must be one of {', '.join(KINDS)}")
    if options.masking_profile not in PROFILE_NAMES:
        raise RegistrationError(f"--masking-profile must be one of {', '.join(PROFILE_NAMES)}")
    if options.recording not in RECORDING_MODES:
        raise RegistrationError(f"--recording must be one of {', '.join(RECORDING_MODES)}")
    if options.rotation_days is not None:
        if kind != "postgres":
            raise RegistrationError("--rotation-days: only Postgres credentials are rotated")
        if not MIN_ROTATION_DAYS <= options.rotation_days <= MAX_ROTATION_DAYS:
            raise RegistrationError(
                f"--rotation-days must be between {MIN_ROTATION_DAYS} and {MAX_ROTATION_DAYS}"
            )
    attributes = parse_attributes(options.attributes)
    for key, option in _OPTION_ATTRIBUTES.items():
        if key in attributes:
            raise RegistrationError(f"attribute {key} is set by {option}, not --attribute")
    _check_attribute_keys(kind, attributes)
    _check_public_attributes(kind, attributes, facts)
    build = {"postgres": _postgres, "http": _http, "kubernetes": _kubernetes, "ssh": _ssh}[kind]
    host, port, database, credential = build(options, attributes)
    plan = ConnectionPlan(
        name=name,
        kind=kind,
        host=host,
        port=port,
        database=database,
        attributes=attributes,
        masking_profile=options.masking_profile,
        recording=options.recording,
        credential=credential,
        rotation_days=options.rotation_days,
    )
    _check_with_executor(plan)
    return plan


def _check_attribute_keys(kind: str, attributes: Mapping[str, Any]) -> None:
    known = PUBLIC_ATTRIBUTES | KIND_ATTRIBUTES[kind]
    unknown = sorted(set(attributes) - known)
    if unknown:
        raise RegistrationError(
            f"attribute {', '.join(unknown)} means nothing to a {kind} connection "
            f"(known: {', '.join(sorted(known - set(_OPTION_ATTRIBUTES)))})"
        )


def _check_public_attributes(kind: str, attributes: Mapping[str, Any], facts: PolicyFacts) -> None:
    for key in sorted(PUBLIC_ATTRIBUTES & set(attributes)):
        value = attributes[key]
        # The Cedar schema declares them String; anything else fails every request at evaluation.
        if not isinstance(value, str) or not value or safe_text(value) != value:
            raise RegistrationError(f"attribute {key} must be a non-empty line of text")
    env = attributes.get("env")
    known = ", ".join(sorted(facts.env_values))
    if env is not None and facts.env_values and env not in facts.env_values:
        raise RegistrationError(
            f"env={safe_text(env)!r} is named by no policy, so every request on it would be denied "
            f"(the policies know: {known})"
        )
    if env is None and kind == "postgres" and facts.env_values:
        raise RegistrationError(
            f"a postgres connection needs --attribute env=... (the policies know: {known}): "
            "without it no SQL policy applies and every statement is denied"
        )


def _refuse_options(options: ConnectionOptions, kind: str, *fields: str) -> None:
    for name in fields:
        if getattr(options, name) is not None:
            raise RegistrationError(f"--{name.replace('_', '-')} does not apply to a {kind} connection")


def _need(value: str | None, option: str, kind: str) -> str:
    if not value:
        raise RegistrationError(f"a {kind} connection needs {option}")
    return value


def _port(value: int | None, kind: str) -> int:
    port = DEFAULT_PORTS.get(kind, 0) if value is None else value
    if not 1 <= port <= 65535:
        raise RegistrationError("--port must be between 1 and 65535")
    return port


Built = tuple[str, int, str, dict[str, str]]


def _postgres(options: ConnectionOptions, attributes: dict[str, Any]) -> Built:
    _refuse_options(options, "postgres", "url", "host_key", "private_key", "access_key_id")
    host = _need(options.host, "--host", "postgres")
    username = _need(options.username, "--username", "postgres")
    password = _need(options.secret, "a password (--password-stdin or --password-env VAR)", "postgres")
    if "tls" in attributes and attributes["tls"] not in POSTGRES_TLS_MODES:
        raise RegistrationError(f"attribute tls must be one of {', '.join(POSTGRES_TLS_MODES)}")
    if options.ca_pem is not None:
        # Only verify-full reads the bundle: accepting it with another mode would look pinned
        # while nothing is checked.
        if attributes.get("tls") != "verify-full":
            raise RegistrationError("--ca-file applies to postgres with --attribute tls=verify-full only")
        try:
            PostgresTls("verify-full", options.ca_pem).context()
        except ValueError as exc:
            raise RegistrationError(f"--ca-file: {exc}") from None
        attributes["ca_pem"] = options.ca_pem
    database = options.database or options.name
    return host, _port(options.port, "postgres"), database, {"username": username, "password": password}


def _url_address(url: str, option: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RegistrationError(f"{option} has a bad port") from None
    if not parts.hostname:
        raise RegistrationError(f"{option} must be scheme://host[:port][/prefix]")
    return parts.hostname, port


def _http(options: ConnectionOptions, attributes: dict[str, Any]) -> Built:
    _refuse_options(options, "http", "host", "port", "database", "host_key", "private_key")
    url = _need(options.url, "--url (the service's base URL)", "http")
    attributes["base_url"] = url
    if options.ca_pem is not None:
        attributes["ca_pem"] = options.ca_pem
    host, port = _url_address(url, "--url")
    auth = attributes.get("auth", "bearer")
    secret = _need(options.secret, "its credential (--password-stdin or --password-env VAR)", "http")
    if auth != "basic" and options.username is not None:
        raise RegistrationError("--username applies to auth=basic only")
    if auth != "sigv4" and options.access_key_id is not None:
        raise RegistrationError("--access-key-id applies to auth=sigv4 only")
    credential: dict[str, str]
    if auth == "basic":
        credential = {
            "username": _need(options.username, "--username for auth=basic", "http"),
            "password": secret,
        }
    elif auth == "api_key":
        credential = {"api_key": secret}
    elif auth == "sigv4":
        key_id = _need(options.access_key_id, "--access-key-id for auth=sigv4", "http")
        credential = {"access_key_id": key_id, "secret_access_key": secret}
    else:
        credential = {"token": secret}
    return host, port, "", credential


def _kubernetes(options: ConnectionOptions, attributes: dict[str, Any]) -> Built:
    _refuse_options(
        options,
        "kubernetes",
        "host",
        "port",
        "database",
        "username",
        "host_key",
        "private_key",
        "access_key_id",
    )
    url = _need(options.url, "--url (the API server, https://...)", "kubernetes")
    attributes["api_server"] = url
    attributes["ca_pem"] = _need(options.ca_pem, "--ca-file (the API server's CA, PEM)", "kubernetes")
    host, port = _url_address(url, "--url")
    token = _need(
        options.secret, "a service-account token (--password-stdin or --password-env VAR)", "kubernetes"
    )
    return host, port, "", {"token": token}


def _ssh(options: ConnectionOptions, attributes: dict[str, Any]) -> Built:
    _refuse_options(options, "ssh", "url", "ca_pem", "database", "access_key_id")
    host = _need(options.host, "--host", "ssh")
    attributes["username"] = _need(options.username, "--username", "ssh")
    attributes["host_key"] = _need(
        options.host_key, "--host-key or --host-key-file (the pinned host key)", "ssh"
    )
    if options.private_key is not None:
        credential = {"private_key": options.private_key}
        if options.secret:
            credential["passphrase"] = options.secret
    else:
        password = _need(
            options.secret,
            "--private-key-file, or a password (--password-stdin or --password-env VAR)",
            "ssh",
        )
        credential = {"password": password}
    return host, _port(options.port, "ssh"), "", credential


def _check_with_executor(plan: ConnectionPlan) -> None:
    """Read the settings as the kind's executor will at run time, so they cannot disagree later."""
    connection = plan.connection(secret_id=plan.secret_name)
    # Each kind's module is imported only for a connection of that kind (SSH brings asyncssh).
    try:
        if plan.kind == "http":
            from gatehouse.targets import http

            http.check_settings(connection, plan.credential)
        elif plan.kind == "kubernetes":
            from gatehouse.targets import kubernetes

            kubernetes.check_settings(connection, plan.credential)
        elif plan.kind == "ssh":
            from gatehouse.targets import ssh

            ssh.check_settings(connection, plan.credential)
    except GatehouseError as exc:
        raise RegistrationError(exc.message) from exc


# -- the writes ------------------------------------------------------------------------------------

Undo = Callable[[], Any]
CheckFunction = Callable[[Connection, SecretStore], PrivilegeReport]


def _aws(what: str, exc: ClientError | BotoCoreError) -> RegistryWriteError:
    # The AWS error code and message name resources, never a secret's value.
    detail = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
    return RegistryWriteError(f"{what} failed: {detail or type(exc).__name__}: {safe_text(exc)}")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class ConnectionRegistrar:
    """Writes and removes connections in one stack's registry table and Secrets Manager."""

    def __init__(
        self,
        *,
        dynamodb: Any,
        secretsmanager: Any,
        connections_table: str,
        principals_table: str = names.PRINCIPALS_TABLE,
        lambda_client: Any = None,
        check: CheckFunction | None = None,
    ) -> None:
        self._ddb = dynamodb
        self._sm = secretsmanager
        self._table = connections_table
        self._principals = principals_table
        self._lambda = lambda_client
        self._check = check or check_connection

    # -- add ---------------------------------------------------------------------------------------

    def register(
        self, plan: ConnectionPlan, *, replace: bool = False, rotation_function: str | None = None
    ) -> Registered:
        """Write the secret, check the role (Postgres), write the item, turn on rotation.

        Raises AlreadyRegisteredError (something exists and not `replace`), LeastPrivilegeError
        (a high finding), the check's own GatehouseError (the database is unreachable, the login is
        refused), RegistryWriteError (AWS refused a call). In every case nothing stays written.
        """
        previous_item = self._get_item(plan.name)
        previous_secret = self._describe_secret(plan.secret_name)
        if not replace:
            found = [f"connection {plan.name}"] if previous_item is not None else []
            if previous_secret is not None:
                deleted = previous_secret.get("DeletedDate") is not None
                found.append(f"secret {plan.secret_name}" + (" (scheduled for deletion)" if deleted else ""))
            if found:
                raise AlreadyRegisteredError(
                    f"{' and '.join(found)} already exist(s): pass --replace to overwrite"
                )
        function_arn = None
        if plan.rotation_days is not None:
            function_arn = self.rotation_function_arn(rotation_function)
        undo: list[Undo] = []
        try:
            arn = self._write_secret(plan, previous_secret, undo)
            connection = plan.connection(arn)
            report = self._check_privileges(connection) if plan.kind == "postgres" else None
            self._put_item(plan.item(arn), previous_item, undo)
            if function_arn is not None and plan.rotation_days is not None:
                # Raises RotationError (nothing is left registered) when it cannot be scheduled.
                schedule_rotation(self._sm, arn, function_arn, plan.rotation_days)
        # BaseException: an operator's Ctrl-C half-way through is undone like any other failure.
        except BaseException as exc:
            failures = _undo_all(undo)
            if failures:
                raise RegistryWriteError(
                    f"{_message(exc)}; undoing the registration failed too, check by hand: "
                    + "; ".join(failures)
                ) from exc
            raise
        return Registered(
            connection=connection,
            secret_arn=arn,
            secret_replaced=previous_secret is not None,
            item_replaced=previous_item is not None,
            report=report,
            rotation_function=function_arn,
        )

    def rotation_function_arn(self, given: str | None) -> str:
        """`given`, or the stack's rotation function in this account and region; it must exist."""
        if given is not None and not _LAMBDA_ARN.match(given):
            raise RegistrationError(
                f"--rotation-function {safe_text(given)!r} is not a Lambda function ARN "
                "(arn:aws:lambda:REGION:ACCOUNT:function:NAME)"
            )
        if self._lambda is None:
            raise RegistrationError("rotation needs a Lambda client to find the rotation function")
        wanted = given or names.ROTATION_FUNCTION
        try:
            found = self._lambda.get_function(FunctionName=wanted)
        except ClientError as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                raise RegistrationError(
                    f"no Lambda function {wanted} in this account and region: deploy the stack's "
                    "rotation function, or name one with --rotation-function ARN"
                ) from exc
            raise _aws(f"looking up the rotation function {wanted}", exc) from exc
        except BotoCoreError as exc:
            raise _aws(f"looking up the rotation function {wanted}", exc) from exc
        return str(found["Configuration"]["FunctionArn"])

    def _get_item(self, name: str) -> dict[str, Any] | None:
        try:
            resp = self._ddb.get_item(TableName=self._table, Key={"name": {"S": name}}, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise _aws(f"reading the registry table {self._table}", exc) from exc
        item = resp.get("Item")
        return from_item(item) if item else None

    def _describe_secret(self, secret_name: str) -> dict[str, Any] | None:
        try:
            return dict(self._sm.describe_secret(SecretId=secret_name))
        except ClientError as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                return None
            raise _aws(f"reading the secret {secret_name}", exc) from exc
        except BotoCoreError as exc:
            raise _aws(f"reading the secret {secret_name}", exc) from exc

    def _write_secret(
        self, plan: ConnectionPlan, previous: Mapping[str, Any] | None, undo: list[Undo]
    ) -> str:
        name, value = plan.secret_name, json.dumps(dict(plan.credential))
        sm = self._sm
        try:
            if previous is None:
                arn = str(
                    sm.create_secret(
                        Name=name,
                        Description=f"Gatehouse: {plan.kind} credential for connection {plan.name}.",
                        SecretString=value,
                    )["ARN"]
                )
                # No recovery window: a secret scheduled for deletion keeps its name taken for up
                # to 30 days, and the operator's corrected second attempt would collide with it.
                undo.append(lambda: sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True))
                return arn
            if previous.get("DeletedDate") is not None:
                # Scheduled for deletion (a `remove --delete-secret`): restored to be overwritten.
                sm.restore_secret(SecretId=name)
                undo.append(lambda: sm.delete_secret(SecretId=name))
            stages = previous.get("VersionIdsToStages") or {}
            current = next((v for v, s in stages.items() if "AWSCURRENT" in s), None)
            resp = sm.put_secret_value(SecretId=name, SecretString=value)
            new = str(resp["VersionId"])
            if current is not None:
                undo.append(
                    lambda: sm.update_secret_version_stage(
                        SecretId=name,
                        VersionStage="AWSCURRENT",
                        MoveToVersionId=current,
                        RemoveFromVersionId=new,
                    )
                )
            return str(resp["ARN"])
        except (ClientError, BotoCoreError) as exc:
            raise _aws(f"writing the secret {name}", exc) from exc

    def _check_privileges(self, connection: Connection) -> PrivilegeReport:
        # cache_seconds=0: the secret was written a moment ago; read exactly what is stored.
        report = self._check(connection, SecretStore(self._sm, cache_seconds=0))
        if not report.passed:
            high = len(report.at_least(Severity.HIGH))
            raise LeastPrivilegeError(
                f"connection {connection.name}: role {report.role} can do more than an agent's role should "
                f"({high} high finding(s)); nothing was registered: run the fix SQL as an administrator "
                "and register again",
                report,
            )
        return report

    def _put_item(self, item: dict[str, Any], previous: dict[str, Any] | None, undo: list[Undo]) -> None:
        kwargs: dict[str, Any] = {"TableName": self._table, "Item": to_item(item)}
        if previous is None:
            # Another operator registering the same name at the same moment must not be overwritten.
            kwargs["ConditionExpression"] = "attribute_not_exists(#n)"
            kwargs["ExpressionAttributeNames"] = {"#n": "name"}
        try:
            self._ddb.put_item(**kwargs)
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise AlreadyRegisteredError(f"connection {item['name']} was registered meanwhile") from exc
            raise _aws(f"writing the registry table {self._table}", exc) from exc
        except BotoCoreError as exc:
            raise _aws(f"writing the registry table {self._table}", exc) from exc
        key = {"name": {"S": item["name"]}}
        if previous is None:
            undo.append(lambda: self._ddb.delete_item(TableName=self._table, Key=key))
        else:
            undo.append(lambda: self._ddb.put_item(TableName=self._table, Item=to_item(previous)))

    # -- list and remove -----------------------------------------------------------------------------

    def list(self) -> list[Connection]:
        return Registry(self._ddb, self._table, self._principals).list_connections()

    def remove(self, name: str, *, delete_secret: bool = False) -> tuple[Connection, str | None]:
        """Remove the item; with `delete_secret`, schedule the secret's deletion (default recovery
        window, so a mistaken removal can be restored). Returns the connection and, when deleted,
        the date Secrets Manager will erase the secret."""
        item = self._get_item(name)
        if item is None:
            raise NotRegisteredError(f"no connection named {safe_text(name)!r}")
        connection = connection_from_item(item)
        try:
            self._ddb.delete_item(TableName=self._table, Key={"name": {"S": name}})
        except (ClientError, BotoCoreError) as exc:
            raise _aws(f"deleting from the registry table {self._table}", exc) from exc
        if not delete_secret:
            return connection, None
        try:
            resp = self._sm.delete_secret(SecretId=connection.secret_id)
        except (ClientError, BotoCoreError) as exc:
            raise _aws(f"connection {name} was removed, but deleting its secret", exc) from exc
        return connection, str(resp.get("DeletionDate") or "")


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, GatehouseError) else f"{type(exc).__name__}: {safe_text(exc)}"


def _undo_all(undo: list[Undo]) -> list[str]:
    """Run the undos newest first; every one is tried, whatever the others do."""
    failures = []
    for step in reversed(undo):
        try:
            step()
        except (ClientError, BotoCoreError) as exc:
            failures.append(safe_text(exc))
    return failures
