"""A throwaway OpenSSH server (sshd) on loopback for the SSH target's tests and the local stack.

Uses the machine's sshd (Debian's openssh-server; `scripts/ensure-sshd.sh` installs it) with a
config, host key and authorized key of its own in a temporary directory, on a free port, in the
foreground (`sshd -D -e -f CONFIG`). Nothing of the system's sshd setup is read or changed.

As root it logs in a dedicated unprivileged user (`gatehouse-ssh`, created on first use) and
gives that user a fresh random password at each start, so both key and password logins can be
shown; sshd refuses a locked account (no password at all) even for key logins when PAM is off.
Not root, it can only log in the current user, with the key.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

INSTALL_HINT = (
    "OpenSSH's server (sshd) was not found. Install it, e.g. `apt-get install -y openssh-server` on "
    "Debian/Ubuntu (`make install` does this as root); its own service need not run."
)
TEST_USER = "gatehouse-ssh"
_START_TIMEOUT_S = 10.0


class SshdUnavailableError(RuntimeError):
    """No usable sshd on this machine, or it would not start."""


def find_sshd() -> Path:
    """The sshd binary (sshd re-executes itself, so it must be run by absolute path)."""
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    raise SshdUnavailableError(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SshdInfo:
    """Where the server listens and how to log in; `host_key` is the line to pin."""

    host: str
    port: int
    username: str
    host_key: str
    private_key: str = field(repr=False)
    password: str | None = field(default=None, repr=False)
    log_path: Path | None = None

    def credential(self, *, password: bool = False) -> dict[str, str]:
        """The secret value a connection's Secrets Manager entry would hold."""
        if password:
            if self.password is None:
                raise SshdUnavailableError("password logins need root (to give the test user a password)")
            return {"password": self.password}
        return {"private_key": self.private_key}


class ThrowawaySshd:
    """Start with `start()` (or as a context manager); `stop()` kills it and removes its files."""

    def __init__(self, port: int | None = None) -> None:
        self._port = port
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    def start(self) -> SshdInfo:
        sshd = find_sshd()
        username, password = _login_user()
        # Readable by the logged-in user: sshd reads the authorized keys with that user's rights.
        self._dir = Path(tempfile.mkdtemp(prefix="gatehouse-sshd-"))
        self._dir.chmod(0o755)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        host_key_path = self._dir / "ssh_host_ed25519_key"
        host_key.write_private_key(str(host_key_path))
        host_key_path.chmod(0o600)
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        authorized = self._dir / "authorized_keys"
        authorized.write_bytes(client_key.export_public_key("openssh"))
        authorized.chmod(0o644)
        port = self._port or _free_port()
        config = self._dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {port}",
                    f"HostKey {host_key_path}",
                    f"PidFile {self._dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    # The key files live in a temporary directory, not the user's home.
                    "StrictModes no",
                    "UsePAM no",
                    "PubkeyAuthentication yes",
                    f"PasswordAuthentication {'yes' if password else 'no'}",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin no" if os.geteuid() == 0 else "PermitRootLogin prohibit-password",
                    f"AllowUsers {username}",
                    "AllowTcpForwarding no",
                    "AllowAgentForwarding no",
                    "X11Forwarding no",
                    "PermitTunnel no",
                    "PermitUserEnvironment no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            # sshd (as root) chroots its unprivileged pre-auth child here.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        checked = subprocess.run([str(sshd), "-t", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise SshdUnavailableError(f"sshd rejected its config: {checked.stderr.strip()}")
        self._log = self._dir / "sshd.log"
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(sshd), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_for_banner(port)
        return SshdInfo(
            host="127.0.0.1",
            port=port,
            username=username,
            host_key=host_key.export_public_key("openssh").decode().strip(),
            private_key=client_key.export_private_key("openssh").decode(),
            password=password,
            log_path=self._log,
        )

    def _wait_for_banner(self, port: int) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                    if sock.recv(64).startswith(b"SSH-2.0-"):
                        return
            time.sleep(0.05)
        log = self._log.read_text(errors="replace") if self._log else ""
        self.stop()
        raise SshdUnavailableError(f"sshd did not start on port {port}: {log.strip()[-2000:]}")

    def log_text(self) -> str:
        return self._log.read_text(errors="replace") if self._log and self._log.exists() else ""

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> SshdInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _login_user() -> tuple[str, str | None]:
    """(user sshd logs in, its password or None): the dedicated user as root, else ourselves."""
    if os.geteuid() != 0:
        return getpass.getuser(), None
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", TEST_USER], check=True, capture_output=True
        )
    password = secrets.token_urlsafe(18)
    subprocess.run(
        ["chpasswd"], input=f"{TEST_USER}:{password}\n", text=True, check=True, capture_output=True
    )
    return TEST_USER, password
