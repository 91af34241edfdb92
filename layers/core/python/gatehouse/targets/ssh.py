"""Run one classified command on an SSH host with asyncssh, pinned host key, timeout and byte cap.

A connection of kind "ssh" is a host and port, `attributes["username"]`, and
`attributes["host_key"]`: the host's public key line(s) as in `~/.ssh/known_hosts` without the
host name (`ssh-ed25519 AAAA... comment`). Only those keys are trusted: a host presenting any
other key is refused before authentication, and nothing is ever learned or added. The credential
is the secret's JSON value: `{"private_key": PEM, "passphrase"?: str}` or `{"password": str}`.

The client never reads the caller's `~/.ssh` (config, known_hosts, default keys) or an ssh-agent:
every option comes from the connection and the credential, so a gateway host's files cannot
change what is trusted or who logs in.

asyncssh is asyncio-only; `execute` is called from synchronous code (the API handler, the
workflow's tasks), so each call runs its own short event loop (`asyncio.run`), in a worker thread
when the caller is itself inside a running loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncssh

from gatehouse.exceptions import (
    SecretUnavailableError,
    StatementTimeoutError,
    TargetUnavailableError,
)
from gatehouse.masking.engine import Masker
from gatehouse.models import Connection
from gatehouse.targets.commands import SshCommand
from gatehouse.targets.kinds import Classified, KindResult
from gatehouse.targets.ssh_classify import (
    READ_ONLY_PROGRAMS,
    SshRefusedError,
    check_command,
    classify_command,
)

__all__ = [
    "READ_ONLY_PROGRAMS",
    "SshCommand",
    "SshHostKeyError",
    "SshRefusedError",
    "classify",
    "execute",
]

log = logging.getLogger(__name__)

KIND = "ssh"
_CHUNK = 64 * 1024
# Output is read this far past the byte budget before it is masked and cut, so that a secret
# straddling the budget is masked whole rather than cut into a part no detector recognizes.
_LOOKAHEAD_BYTES = 4096
# After a timeout or a cut, closing the channel and the connection gets this long.
_CLOSE_GRACE_S = 2.0

_T = TypeVar("_T")


class SshHostKeyError(TargetUnavailableError):
    """The host's key is not the pinned one, or no usable key is pinned: nothing was sent."""

    code = "ssh_host_key_rejected"


def classify(command: SshCommand, connection: Connection) -> Classified:
    """Classify the command line ("read" | "write" | "unknown"); bad input raises SshRefusedError."""
    _check_kind(connection)
    return classify_command(command.command)


def execute(
    command: SshCommand,
    connection: Connection,
    credential: Mapping[str, Any],
    *,
    timeout_s: float,
    max_bytes: int,
    masker: Masker,
) -> KindResult:
    """Run the command once; return its exit status and masked, size-capped stdout and stderr.

    `timeout_s` covers connecting, logging in and running; on expiry the remote process is
    killed and StatementTimeoutError is raised (with `command_sent` set once the command was
    sent). `max_bytes` caps stdout and stderr together, measured after masking; output past it
    is dropped, the remote process is killed, and the result says `truncated`.
    """
    _check_kind(connection)
    check_command(command.command)
    if timeout_s <= 0 or max_bytes <= 0:
        raise ValueError("timeout_s and max_bytes must be positive")
    target = _Target.from_connection(connection)
    auth = _Auth.from_credential(credential)
    started = time.monotonic()
    outcome = _run_sync(lambda: _run(command.command, target, auth, timeout_s, max_bytes))
    duration_ms = (time.monotonic() - started) * 1000
    body, truncated = _masked_body(outcome, max_bytes, masker)
    succeeded = outcome.exit_status == 0 or (outcome.cut and outcome.exit_status is None)
    log.info(
        "ssh command on %s:%s finished: exit %s, %d+%d bytes, truncated=%s, %.0f ms",
        target.host,
        target.port,
        outcome.exit_status,
        len(outcome.stdout),
        len(outcome.stderr),
        truncated,
        duration_ms,
    )
    return KindResult(
        status="ok" if succeeded else "error",
        body=body,
        truncated=truncated,
        duration_ms=duration_ms,
        row_count=None,
    )


def check_settings(connection: Connection, credential: Mapping[str, Any]) -> None:
    """Read the connection's settings and credential as `execute` will, without connecting."""
    _check_kind(connection)
    _Target.from_connection(connection)
    _Auth.from_credential(credential)


