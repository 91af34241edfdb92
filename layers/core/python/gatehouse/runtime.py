"""Wire the service from settings and boto3 clients, once per process (never at import)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from botocore.config import Config

from gatehouse import aws
from gatehouse.approvals import RequestStore
from gatehouse.config import Settings
from gatehouse.exceptions import GatehouseError
from gatehouse.lineage import CatalogCache, PostgresCatalogLoader
from gatehouse.policy import PolicyEngine
from gatehouse.registry import CACHE_SECONDS, Registry
from gatehouse.secrets import SecretStore
from gatehouse.service import Gatehouse
from gatehouse.targets.postgres import PostgresExecutor, TargetPool

_BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=3, read_timeout=10)
# The session log retries with its own backoff and time budget (gatehouse.audit.log.RetryPolicy);
# botocore's retries would multiply it, so its client tries once and times out fast.
_LOG_CONFIG = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2, read_timeout=3)
# How long the build waits for the first request's reads (FirstRequest) before it goes on: they
# are only a head start (a slow target must not hold the build), and the request reads again
# whatever is still missing.
_READ_AHEAD_WAIT_S = 1.0

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class FirstRequest:
    """What a cold process's first request will read, known from its event before it is parsed:
    the caller's principal key and the connection it names."""

    principal_key: str
    connection: str


def _read_ahead(
    first: FirstRequest, registry: Registry, secrets: SecretStore, catalogs: CatalogCache, settings: Settings
) -> None:
    """The reads the first request starts with, into the caches it reads through; nothing else.

    A caller that is not a registered principal gets nothing read for it. Whatever fails is left
    for the request, which reads it again and refuses with the right answer: nothing here decides.
    """
    try:
        registry.principal(first.principal_key)
        connection = registry.get_connection(first.connection)
        if connection.kind != "postgres":
            return
        secrets.binary_key(settings.masking_key_secret)
        catalogs.get(connection)
    except GatehouseError as exc:
        log.debug("first request: the read-ahead stopped: %s", exc.code)
    except Exception:  # the request meets it again, on its own path, and reports it
        log.debug("first request: the read-ahead failed", exc_info=True)


class _ReadAhead:
    """`_read_ahead` on a daemon thread, while the build goes on with CPU work of its own."""

    def __init__(self, *args: Any) -> None:
        self._thread = threading.Thread(
            target=_read_ahead, args=args, name="gatehouse-read-ahead", daemon=True
        )
        self._thread.start()

    def join(self) -> None:
        self._thread.join(_READ_AHEAD_WAIT_S)


def build_runtime(settings: Settings, session: Any = None, *, first: FirstRequest | None = None) -> Runtime:
    """Clients come from `session` (a boto3 Session) so tests can point them at moto.

    With `first`, the reads that request starts with (its principal, its connection, the masking
    key, the connection's catalog: round trips) run while the rest is built (the policy set
    parsed, the S3 client: CPU), so a cold start pays for the longer of the two, not both.
    """
    session = session or aws.session()
    ddb = session.client("dynamodb", config=_BOTO_CONFIG)
    # Each request reads its principal and connection; a warm process keeps them CACHE_SECONDS
    # (the bound on a removed agent or connection still working, gatehouse.registry).
    registry = Registry(
        ddb, settings.connections_table, settings.principals_table, cache_seconds=CACHE_SECONDS
    )
    secretsmanager = session.client("secretsmanager", config=_BOTO_CONFIG)
    secrets = SecretStore(secretsmanager)
    catalogs = CatalogCache(PostgresCatalogLoader(secrets))
    ahead = _ReadAhead(first, registry, secrets, catalogs, settings) if first is not None else None
    try:
        service = Gatehouse(
            settings,
            registry=registry,
            # Parsed and validated once per process; an invalid policy set stops startup here.
            policy=PolicyEngine.from_dir(settings.policy_dir),
            secrets=secrets,
            # A warm process reuses its target sessions (reset between requests, one request at a
            # time each; gatehouse.targets.postgres.TargetPool says why that is safe): a login
            # costs more than a short read.
            executor=PostgresExecutor(secrets, pool=TargetPool()),
            catalogs=catalogs,
            requests=RequestStore(ddb, settings.requests_table),
            s3_client=session.client("s3", config=_LOG_CONFIG),
        )
    finally:
        if ahead is not None:
            ahead.join()
    return Runtime(
        settings=settings, service=service, registry=registry, dynamodb=ddb, secretsmanager=secretsmanager
    )
