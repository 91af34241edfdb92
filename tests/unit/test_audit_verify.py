"""verify_log: each kind of tampering, done to a copy of the log (or as new versions in the original)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from gatehouse.audit import events
from gatehouse.audit.log import event_key, manifest_key
from gatehouse.audit.verify import ProblemKind, verify_log
from tests.unit.audit_fixtures import (
    COPY_BUCKET,
    LOG_BUCKET,
    SteppingClock,
    client_error,
    copy_bucket,
    make_log_bucket,
    mutate,
    read_json,
    rehashed,
    start_session,
    write_json,
    write_multi_event_session,
    write_read_session,
)

# CLOSED is a session as the log wrote them before objects held several events: one object per
# event (received, decision, executed, session_closed: seq 0..3) and a separate manifest.
CLOSED = "closed-1"
OTHER = "closed-2"
OPEN = "open-1"  # received, decision, approval_requested: one object each, not closed
# MULTI is today's API read: [received, decision] before the command, [executed, session_closed]
# before COMMIT, two objects whose closing event is the manifest.
MULTI = "multi-1"


def key(session_id: str, seq: int) -> str:
    return event_key(session_id, seq, "2026-11-03")


@pytest.fixture
def s3(aws_env):
    with mock_aws():
        client = boto3.client("s3")
        make_log_bucket(client)
        legacy = start_session(client, CLOSED)
        write_read_session(legacy, close=False)
        write_legacy_manifest(client, legacy.close())
        write_read_session(start_session(client, OTHER))
        write_multi_event_session(start_session(client, MULTI))
        log = start_session(client, OPEN)
        log.append("received", statement="UPDATE customers SET notes = 'x' WHERE id = 2")
        log.append("decision", decision="approval", policy_ids=["prod-write-approval"])
        log.append("approval_requested", outcome="pending")
        yield client


@pytest.fixture
def copy(s3):
    return copy_bucket(s3)


def write_legacy_manifest(s3, summary):
    """What `close` stored as manifests/<id>.json before the closing object carried the manifest."""
    body = (json.dumps(summary, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
    s3.put_object(
        Bucket=LOG_BUCKET,
        Key=manifest_key(summary["session_id"]),
        Body=body,
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1),
        ChecksumAlgorithm="SHA256",
    )


def found(report, session_id=CLOSED):
    return {(p.seq, p.kind) for p in report.problems if p.session_id == session_id}


def test_an_intact_log_verifies(s3, copy):
    for bucket in (LOG_BUCKET, copy):
        report = verify_log(s3, bucket)
        assert report.ok, report.format()
        by_id = {s.session_id: s for s in report.sessions}
        assert set(by_id) == {CLOSED, OTHER, OPEN, MULTI}
        assert by_id[CLOSED].closed and by_id[CLOSED].has_manifest and by_id[CLOSED].events == 4
        assert not by_id[OPEN].closed and not by_id[OPEN].has_manifest  # open is fine
        assert by_id[MULTI].closed and by_id[MULTI].has_manifest and by_id[MULTI].events == 4
        assert "chain and manifests intact" in report.format()


def test_one_session_can_be_verified_alone(s3):
    report = verify_log(s3, LOG_BUCKET, CLOSED)
    assert report.ok and [s.session_id for s in report.sessions] == [CLOSED]
    unknown = verify_log(s3, LOG_BUCKET, "never-was")
    assert not unknown.ok and unknown.problems[0].kind is ProblemKind.MISSING


def test_an_edited_event_no_longer_matches_its_hash(s3, copy):
    mutate(s3, copy, key(CLOSED, 2), lambda e: {**e, "row_count": 0})
    report = verify_log(s3, copy)
    assert found(report) == {(2, ProblemKind.ALTERED)}
    assert found(report, OTHER) == set()  # other sessions are unaffected


def test_a_rewritten_event_with_a_recomputed_hash_breaks_the_next_link(s3, copy):
    mutate(s3, copy, key(CLOSED, 1), lambda e: rehashed(e, decision="deny"))
    assert found(verify_log(s3, copy)) == {(1, ProblemKind.ALTERED)}


def test_a_rewritten_last_event_is_caught_by_the_manifest(s3, copy):
    mutate(s3, copy, key(CLOSED, 3), lambda e: rehashed(e, reason="nothing to see"))
    assert found(verify_log(s3, copy)) == {(3, ProblemKind.ALTERED)}


def test_a_deleted_event_is_missing(s3, copy):
    s3.delete_object(Bucket=copy, Key=key(CLOSED, 1))
    problems = found(verify_log(s3, copy))
    assert (1, ProblemKind.MISSING) in problems
    assert {kind for _, kind in problems} == {ProblemKind.MISSING}


def test_a_deleted_tail_is_missing_by_the_manifest(s3, copy):
    s3.delete_object(Bucket=copy, Key=key(CLOSED, 3))
    assert found(verify_log(s3, copy)) == {(3, ProblemKind.MISSING)}


def test_swapped_events_are_reordered(s3, copy):
    one, two = read_json(s3, copy, key(CLOSED, 1)), read_json(s3, copy, key(CLOSED, 2))
    write_json(s3, copy, key(CLOSED, 1), two)
    write_json(s3, copy, key(CLOSED, 2), one)
    problems = found(verify_log(s3, copy))
    assert (1, ProblemKind.REORDERED) in problems and (2, ProblemKind.REORDERED) in problems
    assert {kind for _, kind in problems} == {ProblemKind.REORDERED}


def test_an_event_moved_to_another_day_is_reordered(s3, copy):
    body = s3.get_object(Bucket=copy, Key=key(CLOSED, 1))["Body"].read()
    s3.delete_object(Bucket=copy, Key=key(CLOSED, 1))
    moved = event_key(CLOSED, 1, "2026-11-05")
    s3.put_object(Bucket=copy, Key=moved, Body=body)
    problems = found(verify_log(s3, copy))
    assert (1, ProblemKind.REORDERED) in problems  # under the wrong date
    assert (1, ProblemKind.MISSING) in problems  # the manifest's key is absent
    assert (1, ProblemKind.EXTRA) in problems  # and the moved key is not listed
    # Without a separate manifest, the date alone gives it away.
    moved_multi = event_key(MULTI, 2, "2026-11-05")
    s3.put_object(
        Bucket=copy, Key=moved_multi, Body=s3.get_object(Bucket=copy, Key=key(MULTI, 2))["Body"].read()
    )
    s3.delete_object(Bucket=copy, Key=key(MULTI, 2))
    assert found(verify_log(s3, copy), MULTI) == {(2, ProblemKind.REORDERED), (3, ProblemKind.REORDERED)}


def test_an_event_appended_after_close_is_extra(s3, copy):
    last = read_json(s3, copy, key(CLOSED, 3))
    forged = rehashed(last, seq=4, kind="executed", prev_hash=last["hash"], statement="DROP TABLE customers")
    write_json(s3, copy, key(CLOSED, 4), forged)
    assert found(verify_log(s3, copy)) == {(4, ProblemKind.EXTRA)}


def test_an_event_inserted_in_the_middle_is_caught(s3, copy):
    # The careful tamperer: shift seq 1.. up by one, slip a forged event in at seq 1.
    originals = [read_json(s3, copy, key(CLOSED, seq)) for seq in range(4)]
    for record in reversed(originals[1:]):
        write_json(s3, copy, key(CLOSED, record["seq"] + 1), record)
    forged = rehashed(originals[1], decision="allow", policy_ids=["made-up"], prev_hash=originals[0]["hash"])
    write_json(s3, copy, key(CLOSED, 1), forged)
    problems = found(verify_log(s3, copy))
    assert {(2, ProblemKind.REORDERED), (3, ProblemKind.REORDERED), (4, ProblemKind.EXTRA)} <= problems


def test_a_deleted_manifest_of_an_older_session_is_flagged(s3):
    s3.delete_object(Bucket=LOG_BUCKET, Key=manifest_key(CLOSED))  # a delete marker over the locked one
    assert found(verify_log(s3, LOG_BUCKET)) == {
        (None, ProblemKind.MISSING_MANIFEST),
        (None, ProblemKind.REWRITTEN),
    }


def test_an_edited_manifest_is_altered(s3, copy):
    manifest = read_json(s3, copy, manifest_key(CLOSED))
    edited = {**manifest, "event_count": 3, "last_seq": 2, "keys": manifest["keys"][:3]}
    s3.put_object(Bucket=copy, Key=manifest_key(CLOSED), Body=json.dumps(edited).encode())
    problems = found(verify_log(s3, copy))
    assert (None, ProblemKind.ALTERED) in problems  # its own hash
    assert (3, ProblemKind.EXTRA) in problems  # the closing event it no longer lists


def test_an_unreadable_manifest_is_reported_once(s3, copy):
    s3.put_object(Bucket=copy, Key=manifest_key(CLOSED), Body=b"truncated{")
    assert found(verify_log(s3, copy)) == {(None, ProblemKind.UNREADABLE)}


def test_an_event_from_another_session_is_extra(s3, copy):
    intruder = read_json(s3, copy, key(OTHER, 2))
    write_json(s3, copy, key(OPEN, 3), intruder)
    assert (3, ProblemKind.EXTRA) in found(verify_log(s3, copy), OPEN)


def test_garbage_objects_are_unreadable_or_outside_the_layout(s3, copy):
    s3.put_object(Bucket=copy, Key=key(CLOSED, 2), Body=b"{not json")
    s3.put_object(Bucket=copy, Key="events/notes.txt", Body=b"hello")
    report = verify_log(s3, copy)
    assert found(report) == {(2, ProblemKind.UNREADABLE)}
    assert any(p.session_id is None and p.kind is ProblemKind.EXTRA for p in report.problems)


def test_an_open_session_with_a_gap_is_missing(s3, copy):
    s3.delete_object(Bucket=copy, Key=key(OPEN, 1))
    assert found(verify_log(s3, copy), OPEN) == {(1, ProblemKind.MISSING)}


def test_in_the_locked_bucket_a_new_version_is_flagged_as_a_rewrite(s3):
    record = read_json(s3, LOG_BUCKET, key(CLOSED, 2))
    s3.put_object(
        Bucket=LOG_BUCKET,
        Key=key(CLOSED, 2),
        Body=events.serialize(rehashed(record, row_count=0)),
        ChecksumAlgorithm="SHA256",
    )
    problems = found(verify_log(s3, LOG_BUCKET))
    assert (2, ProblemKind.REWRITTEN) in problems
    assert (2, ProblemKind.ALTERED) in problems


def test_in_the_locked_bucket_a_delete_marker_is_flagged(s3):
    s3.delete_object(Bucket=LOG_BUCKET, Key=key(CLOSED, 1))  # allowed: it only hides the locked version
    problems = found(verify_log(s3, LOG_BUCKET))
    assert {(1, ProblemKind.REWRITTEN), (1, ProblemKind.MISSING)} <= problems


def test_the_report_serialises_for_json_output(s3, copy):
    s3.delete_object(Bucket=copy, Key=key(CLOSED, 1))
    data = verify_log(s3, copy).as_dict()
    assert data["ok"] is False
    assert {"session_id": CLOSED, "seq": 1, "kind": "missing"}.items() <= data["problems"][0].items()
    assert {s["session_id"] for s in data["sessions"]} == {CLOSED, OTHER, OPEN, MULTI}


def test_a_session_that_crossed_midnight_verifies(s3):
    clock = SteppingClock(
        datetime(2026, 11, 3, 23, 59, 59, 995000, tzinfo=UTC), step=timedelta(milliseconds=3)
    )
    write_read_session(start_session(s3, "late-1", clock=clock))
    report = verify_log(s3, LOG_BUCKET, "late-1")
    assert report.ok, report.format()
    assert report.sessions[0].events == 4
    assert COPY_BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


class WithoutVersionListing:
    """An auditor role without s3:ListBucketVersions."""

    def __init__(self, s3):
        self._s3 = s3

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def get_paginator(self, operation):
        if operation != "list_object_versions":
            return self._s3.get_paginator(operation)

        class Denied:
            def paginate(self, **kwargs):
                raise client_error("AccessDenied", 403, "ListObjectVersions")

        return Denied()


def test_without_version_listing_verify_still_checks_the_chain(s3, copy):
    auditor = WithoutVersionListing(s3)
    assert verify_log(auditor, LOG_BUCKET).ok
    assert verify_log(auditor, LOG_BUCKET, CLOSED).ok
    s3.delete_object(Bucket=copy, Key=key(CLOSED, 1))
    assert found(verify_log(auditor, copy)) == {(1, ProblemKind.MISSING)}


# -- objects holding several events ----------------------------------------------------------


def read_lines(s3, bucket, key):
    return [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]


def write_lines(s3, bucket, key, records):
    s3.put_object(Bucket=bucket, Key=key, Body=events.serialize_many(records))


def edit_lines(s3, bucket, key, change):
    write_lines(s3, bucket, key, change(read_lines(s3, bucket, key)))


def test_the_multi_event_session_is_two_objects_of_two_lines(s3):
    keys = sorted(
        o["Key"]
        for o in s3.list_objects_v2(Bucket=LOG_BUCKET, Prefix=f"events/dt=2026-11-03/session={MULTI}/")[
            "Contents"
        ]
    )
    assert keys == [key(MULTI, 0), key(MULTI, 2)]
    assert [e["kind"] for e in read_lines(s3, LOG_BUCKET, keys[1])] == ["executed", "session_closed"]
    assert s3.list_objects_v2(Bucket=LOG_BUCKET, Prefix=f"manifests/{MULTI}").get("KeyCount") == 0


def test_an_edited_line_inside_an_object_no_longer_matches_its_hash(s3, copy):
    edit_lines(s3, copy, key(MULTI, 0), lambda lines: [lines[0], {**lines[1], "decision": "deny"}])
    assert found(verify_log(s3, copy), MULTI) == {(1, ProblemKind.ALTERED)}


def test_a_rehashed_line_inside_an_object_breaks_the_next_link(s3, copy):
    edit_lines(s3, copy, key(MULTI, 0), lambda lines: [rehashed(lines[0], statement="SELECT 1"), lines[1]])
    assert found(verify_log(s3, copy), MULTI) == {(0, ProblemKind.ALTERED)}


def test_a_rehashed_outcome_in_the_closing_object_is_caught_by_the_closing_event(s3, copy):
    edit_lines(s3, copy, key(MULTI, 2), lambda lines: [rehashed(lines[0], row_count=0), lines[1]])
    assert found(verify_log(s3, copy), MULTI) == {(2, ProblemKind.ALTERED)}


def test_a_removed_line_is_caught(s3, copy):
    edit_lines(s3, copy, key(MULTI, 0), lambda lines: lines[:1])  # the decision is gone
    problems = found(verify_log(s3, copy), MULTI)
    assert (1, ProblemKind.MISSING) in problems
    assert {kind for _, kind in problems} == {ProblemKind.MISSING}


def test_a_removed_outcome_line_shifts_the_close_and_is_caught(s3, copy):
    edit_lines(s3, copy, key(MULTI, 2), lambda lines: lines[1:])  # hide that the read ran
    problems = found(verify_log(s3, copy), MULTI)
    assert (2, ProblemKind.REORDERED) in problems  # line 1 now holds seq 3
    assert not verify_log(s3, copy, MULTI).ok


def test_swapped_lines_are_reordered(s3, copy):
    edit_lines(s3, copy, key(MULTI, 0), lambda lines: [lines[1], lines[0]])
    problems = found(verify_log(s3, copy), MULTI)
    assert {(0, ProblemKind.REORDERED), (1, ProblemKind.REORDERED)} <= problems
    assert {kind for _, kind in problems} == {ProblemKind.REORDERED}


def test_an_extra_line_inside_an_object_is_caught(s3, copy):
    def insert(lines):
        forged = rehashed(
            lines[0], seq=1, kind="approved", approvers=["U_MALLORY"], prev_hash=lines[0]["hash"]
        )
        return [lines[0], forged, lines[1]]

    edit_lines(s3, copy, key(MULTI, 0), insert)
    problems = found(verify_log(s3, copy), MULTI)
    assert (2, ProblemKind.EXTRA) in problems  # the decision's line and the closing object both claim seq 2
    assert (2, ProblemKind.REORDERED) in problems  # and the decision is not where its seq says


def test_an_extra_line_after_the_closing_event_is_extra(s3, copy):
    def append(lines):
        closed = lines[-1]
        forged = rehashed(closed, seq=4, kind="executed", prev_hash=closed["hash"], statement="DROP TABLE x")
        return [*lines, forged]

    edit_lines(s3, copy, key(MULTI, 2), append)
    assert found(verify_log(s3, copy), MULTI) == {(4, ProblemKind.EXTRA)}


def test_a_cut_off_object_is_unreadable(s3, copy):
    body = s3.get_object(Bucket=copy, Key=key(MULTI, 2))["Body"].read()
    s3.put_object(Bucket=copy, Key=key(MULTI, 2), Body=body[:-20])
    problems = found(verify_log(s3, copy), MULTI)
    assert (2, ProblemKind.UNREADABLE) in problems and (3, ProblemKind.UNREADABLE) in problems


def test_an_empty_line_is_unreadable(s3, copy):
    body = s3.get_object(Bucket=copy, Key=key(MULTI, 0))["Body"].read()
    s3.put_object(Bucket=copy, Key=key(MULTI, 0), Body=body.replace(b"\n", b"\n\n", 1))
    assert (1, ProblemKind.UNREADABLE) in found(verify_log(s3, copy), MULTI)


def test_deleting_the_closing_object_in_the_locked_bucket_is_flagged(s3):
    s3.delete_object(Bucket=LOG_BUCKET, Key=key(MULTI, 2))  # hides the locked version: outcome and close
    assert found(verify_log(s3, LOG_BUCKET), MULTI) == {(2, ProblemKind.REWRITTEN)}


def test_an_overlapping_object_is_a_second_claim_on_its_seqs(s3, copy):
    lines = read_lines(s3, copy, key(MULTI, 0))
    forged = rehashed(lines[1], decision="allow", policy_ids=["made-up"])
    write_lines(s3, copy, key(MULTI, 1), [forged])
    assert (1, ProblemKind.EXTRA) in found(verify_log(s3, copy), MULTI)


def test_the_report_shows_a_planted_value_on_one_line_with_its_controls_escaped(s3, copy):
    intruder = rehashed(read_json(s3, copy, key(OTHER, 2)), session_id="evil\n  ok\x1b[2J")
    write_json(s3, copy, key(OPEN, 3), intruder)
    text = verify_log(s3, copy).format()
    assert "\x1b" not in text
    line = next(x for x in text.splitlines() if "evil" in x)
    assert line.endswith("holds an event of session evil\\n  ok\\x1b[2J")
