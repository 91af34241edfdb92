"""The approvals console: Slack's approval channel, on the laptop.

    console = ApprovalsConsole(slack_api_url, interactions_url, signing_secret, approvers={...})
    url = console.start()   # http://127.0.0.1:PORT/
    ...
    console.stop()

One page lists the approval messages the Slack stand-in holds (what chat.postMessage posted and
chat.update changed), rendered from their Block Kit blocks as Slack would show them. You pick
which approver you are; Approve and Deny post to this server, which sends the interaction Slack
would send, correctly signed, to the API's `/slack/interactions` (the same path real Slack
calls), then shows the ephemeral reply the approver would see. The page polls every second, so
a decided request changes in place.

What it shows is hostile text (an agent wrote the statement and the reason): the page builds
its DOM with text nodes only, never HTML from data, and a Content-Security-Policy forbids
inline script, so markup in a statement stays characters on the screen.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from gatehouse.local.served import ServedOnLoopback
from gatehouse.local.slack_signing import (
    APPROVE_ACTION_ID,
    DENY_ACTION_ID,
    LOCAL_CHANNEL,
    InteractionAnswer,
    InteractionSendError,
    button_action,
    deny_submission,
    new_trigger_id,
    send_interaction,
)

log = logging.getLogger(__name__)

STANDIN_TIMEOUT_S = 5.0
REPLY_WAIT_S = 8.0
VIEW_WAIT_S = 3.0
POLL_S = 0.1
MAX_BODY = 16 * 1024
MAX_REASON = 3000  # Slack's plain_text_input max_length


# Gatehouse's reply to a vote is text only (Slack carries nothing else to the approver): these
# are the phrases of its refusals (gatehouse.approval_flow), so the page shows them in red and
# `gatehouse approve` exits non-zero.
REFUSAL_PATTERN = (
    r"refus|not a registered|may not|already|expired|no longer|needs a member|no policy|"
    r"there is no request|drifted|cannot|not allowed"
)


def unescape_slack(text: str) -> str:
    """Undo Slack's escaping of message text (`&` last, as it was escaped first)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def looks_refused(reply: str) -> bool:
    return re.search(REFUSAL_PATTERN, reply, re.IGNORECASE) is not None


class ConsoleError(RuntimeError):
    """The console could not start, or the Slack stand-in could not be read."""


# -- the Slack stand-in, read back ------------------------------------------------------------


@dataclass(frozen=True)
class StoredMessage:
    """One message of the stand-in as it reads now (after any chat.update), or an ephemeral reply."""

    channel: str
    ts: str
    text: str
    blocks: tuple[dict[str, Any], ...]
    ephemeral: bool = False
    user: str | None = None  # on an ephemeral reply: the only person who sees it
    # The request of any version's buttons: a decided message has lost them, not its request.
    about: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.ts)

    def headline(self) -> str:
        """The message's header block (its status, on ours), else its first line of text."""
        for block in self.blocks:
            text = block.get("text")
            if block.get("type") == "header" and isinstance(text, dict):
                return str(text.get("text") or "")
        return self.text.splitlines()[0] if self.text else ""

    @property
    def request_id(self) -> str | None:
        """The request whose Approve/Deny buttons the message carries now (None once decided)."""
        return _voted_request(self.blocks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "ts": self.ts,
            "text": self.text,
            "blocks": list(self.blocks),
            "ephemeral": self.ephemeral,
            "user": self.user,
        }

    @classmethod
    def from_standin(cls, raw: Mapping[str, Any]) -> StoredMessage:
        blocks = _blocks(raw.get("blocks"))
        ephemeral = raw.get("kind") == "ephemeral"
        about = _voted_request(blocks)
        for version in raw.get("versions") or []:
            if about is None and isinstance(version, dict):
                about = _voted_request(_blocks(version.get("blocks")))
        return cls(
            channel=str(raw.get("channel") or ""),
            ts=str(raw.get("ts") or ""),
            text=str(raw.get("text") or ""),
            blocks=blocks,
            ephemeral=ephemeral,
            user=str(raw["user"]) if ephemeral and raw.get("user") else None,
            about=None if ephemeral else about,
        )


