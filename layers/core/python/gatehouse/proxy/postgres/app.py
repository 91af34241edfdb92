"""Build and run the proxy from the environment: `gatehouse proxy serve` (the Fargate task's command).

Configuration is read once (`ProxyConfig`, `Settings`); clients come from one boto3 session, so a
test or the local stack points them at moto. The TLS certificate and key come from Secrets Manager
(`names.PROXY_TLS_SECRET`: {"certificate", "private_key"} in PEM); without one, only loopback
clients may connect, unless plaintext is explicitly allowed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from botocore.config import Config

from gatehouse import aws, names
from gatehouse.config import ConfigError, Settings
from gatehouse.exceptions import GatehouseError
from gatehouse.proxy.postgres.metrics import DEFAULT_INTERVAL_S, ENV_PROXY_METRICS_INTERVAL_S
from gatehouse.proxy.postgres.recorder import ProxyRecorder
from gatehouse.proxy.postgres.server import ProxyConfig, ProxyContext, ProxyServer
from gatehouse.proxy_tokens import ProxyTokenKeys, ProxyTokens
from gatehouse.runtime import build_runtime

log = logging.getLogger(__name__)

_LOG_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 1},
    connect_timeout=2,
    read_timeout=5,
    max_pool_connections=32,
)


def proxy_config(env: Mapping[str, str] | None = None) -> ProxyConfig:
    env = os.environ if env is None else env
    host, port = _address(env, names.ENV_PROXY_LISTEN, f"0.0.0.0:{names.PROXY_PORT}")
    health = env.get(names.ENV_PROXY_HEALTH, f"0.0.0.0:{names.PROXY_HEALTH_PORT}")
    health_host, health_port = _address({"h": health}, "h", health) if health else ("", 0)
    return ProxyConfig(
        host=host,
        port=port,
        health_host=health_host,
        health_port=health_port,
        allow_plaintext=env.get(names.ENV_PROXY_ALLOW_PLAINTEXT, "") == "1",
        max_sessions=_number(env, names.ENV_PROXY_MAX_SESSIONS, 500),
        idle_timeout_s=float(_number(env, names.ENV_PROXY_IDLE_TIMEOUT_S, 900)),
        drain_s=float(_number(env, names.ENV_PROXY_DRAIN_S, 30)),
        recording_floor=_recording(env),
        metrics_interval_s=_seconds(env, ENV_PROXY_METRICS_INTERVAL_S, DEFAULT_INTERVAL_S),
    )


RECORDING_MODES = ("async", "sync_writes", "sync")  # least strict first


def _recording(env: Mapping[str, str]) -> str:
    raw = (env.get(names.ENV_PROXY_RECORDING_MODE) or "async").lower()
    if raw not in RECORDING_MODES:
        raise ConfigError(f"{names.ENV_PROXY_RECORDING_MODE} must be one of {', '.join(RECORDING_MODES)}")
    return raw


def _address(env: Mapping[str, str], key: str, default: str) -> tuple[str, int]:
    raw = env.get(key) or default
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key} must be host:port, got {raw!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a container listens on all


def _number(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {raw!r}")
    return int(raw)


def _seconds(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{key} must be a positive number of seconds, got {raw!r}")
    return value


def tls_context(secrets: Any, secret_id: str) -> ssl.SSLContext | None:
    """The server TLS context from the secret, or None when no certificate is stored."""
    try:
        value = secrets.json_secret(secret_id)
    except GatehouseError:
        return None
    cert, key = str(value.get("certificate") or ""), str(value.get("private_key") or "")
    if "BEGIN CERTIFICATE" not in cert or "PRIVATE KEY" not in key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads a chain from files only: a private temporary directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="gatehouse-tls-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, text in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        context.load_cert_chain(cert_path, key_path)
    return context


def build_server(
    settings: Settings, config: ProxyConfig, session: Any = None, *, tls_secret: str | None = None
) -> ProxyServer:
    session = session or aws.session()
    runtime = build_runtime(settings, session)
    service = runtime.service
    secrets_client = session.client("secretsmanager")
    if config.tls is None and tls_secret:
        config = replace(config, tls=tls_context(service.secrets, tls_secret))
    tokens = ProxyTokens(ProxyTokenKeys(secrets_client, settings.proxy_token_key_secret))
    recorder = ProxyRecorder(
        session.client("s3", config=_LOG_CONFIG),
        settings.log_bucket,
        retention_days=settings.log_retention_days,
    )
    return ProxyServer(ProxyContext(service, tokens, recorder, config))


async def serve(env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    settings = Settings.from_env(env)
    config = proxy_config(env)
    server = build_server(
        settings, config, tls_secret=env.get(names.ENV_PROXY_TLS_SECRET) or names.PROXY_TLS_SECRET
    )
    await server.start()
    await server.serve_forever()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency on Linux
        runner = asyncio.run
    try:
        runner(serve())
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0
