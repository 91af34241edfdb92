"""`gatehouse connections check NAME`: least privilege of a connection's target role.

The registry and the secret come from the local stack when `.gatehouse/local.json` is in the
current directory (keys `aws`: moto's endpoint URL, `region`), otherwise from a deployed stack
through the standard AWS environment (table name from `GATEHOUSE_CONNECTIONS_TABLE`, else the
name the CDK app uses). The check then logs in to the database itself, so it must run where the
database is reachable.

Exit codes: 0 no finding at or above `--fail-on` (default high); 1 there is one; 2 the check
could not run (no target, unknown connection, unreachable database).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatehouse import names
from gatehouse.exceptions import GatehouseError

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2

LOCAL_STATE_FILE = Path(".gatehouse") / "local.json"
# moto accepts any credentials; these are its documented placeholders, not a secret.
LOCAL_ACCESS_KEY = "testing"
LOCAL_SECRET_KEY = "testing"  # noqa: S105


class CheckTargetError(Exception):
    """Neither a local stack nor a deployed one is configured (or the local state is unreadable)."""


@dataclass(frozen=True)
class CheckTarget:
    """Where the registry and the secrets are: the local stack's moto, or AWS."""

    kind: str  # "local" | "aws"
    region: str | None = None
    endpoint_url: str | None = None
    connections_table: str = names.CONNECTIONS_TABLE
    principals_table: str = names.PRINCIPALS_TABLE

    def client(self, service: str) -> Any:
        import boto3

        if self.kind == "local":
            return boto3.client(
                service,
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=LOCAL_ACCESS_KEY,
                aws_secret_access_key=LOCAL_SECRET_KEY,
            )
        return boto3.client(service, region_name=self.region)


def load_check_target(cwd: Path | None = None, env: Mapping[str, str] | None = None) -> CheckTarget:
    """The local stack when `.gatehouse/local.json` is here, else the deployed stack from the env."""
    env = os.environ if env is None else env
    path = (cwd or Path.cwd()) / LOCAL_STATE_FILE
    if not path.exists():
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if not region:
            raise CheckTargetError(
                f"no target: set AWS_REGION (and AWS credentials) for a deployed stack, "
                f"or start the local one (gatehouse local up) to get {LOCAL_STATE_FILE}"
            )
        return CheckTarget(
            kind="aws",
            region=region,
            connections_table=env.get(names.ENV_CONNECTIONS_TABLE) or names.CONNECTIONS_TABLE,
            principals_table=env.get(names.ENV_PRINCIPALS_TABLE) or names.PRINCIPALS_TABLE,
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckTargetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(state, dict) or not state.get("aws"):
        raise CheckTargetError(f"{path} has no 'aws' endpoint")
    return CheckTarget(
        kind="local", region=str(state.get("region") or "us-east-1"), endpoint_url=str(state["aws"])
    )


def register(connections_parser: argparse.ArgumentParser) -> None:
    """Add `check NAME` under `gatehouse connections`."""
    sub = connections_parser.add_subparsers(dest="connections_command")
    p = sub.add_parser(
        "check",
        help="least privilege of a connection's target role",
        description="Log in as the connection's own role and list what it can do that an agent's "
        "role should not, each with the SQL that fixes it.",
    )
    p.add_argument("name", metavar="NAME", help="the connection")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--fail-on",
        choices=("high", "medium", "low"),
        default="high",
        help="exit 1 when a finding of this severity or above exists (default: high)",
    )
    p.add_argument(
        "--new-owner",
        metavar="ROLE",
        help="the role fix SQL hands owned objects to (default: the database's owner)",
    )
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace, target: CheckTarget | None = None) -> int:
    from gatehouse.registry import Registry
    from gatehouse.secrets import SecretStore
    from gatehouse.targets.postgres_privileges import Severity, check_connection

    try:
        target = target or load_check_target()
        registry = Registry(target.client("dynamodb"), target.connections_table, target.principals_table)
        connection = registry.get_connection(args.name)
        if connection.kind != "postgres":
            raise CheckTargetError(f"{args.name} is a {connection.kind} connection: only postgres is checked")
        secrets = SecretStore(target.client("secretsmanager"), cache_seconds=0)
        report = check_connection(connection, secrets, new_owner=args.new_owner)
    except CheckTargetError as exc:
        return _fail(str(exc))
    except GatehouseError as exc:
        return _fail(exc.message)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.format())
    return EXIT_FINDINGS if report.at_least(Severity(args.fail_on)) else EXIT_OK


def _fail(message: str) -> int:
    print(f"gatehouse connections check: {message}", file=sys.stderr)
    return EXIT_USAGE
