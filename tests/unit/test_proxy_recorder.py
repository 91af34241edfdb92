"""The proxy's session-log recorder against moto's S3 (Object Lock on): group commit, async chunks,
a failing S3, the backlog bound, stop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from typing import Any

import boto3
import pytest
from moto import mock_aws

from gatehouse.audit import events
from gatehouse.audit.log import find_session_keys
from gatehouse.audit.verify import verify_log
from gatehouse.exceptions import AuditWriteError
from gatehouse.proxy.postgres.recorder import ProxyRecorder, RecordedSession, RecorderBackloggedError
from tests.unit.audit_fixtures import (
    AGENT_ARN,
    LOG_BUCKET,
    SLOW_DOWN,
    FaultyS3,
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


class S3Probe:
    """The moto client, with every put_object counted and the statements of each stored object noted.

    `fail_puts` makes puts answer 503 SlowDown; `script` holds outcomes for the next puts: "fail", or
    "lost" (S3 stores the object, then the answer is lost: a timeout after the write).
    """

    def __init__(self, s3: Any) -> None:
        self._s3 = s3
        self._lock = threading.Lock()
        self.puts = 0
        self.keys: list[str] = []  # of the objects stored, in order
        self.stored_statements: set[str] = set()
        self.fail_puts = False
        self.script: deque[str] = deque()

    def put_object(self, **kwargs: Any) -> Any:
        with self._lock:
            self.puts += 1
            outcome = self.script.popleft() if self.script else ("fail" if self.fail_puts else "ok")
        if outcome == "fail":
            raise client_error("SlowDown", 503)
        answer = self._s3.put_object(**kwargs)
        statements = {json.loads(line)["statement"] for line in kwargs["Body"].splitlines()}
        with self._lock:
            self.keys.append(kwargs["Key"])
            self.stored_statements |= statements - {None}
        if outcome == "lost":
            raise client_error("InternalError", 500)
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


def recorder(probe: S3Probe, **overrides: Any) -> ProxyRecorder:
    kwargs: dict[str, Any] = {"retention_days": 1, "retry": fast_retry()}
    kwargs.update(overrides)
    return ProxyRecorder(probe, LOG_BUCKET, **kwargs)


def open_session(rec: ProxyRecorder, name: str) -> RecordedSession:
    return rec.open(
        session_id=name,
        principal_arn=AGENT_ARN,
        principal_name="analyst",
        connection="demo-prod",
        connection_env="prod",
    )


def run(rec: ProxyRecorder, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Start the recorder, play the scenario, always stop it (which closes what is still open)."""

    async def main() -> None:
        await rec.start()
        try:
            await scenario()
        finally:
            await rec.stop(deadline_s=10)

    asyncio.run(main())


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


def stored_objects(s3: Any, session_id: str) -> list[list[dict[str, Any]]]:
    """The session's objects in chain order, each as its list of events."""
    return [
        events.parse_events(s3.get_object(Bucket=LOG_BUCKET, Key=k.key)["Body"].read())
        for k in find_session_keys(s3, LOG_BUCKET, session_id)
    ]


def stored_events(s3: Any, session_id: str) -> list[dict[str, Any]]:
    return [event for obj in stored_objects(s3, session_id) for event in obj]


def assert_verified(s3: Any, sessions: int) -> None:
    report = verify_log(s3, LOG_BUCKET)
    assert report.ok, report.format()
    assert len(report.sessions) == sessions
    assert all(summary.closed for summary in report.sessions)


# -- ordering and the chain ------------------------------------------------------------------------


def test_a_durable_record_stores_the_buffered_events_before_it_in_order_and_the_log_verifies(s3):
    probe = S3Probe(s3)
    rec = recorder(probe, flush_interval_s=60)

    async def scenario() -> None:
        session = open_session(rec, "sess-1")
        session.record("session_started")
        session.record("received", statement="UPDATE customers SET notes = 'x'")
        assert probe.puts == 0
        await session.record_durable(
            "decision",
            statement="UPDATE customers SET notes = 'x'",
            decision="allow",
            statement_class="write",
        )
        # One write-ahead object made the decision and everything before it durable.
        assert probe.puts == 1 and probe.keys[0].startswith("wal/dt=")
        session.record("executed", statement="UPDATE customers SET notes = 'x'", outcome="ok", row_count=3)
        await session.close()
        assert session.closed

    run(rec, scenario)

    # The session's own object follows (here at close, the interval being long), the same events.
    stored = stored_objects(s3, "sess-1")
    assert [[e["kind"] for e in obj] for obj in stored] == [
        ["session_started", "received", "decision", "executed", "session_closed"],
    ]
    flat = stored[0]
    assert [e["seq"] for e in flat] == list(range(5))
    assert flat[3]["row_count"] == 3 and flat[0]["connection_env"] == "prod"
    ahead = s3.get_object(Bucket=LOG_BUCKET, Key=probe.keys[0])["Body"].read()
    session_object = s3.get_object(Bucket=LOG_BUCKET, Key=probe.keys[1])["Body"].read()
    assert session_object.startswith(ahead) and ahead.count(b"\n") == 3  # byte for byte
    assert_verified(s3, sessions=1)


