"""`gatehouse approve ID --as SLACK_USER [--deny --reason TEXT]`: a Slack click, from the shell.

Against the local stack only: it sends the interaction Slack would send when SLACK_USER clicks
Approve (or Deny, then submits the reason modal), signed with the app's signing secret from the
local Secrets Manager, to the API's `/slack/interactions`, the same path real Slack calls. It
then prints what that approver would see: Gatehouse's ephemeral reply, and the request's status
as the approval message now shows it. A deployed stack is approved in Slack itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from gatehouse import names
from gatehouse.client import LOCAL_STATE, ClientConfigError, load_local_state
from gatehouse.local.console import (
    REPLY_WAIT_S,
    ConsoleError,
    SlackStandin,
    VoteOutcome,
    Voter,
    looks_refused,
)
from gatehouse.local.provision import LOCAL_AWS_KEY
from gatehouse.local.slack_signing import InteractionSendError
from gatehouse.terminal import safe_json, safe_text

EXIT_OK, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2
INTERACTIONS_PATH = "/slack/interactions"
# local.json's key for the Slack Web API stand-in (its root URL).
SLACK_API_KEY = "slack_api"


def local_slack_secret(state: dict[str, Any]) -> dict[str, Any]:
    """The Slack app's signing secret of the local stack ({"signing_secret"}): what Slack signs with."""
    client = boto3.client(
        "secretsmanager",
        endpoint_url=state["aws"],
        region_name=state["region"],
        aws_access_key_id=LOCAL_AWS_KEY,
        aws_secret_access_key=LOCAL_AWS_KEY,
    )
    try:
        raw = client.get_secret_value(SecretId=names.SLACK_SIGNING_SECRET)["SecretString"]
        secret = json.loads(raw)
    except (ClientError, BotoCoreError, KeyError, ValueError) as exc:
        raise ClientConfigError(
            f"the local stack has no readable Slack signing secret {names.SLACK_SIGNING_SECRET}: "
            f"{type(exc).__name__}"
        ) from exc
    if not isinstance(secret, dict) or not secret.get("signing_secret"):
        raise ClientConfigError(f"the local Slack secret {names.SLACK_SIGNING_SECRET} has no signing_secret")
    return secret


def local_voter(state: dict[str, Any], *, reply_wait_s: float = REPLY_WAIT_S) -> Voter:
    """What the console and this command share: the stand-in, the interactions URL, the secret."""
    slack_api = state.get(SLACK_API_KEY)
    if not slack_api:
        raise ClientConfigError("this local stack runs no Slack stand-in (no `slack_api` in local.json)")
    secret = local_slack_secret(state)
    interactions_url = str(state["api"]).rstrip("/") + INTERACTIONS_PATH
    return Voter(
        SlackStandin(str(slack_api)),
        interactions_url,
        str(secret["signing_secret"]),
        reply_wait_s=reply_wait_s,
    )


def describe_outcome(request_id: str, user: str, approve: bool, outcome: VoteOutcome) -> list[str]:
    verb = "approve" if approve else "deny"
    lines = [f"{user} -> {verb} {request_id}"]
    if not outcome.delivered:
        lines.append(f"  refused by /slack/interactions: {outcome.error}")
        return lines
    if outcome.reply_text is not None:
        lines.append(f"  Gatehouse replied (only {user} sees this): {outcome.reply_text}")
    else:
        lines.append("  no reply from Gatehouse yet")
    if outcome.message is not None:
        headline = outcome.message.headline()
        if headline:
            lines.append(f"  the approval message now reads: {headline}")
    return lines


def cmd_approve(args: argparse.Namespace) -> int:
    if args.deny and not (args.reason or "").strip():
        print("gatehouse: --deny needs --reason TEXT (the agent and the audit log see it)", file=sys.stderr)
        return EXIT_ERROR
    if args.reason and not args.deny:
        print("gatehouse: --reason goes with --deny", file=sys.stderr)
        return EXIT_ERROR
    state = load_local_state(Path(args.state) if args.state else LOCAL_STATE)
    voter = local_voter(state, reply_wait_s=args.wait)
    try:
        outcome = voter.vote(args.as_user, args.request_id, approve=not args.deny, reason=args.reason or "")
    except (ConsoleError, InteractionSendError) as exc:
        print(f"gatehouse: {safe_text(exc)}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(safe_json(outcome.as_dict(), indent=2))
    else:
        print(
            "\n".join(
                safe_text(line)
                for line in describe_outcome(args.request_id, args.as_user, not args.deny, outcome)
            )
        )
    if not outcome.delivered:
        return EXIT_ERROR
    if outcome.reply is not None and looks_refused(outcome.reply):
        return EXIT_REFUSED
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "approve",
        help="approve (or deny) a request as a Slack user of the local stack",
        description="Send the signed Slack interaction an approver's click would send (local stack).",
    )
    p.add_argument("request_id", metavar="ID")
    p.add_argument("--as", dest="as_user", required=True, metavar="SLACK_USER", help="e.g. U_ALICE")
    p.add_argument("--deny", action="store_true", help="deny instead of approving (needs --reason)")
    p.add_argument("--reason", default="", metavar="TEXT", help="why it is denied")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--wait", type=float, default=REPLY_WAIT_S, metavar="SECONDS", help="how long to wait for the reply"
    )
    p.add_argument("--state", default=None, help=argparse.SUPPRESS)  # another local.json (tests)
    p.set_defaults(func=cmd_approve)
