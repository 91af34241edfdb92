"""Content detectors: what each one masks inside free text, and what it must leave alone."""

from __future__ import annotations

import base64
import json
import random
import uuid

import pytest

from gatehouse.masking import DETECTOR_NAMES, Masker, MaskingProfile, Strategy, load_profile
from gatehouse.masking.detectors import card_number_ok, iban_ok, jwt_ok, luhn_ok, ssn_ok
from gatehouse.masking.strategies import keyed_hash

KEY = b"unit-test-masking-key-0123456789"

# Credential-shaped test strings are assembled at run time: the repository's hook refuses
# anything that looks like a real key in a commit, and these are not real keys.
ACCESS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example
SESSION_KEY = "AS" + "IA" + "Q3EGRTWZ7XAMPL3X"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"  # AWS's documented example (40)
PEM_BEGIN = "-----BEGIN " + "RSA PRIVATE KEY-----"
PEM_END = "-----END " + "RSA PRIVATE KEY-----"
PEM = PEM_BEGIN + "\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n" + PEM_END


def _b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


JWT = _b64url({"alg": "HS256", "typ": "JWT"}) + "." + _b64url({"sub": "42"}) + ".c2lnbmF0dXJlLXNpZw"


def _token_body(length: int, seed: int) -> str:
    """Random letters and digits, the body of a made-up token."""
    rnd = random.Random(seed)
    return "".join(
        rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") for _ in range(length)
    )


# Made-up tokens in the documented formats of their issuers (assembled at run time, as above).
GITHUB_CLASSIC = "gh" + "p_" + _token_body(36, 1)
GITHUB_OAUTH = "gh" + "o_" + _token_body(36, 2)
GITHUB_FINE = "github" + "_pat_" + _token_body(22, 3) + "_" + _token_body(59, 4)
SLACK_BOT = "xo" + "xb-" + "123456789012-1234567890123-" + _token_body(24, 5)
SLACK_USER = "xo" + "xp-" + "1234567890-1234567890-1234567890123-" + _token_body(32, 6)
STRIPE_LIVE = "sk" + "_live_" + _token_body(24, 7)
STRIPE_RESTRICTED = "rk" + "_live_" + _token_body(24, 8)
GOOGLE_KEY = "AI" + "za" + "Sy" + _token_body(33, 9)


def _luhn_complete(body: str) -> str:
    """An independent Luhn: the check digit that makes `body + digit` valid."""
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


@pytest.fixture(scope="module")
def masker() -> Masker:
    return Masker(load_profile("default"), KEY)


def _mask_cell(masker: Masker, value: str) -> tuple[object, set[str]]:
    """One value through the result path; returns it and the detectors reported."""
    out = masker.mask_rows(["value"], [(value,)])
    return out.rows[0][0], {m.rule.removeprefix("detector:") for m in out.masked}


