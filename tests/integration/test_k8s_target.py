"""The Kubernetes executor against the stand-in API server on loopback, checked by the official client.

Every path the executor uses is also driven by the official `kubernetes` Python client: what one
writes the other reads, and both reach the same URLs on the server.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import kubernetes.stream
import pytest
from kubernetes.client.exceptions import ApiException

from gatehouse.exceptions import GatehouseError, StatementTimeoutError, TargetUnavailableError
from gatehouse.local.k8s_standin import KubernetesStandIn, generate_certificates, websocket_accept
from gatehouse.masking import Masker, load_profile
from gatehouse.models import Connection
from gatehouse.targets.kubernetes import KubernetesCommand, classify, execute

MASKER = Masker(load_profile("default"), b"k8s-integration-key" * 2)
PASSWORD_B64 = "czNjcjN0LVBhNTV3b3Jk"  # base64 of the seeded Secret's password


@pytest.fixture
def standin() -> Iterator[KubernetesStandIn]:
    with KubernetesStandIn() as server:
        yield server


def connection_to(server: KubernetesStandIn, **attributes: Any) -> Connection:
    return kubernetes_connection(
        "demo-k8s", {**server.connection_attributes(), "env": "prod", **attributes}, "gatehouse/demo-k8s"
    )


def kubernetes_connection(name: str, attributes: dict[str, Any], secret_id: str) -> Connection:
    return Connection(
        name=name,
        kind="kubernetes",
        host="127.0.0.1",
        port=0,
        database="",
        secret_id=secret_id,
        attributes=attributes,
    )


def tls_listener(tmp_path: Path) -> tuple[socket.socket, ssl.SSLContext, bytes]:
    """A loopback listener, the server-side TLS context to wrap its connections, and its CA (PEM)."""
    ca_pem, cert_pem, key_pem = generate_certificates()
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    return socket.create_server(("127.0.0.1", 0)), context, ca_pem


def scripted_server(name: str, listener: socket.socket, ca_pem: bytes) -> Connection:
    """A connection to a hand-scripted API server on `listener` whose certificate `ca_pem` signs."""
    attributes = {"api_server": f"https://127.0.0.1:{listener.getsockname()[1]}", "ca_pem": ca_pem.decode()}
    return kubernetes_connection(name, attributes, secret_id="unused")


@pytest.fixture
def official(standin: KubernetesStandIn, tmp_path: Path) -> k8s.ApiClient:
    """The official client, configured as a kubeconfig would: host, pinned CA, bearer token."""
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(standin.ca_pem)
    config = k8s.Configuration(
        host=standin.url,
        api_key={"BearerToken": standin.token},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    config.ssl_ca_cert = str(ca_file)
    with k8s.ApiClient(config) as client:
        yield client


def run(
    server: KubernetesStandIn, *, max_bytes: int = 1_000_000, timeout_s: float = 5.0, **fields: Any
) -> Any:
    return execute(
        KubernetesCommand(**fields),
        connection_to(server),
        server.credential(),
        timeout_s=timeout_s,
        max_bytes=max_bytes,
        masker=MASKER,
    )


def test_list_and_get_pods_as_the_official_client_sees_them(
    standin: KubernetesStandIn, official: k8s.ApiClient
) -> None:
    listed = run(standin, verb="list", resource="pods")
    assert listed.status == "ok" and listed.row_count == 2
    assert listed.body["object"]["kind"] == "PodList"
    names = [p["metadata"]["name"] for p in listed.body["object"]["items"]]
    client_names = [p.metadata.name for p in k8s.CoreV1Api(official).list_namespaced_pod("default").items]
    assert names == client_names == ["web-1", "web-2"]

    got = run(standin, verb="get", resource="pods", name="web-2")
    assert got.body["object"]["status"]["phase"] == "Running"
    assert got.row_count == 1
    # Both reached the same REST paths.
    paths = {path.split("?")[0] for _, path in standin.requests}
    assert paths == {"/api/v1/namespaces/default/pods", "/api/v1/namespaces/default/pods/web-2"}


def test_a_missing_object_is_an_error_result_with_the_servers_status(standin: KubernetesStandIn) -> None:
    result = run(standin, verb="get", resource="deployments", name="nope")
    assert result.status == "error"
    assert result.body["http_status"] == 404
    assert result.body["reason"] == "NotFound"
    assert result.body["status"]["kind"] == "Status"


def test_secret_values_are_redacted_in_every_answer(
    standin: KubernetesStandIn, official: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(official)
    # The official client sees the real value: the stand-in really holds it.
    assert core.read_namespaced_secret("db-credentials", "default").data["password"] == PASSWORD_B64

    got = run(standin, verb="get", resource="secrets", name="db-credentials")
    assert got.status == "ok"
    assert got.body["object"]["data"] == {"username": "[REDACTED]", "password": "[REDACTED]"}
    listed = run(standin, verb="list", resource="secrets")
    assert listed.body["object"]["items"][0]["data"]["password"] == "[REDACTED]"
    watched = run(standin, verb="watch", resource="secrets", timeout_s=2)
    assert watched.body["events"][0]["object"]["data"]["password"] == "[REDACTED]"

    annotation = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps({"stringData": {"k": "hunter2"}})
    }
    created = run(
        standin,
        verb="create",
        resource="secrets",
        body={"metadata": {"name": "api-key", "annotations": annotation}, "stringData": {"key": "hunter2"}},
    )
    assert created.status == "ok"
    for result in (got, listed, watched, created):
        dumped = json.dumps(result.body)
        assert PASSWORD_B64 not in dumped and "hunter2" not in dumped and "aHVudGVyMg" not in dumped
    # It was really written: the official client reads the value back.
    assert core.read_namespaced_secret("api-key", "default").data["key"] == "aHVudGVyMg=="


def test_logs_are_masked_and_cut_at_the_byte_cap(standin: KubernetesStandIn, official: k8s.ApiClient) -> None:
    full = k8s.CoreV1Api(official).read_namespaced_pod_log("web-1", "default")
    assert "ada@example.com" in full

    logs = run(standin, verb="logs", resource="pods", name="web-1")
    assert logs.status == "ok" and not logs.truncated
    assert "ada@example.com" not in logs.body["log"]
    assert "user=[EMAIL]" in logs.body["log"]
    assert logs.body["log"].count("\n") == full.count("\n")

    cut = run(standin, verb="logs", resource="pods", name="web-1", max_bytes=40)
    assert cut.truncated
    assert len(cut.body["log"].encode()) <= 40
    tail = run(standin, verb="logs", resource="pods", name="web-1", body={"tailLines": 1})
    assert tail.body["log"] == "2026-12-01T09:00:02Z POST /refunds 201\n"


def test_a_list_over_the_byte_cap_is_cut_at_a_page(
    standin: KubernetesStandIn, official: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(official)
    for i in range(150):
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": f"cm-{i:03d}"}, "data": {"value": "x" * 100}}
        )
    everything = run(standin, verb="list", resource="configmaps")
    # Two pages of LIST_PAGE_ITEMS, put together: the agent gets the whole list.
    assert everything.row_count == 150 and not everything.truncated
    assert "continue" not in everything.body["object"]["metadata"]

    first_page = core.list_namespaced_config_map("default", limit=100, _preload_content=False).data
    # Room for the first page and a little more, not for the second.
    cut = run(standin, verb="list", resource="configmaps", max_bytes=len(first_page) + 4096)
    assert cut.truncated and cut.row_count == 100
    assert "continue" not in cut.body["object"]["metadata"]


def test_scale_and_patch_are_written_where_the_official_client_reads(
    standin: KubernetesStandIn, official: k8s.ApiClient
) -> None:
    apps = k8s.AppsV1Api(official)
    scaled = run(standin, verb="scale", resource="deployments", name="web", body={"replicas": 4})
    assert scaled.status == "ok"
    assert scaled.body["object"]["kind"] == "Scale" and scaled.body["object"]["spec"]["replicas"] == 4
    assert apps.read_namespaced_deployment_scale("web", "default").spec.replicas == 4

    read_scale = run(standin, verb="get", resource="deployments", name="web", subresource="scale")
    assert read_scale.body["object"]["spec"]["replicas"] == 4

    patched = run(
        standin,
        verb="patch",
        resource="deployments",
        name="web",
        body={"metadata": {"labels": {"release": "canary"}}},
    )
    assert patched.body["object"]["metadata"]["labels"] == {"app": "web", "release": "canary"}
    assert apps.read_namespaced_deployment("web", "default").metadata.labels["release"] == "canary"

    # The official client's own writes go to the same subresource path.
    apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 1}})
    assert (
        run(standin, verb="get", resource="deployments", name="web").body["object"]["spec"]["replicas"] == 1
    )
    scale_paths = {(m, p) for m, p in standin.requests if p.endswith("/scale")}
    assert ("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/scale") in scale_paths
    assert ("GET", "/apis/apps/v1/namespaces/default/deployments/web/scale") in scale_paths


def test_create_update_delete_round_trip(standin: KubernetesStandIn, official: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(official)
    created = run(
        standin, verb="create", resource="configmaps", name="feature-flags", body={"data": {"a": "1"}}
    )
    assert created.status == "ok" and created.body["http_status"] == 201
    assert core.read_namespaced_config_map("feature-flags", "default").data == {"a": "1"}

    again = run(standin, verb="create", resource="configmaps", name="feature-flags", body={"data": {}})
    assert again.status == "error" and again.body["reason"] == "AlreadyExists"

    updated = run(
        standin,
        verb="update",
        resource="configmaps",
        name="feature-flags",
        body={"metadata": {"name": "feature-flags"}, "data": {"a": "2"}},
    )
    assert updated.status == "ok"
    assert core.read_namespaced_config_map("feature-flags", "default").data == {"a": "2"}

    deleted = run(standin, verb="delete", resource="configmaps", name="feature-flags")
    assert deleted.status == "ok"
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("feature-flags", "default")
    assert gone.value.status == 404


def test_watch_returns_the_events_until_its_timeout(standin: KubernetesStandIn) -> None:
    started = time.monotonic()
    watched = run(standin, verb="watch", resource="pods", body={"labelSelector": "app=web"}, timeout_s=2)
    assert watched.status == "ok"
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in watched.body["events"]] == [
        ("ADDED", "web-1"),
        ("ADDED", "web-2"),
    ]
    assert time.monotonic() - started < 4


def test_cluster_scoped_resources_use_cluster_paths(
    standin: KubernetesStandIn, official: k8s.ApiClient
) -> None:
    namespaces = run(standin, verb="list", resource="namespaces")
    client_view = [n.metadata.name for n in k8s.CoreV1Api(official).list_namespace().items]
    assert [n["metadata"]["name"] for n in namespaces.body["object"]["items"]] == client_view
    assert ("GET", "/api/v1/namespaces?limit=100") in standin.requests


def test_a_server_whose_certificate_is_not_from_the_pinned_ca_gets_nothing(
    standin: KubernetesStandIn,
) -> None:
    with KubernetesStandIn() as impostor:
        # The impostor's address, but the real server's CA pinned: its certificate must not verify.
        connection = Connection(
            **{
                **connection_to(standin).__dict__,
                "attributes": {"api_server": impostor.url, "ca_pem": standin.ca_pem},
            }
        )
        with pytest.raises(TargetUnavailableError) as refused:
            execute(
                KubernetesCommand(verb="list", resource="secrets"),
                connection,
                impostor.credential(),
                timeout_s=5,
                max_bytes=10_000,
                masker=MASKER,
            )
        assert "pinned CA" in refused.value.message
        assert impostor.requests == []  # not even the request line reached it


def test_a_wrong_token_is_the_servers_401_and_is_never_echoed(standin: KubernetesStandIn) -> None:
    wrong = "wrong-token-value-0123456789"
    result = execute(
        KubernetesCommand(verb="list", resource="pods"),
        connection_to(standin),
        {"token": wrong},
        timeout_s=5,
        max_bytes=10_000,
        masker=MASKER,
    )
    assert result.status == "error" and result.body["http_status"] == 401
    assert wrong not in json.dumps(result.body) and standin.token not in json.dumps(result.body)


def test_a_server_that_never_answers_times_out(standin: KubernetesStandIn) -> None:
    # A listener that accepts and then says nothing: the TLS handshake never completes.
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
    accepting.start()
    try:
        port = silent.getsockname()[1]
        connection = connection_to(standin, api_server=f"https://127.0.0.1:{port}")
        started = time.monotonic()
        with pytest.raises(StatementTimeoutError):
            execute(
                KubernetesCommand(verb="get", resource="pods", name="web-1"),
                connection,
                standin.credential(),
                timeout_s=0.5,
                max_bytes=10_000,
                masker=MASKER,
            )
        assert time.monotonic() - started < 4
    finally:
        for conn in held:
            conn.close()
        silent.close()


def test_no_answer_or_error_ever_carries_the_token(standin: KubernetesStandIn) -> None:
    results: list[str] = []
    for fields in (
        {"verb": "list", "resource": "pods"},
        {"verb": "get", "resource": "secrets", "name": "db-credentials"},
        {"verb": "logs", "resource": "pods", "name": "web-2"},
        {"verb": "get", "resource": "pods", "name": "missing"},
    ):
        results.append(repr(run(standin, **fields)))
    try:
        execute(
            KubernetesCommand(verb="list", resource="pods"),
            connection_to(standin, api_server="https://127.0.0.1:1"),
            standin.credential(),
            timeout_s=2,
            max_bytes=10_000,
            masker=MASKER,
        )
    except GatehouseError as err:
        results.append(f"{err!r} {err.message} {err.__cause__!r}")
    assert len(results) == 5
    assert all(standin.token not in r for r in results)
    assert standin.token not in repr(standin)


def test_classified_text_matches_what_was_sent(standin: KubernetesStandIn) -> None:
    command = KubernetesCommand(verb="scale", resource="deployments", name="web", body={"replicas": 3})
    classified = classify(command, connection_to(standin))
    assert classified.cls == "write"
    assert classified.text == 'scale deployments/web -n default --body={"replicas":3}'
    run(standin, verb="scale", resource="deployments", name="web", body={"replicas": 3})
    assert standin.requests == [("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/scale")]


def test_a_server_that_drips_its_answer_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    # Each byte arrives well within the read timeout, the whole answer never within the deadline.
    listener, context, ca_pem = tls_listener(tmp_path)
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            )
            while not stop.wait(0.05):
                try:
                    tls.sendall(b" ")
                except OSError:
                    return

    server = threading.Thread(target=drip, daemon=True)
    server.start()
    connection = scripted_server("drip", listener, ca_pem)
    started = time.monotonic()
    try:
        with pytest.raises(StatementTimeoutError):
            execute(
                KubernetesCommand(verb="get", resource="pods", name="web-1"),
                connection,
                {"token": "t0ken"},
                timeout_s=1.0,
                max_bytes=1_000_000,
                masker=MASKER,
            )
        assert time.monotonic() - started < 4
    finally:
        stop.set()
        listener.close()
        server.join(timeout=5)


# --- exec: one command over the v4.channel.k8s.io WebSocket -------------------------------------


def exec_in(
    server: KubernetesStandIn, argv: list[str], *, pod: str = "web-1", container: str | None = None, **kw: Any
) -> Any:
    body: dict[str, Any] = {"command": argv}
    if container is not None:
        body["container"] = container
    return run(server, verb="exec", resource="pods", name=pod, body=body, **kw)


def official_exec(official: k8s.ApiClient, argv: list[str]) -> tuple[str, str, int]:
    """stdout, stderr and exit code of the argv run by the official client's exec stream."""
    ws = kubernetes.stream.stream(
        k8s.CoreV1Api(official).connect_get_namespaced_pod_exec,
        "web-1",
        "default",
        command=argv,
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
        _preload_content=False,
    )
    try:
        ws.run_forever(timeout=10)
        return ws.read_stdout(), ws.read_stderr(), ws.returncode
    finally:
        ws.close()
        # websocket-client leaves its socket open when the server closed the stream first.
        ws.sock.shutdown()