def test_a_bad_field_fails_at_the_caller_and_records_nothing(s3):
    probe = S3Probe(s3)
    rec = recorder(probe)

    async def scenario() -> None:
        session = open_session(rec, "sess-1")
        with pytest.raises(ValueError, match="row_count"):
            session.record("executed", row_count=-1)
        with pytest.raises(ValueError, match="unknown event kind"):
            await session.record_durable("teleported")
        with pytest.raises(ValueError, match="close"):
            session.record("session_closed")
        assert rec.stats["pending_events"] == 0
        await session.close()
        with pytest.raises(AuditWriteError):
            session.record("received", statement="SELECT 1")

    run(rec, scenario)

    assert [e["kind"] for e in stored_events(s3, "sess-1")] == ["session_closed"]


# -- group commit ----------------------------------------------------------------------------------


def test_fifty_sessions_of_twenty_concurrent_durable_records_share_puts_and_each_returns_once_stored(s3):
    probe = S3Probe(s3)
    rec = recorder(probe)
    returned: list[str] = []

    async def scenario() -> None:
        sessions = [open_session(rec, f"sess-{n:02d}") for n in range(50)]

        async def durable(session: RecordedSession, j: int) -> None:
            statement = f"SELECT {j} -- {session.session_id}"
            await session.record_durable("decision", statement=statement, decision="allow")
            # The PUT holding this statement had completed before the call returned.
            assert statement in probe.stored_statements
            returned.append(statement)

        await asyncio.gather(*(durable(s, j) for s in sessions for j in range(20)))
        await asyncio.gather(*(s.close() for s in sessions))

    run(rec, scenario)

    assert len(returned) == 1000
    assert probe.puts <= 1000 / 5, rec.stats
    for n in range(50):
        stored = stored_events(s3, f"sess-{n:02d}")
        assert [e["statement"] for e in stored[:-1]] == [f"SELECT {j} -- sess-{n:02d}" for j in range(20)]
    assert_verified(s3, sessions=50)


def test_sessions_waiting_one_statement_at_a_time_share_flush_cycles(s3):
    probe = S3Probe(s3)
    rec = recorder(probe)

    async def scenario() -> None:
        async def client(n: int) -> None:
            session = open_session(rec, f"sess-{n:02d}")
            session.record("session_started")
            for j in range(20):
                sql = f"UPDATE t SET v = {j}"
                session.record("received", statement=sql)
                await session.record_durable(
                    "decision", statement=sql, decision="allow", statement_class="write"
                )
                session.record("executed", statement=sql, outcome="ok", row_count=1)
            await session.close()

        await asyncio.gather(*(client(n) for n in range(50)))

    run(rec, scenario)

    stats = rec.stats
    # 1,000 durable records: with group commit across sessions they wait for a few dozen cycles,
    # each one write-ahead object for every session waiting then (not one object per session),
    # and each session's own objects follow on the interval, not per statement.
    assert stats["durable_records"] == 1000
    assert stats["flush_cycles"] <= 1000 / 10, stats
    assert stats["write_ahead_puts"] <= 1000 / 10, stats
    assert stats["session_puts"] <= 50 * 3, stats
    assert probe.puts == stats["write_ahead_puts"] + stats["session_puts"]
    assert probe.puts <= 1000 / 4, stats
    assert stats["events_written"] == 50 * (1 + 3 * 20)
    assert_verified(s3, sessions=50)


# -- async mode ------------------------------------------------------------------------------------


def test_buffered_events_are_written_by_the_interval_as_one_object(s3):
    probe = S3Probe(s3)
    rec = recorder(probe, flush_interval_s=0.3)

    async def scenario() -> None:
        session = open_session(rec, "sess-1")
        for j in range(5):
            session.record("executed", statement=f"SELECT {j}", outcome="ok")
        await asyncio.sleep(0.05)
        assert probe.puts == 0
        await eventually(lambda: rec.stats["pending_events"] == 0)
        assert probe.puts == 1

    run(rec, scenario)

    stored = stored_objects(s3, "sess-1")
    assert [e["statement"] for e in stored[0]] == [f"SELECT {j}" for j in range(5)]