POSITIVE = [
    # email
    ("email", "write to alice@example.com today", "write to [EMAIL] today"),
    ("email", "John.Smith+news@Mail.Example.CO.UK", "[EMAIL]"),
    ("email", "<bob_o-neil@corp.example.io>", "<[EMAIL]>"),
    ("email", "Key (email)=(carol@example.org) already exists.", "Key (email)=([EMAIL]) already exists."),
    # the period that ends a sentence is not part of the domain
    ("email", "write to ann@example.com.", "write to [EMAIL]."),
    ("email", "Ask dev.ops@mail.example.co.uk. Then wait", "Ask [EMAIL]. Then wait"),
    ("email", "(see ann@example.com...)", "(see [EMAIL]...)"),
    # card numbers (Luhn-valid test numbers of several networks and groupings)
    ("card_number", "4111111111111111", "[CARD_NUMBER]"),
    ("card_number", "paid with 4111 1111 1111 1111 yesterday", "paid with [CARD_NUMBER] yesterday"),
    ("card_number", "5555-5555-5555-4444", "[CARD_NUMBER]"),
    ("card_number", "amex 378282246310005", "amex [CARD_NUMBER]"),
    ("card_number", "amex 3782 822463 10005", "amex [CARD_NUMBER]"),
    ("card_number", "13 digits: 4222222222222.", "13 digits: [CARD_NUMBER]."),
    ("card_number", "expiry after it: 4111 1111 1111 1111 12/27", "expiry after it: [CARD_NUMBER] 12/27"),
    ("card_number", "card:6011111111111117,", "card:[CARD_NUMBER],"),
    # glued to a word on either side
    ("card_number", "5555 3689 1377 5317x", "[CARD_NUMBER]x"),
    ("card_number", "card4111111111111111", "card[CARD_NUMBER]"),
    ("card_number", "paid 378282246310005USD today", "paid [CARD_NUMBER]USD today"),
    ("card_number", "No4111-1111-1111-1111.", "No[CARD_NUMBER]."),
    # separators other than one space or dash
    ("card_number", "4111.1111.1111.1111", "[CARD_NUMBER]"),
    ("card_number", "4111_1111_1111_1111", "[CARD_NUMBER]"),
    ("card_number", "card\t5555\t5555\t5555\t4444\tend", "card\t[CARD_NUMBER]\tend"),
    ("card_number", "4111\u20131111\u20131111\u20131111", "[CARD_NUMBER]"),
    ("card_number", "pay 4111\u00a01111\u00a01111\u00a01111 now", "pay [CARD_NUMBER] now"),
    ("card_number", "4111  1111  1111  1111", "[CARD_NUMBER]"),
    ("card_number", "amex 3782\u00a0822463\u00a010005", "amex [CARD_NUMBER]"),
    # US SSN
    ("ssn", "ssn 123-45-6789 on file", "ssn [SSN] on file"),
    ("ssn", "WHERE ssn = '078-05-1120'", "WHERE ssn = '[SSN]'"),
    ("ssn", "x434-70-9213", "x[SSN]"),
    ("ssn", "id SSN123-45-6789x on file", "id SSN[SSN]x on file"),
    # phones
    ("phone", "call (415) 555-0132 now", "call [PHONE] now"),
    ("phone", "415-555-0132", "[PHONE]"),
    ("phone", "415.555.0132", "[PHONE]"),
    ("phone", "415 555 0132", "[PHONE]"),
    ("phone", "1-415-555-0132", "[PHONE]"),
    ("phone", "+1-415-555-0132", "[PHONE]"),
    ("phone", "+1 (415) 555-0132", "[PHONE]"),
    ("phone", "London +44 20 7946 0958.", "London [PHONE]."),
    ("phone", "+4915123456789", "[PHONE]"),
    ("phone", "+33 1 23 45 67 89", "[PHONE]"),
    ("phone", "415_555_0132", "[PHONE]"),
    ("phone", "call\t415\t555\t0132\tnow", "call\t[PHONE]\tnow"),
    ("phone", "415\u2013555\u20130132", "[PHONE]"),
    ("phone", "(415)\u00a0555\u00a00132", "[PHONE]"),
    ("phone", "415  555  0132", "[PHONE]"),
    ("phone", "+44\u00a020\u00a07946\u00a00958", "[PHONE]"),
    ("phone", "+1  415  555  0132", "[PHONE]"),
    ("phone", "tel415-555-0132", "tel[PHONE]"),
    # IBAN (mod-97 valid)
    ("iban", "DE89 3704 0044 0532 0130 00", "[IBAN]"),
    ("iban", "pay GB82WEST12345698765432 now", "pay [IBAN] now"),
    ("iban", "FR1420041010050500013M02606", "[IBAN]"),
    ("iban", "NO9386011117947", "[IBAN]"),
    ("iban", "MT84MALT011000012345MTLCAST001S", "[IBAN]"),
    ("iban", "DE89 3704 0044 0532 0130 00 THANKS", "[IBAN] THANKS"),
    # lower case and dashes, checksum still verified
    ("iban", "de89 3704 0044 0532 0130 00", "[IBAN]"),
    ("iban", "iban: gb82west12345698765432.", "iban: [IBAN]."),
    ("iban", "DE89-3704-0044-0532-0130-00", "[IBAN]"),
    ("iban", "to fr14-2004-1010-0505-0001-3m02-606 today", "to [IBAN] today"),
    # AWS
    ("aws_access_key", f"key {ACCESS_KEY} leaked", "key [AWS_ACCESS_KEY] leaked"),
    ("aws_access_key", f"{SESSION_KEY}", "[AWS_ACCESS_KEY]"),
    ("aws_access_key", f"aws_access_key_id={ACCESS_KEY}", "aws_access_key_id=[AWS_ACCESS_KEY]"),
    ("aws_access_key", f"AccessKeyId='{ACCESS_KEY}'", "AccessKeyId='[AWS_ACCESS_KEY]'"),
    ("aws_secret_key", f"aws_secret_access_key = {SECRET_KEY}", "aws_secret_access_key = [AWS_SECRET_KEY]"),
    ("aws_secret_key", f'{{"SecretAccessKey": "{SECRET_KEY}"}}', '{"SecretAccessKey": "[AWS_SECRET_KEY]"}'),
    ("aws_secret_key", f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}", "AWS_SECRET_ACCESS_KEY=[AWS_SECRET_KEY]"),
    ("aws_secret_key", SECRET_KEY, "[AWS_SECRET_KEY]"),
    ("aws_secret_key", f"  {SECRET_KEY}\n", "[AWS_SECRET_KEY]"),
    # the keyword alone, in key=value and key: value forms
    ("aws_secret_key", f"secret: {SECRET_KEY}", "secret: [AWS_SECRET_KEY]"),
    ("aws_secret_key", f"AWS_SECRET={SECRET_KEY}", "AWS_SECRET=[AWS_SECRET_KEY]"),
    ("aws_secret_key", f"export AWS_SECRET_KEY='{SECRET_KEY}'", "export AWS_SECRET_KEY='[AWS_SECRET_KEY]'"),
    ("aws_secret_key", f'client_secret => "{SECRET_KEY}"', 'client_secret => "[AWS_SECRET_KEY]"'),
    ("aws_secret_key", f"secrets:\n  aws-secret {SECRET_KEY}", "secrets:\n  aws-secret [AWS_SECRET_KEY]"),
    # JWT
    ("jwt", f"token={JWT}&x=1", "token=[JWT]&x=1"),
    ("jwt", _b64url({"alg": "none"}) + "." + _b64url({"sub": "1"}) + ".", "[JWT]"),
    # private keys, whole blocks, even cut short
    ("private_key", f"key:\n{PEM}\nend", "key:\n[PRIVATE_KEY]\nend"),
    ("private_key", "-----BEGIN " + "PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B", "[PRIVATE_KEY]"),
    ("private_key", "x -----BEGIN " + "OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY----- y",
     "x [PRIVATE_KEY] y"),
    # bearer tokens and Authorization headers
    ("bearer_token", "Authorization: Bearer abc123def456ghi789", "Authorization: Bearer [BEARER_TOKEN]"),
    ("bearer_token", "curl -H 'authorization: basic dXNlcjpwYXNz'",
     "curl -H 'authorization: basic [BEARER_TOKEN]'"),
    ("bearer_token", "sent bearer Zm9vYmFyYmF6cXV4 ok", "sent bearer [BEARER_TOKEN] ok"),
    ("bearer_token", '{"Authorization": "tok_8f3kLmQ2"}', '{"Authorization": "[BEARER_TOKEN]"}'),
    # well-known token formats, by prefix
    ("api_token", GITHUB_CLASSIC, "[API_TOKEN]"),
    ("api_token", f"git clone https://{GITHUB_OAUTH}@github.com/o/r", "git clone https://[API_TOKEN]@github.com/o/r"),
    ("api_token", f"GITHUB_TOKEN={GITHUB_FINE}", "GITHUB_TOKEN=[API_TOKEN]"),
    ("api_token", f"slack {SLACK_BOT} posted", "slack [API_TOKEN] posted"),
    ("api_token", f'{{"token": "{SLACK_USER}"}}', '{"token": "[API_TOKEN]"}'),
    ("api_token", f"stripe key {STRIPE_LIVE}.", "stripe key [API_TOKEN]."),
    ("api_token", f"rk={STRIPE_RESTRICTED}", "rk=[API_TOKEN]"),
    ("api_token", f"maps?key={GOOGLE_KEY}&q=x", "maps?key=[API_TOKEN]&q=x"),
    # credentials in connection URIs and keyword strings: the secret part only
    ("connection_secret", "postgres://app:s3cret@db.internal:5432/shop",
     "postgres://app:[CONNECTION_SECRET]@db.internal:5432/shop"),
    ("connection_secret", "DATABASE_URL=postgresql://app:p%40ss@10.0.0.5/shop?sslmode=require",
     "DATABASE_URL=postgresql://app:[CONNECTION_SECRET]@10.0.0.5/shop?sslmode=require"),
    ("connection_secret", "mysql://root:p@ss:w0rd@db.example.com:3306/app",
     "mysql://root:[CONNECTION_SECRET]@db.example.com:3306/app"),
    ("connection_secret", "fetch https://bob:hunter2@example.com/private",
     "fetch https://bob:[CONNECTION_SECRET]@example.com/private"),
    ("connection_secret", "redis://:Zq9x-Secret@cache:6379/0", "redis://:[CONNECTION_SECRET]@cache:6379/0"),
    ("connection_secret", "host=db port=5432 user=app password=hunter2 dbname=shop",
     "host=db port=5432 user=app password=[CONNECTION_SECRET] dbname=shop"),
    ("connection_secret", "host=db password='it\\'s a secret' dbname=shop",
     "host=db password='[CONNECTION_SECRET]' dbname=shop"),
    ("connection_secret", "Server=db;Database=shop;Uid=sa;Pwd=Secr3t!;",
     "Server=db;Database=shop;Uid=sa;Pwd=[CONNECTION_SECRET];"),
    ("connection_secret", "jdbc:postgresql://db/shop?user=app&password=hunter2&ssl=true",
     "jdbc:postgresql://db/shop?user=app&password=[CONNECTION_SECRET]&ssl=true"),
    ("connection_secret", '{"user": "app", "Password": "hunter2"}',
     '{"user": "app", "Password": "[CONNECTION_SECRET]"}'),
    ("connection_secret", "db_password: hunter2", "db_password: [CONNECTION_SECRET]"),
    ("connection_secret", "PGPASSWORD=hunter2 psql", "PGPASSWORD=[CONNECTION_SECRET] psql"),
    ("connection_secret", "ALTER ROLE app PASSWORD 'it''s new'",
     "ALTER ROLE app PASSWORD '[CONNECTION_SECRET]'"),
]  # fmt: skip


