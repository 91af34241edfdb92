"""The Postgres proxy of the local stack: `gatehouse proxy serve` in a process of its own.

The same command the Fargate task runs, with the stack's environment (moto, the tables, the log
bucket) and a throwaway certificate in Secrets Manager, so `sslmode=require` works on a laptop
as it does behind the load balancer. Its own process, so its memory can be measured alone.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from gatehouse import names

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def proxy_certificate(host: str = "localhost") -> tuple[str, str]:
    """A certificate chain and key (PEM) for the loopback proxy, valid for a week: the server's
    certificate, then the throwaway authority's (`gatehouse.local.pki`, the tests' CA code) that
    issued it. The authority's key is dropped here, so nothing else is ever signed by it; a
    client that verifies the proxy takes the chain as its root (`sslrootcert`)."""
    from gatehouse.local.pki import authority

    ca = authority(f"gatehouse local proxy {host}", days=7)
    cert, key = ca.issue([host], ["127.0.0.1"], days=7)
    return cert.decode("ascii") + ca.pem, key.decode("ascii")


def store_tls_secret(secretsmanager: Any, secret_name: str = names.PROXY_TLS_SECRET) -> None:
    cert, key = proxy_certificate()
    value = json.dumps({"certificate": cert, "private_key": key})
    try:
        secretsmanager.create_secret(Name=secret_name, SecretString=value)
    except secretsmanager.exceptions.ResourceExistsException:
        secretsmanager.put_secret_value(SecretId=secret_name, SecretString=value)


class LocalProxy:
    """Start, wait for /healthz, stop with SIGTERM (the drain path), as ECS would."""

    def __init__(self, log_path: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        # The address is chosen here, before the start: POST /v1/proxy-tokens names it.
        self.host = host
        self.port = port or free_port(host)
        self.health_port = free_port(host)
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, environment: Mapping[str, str]) -> str:
        """Run `gatehouse proxy serve` with `environment` (the stack's: moto, tables, the bucket)."""
        env = {
            **environment,
            names.ENV_PROXY_LISTEN: self.endpoint,
            names.ENV_PROXY_HEALTH: f"{self.host}:{self.health_port}",
            names.ENV_PROXY_DRAIN_S: "5",
            "PYTHONUNBUFFERED": "1",
        }
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self._log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.cli", "proxy", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self._proc.returncode}; see {self._log_path}")
            if self.healthy():
                return self.endpoint
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"the proxy did not become healthy in {START_TIMEOUT_S:.0f} s; see {self._log_path}"
        )

    def healthy(self) -> bool:
        url = f"http://{self.host}:{self.health_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