def _blocks(value: Any) -> tuple[dict[str, Any], ...]:
    return tuple(b for b in value if isinstance(b, dict)) if isinstance(value, list) else ()


def _voted_request(blocks: tuple[dict[str, Any], ...]) -> str | None:
    """The value of the Approve (or Deny) button among `blocks`: our buttons carry the request id."""
    found: dict[str, str] = {}
    for block in blocks:
        elements = list(block.get("elements") or [])
        if isinstance(block.get("accessory"), dict):
            elements.append(block["accessory"])
        for el in elements:
            if isinstance(el, dict) and el.get("type") == "button" and el.get("action_id"):
                found[str(el["action_id"])] = str(el.get("value") or "")
    return found.get(APPROVE_ACTION_ID) or found.get(DENY_ACTION_ID) or None


class SlackStandin:
    """Reads what the Slack Web API stand-in (gatehouse.local.slack_api) keeps, over its read API."""

    def __init__(self, base_url: str, *, session: requests.Session | None = None) -> None:
        base = base_url.rstrip("/")
        # Accept the WebClient base URL (".../api/") as well as the stand-in's root.
        self.base_url = base[: -len("/api")] if base.endswith("/api") else base
        self._session = session

    def _get(self, path: str) -> Any:
        # A session per read unless one was given: the console's request threads share this.
        http = self._session or _direct_session()
        try:
            resp = http.get(self.base_url + path, timeout=STANDIN_TIMEOUT_S)
            resp.raise_for_status()
            return resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise ConsoleError(f"cannot read the Slack stand-in at {self.base_url}: {exc}") from exc
        finally:
            if http is not self._session:
                http.close()

    def messages(self) -> list[StoredMessage]:
        """Every message and ephemeral reply, newest posted first."""
        raw = self._get("/_standin/messages")
        items = raw if isinstance(raw, list) else []
        found = [StoredMessage.from_standin(m) for m in items if isinstance(m, dict)]
        return sorted(found, key=lambda m: _ts_order(m.ts), reverse=True)

    def views(self) -> list[dict[str, Any]]:
        """Modals opened with views.open, the latest first."""
        raw = self._get("/_standin/views")
        return [v for v in raw if isinstance(v, dict)] if isinstance(raw, list) else []

    def response_url(self, key: str) -> str:
        """Slack's `response_url` for an interaction (Gatehouse replies with chat.postEphemeral)."""
        return f"{self.base_url}/_standin/response/{urllib.parse.quote(key, safe='')}"

    def approval_message(self, request_id: str) -> StoredMessage | None:
        """The channel message about `request_id`, as it reads now."""
        for m in self.messages():
            if m.about == request_id:
                return m
        return None


def _ts_order(ts: str) -> tuple[int, int]:
    # Slack's ts is "<seconds>.<sequence>": compare both parts as numbers.
    head, _, tail = ts.partition(".")
    try:
        return int(head), int(tail or 0)
    except ValueError:
        return 0, 0


def _direct_session() -> requests.Session:
    # Loopback only: a proxy from the shell's environment must not see local traffic.
    session = requests.Session()
    session.trust_env = False
    return session


# -- voting, as a click in Slack would ----------------------------------------------------------


@dataclass(frozen=True)
class VoteOutcome:
    """What the approver saw after the click: Gatehouse's answer and its ephemeral reply."""

    http_status: int
    reply: str | None  # the ephemeral text (VoteResult.message), None if none came in time
    error: str | None = None  # why the interaction itself was refused (401, 404...), if it was
    message: StoredMessage | None = None  # the approval message as it reads afterwards

    @property
    def delivered(self) -> bool:
        return 200 <= self.http_status < 300

    @property
    def reply_text(self) -> str | None:
        """The reply as a person reads it: Slack's entities (&amp; &lt; &gt;) undone."""
        return unescape_slack(self.reply) if self.reply is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "http_status": self.http_status,
            "delivered": self.delivered,
            "reply": self.reply,
            "error": self.error,
            "message": self.message.as_dict() if self.message is not None else None,
        }


