"""The approval message in Block Kit: what approvers see, built from an `ApprovalView`.

Everything an agent controls (its name, the statement, its reason, preview values) is escaped
before it goes into a `mrkdwn` text: Slack's control characters `&`, `<` and `>` become entities,
so no `<@U…>`, `<!channel>` or `<http…|…>` can form, and `verbatim: true` stops Slack from
auto-linking bare URLs and channel names. Only the owner's Slack user id, which Gatehouse holds in
its registry, is rendered as a mention.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Slack's limits (https://docs.slack.dev/reference/block-kit/): over them the API refuses the
# whole message with `invalid_blocks`, so every text is cut to fit.
SECTION_TEXT_LIMIT = 3000
FIELD_TEXT_LIMIT = 2000
MAX_FIELDS = 10
HEADER_TEXT_LIMIT = 150
CONTEXT_TEXT_LIMIT = 3000
MAX_CONTEXT_ELEMENTS = 10
BUTTON_TEXT_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000
MAX_BLOCKS = 50
MESSAGE_TEXT_LIMIT = 4000  # Slack truncates `text` past 40,000; a notification needs far less
MODAL_TITLE_LIMIT = 24
PRIVATE_METADATA_LIMIT = 3000
INPUT_MAX_LENGTH = 3000

ACTION_APPROVE = "gatehouse_approve"
ACTION_DENY = "gatehouse_deny"
ACTIONS_BLOCK_ID = "gatehouse_vote"
DENY_CALLBACK_ID = "gatehouse_deny_reason"
REASON_BLOCK_ID = "reason"
REASON_ACTION_ID = "reason"

# At most this many statements of a multi-statement request get their own preview section.
MAX_PREVIEW_STATEMENTS = 10
MAX_SAMPLE_ROWS = 5

_TRUNCATED = "…"
# A Slack user (U…) or Enterprise Grid user (W…) id: the only thing rendered as a mention.
_USER_ID = re.compile(r"^[UW][A-Z0-9_]{1,20}$")
# A trailing, cut-off entity such as "&am" left by truncation.
_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")

_STATUS_HEADLINES = {
    "pending_approval": ":hourglass_flowing_sand: Approval needed",
    "approved": ":white_check_mark: Approved",
    "executing": ":gear: Approved, running",
    "executed": ":white_check_mark: Approved and executed",
    "denied": ":no_entry: Denied",
    "expired": ":alarm_clock: Expired",
    "drifted": ":warning: Drifted (rolled back)",
    "failed": ":x: Failed",
}


@dataclass(frozen=True)
class ApprovalView:
    """What the approval message shows; the lead's approval code fills it from the request record."""

    request_id: str
    agent: str  # principal name
    owner: str | None  # the agent's owner (Slack user id), or None
    connection: str
    env: str | None
    statement: str  # masked SQL
    statement_class: str
    relations: tuple[str, ...]
    preview: dict[str, Any]  # gatehouse.preview.preview_statements' answer
    reason: str  # the agent's reason (masked)
    policy_ids: tuple[str, ...]
    groups: tuple[str, ...]  # approver groups required (one approval from each, `quorum` each)
    quorum: int
    expires_at: int  # epoch seconds
    status: str  # pending_approval | approved | executing | executed | denied | expired | drifted | failed
    votes: tuple[tuple[str, str, str], ...] = ()  # (approver name, "approve"|"deny", reason)
    outcome: str = ""  # one line when decided ("executed: 3 rows", "denied by alice: not now")


def escape(text: str) -> str:
    """Slack's escaping (https://docs.slack.dev/messaging/formatting-message-text/#escaping).

    `&` first, so the entities made for `<` and `>` are not escaped twice.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code_block(text: str, limit: int = SECTION_TEXT_LIMIT, *, prefix: str = "") -> str:
    """`prefix` then `text` in a ``` block that the text cannot close, within `limit` characters.

    A backtick in the text becomes U+02CB (modifier letter grave accent): it looks alike but can
    neither close the block nor open inline code. The stored command is unchanged (the approval
    pins its SHA-256); only what approvers read differs.
    """
    body = escape(text.replace("`", "\u02cb"))
    frame = len(prefix) + len("```\n\n```")
    if frame + len(body) > limit:
        note = f"\n{_TRUNCATED} ({len(text):,} characters in all)"
        body = _cut(body, max(0, limit - frame - len(note))) + note
    return f"{prefix}```\n{body}\n```"


def clip(text: str, limit: int) -> str:
    """Cut already-escaped mrkdwn (or plain text) to `limit` characters, never inside an entity."""
    if len(text) <= limit:
        return text
    return _cut(text, limit - len(_TRUNCATED)) + _TRUNCATED


