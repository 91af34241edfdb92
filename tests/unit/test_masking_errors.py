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