@pytest.mark.parametrize(("detector", "text", "expected"), POSITIVE)
def test_detector_masks_only_the_sensitive_span(
    masker: Masker, detector: str, text: str, expected: str
) -> None:
    value, reported = _mask_cell(masker, text)

    assert value == expected
    assert detector in reported
    assert masker.mask_text(text) == expected


def test_every_detector_has_a_positive_case() -> None:
    assert {d for d, _, _ in POSITIVE} == set(DETECTOR_NAMES)


def test_a_19_digit_card_is_masked(masker: Masker) -> None:
    card = _luhn_complete("6304" + "000000000000" + "12")
    assert len(card) == 19 and luhn_ok(card)

    assert masker.mask_text(f"maestro {card}") == "maestro [CARD_NUMBER]"


NEGATIVE = [
    # identifiers, dates, versions, amounts, addresses that carry digits but no PII
    "ORD-2024-000123",
    "order ORD-2024-000123 shipped",
    "3f9a0c1e-2b7d-4c1e-9a0c-1e2b7d3f9a0c",
    "12345678-1234-1234-1234-123412341234",
    "2024-01-15",
    "2024-01-15T10:30:00Z",
    "2024-01-15 10:30:00.123456+00:00",
    "15.01.2024",
    "v1.2.3",
    "1.2.3",
    "release 10.4.12",
    "1234.56",
    "$1,234,567.89",
    "0.4111111111111111",
    "192.168.1.10",
    "10.0.12.7:5432",
    "1700000000000",
    "SKU-88412",
    "A7",
    "trial",
    "John Smith",
    "room 1201, floor 12",
    # near misses
    "4111 1111 1111 1112",  # Luhn fails
    "4111111111111112",  # Luhn fails
    "0000 0000 0000 0000",  # Luhn-valid zeros: no issuer
    "000-12-3456",  # SSN area 000
    "666-12-3456",  # SSN area 666
    "900-12-3456",  # SSN area 9xx
    "123-00-4567",  # SSN group 00
    "123-45-0000",  # SSN serial 0000
    "123-45-678",  # too short
    "DE89370400440532013001",  # IBAN checksum fails
    "GB82WEST12345698765433",  # IBAN checksum fails
    "user@localhost",  # no domain
    "npm install left-pad@1.3.0",
    "the bearer of bad news",
    "Bearer authentication is used",
    "authorization: pending",
    "da39a3ee5e6b4b0d3255bfef95601890afd80709",  # SHA-1 hex: 40 chars, but no upper case
    "eyJub3RfYWxnIjogMX0.eyJzdWIiOiAiMSJ9.c2ln",  # header without "alg"
    "eyJhbGciOiJIUzI1NiJ9",  # one segment
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
    "AKIA-not-a-key",
    "ASIA PACIFIC",
    # dates, versions, UUIDs, amounts, timestamps, addresses, order numbers
    "2024-01-05",
    "05.01.2024",
    "01/05/2024",
    "20240105",
    "1.2.3.4",
    "v10.4.12.1",
    "1,234.56",
    "1 234 567,89",
    "-1234.5678",
    "2024-01-05T10:30:00.123456Z",
    "2024-01-05 10:30:00+01:00",
    "192.168.100.200",
    "10.0.0.1:5432",
    "fe80::1ff:fe23:4567:890a",
    "ORD2024000123",
    "INV-2024-0001-0042",
    "PO4500012345",
    "order #1234567",
    "SKU_88412_XL",
    # digits glued to letters inside identifiers: hex ids and UUIDs, even around a Luhn-valid run
    "abcd4111-1111-1111-1111-cafebabe0000",
    "deadbeef4111111111111111cafebabe",
    "fb9199390460047da78ae02e",
    "fe8848a210e7121c73bdb202feb917ef",
    # near misses of the glued and separated forms
    "x434-70-921",  # SSN too short
    "x000-12-3456",  # SSN area 000
    "5555 3689 1377 5318x",  # Luhn fails
    "4111.1111.1111.1112",  # Luhn fails
    "4111\u20131111\u20131111\u20131112",  # Luhn fails
    "415_555_013",  # too short for a phone
    "de89370400440532013001",  # IBAN checksum fails, lower case
    "DE89-3704-0044-0532-0130-02",  # IBAN checksum fails, dashes
    "gb82-west-1234-5698-7654-33",  # IBAN checksum fails, lower case and dashes
    "ab12-cdef-ghij-klmn-op",  # IBAN-shaped, checksum fails
    # near misses of the secrets and tokens
    "secret sauce recipe",
    "the secret is out",
    "ghp_short",
    "github_pat_",
    "xoxo-gossip-girl-forever",
    "sk_live_abc",
    "pk_live_" + "x" * 24,  # a publishable key: public by design
    "AIza-too-short",
    "https://example.com:8443/path@v2",
    "postgres://db.internal:5432/shop",
    "see https://example.com/a:b@c",
    "password reset requested",
    "forgot password?",
    "password_changed_at=2024-01-05",
    "passwords: 3 rotated",
    "compass=north",
    "passport=X1234567",
    "pwd: /home/app",
    "password=",
    'FATAL:  password authentication failed for user "app"',  # Postgres error texts
    "fe_sendauth: no password supplied",
]


