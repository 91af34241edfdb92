"""A local stand-in for the Slack Web API, driven by the real `slack_sdk.WebClient`.

`WebClient(token=..., base_url=standin.api_url)` talks to it as to https://slack.com/api/. It
answers the methods Gatehouse calls the way Slack does (HTTP 200 with `{"ok": true, ...}`, or
`{"ok": false, "error": ...}`; a rate limit is HTTP 429 with `Retry-After`):

- `chat.postMessage`, `chat.update`, `chat.postEphemeral`, `views.open`, `auth.test`;
- the bot token is checked (`not_authed` without one, `invalid_auth` for another);
- blocks are checked against Slack's main limits (`invalid_blocks`), so a message that real
  Slack would refuse is refused here too.

Every message, each of its versions and every ephemeral reply and opened modal is kept in memory.
A read API serves the local approvals console and tests:

- `GET /_standin/messages`: JSON list, the most recently changed first; each entry has its
  current `text` and `blocks` and its `versions` (latest first);
- `GET /_standin/views`: the modals opened with `views.open`, the latest first;
- `POST /_standin/fail {"method": "chat.postMessage", "times": 3}`: the next 3 calls of that
  method fail, with `"error"` (default `ratelimited`, HTTP 429 with `Retry-After:
  "retry_after"` seconds, default 0) or with `"mode": "disconnect"` (the connection is closed
  unanswered, a network failure).

Not emulated: other methods (`unknown_method`), channel membership, message threading, files.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gatehouse import names
from gatehouse.local.served import ServedOnLoopback

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "#gatehouse-approvals"
MAX_BODY_BYTES = 1024 * 1024
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9_]{6,}$")  # ids; underscores as in the demo ids (U_BOB)
# The limits Slack enforces on blocks (https://docs.slack.dev/reference/block-kit/blocks/).
_MAX_BLOCKS_MESSAGE = 50
_MAX_BLOCKS_MODAL = 100
_TEXT_LIMITS = {"section": 3000, "header": 150, "context": 3000}
_FIELD_LIMIT = 2000
_MAX_FIELDS = 10
_BUTTON_VALUE_LIMIT = 2000
_BUTTON_TEXT_LIMIT = 75

TEAM_ID = "T0LOCAL01"
BOT_USER_ID = "U0GATEHOUSE"
BOT_ID = "B0GATEHOUSE"


@dataclass
class _Failure:
    times: int
    error: str = "ratelimited"
    retry_after: int = 0
    mode: str = "error"  # error | disconnect


@dataclass
class _Message:
    channel: str
    ts: str
    kind: str  # message | ephemeral
    text: str
    blocks: list[Any]
    user: str | None = None
    changed_at: float = 0.0
    versions: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    def as_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "ts": self.ts,
            "kind": self.kind,
            "user": self.user,
            "text": self.text,
            "blocks": self.blocks,
            "changed_at": self.changed_at,
            "versions": list(reversed(self.versions)),
        }


def create_slack_secret(
    secretsmanager: Any,
    *,
    secret_name: str = names.SLACK_SECRET,
    signing_secret_name: str = names.SLACK_SIGNING_SECRET,
    channel: str = DEFAULT_CHANNEL,
) -> dict[str, str]:
    """The local Slack app's two secrets, as a deployed stack holds them: fresh random values each time.

    `secret_name` holds {"bot_token", "channel"} (what posts), `signing_secret_name` holds
    {"signing_secret"} (what verifies Slack's requests). Returns the three values in one mapping:
    the stand-in takes its `bot_token`, the console signs with `signing_secret`.
    """
    bot = {"bot_token": f"xoxb-local-{secrets.token_hex(12)}", "channel": channel}
    signing = {"signing_secret": secrets.token_hex(16)}
    secretsmanager.create_secret(
        Name=secret_name,
        Description="Gatehouse: the Slack app's bot token and approval channel (local).",
        SecretString=json.dumps(bot),
    )
    secretsmanager.create_secret(
        Name=signing_secret_name,
        Description="Gatehouse: the Slack app's signing secret (local).",
        SecretString=json.dumps(signing),
    )
    return {**bot, **signing}


class SlackApiError(Exception):
    """A Slack Web API error answer: `{"ok": false, "error": code}` with an HTTP status."""

    def __init__(self, error: str, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.headers = dict(headers or {})


class _Disconnect(Exception):
    """Close the connection without an answer (an injected network failure)."""


class SlackApiStandIn(ServedOnLoopback):
    """`start()` serves on 127.0.0.1 (a free port) in its own thread; `stop()` joins it."""

    def __init__(self, token: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        if not token:
            raise ValueError("the stand-in needs the bot token the stack configures")
        self._token = token
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._messages: dict[tuple[str, str], _Message] = {}
        self._views: list[dict[str, Any]] = []
        self._channels: dict[str, str] = {}
        self._failures: dict[str, _Failure] = {}
        self._calls: dict[str, int] = {}
        self._ts_counter = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Slack stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_url(self) -> str:
        """The `base_url` for `slack_sdk.WebClient` (it ends in /api/ as Slack's does)."""
        return f"{self.url}/api/"

    def start(self) -> str:
        if self._server is None:
            server = _Server((self._host, self._port), _Handler)
            server.standin = self
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="gatehouse-slack",
                daemon=False,
            )
            self._thread.start()
        return self.url

    # -- the read API (also over HTTP) ---------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """Every message and ephemeral reply, the most recently changed first."""
        with self._lock:
            ordered = sorted(self._messages.values(), key=lambda m: (m.changed_at, m.ts), reverse=True)
            return [json.loads(json.dumps(m.as_json())) for m in ordered]

    def views(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(v)) for v in reversed(self._views)]

    def calls(self, method: str) -> int:
        """How many times `method` was called (failed calls included)."""
        with self._lock:
            return self._calls.get(method, 0)

    def fail(
        self,
        method: str,
        times: int,
        *,
        error: str = "ratelimited",
        retry_after: int = 0,
        mode: str = "error",
    ) -> None:
        """Make the next `times` calls of `method` fail (0 clears)."""
        if mode not in ("error", "disconnect"):
            raise ValueError("mode is 'error' or 'disconnect'")
        with self._lock:
            if times <= 0:
                self._failures.pop(method, None)
            else:
                self._failures[method] = _Failure(times, error, max(0, retry_after), mode)

    # -- the Web API ---------------------------------------------------------------------------

    def call(self, method: str, token: str | None, args: dict[str, Any]) -> dict[str, Any]:
        """One Web API call; raises `SlackApiError` (or `_Disconnect`) as Slack would fail it."""
        with self._lock:
            self._calls[method] = self._calls.get(method, 0) + 1
            failure = self._failures.get(method)
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    del self._failures[method]
        if failure is not None:
            if failure.mode == "disconnect":
                raise _Disconnect()
            if failure.error == "ratelimited":
                raise SlackApiError("ratelimited", 429, {"Retry-After": str(failure.retry_after)})
            raise SlackApiError(failure.error)
        handler = _METHODS.get(method)
        if handler is None:
            raise SlackApiError("unknown_method")
        token = token or args.pop("token", None)
        if not token:
            raise SlackApiError("not_authed")
        if not secrets.compare_digest(str(token), self._token):
            raise SlackApiError("invalid_auth")
        with self._lock:
            return handler(self, args)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "http://gatehouse-local.slack.invalid/",
            "team": "Gatehouse local",
            "user": "gatehouse",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        text, blocks = _content(args, _MAX_BLOCKS_MESSAGE)
        ts = self._next_ts()
        message = _Message(channel, ts, "message", text, blocks)
        self._record(message, text, blocks)
        self._messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": self._message_json(message)}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        ts = str(args.get("ts") or "")
        message = self._messages.get((channel, ts))
        if message is None or message.kind != "message":
            raise SlackApiError("message_not_found")
        text, blocks = _content(args, _MAX_BLOCKS_MESSAGE)
        message.text, message.blocks = text, blocks
        self._record(message, text, blocks)
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": text,
            "message": self._message_json(message),
        }

    def _post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        user = str(args.get("user") or "")
        if not user:
            raise SlackApiError("user_not_in_channel")
        text, blocks = _content(args, _MAX_BLOCKS_MESSAGE)
        ts = self._next_ts()
        message = _Message(channel, ts, "ephemeral", text, blocks, user=user)
        self._record(message, text, blocks)
        self._messages[(channel, ts)] = message
        return {"ok": True, "message_ts": ts}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("trigger_id"):
            raise SlackApiError("invalid_arguments")
        view = _json_arg(args.get("view"))
        if not isinstance(view, dict) or view.get("type") != "modal":
            raise SlackApiError("invalid_arguments")
        _check_blocks(view.get("blocks") or [], _MAX_BLOCKS_MODAL)
        opened = {
            **view,
            "id": f"V{secrets.token_hex(5).upper()}",
            "team_id": TEAM_ID,
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "trigger_id": str(args["trigger_id"]),
            "opened_at": time.time(),
        }
        self._views.append(opened)
        return {"ok": True, "view": {k: v for k, v in opened.items() if k not in ("trigger_id", "opened_at")}}

    # -- helpers -------------------------------------------------------------------------------

    def _channel(self, args: Mapping[str, Any]) -> str:
        raw = str(args.get("channel") or "")
        if not raw:
            raise SlackApiError("channel_not_found")
        if _CHANNEL_ID.match(raw):
            return raw
        name = raw.lstrip("#")
        if name not in self._channels:
            # Slack answers with the channel's id even when it was addressed by name.
            self._channels[name] = f"C{len(self._channels) + 1:08d}"
        return self._channels[name]

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts_counter):06d}"

    def _record(self, message: _Message, text: str, blocks: list[Any]) -> None:
        message.changed_at = time.time()
        message.versions.append({"text": text, "blocks": blocks, "at": message.changed_at})

    def _message_json(self, message: _Message) -> dict[str, Any]:
        return {
            "type": "message",
            "subtype": "bot_message",
            "text": message.text,
            "ts": message.ts,
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "team": TEAM_ID,
            "blocks": message.blocks,
        }


