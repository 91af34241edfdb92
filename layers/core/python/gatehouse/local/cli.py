"""`gatehouse local up [--detach]` and `gatehouse local down`.

`gatehouse.cli` calls `register(subparsers)`; `python -m gatehouse.local.cli` runs the same
commands on their own (the detached stack is started that way).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gatehouse.local.moto_server import MotoServerError
from gatehouse.local.postgres import PostgresUnavailableError
from gatehouse.local.provision import ProvisionError
from gatehouse.local.stack import (
    STATE_DIR,
    LocalStack,
    LocalStackError,
    run_until_signalled,
    start_detached,
    stop_running,
)

EXIT_OK, EXIT_ERROR = 0, 1


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    try:
        extra = ("--handler-path", str(Path(args.handler_path).resolve())) if args.handler_path else ()
        if args.detach:
            state = start_detached(state_dir, extra_args=extra)
            print(f"local stack running in the background (pid {state['pid']})")
            print(f"  api: {state['api']}")
            print(f"  aws: {state['aws']}")
            print(f"  state: {state_dir / 'local.json'}, log: {state_dir / 'local.log'}")
            print("stop it with `gatehouse local down`")
            return EXIT_OK
        _log_to_stderr()
        stack = (
            LocalStack(state_dir=state_dir, handler_path=Path(args.handler_path))
            if args.handler_path
            else LocalStack(state_dir=state_dir)
        )
        run_until_signalled(stack, announce=_say)
        return EXIT_OK
    except (LocalStackError, MotoServerError, PostgresUnavailableError, ProvisionError) as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return EXIT_ERROR


def cmd_down(args: argparse.Namespace) -> int:
    try:
        pid = stop_running(Path(args.state_dir))
    except LocalStackError as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print("no local stack was running" if pid is None else f"local stack stopped (pid {pid})")
    return EXIT_OK


def _say(text: str) -> None:
    print(text, flush=True)


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _state_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=str(STATE_DIR), help=argparse.SUPPRESS)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    local = subparsers.add_parser("local", help="the local stack (moto, Postgres, API stand-in)")
    sub = local.add_subparsers(dest="local_command", required=True)

    up = sub.add_parser("up", help="start the local stack (foreground until Ctrl-C)")
    up.add_argument("--detach", action="store_true", help="run it in the background and return")
    _state_dir_option(up)
    # Another function file in place of functions/api/handler.py (tests, handler development).
    up.add_argument("--handler-path", default=None, help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the local stack started with --detach")
    _state_dir_option(down)
    down.set_defaults(func=cmd_down)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatehouse")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["local", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