def test_exec_returns_the_commands_output_and_exit_status_as_the_official_client_sees_them(
    standin: KubernetesStandIn, official: k8s.ApiClient
) -> None:
    ok = exec_in(standin, ["uname", "-s"], container="web")
    assert ok.status == "ok" and not ok.truncated
    assert ok.body == {"exit_status": 0, "stdout": "Linux\n", "stderr": "", "truncated": False}
    assert official_exec(official, ["uname", "-s"]) == ("Linux\n", "", 0)

    failed = exec_in(standin, ["cat", "index.html", "missing.txt"])
    assert failed.status == "error"
    assert failed.body["exit_status"] == 1
    # stdout and stderr come back apart, as they left the process.
    assert failed.body["stdout"] == "<h1>web-1</h1>\n"
    assert failed.body["stderr"] == "cat: missing.txt: No such file or directory\n"
    assert official_exec(official, ["cat", "index.html", "missing.txt"]) == (
        failed.body["stdout"],
        failed.body["stderr"],
        1,
    )
    assert exec_in(standin, ["false"]).body["exit_status"] == 1
    # Both reached the same exec path, the argv one `command` parameter per argument.
    exec_paths = [p for _, p in standin.requests if "/exec?" in p]
    assert exec_paths[0] == (
        "/api/v1/namespaces/default/pods/web-1/exec?command=uname&command=-s&container=web"
        "&stdin=false&stdout=true&stderr=true&tty=false"
    )
    assert len(exec_paths) == 5


