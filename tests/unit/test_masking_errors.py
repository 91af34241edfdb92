"""Row values stay out of database error texts; names from the catalog and the shape stay."""

from __future__ import annotations

from gatehouse.masking.errors import REDACTED, redact_error_text

NAMES = frozenset({"customers", "ssn", "email"})


def test_the_quoted_value_is_redacted_and_the_shape_kept():
    text = 'invalid input syntax for type integer: "Ann Smith"'
    assert redact_error_text(text, NAMES) == f'invalid input syntax for type integer: "{REDACTED}"'


def test_a_value_that_holds_quotes_is_redacted_whole():
    text = 'invalid input syntax for type integer: "{"id":1,"name":"Ann Smith"}"'
    out = redact_error_text(text, NAMES)
    assert "Ann" not in out and out.endswith(f'"{REDACTED}"')


def test_catalog_names_stay():
    text = 'column "ssn" of relation "customers" does not exist'
    assert redact_error_text(text, NAMES) == text


def test_detail_value_lists_are_redacted():
    detail = "Key (ssn)=(123-45-6789) already exists."
    assert redact_error_text(detail, NAMES, detail=True) == f"Key (ssn)=({REDACTED}) already exists."
    row = "Failing row contains (1, Ann (Smith), 123-45-6789)."
    assert redact_error_text(row, NAMES, detail=True) == f"Failing row contains ({REDACTED})."


def test_a_text_without_quotes_is_unchanged():
    assert redact_error_text("division by zero", NAMES) == "division by zero"


def test_bytes_an_encoding_error_lists_are_redacted():
    # convert_from(decode('f0' || substr(replace(ssn, '-', ''), 1, 6), 'hex'), 'UTF8') made the
    # SSN's digits into these bytes.
    text = 'invalid byte sequence for encoding "UTF8": 0xf0 0x43 0x47 0x09'
    out = redact_error_text(text, NAMES)
    assert "0x" not in out and "43" not in out and "47" not in out
    assert out.startswith("invalid byte sequence for encoding")
    text = (
        'character with byte sequence 0xe2 0x82 0xac in encoding "UTF8" has no equivalent in '
        'encoding "LATIN1"'
    )
    assert "0x" not in redact_error_text(text, NAMES)


def test_a_value_glued_to_letters_is_redacted():
    out = redact_error_text("date field value out of range: x434709213y-13-01", NAMES)
    assert "434709213" not in out and "13" not in out
