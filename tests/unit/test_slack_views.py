"""The approval message: what approvers see, and what an agent's text can never do to it."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from gatehouse.slack.views import (
    ACTION_APPROVE,
    ACTION_DENY,
    DENY_CALLBACK_ID,
    MAX_BLOCKS,
    REASON_ACTION_ID,
    REASON_BLOCK_ID,
    ApprovalView,
    approval_blocks,
    approval_text,
    code_block,
    decided_blocks,
    deny_modal,
    escape,
    message_blocks,
)

REQUEST_ID = "5b7c1d2e-0f4a-4b7e-9a51-2f7f0c9d1e33"


def view(**changes: Any) -> ApprovalView:
    base = ApprovalView(
        request_id=REQUEST_ID,
        agent="analyst",
        owner="U_BOB",
        connection="demo-prod",
        env="prod",
        statement="UPDATE customers SET notes = 'vip' WHERE id = 7",
        statement_class="write",
        relations=("public.customers",),
        preview={
            "mode": "explain",
            "statements": [
                {
                    "text": "UPDATE customers ...",
                    "estimated_rows": 1,
                    "plan": "Update on customers  (cost=0.15..8.17)",
                }
            ],
            "fallback": None,
        },
        reason="customer asked to be flagged",
        policy_ids=("prod-writes-need-dba",),
        groups=("dba",),
        quorum=1,
        expires_at=1_800_000_000,
        status="pending_approval",
    )
    return dataclasses.replace(base, **changes)


def texts(blocks: list[dict[str, Any]]) -> list[str]:
    """Every text a reader sees: section texts, fields, context elements, headers, buttons."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
                out.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(blocks)
    return out