def test_exec_output_is_masked(standin: KubernetesStandIn, official: k8s.ApiClient) -> None:
    argv = ["echo", "contact ada@example.com, card 4111 1111 1111 1111"]
    # The command really printed them: the official client, which masks nothing, sees them.
    assert "ada@example.com" in official_exec(official, argv)[0]
    result = exec_in(standin, argv)
    assert result.status == "ok"
    assert "ada@example.com" not in result.body["stdout"] and "4111" not in result.body["stdout"]
    assert "[EMAIL]" in result.body["stdout"]
    # The agent's argv travels only in the URL, and the token never comes back.
    assert standin.token not in json.dumps(result.body)


def test_exec_output_is_capped_and_says_so(standin: KubernetesStandIn) -> None:
    # Output far past the cap: the stream is closed early, not read to its end.
    started = time.monotonic()
    endless = exec_in(standin, ["seq", "1", "5000000"], max_bytes=1000)
    assert endless.truncated and endless.body["truncated"]
    assert endless.body["exit_status"] is None  # cut before the command ended
    assert len((endless.body["stdout"] + endless.body["stderr"]).encode()) <= 1000
    assert endless.body["stdout"].startswith("1\n2\n3\n")
    assert time.monotonic() - started < 3

    # Output just past the cap: the command ends, its output is cut to the cap.
    long_line = exec_in(standin, ["echo", "x" * 3000], max_bytes=100)
    assert long_line.truncated and long_line.body["exit_status"] == 0
    assert long_line.body["stdout"] == "x" * 100
    whole = exec_in(standin, ["echo", "x" * 3000], max_bytes=3001)
    assert not whole.truncated and whole.body["stdout"] == "x" * 3000 + "\n"


