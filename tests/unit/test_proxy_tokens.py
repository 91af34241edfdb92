"""Proxy passwords: what an agent gets from POST /v1/proxy-tokens and what the proxy will accept.

The key lives in Secrets Manager (moto, in process); the clocks are injected so expiry and the
key cache are exact.
"""

from __future__ import annotations

import base64
import json
import re
import string

import boto3
import pytest
from moto import mock_aws

from gatehouse import names
from gatehouse.api_core import error_body
from gatehouse.config import ConfigError, Settings
from gatehouse.exceptions import BadRequestError, SecretUnavailableError, UnknownConnectionError
from gatehouse.local.provision import create_masking_key, create_proxy_token_key
from gatehouse.models import Principal
from gatehouse.proxy_tokens import (
    CLOCK_SKEW_S,
    DEFAULT_TTL_S,
    KEY_CACHE_SECONDS,
    MAX_TOKEN_CHARS,
    MAX_TTL_S,
    ConnectionKindError,
    InvalidProxyTokenError,
    ProxyTokenGrants,
    ProxyTokenKeys,
    ProxyTokens,
    rotate_key,
)

NOW = 1_800_000_000
ANALYST = Principal(
    name="analyst", kind="agent", arn="arn:aws:iam::123456789012:user/gatehouse-agent-analyst"
)
OTHER = Principal(
    name="reporter", kind="agent", arn="arn:aws:iam::123456789012:user/gatehouse-agent-reporter"
)
SECRET = names.PROXY_TOKEN_KEY_SECRET
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sm(aws_env):
    with mock_aws():
        client = boto3.client("secretsmanager")
        create_proxy_token_key(client, SECRET)
        yield client


@pytest.fixture
def key_clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def tokens(sm, key_clock) -> ProxyTokens:
    return ProxyTokens(ProxyTokenKeys(sm, SECRET, clock=key_clock), clock=lambda: NOW)


def refused(tokens: ProxyTokens, username: str, password: str, connection: str, now: float = NOW) -> str:
    with pytest.raises(InvalidProxyTokenError) as caught:
        tokens.verify(username, password, connection, now)
    assert caught.value.sqlstate == "28P01"
    return caught.value.reason


def parts(password: str) -> list[str]:
    return password.split(".")


def claims_of(password: str) -> list:
    payload = parts(password)[2]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def with_claims(password: str, claims: list) -> str:
    fmt, version, _, mac = parts(password)
    payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
    return ".".join([fmt, version, payload.decode(), mac])


# -- issue and verify ------------------------------------------------------------------------


def test_a_password_round_trips_to_its_agent_and_connection(tokens):
    issued = tokens.issue(ANALYST, "demo-prod")

    verified = tokens.verify("analyst", issued.password, "demo-prod", NOW + 60)

    assert verified.principal_arn == ANALYST.arn
    assert verified.principal_name == "analyst"
    assert verified.connection == "demo-prod"
    assert verified.expires_at == NOW + DEFAULT_TTL_S == issued.expires_at
    assert issued.username == "analyst" and issued.issued_at == NOW


def test_a_password_is_compact_ascii_a_postgres_client_can_send(tokens):
    issued = tokens.issue(ANALYST, "demo-prod", ttl_s=MAX_TTL_S)

    assert len(issued.password) <= MAX_TOKEN_CHARS
    assert TOKEN_CHARS.match(issued.password), issued.password
    assert "\x00" not in issued.password
    # It names its key version and carries a nonce: two passwords for the same request differ.
    assert parts(issued.password)[1] == issued.key_version
    assert tokens.issue(ANALYST, "demo-prod").password != issued.password
    assert "***" in repr(issued) and issued.password not in repr(issued)


def test_the_default_lifetime_is_15_minutes_and_at_most_12_hours_can_be_asked(tokens):
    assert tokens.issue(ANALYST, "demo-dev").expires_at - NOW == 15 * 60
    assert tokens.issue(ANALYST, "demo-dev", ttl_s=12 * 3600).expires_at - NOW == 12 * 3600
    for ttl in (0, 59, 12 * 3600 + 1):
        with pytest.raises(BadRequestError) as caught:
            tokens.issue(ANALYST, "demo-dev", ttl_s=ttl)
        assert caught.value.code == "invalid_ttl"