@pytest.mark.parametrize("text", NEGATIVE)
def test_values_that_are_not_sensitive_come_back_unchanged(masker: Masker, text: str) -> None:
    value, reported = _mask_cell(masker, text)

    assert value == text
    assert reported == set()
    assert masker.mask_text(text) == text


def test_random_uuids_and_hashes_come_back_unchanged(masker: Masker) -> None:
    rnd = random.Random(11)
    values = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(3_000)]
    values += [f"{rnd.getrandbits(128):032x}" for _ in range(3_000)]  # MD5-sized hex
    values += [f"{rnd.getrandbits(96):024x}" for _ in range(3_000)]  # ObjectId-sized hex
    values += [v.upper() for v in values[:1_000]]

    out = masker.mask_rows(["id"], [(v,) for v in values])

    assert [row[0] for row in out.rows] == values
    assert out.masked == ()


def test_a_glued_number_keeps_its_glue_under_each_strategy() -> None:
    profile = MaskingProfile(
        name="t", detector_strategies=(("ssn", Strategy.PARTIAL), ("card_number", Strategy.HASH))
    )
    masker = Masker(profile, KEY)

    assert masker.mask_text("x434-70-9213") == "x***-**-9213"
    assert masker.mask_text("card4111111111111111x") == "card" + keyed_hash(KEY, "4111111111111111") + "x"