def test_an_exec_that_runs_too_long_times_out_and_is_stopped(standin: KubernetesStandIn) -> None:
    started = time.monotonic()
    with pytest.raises(StatementTimeoutError) as timed_out:
        exec_in(standin, ["sleep", "20"], timeout_s=1.0)
    assert 0.9 < time.monotonic() - started < 3
    assert timed_out.value.command_sent  # it may have run: the record must say so
    # The stream was closed, so the stand-in killed the process; the server still answers at once.
    deadline = time.monotonic() + 3
    while _children_named("sleep") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children_named("sleep") == []
    assert exec_in(standin, ["echo", "after"]).body["stdout"] == "after\n"


def _children_named(comm: str) -> list[int]:
    """Live child processes of this test process (the stand-in runs in it) with that name."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name == comm and rest[0] != "Z" and int(rest[1]) == os.getpid():
            found.append(int(entry.name))
    return found


def _scripted_exec_server(
    tmp_path: Path, answer: Callable[[bytes], bytes]
) -> tuple[Connection, Callable[[], None]]:
    """A TLS listener that answers one exec upgrade with `answer(key)` and then holds the line."""
    listener, context, ca_pem = tls_listener(tmp_path)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(65536)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            tls.sendall(answer(key))
            stop.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    connection = scripted_server("scripted", listener, ca_pem)

    def close() -> None:
        stop.set()
        listener.close()
        thread.join(timeout=5)

    return connection, close


def _upgrade(accept: bytes) -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Protocol: v4.channel.k8s.io\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def _exec_on(connection: Connection, *, max_bytes: int = 1000, timeout_s: float = 3.0) -> Any:
    return execute(
        KubernetesCommand(verb="exec", resource="pods", name="web-1", body={"command": ["id"]}),
        connection,
        {"token": "t0ken"},
        timeout_s=timeout_s,
        max_bytes=max_bytes,
        masker=MASKER,
    )


def test_a_server_that_fakes_the_websocket_handshake_is_refused(tmp_path: Path) -> None:
    connection, close = _scripted_exec_server(tmp_path, lambda key: _upgrade(b"bm90IHRoZSBoYXNo"))
    try:
        with pytest.raises(TargetUnavailableError) as refused:
            _exec_on(connection)
        assert refused.value.code == "k8s_exec_protocol_error"
        assert refused.value.command_sent
    finally:
        close()


def test_a_frame_announced_past_the_cap_is_read_only_to_the_cap(tmp_path: Path) -> None:
    def answer(key: bytes) -> bytes:
        accept = websocket_accept(key.decode()).encode()
        # One stdout frame announcing 2**40 bytes, of which a few KiB ever arrive.
        frame = bytes([0x82, 127]) + (2**40).to_bytes(8, "big") + b"\x01" + b"line\n" * 2000
        return _upgrade(accept) + frame

    connection, close = _scripted_exec_server(tmp_path, answer)
    try:
        started = time.monotonic()
        result = _exec_on(connection, max_bytes=100)
        assert time.monotonic() - started < 2  # it did not wait for the rest of the frame
        assert result.truncated and result.body["exit_status"] is None
        assert result.body["stdout"] == "line\n" * 20
    finally:
        close()


def test_exec_refusals_come_back_as_the_servers_answers(standin: KubernetesStandIn) -> None:
    missing_pod = exec_in(standin, ["ls"], pod="web-9")
    assert missing_pod.status == "error" and missing_pod.body["http_status"] == 404
    assert missing_pod.body["reason"] == "NotFound"
    wrong_container = exec_in(standin, ["ls"], container="db")
    assert wrong_container.body["http_status"] == 400
    assert "container db is not valid" in wrong_container.body["message"]
    # No shell in the stand-in's container: the runtime's answer, as a real one gives it.
    shell = exec_in(standin, ["sh", "-c", "id"])
    assert shell.status == "error" and shell.body["exit_status"] == 126
    assert "cannot run" in shell.body["stderr"]


def test_exec_on_a_server_not_from_the_pinned_ca_sends_nothing(standin: KubernetesStandIn) -> None:
    with KubernetesStandIn() as impostor:
        connection = Connection(
            **{
                **connection_to(standin).__dict__,
                "attributes": {"api_server": impostor.url, "ca_pem": standin.ca_pem},
            }
        )
        with pytest.raises(TargetUnavailableError) as refused:
            execute(
                KubernetesCommand(verb="exec", resource="pods", name="web-1", body={"command": ["id"]}),
                connection,
                impostor.credential(),
                timeout_s=5,
                max_bytes=10_000,
                masker=MASKER,
            )
        assert "pinned CA" in refused.value.message
        assert not refused.value.command_sent
        assert impostor.requests == []


def test_exec_with_a_wrong_token_is_the_servers_401(standin: KubernetesStandIn) -> None:
    result = execute(
        KubernetesCommand(verb="exec", resource="pods", name="web-1", body={"command": ["id"]}),
        connection_to(standin),
        {"token": "wrong-token-value-0123456789"},
        timeout_s=5,
        max_bytes=10_000,
        masker=MASKER,
    )
    assert result.status == "error" and result.body["http_status"] == 401
    assert "wrong-token-value" not in json.dumps(result.body)
    assert not [p for _, p in standin.requests if "/exec" in p]  # never authenticated, never run


def test_an_exec_to_a_server_that_never_answers_times_out_unsent(standin: KubernetesStandIn) -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
    accepting.start()
    try:
        connection = connection_to(standin, api_server=f"https://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(StatementTimeoutError) as timed_out:
            execute(
                KubernetesCommand(verb="exec", resource="pods", name="web-1", body={"command": ["id"]}),
                connection,
                standin.credential(),
                timeout_s=0.5,
                max_bytes=10_000,
                masker=MASKER,
            )
        assert time.monotonic() - started < 3
        assert not timed_out.value.command_sent  # the TLS handshake never finished
    finally:
        for conn in held:
            conn.close()
        silent.close()
