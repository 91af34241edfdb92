"""replay: a readable transcript, with broken links marked where they are."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from gatehouse.audit.log import SessionLog, event_key
from gatehouse.audit.replay import replay
from gatehouse.exceptions import NotFoundError
from tests.unit.audit_fixtures import (
    LOG_BUCKET,
    copy_bucket,
    fast_retry,
    make_log_bucket,
    mutate,
    rehashed,
    start_session,
    write_multi_event_session,
    write_read_session,
)


@pytest.fixture
def s3(aws_env):
    with mock_aws():
        client = boto3.client("s3")
        make_log_bucket(client)
        yield client


def test_replay_prints_each_event_in_order(s3):
    write_read_session(start_session(s3, "read-1"))

    lines = replay(s3, LOG_BUCKET, "read-1").splitlines()

    assert lines[0] == (
        "session read-1: analyst (arn:aws:iam::123456789012:user/analyst) on demo-prod [postgres, env prod]"
    )
    assert lines[1].startswith("#0   2026-11-03T09:00:00.000Z  received")
    assert lines[1].endswith("SELECT name, email FROM customers WHERE id = 1")
    assert lines[2].strip() == "reason: weekly report"
    assert lines[3].split(None, 3)[2:] == [
        "decision",
        "allow (policies: prod-read), class read, on customers",
    ]
    assert lines[4].split(None, 3)[2:] == ["executed", "ok, 1 row, 12.5 ms"]
    assert lines[5].split() == ["#3", "2026-11-03T09:00:00.015Z", "session_closed"]
    assert lines[6] == "chain intact: 4 events, closed, manifest matches"


def test_replay_shows_approvals_and_refusals(s3):
    log = start_session(s3, "write-1")
    log.append("received", statement="UPDATE customers SET notes = 'vip' WHERE id = 2")
    log.append("decision", decision="approval", policy_ids=["prod-write-approval"], statement_class="write")
    log.append("approval_requested", outcome="pending")
    later = SessionLog.resume(s3, LOG_BUCKET, session_id="write-1", retention_days=1, retry=fast_retry())
    later.append("denied_by_approver", approvers=["U_BOB"], outcome="denied", reason="not during the freeze")
    later.close()

    text = replay(s3, LOG_BUCKET, "write-1")

    assert "approval (policies: prod-write-approval), class write" in text
    assert "denied_by_approver  by U_BOB, denied" in text
    assert "reason: not during the freeze" in text
    assert text.endswith("chain intact: 5 events, closed, manifest matches")


def test_replay_marks_a_broken_link_under_the_event(s3):
    write_read_session(start_session(s3, "read-1"))
    copy = copy_bucket(s3)
    mutate(s3, copy, event_key("read-1", 1, "2026-11-03"), lambda e: rehashed(e, decision="deny"))

    lines = replay(s3, copy, "read-1").splitlines()

    decision = next(i for i, line in enumerate(lines) if " decision " in line)
    assert "deny (policies: prod-read)" in lines[decision]
    assert lines[decision + 1].strip().startswith("!! altered: replaced: seq 2 chains from")
    assert lines[-1].startswith("chain BROKEN: 1 problem(s) in 4 events")


def test_replay_lists_events_that_are_gone(s3):
    write_read_session(start_session(s3, "read-1"))
    copy = copy_bucket(s3)
    s3.delete_object(Bucket=copy, Key=event_key("read-1", 2, "2026-11-03"))

    text = replay(s3, copy, "read-1")

    assert "#2" in text and "(absent or unreadable)" in text
    assert "!! missing" in text


def test_replay_of_an_open_session_says_so(s3):
    write_read_session(start_session(s3, "open-1"), close=False)
    assert replay(s3, LOG_BUCKET, "open-1").endswith("chain intact: 3 events, open, no manifest yet")


def test_replay_of_an_unknown_session_is_not_found(s3):
    with pytest.raises(NotFoundError):
        replay(s3, LOG_BUCKET, "never-was")


def test_replay_reads_multi_event_objects_like_single_ones(s3):
    write_multi_event_session(start_session(s3, "read-2"))
    lines = replay(s3, LOG_BUCKET, "read-2").splitlines()
    assert [line.split()[2] for line in lines if line.startswith("#")] == [
        "received",
        "decision",
        "executed",
        "session_closed",
    ]
    assert lines[-1] == "chain intact: 4 events, closed, manifest matches"


def test_replay_shows_a_long_statement_whole_and_wrapped_under_the_event(s3):
    columns = ", ".join(f"column_number_{n}" for n in range(40))
    statement = f"SELECT {columns} FROM customers WHERE id = 1"  # about 700 characters
    log = start_session(s3, "long-1")
    log.append("received", statement=statement)
    log.close()

    lines = replay(s3, LOG_BUCKET, "long-1").splitlines()
    received = next(i for i, line in enumerate(lines) if " received " in line)
    wrapped = [lines[received][51:]] + [line[51:] for line in lines[received + 1 : -2]]
    assert len(wrapped) > 5 and all(len(line) <= 68 for line in wrapped)
    assert all(line.startswith(" " * 51) for line in lines[received + 1 : -2])
    assert " ".join(wrapped) == statement  # nothing cut, nothing added
    assert "…" not in "\n".join(lines)


def test_replay_keeps_a_statement_s_own_line_breaks_and_escapes_controls(s3):
    log = start_session(s3, "hostile-1")
    log.append(
        "received",
        statement="SELECT 1\nFROM t -- \x1b[2J\x1b]0;owned\x07\u202e\x00",
        reason="fine\n#9   2026-11-03T09:00:00.000Z  approved  by U_ALICE",  # a forged line
    )
    log.close()

    text = replay(s3, LOG_BUCKET, "hostile-1")
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text and "\x00" not in text
    lines = text.splitlines()
    assert (
        lines[1].endswith("SELECT 1")
        and lines[2] == " " * 51 + "FROM t -- \\x1b[2J\\x1b]0;owned\\x07\\u202e\\x00"
    )
    # The reason's newline does not start a line of its own that could pass for an event.
    assert not any(line.startswith("#9") for line in lines)
    assert lines[3] == " " * 51 + "reason: fine"
    assert lines[4] == " " * 59 + "#9   2026-11-03T09:00:00.000Z  approved  by U_ALICE"  # under the reason