def test_a_connection_secret_can_be_hashed_and_the_rest_of_the_uri_stays() -> None:
    masker = Masker(
        MaskingProfile(name="t", detector_strategies=(("connection_secret", Strategy.HASH),)), KEY
    )

    out = masker.mask_text("postgres://app:s3cret@db/shop")

    assert out == "postgres://app:" + keyed_hash(KEY, "s3cret") + "@db/shop"


def test_a_null_strategy_drops_a_value_holding_a_token() -> None:
    masker = Masker(MaskingProfile(name="t", detector_strategies=(("api_token", Strategy.NULL),)), KEY)

    out = masker.mask_rows(["note"], [(f"token {GITHUB_CLASSIC}",), ("no token here",)])

    assert out.rows == [(None,), ("no token here",)]
    assert [m.rule for m in out.masked] == ["detector:api_token"]


def test_a_phone_inside_a_rejected_card_candidate_is_still_masked(masker: Masker) -> None:
    # 14 digits in groups: a card candidate that fails Luhn, then a phone and a count
    assert masker.mask_text("1 415 555 0132 1234") == "[PHONE] 1234"


def test_a_card_after_a_short_group_is_found(masker: Masker) -> None:
    assert masker.mask_text("12 4111 1111 1111 1111") == "12 [CARD_NUMBER]"