def _cut(text: str, length: int) -> str:
    return _PARTIAL_ENTITY.sub("", text[:length])


def mention(user_id: str | None) -> str:
    """`<@U…>` for a Slack user id Gatehouse holds; anything else is shown as escaped text."""
    if not user_id:
        return "nobody"
    if _USER_ID.match(user_id):
        return f"<@{user_id}>"
    return escape(user_id)


def approval_blocks(view: ApprovalView) -> list[dict[str, Any]]:
    """The pending message: who asks, what, its impact, why, who must approve, and the buttons."""
    blocks = _body_blocks(view)
    blocks.append(
        {
            "type": "actions",
            "block_id": ACTIONS_BLOCK_ID,
            "elements": [
                _button("Approve", ACTION_APPROVE, view.request_id, style="primary"),
                _button("Deny", ACTION_DENY, view.request_id, style="danger"),
            ],
        }
    )
    return _cap_blocks(blocks)


def decided_blocks(view: ApprovalView) -> list[dict[str, Any]]:
    """The message once decided, expired or drifted: no buttons, and who decided and how."""
    blocks = _body_blocks(view)
    lines = [f"*{_headline(view.status)}*"]
    if view.outcome:
        lines.append(escape(view.outcome))
    for approver, decision, reason in view.votes:
        verb = "approved" if decision == "approve" else "denied"
        line = f"• {escape(approver)} {verb}"
        if reason:
            line += f": {escape(reason)}"
        lines.append(line)
    blocks.append({"type": "divider"})
    blocks.append(_section("\n".join(lines)))
    return _cap_blocks(blocks)


def message_blocks(view: ApprovalView) -> list[dict[str, Any]]:
    """The blocks for the view's status: buttons while pending, the decision afterwards."""
    return approval_blocks(view) if view.status == "pending_approval" else decided_blocks(view)


def approval_text(view: ApprovalView) -> str:
    """The plain fallback: notifications, screen readers, clients that cannot show blocks."""
    env = f" ({escape(view.env)})" if view.env else ""
    first_line = view.statement.strip().splitlines()[0] if view.statement.strip() else ""
    text = (
        f"{_headline(view.status)}: {escape(view.agent)} asks to run a {escape(view.statement_class)} "
        f"on {escape(view.connection)}{env}: {escape(first_line)}"
    )
    return clip(text, MESSAGE_TEXT_LIMIT)


def deny_modal(request_id: str) -> dict[str, Any]:
    """The modal Deny opens: it asks for a reason; `private_metadata` carries the request id."""
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK_ID,
        "private_metadata": request_id[:PRIVATE_METADATA_LIMIT],
        "title": _plain("Deny request", MODAL_TITLE_LIMIT),
        "submit": _plain("Deny", MODAL_TITLE_LIMIT),
        "close": _plain("Cancel", MODAL_TITLE_LIMIT),
        "blocks": [
            _section(f"Request `{escape(request_id)}`"),
            {
                "type": "input",
                "block_id": REASON_BLOCK_ID,
                "label": _plain("Why is it denied? The agent and the audit log see this.", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_ACTION_ID,
                    "multiline": True,
                    "min_length": 1,
                    "max_length": INPUT_MAX_LENGTH,
                },
            },
        ],
    }


def _body_blocks(view: ApprovalView) -> list[dict[str, Any]]:
    env = f" (`{escape(view.env)}`)" if view.env else ""
    owner = f", owned by {mention(view.owner)}" if view.owner else ""
    relations = ", ".join(f"`{escape(r)}`" for r in view.relations) or "none"
    fields = [
        f"*Agent*\n{escape(view.agent)}{owner}",
        f"*Connection*\n`{escape(view.connection)}`{env}",
        f"*Class*\n{escape(view.statement_class)}",
        f"*Relations*\n{relations}",
        f"*Approvers*\n{_approvers(view.groups, view.quorum)}",
        f"*Expires*\n{_date(view.expires_at)}",
    ]
    policies = ", ".join(f"`{escape(p)}`" for p in view.policy_ids) or "none"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": _plain(
                f"{_headline(view.status, emoji=False)}: {view.statement_class} on {view.connection}",
                HEADER_TEXT_LIMIT,
            ),
        },
        {"type": "section", "fields": [_mrkdwn(f, FIELD_TEXT_LIMIT) for f in fields[:MAX_FIELDS]]},
        _section(code_block(view.statement, prefix="*Statement*\n")),
        *_preview_blocks(view.preview),
        _section(
            "*Reason given by the agent*\n" + (_quote(view.reason) if view.reason.strip() else "_none_")
        ),
        {
            "type": "context",
            "elements": [
                _mrkdwn(f"Request `{escape(view.request_id)}`", CONTEXT_TEXT_LIMIT),
                _mrkdwn(f"Policy {policies}", CONTEXT_TEXT_LIMIT),
            ],
        },
    ]
    return blocks