def test_a_full_batch_is_written_at_once_in_objects_of_at_most_the_batch_size(s3):
    probe = S3Probe(s3)
    rec = recorder(probe, flush_interval_s=60, max_batch_events=10)

    async def scenario() -> None:
        session = open_session(rec, "sess-1")
        for j in range(9):
            session.record("executed", statement=f"SELECT {j}", outcome="ok")
        await asyncio.sleep(0.1)
        assert probe.puts == 0
        session.record("executed", statement="SELECT 9", outcome="ok")
        await eventually(lambda: probe.puts == 1)
        for j in range(10, 35):
            session.record("executed", statement=f"SELECT {j}", outcome="ok")
        await eventually(lambda: probe.puts == 4)
        for j in range(35, 38):
            session.record("executed", statement=f"SELECT {j}", outcome="ok")
        await asyncio.sleep(0.1)
        assert probe.puts == 4  # under a batch: they wait for the interval (or stop)

    run(rec, scenario)

    stored = stored_objects(s3, "sess-1")
    assert [len(obj) for obj in stored] == [10, 10, 10, 5, 4]
    assert [e["statement"] for obj in stored for e in obj][:-1] == [f"SELECT {j}" for j in range(38)]
    assert_verified(s3, sessions=1)


# -- failures and the backlog ----------------------------------------------------------------------


def test_a_failing_s3_refuses_durable_statements_then_backlogs_and_everything_lands_when_it_recovers(s3):
    probe = S3Probe(s3)
    rec = recorder(probe, flush_interval_s=0.05, max_backlog_events=30, max_backlog_age_s=60)
    update = "UPDATE customers SET notes = 'x'"

    async def scenario() -> None:
        session = open_session(rec, "sess-1")
        await session.record_durable("session_started")

        probe.fail_puts = True
        with pytest.raises(AuditWriteError) as refused:
            await session.record_durable(
                "decision", statement=update, decision="allow", statement_class="write"
            )
        assert refused.value.code == "audit_unavailable"
        assert not rec.backlogged

        accepted = 0
        with pytest.raises(RecorderBackloggedError) as backlogged:
            for j in range(100):
                session.record("received", statement=f"SELECT {j}")
                accepted += 1
        # Three events were pending already (not in the session's objects): session_started (in
        # the write-ahead log only), the refused decision and the refusal itself.
        assert accepted == 27
        assert backlogged.value.sqlstate == "57P03" and backlogged.value.code == "log_backlogged"
        assert rec.backlogged and rec.stats["pending_events"] == 30
        with pytest.raises(RecorderBackloggedError):
            await session.record_durable("decision", statement="SELECT 1", decision="allow")

        probe.fail_puts = False
        await eventually(lambda: not rec.backlogged)
        await session.record_durable("decision", statement="SELECT 1", decision="allow")
        await session.close()

    run(rec, scenario)

    stored = stored_events(s3, "sess-1")
    assert [e["kind"] for e in stored[:3]] == ["session_started", "decision", "refused"]
    assert stored[2]["statement"] == update and stored[2]["outcome"] == "refused"
    assert stored[2]["error"].startswith("audit_unavailable: ")
    assert [e["statement"] for e in stored[3:30]] == [f"SELECT {j}" for j in range(27)]
    assert [e["kind"] for e in stored[30:]] == ["decision", "session_closed"]
    assert rec.stats["failures"] >= 1
    assert_verified(s3, sessions=1)


def test_events_waiting_too_long_backlog_the_recorder_until_s3_recovers(s3):
    probe = S3Probe(s3)
    rec = recorder(probe, flush_interval_s=0.05, max_backlog_age_s=0.2)

    async def scenario() -> None:
        session = open_session(rec, "sess-1")
        probe.fail_puts = True
        session.record("received", statement="SELECT 1")
        await eventually(lambda: rec.backlogged)
        assert rec.stats["pending_events"] == 1
        with pytest.raises(RecorderBackloggedError):
            session.record("received", statement="SELECT 2")
        probe.fail_puts = False
        await eventually(lambda: not rec.backlogged)
        session.record("received", statement="SELECT 3")
        await session.close()

    run(rec, scenario)

    assert [e["statement"] for e in stored_events(s3, "sess-1")] == ["SELECT 1", "SELECT 3", None]
    assert_verified(s3, sessions=1)


def test_a_write_that_landed_although_it_failed_is_adopted_not_written_twice(s3):
    probe = S3Probe(s3)
    rec = recorder(probe, flush_interval_s=0.05)

    async def scenario() -> None:
        session = open_session(rec, "sess-1")
        # The put lands but its answer is lost, and every retry of this cycle fails.
        probe.script.extend(["lost", "fail", "fail", "fail", "fail"])
        with pytest.raises(AuditWriteError):
            await session.record_durable("decision", statement="DELETE FROM t", decision="allow")
        await eventually(lambda: rec.stats["pending_events"] == 0)
        await session.close()

    run(rec, scenario)

    stored = stored_events(s3, "sess-1")
    assert [e["kind"] for e in stored] == ["decision", "refused", "session_closed"]
    assert Counter(e["statement"] for e in stored)["DELETE FROM t"] == 2  # the decision and its refusal
    assert_verified(s3, sessions=1)