def test_an_access_key_and_the_secret_next_to_it(masker: Masker) -> None:
    out = masker.mask_rows(["creds"], [(f"{ACCESS_KEY},{SECRET_KEY}",)])

    assert out.rows == [("[AWS_ACCESS_KEY],[AWS_SECRET_KEY]",)]
    assert [m.rule for m in out.masked] == ["detector:aws_access_key", "detector:aws_secret_key"]


def test_a_standalone_secret_among_short_values(masker: Masker) -> None:
    out = masker.mask_rows(["v"], [("short",), (SECRET_KEY,), (None,), ("x" * 60,)])

    assert [row[0] for row in out.rows] == ["short", "[AWS_SECRET_KEY]", None, "x" * 60]


def test_a_40_character_token_inside_a_sentence_is_not_a_secret_without_context(masker: Masker) -> None:
    text = f"build {SECRET_KEY.replace('/', 'x')} done"

    assert masker.mask_text(text) == text


def test_many_kinds_in_one_note(masker: Masker) -> None:
    note = (
        f"Reach alice@example.com or (415) 555-0132; card 4111-1111-1111-1111, ssn 123-45-6789, "
        f"IBAN DE89 3704 0044 0532 0130 00, key {ACCESS_KEY}, order ORD-2024-000123 on 2024-01-15."
    )
    expected = (
        "Reach [EMAIL] or [PHONE]; card [CARD_NUMBER], ssn [SSN], "
        "IBAN [IBAN], key [AWS_ACCESS_KEY], order ORD-2024-000123 on 2024-01-15."
    )

    assert masker.mask_text(note) == expected


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("4111111111111111", True), ("4111111111111112", False), ("79927398713", True), ("0", True)],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_ok(digits) is valid


def test_card_rules_beyond_luhn() -> None:
    assert card_number_ok("4222222222222")
    assert not card_number_ok("0000000000000000")  # no issuer uses a leading 0
    assert not card_number_ok(_luhn_complete("170000000000"))  # 13 digits starting with 1
    assert card_number_ok(_luhn_complete("10000000000000"))  # UATP: 15 digits starting with 1
    assert not card_number_ok(_luhn_complete("41111111111"))  # 12 digits


def test_iban_checksum() -> None:
    assert iban_ok("DE89370400440532013000")
    assert iban_ok("GB82WEST12345698765432")
    assert not iban_ok("DE89370400440532013001")
    assert not iban_ok("DE00370400440532013000")  # check digits 00 never occur


def test_ssn_areas() -> None:
    assert ssn_ok("123-45-6789")
    assert not any(
        ssn_ok(s) for s in ("000-12-3456", "666-12-3456", "987-65-4321", "123-00-4567", "123-45-0000")
    )


def test_jwt_header_must_be_json_with_alg() -> None:
    assert jwt_ok(JWT)
    assert not jwt_ok("eyJ@@@.x.y")
    assert not jwt_ok(_b64url({"typ": "JWT"}) + ".e30.x")


def test_the_column_pass_and_the_value_pass_agree(masker: Masker) -> None:
    """Many values scanned as one joined text give what each value gives alone."""
    rnd = random.Random(7)
    pieces = [*(t for _, t, _ in POSITIVE), *NEGATIVE, " ", ", ", "-", "\n", "(", "+", "1"]
    values = ["".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 4))) for _ in range(2_000)]

    out = masker.mask_rows(["v"], [(v,) for v in values])

    assert [row[0] for row in out.rows] == [masker.mask_text(v) for v in values]
