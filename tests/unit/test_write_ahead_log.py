"""Group commit across sessions: the write-ahead log, what verify says of it, and `audit recover`.

Against moto's S3 with Object Lock on. A proxy that "dies" here is a recorder whose session-object
puts fail until it gives up at its stop deadline: what it stored is exactly what a crash after the
write-ahead write leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from gatehouse.audit import cli, events
from gatehouse.audit.log import SessionLog, find_session_keys, put_locked
from gatehouse.audit.verify import ProblemKind, verify_log
from gatehouse.audit.wal import WAL_PREFIX, WriteAheadLog, parse_wal_key, recover
from gatehouse.exceptions import AuditWriteError
from gatehouse.proxy.postgres.recorder import ProxyRecorder
from tests.unit.audit_fixtures import (
    AGENT_ARN,
    LOG_BUCKET,
    client_error,
    fast_retry,
    make_log_bucket,
    start_session,
)


@pytest.fixture
def s3(aws_env):
    with mock_aws():
        client = boto3.client("s3")
        make_log_bucket(client)
        yield client


class DyingS3:
    """moto, except that once `dead` is set no session object is stored any more (503): the proxy
    that wrote the write-ahead object died before its sessions' own objects."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3
        self.dead = False
        self.fail_ahead = False
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def put_object(self, **kwargs: Any) -> Any:
        key = kwargs["Key"]
        if (self.dead and key.startswith("events/")) or (self.fail_ahead and key.startswith(WAL_PREFIX)):
            raise client_error("SlowDown", 503)
        answer = self._s3.put_object(**kwargs)
        with self._lock:
            self.keys.append(key)
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


def recorder(s3: Any, **overrides: Any) -> ProxyRecorder:
    kwargs: dict[str, Any] = {"retention_days": 1, "retry": fast_retry(), "flush_interval_s": 60}
    kwargs.update(overrides)
    return ProxyRecorder(s3, LOG_BUCKET, **kwargs)


def open_session(rec: ProxyRecorder, session_id: str) -> Any:
    return rec.open(
        session_id=session_id,
        principal_arn=AGENT_ARN,
        principal_name="analyst",
        connection="demo-prod",
        connection_env="prod",
    )


def session_events(s3: Any, session_id: str) -> list[dict[str, Any]]:
    return [
        event
        for key in find_session_keys(s3, LOG_BUCKET, session_id)
        for event in events.parse_events(s3.get_object(Bucket=LOG_BUCKET, Key=key.key)["Body"].read())
    ]


def ahead_keys(s3: Any) -> list[str]:
    listed = s3.list_objects_v2(Bucket=LOG_BUCKET, Prefix=WAL_PREFIX).get("Contents", [])
    return sorted(o["Key"] for o in listed)


async def die_after_durable_records(s3: Any, sessions: int, statements: int) -> DyingS3:
    """Sessions whose statements were all made durable, then the proxy dies before their objects."""
    dying = DyingS3(s3)
    rec = recorder(dying)
    await rec.start()
    opened = [open_session(rec, f"sess-{n}") for n in range(sessions)]

    async def client(session: Any) -> None:
        session.record("session_started")
        for j in range(statements):
            await session.record_durable(
                "decision", statement=f"DELETE FROM t WHERE id = {j}", decision="allow"
            )

    await asyncio.gather(*(client(s) for s in opened))
    dying.dead = True
    await rec.stop(deadline_s=0.3)
    return dying


def test_a_crash_after_the_write_ahead_write_is_reported_by_verify_and_repaired_by_recover(s3):
    dying = asyncio.run(die_after_durable_records(s3, sessions=3, statements=4))

    # Every statement ran only once S3 held its decision: in the write-ahead log, not the sessions'.
    assert all(k.startswith(WAL_PREFIX) for k in dying.keys) and dying.keys
    assert all(session_events(s3, f"sess-{n}") == [] for n in range(3))
    report = verify_log(s3, LOG_BUCKET, ahead_grace_s=0)
    assert not report.ok
    missing = [p for p in report.problems if p.kind is ProblemKind.MISSING]
    assert {(p.session_id, p.seq) for p in missing} == {
        (f"sess-{n}", seq) for n in range(3) for seq in range(5)
    }
    assert all("gatehouse audit recover" in p.detail for p in missing)
    # Within the grace period a live writer may still be copying: not a problem yet.
    assert verify_log(s3, LOG_BUCKET, ahead_grace_s=3600).ok

    # Younger than the grace period: recover leaves them to the (possibly live) writer.
    assert recover(s3, LOG_BUCKET, retention_days=1, grace_s=3600).recovered == {}
    result = recover(s3, LOG_BUCKET, retention_days=1, grace_s=0)

    assert result.ok, result.format()
    assert result.recovered == {f"sess-{n}": 5 for n in range(3)}
    for n in range(3):
        stored = session_events(s3, f"sess-{n}")
        assert [e["seq"] for e in stored] == list(range(5))
        assert [e["statement"] for e in stored[1:]] == [f"DELETE FROM t WHERE id = {j}" for j in range(4)]
    assert verify_log(s3, LOG_BUCKET, ahead_grace_s=0).ok
    # Idempotent: a second run finds nothing to write.
    assert recover(s3, LOG_BUCKET, retention_days=1, grace_s=0).recovered == {}


