"""`gatehouse audit query | verify | recover | replay` against the local stack or a deployed one.

The target: a deployed stack when `GATEHOUSE_LOG_BUCKET` is set (Athena workgroup and Glue database
from `GATEHOUSE_ATHENA_WORKGROUP` / `GATEHOUSE_GLUE_DATABASE`, else the names the CDK app uses;
standard AWS credentials), otherwise the local stack described by `.gatehouse/local.json` in the
current directory (keys `aws`: moto's endpoint URL, `region`, `bucket`: the log bucket).
Queries run on Athena for a deployed stack and on DuckDB over moto's S3 locally.

Exit codes: 0 ok; 1 verify found problems, or the query/replay failed; 2 the target or the
arguments are wrong.

Everything printed that came from the log or from S3 (values, column names, problem details,
error texts) goes through `gatehouse.terminal`: a logged statement is the agent's text and must not
drive the auditor's terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse import names
from gatehouse.audit import named_queries
from gatehouse.exceptions import AuditWriteError
from gatehouse.terminal import safe_json, safe_text

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

LOCAL_STATE_FILE = Path(".gatehouse") / "local.json"
ENV_ATHENA_WORKGROUP = "GATEHOUSE_ATHENA_WORKGROUP"
ENV_GLUE_DATABASE = "GATEHOUSE_GLUE_DATABASE"
# moto accepts any credentials; these are its documented placeholders, not a secret.
LOCAL_ACCESS_KEY = "testing"
LOCAL_SECRET_KEY = "testing"  # noqa: S105
MOTO_ACCOUNT = "123456789012"  # moto's default account id


class AuditTargetError(Exception):
    """Neither a deployed stack nor a local one is configured (or the local state is unreadable)."""


@dataclass(frozen=True)
class AuditTarget:
    """Where the session log is: `local` (moto + DuckDB) or `aws` (S3 + Athena)."""

    kind: str  # "local" | "aws"
    bucket: str
    region: str | None = None
    endpoint_url: str | None = None  # the moto endpoint, for local
    workgroup: str = names.ATHENA_WORKGROUP
    database: str = names.GLUE_DATABASE

    def s3_client(self) -> Any:
        import boto3

        if self.kind == "local":
            return boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=LOCAL_ACCESS_KEY,
                aws_secret_access_key=LOCAL_SECRET_KEY,
            )
        return boto3.client("s3", region_name=self.region)

    def query_backend(self) -> Any:
        from gatehouse.audit.query import AthenaAuditQuery, DuckDBAuditQuery

        if self.kind == "local":
            assert self.endpoint_url is not None
            return DuckDBAuditQuery(
                self.endpoint_url, self.bucket, self.region or "us-east-1", LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
            )
        import boto3

        return AthenaAuditQuery(
            boto3.client("athena", region_name=self.region), self.workgroup, self.database
        )


def load_target(cwd: Path | None = None, env: Mapping[str, str] | None = None) -> AuditTarget:
    """The local stack when `.gatehouse/local.json` is here, else the deployed stack from the env.

    The local state wins: the local stack itself sets `GATEHOUSE_LOG_BUCKET` for the handler it
    hosts, so the variable alone does not mean a deployed stack.
    """
    env = os.environ if env is None else env
    path = (cwd or Path.cwd()) / LOCAL_STATE_FILE
    bucket = env.get(names.ENV_LOG_BUCKET)
    if bucket and not path.exists():
        return AuditTarget(
            kind="aws",
            bucket=bucket,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            workgroup=env.get(ENV_ATHENA_WORKGROUP) or names.ATHENA_WORKGROUP,
            database=env.get(ENV_GLUE_DATABASE) or names.GLUE_DATABASE,
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditTargetError(
            f"no target: set {names.ENV_LOG_BUCKET} for a deployed stack, "
            f"or start the local one (gatehouse local up) to get {LOCAL_STATE_FILE}"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise AuditTargetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(state, dict) or not state.get("aws"):
        raise AuditTargetError(f"{path} has no 'aws' endpoint")
    region = str(state.get("region") or "us-east-1")
    return AuditTarget(
        kind="local",
        bucket=str(state.get("bucket") or names.session_log_bucket(MOTO_ACCOUNT, region)),
        region=region,
        endpoint_url=str(state["aws"]),
    )


ContextLoader = Callable[[], AuditTarget]


def register(subparsers: Any, context_loader: ContextLoader = load_target) -> None:
    """Add `audit query|verify|replay|queries` to the `gatehouse` command."""
    audit = subparsers.add_parser("audit", help="query, verify and replay the session log")
    audit.set_defaults(audit_target=context_loader)
    sub = audit.add_subparsers(dest="audit_command", required=True)

    p = sub.add_parser(
        "query",
        help="run SQL on table gatehouse_events, or a named query",
        description="Run SQL over table gatehouse_events (Athena on AWS, DuckDB locally).",
    )
    p.add_argument("sql", nargs="?", help="the SQL (omit with --named)")
    p.add_argument("--named", metavar="NAME", help="a named query (see `gatehouse audit queries`)")
    p.add_argument(
        "--param", action="append", default=[], metavar="K=V", help="a named query's parameter (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print JSON: columns and rows")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("queries", help="list the named queries and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_queries)

    p = sub.add_parser("verify", help="recompute hash chains and manifests (exit 1 on problems)")
    p.add_argument("--session", metavar="ID", help="verify one session (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "recover",
        help="write into their sessions' logs the write-ahead events they lack (exit 1 on problems)",
        description=(
            "A proxy that died between its write-ahead object and its sessions' own objects leaves "
            "events only in wal/. This writes them where verify, replay and Athena read them. Safe "
            "beside a live proxy: objects are written once, and each writer continues after the other's."
        ),
    )
    p.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="SECONDS",
        help="only write-ahead objects at least this old (default: 60, what a live writer needs)",
    )
    p.add_argument(
        "--retention-days",
        type=int,
        default=None,
        metavar="DAYS",
        help=f"Object Lock retention of what is written (default: ${names.ENV_LOG_RETENTION_DAYS} or "
        f"{names.DEFAULT_LOG_RETENTION_DAYS})",
    )
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("replay", help="a session's events as a readable transcript")
    p.add_argument("session_id", metavar="ID")
    p.set_defaults(func=cmd_replay)


def _target(args: argparse.Namespace) -> AuditTarget:
    loader: ContextLoader = getattr(args, "audit_target", load_target)
    return loader()


def _params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param wants K=V, got {pair!r}")
        out[key.strip()] = value
    return out


def _fail(message: str, code: int) -> int:
    print(f"gatehouse audit: {safe_text(message)}", file=sys.stderr)
    return code


def cmd_query(args: argparse.Namespace) -> int:
    from gatehouse.audit.query import AuditQueryError

    try:
        if args.named:
            if args.sql:
                raise ValueError("give either SQL or --named, not both")
            sql = named_queries.render(named_queries.get(args.named), _params(args.param))
        elif args.sql:
            if args.param:
                raise ValueError("--param goes with --named")
            sql = args.sql
        else:
            raise ValueError("give SQL or --named NAME")
        target = _target(args)
    except (ValueError, KeyError, AuditTargetError) as exc:
        return _fail(str(exc).strip("'\""), EXIT_USAGE)
    backend = target.query_backend()
    try:
        columns, rows = backend.run(sql)
    except AuditQueryError as exc:
        return _fail(exc.message, EXIT_PROBLEMS)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    if args.json:
        print(safe_json({"columns": columns, "rows": [list(r) for r in rows]}, indent=2, default=str))
    else:
        print(_table(columns, rows))
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return EXIT_OK


def cmd_queries(args: argparse.Namespace) -> int:
    if args.json:
        listing = [
            {
                "name": q.name,
                "description": q.description,
                "params": [
                    {"name": p.name, "description": p.description, "default": p.default} for p in q.params
                ],
                "sql": q.sql,
            }
            for q in named_queries.NAMED_QUERIES
        ]
        print(json.dumps(listing, indent=2))
        return EXIT_OK
    for q in named_queries.NAMED_QUERIES:
        params = " ".join(
            f"--param {p.name}=..." if p.default is None else f"[--param {p.name}=...]" for p in q.params
        )
        print(f"{q.name}  {params}\n    {q.description}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from gatehouse.audit.verify import verify_log

    try:
        target = _target(args)
        report = verify_log(target.s3_client(), target.bucket, args.session)
    except (ValueError, AuditTargetError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (BotoCoreError, ClientError) as exc:
        return _fail(f"cannot read the session log: {exc}", EXIT_PROBLEMS)
    print(safe_json(report.as_dict(), indent=2) if args.json else safe_text(report.format(), multiline=True))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_recover(args: argparse.Namespace) -> int:
    from gatehouse.audit.wal import DEFAULT_GRACE_S, recover

    grace = DEFAULT_GRACE_S if args.older_than is None else args.older_than
    retention = args.retention_days
    if retention is None:
        text = os.environ.get(names.ENV_LOG_RETENTION_DAYS, str(names.DEFAULT_LOG_RETENTION_DAYS))
        retention = int(text) if text.isdigit() else 0
    if grace < 0 or retention <= 0:
        return _fail(
            "--older-than must be at least 0 and the retention a positive number of days", EXIT_USAGE
        )
    try:
        target = _target(args)
        report = recover(target.s3_client(), target.bucket, retention_days=retention, grace_s=grace)
    except (ValueError, AuditTargetError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except AuditWriteError as exc:
        return _fail(f"cannot write the session log: {exc.message}", EXIT_PROBLEMS)
    except (BotoCoreError, ClientError) as exc:
        return _fail(f"cannot read the session log: {exc}", EXIT_PROBLEMS)
    print(safe_text(report.format(), multiline=True))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_replay(args: argparse.Namespace) -> int:
    from gatehouse.audit.replay import replay
    from gatehouse.exceptions import NotFoundError

    try:
        target = _target(args)
        # replay escapes each field itself; this keeps its line breaks and nothing else.
        print(safe_text(replay(target.s3_client(), target.bucket, args.session_id), multiline=True))
    except (ValueError, AuditTargetError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except NotFoundError as exc:
        return _fail(exc.message, EXIT_PROBLEMS)
    except (BotoCoreError, ClientError) as exc:
        return _fail(f"cannot read the session log: {exc}", EXIT_PROBLEMS)
    return EXIT_OK


def _table(columns: list[str], rows: list[tuple[Any, ...]], max_width: int = 60) -> str:
    def cell(v: Any) -> str:
        if v is None:
            text = "NULL"
        elif isinstance(v, list | tuple):
            text = "[" + ", ".join(safe_text(x) for x in v) + "]"
        else:
            # One line per row: a line break in a value is shown as `\n`, like any control.
            text = safe_text(v)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    columns = [safe_text(c) for c in columns]
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    head = " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    sep = "-+-".join("-" * w for w in widths)
    body = [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([head.rstrip(), sep, *body])
