"""SessionLog against moto's S3: the chain, the key layout, Object Lock, manifests, resume, faults."""

from __future__ import annotations

import itertools
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
    manifest_key,
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

    for key in [*stored_keys(s3), manifest_key("sess-1")]:
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


# -- the manifest ------------------------------------------------------------------------------


def test_close_appends_session_closed_and_writes_the_manifest(s3):
    log = start_session(s3)
    written = write_read_session(log, close=False)
    manifest = log.close()

    keys = stored_keys(s3)
    closed = read_json(s3, LOG_BUCKET, keys[-1])
    assert closed["kind"] == "session_closed" and closed["seq"] == 3
    assert read_json(s3, LOG_BUCKET, manifest_key("sess-1")) == manifest
    assert manifest["event_count"] == 4 and manifest["last_seq"] == 3
    assert manifest["keys"] == keys
    assert manifest["first_hash"] == written[0]["hash"] and manifest["last_hash"] == closed["hash"]
    assert manifest["first_time"] == written[0]["time"] and manifest["last_time"] == closed["time"]
    assert manifest["closed_at"] == closed["time"]
    assert manifest["hash"] == events.event_hash(manifest)


def test_close_is_idempotent_and_nothing_is_appended_after_it(s3):
    log = start_session(s3)
    write_read_session(log, close=False)
    manifest = log.close()

    assert log.close() == manifest and log.closed
    with pytest.raises(SessionClosedError):
        log.append("received", statement="SELECT 2")
    assert len(stored_keys(s3)) == 4


def test_close_finishes_after_the_manifest_write_failed(s3):
    faulty = FaultyS3(s3)
    log = start_session(faulty)
    log.append("received", statement="SELECT 1")
    faulty.fail("put_object", None, ACCESS_DENIED)  # session_closed lands, the manifest does not
    with pytest.raises(AuditWriteError):
        log.close()
    assert stored_keys(s3, "manifests/") == []

    manifest = log.close()
    assert manifest["event_count"] == 2 and stored_keys(s3, "manifests/") == ["manifests/sess-1.json"]
    assert verify_log(s3, LOG_BUCKET).ok


# -- resume ------------------------------------------------------------------------------------


def test_resume_continues_the_chain_of_an_earlier_process(s3):
    first = start_session(s3)
    first.append("received", statement="UPDATE customers SET notes = 'x'", connection_env="prod")
    pending = first.append("approval_requested", outcome="pending", decision="approval")

    later = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, retry=fast_retry())
    approved = later.append("approved", approvers=["U_ALICE"], outcome="approved")
    later.append("executed", outcome="ok", row_count=1)
    manifest = later.close()

    assert approved["seq"] == 2 and approved["prev_hash"] == pending["hash"]
    assert approved["principal_arn"] == AGENT_ARN and approved["connection_env"] == "prod"
    assert approved["request_id"] == "sess-1"
    assert manifest["event_count"] == 5 and len(manifest["keys"]) == 5
    assert verify_log(s3, LOG_BUCKET).ok


def test_resume_finds_a_session_spread_over_several_days(s3):
    clock = SteppingClock(datetime(2026, 11, 3, 23, 0, tzinfo=UTC), step=timedelta(hours=1))
    log = start_session(s3, clock=clock)
    log.append("received", statement="SELECT 1")
    log.append("approval_requested", outcome="pending")
    log.append("approval_vote", approvers=["U_ALICE"], outcome="pending")

    later = SessionLog.resume(s3, LOG_BUCKET, session_id="sess-1", retention_days=1, clock=clock)
    manifest = later.close()
    assert later.next_seq == 4
    assert [k.split("/")[1] for k in manifest["keys"]] == ["dt=2026-11-03"] + ["dt=2026-11-04"] * 3


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