def all_text(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(texts(blocks))


def buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"] if e["type"] == "button"]


# Slack's markup for mentions, broadcasts and links always starts with "<": with every "<" of
# agent text escaped, the only ones left are Gatehouse's own (the owner mention and the date).
SLACK_MARKUP = re.compile(r"<[^>]*>")


def markup(blocks: list[dict[str, Any]]) -> set[str]:
    return set(SLACK_MARKUP.findall(all_text(blocks)))


def test_the_message_shows_who_asks_what_where_and_why() -> None:
    blocks = approval_blocks(view())
    text = all_text(blocks)
    assert "analyst" in text and "<@U_BOB>" in text
    assert "`demo-prod`" in text and "`prod`" in text
    assert "UPDATE customers SET notes = 'vip' WHERE id = 7" in text
    assert "write" in text and "`public.customers`" in text
    assert "planner estimates *1 row*" in text and "Update on customers" in text
    assert "customer asked to be flagged" in text
    assert "`prod-writes-need-dba`" in text
    assert "one approval from `dba`" in text
    assert "<!date^1800000000^" in text and "2027-01-15 08:00 UTC" in text


def test_buttons_carry_the_request_id_and_nothing_else() -> None:
    approve, deny = buttons(approval_blocks(view()))
    assert (approve["action_id"], approve["value"], approve["style"]) == (
        ACTION_APPROVE,
        REQUEST_ID,
        "primary",
    )
    assert (deny["action_id"], deny["value"], deny["style"]) == (ACTION_DENY, REQUEST_ID, "danger")


@pytest.mark.parametrize(
    "hostile",
    [
        "<!channel> urgent, approve now",
        "<!here|here> <!everyone>",
        "<@U_ALICE> said it is fine",
        "<http://evil.example/approve|Approve here>",
        "<#C0123456|general>",
        "<!subteam^S123|@dba>",
    ],
)
def test_agent_text_cannot_mention_broadcast_or_link(hostile: str) -> None:
    # Given hostile markup in every field the agent controls
    v = view(agent=hostile, statement=f"SELECT 1 -- {hostile}", reason=hostile, relations=(hostile,))
    # When the message is built
    blocks = approval_blocks(v)
    # Then the only Slack markup is Gatehouse's own: the owner's mention and the expiry date
    assert {m for m in markup(blocks) if not m.startswith("<!date^")} == {"<@U_BOB>"}
    assert escape(hostile) in all_text(blocks)
    # and Slack is told not to auto-link bare URLs or channel names in any mrkdwn text
    mrkdwn = [n for b in blocks for n in _text_objects(b) if n["type"] == "mrkdwn"]
    assert mrkdwn and all(n.get("verbatim") is True for n in mrkdwn)


def _text_objects(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if node.get("type") in ("mrkdwn", "plain_text") else []
        return found + [x for v in node.values() for x in _text_objects(v)]
    if isinstance(node, list):
        return [x for v in node for x in _text_objects(v)]
    return []


def test_ampersand_and_angle_brackets_are_escaped_once() -> None:
    assert escape("a & b < c > d &amp;") == "a &amp; b &lt; c &gt; d &amp;amp;"
    text = all_text(approval_blocks(view(statement="SELECT 1 WHERE a < b AND c > d OR e & f")))
    assert "SELECT 1 WHERE a &lt; b AND c &gt; d OR e &amp; f" in text


def test_the_statement_cannot_close_its_code_block() -> None:
    # Given a statement that tries to end the code block and add its own markup after it
    breakout = "SELECT 1 ``` *APPROVED BY SECURITY* ``` <!channel>"
    blocks = approval_blocks(view(statement=breakout))
    statement_text = next(t for t in texts(blocks) if t.startswith("*Statement*"))
    # Then the section holds exactly one code block, opened and closed by Gatehouse
    assert statement_text.count("```") == 2
    assert statement_text.startswith("*Statement*\n```\n") and statement_text.endswith("\n```")
    assert "`" not in statement_text[len("*Statement*\n```\n") : -len("\n```")]
    assert "\u02cb\u02cb\u02cb *APPROVED BY SECURITY* \u02cb\u02cb\u02cb &lt;!channel&gt;" in statement_text


def test_an_owner_that_is_not_a_slack_user_id_is_not_a_mention() -> None:
    blocks = approval_blocks(view(owner="<!channel>"))
    assert "<@" not in all_text(blocks) and "<!channel>" not in all_text(blocks)
    assert "owned by &lt;!channel&gt;" in all_text(blocks)


def test_every_text_fits_slacks_limits() -> None:
    # Given everything as long as an agent could make it, and many previewed statements
    huge = "x" * 200_000 + "&" * 5000
    many = [
        {
            "text": huge,
            "affected_rows": 10**9,
            "sample_rows": {"columns": ["c" * 500] * 30, "rows": [[huge] * 30] * 50},
        }
        for _ in range(80)
    ]
    v = view(
        agent=huge,
        statement=huge,
        reason=huge,
        connection="c" * 500,
        relations=tuple(f"t{i}" for i in range(2000)),
        policy_ids=tuple(f"p{i}" for i in range(2000)),
        preview={"mode": "dry_run", "statements": many, "fallback": huge},
    )
    for blocks in (approval_blocks(v), decided_blocks(dataclasses.replace(v, status="denied", outcome=huge))):
        # Then no text is over its limit, the message has at most 50 blocks, and it is still
        # the same message: the statement's code block is closed and the buttons are there
        assert len(blocks) <= MAX_BLOCKS
        for block in blocks:
            limit = {"header": 150}.get(block["type"], 3000)
            if "text" in block:
                assert len(block["text"]["text"]) <= limit
            for f in block.get("fields", []):
                assert len(f["text"]) <= 2000
            for e in block.get("elements", []):
                if e["type"] in ("mrkdwn", "plain_text"):
                    assert len(e["text"]) <= 3000
                if e["type"] == "button":
                    assert len(e["text"]["text"]) <= 75 and len(e["value"]) <= 2000
        statement_text = next(t for t in texts(blocks) if t.startswith("*Statement*"))
        assert statement_text.endswith("\n```") and "characters in all" in statement_text
    assert [b["action_id"] for b in buttons(approval_blocks(v))] == [ACTION_APPROVE, ACTION_DENY]
    assert len(approval_text(v)) <= 4000


def test_a_long_statement_is_cut_inside_its_block_with_its_length_said() -> None:
    block = code_block("SELECT " + "a, " * 5000, 3000, prefix="*Statement*\n")
    assert len(block) <= 3000
    assert block.endswith("(15,007 characters in all)\n```")


@pytest.mark.parametrize("filler", ["", "x", "xx", "xxx", "xxxx"])
def test_a_cut_never_leaves_half_an_entity(filler: str) -> None:
    # Wherever the cut falls in a run of escaped characters, each entity is whole or gone.
    block = code_block(filler + "&" * 3000, 3000)
    body = block[len("```\n") : block.index("\n…")]
    assert re.fullmatch(filler + r"(&amp;)+", body)


def test_dry_run_preview_shows_affected_rows_and_masked_samples() -> None:
    preview = {
        "mode": "dry_run",
        "statements": [
            {
                "text": "UPDATE customers SET notes = 'x'",
                "estimated_rows": 40,
                "plan": "Update on customers",
                "affected_rows": 3,
                "sample_rows": {
                    "columns": ["id", "email"],
                    "rows": [[1, "***"], [2, "<!channel>"], [3, None]],
                },
            }
        ],
        "fallback": None,
    }
    text = all_text(approval_blocks(view(preview=preview)))
    assert "dry run, rolled back" in text
    assert "*would change 3 rows*" in text
    assert "id | email" in text and "2  | &lt;!channel&gt;" in text and "NULL" in text


def test_a_dry_run_that_fell_back_says_why() -> None:
    preview = {
        "mode": "explain",
        "statements": [{"text": "SELECT nextval('s')", "estimated_rows": None, "plan": "Result"}],
        "fallback": "calls nextval, which a rollback cannot undo",
    }
    text = all_text(approval_blocks(view(preview=preview)))
    assert "Dry run not used: calls nextval, which a rollback cannot undo" in text
    assert "no row estimate" in text


def test_two_groups_and_a_quorum_are_spelled_out() -> None:
    text = all_text(approval_blocks(view(groups=("dba", "security"), quorum=2)))
    assert "2 approvals from each of `dba`, `security`" in text


@pytest.mark.parametrize(
    ("status", "headline"),
    [
        ("executed", "Approved and executed"),
        ("denied", "Denied"),
        ("expired", "Expired"),
        ("drifted", "Drifted (rolled back)"),
    ],
)
def test_a_decided_message_has_no_buttons_and_says_who_decided_and_how(status: str, headline: str) -> None:
    v = view(
        status=status,
        votes=(("alice", "approve", ""), ("carol", "deny", "not during <!here> the freeze")),
        outcome="executed: 3 rows" if status == "executed" else f"{status}",
    )
    blocks = decided_blocks(v)
    assert buttons(blocks) == []
    assert blocks == message_blocks(v)
    text = all_text(blocks)
    assert f"{headline}*" in text
    assert "• alice approved" in text
    assert "• carol denied: not during &lt;!here&gt; the freeze" in text
    assert blocks[0]["type"] == "header" and headline in blocks[0]["text"]["text"]


def test_the_fallback_text_is_escaped_and_names_the_request() -> None:
    text = approval_text(view(agent="<!channel>", statement="DELETE FROM t -- <@U1>\nSELECT 2"))
    assert "<" not in text
    assert "&lt;!channel&gt; asks to run a write on demo-prod (prod): DELETE FROM t -- &lt;@U1&gt;" in text


def test_the_deny_modal_asks_for_a_reason_and_carries_the_request_id() -> None:
    modal = deny_modal(REQUEST_ID)
    assert modal["type"] == "modal" and modal["callback_id"] == DENY_CALLBACK_ID
    assert modal["private_metadata"] == REQUEST_ID
    assert len(modal["title"]["text"]) <= 24
    (field,) = [b for b in modal["blocks"] if b["type"] == "input"]
    assert field["block_id"] == REASON_BLOCK_ID and field["element"]["action_id"] == REASON_ACTION_ID
    assert field["element"]["min_length"] == 1
    json.dumps(modal)  # what views.open sends


def test_a_button_value_over_slacks_limit_is_refused() -> None:
    # A task token (longer than 2,000 characters) must never be put in a button.
    with pytest.raises(ValueError, match="request id only"):
        approval_blocks(view(request_id="t" * 2001))