def _check_kind(connection: Connection) -> None:
    if connection.kind != KIND:
        raise SshRefusedError(
            f"connection {connection.name!r} is of kind {connection.kind!r}, not {KIND!r}",
            code="wrong_connection_kind",
        )


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    username: str
    host_keys: tuple[asyncssh.SSHKey, ...]

    @classmethod
    def from_connection(cls, connection: Connection) -> _Target:
        username = connection.attributes.get("username")
        if not isinstance(username, str) or not username:
            raise TargetUnavailableError(
                f"connection {connection.name!r} names no SSH username (attributes.username)",
                code="ssh_misconfigured",
            )
        pinned = connection.attributes.get("host_key")
        lines = pinned.splitlines() if isinstance(pinned, str) else pinned
        if not isinstance(lines, (list, tuple)) or not all(isinstance(line, str) for line in lines):
            lines = []
        keys: list[asyncssh.SSHKey] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                keys.append(asyncssh.import_public_key(line.strip()))
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise SshHostKeyError(
                    f"connection {connection.name!r} pins a host key that cannot be read: {exc}",
                    code="ssh_host_key_invalid",
                ) from exc
        if not keys:
            # Trusting whatever key the host shows first would make the pin meaningless.
            raise SshHostKeyError(
                f"connection {connection.name!r} pins no host key (attributes.host_key): refusing to connect",
                code="ssh_host_key_missing",
            )
        return cls(connection.host, int(connection.port or 22), username, tuple(keys))


@dataclass(frozen=True)
class _Auth:
    # repr=False: the key and the password must not appear if this object is ever printed.
    key: asyncssh.SSHKey | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_credential(cls, credential: Mapping[str, Any]) -> _Auth:
        if not isinstance(credential, Mapping):
            raise SecretUnavailableError("the SSH credential is not a JSON object", code="ssh_bad_credential")
        pem = credential.get("private_key")
        password = credential.get("password")
        passphrase = credential.get("passphrase")
        key = None
        if pem is not None:
            if not isinstance(pem, str) or (passphrase is not None and not isinstance(passphrase, str)):
                raise SecretUnavailableError(
                    "the SSH credential's private_key must be a PEM string", code="ssh_bad_credential"
                )
            try:
                key = asyncssh.import_private_key(pem, passphrase)
            # `from None`: the parser's message or a chained traceback could quote the key.
            except (asyncssh.KeyImportError, ValueError, TypeError):
                raise SecretUnavailableError(
                    "the SSH credential's private_key could not be read (wrong format or passphrase)",
                    code="ssh_bad_credential",
                ) from None
        if password is not None and not isinstance(password, str):
            raise SecretUnavailableError(
                "the SSH credential's password must be a string", code="ssh_bad_credential"
            )
        if key is None and not password:
            raise SecretUnavailableError(
                "the SSH credential holds neither a private_key nor a password", code="ssh_bad_credential"
            )
        return cls(key=key, password=password or None)


# --- running -----------------------------------------------------------------------------------


@dataclass
class _Outcome:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exit_status: int | None = None
    cut: bool = False  # the read limit was reached: the process was killed, the tail dropped