def test_a_slack_approver_or_a_principal_without_an_arn_gets_no_password(tokens):
    for principal in (
        Principal(name="alice", kind="approver"),
        Principal(name="ghost", kind="agent", arn=""),
        Principal(name="bad\x00name", kind="agent", arn=ANALYST.arn),
    ):
        with pytest.raises(BadRequestError):
            tokens.issue(principal, "demo-dev")


# -- what the proxy must refuse --------------------------------------------------------------


def test_every_single_character_changed_anywhere_is_refused(tokens):
    password = tokens.issue(ANALYST, "demo-prod").password
    alphabet = string.ascii_letters + string.digits + "-_"
    for i, char in enumerate(password):
        if char == ".":
            continue
        # Two substitutes per position, one of them a neighbour: the MAC's last character has
        # spare bits, and a changed spelling of it must not verify either.
        for other in {alphabet[(alphabet.index(char) + 1) % len(alphabet)], "A" if char != "A" else "B"}:
            tampered = password[:i] + other + password[i + 1 :]
            refused(tokens, "analyst", tampered, "demo-prod")
    assert tokens.verify("analyst", password, "demo-prod", NOW).principal_name == "analyst"


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, OTHER.arn),  # principal ARN
        (1, "reporter"),  # principal name
        (2, "demo-dev"),  # connection
        (3, NOW - 3600),  # issued at
        (4, NOW + MAX_TTL_S),  # expires at
        (5, "AAAAAAAAAAAAAAAAAAAAAA"),  # nonce
    ],
    ids=["arn", "name", "connection", "issued_at", "expires_at", "nonce"],
)
def test_every_claim_rewritten_is_refused_by_the_signature(tokens, index, value):
    password = tokens.issue(ANALYST, "demo-prod").password
    claims = claims_of(password)
    claims[index] = value
    forged = with_claims(password, claims)

    # The forger presents whatever the rewritten claims say.
    username = claims[1]
    assert refused(tokens, username, forged, claims[2]) == "bad_signature"


def test_the_format_the_key_version_and_the_mac_are_each_checked(sm, tokens, key_clock):
    password = tokens.issue(ANALYST, "demo-prod").password
    fmt, version, payload, mac = parts(password)

    assert refused(tokens, "analyst", ".".join(["gh2", version, payload, mac]), "demo-prod") == "malformed"
    assert refused(tokens, "analyst", ".".join([fmt, version, payload, mac[:-1]]), "demo-prod") == "malformed"
    unknown = "00000000-0000-0000-0000-000000000000"
    assert refused(tokens, "analyst", ".".join([fmt, unknown, payload, mac]), "demo-prod") == (
        "unknown_key_version"
    )
    # Claimed by the newer key after a rotation: the signature is still the old key's.
    rotated = rotate_key(sm, SECRET)
    key_clock.now += KEY_CACHE_SECONDS
    assert refused(tokens, "analyst", ".".join([fmt, rotated, payload, mac]), "demo-prod") == "bad_signature"


@pytest.mark.parametrize(
    "password",
    ["", "gh1", "gh1...", "x" * 5000, "gh1.v.p.m\x00", "gh1.é.p." + "m" * 43, "gh1.a.b.c.d"],
    ids=["empty", "prefix", "dots", "huge", "nul", "non-ascii", "five-parts"],
)
def test_malformed_passwords_are_refused_as_a_failed_password(tokens, password):
    assert refused(tokens, "analyst", password, "demo-prod") == "malformed"


def test_a_password_used_at_or_after_its_expiry_is_refused(tokens):
    issued = tokens.issue(ANALYST, "demo-prod", ttl_s=120)

    assert tokens.verify("analyst", issued.password, "demo-prod", issued.expires_at - 1)
    assert refused(tokens, "analyst", issued.password, "demo-prod", issued.expires_at) == "expired"
    assert refused(tokens, "analyst", issued.password, "demo-prod", issued.expires_at + 86400) == "expired"


