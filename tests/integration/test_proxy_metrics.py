"""The proxy's metrics, as CloudWatch would read them: EMF lines on the proxy's stdout (local stack).

A proxy server runs in this process (`gatehouse.proxy.postgres.app.build_server`, the same builder
`gatehouse proxy serve` uses) against the local stack's moto, tables and Postgres, with a short
metrics interval; pg8000 logs in with a password from POST /v1/proxy-tokens. The session log's
writes are made to fail with the request path tests' S3 failure injection, and what the EMF
lines say is checked against what the alarms (infra/monitoring.py) read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import boto3
import pg8000.native
import pytest

from gatehouse import names
from gatehouse.audit.events import EVENT_KINDS
from gatehouse.config import Settings
from gatehouse.proxy.postgres.app import build_server, proxy_config
from gatehouse.proxy.postgres.metrics import ENV_PROXY_METRICS_INTERVAL_S
from gatehouse.proxy.postgres.server import ProxyServer
from tests.integration.conftest import RunningStack
from tests.integration.test_request_path import S3RefusingKinds

READ = "SELECT id, name FROM customers WHERE id = 7"
FAILURES, BACKLOG = names.METRIC_RECORDER_FAILURES, names.METRIC_LOG_BACKLOG_EVENTS


class SessionLogFaults:
    """A boto3 session whose S3 clients refuse session-log objects holding any kind in `refused`
    (empty: S3 works); every other client is the real one, pointed at the stack's moto."""

    def __init__(self, refused: set[str]) -> None:
        self._session = boto3.session.Session()
        self._refused = refused

    def client(self, service: str, **kwargs: Any) -> Any:
        real = self._session.client(service, **kwargs)
        return S3RefusingKinds(real, self._refused) if service == "s3" else real


def emf_documents(stdout: str) -> list[dict[str, float]]:
    """The metrics of every EMF line in `stdout`, each line checked against the EMF specification
    and against what the alarms read: the namespace, the two metrics, no dimension."""
    found = []
    for line in stdout.splitlines():
        if '"_aws"' not in line:
            continue
        doc = json.loads(line)  # one JSON object a line, nothing around it
        meta = doc.pop("_aws")
        assert abs(meta.pop("Timestamp") / 1000 - time.time()) < 60, line
        assert meta == {
            "CloudWatchMetrics": [
                {
                    "Namespace": names.PROXY_METRICS_NAMESPACE,
                    # One dimension set with no key: published without dimensions, as alarmed.
                    "Dimensions": [[]],
                    "Metrics": [{"Name": FAILURES, "Unit": "Count"}, {"Name": BACKLOG, "Unit": "Count"}],
                }
            ]
        }, line
        # Every member a directive names is there, and nothing else (a `service` member would be a
        # dimension value the directive does not name, harmless, but a sign of a stray dimension).
        assert set(doc) == {FAILURES, BACKLOG}, line
        values = {}
        for name, value in doc.items():
            [number] = value if isinstance(value, list) else [value]
            assert isinstance(number, int | float) and number >= 0, line
            values[name] = float(number)
        found.append(values)
    return found


def login(stack: RunningStack, server: ProxyServer, connection: str) -> pg8000.native.Connection:
    answer = stack.client("analyst").proxy_token(connection)
    assert answer.status_code == 200, answer.body
    host, port = server.address
    return pg8000.native.Connection(
        str(answer.body["username"]),
        host=host,
        port=port,
        password=str(answer.body["password"]),
        database=str(answer.body["database"]),
        timeout=30,
        ssl_context=False,  # loopback: the proxy accepts plaintext there
    )


async def until(check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(0.05)


def run_proxy(
    refused: set[str], interval_s: float, scenario: Callable[[ProxyServer], Awaitable[None]]
) -> None:
    async def main() -> None:
        # The proxy's own environment variables, as `gatehouse proxy serve` reads them.
        config = proxy_config(
            {
                names.ENV_PROXY_LISTEN: "127.0.0.1:0",
                names.ENV_PROXY_HEALTH: "",
                ENV_PROXY_METRICS_INTERVAL_S: str(interval_s),
            }
        )
        server = build_server(Settings.from_env(), config, SessionLogFaults(refused))
        await server.start()
        try:
            await scenario(server)
        finally:
            await server.stop(drain_s=1)

    asyncio.run(main())


def test_failed_session_log_writes_and_the_backlog_reach_the_metrics_and_clear_when_s3_recovers(
    local_stack: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    refused: set[str] = set()
    seen: list[dict[str, float]] = []

    def read_lines() -> list[dict[str, float]]:
        seen.extend(emf_documents(capsys.readouterr().out))
        return seen

    async def scenario(server: ProxyServer) -> None:
        # Given a healthy proxy: it publishes, and reports neither failures nor a backlog
        assert await until(lambda: len(read_lines()) >= 2, 10), seen
        assert seen[0] == {FAILURES: 0.0, BACKLOG: 0.0}
        client = await asyncio.to_thread(login, local_stack, server, "demo-dev")
        try:
            # When S3 refuses every session-log object and the agent goes on reading (reads are
            # recorded asynchronously on demo-dev, so they run and their events wait)
            refused.update(EVENT_KINDS)
            for _ in range(3):
                rows = await asyncio.to_thread(client.run, READ)
                assert [row[0] for row in rows] == [7]
            seen.clear()

            # Then the failures are counted and the waiting events are the backlog
            def failing() -> bool:
                lines = read_lines()
                return sum(x[FAILURES] for x in lines) >= 2 and any(x[BACKLOG] >= 3 for x in lines)

            assert await until(failing, 10), seen

            # When S3 recovers: the backlog is written, and the failures stop
            refused.clear()
            seen.clear()

            def recovered() -> bool:
                lines = read_lines()
                drained = [i for i, x in enumerate(lines) if x[BACKLOG] == 0]
                return (
                    bool(drained)
                    and lines[drained[0] + 1 :] != []
                    and all(x == {FAILURES: 0.0, BACKLOG: 0.0} for x in lines[drained[0] + 1 :])
                )

            assert await until(recovered, 10), seen
        finally:
            await asyncio.to_thread(client.close)

    run_proxy(refused, 0.2, scenario)


def test_the_drain_publishes_the_last_failures_and_what_was_left_unstored(
    local_stack: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # An hour between emissions: whatever is published below is the drain's.
    refused: set[str] = set()
    lines_before_stop: list[dict[str, float]] = []

    async def scenario(server: ProxyServer) -> None:
        client = await asyncio.to_thread(login, local_stack, server, "demo-dev")
        refused.update(EVENT_KINDS)
        await asyncio.to_thread(client.run, READ)
        await asyncio.to_thread(client.close)
        lines_before_stop.extend(emf_documents(capsys.readouterr().out))

    run_proxy(refused, 3600, scenario)

    assert lines_before_stop == []
    [last] = emf_documents(capsys.readouterr().out)
    # The read's record could never be written: the drain retried it (with the session's close)
    # until the recorder's deadline, counted each failed attempt, and left it unstored.
    assert last[FAILURES] >= 2
    assert last[BACKLOG] >= 1
