"""The whole local stack: up, serve signed requests, down with nothing left running."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest

from gatehouse import names
from gatehouse.client import GatehouseClient
from gatehouse.local.stack import STATE_KEYS, LambdaFunction, LocalStack, StackAlreadyRunningError
from tests.integration.local_fixtures import STUB_HANDLER_SOURCE, RecordingHandler, port_is_closed

STATE = Path(".gatehouse") / "local.json"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def stub_handler_file(tmp_path) -> Path:
    path = tmp_path / "fn" / "handler.py"
    path.parent.mkdir()
    path.write_text(STUB_HANDLER_SOURCE)
    return path


def addresses(state: dict) -> list[int]:
    return [int(state["api"].rsplit(":", 1)[1]), int(state["aws"].rsplit(":", 1)[1])]


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent (init) has not reaped yet."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line.rsplit(")", 1)[-1].split()[0] == "Z"


def connection_passwords(aws_endpoint: str) -> list[str]:
    sm = boto3.client(
        "secretsmanager",
        endpoint_url=aws_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return [
        json.loads(sm.get_secret_value(SecretId=names.connection_secret_name(n))["SecretString"])["password"]
        for n in ("demo-dev", "demo-prod")
    ]


def test_up_writes_the_contract_and_down_stops_everything(in_tmp):
    recorder = RecordingHandler()
    stack = LocalStack(handler=recorder)
    env_before = dict(os.environ)
    threads_before = set(threading.enumerate())

    state = stack.up()
    try:
        on_disk = json.loads(STATE.read_text())
        assert stack.postgres is not None
        pg_port = stack.postgres.port
        passwords = connection_passwords(state["aws"])

        # The contract keys, and nothing else.
        assert on_disk == state
        assert tuple(on_disk) == STATE_KEYS
        assert on_disk["pg_proxy"].startswith("127.0.0.1:") and on_disk["console"].startswith(
            "http://127.0.0.1:"
        )
        assert isinstance(on_disk["pg_proxy_pid"], int) and on_disk["pg_proxy_pid"] != os.getpid()
        assert on_disk["region"] == "us-east-1" and on_disk["pid"] == os.getpid()
        assert on_disk["bucket"] == names.session_log_bucket("123456789012", "us-east-1")
        assert set(on_disk["agents"]["analyst"]) == {"access_key_id", "secret_access_key"}
        assert stat.S_IMODE(STATE.stat().st_mode) == 0o600
        # Database credentials live in Secrets Manager only.
        assert not any(p in STATE.read_text() for p in passwords)

        # The agent's keys from local.json sign requests the stand-in accepts.
        answer = GatehouseClient.from_local("analyst", STATE).list_connections()
        assert answer.status_code == 200
        iam = recorder.events[0]["requestContext"]["authorizer"]["iam"]
        assert iam["userArn"] == "arn:aws:iam::123456789012:user/gatehouse-agent-analyst"

        # The handler's environment points at the local AWS and names the local resources.
        assert os.environ["AWS_ENDPOINT_URL"] == state["aws"]
        assert os.environ[names.ENV_LOG_BUCKET] == state["bucket"]

        # One stack per directory.
        with pytest.raises(StackAlreadyRunningError, match="already running"):
            LocalStack(handler=recorder).up()
    finally:
        stack.down()

    assert not STATE.exists()
    assert all(port_is_closed(p) for p in [*addresses(state), pg_port])
    assert dict(os.environ) == env_before
    leftover = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert leftover == []


def test_a_handler_that_cannot_import_fails_up_and_leaves_nothing_running(in_tmp, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('the handler cannot import')\n")
    stack = LocalStack(handler_path=broken)
    threads_before = set(threading.enumerate())

    with pytest.raises(ImportError, match="cannot import"):
        stack.up()

    assert stack.provisioned is not None  # it got as far as provisioning, then cleaned up
    assert stack.postgres is None and not STATE.exists()
    assert [t for t in set(threading.enumerate()) - threads_before if t.is_alive()] == []
    with LocalStack(handler=RecordingHandler()) as state:  # the lock was released
        assert state["api"]


def test_the_default_function_runs_in_environments_of_its_own(stub_handler_file):
    function = LambdaFunction(stub_handler_file, max_environments=2)
    release = threading.Event()
    results: list[dict] = []

    try:
        function.warm()
        first = json.loads(function({}, type("C", (), {"function_name": "f"})())["body"])
        second = json.loads(function({}, type("C", (), {"function_name": "f"})())["body"])
        # Warm reuse: the same environment (module globals) served both.
        assert (first["environment_invocations"], second["environment_invocations"]) == (1, 2)

        # Two invocations at once run in two environments.
        def slow_call() -> None:
            release.wait(5)
            results.append(json.loads(function({}, type("C", (), {"function_name": "f"})())["body"]))

        workers = [threading.Thread(target=slow_call) for _ in range(2)]
        for w in workers:
            w.start()
        release.set()
        for w in workers:
            w.join(10)
        assert len(results) == 2
    finally:
        function.close()


def test_the_cli_detaches_refuses_a_second_up_and_brings_it_down(in_tmp, stub_handler_file):
    def gatehouse_local(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gatehouse.local.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    up = gatehouse_local("up", "--detach", "--handler-path", str(stub_handler_file))
    assert up.returncode == 0, up.stderr
    state = json.loads(STATE.read_text())
    try:
        assert state["pid"] != os.getpid()
        answer = GatehouseClient.from_local("analyst", STATE).list_connections()
        assert answer.status_code == 200 and answer.body["function_name"] == "gatehouse-api"

        again = gatehouse_local("up", "--detach")
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = gatehouse_local("down")

    assert down.returncode == 0, down.stderr
    assert f"pid {state['pid']}" in down.stdout
    assert not STATE.exists()
    assert all(port_is_closed(p) for p in addresses(state))
    assert process_gone(state["pid"])
    log = (in_tmp / ".gatehouse" / "local.log").read_text()
    assert "local stack stopped" in log
    assert not any(k["secret_access_key"] in log for k in state["agents"].values())
    assert gatehouse_local("down").stdout.strip() == "no local stack was running"
