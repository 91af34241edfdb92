"""A throwaway PostgreSQL cluster on loopback for the local stack and the tests.

Uses the machine's PostgreSQL server binaries. `initdb` refuses to run as root, so as root the
cluster runs as an unprivileged user (`postgres` where the Debian package created it, otherwise
one we create), in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pg8000.native

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. Install them, e.g. "
    "`apt-get install -y postgresql` on Debian/Ubuntu or `brew install postgresql@15` on macOS, "
    "or put their directory on PATH."
)
FALLBACK_USER = "gatehouse-pg"


class PostgresUnavailableError(RuntimeError):
    """No usable PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """Where initdb and pg_ctl live: pg_config's answer, Debian's layout, then PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    candidates += [Path(p) for p in sorted(glob.glob("/opt/homebrew/opt/postgresql@*/bin"), reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for cand in candidates:
        if all((cand / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return cand
    raise PostgresUnavailableError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as_user() -> str | None:
    """The unprivileged user to run the cluster as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", FALLBACK_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        check=True,
        capture_output=True,
    )
    return FALLBACK_USER


@dataclass(frozen=True)
class PostgresInfo:
    host: str
    port: int
    user: str
    password: str

    def connect(self, database: str = "postgres") -> pg8000.native.Connection:
        return pg8000.native.Connection(
            self.user, host=self.host, port=self.port, password=self.password, database=database
        )


class ThrowawayPostgres:
    """initdb + pg_ctl start on a free loopback port; `stop()` removes everything.

    Password (SCRAM) authentication on TCP, like a real server: the superuser's password is
    random per cluster and only handed to whoever provisions it.
    """

    def __init__(self, base_dir: Path | None = None, port: int | None = None) -> None:
        self._base_dir = base_dir
        self._port = port
        self._dir: Path | None = None
        self._user: str | None = None
        self.info: PostgresInfo | None = None

    def _cmd(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", self._user, "--", *args] if self._user else args

    def start(self) -> PostgresInfo:
        bindir = find_bindir()
        self._user = _run_as_user()
        self._dir = Path(tempfile.mkdtemp(prefix="gatehouse-pg-", dir=self._base_dir))
        data, sockets = self._dir / "data", self._dir / "sock"
        sockets.mkdir()
        password = secrets.token_urlsafe(24)
        pwfile = self._dir / "pwfile"
        pwfile.write_text(password + "\n")
        if self._user:
            entry = pwd.getpwnam(self._user)
            for path in (self._dir, sockets, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._dir.chmod(0o700)
        admin = "gatehouse_admin"
        self._check(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                admin,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
        pwfile.unlink()
        port = self._port or free_port()
        opts = (
            f"-c port={port} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off "
            f"-c unix_socket_directories={sockets} -c max_connections=200"
        )
        self._check(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self._dir / "server.log"),
                "-o",
                opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
        self.info = PostgresInfo(host="127.0.0.1", port=port, user=admin, password=password)
        return self.info

    def _check(self, args: list[str]) -> None:
        proc = subprocess.run(self._cmd(args), capture_output=True, text=True, cwd=self._dir)
        if proc.returncode != 0:
            log = ""
            if self._dir and (self._dir / "server.log").exists():
                log = (self._dir / "server.log").read_text()[-2000:]
            raise PostgresUnavailableError(
                f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}"
            )

    def stop(self) -> None:
        if self._dir is None:
            return
        data = self._dir / "data"
        if (data / "postmaster.pid").exists():
            bindir = find_bindir()
            subprocess.run(
                self._cmd([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                cwd=self._dir,
            )
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self.info = None

    def __enter__(self) -> PostgresInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