_METHODS = {
    "auth.test": SlackApiStandIn._auth_test,
    "chat.postMessage": SlackApiStandIn._post_message,
    "chat.update": SlackApiStandIn._update,
    "chat.postEphemeral": SlackApiStandIn._post_ephemeral,
    "views.open": SlackApiStandIn._views_open,
}


def _json_arg(value: Any) -> Any:
    # Form-encoded calls carry blocks and views as JSON text, JSON calls as values.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise SlackApiError("invalid_arguments") from exc
    return value


def _content(args: Mapping[str, Any], max_blocks: int) -> tuple[str, list[Any]]:
    text = str(args.get("text") or "")
    blocks = _json_arg(args.get("blocks")) or []
    if not isinstance(blocks, list):
        raise SlackApiError("invalid_blocks_format")
    if not text and not blocks:
        raise SlackApiError("no_text")
    _check_blocks(blocks, max_blocks)
    return text, blocks


def _check_blocks(blocks: list[Any], max_blocks: int) -> None:
    if len(blocks) > max_blocks:
        raise SlackApiError("invalid_blocks")
    for block in blocks:
        if not isinstance(block, dict) or not block.get("type"):
            raise SlackApiError("invalid_blocks")
        kind = block["type"]
        text = block.get("text")
        if isinstance(text, dict) and len(str(text.get("text", ""))) > _TEXT_LIMITS.get(kind, 3000):
            raise SlackApiError("invalid_blocks")
        fields = block.get("fields") or []
        if len(fields) > _MAX_FIELDS or any(len(str(f.get("text", ""))) > _FIELD_LIMIT for f in fields):
            raise SlackApiError("invalid_blocks")
        for element in block.get("elements") or []:
            if not isinstance(element, dict):
                raise SlackApiError("invalid_blocks")
            if element.get("type") == "button" and (
                len(str(element.get("value", ""))) > _BUTTON_VALUE_LIMIT
                or len(str(_dict(element.get("text")).get("text", ""))) > _BUTTON_TEXT_LIMIT
            ):
                raise SlackApiError("invalid_blocks")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    standin: SlackApiStandIn


