"""A session's events as a readable transcript, checked link by link as it is read.

    session 5f0c…: analyst (arn:aws:iam::123456789012:user/analyst) on demo-prod [postgres, env prod]
    #0   2026-11-24T07:05:00.123Z  received            SELECT email FROM customers
                                                       reason: weekly report
    #1   2026-11-24T07:05:00.131Z  decision            allow (policies: prod-read), class read, on customers
    #2   2026-11-24T07:05:00.152Z  executed            ok, 3 rows, 12.4 ms
    #3   2026-11-24T07:05:00.160Z  session_closed
    chain intact: 4 events, closed, manifest matches

A problem found by `verify` is printed under the event it concerns, marked `!!`.

Statements are shown whole, wrapped under the event's text. Everything taken from the log goes
through `gatehouse.terminal.safe_text`: an event is untrusted input (an agent wrote its SQL and
reason), and its control or bidi characters are shown as escapes, never sent to the terminal.
"""

from __future__ import annotations

import textwrap
from typing import Any

from gatehouse.audit import events
from gatehouse.audit.verify import Problem, check_session, load_objects
from gatehouse.exceptions import NotFoundError
from gatehouse.terminal import safe_text

_INDENT = " " * 51  # under the text after "#seq time kind"
# Wide enough for a statement to read as one, narrow enough for an 120-column terminal.
_TEXT_WIDTH = 68


def replay(s3_client: Any, bucket: str, session_id: str) -> str:
    """The transcript of one session (NotFoundError if the log has nothing for it)."""
    sessions, _ = load_objects(s3_client, bucket, session_id)
    objs = sessions[session_id]
    if not objs.objects and objs.manifest is None:
        raise NotFoundError(f"no session log for {session_id}")
    summary, problems = check_session(objs)

    by_seq: dict[int | None, list[Problem]] = {}
    for p in problems:
        by_seq.setdefault(p.seq, []).append(p)
    stored = sorted(
        (
            (line.seq, line.event)
            for o in objs.objects
            if o.state.current
            for line in o.lines
            if line.event is not None
        ),
        key=lambda item: item[0],
    )

    lines: list[str] = []
    if stored:
        lines.append(_header(session_id, stored[0][1]))
    else:
        lines.append(f"session {safe_text(session_id)}")
    shown: set[int] = set()
    for seq, event in stored:
        lines.extend(_event_lines(seq, event))
        lines.extend(_problem_lines(by_seq.get(seq, [])))
        shown.add(seq)
    for seq in sorted(s for s in by_seq if s is not None and s not in shown):
        lines.append(f"#{seq:<3}{'':26}(absent or unreadable)")
        lines.extend(_problem_lines(by_seq[seq]))
    lines.extend(_problem_lines(by_seq.get(None, [])))

    state = "closed" if summary.closed else "open"
    if summary.ok:
        manifest = "manifest matches" if summary.has_manifest else "no manifest yet"
        lines.append(f"chain intact: {summary.events} events, {state}, {manifest}")
    else:
        manifest = "manifest present" if summary.has_manifest else "no manifest"
        lines.append(
            f"chain BROKEN: {len(problems)} problem(s) in {summary.events} events, {state}, {manifest}"
        )
    return "\n".join(lines)


def _header(session_id: str, first: dict[str, Any]) -> str:
    where = ", ".join(
        x
        for x in (
            first.get("target_kind"),
            f"env {first['connection_env']}" if first.get("connection_env") else "",
        )
        if x
    )
    who = first.get("principal_name") or "?"
    arn = f" ({first['principal_arn']})" if first.get("principal_arn") else ""
    return safe_text(f"session {session_id}: {who}{arn} on {first.get('connection') or '?'} [{where}]")


def _event_lines(seq: int, event: dict[str, Any]) -> list[str]:
    head = f"#{seq:<3} {_one_line(event.get('time') or '?'):<25} {_one_line(event.get('kind') or '?'):<19}"
    kind = event.get("kind")
    parts: list[str] = []
    extra: list[str] = []
    if kind == events.EventKind.RECEIVED:
        statement = _wrapped(event.get("statement"))
        parts.append(statement[0])
        extra.extend(statement[1:])
    elif kind == events.EventKind.DECISION:
        policies = ", ".join(event.get("policy_ids") or []) or "none"
        parts.append(f"{event.get('decision')} (policies: {policies})")
        if event.get("statement_class"):
            parts.append(f"class {event['statement_class']}")
        if event.get("relations"):
            parts.append("on " + ", ".join(event["relations"]))
    else:
        if event.get("approvers"):
            parts.append("by " + ", ".join(event["approvers"]))
        if event.get("outcome"):
            parts.append(str(event["outcome"]))
        if event.get("row_count") is not None:
            rows = event["row_count"]
            parts.append(f"{rows} row" if rows == 1 else f"{rows} rows")
        if event.get("duration_ms") is not None:
            parts.append(f"{event['duration_ms']} ms")
        if event.get("error"):
            parts.append(f"error: {_one_line(event['error'])}")
        if event.get("statement") and kind in {events.EventKind.REFUSED, events.EventKind.APPROVAL_REQUESTED}:
            extra.extend(_wrapped(event["statement"]))
    if event.get("reason"):
        extra.extend(_wrapped(event["reason"], label="reason: "))
    line = (head + " " + ", ".join(_one_line(p) for p in parts if p)).rstrip()
    return [line] + [f"{_INDENT}{x}" for x in extra]


def _problem_lines(problems: list[Problem]) -> list[str]:
    # Details quote stored values (event ids, times, session ids of a planted object).
    return [f"     !! {p.kind.value}: {safe_text(p.detail)}" for p in problems]


def _one_line(text: Any) -> str:
    """One field on one line: its line breaks and controls are shown as escapes."""
    return safe_text(text) if text else ""


def _wrapped(text: Any, label: str = "") -> list[str]:
    """The whole text, its own line breaks kept, each line wrapped at `_TEXT_WIDTH`, never cut."""
    out: list[str] = []
    for raw in safe_text(str(text or ""), multiline=True).split("\n"):
        # Escaping first: the wrap measures what is printed, and never sees a control character.
        out.extend(textwrap.wrap(raw, _TEXT_WIDTH, break_long_words=True, break_on_hyphens=False))
    lines = out or [""]
    pad = " " * len(label)
    return [label + lines[0]] + [pad + line for line in lines[1:]]
