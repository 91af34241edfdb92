"""Wire the service from settings and boto3 clients, once per process (never at import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.config import Config

from gatehouse import aws
from gatehouse.approvals import RequestStore
from gatehouse.config import Settings
from gatehouse.policy import PolicyEngine
from gatehouse.registry import CACHE_SECONDS, Registry
from gatehouse.secrets import SecretStore
from gatehouse.service import Gatehouse
from gatehouse.targets.postgres import PostgresExecutor, TargetPool

_BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=3, read_timeout=10)
# The session log retries with its own backoff and time budget (gatehouse.audit.log.RetryPolicy);
# botocore's retries would multiply it, so its client tries once and times out fast.
_LOG_CONFIG = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2, read_timeout=3)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    service: Gatehouse
    registry: Registry
    # The clients the service uses, for the function's other work (idempotency, proxy passwords):
    # each kind of client is built once per process.
    dynamodb: Any
    secretsmanager: Any

    def proxy_token_grants(self) -> Any:
        """The proxy password issuer, with the service's Secrets Manager client. Imported here, on
        the first POST /v1/proxy-tokens: most processes never issue one."""
        from gatehouse.proxy_tokens import ProxyTokenGrants

        return ProxyTokenGrants.from_settings(self.settings, self.secretsmanager)


def build_runtime(settings: Settings, session: Any = None) -> Runtime:
    """Clients come from `session` (a boto3 Session) so tests can point them at moto."""
    session = session or aws.session()
    ddb = session.client("dynamodb", config=_BOTO_CONFIG)
    # Each request reads its principal and connection; a warm process keeps them CACHE_SECONDS
    # (the bound on a removed agent or connection still working, gatehouse.registry).
    registry = Registry(
        ddb, settings.connections_table, settings.principals_table, cache_seconds=CACHE_SECONDS
    )
    secretsmanager = session.client("secretsmanager", config=_BOTO_CONFIG)
    secrets = SecretStore(secretsmanager)
    service = Gatehouse(
        settings,
        registry=registry,
        # Parsed and validated once per process; an invalid policy set stops startup here.
        policy=PolicyEngine.from_dir(settings.policy_dir),
        secrets=secrets,
        # A warm process reuses its target sessions (reset between requests, one request at a
        # time each; gatehouse.targets.postgres.TargetPool says why that is safe): a login costs
        # more than a short read.
        executor=PostgresExecutor(secrets, pool=TargetPool()),
        requests=RequestStore(ddb, settings.requests_table),
        s3_client=session.client("s3", config=_LOG_CONFIG),
    )
    return Runtime(
        settings=settings, service=service, registry=registry, dynamodb=ddb, secretsmanager=secretsmanager
    )