def _run_sync(factory: Callable[[], Coroutine[Any, Any, _Outcome]]) -> _Outcome:
    """Run `factory()`'s coroutine to completion from synchronous code."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_coroutine(factory())
    # Already inside an event loop (an asyncio caller): asyncio.run cannot nest in this thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatehouse-ssh") as pool:
        return pool.submit(lambda: _run_coroutine(factory())).result()


def _run_coroutine(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


async def _run(command: str, target: _Target, auth: _Auth, timeout_s: float, max_bytes: int) -> _Outcome:
    outcome = _Outcome()
    conn: asyncssh.SSHClientConnection | None = None
    proc: asyncssh.SSHClientProcess[bytes] | None = None
    sent = False
    try:
        async with asyncio.timeout(timeout_s):
            conn = await asyncssh.connect(
                target.host,
                target.port,
                username=target.username,
                # (trusted host keys, trusted CA keys, revoked keys): exactly the pinned keys.
                known_hosts=(list(target.host_keys), [], []),
                client_keys=[auth.key] if auth.key is not None else None,
                password=auth.password,
                public_key_auth=auth.key is not None,
                password_auth=auth.password is not None,
                kbdint_auth=False,
                host_based_auth=False,
                gss_auth=False,
                gss_kex=False,
                agent_path=None,
                agent_forwarding=False,
                config=None,
                x509_trusted_certs=None,
                ignore_encrypted=True,
                connect_timeout=timeout_s,
                login_timeout=timeout_s,
            )
            proc = await conn.create_process(command, encoding=None, request_pty=False)
            sent = True
            proc.stdin.write_eof()
            await _collect(proc, outcome, read_limit=max_bytes + _LOOKAHEAD_BYTES)
            if not outcome.cut:
                await proc.wait_closed()
                outcome.exit_status = _exit_status(proc)
    except TimeoutError:
        await _abandon(proc, conn)
        error = StatementTimeoutError(
            f"the SSH command ran over its time limit of {timeout_s:g} s and was killed"
            if sent
            else f"the SSH host did not let the command start within {timeout_s:g} s; nothing was run"
        )
        error.command_sent = sent
        raise error from None
    except asyncssh.HostKeyNotVerifiable as exc:
        raise SshHostKeyError(
            f"the host key of {target.host}:{target.port} is not the pinned key: refusing to connect"
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise TargetUnavailableError(
            f"SSH login to {target.host}:{target.port} as {target.username!r} was refused",
            code="ssh_auth_failed",
        ) from exc
    except (OSError, asyncssh.Error) as exc:
        await _abandon(proc, conn)
        unavailable = TargetUnavailableError(
            f"the SSH connection to {target.host}:{target.port} failed ({type(exc).__name__})",
            code="ssh_unavailable",
        )
        unavailable.command_sent = sent
        raise unavailable from exc
    finally:
        if conn is not None:
            conn.close()
            await _quietly(conn.wait_closed())
    return outcome


async def _collect(proc: asyncssh.SSHClientProcess[bytes], outcome: _Outcome, *, read_limit: int) -> None:
    """Read stdout and stderr together until both end or `read_limit` bytes were read in total."""
    total = 0

    async def pump(stream: asyncssh.SSHReader[bytes], sink: bytearray) -> None:
        nonlocal total
        while not outcome.cut:
            chunk = await stream.read(_CHUNK)
            if not chunk:
                return
            room = read_limit - total
            sink += chunk[:room]
            total += min(len(chunk), room)
            if len(chunk) >= room:
                # Enough for the budget: stop the command rather than pull its output for nothing.
                outcome.cut = True
                proc.kill()
                proc.close()
                return

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(pump(proc.stdout, outcome.stdout))
            group.create_task(pump(proc.stderr, outcome.stderr))
    except ExceptionGroup as failed:
        # One stream failed (the connection dropped): report that failure, not the group.
        raise failed.exceptions[0] from None


def _exit_status(proc: asyncssh.SSHClientProcess[bytes]) -> int | None:
    """The exit status, or 128 + the signal number when a signal ended it (as a shell's `$?`)."""
    exit_signal = proc.exit_signal
    if exit_signal is not None:
        number = getattr(signal.Signals, f"SIG{exit_signal[0]}", None)
        return 128 + int(number) if number is not None else None
    return proc.exit_status


async def _abandon(
    proc: asyncssh.SSHClientProcess[bytes] | None, conn: asyncssh.SSHClientConnection | None
) -> None:
    """Kill the remote process (an SSH `signal` request) and close the channel."""
    if proc is not None:
        try:
            proc.kill()
        except (OSError, asyncssh.Error):
            log.debug("could not signal the remote SSH process", exc_info=True)
        proc.close()
        await _quietly(proc.wait_closed())


async def _quietly(waiting: Coroutine[Any, Any, None]) -> None:
    try:
        async with asyncio.timeout(_CLOSE_GRACE_S):
            await waiting
    except (TimeoutError, OSError, asyncssh.Error):
        log.debug("closing the SSH session did not finish cleanly", exc_info=True)


# --- masking and the byte budget -----------------------------------------------------------------


def _masked_body(outcome: _Outcome, max_bytes: int, masker: Masker) -> tuple[dict[str, Any], bool]:
    stdout = _masked_text(bytes(outcome.stdout), outcome.cut, masker)
    stderr = _masked_text(bytes(outcome.stderr), outcome.cut, masker)
    stdout, out_clipped = _clip(stdout, max_bytes)
    stderr, err_clipped = _clip(stderr, max_bytes - len(stdout.encode()))
    truncated = outcome.cut or out_clipped or err_clipped
    body = {"exit_status": outcome.exit_status, "stdout": stdout, "stderr": stderr, "truncated": truncated}
    return body, truncated


def _masked_text(raw: bytes, cut: bool, masker: Masker) -> str:
    if cut:
        # The last line was cut mid-way: a value in it could be too short for any detector.
        newline = raw.rfind(b"\n")
        if newline >= 0:
            raw = raw[: newline + 1]
    return masker.mask_text(raw.decode("utf-8", errors="replace"))


def _clip(text: str, budget: int) -> tuple[str, bool]:
    encoded = text.encode()
    if len(encoded) <= budget:
        return text, False
    return encoded[: max(budget, 0)].decode("utf-8", errors="ignore"), True
