"""SessionLog against moto's S3: the chain, the key layout, Object Lock, several events to an object,
closing, resume, faults."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from moto import mock_aws

from gatehouse.audit import events
from gatehouse.audit.log import (
    ChainConflictError,
    RetryPolicy,
    SessionClosedError,
    SessionLog,
    call_with_retry,
    is_retryable,
)
from gatehouse.audit.verify import verify_log
from gatehouse.exceptions import AuditWriteError, NotFoundError
from tests.unit.audit_fixtures import (
    ACCESS_DENIED,
    AGENT_ARN,
    INTERNAL,
    LOG_BUCKET,
    NO_ENDPOINT,
    SLOW_DOWN,
    FaultyS3,
    RecordedSleeps,
    SteppingClock,
    client_error,
    fast_retry,
    make_log_bucket,
    read_json,
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


def stored_keys(s3, prefix="events/"):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=LOG_BUCKET, Prefix=prefix).get("Contents", []))


# -- the chain and the layout --------------------------------------------------------------------


def test_each_event_is_one_object_chained_to_the_previous_one(s3):
    log = start_session(s3)
    written = write_read_session(log, close=False)

    keys = stored_keys(s3)
    assert keys == [f"events/dt=2026-11-03/session=sess-1/{seq:08d}.json" for seq in range(3)]
    stored = [read_json(s3, LOG_BUCKET, key) for key in keys]
    assert stored == written
    assert [e["seq"] for e in stored] == [0, 1, 2]
    assert stored[0]["prev_hash"] == events.GENESIS_HASH
    for prev, event in itertools.pairwise(stored):
        assert event["prev_hash"] == prev["hash"]
    for event in stored:
        assert events.event_hash(event) == event["hash"]
    assert log.next_seq == 3 and log.last_hash == stored[-1]["hash"]


def test_stored_objects_are_single_json_lines(s3):
    start_session(s3).append("received", statement="SELECT 1")
    body = s3.get_object(Bucket=LOG_BUCKET, Key=stored_keys(s3)[0])["Body"].read()
    assert body.endswith(b"\n") and body.count(b"\n") == 1


def test_session_fields_are_copied_into_every_event_and_env_sticks_once_known(s3):
    log = start_session(s3)
    first = log.append("received", statement="SELECT 1")
    second = log.append("decision", decision="allow", connection_env="prod")
    third = log.append("executed", outcome="ok", row_count=0, request_id="stmt-2")

    for event in (first, second, third):
        assert event["principal_arn"] == AGENT_ARN and event["principal_name"] == "analyst"
        assert event["connection"] == "demo-prod" and event["target_kind"] == "postgres"
        assert event["session_id"] == "sess-1"
    assert first["connection_env"] is None
    assert second["connection_env"] == third["connection_env"] == "prod"
    assert (first["request_id"], third["request_id"]) == ("sess-1", "stmt-2")


def test_dt_partition_follows_each_event_time_across_midnight(s3):
    clock = SteppingClock(
        datetime(2026, 11, 3, 23, 59, 59, 990000, tzinfo=UTC), step=timedelta(milliseconds=20)
    )
    log = start_session(s3, clock=clock)
    log.append("received", statement="SELECT 1")
    log.append("decision", decision="allow")

    assert stored_keys(s3) == [
        "events/dt=2026-11-03/session=sess-1/00000000.json",
        "events/dt=2026-11-04/session=sess-1/00000001.json",
    ]


def test_unknown_fields_and_log_managed_fields_are_refused(s3):
    log = start_session(s3)
    with pytest.raises(ValueError, match="colour"):
        log.append("received", colour="blue")
    with pytest.raises(ValueError, match="seq"):
        log.append("received", seq=7)
    with pytest.raises(ValueError, match="close"):
        log.append("session_closed")
    with pytest.raises(ValueError, match="unknown event kind"):
        log.append("exploded")
    assert stored_keys(s3) == [] and log.next_seq == 0


def test_start_validates_the_session_id(s3):
    with pytest.raises(ValueError, match="session id"):
        start_session(s3, session_id="../escape")


# -- Object Lock -------------------------------------------------------------------------------


def test_every_object_is_locked_in_compliance_mode_for_the_retention(s3):
    log = start_session(s3, retention_days=30)
    write_read_session(log)
    before = datetime.now(UTC)

    for key in stored_keys(s3):
        head = s3.head_object(Bucket=LOG_BUCKET, Key=key, ChecksumMode="ENABLED")
        assert head["ObjectLockMode"] == "COMPLIANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert before + timedelta(days=29, hours=23) < until <= before + timedelta(days=30, minutes=1)
        assert head["ChecksumSHA256"]  # the integrity header S3 requires with Object Lock


def test_a_locked_event_cannot_be_deleted(s3):
    start_session(s3).append("received", statement="SELECT 1")
    key = stored_keys(s3)[0]
    version = s3.list_object_versions(Bucket=LOG_BUCKET, Prefix=key)["Versions"][0]["VersionId"]
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=LOG_BUCKET, Key=key, VersionId=version)


def test_an_existing_key_is_never_overwritten(s3):
    first = start_session(s3)
    original = first.append("received", statement="SELECT 1")
    # A second writer that believes it starts the same session (a retried request, say) finds seq 0
    # taken: it continues after it rather than replacing it.
    again = start_session(s3, clock=SteppingClock())
    event = again.append("received", statement="SELECT 1")

    assert event["seq"] == 1 and event["prev_hash"] == original["hash"]
    versions = s3.list_object_versions(Bucket=LOG_BUCKET, Prefix="events/")["Versions"]
    assert len(versions) == 2
    assert read_json(s3, LOG_BUCKET, stored_keys(s3)[0]) == original


def test_a_reused_session_id_cannot_join_another_principals_session(s3):
    start_session(s3).append("received", statement="SELECT 1")
    mallory = start_session(s3, principal_name="mallory", principal_arn="arn:aws:iam::123456789012:user/m")
    with pytest.raises(ChainConflictError):
        mallory.append("received", statement="DROP TABLE customers")
    assert len(stored_keys(s3)) == 1 and mallory.next_seq == 0


# -- closing ---------------------------------------------------------------------------------


def test_close_writes_session_closed_and_returns_the_summary_without_a_separate_manifest(s3):
    log = start_session(s3)
    written = write_read_session(log, close=False)
    summary = log.close()

    keys = stored_keys(s3)
    closed = read_json(s3, LOG_BUCKET, keys[-1])
    assert closed["kind"] == "session_closed" and closed["seq"] == 3
    assert closed["prev_hash"] == written[-1]["hash"]  # the closing event commits to everything before
    assert stored_keys(s3, "manifests/") == []
    assert summary["event_count"] == 4 and summary["last_seq"] == 3
    assert summary["keys"] == keys
    assert summary["first_hash"] == written[0]["hash"] and summary["last_hash"] == closed["hash"]
    assert summary["first_time"] == written[0]["time"] and summary["last_time"] == closed["time"]
    assert summary["closed_at"] == closed["time"]
    assert summary["hash"] == events.event_hash(summary)


def test_close_is_idempotent_and_nothing_is_appended_after_it(s3):
    log = start_session(s3)
    write_read_session(log, close=False)
    summary = log.close()

    assert log.close() == summary and log.closed
    with pytest.raises(SessionClosedError):
        log.append("received", statement="SELECT 2")
    with pytest.raises(SessionClosedError):
        log.stage("received", statement="SELECT 2")
    assert len(stored_keys(s3)) == 4


def test_close_finishes_after_its_write_failed(s3):
    faulty = FaultyS3(s3)
    log = start_session(faulty)
    log.append("received", statement="SELECT 1")
    faulty.fail("put_object", ACCESS_DENIED)
    with pytest.raises(AuditWriteError):
        log.close()
    assert not log.closed and len(stored_keys(s3)) == 1

    summary = log.close()
    assert summary["event_count"] == 2 and log.closed
    assert verify_log(s3, LOG_BUCKET).ok


# -- several events to an object ---------------------------------------------------------------


def object_lines(s3, key):
    body = s3.get_object(Bucket=LOG_BUCKET, Key=key)["Body"].read()
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.splitlines()]


def test_staged_events_are_written_as_one_object_of_json_lines_by_one_put(s3):
    faulty = FaultyS3(s3)
    log = start_session(faulty)
    received = log.stage("received", statement="SELECT 1", connection_env="prod")
    decision = log.stage("decision", decision="allow", policy_ids=["prod-read"])
    assert stored_keys(s3) == [] and log.next_seq == 0  # nothing is durable before flush
    assert (decision["seq"], decision["prev_hash"]) == (1, received["hash"])
    assert log.staged == (received, decision)

    stored = log.flush()

    assert faulty.calls["put_object"] == 1
    assert stored == [received, decision]
    assert stored_keys(s3) == ["events/dt=2026-11-03/session=sess-1/00000000.json"]
    assert object_lines(s3, stored_keys(s3)[0]) == stored
    assert log.next_seq == 2 and log.last_hash == decision["hash"] and log.staged == ()
    assert log.flush() == [] and faulty.calls["put_object"] == 1  # nothing staged, nothing written


def test_an_api_read_is_two_puts_received_and_decision_then_outcome_and_close(s3):
    faulty = FaultyS3(s3)
    log = start_session(faulty)
    write_multi_event_session(log)

    assert faulty.calls["put_object"] == 2
    keys = stored_keys(s3)
    assert keys == [
        "events/dt=2026-11-03/session=sess-1/00000000.json",
        "events/dt=2026-11-03/session=sess-1/00000002.json",
    ]
    assert [e["kind"] for e in object_lines(s3, keys[0])] == ["received", "decision"]
    assert [e["kind"] for e in object_lines(s3, keys[1])] == ["executed", "session_closed"]
    for key in keys:
        head = s3.head_object(Bucket=LOG_BUCKET, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
    report = verify_log(s3, LOG_BUCKET)
    assert report.ok, report.format()
    assert report.sessions[0].events == 4 and report.sessions[0].closed


def test_append_writes_what_was_staged_before_it_in_the_same_object(s3):
    log = start_session(s3)
    log.stage("received", statement="SELECT 1")
    refused = log.append("refused", outcome="refused", error="sql_parse_error: no")
    assert refused["seq"] == 1
    assert [e["kind"] for e in object_lines(s3, stored_keys(s3)[0])] == ["received", "refused"]


def test_a_failed_flush_drops_the_staged_events_and_the_chain_stays(s3):
    faulty = FaultyS3(s3)
    log = start_session(faulty)
    kept = log.append("received", statement="SELECT 1")
    log.stage("decision", decision="allow")
    log.stage("executed", outcome="ok", row_count=1)
    faulty.fail("put_object", then=ACCESS_DENIED)

    with pytest.raises(AuditWriteError):
        log.flush()

    # The caller was told these were not recorded (so the command did not run, or rolled back):
    # they must never surface later.
    assert log.staged == () and log.next_seq == 1 and log.last_hash == kept["hash"]
    faulty.fail("put_object")
    event = log.append("refused", outcome="refused", error="audit_unavailable: retry")
    assert event["seq"] == 1
    assert [read_json(s3, LOG_BUCKET, k)["kind"] for k in stored_keys(s3)] == ["received", "refused"]
    assert verify_log(s3, LOG_BUCKET).ok


def test_a_multi_event_object_that_landed_although_the_flush_failed_is_adopted(s3):
    faulty = FaultyS3(s3)
    log = start_session(faulty)
    lost = ReadTimeoutError(endpoint_url="https://s3.amazonaws.com")
    faulty.fail("put_object", ("after", lost), then=SLOW_DOWN)
    log.stage("received", statement="SELECT 1")
    log.stage("decision", decision="allow")
    with pytest.raises(AuditWriteError):
        log.flush()
    assert log.next_seq == 0

    faulty.fail("put_object")
    event = log.append("refused", outcome="refused", error="audit_unavailable: retry")

    assert event["seq"] == 2 and log.next_seq == 3  # the landed object's two events are in the chain
    assert len(stored_keys(s3)) == 2 and verify_log(s3, LOG_BUCKET).ok


def test_a_flush_across_midnight_writes_one_object_per_day(s3):
    clock = SteppingClock(
        datetime(2026, 11, 3, 23, 59, 59, 990000, tzinfo=UTC), step=timedelta(milliseconds=20)
    )
    faulty = FaultyS3(s3)
    log = start_session(faulty, clock=clock)
    log.stage("received", statement="SELECT 1")
    log.stage("decision", decision="allow")
    log.stage("executed", outcome="ok", row_count=0)
    log.flush()

    assert faulty.calls["put_object"] == 2
    assert stored_keys(s3) == [
        "events/dt=2026-11-03/session=sess-1/00000000.json",
        "events/dt=2026-11-04/session=sess-1/00000001.json",
    ]
    assert [e["seq"] for e in object_lines(s3, stored_keys(s3)[1])] == [1, 2]
    assert verify_log(s3, LOG_BUCKET).ok


def test_two_writers_flushing_several_events_keep_one_linear_chain(s3):
    start_session(s3).append("approval_requested", outcome="pending")
    alice = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    bob = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())

    alice.stage("approval_vote", approvers=["U_ALICE"], outcome="pending")
    alice.stage("approved", approvers=["U_ALICE"], outcome="approved")
    a = alice.flush()
    tentative = bob.stage("approval_vote", approvers=["U_BOB"], outcome="pending")
    b = bob.flush()  # loses seq 1 to alice's object, adopts both of its events, writes after them

    assert [e["seq"] for e in a] == [1, 2] and tentative["seq"] == 1
    assert b[0]["seq"] == 3 and b[0]["prev_hash"] == a[-1]["hash"]
    assert len(stored_keys(s3)) == 3 and verify_log(s3, LOG_BUCKET).ok


def test_a_writer_whose_staged_events_lose_to_a_close_is_told_the_session_is_closed(s3):
    start_session(s3).append("approval_requested", outcome="pending")
    closer = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    late = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    closer.stage("approval_expired", outcome="expired")
    closer.close()

    late.stage("approved", approvers=["U_ALICE"], outcome="approved")
    with pytest.raises(SessionClosedError):
        late.flush()
    assert late.closed and len(stored_keys(s3)) == 2 and verify_log(s3, LOG_BUCKET).ok


def test_a_close_that_loses_to_another_writer_s_close_does_not_hide_its_own_events(s3):
    start_session(s3).append("approval_requested", outcome="pending")
    expirer = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    executor = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    idle = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    expirer.stage("approval_expired", outcome="expired")
    expirer.close()

    executor.stage("executed", outcome="ok", row_count=1)
    with pytest.raises(SessionClosedError):
        executor.close()  # its outcome was not recorded: it must not look as if it had been
    assert idle.close()["event_count"] == 3  # nothing of its own to lose: the other close will do
    assert verify_log(s3, LOG_BUCKET).ok


def test_stage_validates_like_append(s3):
    log = start_session(s3)
    with pytest.raises(ValueError, match="colour"):
        log.stage("received", colour="blue")
    with pytest.raises(ValueError, match="close"):
        log.stage("session_closed")
    assert log.staged == ()


# -- resume ------------------------------------------------------------------------------------


def test_resume_continues_the_chain_of_an_earlier_process(s3):
    first = start_session(s3)
    first.append("received", statement="UPDATE customers SET notes = 'x'", connection_env="prod")
    pending = first.append("approval_requested", outcome="pending", decision="approval")

    later = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    approved = later.append("approved", approvers=["U_ALICE"], outcome="approved")
    later.append("executed", outcome="ok", row_count=1)
    summary = later.close()

    assert approved["seq"] == 2 and approved["prev_hash"] == pending["hash"]
    assert approved["principal_arn"] == AGENT_ARN and approved["connection_env"] == "prod"
    assert approved["request_id"] == "sess-1"
    assert summary["event_count"] == 5 and len(summary["keys"]) == 5
    assert verify_log(s3, LOG_BUCKET).ok


def test_resume_continues_after_a_multi_event_object(s3):
    first = start_session(s3)
    first.stage("received", statement="UPDATE customers SET notes = 'x'", connection_env="prod")
    first.stage("decision", decision="approval", policy_ids=["prod-write-approval"])
    pending = first.append("approval_requested", outcome="pending")

    later = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    assert later.next_seq == 3 and later.last_hash == pending["hash"]
    later.stage("approved", approvers=["U_ALICE"], outcome="approved")
    later.stage("executed", outcome="ok", row_count=1)
    summary = later.close()

    assert summary["event_count"] == 6 and len(summary["keys"]) == 2
    assert [e["kind"] for e in object_lines(s3, summary["keys"][1])] == [
        "approved",
        "executed",
        "session_closed",
    ]
    with pytest.raises(SessionClosedError):
        SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1)
    assert verify_log(s3, LOG_BUCKET).ok


def test_resume_refuses_a_multi_event_tail_with_an_edited_line(s3):
    log = start_session(s3)
    log.stage("received", statement="SELECT 1")
    log.stage("decision", decision="allow")
    log.flush()
    key = stored_keys(s3)[0]
    received, decision = object_lines(s3, key)
    s3.put_object(
        Bucket=LOG_BUCKET,
        Key=key,
        Body=events.serialize_many([received, {**decision, "decision": "deny"}]),
        ChecksumAlgorithm="SHA256",
    )
    with pytest.raises(AuditWriteError, match="verify"):
        SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1)


def test_resume_finds_a_session_spread_over_several_days(s3):
    clock = SteppingClock(datetime(2026, 11, 3, 23, 0, tzinfo=UTC), step=timedelta(hours=1))
    log = start_session(s3, clock=clock)
    log.append("received", statement="SELECT 1")
    log.append("approval_requested", outcome="pending")
    log.append("approval_vote", approvers=["U_ALICE"], outcome="pending")

    later = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, clock=clock)
    summary = later.close()
    assert later.next_seq == 4
    assert [k.split("/")[1] for k in summary["keys"]] == ["dt=2026-11-03"] + ["dt=2026-11-04"] * 3


def test_resume_refuses_unknown_and_closed_sessions(s3):
    with pytest.raises(NotFoundError):
        SessionLog.resume(s3, LOG_BUCKET, session_id="nobody", retention_days=1)
    write_read_session(start_session(s3))
    with pytest.raises(SessionClosedError):
        SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1)


def test_resume_refuses_a_tampered_tail(s3):
    log = start_session(s3)
    log.append("received", statement="SELECT 1")
    log.append("decision", decision="allow")
    key = stored_keys(s3)[-1]
    # A new version of the last event (Object Lock allows new versions; verify flags them).
    record = read_json(s3, LOG_BUCKET, key)
    s3.put_object(
        Bucket=LOG_BUCKET,
        Key=key,
        Body=events.serialize({**record, "decision": "deny"}),
        ChecksumAlgorithm="SHA256",
    )
    with pytest.raises(AuditWriteError, match="verify"):
        SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1)


def test_two_writers_continuing_one_session_keep_one_linear_chain(s3):
    start_session(s3).append("approval_requested", outcome="pending")
    alice = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    bob = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())

    a = alice.append("approval_vote", approvers=["U_ALICE"], outcome="pending")
    b = bob.append("approval_vote", approvers=["U_BOB"], outcome="pending")  # loses seq 1, adopts it

    assert (a["seq"], b["seq"]) == (1, 2)
    assert b["prev_hash"] == a["hash"]
    assert len(stored_keys(s3)) == 3 and verify_log(s3, LOG_BUCKET).ok


def test_appends_from_threads_stay_in_order(s3):
    log = start_session(s3)

    def worker(n):
        for i in range(5):
            log.append("executed", outcome="ok", row_count=n * 10 + i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.next_seq == 20 and verify_log(s3, LOG_BUCKET).ok


# -- durability --------------------------------------------------------------------------------


def test_throttling_5xx_and_connection_errors_are_retried_with_backoff(s3):
    faulty = FaultyS3(s3)
    sleeps = RecordedSleeps()
    log = start_session(faulty, retry=fast_retry(sleeps))
    faulty.fail("put_object", SLOW_DOWN, INTERNAL, NO_ENDPOINT)

    event = log.append("received", statement="SELECT 1")

    assert faulty.calls["put_object"] == 4
    assert sleeps.pauses == [0.05, 0.1, 0.2]  # base * 2^n, jitter at its maximum
    assert event["seq"] == 0 and read_json(s3, LOG_BUCKET, stored_keys(s3)[0]) == event


def test_a_permanent_failure_raises_and_does_not_advance_the_chain(s3):
    faulty = FaultyS3(s3)
    sleeps = RecordedSleeps()
    log = start_session(faulty, retry=fast_retry(sleeps))
    kept = log.append("received", statement="SELECT 1")
    faulty.fail("put_object", then=SLOW_DOWN)

    with pytest.raises(AuditWriteError) as raised:
        log.append("decision", decision="allow")

    assert raised.value.code == "audit_unavailable" and raised.value.status == 503
    assert faulty.calls["put_object"] == 1 + 5  # the first event, then five attempts
    assert len(sleeps.pauses) == 4
    assert log.next_seq == 1 and log.last_hash == kept["hash"]
    assert len(stored_keys(s3)) == 1

    faulty.fail("put_object")  # S3 is back
    event = log.append("decision", decision="allow")
    assert event["seq"] == 1 and event["prev_hash"] == kept["hash"]
    assert verify_log(s3, LOG_BUCKET).ok


def test_errors_that_retrying_cannot_fix_fail_at_once(s3):
    faulty = FaultyS3(s3)
    log = start_session(faulty)
    faulty.fail("put_object", then=ACCESS_DENIED)
    with pytest.raises(AuditWriteError, match="AccessDenied"):
        log.append("received", statement="SELECT 1")
    assert faulty.calls["put_object"] == 1 and log.next_seq == 0


def test_retries_stop_when_the_time_budget_is_spent():
    now = [0.0]
    sleeps = RecordedSleeps()

    def sleep(seconds):
        sleeps(seconds)
        now[0] += seconds

    def always_slow():
        now[0] += 0.4  # each attempt takes 400 ms
        raise SLOW_DOWN

    policy = RetryPolicy(
        max_attempts=50, total_timeout_s=1.0, sleep=sleep, random=lambda: 1.0, monotonic=lambda: now[0]
    )
    with pytest.raises(AuditWriteError):
        call_with_retry(policy, "put", always_slow)
    assert now[0] <= 1.0 + 0.4 and len(sleeps.pauses) < 3


def test_a_write_that_landed_before_its_answer_was_lost_is_not_duplicated(s3):
    faulty = FaultyS3(s3)
    log = start_session(faulty)
    lost = ReadTimeoutError(endpoint_url="https://s3.amazonaws.com")
    faulty.fail("put_object", ("after", lost))  # stored, but the client saw a timeout; the retry gets 412

    event = log.append("received", statement="SELECT 1")

    assert event["seq"] == 0 and log.next_seq == 1
    assert len(stored_keys(s3)) == 1 and read_json(s3, LOG_BUCKET, stored_keys(s3)[0]) == event


def test_a_write_that_landed_although_the_append_failed_is_adopted_next_time(s3):
    faulty = FaultyS3(s3)
    log = start_session(faulty)
    lost = ReadTimeoutError(endpoint_url="https://s3.amazonaws.com")
    faulty.fail("put_object", ("after", lost), then=SLOW_DOWN)
    with pytest.raises(AuditWriteError):
        log.append("received", statement="SELECT 1")
    assert log.next_seq == 0  # as far as the caller knows, nothing was recorded

    faulty.fail("put_object")
    event = log.append("refused", outcome="refused", error="audit_unavailable: retry")

    assert event["seq"] == 1  # seq 0 is the landed event, now part of the chain
    assert [read_json(s3, LOG_BUCKET, k)["kind"] for k in stored_keys(s3)] == ["received", "refused"]
    assert verify_log(s3, LOG_BUCKET).ok


@pytest.mark.parametrize(
    "exc,retry",
    [
        (SLOW_DOWN, True),
        (INTERNAL, True),
        (client_error("ServiceUnavailable", 503), True),
        (client_error("Whatever", 502), True),
        (client_error("TooManyRequests", 429), True),
        (NO_ENDPOINT, True),
        (ReadTimeoutError(endpoint_url="x"), True),
        (ACCESS_DENIED, False),
        (client_error("NoSuchBucket", 404), False),
        (client_error("PreconditionFailed", 412), False),
    ],
)
def test_which_failures_are_retried(exc, retry):
    assert is_retryable(exc) is retry
