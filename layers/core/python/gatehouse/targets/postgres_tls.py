"""TLS to a Postgres target, libpq's `sslmode` semantics, shared by the API path and the proxy.

A Postgres connection's `attributes["tls"]` is one of:

- `disable`: plaintext, no SSLRequest sent;
- `prefer` (the default): TLS when the server agrees to it, plaintext otherwise; the certificate
  is not checked, so this stops a passive eavesdropper only;
- `require`: a server that declines TLS is refused; the certificate is still not checked;
- `verify-full`: `require`, and the server's chain must verify against `attributes["ca_pem"]`
  (PEM text: public material, so it lives in the registry item) or, without it, the system trust
  store, and the certificate must be issued for the connection's host (a DNS name or an IP
  address SAN). This is the only mode that stops an attacker in the path from impersonating the
  database and collecting the login (a cleartext or md5 password) or the data.

TLS 1.2 is the floor in every mode. `client_context` builds one `ssl.SSLContext` per
(mode, CA bundle) and caches it: building one that loads a CA store costs about 19 ms, more than a
login. Both login paths call it, so they cannot drift apart.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TLS_MODES: tuple[str, ...] = ("disable", "prefer", "require", "verify-full")
DEFAULT_TLS_MODE = "prefer"
# Distinct (mode, CA bundle) pairs a process keeps contexts for: one per CA the registry names.
_CONTEXT_CACHE_SIZE = 32
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH (x509_vfy.h).
_NAME_MISMATCH = frozenset({62, 64})


@dataclass(frozen=True)
class PostgresTls:
    """A connection's TLS settings, validated. `ca_pem` is only read by verify-full."""

    mode: str = DEFAULT_TLS_MODE
    ca_pem: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {self.mode!r}")
        if self.ca_pem is not None and not isinstance(self.ca_pem, str):
            raise ValueError("ca_pem must be PEM text")

    @classmethod
    def from_attributes(
        cls, attributes: Mapping[str, Any], default_mode: str = DEFAULT_TLS_MODE
    ) -> PostgresTls:
        """Read `tls` and `ca_pem` from a connection's attributes; raises ValueError if invalid."""
        mode = attributes.get("tls") or default_mode
        ca_pem = attributes.get("ca_pem") or None
        return cls(mode=str(mode), ca_pem=ca_pem)

    @property
    def attempted(self) -> bool:
        """Whether an SSLRequest is sent at all."""
        return self.mode != "disable"

    @property
    def required(self) -> bool:
        """Whether a server that declines TLS is refused."""
        return self.mode in ("require", "verify-full")

    @property
    def verified(self) -> bool:
        """Whether the certificate chain and host name are checked."""
        return self.mode == "verify-full"

    def context(self) -> ssl.SSLContext:
        """The (cached) client context for these settings; raises ValueError for an unusable CA."""
        return client_context(self.mode, self.ca_pem if self.verified else None)

    def server_hostname(self, host: str) -> str:
        """What to verify the certificate against and send as SNI.

        Verifying, the host itself: Python matches an IP address against the IP SANs and sends no
        SNI for it. Not verifying, "" for an address (SNI carries names only, RFC 6066 section 3).
        """
        if self.verified:
            return host
        return "" if _is_address(host) else host


def client_context(mode: str, ca_pem: str | None = None) -> ssl.SSLContext:
    """A TLS client context for `mode`, built once per (mode, ca_pem) in this process.

    Raises ValueError for `disable` or an unknown mode (no context applies), and for a `ca_pem`
    with no usable certificate. The context is shared: callers must not change it.
    """
    if mode not in TLS_MODES or mode == "disable":
        raise ValueError(f"no TLS context for tls={mode!r}")
    return _cached_context(mode == "verify-full", ca_pem)


@functools.lru_cache(maxsize=_CONTEXT_CACHE_SIZE)
def _cached_context(verify: bool, ca_pem: str | None) -> ssl.SSLContext:
    if not verify:
        # prefer/require: encrypted against a passive listener, no CA store loaded (none is read).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_pem:
        try:
            # cadata alone: the chain must end at this bundle, not at anything the system trusts.
            context = ssl.create_default_context(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError("ca_pem holds no valid PEM certificate") from exc
    else:
        context = ssl.create_default_context()
    if verify:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def verification_failure(exc: ssl.SSLCertVerificationError) -> str:
    """Why a certificate did not verify, in words that do not repeat the host's address."""
    if exc.verify_code in _NAME_MISMATCH:
        return "the certificate is not issued for the connection's host name"
    reason = exc.verify_message or exc.reason or "unknown reason"
    return f"the certificate did not verify against the CA bundle ({reason})"


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