class Voter:
    """Sends one approver's Approve or Deny for a request, and waits for what Slack would show them."""

    def __init__(
        self,
        standin: SlackStandin,
        interactions_url: str,
        signing_secret: str,
        *,
        clock: Callable[[], float] = time.time,
        reply_wait_s: float = REPLY_WAIT_S,
    ) -> None:
        self.standin = standin
        self.interactions_url = interactions_url
        self._secret = signing_secret
        self._clock = clock
        self._reply_wait_s = reply_wait_s

    def vote(
        self, user_id: str, request_id: str, *, approve: bool, reason: str = "", user_name: str | None = None
    ) -> VoteOutcome:
        messages = self.standin.messages()
        seen = {m.key for m in messages if m.ephemeral}
        target = next((m for m in messages if m.about == request_id), None)
        trigger_id = new_trigger_id()
        payload = button_action(
            user_id,
            request_id,
            approve=approve,
            now=self._clock(),
            response_url=self.standin.response_url(trigger_id),
            channel=target.channel if target else LOCAL_CHANNEL,
            message_ts=target.ts if target else "",
            message=(
                {"type": "message", "ts": target.ts, "text": target.text, "blocks": list(target.blocks)}
                if target
                else None
            ),
            user_name=user_name,
            trigger_id=trigger_id,
        )
        answer = self._send(payload)
        if not answer.ok:
            return VoteOutcome(answer.status, None, error=_error_text(answer), message=target)
        if not approve:
            # As in Slack: the Deny click opens the reason modal (views.open with our trigger id),
            # and only its submission carries the reason. A refusal may come instead of a modal.
            view, reply = self._wait_for_modal(trigger_id, user_id, seen)
            if view is None:
                after = self.standin.approval_message(request_id)
                return VoteOutcome(answer.status, reply, message=after)
            answer = self._send(deny_submission(user_id, request_id, reason, view=view, user_name=user_name))
            if not answer.ok:
                return VoteOutcome(answer.status, None, error=_error_text(answer), message=target)
        reply = self._wait_for_reply(user_id, seen, self._reply_wait_s)
        after = self.standin.approval_message(request_id)
        return VoteOutcome(answer.status, reply, message=after)

    def _send(self, payload: dict[str, Any]) -> InteractionAnswer:
        return send_interaction(self.interactions_url, payload, self._secret, self._clock())

    def _wait_for_modal(
        self, trigger_id: str, user_id: str, seen: set[tuple[str, str]]
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The modal opened for this click, or (None, the reply) when Gatehouse answered instead."""
        deadline = time.monotonic() + VIEW_WAIT_S
        while True:
            for view in self.standin.views():
                if view.get("trigger_id") == trigger_id:
                    return view, None
            reply = self._new_reply(user_id, seen)
            if reply is not None or time.monotonic() >= deadline:
                return None, reply
            time.sleep(POLL_S)

    def _wait_for_reply(self, user_id: str, seen: set[tuple[str, str]], wait_s: float) -> str | None:
        deadline = time.monotonic() + wait_s
        while True:
            reply = self._new_reply(user_id, seen)
            if reply is not None or time.monotonic() >= deadline:
                return reply
            time.sleep(POLL_S)

    def _new_reply(self, user_id: str, seen: set[tuple[str, str]]) -> str | None:
        messages = self.standin.messages()
        fresh = [m for m in messages if m.ephemeral and m.user == user_id and m.key not in seen]
        if not fresh:
            return None
        oldest = fresh[-1]  # newest first: the first reply after the click
        return oldest.text or _blocks_text(oldest.blocks)


def _error_text(answer: InteractionAnswer) -> str:
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("message") or body.get("error")
        if detail:
            return f"{answer.status}: {detail}"
    return f"{answer.status}: {answer.body[:200]}"


def _blocks_text(blocks: tuple[dict[str, Any], ...]) -> str:
    parts = []
    for b in blocks:
        text = b.get("text")
        if isinstance(text, dict) and text.get("text"):
            parts.append(str(text["text"]))
    return "\n".join(parts)


# -- the web page and its backend ---------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # joined by server_close(): a vote in flight finishes first
    console: ApprovalsConsole


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing idles past stop()

    def do_GET(self) -> None:
        self.server.console._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.console._handle(self, "POST")

    def version_string(self) -> str:
        return "gatehouse-console"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("console: " + format, *args)


SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


class ApprovalsConsole(ServedOnLoopback):
    """The console's HTTP server on 127.0.0.1 (a free port unless told): `start()`, `stop()`."""

    def __init__(
        self,
        slack_api_url: str,
        interactions_url: str,
        signing_secret: str,
        *,
        approvers: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        reply_wait_s: float = REPLY_WAIT_S,
    ) -> None:
        if not signing_secret:
            raise ConsoleError("the console needs the Slack app's signing secret")
        self.standin = SlackStandin(slack_api_url)
        self.voter = Voter(
            self.standin, interactions_url, signing_secret, clock=clock, reply_wait_s=reply_wait_s
        )
        self.approvers = dict(approvers or {})  # Slack user id -> display name
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise ConsoleError("the console is not running")
        return f"http://{self._host}:{self._server.server_address[1]}/"

    def start(self) -> str:
        if self._server is not None:
            return self.url
        try:
            server = _Server((self._host, self._port), _Handler)
        except OSError as exc:
            raise ConsoleError(f"cannot listen on {self._host}:{self._port}: {exc}") from exc
        server.console = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="approvals-console", daemon=True)
        self._thread.start()
        return self.url

    # -- requests -------------------------------------------------------------------------------

    def _handle(self, req: _Handler, method: str) -> None:
        path = urllib.parse.urlsplit(req.path).path
        try:
            if not self._same_origin(req):
                self._send(req, 403, b'{"error":"forbidden"}', "application/json")
            elif method == "GET" and path == "/":
                self._send(req, 200, PAGE_HTML.encode(), "text/html; charset=utf-8")
            elif method == "GET" and path == "/console.js":
                script = PAGE_JS.replace("__REFUSAL_PATTERN__", json.dumps(REFUSAL_PATTERN))
                self._send(req, 200, script.encode(), "text/javascript; charset=utf-8")
            elif method == "GET" and path == "/console.css":
                self._send(req, 200, PAGE_CSS.encode(), "text/css; charset=utf-8")
            elif method == "GET" and path == "/api/state":
                self._json(req, 200, self.state())
            elif method == "POST" and path == "/api/vote":
                self._vote(req)
            else:
                self._json(req, 404, {"error": "not_found"})
        except ConsoleError as exc:
            self._json(req, 502, {"error": "slack_standin_unavailable", "message": str(exc)})
        except InteractionSendError as exc:
            self._json(req, 502, {"error": exc.code, "message": exc.message})

    def _same_origin(self, req: _Handler) -> bool:
        # The console casts votes with the app's signing secret: a page on another origin (or a
        # DNS-rebinding host name) must not be able to make a browser vote through it.
        assert self._server is not None
        port = self._server.server_address[1]
        allowed = {f"127.0.0.1:{port}", f"localhost:{port}"}
        if req.headers.get("Host") not in allowed:
            return False
        origin = req.headers.get("Origin")
        return origin is None or origin in {f"http://{h}" for h in allowed}

    def state(self) -> dict[str, Any]:
        channel = [
            {**m.as_dict(), "request_id": m.about, "pending": m.request_id is not None}
            for m in self.standin.messages()
            if not m.ephemeral
        ]
        return {
            "approvers": [{"id": k, "name": v} for k, v in self.approvers.items()],
            "messages": channel,
        }

    def _vote(self, req: _Handler) -> None:
        if req.headers.get_content_type() != "application/json":
            # A cross-site form can send text/plain without a preflight; JSON needs one we never grant.
            self._json(req, 415, {"error": "unsupported_media_type"})
            return
        length = int(req.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._json(req, 400, {"error": "bad_request", "message": "a JSON body of at most 16 KiB"})
            return
        try:
            body = json.loads(req.rfile.read(length))
        except ValueError:
            self._json(req, 400, {"error": "bad_request", "message": "the body is not JSON"})
            return
        user = body.get("user") if isinstance(body, dict) else None
        request_id = body.get("request_id") if isinstance(body, dict) else None
        decision = body.get("decision") if isinstance(body, dict) else None
        reason = body.get("reason", "") if isinstance(body, dict) else ""
        if not (isinstance(user, str) and user and isinstance(request_id, str) and request_id):
            self._json(req, 400, {"error": "bad_request", "message": "user and request_id are required"})
            return
        if decision not in ("approve", "deny") or not isinstance(reason, str) or len(reason) > MAX_REASON:
            self._json(req, 400, {"error": "bad_request", "message": "decision approve|deny, reason text"})
            return
        if decision == "deny" and not reason.strip():
            self._json(req, 400, {"error": "bad_request", "message": "a denial needs a reason"})
            return
        outcome = self.voter.vote(
            user, request_id, approve=decision == "approve", reason=reason, user_name=self.approvers.get(user)
        )
        self._json(req, 200, outcome.as_dict())

    def _json(self, req: _Handler, status: int, body: Any) -> None:
        self._send(req, status, json.dumps(body).encode(), "application/json")

    @staticmethod
    def _send(req: _Handler, status: int, data: bytes, content_type: str) -> None:
        req.send_response(status)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(data)))
        for name, value in SECURITY_HEADERS:
            req.send_header(name, value)
        req.end_headers()
        req.wfile.write(data)


PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Gatehouse approvals (local)</title>
<link rel="stylesheet" href="/console.css">
<script src="/console.js" defer></script>
</head>
<body>
<header>
  <h1>#approvals <small>Gatehouse local Slack stand-in</small></h1>
  <label>You are <select id="approver"></select></label>
</header>
<div id="reply" role="status" hidden></div>
<main>
  <section><h2>Pending</h2><div id="pending"><p class="empty">Loading…</p></div></section>
  <section><h2>Recent</h2><div id="recent"></div></section>
</main>
<dialog id="deny-modal">
  <form id="deny-form" method="dialog">
    <h3>Deny request</h3>
    <p>Request <code id="deny-request"></code></p>
    <label for="deny-reason">Why are you denying it?</label>
    <textarea id="deny-reason" maxlength="3000" rows="3" required></textarea>
    <div class="modal-buttons">
      <button type="button" id="deny-cancel">Cancel</button>
      <button type="submit" id="deny-submit" class="danger">Deny</button>
    </div>
  </form>
</dialog>
</body>
</html>
"""

PAGE_CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #1d1c1d; }
header { background: #3f0e40; color: #fff; padding: 10px 20px; display: flex;
  justify-content: space-between; align-items: center; }
header h1 { font-size: 18px; margin: 0; } header small { font-weight: normal; opacity: .7; }
main { padding: 0 20px 40px; max-width: 900px; }
h2 { font-size: 14px; text-transform: uppercase; color: #616061; margin-top: 24px; }
.message { border: 1px solid #ddd; border-radius: 8px; padding: 12px 16px; margin: 10px 0; }
.message.decided { background: #f8f8f8; }
.meta { color: #616061; font-size: 12px; margin-bottom: 6px; }
pre { background: #f6f6f6; border: 1px solid #e0e0e0; border-radius: 4px; padding: 8px;
  white-space: pre-wrap; word-break: break-word; font: 13px Monaco, Menlo, monospace; }
code { background: #f6f6f6; border: 1px solid #e0e0e0; border-radius: 3px; padding: 0 3px;
  font: 12px Monaco, Menlo, monospace; color: #e01e5a; }
.fields { display: grid; grid-template-columns: 1fr 1fr; gap: 6px 20px; margin: 6px 0; }
.context { color: #616061; font-size: 12px; }
.mention { background: #e8f5fa; color: #1264a3; border-radius: 3px; padding: 0 2px; }
.actions { margin-top: 8px; display: flex; gap: 8px; }
button { font: inherit; font-weight: bold; padding: 4px 14px; border-radius: 4px;
  border: 1px solid #bbb; background: #fff; cursor: pointer; }
button.primary { background: #007a5a; color: #fff; border-color: #007a5a; }
button.danger { background: #e01e5a; color: #fff; border-color: #e01e5a; }
button:disabled { opacity: .5; cursor: default; }
#reply { margin: 12px 20px; padding: 10px 14px; border-radius: 6px; background: #e8f5fa;
  border-left: 4px solid #1264a3; white-space: pre-wrap; }
#reply.refused { background: #fdecea; border-left-color: #e01e5a; }
#reply .who { display: block; color: #616061; font-size: 12px; }
dialog { border: none; border-radius: 8px; box-shadow: 0 4px 24px rgba(0,0,0,.3); width: 460px; }
dialog textarea { width: 100%; box-sizing: border-box; font: inherit; }
.modal-buttons { display: flex; justify-content: flex-end; gap: 8px; margin-top: 10px; }
.empty { color: #616061; font-style: italic; }
blockquote { margin: 2px 0; padding-left: 10px; border-left: 4px solid #ddd; }
"""