def test_recover_beside_a_live_writer_leaves_every_event_once_and_the_writer_goes_on(s3):
    async def scenario() -> None:
        rec = recorder(s3)
        await rec.start()
        session = open_session(rec, "sess-live")
        session.record("session_started")
        await session.record_durable("decision", statement="UPDATE t SET v = 1", decision="allow")
        # An auditor runs recover while the proxy still holds these events for its own object.
        result = await asyncio.to_thread(recover, s3, LOG_BUCKET, retention_days=1, grace_s=0)
        assert result.recovered == {"sess-live": 2}
        session.record("executed", statement="UPDATE t SET v = 1", outcome="ok", row_count=1)
        await session.record_durable("decision", statement="UPDATE t SET v = 2", decision="allow")
        await session.close()
        await rec.stop()

    asyncio.run(scenario())

    stored = session_events(s3, "sess-live")
    assert [e["kind"] for e in stored] == [
        "session_started",
        "decision",
        "executed",
        "decision",
        "session_closed",
    ]
    assert [e["seq"] for e in stored] == list(range(5))
    assert Counter(e["event_id"] for e in stored).most_common(1)[0][1] == 1
    report = verify_log(s3, LOG_BUCKET, ahead_grace_s=0)
    assert report.ok, report.format()


def test_sync_sessions_waiting_together_share_one_write_ahead_object(s3):
    async def scenario() -> tuple[int, int]:
        rec = recorder(s3)
        await rec.start()
        sessions = [open_session(rec, f"sess-{n}") for n in range(8)]
        await asyncio.gather(
            *(s.record_durable("decision", statement="SELECT 1", decision="allow") for s in sessions)
        )
        stats = rec.stats
        await rec.stop()
        return stats["write_ahead_puts"], stats["session_puts"]

    ahead, own = asyncio.run(scenario())

    assert (ahead, own) == (1, 0)
    (key,) = ahead_keys(s3)
    copies = events.parse_events(s3.get_object(Bucket=LOG_BUCKET, Key=key)["Body"].read())
    assert sorted(e["session_id"] for e in copies) == [f"sess-{n}" for n in range(8)]
    assert parse_wal_key(key) == datetime.now(UTC).date().isoformat()
    assert verify_log(s3, LOG_BUCKET, ahead_grace_s=0).ok


def test_a_failed_write_ahead_write_refuses_the_statements_and_their_chains_say_so(s3):
    async def scenario() -> DyingS3:
        dying = DyingS3(s3)
        rec = recorder(dying, flush_interval_s=0.05)
        await rec.start()
        session = open_session(rec, "sess-1")
        dying.fail_ahead = True
        with pytest.raises(AuditWriteError):
            await session.record_durable("decision", statement="DROP TABLE t", decision="allow")
        dying.fail_ahead = False
        await session.record_durable("decision", statement="SELECT 1", decision="allow")
        await session.close()
        await rec.stop()
        return dying

    asyncio.run(scenario())

    stored = session_events(s3, "sess-1")
    assert [(e["kind"], e["statement"]) for e in stored] == [
        ("decision", "DROP TABLE t"),
        ("refused", "DROP TABLE t"),
        ("decision", "SELECT 1"),
        ("session_closed", None),
    ]
    assert verify_log(s3, LOG_BUCKET, ahead_grace_s=0).ok


# -- tampering with the write-ahead log ---------------------------------------------------------


def _closed_session_with_copy(s3: Any) -> tuple[SessionLog, list[dict[str, Any]]]:
    log = start_session(s3, "sess-t", clock=None)  # wall-clock times, as the proxy's
    log.stage("received", statement="SELECT 1")
    log.stage("decision", statement="SELECT 1", decision="allow")
    built = list(log.staged)
    WriteAheadLog(s3, LOG_BUCKET, retention_days=1).write([events.serialize(e) for e in built])
    log.flush(keep=True)
    log.close(keep=True)
    return log, built


def _plant(s3: Any, body: bytes) -> None:
    key = (
        f"{WAL_PREFIX}dt={datetime.now(UTC).date().isoformat()}/20260101T000000.000000Z-tamper-00000001.json"
    )
    put_locked(s3, LOG_BUCKET, key, body, retention=timedelta(days=1), policy=fast_retry(), what="plant")