class _Handler(BaseHTTPRequestHandler):
    # One request per connection: the stand-in is small, and stop() then has no idle
    # keep-alive connection to wait for.
    protocol_version = "HTTP/1.0"
    timeout = 10
    server: _Server

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_standin/messages":
            self._answer(200, self.server.standin.messages())
        elif path == "/_standin/views":
            self._answer(200, self.server.standin.views())
        elif path.startswith("/api/"):
            self._api(path, b"")
        else:
            self._answer(404, {"ok": False, "error": "not_found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._answer(413, {"ok": False, "error": "request_too_large"})
            return
        body = self.rfile.read(length) if length else b""
        if path == "/_standin/fail":
            self._fail(body)
        elif path.startswith("/api/"):
            self._api(path, body)
        else:
            self._answer(404, {"ok": False, "error": "not_found"})

    def _api(self, path: str, body: bytes) -> None:
        method = path[len("/api/") :]
        args: dict[str, Any] = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        media = (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        try:
            if media == "application/json" and body:
                parsed = json.loads(body)
                if not isinstance(parsed, dict):
                    raise SlackApiError("invalid_json")
                args.update(parsed)
            elif body:
                args.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (ValueError, UnicodeDecodeError):
            self._answer(200, {"ok": False, "error": "invalid_json"})
            return
        auth = self.headers.get("authorization") or ""
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else None
        try:
            result = self.server.standin.call(method, token, args)
        except _Disconnect:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        except SlackApiError as exc:
            self._answer(exc.status, {"ok": False, "error": exc.error}, exc.headers)
            return
        self._answer(200, result)

    def _fail(self, body: bytes) -> None:
        try:
            spec = json.loads(body or b"{}")
            self.server.standin.fail(
                str(spec["method"]),
                int(spec.get("times", 1)),
                error=str(spec.get("error", "ratelimited")),
                retry_after=int(spec.get("retry_after", 0)),
                mode=str(spec.get("mode", "error")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            self._answer(400, {"ok": False, "error": f"bad failure spec: {exc}"})
            return
        self._answer(200, {"ok": True})

    def _answer(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def version_string(self) -> str:
        return "gatehouse-local-slack"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)
