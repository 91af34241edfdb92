"""safe_text: nothing a terminal would act on, or that hides text, survives unescaped."""

from __future__ import annotations

import json
import unicodedata

import pytest

from gatehouse.cli import describe, format_table
from gatehouse.client import ApiAnswer
from gatehouse.terminal import safe_json, safe_text


@pytest.mark.parametrize(
    "raw,shown",
    [
        ("\x1b[2J", "\\x1b[2J"),  # clear the screen
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # set the window title
        ("\x1b]52;c;ZWNobw==\x07", "\\x1b]52;c;ZWNobw==\\x07"),  # write the clipboard
        ("a\x00b", "a\\x00b"),
        ("ok\rFAKE", "ok\\rFAKE"),  # overwrite the line
        ("\x08\x7f", "\\x08\\x7f"),
        ("\x9b2J", "\\x9b2J"),  # C1 CSI
        ("\u202eexe.txt", "\\u202eexe.txt"),
        (
            "\u2066\u2067\u2068\u2069\u202a\u202b\u202c\u202d",
            "\\u2066\\u2067\\u2068\\u2069\\u202a\\u202b\\u202c\\u202d",
        ),
        ("pass\u200bword\ufeff\u00ad", "pass\\u200bword\\ufeff\\xad"),  # zero-width, BOM, soft hyphen
        ("tag\U000e0041", "tag\\U000e0041"),
        ("line\u2028sep", "line\\u2028sep"),
        ("a\tb\nc", "a\\tb\\nc"),
    ],
)
def test_controls_and_hidden_characters_become_visible_escapes(raw, shown):
    assert safe_text(raw) == shown


def test_printable_text_of_any_script_is_unchanged():
    text = "SELECT 'Zoë', '日本語', 'Ελλάδα', 'عربى', '😀' FROM t -- \\x1b stays as typed"
    assert safe_text(text) == text


def test_newlines_survive_only_when_asked_for():
    assert safe_text("a\nb\x1b", multiline=True) == "a\nb\\x1b"
    assert safe_text("a\nb") == "a\\nb"
    assert safe_text(42) == "42"


def test_no_control_or_format_character_passes_through():
    for code in range(0x110000):
        char = chr(code)
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Zl", "Zp"}:
            assert char not in safe_text(f"x{char}y"), hex(code)


def test_safe_json_is_ascii_and_decodes_to_the_same_value():
    value = {"sql": "\x1b[2J\x7f\u202e\x00"}
    text = safe_json(value)
    assert text.isascii() and "\x7f" not in text and "\x1b" not in text
    assert json.loads(text) == value


def test_the_exec_table_shows_hostile_values_and_names_as_escapes():
    table = format_table(["col\u202eumn", "v"], [["\x1b[2J", "\x00"], [None, "\x1b]0;t\x07"]])
    assert "\x1b" not in table and "\x00" not in table and "\u202e" not in table
    assert "col\\u202eumn" in table and "\\x1b[2J" in table and "\\x00" in table and "\\x1b]0;t\\x07" in table


def test_describe_escapes_errors_and_denial_reasons():
    denied = ApiAnswer(
        403,
        {
            "request_id": "r-1",
            "status": "denied",
            "decision": {"effect": "deny", "policy_ids": ["p\x1b[2J"], "reasons": ["no\nFAKE LINE"]},
        },
    )
    error = ApiAnswer(400, {"error": "bad\x1b]0;t\x07", "message": "x\x00\u202e"})
    for answer in (denied, error):
        text = describe(answer)
        assert "\x1b" not in text and "\x00" not in text and "\u202e" not in text
    assert "no\\nFAKE LINE" in describe(denied) and len(describe(denied).splitlines()) == 2
    assert describe(error) == "error 400 bad\\x1b]0;t\\x07: x\\x00\\u202e"