def _preview_blocks(preview: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not preview:
        return [_section("*Impact preview*\n_none recorded_")]
    mode = str(preview.get("mode") or "explain")
    title = "*Impact preview* (dry run, rolled back)" if mode == "dry_run" else "*Impact preview* (EXPLAIN)"
    blocks = []
    notes = [title]
    if preview.get("fallback"):
        notes.append(f"_Dry run not used: {escape(str(preview['fallback']))}_")
    statements = list(preview.get("statements") or [])
    if not statements:
        notes.append("_no statement previewed_")
    blocks.append(_section("\n".join(notes)))
    numbered = len(statements) > 1
    for index, stmt in enumerate(statements[:MAX_PREVIEW_STATEMENTS], start=1):
        blocks.append(_section(_statement_preview(stmt, index if numbered else None)))
    if len(statements) > MAX_PREVIEW_STATEMENTS:
        blocks.append(_section(f"_{len(statements) - MAX_PREVIEW_STATEMENTS} more statements not shown_"))
    return blocks


def _statement_preview(stmt: Mapping[str, Any], index: int | None) -> str:
    label = f"Statement {index}: " if index is not None else ""
    affected, estimated = stmt.get("affected_rows"), stmt.get("estimated_rows")
    if isinstance(affected, int):
        head = f"{label}*would change {affected:,} row{'s' if affected != 1 else ''}*"
    elif isinstance(estimated, int):
        head = f"{label}planner estimates *{estimated:,} row{'s' if estimated != 1 else ''}*"
    else:
        head = f"{label}no row estimate"
    parts = [head]
    sample = stmt.get("sample_rows")
    if isinstance(sample, Mapping) and sample.get("columns"):
        parts.append(_sample_table(sample.get("columns") or [], sample.get("rows") or []))
    elif stmt.get("plan"):
        parts.append(str(stmt["plan"]))
    head_text = parts[0] + "\n"
    if len(parts) == 1:
        return clip(head_text.rstrip(), SECTION_TEXT_LIMIT)
    return code_block("\n".join(parts[1:]), SECTION_TEXT_LIMIT, prefix=head_text)


def _sample_table(columns: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    header = [str(c) for c in columns]
    body = [["NULL" if v is None else str(v) for v in row] for row in list(rows)[:MAX_SAMPLE_ROWS]]
    widths = [min(40, max([len(h)] + [len(r[i]) for r in body if i < len(r)])) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(c[:w].ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in body]
    return "sample of the rows it would change:\n" + "\n".join(out)


def _approvers(groups: Sequence[str], quorum: int) -> str:
    names = ", ".join(f"`{escape(g)}`" for g in groups) or "`-`"
    each = "one approval" if quorum <= 1 else f"{quorum} approvals"
    if len(groups) > 1:
        return f"{each} from each of {names}"
    return f"{each} from {names}"


def _date(epoch: int) -> str:
    # Slack shows <!date^…> in each reader's time zone; the fallback after | is UTC.
    fallback = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(epoch)}^{{date_short_pretty}} at {{time}}|{fallback}>"


def _quote(text: str) -> str:
    return "\n".join(f">{escape(line)}" for line in text.splitlines() or [""])


def _headline(status: str, *, emoji: bool = True) -> str:
    headline = _STATUS_HEADLINES.get(status, status)
    return headline if emoji else headline.split(" ", 1)[1]


def _button(text: str, action_id: str, value: str, *, style: str) -> dict[str, Any]:
    if len(value) > BUTTON_VALUE_LIMIT:
        # A request id is short; a value over the limit means a caller passed something else.
        raise ValueError("a button value holds at most 2,000 characters: pass the request id only")
    return {
        "type": "button",
        "text": _plain(text, BUTTON_TEXT_LIMIT),
        "action_id": action_id,
        "value": value,
        "style": style,
    }


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text, SECTION_TEXT_LIMIT)}


def _mrkdwn(text: str, limit: int) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": clip(text, limit), "verbatim": True}


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": clip(text, limit), "emoji": True}


def _cap_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The actions (or decision) block is last and must survive: drop preview sections before it.
    if len(blocks) <= MAX_BLOCKS:
        return blocks
    return [*blocks[: MAX_BLOCKS - 1], blocks[-1]]
