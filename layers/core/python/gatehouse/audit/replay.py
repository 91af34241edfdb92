"""A session's events as a readable transcript, checked link by link as it is read.

    session 5f0c…: analyst (arn:aws:iam::123456789012:user/analyst) on demo-prod [postgres, env prod]
    #0   2026-11-24T07:05:00.123Z  received            SELECT email FROM customers
                                                       reason: weekly report
    #1   2026-11-24T07:05:00.131Z  decision            allow (policies: prod-read), class read, on customers
    #2   2026-11-24T07:05:00.152Z  executed            ok, 3 rows, 12.4 ms
    #3   2026-11-24T07:05:00.160Z  session_closed
    chain intact: 4 events, closed, manifest matches

A problem found by `verify` is printed under the event it concerns, marked `!!`.
"""

from __future__ import annotations

from typing import Any

from gatehouse.audit import events
from gatehouse.audit.verify import Problem, check_session, load_objects
from gatehouse.exceptions import NotFoundError

_INDENT = " " * 51  # under the text after "#seq time kind"


def replay(s3_client: Any, bucket: str, session_id: str) -> str:
    """The transcript of one session (NotFoundError if the log has nothing for it)."""
    sessions, _ = load_objects(s3_client, bucket, session_id)
    objs = sessions[session_id]
    if not objs.events and objs.manifest is None:
        raise NotFoundError(f"no session log for {session_id}")
    summary, problems = check_session(objs)

    by_seq: dict[int | None, list[Problem]] = {}
    for p in problems:
        by_seq.setdefault(p.seq, []).append(p)
    stored = sorted(
        ((e.key.seq, e.event) for e in objs.events if e.state.current and e.event is not None),
        key=lambda item: item[0],
    )

    lines: list[str] = []
    if stored:
        lines.append(_header(session_id, stored[0][1]))
    else:
        lines.append(f"session {session_id}")
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
    return f"session {session_id}: {who}{arn} on {first.get('connection') or '?'} [{where}]"


def _event_lines(seq: int, event: dict[str, Any]) -> list[str]:
    head = f"#{seq:<3} {event.get('time') or '?':<25} {event.get('kind') or '?':<19}"
    kind = event.get("kind")
    parts: list[str] = []
    extra: list[str] = []
    if kind == events.EventKind.RECEIVED:
        parts.append(_one_line(event.get("statement")))
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
            extra.append(_one_line(event["statement"]))
    if event.get("reason"):
        extra.append(f"reason: {_one_line(event['reason'])}")
    line = (head + " " + ", ".join(p for p in parts if p)).rstrip()
    return [line] + [f"{_INDENT}{x}" for x in extra]


def _problem_lines(problems: list[Problem]) -> list[str]:
    return [f"     !! {p.kind.value}: {p.detail}" for p in problems]


def _one_line(text: Any, limit: int = 200) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