# Everything from the stand-in is rendered with createElement/textContent: no innerHTML, so a
# statement such as `</pre><script>` is shown, never parsed.
PAGE_JS = r"""
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let lastState = "";
  let denyFor = null;
  // How the page tells a refusal (shown in red) from an accepted vote in Gatehouse's reply.
  const REFUSAL = new RegExp(__REFUSAL_PATTERN__, "i");

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  // Slack escapes &, < and > in message text; what is left between < and > is markup.
  function unescapeSlack(s) {
    return s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
  }

  function controlSequence(inner, parent) {
    const [target, label] = inner.split("|", 2);
    if (target.startsWith("@")) {
      parent.appendChild(el("span", "mention", "@" + (label || target.slice(1))));
    } else if (target.startsWith("#")) {
      parent.appendChild(el("span", "mention", "#" + (label || target.slice(1))));
    } else if (target.startsWith("!date^") || target.startsWith("!subteam^")) {
      parent.appendChild(document.createTextNode(unescapeSlack(label || "")));
    } else if (target.startsWith("!")) {
      parent.appendChild(el("span", "mention", "@" + (label || target.slice(1).split("^")[0])));
    } else if (/^https?:\/\//i.test(target)) {
      const a = el("a", null, unescapeSlack(label || target));
      a.href = unescapeSlack(target);
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      parent.appendChild(a);
    } else {
      parent.appendChild(document.createTextNode(unescapeSlack(label || target)));
    }
  }

  const INLINE = /(`[^`\n]+`)|(<[^<>\n]+>)|(\*[^*\n]+\*)|(_[^_\n]+_)|(~[^~\n]+~)|(:[a-z0-9_+-]+:)/;
  const EMOJI = {
    // Symbols the common text fonts have (a headless browser may have no colour emoji font).
    hourglass_flowing_sand: "\u231b", white_check_mark: "\u2714", gear: "\u2699",
    no_entry: "\u26d4", alarm_clock: "\u23f0", warning: "\u26a0", x: "\u2716",
  };

  function inline(text, parent) {
    let rest = text;
    while (rest.length) {
      const m = INLINE.exec(rest);
      if (!m) { parent.appendChild(document.createTextNode(unescapeSlack(rest))); break; }
      if (m.index) parent.appendChild(document.createTextNode(unescapeSlack(rest.slice(0, m.index))));
      const tok = m[0];
      const body = tok.slice(1, -1);
      if (m[1]) parent.appendChild(el("code", null, unescapeSlack(body)));
      else if (m[2]) controlSequence(body, parent);
      else if (m[6]) parent.appendChild(document.createTextNode(EMOJI[body] || tok));
      else {
        const node = el(m[3] ? "b" : m[4] ? "i" : "s");
        inline(body, node);
        parent.appendChild(node);
      }
      rest = rest.slice(m.index + tok.length);
    }
  }

  function mrkdwn(text, parent) {
    const parts = String(text).split("```");
    parts.forEach((part, i) => {
      if (i % 2 === 1) {
        parent.appendChild(el("pre", null, unescapeSlack(part.replace(/^\n/, ""))));
        return;
      }
      part.split("\n").forEach((line, j) => {
        if (line.startsWith(">")) {
          const quote = el("blockquote");
          inline(line.slice(1), quote);
          parent.appendChild(quote);
          return;
        }
        const afterQuote = parent.lastChild && parent.lastChild.nodeName === "BLOCKQUOTE";
        if (j && !afterQuote) parent.appendChild(el("br"));
        inline(line, parent);
      });
    });
  }

  function textObject(obj, parent) {
    if (!obj) return;
    if (obj.type === "mrkdwn") mrkdwn(obj.text || "", parent);
    else parent.appendChild(document.createTextNode(obj.text || ""));
  }

  function button(b, msg) {
    const node = el("button", b.style || null);
    textObject(b.text, node);
    node.dataset.actionId = b.action_id || "";
    node.dataset.requestId = b.value || "";
    if (b.action_id === "gatehouse_approve") {
      node.addEventListener("click", () => vote(b.value, "approve", ""));
    } else if (b.action_id === "gatehouse_deny") {
      node.addEventListener("click", () => openDeny(b.value));
    } else {
      node.disabled = true;
    }
    if (!msg.pending) node.disabled = true;
    return node;
  }

  function richText(elements, parent) {
    (elements || []).forEach((section) => {
      const box = el(section.type === "rich_text_preformatted" ? "pre" : "div");
      (section.elements || []).forEach((item) => {
        if (item.type === "text") box.appendChild(document.createTextNode(item.text || ""));
        else if (item.type === "link") box.appendChild(document.createTextNode(item.text || item.url || ""));
        else if (item.type === "user") box.appendChild(el("span", "mention", "@" + (item.user_id || "")));
      });
      parent.appendChild(box);
    });
  }

  function block(b, msg) {
    const box = el("div", "block block-" + (b.type || "unknown"));
    switch (b.type) {
      case "header": box.appendChild(el("h3", null, (b.text && b.text.text) || "")); break;
      case "divider": box.appendChild(el("hr")); break;
      case "section": {
        if (b.text) { const t = el("div", "text"); textObject(b.text, t); box.appendChild(t); }
        if (b.fields) {
          const grid = el("div", "fields");
          b.fields.forEach((f) => { const c = el("div"); textObject(f, c); grid.appendChild(c); });
          box.appendChild(grid);
        }
        if (b.accessory && b.accessory.type === "button") box.appendChild(button(b.accessory, msg));
        break;
      }
      case "context": {
        const c = el("div", "context");
        (b.elements || []).forEach((e, i) => {
          if (i) c.appendChild(document.createTextNode("  ·  "));
          if (e.type === "image") c.appendChild(document.createTextNode(e.alt_text || ""));
          else textObject(e, c);
        });
        box.appendChild(c);
        break;
      }
      case "actions": {
        const row = el("div", "actions");
        (b.elements || []).forEach((e) => { if (e.type === "button") row.appendChild(button(e, msg)); });
        box.appendChild(row);
        break;
      }
      case "rich_text": richText(b.elements, box); break;
      default: box.appendChild(el("div", "context", "[" + (b.type || "?") + " block]"));
    }
    return box;
  }

  function card(msg) {
    const node = el("article", "message" + (msg.pending ? " pending" : " decided"));
    node.dataset.requestId = msg.request_id || "";
    node.dataset.ts = msg.ts;
    const posted = new Date(parseFloat(msg.ts) * 1000);
    node.appendChild(el("div", "meta", "Gatehouse APP  " + posted.toLocaleTimeString()));
    if (msg.blocks && msg.blocks.length) msg.blocks.forEach((b) => node.appendChild(block(b, msg)));
    else { const t = el("div", "text"); mrkdwn(msg.text || "", t); node.appendChild(t); }
    return node;
  }

  function fill(target, messages, emptyText) {
    target.replaceChildren();
    if (!messages.length) target.appendChild(el("p", "empty", emptyText));
    messages.forEach((m) => target.appendChild(card(m)));
  }

  function render(state) {
    const select = $("approver");
    if (!select.options.length) {
      state.approvers.forEach((a) => {
        const o = el("option", null, a.id + (a.name ? " (" + a.name + ")" : ""));
        o.value = a.id;
        select.appendChild(o);
      });
    }
    fill($("pending"), state.messages.filter((m) => m.pending), "Nothing waiting for approval.");
    fill($("recent"), state.messages.filter((m) => !m.pending), "No decided requests yet.");
  }

  async function refresh() {
    try {
      const resp = await fetch("/api/state", { cache: "no-store" });
      const text = await resp.text();
      if (!resp.ok) { showReply("The console cannot read the Slack stand-in: " + text, true); return; }
      if (text !== lastState) { lastState = text; render(JSON.parse(text)); }
      document.body.dataset.loaded = "1";
    } catch (err) {
      showReply("The console is not answering: " + err, true);
    }
  }

  function showReply(text, refused, who) {
    const box = $("reply");
    box.replaceChildren();
    if (who) box.appendChild(el("span", "who", who));
    mrkdwn(text, box);
    box.className = refused ? "refused" : "ok";
    box.hidden = false;
  }

  async function vote(requestId, decision, reason) {
    const user = $("approver").value;
    document.querySelectorAll("button").forEach((b) => {
      if (b.dataset.requestId === requestId) b.disabled = true;
    });
    showReply("Sending " + decision + " as " + user + "…", false);
    try {
      const resp = await fetch("/api/vote", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user: user, request_id: requestId, decision: decision, reason: reason || "" }),
      });
      const out = await resp.json();
      const who = "Only visible to you (" + user + ")";
      if (!resp.ok) showReply("The console refused: " + (out.message || out.error), true, who);
      else if (!out.delivered) showReply("Gatehouse refused the interaction (" + out.error + ")", true, who);
      else if (out.reply) showReply(out.reply, REFUSAL.test(out.reply), who);
      else showReply("Sent; no reply from Gatehouse yet.", false, who);
    } catch (err) {
      showReply("The vote could not be sent: " + err, true);
    }
    lastState = "";
    refresh();
  }

  function openDeny(requestId) {
    denyFor = requestId;
    $("deny-request").textContent = requestId;
    $("deny-reason").value = "";
    $("deny-modal").showModal();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("deny-cancel").addEventListener("click", () => $("deny-modal").close());
    $("deny-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const reason = $("deny-reason").value.trim();
      if (!reason) return;
      $("deny-modal").close();
      vote(denyFor, "deny", reason);
    });
    refresh();
    setInterval(refresh, 1000);
  });
})();
"""