def test_a_password_from_a_clock_far_ahead_is_refused(sm, key_clock):
    ahead = ProxyTokens(ProxyTokenKeys(sm, SECRET, clock=key_clock), clock=lambda: NOW + 3600)
    password = ahead.issue(ANALYST, "demo-prod").password
    assert ahead.verify("analyst", password, "demo-prod", NOW + 3600 - CLOCK_SKEW_S)
    assert refused(ahead, "analyst", password, "demo-prod", NOW) == "bad_lifetime"


def test_a_password_for_one_connection_does_not_open_another(tokens):
    password = tokens.issue(ANALYST, "demo-dev").password

    assert refused(tokens, "analyst", password, "demo-prod") == "wrong_connection"
    assert refused(tokens, "analyst", password, "demo-dev ") == "wrong_connection"


def test_another_agents_user_name_with_this_password_is_refused(tokens):
    password = tokens.issue(ANALYST, "demo-prod").password

    assert refused(tokens, "reporter", password, "demo-prod") == "wrong_username"
    assert refused(tokens, "Analyst", password, "demo-prod") == "wrong_username"
    # And the other agent's own password is no use under this agent's name.
    theirs = tokens.issue(OTHER, "demo-prod").password
    assert refused(tokens, "analyst", theirs, "demo-prod") == "wrong_username"


def test_the_refusal_says_only_what_postgres_would_say(tokens):
    password = tokens.issue(ANALYST, "demo-dev").password
    with pytest.raises(InvalidProxyTokenError) as caught:
        tokens.verify("analyst", password, "demo-prod", NOW)

    status, body = error_body(caught.value)
    assert body == {
        "error": "invalid_proxy_token",
        "message": 'password authentication failed for user "analyst"',
        "sqlstate": "28P01",
    }
    assert status == 401 and "demo" not in body["message"]


def test_a_password_signed_with_the_masking_key_is_refused(sm, tokens, key_clock):
    create_masking_key(sm, names.MASKING_KEY_SECRET)
    masking = ProxyTokens(ProxyTokenKeys(sm, names.MASKING_KEY_SECRET, clock=key_clock), clock=lambda: NOW)
    forged = masking.issue(ANALYST, "demo-prod").password

    assert refused(tokens, "analyst", forged, "demo-prod") == "unknown_key_version"


# -- key rotation ----------------------------------------------------------------------------


def test_rotation_keeps_the_previous_key_until_the_next_rotation(sm, tokens, key_clock):
    # Given a password signed with the first key
    old = tokens.issue(ANALYST, "demo-prod", ttl_s=MAX_TTL_S).password

    # When the key is rotated once: new passwords use the new key, old ones still verify
    second = rotate_key(sm, SECRET)
    key_clock.now += KEY_CACHE_SECONDS
    new = tokens.issue(ANALYST, "demo-prod", ttl_s=MAX_TTL_S)
    assert new.key_version == second != parts(old)[1]
    assert tokens.verify("analyst", old, "demo-prod", NOW + 10).principal_arn == ANALYST.arn
    assert tokens.verify("analyst", new.password, "demo-prod", NOW + 10)

    # When it is rotated again: the first key is neither current nor previous, so it is refused
    rotate_key(sm, SECRET)
    key_clock.now += KEY_CACHE_SECONDS
    assert refused(tokens, "analyst", old, "demo-prod", NOW + 10) == "unknown_key_version"
    assert tokens.verify("analyst", new.password, "demo-prod", NOW + 10)


