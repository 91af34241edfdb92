"""Helpers for the local-stack tests: each test module wraps these in its own fixtures."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gatehouse.local.apigw import ApiGateway, IamCredential
from gatehouse.local.moto_server import MotoServer

REGION = "us-east-1"
ACCOUNT = "123456789012"
AGENT_ARN = f"arn:aws:iam::{ACCOUNT}:user/gatehouse-agent-tester"

STUB_HANDLER_SOURCE = '''
"""A stand-in for functions/api/handler.py: echoes the event it was given."""
import contextlib
import json

INVOCATIONS = 0


def lambda_handler(event, context):
    global INVOCATIONS
    INVOCATIONS += 1
    body = {"event": event, "environment_invocations": INVOCATIONS,
            "function_name": context.function_name}
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(body)}
'''


@dataclass
class RecordingHandler:
    """A Lambda handler that remembers every event and answers with a fixed proxy response."""

    status: int = 200
    events: list[dict[str, Any]] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        with self.lock:
            self.events.append(event)
            self.contexts.append(context)
        return {
            "statusCode": self.status,
            "headers": {"Content-Type": "application/json", "X-Handled": "yes"},
            "body": json.dumps({"ok": True, "route": event["routeKey"]}),
            "isBase64Encoded": False,
        }


@dataclass(frozen=True)
class AgentKey:
    access_key_id: str
    secret_access_key: str = field(repr=False)


def make_key() -> AgentKey:
    # Shaped like an IAM key id, generated at run time: nothing credential-like is committed.
    return AgentKey("AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))


def port_is_closed(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


@contextlib.contextmanager
def running_gateway(handler: Any, key: AgentKey, arn: str = AGENT_ARN) -> Iterator[ApiGateway]:
    """The stand-in on a free port, knowing one access key (as the user `arn`), with `handler` behind it."""
    api = ApiGateway(
        handler,
        {key.access_key_id: IamCredential(key.secret_access_key, arn, "AIDATESTER")},
        region=REGION,
        account_id=ACCOUNT,
    )
    api.start()
    try:
        yield api
    finally:
        api.stop()


@contextlib.contextmanager
def running_moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
