"""HTTP, Kubernetes and SSH commands through the signed API: the same decision path as SQL.

Real servers on loopback (an HTTP service of the test's own, the Kubernetes stand-in, OpenSSH),
registered as connections of the local stack the way an operator registers them (a registry item
and a secret); the agent signs with SigV4 as for SQL.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gatehouse import cli
from gatehouse.local.demo import slack_message_for
from gatehouse.local.k8s_standin import KubernetesStandIn
from gatehouse.local.provision import put_item
from gatehouse.local.sshd import ThrowawaySshd
from tests.integration.conftest import RunningStack

CUSTOMERS = {"1": {"id": 1, "name": "Alice Martin", "email": "alice@example.com", "plan": "pro"}}


class _Service(BaseHTTPRequestHandler):
    refunds: list[dict[str, Any]] = []
    seen_auth: list[str] = []

    def log_message(self, *_args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        found = CUSTOMERS.get(self.path.rsplit("/", 1)[-1])
        self._answer(200 if found else 404, found or {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.refunds.append(json.loads(self.rfile.read(length) or b"{}"))
        self._answer(201, {"refund": len(self.refunds)})


def _register(stack: RunningStack, name: str, kind: str, secret: dict[str, Any], **item: Any) -> None:
    sm = stack.aws("secretsmanager")
    arn = sm.create_secret(Name=f"gatehouse/connections/{name}", SecretString=json.dumps(secret))["ARN"]
    settings = stack.stack.provisioned.settings  # type: ignore[union-attr]
    put_item(
        stack.aws("dynamodb"),
        settings.connections_table,
        {"name": name, "kind": kind, "secret_id": arn, "masking_profile": "pii-strict", **item},
    )


@pytest.fixture(scope="module")
def targets(local_stack: RunningStack) -> Iterator[dict[str, Any]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    k8s = KubernetesStandIn().start()
    sshd = ThrowawaySshd()
    ssh = sshd.start()
    try:
        port = server.server_address[1]
        http_attributes = {"env": "prod", "base_url": f"http://127.0.0.1:{port}", "local": True}
        _register(local_stack, "t-http", "http", {"token": "service-token-123"}, host="127.0.0.1", port=port,
                  attributes=http_attributes)  # fmt: skip
        _register(local_stack, "t-k8s", "kubernetes", k8s.credential(),
                  attributes={"env": "prod", **k8s.connection_attributes()})  # fmt: skip
        _register(local_stack, "t-ssh", "ssh", ssh.credential(), host=ssh.host, port=ssh.port,
                  attributes={"env": "prod", "username": ssh.username, "host_key": ssh.host_key})  # fmt: skip
        yield {"http_port": port, "k8s": k8s, "ssh": ssh}
    finally:
        server.shutdown()
        server.server_close()
        k8s.stop()
        sshd.stop()


def _submit(stack: RunningStack, body: dict[str, Any]) -> Any:
    return stack.client("analyst")._call("POST", "/v1/requests", {"reason": "test", **body})


def _wait(check: Callable[[], Any], timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    return check()


def test_an_http_read_is_allowed_masked_and_carries_the_gateways_credential(
    local_stack: RunningStack, targets: dict[str, Any]
) -> None:
    answer = _submit(local_stack, {"connection": "t-http", "http": {"method": "GET", "path": "/customers/1"}})
    assert answer.status_code == 200, answer.body
    body = answer.body
    assert body["status"] == "executed" and body["statement_class"] == "read"
    assert body["decision"]["policy_ids"] == ["targets-read"]
    text = json.dumps(body["result"])
    assert "alice@example.com" not in text and body["result"]["status_code"] == 200
    assert _Service.seen_auth[-1] == "Bearer service-token-123"  # injected, never the agent's
    assert "service-token-123" not in json.dumps(body)


def test_an_http_write_waits_for_a_dba_then_runs_once(
    local_stack: RunningStack, targets: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(_Service.refunds)
    answer = _submit(
        local_stack,
        {"connection": "t-http", "http": {"method": "POST", "path": "/refunds", "body": {"id": 1}}},
    )
    assert answer.status_code == 202, answer.body
    request_id = answer.body["request_id"]
    assert answer.body["preview"]["mode"] == "none"
    assert len(_Service.refunds) == before  # nothing sent yet
    # The vote resumes the approval workflow: it must have posted its message (holding its task token).
    assert _wait(lambda: slack_message_for(local_stack.state, request_id)), "no approval message"
    code = cli.main(["approve", request_id, "--as", "U_ALICE", "--state", str(local_stack.stack.state_path)])
    capsys.readouterr()
    assert code == 0
    record = _wait(
        lambda: (
            (r := local_stack.client("analyst").get_request(request_id).body).get("status") == "executed"
            and r
        )
    )
    assert record and record["status"] == "executed", record
    assert _Service.refunds[before:] == [{"id": 1}]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"connection": "t-http", "sql": "SELECT 1"}, "kind_mismatch"),
        ({"connection": "demo-prod", "http": {"method": "GET", "path": "/x"}}, "kind_mismatch"),
        ({"connection": "t-http", "http": {"method": "GET", "path": "//evil.example/x"}}, None),
        (
            {
                "connection": "t-http",
                "http": {"method": "GET", "path": "/x", "headers": {"Authorization": "a"}},
            },
            None,
        ),
        ({"connection": "t-http", "http": {"method": "GET", "path": "/x\r\nX-A: b"}}, None),
        ({"connection": "t-http", "http": {"method": "GET", "path": "/x"}, "sql": "SELECT 1"}, None),
        ({"connection": "t-k8s", "kubernetes": {"verb": "nuke", "resource": "pods"}}, None),
        ({"connection": "t-k8s", "kubernetes": {"verb": "get", "resource": "pods", "name": "../../x"}}, None),
        ({"connection": "t-ssh", "ssh": {"command": "ls\x1b[2J"}}, None),
    ],
)
def test_bad_commands_get_a_4xx_and_never_run(
    local_stack: RunningStack, targets: dict[str, Any], body: dict[str, Any], code: str | None
) -> None:
    answer = _submit(local_stack, body)
    assert 400 <= answer.status_code < 500, answer.body
    if code is not None:
        assert answer.body["error"] == code


def test_kubernetes_reads_run_and_secrets_wait_for_approval(
    local_stack: RunningStack, targets: dict[str, Any]
) -> None:
    pods = _submit(local_stack, {"connection": "t-k8s", "kubernetes": {"verb": "list", "resource": "pods"}})
    assert pods.status_code == 200, pods.body
    names = {item["metadata"]["name"] for item in pods.body["result"]["object"]["items"]}
    assert {"web-1", "web-2"} <= names
    secret = _submit(
        local_stack,
        {
            "connection": "t-k8s",
            "kubernetes": {"verb": "get", "resource": "secrets", "name": "db-credentials"},
        },
    )
    assert secret.status_code == 202 and secret.body["statement_class"] == "secrets", secret.body


def test_a_kubernetes_exec_waits_for_a_dba_then_runs_once_masked(
    local_stack: RunningStack, targets: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    k8s: KubernetesStandIn = targets["k8s"]
    argv = ["echo", "owner ada@example.com"]
    answer = _submit(
        local_stack,
        {"connection": "t-k8s", "kubernetes": {"verb": "exec", "resource": "pods", "name": "web-1",
                                               "body": {"command": argv, "container": "web"}}},
    )  # fmt: skip
    assert answer.status_code == 202, answer.body
    assert answer.body["statement_class"] == "exec"
    request_id = answer.body["request_id"]
    assert not [p for _, p in k8s.requests if "/exec?" in p]  # nothing ran before the approval
    # The vote resumes the approval workflow: it must have posted its message (holding its task token).
    assert _wait(lambda: slack_message_for(local_stack.state, request_id)), "no approval message"
    code = cli.main(["approve", request_id, "--as", "U_ALICE", "--state", str(local_stack.stack.state_path)])
    capsys.readouterr()
    assert code == 0
    record = _wait(
        lambda: (
            (r := local_stack.client("analyst").get_request(request_id).body).get("status") == "executed"
            and r
        )
    )
    assert record and record["status"] == "executed", record
    result = record["result"]
    assert result["exit_status"] == 0 and result["stderr"] == ""
    assert result["stdout"] == "owner [EMAIL]\n"
    assert "ada@example.com" not in json.dumps(result)  # the output masked (the agent's own argv is kept)
    assert len([p for _, p in k8s.requests if "/exec?" in p]) == 1  # run once


def test_ssh_reads_run_and_writes_wait_for_approval(
    local_stack: RunningStack, targets: dict[str, Any]
) -> None:
    read = _submit(local_stack, {"connection": "t-ssh", "ssh": {"command": "echo hello; uname -s"}})
    assert read.status_code == 200, read.body
    assert read.body["result"]["exit_status"] == 0 and "hello" in read.body["result"]["stdout"]
    hidden = _submit(local_stack, {"connection": "t-ssh", "ssh": {"command": "ls $(rm -rf /tmp/x)"}})
    assert hidden.status_code == 202 and hidden.body["statement_class"] == "write", hidden.body


def test_each_kinds_command_is_in_the_session_log(local_stack: RunningStack, targets: dict[str, Any]) -> None:
    answer = _submit(local_stack, {"connection": "t-http", "http": {"method": "GET", "path": "/customers/1"}})
    request_id = answer.body["request_id"]
    s3 = local_stack.aws("s3")
    bucket = local_stack.state["bucket"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="events/").get("Contents", [])
            if f"session={request_id}/" in o["Key"]]  # fmt: skip
    events = [
        json.loads(line)
        for k in keys
        for line in s3.get_object(Bucket=bucket, Key=k)["Body"].read().splitlines()
    ]
    kinds = [e["kind"] for e in events]
    assert kinds == ["received", "decision", "executed", "session_closed"], kinds
    assert {e["target_kind"] for e in events} == {"http"}
    assert events[0]["statement"].startswith("GET /customers/1")


@pytest.mark.parametrize(
    "command",
    [
        {"http": {"method": "GET", "path": "/../../etc/passwd"}},
        {"http": {"method": "GET", "path": "/x", "headers": {"Cookie": "session=stolen"}}},
    ],
)
def test_a_refused_command_is_on_record_and_never_reaches_the_service(
    local_stack: RunningStack, targets: dict[str, Any], command: dict[str, Any]
) -> None:
    sent_before = len(_Service.seen_auth)
    answer = _submit(local_stack, {"connection": "t-http", **command})
    assert 400 <= answer.status_code < 500, answer.body
    request_id = answer.body["request_id"]
    s3 = local_stack.aws("s3")
    bucket = local_stack.state["bucket"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="events/").get("Contents", [])
            if f"session={request_id}/" in o["Key"]]  # fmt: skip
    events = [
        json.loads(line)
        for k in keys
        for line in s3.get_object(Bucket=bucket, Key=k)["Body"].read().splitlines()
    ]
    assert [e["kind"] for e in events] == ["received", "refused", "session_closed"]
    assert events[1]["error"].startswith("http_")
    assert "stolen" not in json.dumps(events)  # an agent's cookie never reaches the log
    assert len(_Service.seen_auth) == sent_before  # nothing was sent