def test_a_verifier_that_has_not_seen_a_rotation_yet_accepts_the_new_key(sm):
    api_clock, proxy_clock = Clock(1000.0), Clock(1000.0)
    issuer = ProxyTokens(ProxyTokenKeys(sm, SECRET, clock=api_clock), clock=lambda: NOW)
    proxy = ProxyTokens(ProxyTokenKeys(sm, SECRET, clock=proxy_clock), clock=lambda: NOW)
    assert proxy.verify("analyst", issuer.issue(ANALYST, "demo-dev").password, "demo-dev")

    # The API picks up the rotation first, while the proxy's cache is still fresh (10 s old).
    rotate_key(sm, SECRET)
    api_clock.now += KEY_CACHE_SECONDS
    proxy_clock.now += 10
    fresh = issuer.issue(ANALYST, "demo-dev").password
    assert proxy.verify("analyst", fresh, "demo-dev").principal_name == "analyst"


def test_an_unreadable_key_fails_closed(sm, key_clock):
    missing = ProxyTokens(ProxyTokenKeys(sm, "gatehouse/no-such-key", clock=key_clock), clock=lambda: NOW)
    with pytest.raises(SecretUnavailableError):
        missing.issue(ANALYST, "demo-dev")
    with pytest.raises(SecretUnavailableError):
        missing.verify("analyst", "gh1.v." + "p" * 10 + "." + "m" * 43, "demo-dev")
    sm.create_secret(Name="gatehouse/short-key", SecretString=base64.b64encode(b"k" * 16).decode())
    short = ProxyTokens(ProxyTokenKeys(sm, "gatehouse/short-key", clock=key_clock), clock=lambda: NOW)
    with pytest.raises(SecretUnavailableError, match="shorter than 256 bits"):
        short.issue(ANALYST, "demo-dev")


# -- the API's answer ------------------------------------------------------------------------

USABLE = [
    {"name": "demo-dev", "kind": "postgres", "attributes": {"env": "dev"}, "actions": {}},
    {"name": "demo-http", "kind": "http", "attributes": {"env": "dev"}, "actions": {}},
]


def test_the_answer_names_the_proxy_when_one_runs(tokens):
    body = ProxyTokenGrants(tokens, "127.0.0.1:6432").grant(ANALYST, "demo-dev", USABLE, ttl_s=300)

    assert {k: body[k] for k in ("host", "port", "username", "database", "expires_at")} == {
        "host": "127.0.0.1",
        "port": 6432,
        "username": "analyst",
        "database": "demo-dev",
        "expires_at": NOW + 300,
    }
    assert body["proxy_running"] is True and "message" not in body
    assert tokens.verify(body["username"], body["password"], body["database"], NOW)


def test_the_answer_says_when_no_proxy_is_running(tokens):
    body = ProxyTokenGrants(tokens, "").grant(ANALYST, "demo-dev", USABLE)

    assert body["host"] is None and body["port"] is None and body["proxy_running"] is False
    assert "not running" in body["message"]


def test_only_a_usable_postgres_connection_gets_a_password(tokens):
    grants = ProxyTokenGrants(tokens, "[::1]:6432")
    assert grants.grant(ANALYST, "demo-dev", USABLE)["host"] == "::1"
    with pytest.raises(UnknownConnectionError):
        grants.grant(ANALYST, "demo-prod", USABLE)  # not listed: denied every action, or absent
    with pytest.raises(ConnectionKindError):
        grants.grant(ANALYST, "demo-http", USABLE)


def test_the_proxy_settings_read_from_the_environment():
    env = {names.ENV_LOG_BUCKET: "b", names.ENV_PROXY_ENDPOINT: "proxy.internal:6432"}
    settings = Settings.from_env(env)
    assert settings.proxy_endpoint == "proxy.internal:6432"
    assert settings.proxy_token_key_secret == names.PROXY_TOKEN_KEY_SECRET
    assert Settings.from_env(settings.as_env()) == settings
    assert Settings.from_env({names.ENV_LOG_BUCKET: "b"}).proxy_endpoint == ""
    for bad in ("proxy.internal", ":6432", "host:port", "host:0", "host:70000"):
        with pytest.raises(ConfigError):
            Settings.from_env({**env, names.ENV_PROXY_ENDPOINT: bad})
