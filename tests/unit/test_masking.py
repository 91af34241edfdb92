"""The masker: profiles, column rules, strategies, the `masked` report, and what passes through."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from decimal import Decimal
from ipaddress import IPv4Address

import pytest

from gatehouse.exceptions import GatehouseError
from gatehouse.masking import (
    DETECTOR_NAMES,
    PROFILE_NAMES,
    ColumnRule,
    MaskedRows,
    Masker,
    MaskingConfigError,
    MaskingProfile,
    Strategy,
    load_profile,
)
from gatehouse.masking.strategies import KeyedHasher, keyed_hash, partial
from gatehouse.models import MaskedColumn

KEY = b"unit-test-masking-key-0123456789"
OTHER_KEY = b"another-masking-key-9876543210ab"
HASH_TOKEN = re.compile(r"hash:[0-9a-f]{16}")

CUSTOMER_COLUMNS = ("id", "name", "email", "phone", "card_number", "ssn", "notes")
CUSTOMERS = [
    (1, "Alice Martin", "alice@example.com", "(415) 555-0132", "4111 1111 1111 1111", "123-45-6789",
     "Prefers email: alice.m@example.org, renewal 2025-03-01."),
    (2, "Bob Okafor", "bob@example.com", "+44 20 7946 0958", "5555-5555-5555-4444", "078-05-1120",
     "Called from 415-555-0199 about ORD-2024-000123."),
    (3, "Chen Wei", None, None, None, None, None),
]  # fmt: skip


def _profile(*rules: tuple[str, Strategy], **detectors: Strategy) -> MaskingProfile:
    return MaskingProfile(
        name="test",
        column_rules=tuple(ColumnRule(p, s) for p, s in rules),
        detector_strategies=tuple(detectors.items()),
    )


# --- profiles -----------------------------------------------------------------------------


def test_shipped_profiles() -> None:
    assert {"default", "pii-strict"} <= set(PROFILE_NAMES)
    default = load_profile("default")
    assert default.column_rules == ()
    assert default.detectors == frozenset(DETECTOR_NAMES)
    assert all(default.strategy_for(d) is Strategy.REDACT for d in DETECTOR_NAMES)


def test_unknown_profile_is_a_configuration_error() -> None:
    with pytest.raises(MaskingConfigError) as caught:
        load_profile("no-such-profile")

    assert isinstance(caught.value, GatehouseError)
    assert caught.value.code == "masking_config"
    assert "no-such-profile" in caught.value.message


def test_profiles_are_frozen() -> None:
    profile = load_profile("pii-strict")

    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.name = "other"  # type: ignore[misc]
    assert hash(profile) == hash(load_profile("pii-strict"))


@pytest.mark.parametrize(
    "build",
    [
        lambda: MaskingProfile(name="x", detectors=frozenset({"email", "passport"})),
        lambda: MaskingProfile(name="x", detector_strategies=(("passport", Strategy.HASH),)),
        lambda: MaskingProfile(name="x", detector_strategies=(("email", "scramble"),)),  # type: ignore[arg-type]
        lambda: ColumnRule("email", "scramble"),  # type: ignore[arg-type]
        lambda: ColumnRule("", Strategy.REDACT),
        lambda: MaskingProfile(name=""),
    ],
)
def test_invalid_profiles_are_refused(build: object) -> None:
    with pytest.raises(MaskingConfigError):
        build()  # type: ignore[operator]


def test_the_hash_key_must_be_bytes() -> None:
    with pytest.raises(MaskingConfigError):
        Masker(load_profile("default"), b"")
    with pytest.raises(MaskingConfigError):
        Masker(load_profile("default"), "a-text-key")  # type: ignore[arg-type]


# --- strategies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4111-1111-1111-1111", "****-****-****-1111"),
        ("4111 1111 1111 1111", "**** **** **** 1111"),
        ("123-45-6789", "***-**-6789"),
        ("(415) 555-0132", "(***) ***-0132"),
        ("Ann", "**n"),  # never more than half shown
        ("José Müller", "**** **ller"),
        ("", ""),
    ],
)
def test_partial_keeps_the_last_four_and_the_punctuation(text: str, expected: str) -> None:
    assert partial(text) == expected


def test_keyed_hash_is_stable_per_key_and_differs_across_keys() -> None:
    token = keyed_hash(KEY, "alice@example.com")

    assert HASH_TOKEN.fullmatch(token)
    assert keyed_hash(KEY, "alice@example.com") == token
    assert keyed_hash(OTHER_KEY, "alice@example.com") != token
    assert keyed_hash(KEY, "bob@example.com") != token


@pytest.mark.parametrize("key", [b"k", KEY, b"x" * 64, b"y" * 100])
def test_the_fast_hasher_is_hmac_sha256(key: bytes) -> None:
    for value in ("alice@example.com", "é", b"\x00\xff"):
        assert KeyedHasher(key)(value) == keyed_hash(key, value)


def test_keyed_hashes_can_be_joined_across_results() -> None:
    profile = _profile(("email", Strategy.HASH), ("contact", Strategy.HASH))
    masker = Masker(profile, KEY)

    first = masker.mask_rows(["email"], [("alice@example.com",), ("bob@example.com",)])
    second = masker.mask_rows(["contact"], [("bob@example.com",)])
    other_key = Masker(profile, OTHER_KEY).mask_rows(["email"], [("alice@example.com",)])

    assert second.rows[0][0] == first.rows[1][0]
    assert first.rows[0][0] != first.rows[1][0]
    assert other_key.rows[0][0] != first.rows[0][0]


def test_each_strategy_as_a_column_rule() -> None:
    masker = Masker(
        _profile(("a", Strategy.REDACT), ("b", Strategy.PARTIAL), ("c", Strategy.HASH), ("d", Strategy.NULL)),
        KEY,
    )

    out = masker.mask_rows("abcd", [("123-45-6789",) * 4])

    assert out.rows == [("[REDACTED]", "***-**-6789", keyed_hash(KEY, "123-45-6789"), None)]
    assert [(m.column, m.rule, m.strategy) for m in out.masked] == [
        ("a", "column:a", "redact"),
        ("b", "column:b", "partial"),
        ("c", "column:c", "hash"),
        ("d", "column:d", "null"),
    ]


def test_each_strategy_for_a_detector_in_free_text() -> None:
    note = "card 4111-1111-1111-1111, mail alice@example.com"
    for strategy, expected in [
        (Strategy.REDACT, "card [CARD_NUMBER], mail [EMAIL]"),
        (Strategy.PARTIAL, "card ****-****-****-1111, mail *****@******e.com"),
        (
            Strategy.HASH,
            f"card {keyed_hash(KEY, '4111-1111-1111-1111')}, mail {keyed_hash(KEY, 'alice@example.com')}",
        ),
    ]:
        masker = Masker(_profile(card_number=strategy, email=strategy), KEY)
        out = masker.mask_rows(["notes"], [(note,)])
        assert out.rows == [(expected,)], strategy
        assert {m.strategy for m in out.masked} == {strategy.value}
        assert masker.mask_text(note) == expected


def test_a_null_detector_drops_the_whole_value_but_only_redacts_in_texts() -> None:
    masker = Masker(_profile(ssn=Strategy.NULL), KEY)

    out = masker.mask_rows(["notes"], [("ssn 123-45-6789 on file",), ("nothing here",), (None,)])

    assert out.rows == [(None,), ("nothing here",), (None,)]
    assert out.masked == (MaskedColumn("notes", "detector:ssn", "null"),)
    assert masker.mask_text("ssn 123-45-6789 on file") == "ssn [SSN] on file"


def test_a_detector_can_be_turned_off() -> None:
    profile = MaskingProfile(name="no-phones", detectors=frozenset(DETECTOR_NAMES) - {"phone"})
    masker = Masker(profile, KEY)

    assert masker.mask_text("call 415-555-0132 or alice@example.com") == "call 415-555-0132 or [EMAIL]"


# --- column rules -------------------------------------------------------------------------


def test_column_rules_match_names_case_insensitively_and_by_glob() -> None:
    masker = Masker(_profile(("*SSN*", Strategy.REDACT), ("Email", Strategy.HASH)), KEY)

    out = masker.mask_rows(
        ["EMAIL", "Customer_SSN", "ssn_last", "other"],
        [("a@example.com", "x", "y", "z")],
    )

    assert out.rows == [(keyed_hash(KEY, "a@example.com"), "[REDACTED]", "[REDACTED]", "z")]
    assert [m.rule for m in out.masked] == ["column:email", "column:*ssn*", "column:*ssn*"]


def test_the_first_matching_rule_wins() -> None:
    masker = Masker(_profile(("card_*", Strategy.PARTIAL), ("*", Strategy.REDACT)), KEY)

    out = masker.mask_rows(["card_number", "anything"], [("4111111111111111", 7)])

    assert out.rows == [("************1111", "[REDACTED]")]


def test_a_column_rule_masks_values_of_any_type_but_not_none() -> None:
    masker = Masker(_profile(("card_number", Strategy.PARTIAL), ("amount", Strategy.HASH)), KEY)

    out = masker.mask_rows(["card_number", "amount"], [(4111111111111111, Decimal("12.50")), (None, None)])

    assert out.rows == [("************1111", keyed_hash(KEY, "12.50")), (None, None)]


def test_a_rule_that_masked_nothing_is_not_reported() -> None:
    masker = Masker(_profile(("email", Strategy.HASH)), KEY)

    out = masker.mask_rows(["email"], [(None,), (None,)])

    assert out.masked == ()


def test_the_demo_customers_table_under_pii_strict() -> None:
    masker = Masker(load_profile("pii-strict"), KEY)

    out = masker.mask_rows(CUSTOMER_COLUMNS, CUSTOMERS)

    alice, bob, chen = out.rows
    assert alice == (
        1,
        keyed_hash(KEY, "Alice Martin"),
        keyed_hash(KEY, "alice@example.com"),
        "(***) ***-0132",
        "**** **** **** 1111",
        "[REDACTED]",
        "Prefers email: [EMAIL], renewal 2025-03-01.",
    )
    assert bob[3:6] == ("+** ** **** 0958", "****-****-****-4444", "[REDACTED]")
    assert bob[6] == "Called from [PHONE] about ORD-2024-000123."
    assert chen == (3, keyed_hash(KEY, "Chen Wei"), None, None, None, None, None)
    assert out.masked == (
        MaskedColumn("name", "column:name", "hash"),
        MaskedColumn("email", "column:email", "hash"),
        MaskedColumn("phone", "column:phone", "partial"),
        MaskedColumn("card_number", "column:card_number", "partial"),
        MaskedColumn("ssn", "column:ssn", "redact"),
        MaskedColumn("notes", "detector:email", "redact"),
        MaskedColumn("notes", "detector:phone", "redact"),
    )


def test_the_demo_customers_table_under_default() -> None:
    masker = Masker(load_profile("default"), KEY)

    out = masker.mask_rows(CUSTOMER_COLUMNS, CUSTOMERS)

    assert out.rows[0] == (
        1, "Alice Martin", "[EMAIL]", "[PHONE]", "[CARD_NUMBER]", "[SSN]",
        "Prefers email: [EMAIL], renewal 2025-03-01.",
    )  # fmt: skip
    assert out.rows[2] == CUSTOMERS[2]
    assert [(m.column, m.rule) for m in out.masked] == [
        ("email", "detector:email"),
        ("phone", "detector:phone"),
        ("card_number", "detector:card_number"),
        ("ssn", "detector:ssn"),
        ("notes", "detector:email"),
        ("notes", "detector:phone"),
    ]


def test_a_repeated_column_name_is_reported_once_per_rule() -> None:
    masker = Masker(load_profile("default"), KEY)

    out = masker.mask_rows(["email", "email"], [("a@example.com", "b@example.com")])

    assert out.masked == (MaskedColumn("email", "detector:email", "redact"),)


# --- what passes through ------------------------------------------------------------------

PLAIN_VALUES = [
    42,
    4111111111111111,
    3.25,
    Decimal("1234.56"),
    dt.date(2024, 1, 15),
    dt.datetime(2024, 1, 15, 10, 30, tzinfo=dt.UTC),
    dt.time(10, 30),
    dt.timedelta(days=2),
    uuid.UUID("3f9a0c1e-2b7d-4c1e-9a0c-1e2b7d3f9a0c"),
    True,
    None,
]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=lambda v: type(v).__name__)
def test_non_text_values_pass_through_unchanged(value: object) -> None:
    out = Masker(load_profile("default"), KEY).mask_rows(["v", "w"], [(value, "text"), (value, None)])

    assert out.rows[0][0] is value
    assert out.rows[1][0] is value
    assert out.masked == ()


def test_json_values_are_walked_and_their_strings_scanned() -> None:
    masker = Masker(load_profile("default"), KEY)
    doc = {"contact": {"email": "alice@example.com", "phones": ["415-555-0132", 7]}, "n": 1.5}

    out = masker.mask_rows(["doc", "tags"], [(doc, ["ok", "bob@example.com"])])

    assert out.rows == [
        ({"contact": {"email": "[EMAIL]", "phones": ["[PHONE]", 7]}, "n": 1.5}, ["ok", "[EMAIL]"])
    ]
    assert doc["contact"]["email"] == "alice@example.com"  # the input is not modified
    assert [(m.column, m.rule) for m in out.masked] == [
        ("doc", "detector:email"),
        ("doc", "detector:phone"),
        ("tags", "detector:email"),
    ]


def test_bytes_are_scanned_as_latin1_text() -> None:
    masker = Masker(load_profile("default"), KEY)

    out = masker.mask_rows(["blob", "raw"], [(b"\xff\x00mail alice@example.com", b"\x00\x01\xfe")])

    assert out.rows == [(b"\xff\x00mail [EMAIL]", b"\x00\x01\xfe")]


def test_other_objects_are_judged_by_their_text() -> None:
    masker = Masker(load_profile("default"), KEY)
    address = IPv4Address("10.0.0.1")

    out = masker.mask_rows(["v"], [(address,)])

    assert out.rows[0][0] is address


def test_values_holding_the_separator_are_still_masked() -> None:
    masker = Masker(load_profile("default"), KEY)

    out = masker.mask_rows(["v"], [("a\x00alice@example.com",), ("\x01 415-555-0132",), ("plain",)])

    assert out.rows == [("a\x00[EMAIL]",), ("\x01 [PHONE]",), ("plain",)]


def test_rows_may_come_from_a_generator_and_come_back_as_tuples() -> None:
    masker = Masker(load_profile("default"), KEY)

    out = masker.mask_rows(("a", "b"), ([i, f"row {i}"] for i in range(3)))

    assert isinstance(out, MaskedRows)
    assert out.rows == [(0, "row 0"), (1, "row 1"), (2, "row 2")]


def test_empty_results() -> None:
    masker = Masker(load_profile("default"), KEY)

    assert masker.mask_rows(["a"], []) == MaskedRows(rows=[], masked=())
    assert masker.mask_rows([], [(), ()]).rows == [(), ()]


def test_a_row_of_the_wrong_width_is_refused() -> None:
    masker = Masker(load_profile("default"), KEY)

    with pytest.raises(ValueError, match="2 values"):
        masker.mask_rows(["a", "b"], [(1, 2), (1, 2, "alice@example.com")])


def test_the_input_rows_are_not_modified() -> None:
    masker = Masker(load_profile("default"), KEY)
    rows = [["alice@example.com", 1]]

    masker.mask_rows(["email", "n"], rows)

    assert rows == [["alice@example.com", 1]]


# --- texts --------------------------------------------------------------------------------


def test_mask_text_on_a_statement_and_an_error_message() -> None:
    masker = Masker(load_profile("pii-strict"), KEY)
    statement = "UPDATE customers SET phone = '415-555-0132' WHERE email = 'alice@example.com'"
    error = (
        'duplicate key value violates unique constraint "customers_email_key" DETAIL: Key (email)=(a@b.io)'
    )

    assert masker.mask_text(statement) == "UPDATE customers SET phone = '[PHONE]' WHERE email = '[EMAIL]'"
    assert masker.mask_text(error).endswith("Key (email)=([EMAIL])")


def test_mask_text_leaves_plain_statements_alone() -> None:
    masker = Masker(load_profile("default"), KEY)
    statement = "SELECT id, name FROM customers WHERE created_at > '2024-01-15' AND id IN (1, 2, 3) LIMIT 100"

    assert masker.mask_text(statement) == statement
    assert masker.mask_text("") == ""


def test_masking_by_column_is_masking_by_row() -> None:
    masker = Masker(load_profile("pii-strict"), KEY)
    by_row = masker.mask_rows(CUSTOMER_COLUMNS, CUSTOMERS)
    columns = [list(column) for column in zip(*CUSTOMERS, strict=True)]
    by_column, masked = masker.mask_columns(CUSTOMER_COLUMNS, columns)
    assert list(zip(*by_column, strict=True)) == by_row.rows
    assert masked == by_row.masked
    # A column nothing changes comes back as the very list given: the proxy forwards its bytes.
    assert by_column[0] is columns[0]
