"""Configuration, read once from the environment into a frozen, validated record."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gatehouse import names


class ConfigError(ValueError):
    """A required setting is missing or malformed: the process must not start."""


def default_policy_dir() -> Path:
    return Path(__file__).parent / "policy" / "policies"


@dataclass(frozen=True)
class Settings:
    log_bucket: str
    requests_table: str = names.REQUESTS_TABLE
    connections_table: str = names.CONNECTIONS_TABLE
    principals_table: str = names.PRINCIPALS_TABLE
    masking_key_secret: str = names.MASKING_KEY_SECRET
    policy_dir: Path = field(default_factory=default_policy_dir)
    statement_timeout_ms: int = 5_000
    max_rows: int = 1_000
    # The whole answer's budget, as JSON: well under Lambda's 6 MB synchronous response limit.
    max_bytes: int = 4 * 1024 * 1024
    log_retention_days: int = names.DEFAULT_LOG_RETENTION_DAYS
    max_body_bytes: int = 256 * 1024
    # The approval flow: the state machine that holds requests, the Slack app's two secrets (the
    # bot token, read by whoever posts; the signing secret, read by the interactions path alone),
    # the approval channel (wins over the bot token secret's "channel"; empty: the secret's), and
    # (local stack only) the Slack Web API stand-in's URL. Empty ARN: approvals cannot start (503).
    state_machine_arn: str = ""
    slack_secret: str = names.SLACK_SECRET
    slack_signing_secret: str = names.SLACK_SIGNING_SECRET
    slack_channel: str = ""
    slack_api_url: str = ""
    # The Postgres proxy: the key that signs its passwords, and the address agents connect to
    # ("host:port", what POST /v1/proxy-tokens answers). Empty: the proxy is not running.
    proxy_token_key_secret: str = names.PROXY_TOKEN_KEY_SECRET
    proxy_endpoint: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        bucket = env.get(names.ENV_LOG_BUCKET, "")
        if not bucket:
            raise ConfigError(f"{names.ENV_LOG_BUCKET} is not set")
        return cls(
            log_bucket=bucket,
            requests_table=env.get(names.ENV_REQUESTS_TABLE) or names.REQUESTS_TABLE,
            connections_table=env.get(names.ENV_CONNECTIONS_TABLE) or names.CONNECTIONS_TABLE,
            principals_table=env.get(names.ENV_PRINCIPALS_TABLE) or names.PRINCIPALS_TABLE,
            masking_key_secret=env.get(names.ENV_MASKING_KEY_SECRET) or names.MASKING_KEY_SECRET,
            policy_dir=Path(env[names.ENV_POLICY_DIR])
            if env.get(names.ENV_POLICY_DIR)
            else default_policy_dir(),
            statement_timeout_ms=_positive_int(env, names.ENV_STATEMENT_TIMEOUT_MS, 5_000),
            max_rows=_positive_int(env, names.ENV_MAX_ROWS, 1_000),
            max_bytes=_positive_int(env, names.ENV_MAX_BYTES, 4 * 1024 * 1024),
            log_retention_days=_positive_int(
                env, names.ENV_LOG_RETENTION_DAYS, names.DEFAULT_LOG_RETENTION_DAYS
            ),
            state_machine_arn=env.get(names.ENV_STATE_MACHINE_ARN) or "",
            slack_secret=env.get(names.ENV_SLACK_SECRET) or names.SLACK_SECRET,
            slack_signing_secret=env.get(names.ENV_SLACK_SIGNING_SECRET) or names.SLACK_SIGNING_SECRET,
            slack_channel=(env.get(names.ENV_SLACK_CHANNEL) or "").strip(),
            slack_api_url=env.get(names.ENV_SLACK_API_URL) or "",
            proxy_token_key_secret=env.get(names.ENV_PROXY_TOKEN_KEY_SECRET) or names.PROXY_TOKEN_KEY_SECRET,
            proxy_endpoint=_host_port(env, names.ENV_PROXY_ENDPOINT),
        )

    def as_env(self) -> dict[str, str]:
        """The environment a Lambda function (or the local dispatcher) needs for these settings."""
        return {
            names.ENV_LOG_BUCKET: self.log_bucket,
            names.ENV_REQUESTS_TABLE: self.requests_table,
            names.ENV_CONNECTIONS_TABLE: self.connections_table,
            names.ENV_PRINCIPALS_TABLE: self.principals_table,
            names.ENV_MASKING_KEY_SECRET: self.masking_key_secret,
            names.ENV_STATEMENT_TIMEOUT_MS: str(self.statement_timeout_ms),
            names.ENV_MAX_ROWS: str(self.max_rows),
            names.ENV_MAX_BYTES: str(self.max_bytes),
            names.ENV_LOG_RETENTION_DAYS: str(self.log_retention_days),
            names.ENV_STATE_MACHINE_ARN: self.state_machine_arn,
            names.ENV_SLACK_SECRET: self.slack_secret,
            names.ENV_SLACK_SIGNING_SECRET: self.slack_signing_secret,
            **({names.ENV_SLACK_CHANNEL: self.slack_channel} if self.slack_channel else {}),
            **({names.ENV_SLACK_API_URL: self.slack_api_url} if self.slack_api_url else {}),
            names.ENV_PROXY_TOKEN_KEY_SECRET: self.proxy_token_key_secret,
            **({names.ENV_PROXY_ENDPOINT: self.proxy_endpoint} if self.proxy_endpoint else {}),
        }


def _positive_int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{key} must be positive, got {value}")
    return value


def _host_port(env: Mapping[str, str], key: str) -> str:
    """`host:port` (`[::1]:6432` for IPv6), or empty; anything else stops startup."""
    raw = env.get(key) or ""
    if not raw:
        return ""
    host, sep, port = raw.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key} must be host:port, got {raw!r}")
    return raw