def test_an_intact_copy_verifies_and_a_copy_that_differs_from_the_log_is_altered(s3):
    _, built = _closed_session_with_copy(s3)
    assert verify_log(s3, LOG_BUCKET, ahead_grace_s=0).ok

    # A forged copy with a valid hash of its own, claiming seq 1 said something else.
    forged = dict(built[1], decision="deny")
    forged["hash"] = events.event_hash(forged)
    _plant(s3, events.serialize(forged))

    report = verify_log(s3, LOG_BUCKET, ahead_grace_s=0)
    assert [(p.session_id, p.seq, p.kind) for p in report.problems] == [("sess-t", 1, ProblemKind.ALTERED)]
    assert "write-ahead copy" in report.problems[0].detail
    assert not verify_log(s3, LOG_BUCKET, "sess-t", ahead_grace_s=0).ok  # one session's verify sees it too


def test_a_copy_edited_without_its_hash_and_an_unreadable_copy_are_reported(s3):
    _, built = _closed_session_with_copy(s3)
    edited = json.loads(events.serialize(built[0]))
    edited["statement"] = "SELECT 2"
    _plant(s3, (json.dumps(edited) + "\n").encode() + b"{not json\n")

    report = verify_log(s3, LOG_BUCKET, ahead_grace_s=0)

    kinds = Counter(p.kind for p in report.problems)
    assert kinds == Counter({ProblemKind.UNREADABLE: 1}), report.format()
    _plant_second = (
        f"{WAL_PREFIX}dt={datetime.now(UTC).date().isoformat()}/20260101T000000.000000Z-tamper-00000002.json"
    )
    put_locked(
        s3,
        LOG_BUCKET,
        _plant_second,
        json.dumps(edited).encode() + b"\n",
        retention=timedelta(days=1),
        policy=fast_retry(),
        what="plant",
    )
    report = verify_log(s3, LOG_BUCKET, ahead_grace_s=0)
    assert any(
        p.kind is ProblemKind.ALTERED and p.session_id == "sess-t" and p.seq == 0 for p in report.problems
    )


def test_recover_refuses_copies_that_disagree_and_writes_nothing_for_that_session(s3):
    dying = asyncio.run(die_after_durable_records(s3, sessions=1, statements=1))
    assert dying.keys
    (key,) = ahead_keys(s3)
    original = events.parse_events(s3.get_object(Bucket=LOG_BUCKET, Key=key)["Body"].read())
    forged = dict(original[-1], statement="DELETE FROM everything")
    forged["hash"] = events.event_hash(forged)
    _plant(s3, events.serialize(forged))

    result = recover(s3, LOG_BUCKET, retention_days=1, grace_s=0)

    assert not result.ok and result.recovered == {}
    assert "disagree" in result.format()
    assert session_events(s3, "sess-0") == []


# -- SessionLog keep semantics ------------------------------------------------------------------


def test_a_kept_flush_that_fails_writes_the_same_bytes_when_retried(s3):
    failing = DyingS3(s3)
    log = start_session(failing, "sess-k", clock=None)  # wall-clock times, as the proxy's
    log.stage("received", statement="SELECT 1")
    before = [events.serialize(e) for e in log.staged]
    failing.dead = True
    with pytest.raises(AuditWriteError):
        log.flush(keep=True)
    assert [events.serialize(e) for e in log.staged] == before
    log.stage("decision", statement="SELECT 1", decision="allow")
    failing.dead = False

    written = log.flush(keep=True, max_events=1)

    assert [events.serialize(e) for e in written][:1] == before
    assert [
        len(events.parse_events(s3.get_object(Bucket=LOG_BUCKET, Key=k)["Body"].read())) for k in log.keys
    ] == [1, 1]


# -- the command ------------------------------------------------------------------------------------


def test_audit_recover_command_writes_what_a_dead_proxy_left_and_exits_0(s3, capsys):
    asyncio.run(die_after_durable_records(s3, sessions=2, statements=2))

    class Target:
        bucket = LOG_BUCKET

        def s3_client(self) -> Any:
            return s3

    root = argparse.ArgumentParser()
    cli.register(root.add_subparsers(dest="command"), context_loader=Target)
    args = root.parse_args(["audit", "recover", "--older-than", "0", "--retention-days", "1"])

    assert args.func(args) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "6 event(s) written into 2 session log(s)" in out
    assert verify_log(s3, LOG_BUCKET, ahead_grace_s=0).ok
    bad = root.parse_args(["audit", "recover", "--older-than", "-1"])
    assert bad.func(bad) == cli.EXIT_USAGE