def test_close_fails_while_s3_is_down_and_the_recorder_finishes_it_later(s3):
    probe = S3Probe(s3)
    rec = recorder(probe, flush_interval_s=0.05)

    async def scenario() -> None:
        session = open_session(rec, "sess-1")
        session.record("received", statement="SELECT 1")
        probe.fail_puts = True
        with pytest.raises(AuditWriteError):
            await session.close()
        assert not session.closed
        probe.fail_puts = False
        await eventually(lambda: session.closed)
        await session.close()

    run(rec, scenario)

    assert [e["kind"] for e in stored_events(s3, "sess-1")] == ["received", "session_closed"]
    assert_verified(s3, sessions=1)


def test_a_statement_cancelled_while_it_waits_leaves_its_event_to_be_written(s3):
    probe = S3Probe(s3)
    rec = recorder(probe)

    async def scenario() -> None:
        session = open_session(rec, "sess-1")
        durable = session.record_durable("decision", statement="SELECT 1", decision="allow")
        waiting = asyncio.create_task(durable)
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await session.record_durable("decision", statement="SELECT 2", decision="allow")
        await session.close()

    run(rec, scenario)

    assert [e["statement"] for e in stored_events(s3, "sess-1")] == ["SELECT 1", "SELECT 2", None]


# -- stop ------------------------------------------------------------------------------------------


def test_stop_writes_and_closes_every_open_session(s3):
    probe = S3Probe(s3)
    rec = recorder(probe, flush_interval_s=60)

    async def main() -> None:
        await rec.start()
        sessions = [open_session(rec, f"sess-{n}") for n in range(3)]
        for session in sessions:
            session.record("session_started")
            session.record("executed", statement="SELECT 1", outcome="ok", row_count=1)
        assert probe.puts == 0
        await rec.stop(deadline_s=10)
        assert all(s.closed for s in sessions)
        with pytest.raises(AuditWriteError):
            sessions[0].record("received", statement="SELECT 2")
        with pytest.raises(AuditWriteError):
            open_session(rec, "sess-late")

    asyncio.run(main())

    for n in range(3):
        kinds = [e["kind"] for e in stored_events(s3, f"sess-{n}")]
        assert kinds == ["session_started", "executed", "session_closed"]
    assert probe.puts == 3
    assert_verified(s3, sessions=3)


def test_stop_gives_up_at_its_deadline_and_says_what_it_could_not_write(s3, caplog):
    probe = S3Probe(s3)
    rec = recorder(probe, flush_interval_s=0.05)

    async def main() -> None:
        await rec.start()
        session = open_session(rec, "sess-1")
        probe.fail_puts = True
        session.record("received", statement="SELECT 1")
        started = time.monotonic()
        await rec.stop(deadline_s=0.3)
        assert time.monotonic() - started < 5
        assert not session.closed

    with caplog.at_level("ERROR", logger="gatehouse.proxy.postgres.recorder"):
        asyncio.run(main())

    assert "session sess-1 not closed, 1 event(s) not stored" in caplog.text
    assert stored_events(s3, "sess-1") == []


# -- what the recorder relies on in SessionLog ------------------------------------------------------


def test_session_log_settle_adopts_a_write_that_landed_although_it_failed(s3):
    faulty = FaultyS3(s3)
    session_log = start_session(faulty)
    faulty.fail("put_object", ("after", SLOW_DOWN), SLOW_DOWN, SLOW_DOWN, SLOW_DOWN, SLOW_DOWN)
    session_log.stage("received", statement="SELECT 1")
    session_log.stage("decision", statement="SELECT 1", decision="allow")
    with pytest.raises(AuditWriteError):
        session_log.flush()
    assert session_log.next_seq == 0

    assert session_log.settle() == 2
    assert session_log.next_seq == 2
    assert session_log.settle() == 0


def test_a_close_retried_after_its_answer_was_lost_writes_one_session_closed(s3):
    faulty = FaultyS3(s3)
    session_log = start_session(faulty)
    session_log.append("received", statement="SELECT 1")
    faulty.fail("put_object", ("after", SLOW_DOWN), SLOW_DOWN, SLOW_DOWN, SLOW_DOWN, SLOW_DOWN)
    with pytest.raises(AuditWriteError):
        session_log.close()

    summary = session_log.close()

    assert summary["event_count"] == 2
    assert [e["kind"] for e in stored_events(s3, "sess-1")] == ["received", "session_closed"]
    assert_verified(s3, sessions=1)
