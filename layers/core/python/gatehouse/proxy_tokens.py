"""Short-lived passwords for the Postgres proxy: issued by the API, checked by the proxy.

An agent asks `POST /v1/proxy-tokens` (or `gatehouse proxy-token`) for a connection and gets a
user name and a password it can hand to any Postgres client. The password is a token:

    gh1.<key version>.<payload>.<mac>

- `gh1`: the format; a later format gets a new prefix, never a new meaning for this one.
- key version: the Secrets Manager VersionId of the HMAC key that signed it, so verification
  picks the right key while a rotation is under way (AWSCURRENT signs; AWSCURRENT and
  AWSPREVIOUS verify).
- payload: base64url (no padding) of the JSON array
  `[principal_arn, principal_name, connection, issued_at, expires_at, nonce]`.
- mac: base64url HMAC-SHA256 over a context label and everything before the last dot.

Every character is in `[A-Za-z0-9._-]`: the token fits a Postgres password field (no NUL, ASCII,
at most MAX_TOKEN_CHARS), a libpq connection string and a URI without quoting. The user name is
the agent's registered name; the database is the connection's name (the proxy maps it to the
connection, whose real address and database stay hidden from the agent, as in GET /v1/connections).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gatehouse.config import Settings
from gatehouse.exceptions import (
    BadRequestError,
    GatehouseError,
    SecretUnavailableError,
    UnknownConnectionError,
)
from gatehouse.models import Principal

log = logging.getLogger(__name__)

FORMAT = "gh1"
DEFAULT_TTL_S = 15 * 60
MIN_TTL_S = 60
MAX_TTL_S = 12 * 3600
# libpq and most drivers take a password of any length, but some tools cap theirs near 1,000
# bytes; ours stay well below (about 300 characters for a demo agent).
MAX_TOKEN_CHARS = 1000
# A token issued by a host whose clock runs ahead is still accepted this much early.
CLOCK_SKEW_S = 60
# Keys are read from Secrets Manager at most this often (a rotated key is picked up within it)...
KEY_CACHE_SECONDS = 60.0
# ...and, for a token naming a version not yet seen (a rotation just happened), at most this often:
# random versions in forged tokens must not become one Secrets Manager call each.
KEY_REFRESH_MIN_INTERVAL_S = 5.0
KEY_BYTES = 32  # HMAC-SHA256's block-size-independent strength: 256 bits
NONCE_BYTES = 16
# SQLSTATE invalid_password: what Postgres itself answers a failed password login.
SQLSTATE_INVALID_PASSWORD = "28P01"  # noqa: S105 (an error code)

_MAC_LABEL = b"gatehouse proxy token\x00"
_MAC_CHARS = 43  # base64url of 32 bytes, unpadded
_TOKEN_RE = re.compile(
    rf"^{FORMAT}\.(?P<version>[A-Za-z0-9-]{{1,64}})\.(?P<payload>[A-Za-z0-9_-]{{1,{MAX_TOKEN_CHARS}}})"
    rf"\.(?P<mac>[A-Za-z0-9_-]{{{_MAC_CHARS}}})$"
)


class InvalidProxyTokenError(GatehouseError):
    """The proxy password is malformed, tampered with, expired, or not for this user or connection."""

    code = "invalid_proxy_token"
    status = 401
    sqlstate = SQLSTATE_INVALID_PASSWORD

    def __init__(self, reason: str, username: str = "") -> None:
        # One message for every reason, as Postgres gives: which check failed is for our log
        # (`reason`), not a hint to whoever is guessing.
        super().__init__(f'password authentication failed for user "{username}"')
        self.reason = reason


class ProxyTokenTooLongError(GatehouseError):
    """The token would be longer than a Postgres client can be trusted to send (a very long ARN)."""

    code = "proxy_token_too_long"
    status = 422


class ConnectionKindError(GatehouseError):
    """The connection is not a Postgres database: the proxy speaks only the Postgres protocol."""

    code = "unsupported_connection_kind"
    status = 400


@dataclass(frozen=True)
class SigningKey:
    version: str
    key: bytes

    def __repr__(self) -> str:
        return f"SigningKey(version={self.version!r}, key='***')"


@dataclass(frozen=True)
class ProxyToken:
    """A freshly issued password and what it is bound to."""

    password: str
    username: str
    principal_arn: str
    connection: str
    issued_at: int
    expires_at: int
    key_version: str
    nonce: str  # the token's id: log it, never the password

    def __repr__(self) -> str:
        return (
            f"ProxyToken(username={self.username!r}, connection={self.connection!r}, "
            f"expires_at={self.expires_at}, nonce={self.nonce!r}, password='***')"
        )


@dataclass(frozen=True)
class VerifiedToken:
    """Who a valid password belongs to; the proxy looks the principal up by `principal_arn`."""

    principal_arn: str
    principal_name: str
    connection: str
    expires_at: int
    nonce: str = ""


# -- keys ------------------------------------------------------------------------------------


def new_key_text() -> str:
    """Fresh key material, as the secret stores it (base64 text)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def rotate_key(secrets_client: Any, secret_id: str) -> str:
    """Put a new key version: it becomes AWSCURRENT, the old one AWSPREVIOUS. Returns its version.

    Tokens signed with the old key keep working until they expire or the next rotation, whichever
    comes first: rotate at most once per MAX_TTL_S to never cut a valid token short.
    """
    try:
        resp = secrets_client.put_secret_value(SecretId=secret_id, SecretString=new_key_text())
    except (ClientError, BotoCoreError) as exc:
        raise SecretUnavailableError(f"secret {secret_id} could not be rotated") from exc
    return str(resp["VersionId"])


