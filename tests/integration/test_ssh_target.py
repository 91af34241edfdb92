"""The SSH target against a real OpenSSH server on loopback, with its host key pinned.

The server is Debian's sshd (`scripts/ensure-sshd.sh`), started by the test with a config, host
key and authorized key of its own (gatehouse.local.sshd). Nothing here imitates SSH.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from gatehouse.exceptions import (
    GatehouseError,
    SecretUnavailableError,
    StatementTimeoutError,
    TargetUnavailableError,
)
from gatehouse.local.sshd import SshdInfo, ThrowawaySshd
from gatehouse.masking.engine import Masker
from gatehouse.masking.profiles import load_profile
from gatehouse.models import Connection
from gatehouse.targets.kinds import KindResult
from gatehouse.targets.ssh import SshCommand, SshHostKeyError, SshRefusedError, classify, execute

NOT_A_KEY = (
    "-----BEGIN "
    + "OPENSSH PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END "
    + "OPENSSH PRIVATE KEY-----\n"
)
MASKER = Masker(load_profile("default"), hash_key=b"ssh-target-test-key" * 2)


@pytest.fixture(scope="module")
def sshd() -> Iterator[tuple[ThrowawaySshd, SshdInfo]]:
    server = ThrowawaySshd()
    info = server.start()
    try:
        yield server, info
    finally:
        server.stop()


@pytest.fixture
def server(sshd: tuple[ThrowawaySshd, SshdInfo]) -> SshdInfo:
    return sshd[1]


def connection(info: SshdInfo, **attributes: Any) -> Connection:
    return Connection(
        name="demo-ssh",
        kind="ssh",
        host=info.host,
        port=info.port,
        database="",
        secret_id="gatehouse/demo-ssh",
        attributes={"username": info.username, "host_key": info.host_key, "env": "prod", **attributes},
    )


def run(
    info: SshdInfo,
    command: str,
    *,
    timeout_s: float = 10.0,
    max_bytes: int = 64_000,
    conn: Connection | None = None,
    credential: dict[str, Any] | None = None,
) -> KindResult:
    return execute(
        SshCommand(command=command),
        conn if conn is not None else connection(info),
        credential if credential is not None else info.credential(),
        timeout_s=timeout_s,
        max_bytes=max_bytes,
        masker=MASKER,
    )


def test_a_read_runs_and_returns_exit_status_stdout_and_stderr(server: SshdInfo) -> None:
    command = SshCommand(command="whoami && ls /etc/hostname /does-not-exist")
    assert classify(command, connection(server)).cls == "read"

    result = run(server, command.command)

    assert result.status == "error"  # ls exits 2 for the missing file
    assert result.body["exit_status"] == 2
    assert result.body["stdout"] == f"{server.username}\n/etc/hostname\n"
    assert "/does-not-exist" in result.body["stderr"]
    assert result.body["truncated"] is False and result.truncated is False
    assert set(result.body) == {"exit_status", "stdout", "stderr", "truncated"}
    assert result.duration_ms > 0


def test_a_zero_exit_is_ok(server: SshdInfo) -> None:
    result = run(server, "uname -s")
    assert (result.status, result.body["exit_status"], result.body["stdout"]) == ("ok", 0, "Linux\n")


def test_password_login_works(server: SshdInfo) -> None:
    result = run(server, "id -un", credential=server.credential(password=True))
    assert result.body["stdout"] == f"{server.username}\n"


def test_stdout_and_stderr_are_masked(server: SshdInfo) -> None:
    result = run(
        server,
        "echo 'card 4111 1111 1111 1111 owner bob@example.com'; echo 'key AKIAIOSFODNN7EXAMPLE' >&2",
    )
    assert result.body["stdout"] == "card [CARD_NUMBER] owner [EMAIL]\n"
    assert result.body["stderr"] == "key [AWS_ACCESS_KEY]\n"


def test_output_over_the_budget_is_cut_and_the_command_stopped(server: SshdInfo) -> None:
    started = time.monotonic()
    # `yes` never ends by itself: only the cap stops it.
    result = run(server, "yes 0123456789", max_bytes=10_000, timeout_s=20)

    assert time.monotonic() - started < 10
    assert result.truncated is True and result.body["truncated"] is True
    assert len(result.body["stdout"].encode()) == 10_000
    assert result.body["stdout"].startswith("0123456789\n0123456789\n")
    assert result.status == "ok"


def test_the_budget_covers_stdout_and_stderr_together(server: SshdInfo) -> None:
    result = run(server, "head -c 3000 /etc/services; head -c 3000 /etc/services >&2", max_bytes=4000)
    assert len(result.body["stdout"].encode()) + len(result.body["stderr"].encode()) == 4000
    assert result.truncated is True


def test_a_secret_straddling_the_budget_is_masked_whole(server: SshdInfo) -> None:
    # 9,990 bytes of padding, then a card number across the 10,000-byte cut.
    result = run(server, "printf '%09990d' 0; echo ' 4111 1111 1111 1111'", max_bytes=10_000)
    stdout = result.body["stdout"]
    assert result.truncated is True
    assert "4111" not in stdout and "1111" not in stdout
    assert stdout == "0" * 9990 + " [CARD_NUM"  # the label is what got cut, not the number


def test_a_timeout_kills_the_remote_command(server: SshdInfo) -> None:
    with pytest.raises(StatementTimeoutError) as timed_out:
        run(server, "sleep 31.25", timeout_s=1.0)
    assert timed_out.value.command_sent is True
    assert timed_out.value.status == 408

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running("sleep 31.25"):
        time.sleep(0.1)
    assert not _running("sleep 31.25"), "the remote command outlived its timeout"


def test_a_changed_host_key_is_refused_before_anything_runs(server: SshdInfo, tmp_path: Path) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    marker = tmp_path / "ran"
    marker.parent.chmod(0o777)

    with pytest.raises(SshHostKeyError) as refused:
        run(server, f"touch {marker}", conn=connection(server, host_key=impostor))

    assert refused.value.code == "ssh_host_key_rejected"
    assert refused.value.command_sent is False
    assert not marker.exists()


@pytest.mark.parametrize(
    ("host_key", "code"),
    [
        (None, "ssh_host_key_missing"),
        ("", "ssh_host_key_missing"),
        ("ssh-ed25519 AAAAnot-a-key", "ssh_host_key_invalid"),
    ],
)
def test_no_usable_pinned_key_means_no_connection(server: SshdInfo, host_key: str | None, code: str) -> None:
    conn = connection(server)
    attributes = {k: v for k, v in conn.attributes.items() if k != "host_key"}
    if host_key is not None:
        attributes["host_key"] = host_key
    with pytest.raises(SshHostKeyError) as refused:
        run(server, "id", conn=Connection(**{**conn.__dict__, "attributes": attributes}))
    assert refused.value.code == code


def test_one_of_several_pinned_keys_is_enough(server: SshdInfo) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    result = run(server, "id -un", conn=connection(server, host_key=f"{other}\n{server.host_key}"))
    assert result.body["stdout"] == f"{server.username}\n"


def test_a_wrong_key_or_password_is_a_refused_login_that_names_no_secret(server: SshdInfo) -> None:
    wrong_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh").decode()
    for credential in ({"private_key": wrong_key}, {"password": "not-the-password-x9"}):
        with pytest.raises(TargetUnavailableError) as refused:
            run(server, "id", credential=credential)
        assert refused.value.code == "ssh_auth_failed"
        _assert_secret_free(refused.value, credential)


@pytest.mark.parametrize(
    "credential",
    [
        {},
        {"private_key": NOT_A_KEY},
        {"private_key": 42},
        {"password": ["x"]},
        {"token": "abc"},
    ],
)
def test_an_unusable_credential_is_refused_without_quoting_it(
    server: SshdInfo, credential: dict[str, Any]
) -> None:
    with pytest.raises(SecretUnavailableError) as refused:
        run(server, "id", credential=credential)
    assert refused.value.code == "ssh_bad_credential"
    _assert_secret_free(refused.value, credential)


def test_the_credential_never_appears_in_a_result(server: SshdInfo) -> None:
    credential = server.credential()
    result = run(server, "echo done", credential=credential)
    text = json.dumps(result.body) + repr(result) + repr(server)
    assert "PRIVATE KEY" not in text and server.private_key.splitlines()[1] not in text
    assert server.password is None or server.password not in text


def test_bad_input_is_refused_before_connecting(server: SshdInfo) -> None:
    with pytest.raises(SshRefusedError) as refused:
        run(server, "ls\r\nrm -rf /tmp/x")
    assert refused.value.code == "ssh_control_character"


def test_an_unreachable_host_is_target_unavailable(server: SshdInfo) -> None:
    closed = Connection(**{**connection(server).__dict__, "port": _closed_port()})
    with pytest.raises(TargetUnavailableError) as unavailable:
        run(server, "id", conn=closed)
    assert unavailable.value.code == "ssh_unavailable"
    assert unavailable.value.command_sent is False


def test_it_runs_from_inside_an_event_loop(server: SshdInfo) -> None:
    async def caller() -> KindResult:
        return run(server, "echo from-a-loop")

    assert asyncio.run(caller()).body["stdout"] == "from-a-loop\n"


def _running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _assert_secret_free(error: GatehouseError, credential: dict[str, Any]) -> None:
    shown = f"{error} {error!r} {error.message} {error.__cause__!r} {error.__context__!r}"
    for value in credential.values():
        if isinstance(value, str):
            for line in value.splitlines():
                if len(line) > 8 and "-----" not in line:
                    assert line not in shown
    assert "not-the-password" not in shown
