"""`gatehouse admin connections|agents|approvers add|list|remove`.

Where: the same stack `gatehouse connections check` uses (gatehouse.targets.privileges_cli): the
local stack's moto when `.gatehouse/local.json` is in the current directory, otherwise AWS from the
standard environment, table names from GATEHOUSE_CONNECTIONS_TABLE / GATEHOUSE_PRINCIPALS_TABLE
(else gatehouse.names), policies from GATEHOUSE_POLICY_DIR (else the packaged ones).

A secret never comes from the command line (ps and shell history keep argv): it is read from
stdin (`--password-stdin`) or from an environment variable named by `--password-env`. Nothing
printed holds a secret, and everything echoed from input goes through safe_text.

Exit codes: 0 done; 1 refused by the least-privilege check (nothing registered); 2 bad usage, a
refusal by validation, or a stack or database that cannot be reached (nothing registered).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatehouse import names
from gatehouse.terminal import safe_json, safe_text

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class AdminTarget:
    """The stack to administer and the policies registrations are validated against."""

    stack: Any  # gatehouse.targets.privileges_cli.CheckTarget
    policy_dir: Path

    @classmethod
    def load(cls, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> AdminTarget:
        from gatehouse.config import default_policy_dir
        from gatehouse.targets.privileges_cli import load_check_target

        env = os.environ if env is None else env
        policy_dir = (
            Path(env[names.ENV_POLICY_DIR]) if env.get(names.ENV_POLICY_DIR) else default_policy_dir()
        )
        return cls(stack=load_check_target(cwd, env), policy_dir=policy_dir)


class _UsageError(Exception):
    """An option the command line cannot satisfy (an unreadable file, an empty secret)."""


# -- the parser ------------------------------------------------------------------------------------


def register(admin_parser: argparse.ArgumentParser) -> None:
    """Add `connections`, `agents` and `approvers` (each `add`, `list`, `remove`) under `admin`."""
    sub = admin_parser.add_subparsers(dest="admin_command", required=True)
    _connections(sub.add_parser("connections", help="targets agents may use (and their secrets)"))
    _agents(sub.add_parser("agents", help="IAM roles that act as agents"))
    _approvers(sub.add_parser("approvers", help="Slack users who approve requests"))


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _connections(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="admin_connections_command", required=True)
    add = sub.add_parser(
        "add",
        help="register a connection (its secret, then its registry item)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write the connection's secret and registry item. A postgres connection's role is checked\n"
            "for least privilege first (as `gatehouse connections check` does): a high finding, or a\n"
            "database that cannot be reached, registers nothing.\n\n"
            "The secret is read from stdin (--password-stdin) or an environment variable\n"
            "(--password-env VAR), never from the command line. What it is, by kind:\n"
            "  postgres    the role's password (with --host, --port, --database, --username)\n"
            "  http        the token for --attribute auth=bearer (default); the password for auth=basic\n"
            "              (with --username); the key for auth=api_key (with --attribute\n"
            "              api_key_header=X-Api-Key); the secret access key for auth=sigv4 (with\n"
            "              --access-key-id and --attribute aws_service=... aws_region=...); with --url\n"
            "  kubernetes  a service-account token (with --url https://API-SERVER and --ca-file)\n"
            "  ssh         the password, or with --private-key-file the key's passphrase if it has one\n"
            "              (with --host, --port, --username and --host-key or --host-key-file)\n\n"
            "Attributes (--attribute key=value, repeatable; a value that parses as JSON is kept as\n"
            "JSON): env and data_classification are what policies see (env must be a value the\n"
            "policies name); the rest are the kind's own settings: postgres tls (disable, prefer\n"
            "(default), require, verify-full: with --ca-file, or the system trust store); http local,\n"
            "allow_private, auth, api_key_header, aws_service, aws_region, path_classes, mask_paths;\n"
            "kubernetes resources.\n\n"
            "Exit codes: 0 registered; 1 refused by the privilege check; 2 refused otherwise."
        ),
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--kind", required=True, choices=("postgres", "http", "kubernetes", "ssh"))
    add.add_argument("--host", help="postgres, ssh: the server's host name or address")
    add.add_argument("--port", type=int, help="postgres (default 5432), ssh (default 22)")
    add.add_argument("--database", help="postgres: the database (default: NAME)")
    add.add_argument("--username", help="postgres: the role; ssh: the login; http auth=basic: the user")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password-stdin", action="store_true", help="read the secret from stdin")
    secret.add_argument("--password-env", metavar="VAR", help="read the secret from environment variable VAR")
    add.add_argument(
        "--url", help="http: the base URL (https://host[:port][/prefix]); kubernetes: the API server"
    )
    add.add_argument(
        "--ca-file",
        metavar="PEM",
        help="kubernetes (required), http: the CA certificate to pin; postgres with tls=verify-full: "
        "the CA bundle the server's certificate must chain to (for RDS, global-bundle.pem)",
    )
    host_key = add.add_mutually_exclusive_group()
    host_key.add_argument(
        "--host-key", metavar="KEY", help="ssh: the host's public key, 'ssh-ed25519 AAAA...'"
    )
    host_key.add_argument(
        "--host-key-file", metavar="FILE", help="ssh: a file of the host's public key line(s)"
    )
    add.add_argument(
        "--private-key-file", metavar="FILE", help="ssh: log in with this private key (PEM/OpenSSH)"
    )
    add.add_argument("--access-key-id", help="http auth=sigv4: the access key id")
    add.add_argument(
        "--attribute",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a registry attribute (repeatable)",
    )
    add.add_argument("--masking-profile", default="default", help="the masking profile (default: default)")
    add.add_argument(
        "--recording",
        default="sync_writes",
        choices=("sync", "sync_writes", "async"),
        help="how the Postgres proxy records statements (default: sync_writes)",
    )
    add.add_argument(
        "--rotation-days", type=int, metavar="N", help="postgres: rotate the password every N days (1-1000)"
    )
    add.add_argument(
        "--rotation-function",
        metavar="ARN",
        help=f"the rotation Lambda (default: {names.ROTATION_FUNCTION} in this account and region)",
    )
    add.add_argument("--replace", action="store_true", help="overwrite an existing connection and secret")
    add.set_defaults(func=cmd_connections_add)

    ls = sub.add_parser("list", help="registered connections")
    _json_option(ls)
    ls.set_defaults(func=cmd_connections_list)

    rm = sub.add_parser("remove", help="remove a connection's registry item (the secret stays unless asked)")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument(
        "--delete-secret",
        action="store_true",
        help="also schedule the secret's deletion (Secrets Manager's default 30-day recovery window)",
    )
    rm.set_defaults(func=cmd_connections_remove)


def _agents(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="admin_agents_command", required=True)
    add = sub.add_parser(
        "add",
        help="register the IAM role an agent calls Gatehouse with",
        description="Callers using the role (any session of it) become agent NAME.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role-arn", required=True, metavar="ARN", help="arn:aws:iam::ACCOUNT:role/[PATH/]NAME")
    add.add_argument("--team", help="the agent's team (policies read principal.team)")
    add.add_argument("--clearance", help="the agent's clearance (policies read principal.clearance)")
    add.add_argument(
        "--owner", metavar="SLACK_USER", help="the human responsible; they may not approve its requests"
    )
    add.add_argument("--replace", action="store_true", help="overwrite the role's existing agent")
    add.set_defaults(func=cmd_agents_add)
    ls = sub.add_parser("list", help="registered agents")
    _json_option(ls)
    ls.set_defaults(func=cmd_agents_list)
    rm = sub.add_parser("remove", help="remove an agent: its role can no longer call Gatehouse")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=cmd_agents_remove)


def _approvers(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="admin_approvers_command", required=True)
    add = sub.add_parser(
        "add",
        help="register a Slack user as an approver",
        description="Each --group must be one a policy's @approval(...) asks for.",
    )
    add.add_argument("user_id", metavar="SLACK_USER_ID")
    add.add_argument("--name", required=True, help="the approver's display name")
    add.add_argument("--group", action="append", required=True, help="an approver group (repeatable)")
    add.add_argument("--replace", action="store_true", help="overwrite the user's existing approver entry")
    add.set_defaults(func=cmd_approvers_add)
    ls = sub.add_parser("list", help="registered approvers")
    _json_option(ls)
    ls.set_defaults(func=cmd_approvers_list)
    rm = sub.add_parser("remove", help="remove an approver")
    rm.add_argument("user_id", metavar="SLACK_USER_ID")
    rm.set_defaults(func=cmd_approvers_remove)


# -- running ---------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, target: AdminTarget | None, body: Any) -> int:
    """Resolve the target, run `body(target)`, map every refusal to its exit code and message."""
    from gatehouse.admin.exceptions import LeastPrivilegeError
    from gatehouse.exceptions import GatehouseError
    from gatehouse.targets.privileges_cli import CheckTargetError

    try:
        return int(body(target or AdminTarget.load()))
    except LeastPrivilegeError as exc:
        print(safe_text(exc.report.format(), multiline=True))
        return _fail(exc.message, EXIT_REFUSED)
    except GatehouseError as exc:
        return _fail(exc.message)
    except (CheckTargetError, _UsageError) as exc:
        return _fail(str(exc))


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"gatehouse admin: {safe_text(message, multiline=True)}", file=sys.stderr)
    return code


def _read_file(path: str | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"{option} {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from exc


def read_secret(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> str | None:
    """The secret from stdin or the named environment variable; None when neither was asked for."""
    if args.password_env:
        value = (os.environ if env is None else env).get(args.password_env)
        if not value:
            raise _UsageError(f"--password-env: the environment variable {args.password_env} is not set")
        return value
    if not args.password_stdin:
        return None
    if sys.stdin.isatty():
        value = getpass.getpass("secret: ")
    else:
        # One trailing newline (from `echo` or a file) is not part of the secret.
        value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not value:
        raise _UsageError("--password-stdin: stdin was empty")
    return value


def cmd_connections_add(args: argparse.Namespace, target: AdminTarget | None = None) -> int:
    from gatehouse.admin.connections import ConnectionOptions, plan_connection
    from gatehouse.admin.policies import PolicyFacts

    def body(t: AdminTarget) -> int:
        options = ConnectionOptions(
            name=args.name,
            kind=args.kind,
            host=args.host,
            port=args.port,
            database=args.database,
            username=args.username,
            secret=read_secret(args),
            url=args.url,
            ca_pem=_read_file(args.ca_file, "--ca-file"),
            host_key=args.host_key or _read_file(args.host_key_file, "--host-key-file"),
            private_key=_read_file(args.private_key_file, "--private-key-file"),
            access_key_id=args.access_key_id,
            attributes=tuple(args.attribute),
            masking_profile=args.masking_profile,
            recording=args.recording,
            rotation_days=args.rotation_days,
        )
        if args.rotation_function is not None and args.rotation_days is None:
            raise _UsageError("--rotation-function needs --rotation-days")
        plan = plan_connection(options, PolicyFacts.load(t.policy_dir))
        done = _connection_registrar(t).register(
            plan, replace=args.replace, rotation_function=args.rotation_function
        )
        c = done.connection
        print(safe_text(f"registered connection {c.name} ({c.kind}, {_address(c)})"))
        print(safe_text(f"  secret {done.secret_arn} ({'replaced' if done.secret_replaced else 'created'})"))
        if done.report is not None:
            print(
                safe_text(
                    f"  least privilege, role {done.report.role}: {done.report.format().splitlines()[-1]}"
                )
            )
        if done.rotation_function is not None:
            print(safe_text(f"  rotation every {plan.rotation_days} days by {done.rotation_function}"))
        return EXIT_OK

    return _run(args, target, body)


def _connection_registrar(t: AdminTarget) -> Any:
    from gatehouse.admin.connections import ConnectionRegistrar

    return ConnectionRegistrar(
        dynamodb=t.stack.client("dynamodb"),
        secretsmanager=t.stack.client("secretsmanager"),
        connections_table=t.stack.connections_table,
        principals_table=t.stack.principals_table,
        lambda_client=t.stack.client("lambda"),
    )


def _principal_registrar(t: AdminTarget) -> Any:
    from gatehouse.admin.principals import PrincipalRegistrar

    return PrincipalRegistrar(dynamodb=t.stack.client("dynamodb"), principals_table=t.stack.principals_table)


def _address(c: Any) -> str:
    if c.kind == "postgres":
        return f"{c.host}:{c.port}/{c.database}"
    if c.kind == "http":
        return str(c.attributes.get("base_url"))
    if c.kind == "kubernetes":
        return str(c.attributes.get("api_server"))
    return f"{c.attributes.get('username')}@{c.host}:{c.port}"


def cmd_connections_list(args: argparse.Namespace, target: AdminTarget | None = None) -> int:
    def body(t: AdminTarget) -> int:
        connections = _connection_registrar(t).list()
        if args.json:
            print(safe_json({"connections": [_connection_dict(c) for c in connections]}, indent=2))
            return EXIT_OK
        rows = [
            [
                c.name,
                c.kind,
                _address(c),
                c.attributes.get("env"),
                c.attributes.get("data_classification"),
                c.masking_profile,
                c.recording,
            ]
            for c in connections
        ]
        columns = ["name", "kind", "address", "env", "classification", "masking", "recording"]
        print(_table(columns, rows) if rows else "no connections")
        return EXIT_OK

    return _run(args, target, body)


def _connection_dict(c: Any) -> dict[str, Any]:
    return {
        "name": c.name,
        "kind": c.kind,
        "host": c.host,
        "port": c.port,
        "database": c.database,
        "secret_id": c.secret_id,
        "attributes": dict(c.attributes),
        "masking_profile": c.masking_profile,
        "recording": c.recording,
    }


def cmd_connections_remove(args: argparse.Namespace, target: AdminTarget | None = None) -> int:
    def body(t: AdminTarget) -> int:
        connection, deletion = _connection_registrar(t).remove(args.name, delete_secret=args.delete_secret)
        print(safe_text(f"removed connection {connection.name}"))
        if deletion is None:
            print(safe_text(f"  secret {connection.secret_id} kept (--delete-secret schedules its deletion)"))
        else:
            print(safe_text(f"  secret {connection.secret_id} scheduled for deletion on {deletion}"))
        return EXIT_OK

    return _run(args, target, body)


def cmd_agents_add(args: argparse.Namespace, target: AdminTarget | None = None) -> int:
    def body(t: AdminTarget) -> int:
        agent, key = _principal_registrar(t).add_agent(
            args.name,
            args.role_arn,
            team=args.team,
            clearance=args.clearance,
            owner=args.owner,
            replace=args.replace,
        )
        print(safe_text(f"registered agent {agent.name}: callers using role {key.arn} ({key.principal_key})"))
        return EXIT_OK

    return _run(args, target, body)


def cmd_agents_list(args: argparse.Namespace, target: AdminTarget | None = None) -> int:
    def body(t: AdminTarget) -> int:
        agents = _principal_registrar(t).agents()
        if args.json:
            listed = [
                {"name": p.name, "principal_key": key, "arn": p.arn, "attributes": dict(p.attributes)}
                for key, p in agents
            ]
            print(safe_json({"agents": listed}, indent=2))
            return EXIT_OK
        rows = [
            [
                p.name,
                p.arn,
                p.attributes.get("team"),
                p.attributes.get("clearance"),
                p.attributes.get("owner"),
            ]
            for _, p in agents
        ]
        print(_table(["name", "role", "team", "clearance", "owner"], rows) if rows else "no agents")
        return EXIT_OK

    return _run(args, target, body)


def cmd_agents_remove(args: argparse.Namespace, target: AdminTarget | None = None) -> int:
    def body(t: AdminTarget) -> int:
        agent = _principal_registrar(t).remove_agent(args.name)
        print(safe_text(f"removed agent {agent.name} (role {agent.arn})"))
        return EXIT_OK

    return _run(args, target, body)


def cmd_approvers_add(args: argparse.Namespace, target: AdminTarget | None = None) -> int:
    from gatehouse.admin.policies import PolicyFacts

    def body(t: AdminTarget) -> int:
        facts = PolicyFacts.load(t.policy_dir)
        approver = _principal_registrar(t).add_approver(
            args.user_id,
            name=args.name,
            groups=args.group,
            known_groups=facts.approval_groups,
            replace=args.replace,
        )
        print(
            safe_text(f"registered approver {args.user_id} ({approver.name}): {', '.join(approver.groups)}")
        )
        return EXIT_OK

    return _run(args, target, body)


def cmd_approvers_list(args: argparse.Namespace, target: AdminTarget | None = None) -> int:
    def body(t: AdminTarget) -> int:
        approvers = _principal_registrar(t).approvers()
        if args.json:
            listed = [
                {"slack_user_id": key.removeprefix("slack:"), "name": p.name, "groups": list(p.groups)}
                for key, p in approvers
            ]
            print(safe_json({"approvers": listed}, indent=2))
            return EXIT_OK
        rows = [[key.removeprefix("slack:"), p.name, ", ".join(p.groups)] for key, p in approvers]
        print(_table(["slack user", "name", "groups"], rows) if rows else "no approvers")
        return EXIT_OK

    return _run(args, target, body)


def cmd_approvers_remove(args: argparse.Namespace, target: AdminTarget | None = None) -> int:
    def body(t: AdminTarget) -> int:
        approver = _principal_registrar(t).remove_approver(args.user_id)
        print(safe_text(f"removed approver {args.user_id} ({approver.name})"))
        return EXIT_OK

    return _run(args, target, body)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from gatehouse.cli import format_table

    # format_table escapes every cell (safe_text); "-" reads better than NULL for an unset attribute.
    return format_table(columns, [["-" if v is None else v for v in row] for row in rows], max_width=60)