class ProxyTokenKeys:
    """The HMAC keys from Secrets Manager: AWSCURRENT signs, AWSCURRENT and AWSPREVIOUS verify.

    Read with VersionStage (not through the masking key's SecretsProvider) because the token must
    name the version that signed it. Cached KEY_CACHE_SECONDS; thread-safe (the proxy shares one).
    A key that can no longer be read fails closed: SecretUnavailableError, never a guess.
    """

    def __init__(
        self,
        secrets_client: Any,
        secret_id: str,
        *,
        cache_seconds: float = KEY_CACHE_SECONDS,
        refresh_min_interval_s: float = KEY_REFRESH_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = secrets_client
        self._secret_id = secret_id
        self._max_age = cache_seconds
        self._min_interval = refresh_min_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fetched_at: float | None = None
        self._current: SigningKey | None = None
        self._previous: SigningKey | None = None

    def current(self) -> SigningKey:
        with self._lock:
            if self._stale():
                self._refresh()
            assert self._current is not None
            return self._current

    def for_version(self, version: str) -> bytes | None:
        """The key of that version if it is AWSCURRENT or AWSPREVIOUS, else None."""
        with self._lock:
            if self._stale():
                self._refresh()
            found = self._find(version)
            if found is None and self._clock() - (self._fetched_at or 0.0) >= self._min_interval:
                # Perhaps rotated since the last read: look once more, at a bounded rate.
                self._refresh()
                found = self._find(version)
            return found

    def _find(self, version: str) -> bytes | None:
        for key in (self._current, self._previous):
            if key is not None and hmac.compare_digest(key.version.encode(), version.encode()):
                return key.key
        return None

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age

    def _refresh(self) -> None:
        fetched_at = self._clock()
        current = self._read("AWSCURRENT")
        if current is None:
            raise SecretUnavailableError(f"secret {self._secret_id} has no current version")
        self._current, self._previous = current, self._read("AWSPREVIOUS")
        self._fetched_at = fetched_at

    def _read(self, stage: str) -> SigningKey | None:
        try:
            resp = self._client.get_secret_value(SecretId=self._secret_id, VersionStage=stage)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if stage == "AWSPREVIOUS" and code == "ResourceNotFoundException":
                return None  # never rotated: there is no previous key
            raise SecretUnavailableError(f"secret {self._secret_id} could not be read") from exc
        except BotoCoreError as exc:
            raise SecretUnavailableError(f"secret {self._secret_id} could not be read") from exc
        try:
            key = base64.b64decode(str(resp.get("SecretString") or ""), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SecretUnavailableError(f"secret {self._secret_id} is not base64") from exc
        if len(key) < KEY_BYTES:
            raise SecretUnavailableError(f"secret {self._secret_id} is shorter than {KEY_BYTES * 8} bits")
        return SigningKey(version=str(resp["VersionId"]), key=key)


# -- tokens ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed_part: str) -> str:
    return _b64(hmac.new(key, _MAC_LABEL + signed_part.encode("ascii"), hashlib.sha256).digest())


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class ProxyTokens:
    """Issue and verify proxy passwords with the keys of one secret."""

    def __init__(self, keys: ProxyTokenKeys, *, clock: Callable[[], float] = time.time) -> None:
        self._keys = keys
        self._clock = clock

    def issue(
        self, principal: Principal, connection: str, ttl_s: int = DEFAULT_TTL_S, now: float | None = None
    ) -> ProxyToken:
        if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            raise BadRequestError(
                f"ttl_s must be between {MIN_TTL_S} and {MAX_TTL_S} seconds", code="invalid_ttl"
            )
        if not principal.arn or principal.kind != "agent":
            raise BadRequestError("only an agent with an IAM identity can have a proxy password")
        # The user name and database travel NUL-terminated in the startup message.
        if not principal.name or "\x00" in principal.name or not connection or "\x00" in connection:
            raise BadRequestError("the user name and connection must be non-empty text without NUL")
        issued_at = int(self._clock() if now is None else now)
        expires_at = issued_at + int(ttl_s)
        nonce = _b64(secrets.token_bytes(NONCE_BYTES))
        key = self._keys.current()
        claims = [principal.arn, principal.name, connection, issued_at, expires_at, nonce]
        payload = _b64(json.dumps(claims, separators=(",", ":"), ensure_ascii=True).encode("ascii"))
        signed_part = f"{FORMAT}.{key.version}.{payload}"
        password = f"{signed_part}.{_mac(key.key, signed_part)}"
        if len(password) > MAX_TOKEN_CHARS:
            raise ProxyTokenTooLongError(
                f"the proxy password would be {len(password)} characters (at most {MAX_TOKEN_CHARS}): "
                "the principal's ARN or the connection name is too long"
            )
        return ProxyToken(
            password=password,
            username=principal.name,
            principal_arn=principal.arn,
            connection=connection,
            issued_at=issued_at,
            expires_at=expires_at,
            key_version=key.version,
            nonce=nonce,
        )

    def verify(
        self, username: str, password: str, connection_name: str, now: float | None = None
    ) -> VerifiedToken:
        """The token's owner, or InvalidProxyTokenError (SQLSTATE 28P01) with the reason."""
        match = _TOKEN_RE.match(password) if isinstance(password, str) else None
        if match is None or len(password) > MAX_TOKEN_CHARS:
            raise InvalidProxyTokenError("malformed", username)
        key = self._keys.for_version(match["version"])
        if key is None:
            raise InvalidProxyTokenError("unknown_key_version", username)
        signed_part = password[: match.start("mac") - 1]
        # Compare the encoded MACs: comparing decoded bytes would also accept the other spellings
        # of the last base64 character (its two spare bits), a token that was changed yet verifies.
        if not hmac.compare_digest(_mac(key, signed_part).encode("ascii"), match["mac"].encode("ascii")):
            raise InvalidProxyTokenError("bad_signature", username)
        claims = _claims(match["payload"])
        if claims is None:
            # Signed by our key yet unreadable: a bug on the issuing side; refuse all the same.
            raise InvalidProxyTokenError("malformed_claims", username)
        arn, name, connection, issued_at, expires_at, nonce = claims
        at = self._clock() if now is None else now
        if expires_at - issued_at > MAX_TTL_S or issued_at > at + CLOCK_SKEW_S:
            raise InvalidProxyTokenError("bad_lifetime", username)
        if at >= expires_at:
            raise InvalidProxyTokenError("expired", username)
        if not _same(connection, connection_name):
            raise InvalidProxyTokenError("wrong_connection", username)
        if not _same(name, username):
            raise InvalidProxyTokenError("wrong_username", username)
        return VerifiedToken(
            principal_arn=arn, principal_name=name, connection=connection, expires_at=expires_at, nonce=nonce
        )


def _claims(payload: str) -> tuple[str, str, str, int, int, str] | None:
    try:
        value = json.loads(_unb64(payload).decode("ascii"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, list) or len(value) != 6:
        return None
    arn, name, connection, issued_at, expires_at, nonce = value
    if not all(isinstance(v, str) for v in (arn, name, connection, nonce)):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (issued_at, expires_at)):
        return None
    return arn, name, connection, issued_at, expires_at, nonce


# -- what the API answers --------------------------------------------------------------------

PROXY_NOT_RUNNING = (
    "The Postgres proxy is not running in this deployment yet: host and port are null. "
    "The password is valid for this connection until expires_at."
)


def split_endpoint(endpoint: str) -> tuple[str, int] | None:
    """("host", port) from "host:port" or "[::1]:port"; None when there is no proxy."""
    if not endpoint:
        return None
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


class ProxyTokenGrants:
    """POST /v1/proxy-tokens: a password for a Postgres connection the caller may use."""

    def __init__(self, tokens: ProxyTokens, proxy_endpoint: str = "") -> None:
        self._tokens = tokens
        self._address = split_endpoint(proxy_endpoint)

    @classmethod
    def from_settings(cls, settings: Settings, secrets_client: Any) -> ProxyTokenGrants:
        keys = ProxyTokenKeys(secrets_client, settings.proxy_token_key_secret)
        return cls(ProxyTokens(keys), settings.proxy_endpoint)

    def grant(
        self,
        principal: Principal,
        connection: str,
        usable: Sequence[Mapping[str, Any]],
        ttl_s: int | None = None,
    ) -> dict[str, Any]:
        """`usable`: the caller's connections as GET /v1/connections lists them (at least one action
        not denied). Any other name is answered as unknown, so names cannot be probed."""
        listed = next((c for c in usable if c.get("name") == connection), None)
        if listed is None:
            raise UnknownConnectionError(f"no connection named {connection!r}")
        if listed.get("kind") != "postgres":
            raise ConnectionKindError(
                f"connection {connection!r} is of kind {listed.get('kind')!r}: proxy passwords are for "
                "postgres connections"
            )
        token = self._tokens.issue(principal, connection, DEFAULT_TTL_S if ttl_s is None else ttl_s)
        log.info(
            "proxy token %s issued to %s for %s until %d (key %s)",
            token.nonce,
            principal.name,
            connection,
            token.expires_at,
            token.key_version,
        )
        host, port = self._address if self._address is not None else (None, None)
        body: dict[str, Any] = {
            "host": host,
            "port": port,
            "username": token.username,
            "password": token.password,
            "database": connection,
            "expires_at": token.expires_at,
            "issued_at": token.issued_at,
            "connection": connection,
            "proxy_running": self._address is not None,
        }
        if self._address is None:
            body["message"] = PROXY_NOT_RUNNING
        return body


def default_grants() -> ProxyTokenGrants:
    """Built on the first POST /v1/proxy-tokens from the function's environment (never at import)."""
    from botocore.config import Config

    from gatehouse import aws

    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=3, read_timeout=10)
    secrets_client = aws.session().client("secretsmanager", config=config)
    return ProxyTokenGrants.from_settings(Settings.from_env(), secrets_client)
