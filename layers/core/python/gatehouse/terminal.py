"""Untrusted text made safe to print on a terminal.

SQL, reasons, connection names, error texts and result values reach the auditor's and the agent
operator's terminal from a logged request or a database. A terminal executes the control
characters in them: ESC starts a sequence that can clear the screen (`ESC[2J`), move the cursor
over earlier lines, retitle the window (`ESC]0;...BEL`) or write to the clipboard (OSC 52); a
carriage return overwrites the line; the C1 range (U+0080-U+009F) holds one-character forms of
the same introducers (U+009B is CSI). Unicode bidi overrides and isolates (U+202A-U+202E,
U+2066-U+2069) reorder what is displayed without changing what is stored ("Trojan Source",
CVE-2021-42574), and zero-width and other format characters hide text between visible letters.

`safe_text` writes every such character as a visible escape (`\\x1b`, `\\u202e`, `\\U000e0041`),
so what the reader sees is what is stored, and nothing of it runs. Printable text, including
every letter of every script, passes unchanged. Backslashes are left alone: `\\x1b` in the output
is either an escaped ESC or those four characters in the source; neither acts on the terminal.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

# Unicode general categories whose characters act on or hide from the reader: controls (Cc: C0,
# DEL, C1), format characters (Cf: bidi controls, zero-width characters, soft hyphen, tags),
# lone surrogates (Cs) and the line/paragraph separators (Zl, Zp), which some terminals and
# viewers treat as a newline.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

# Anything outside printable ASCII is a candidate; the category decides.
_CANDIDATE = re.compile(r"[^\x20-\x7e]")
_CANDIDATE_KEEPING_NEWLINES = re.compile(r"[^\x20-\x7e\n]")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if unicodedata.category(char) not in _HIDDEN_CATEGORIES:
        return char
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(value: Any, *, multiline: bool = False) -> str:
    """`value` as text with every control, bidi and invisible format character escaped visibly.

    A newline is escaped too (as `\\n`) unless `multiline` is true: a one-line field (a table
    cell, a connection name) must not be able to start a fake line of output. Tabs and carriage
    returns are always escaped (`\\t`, `\\r`): a carriage return would overwrite the line.
    """
    text = value if isinstance(value, str) else str(value)
    pattern = _CANDIDATE_KEEPING_NEWLINES if multiline else _CANDIDATE
    return pattern.sub(_visible, text)


def safe_json(value: Any, **dumps_options: Any) -> str:
    """`json.dumps` for a terminal: ASCII-only (controls and non-ASCII as `\\uXXXX`), DEL included.

    `ensure_ascii` already escapes C0, C1 and every non-ASCII character; DEL (0x7f) is ASCII and
    would pass raw, so it becomes `\\u007f`, which JSON readers decode back to the same text.
    """
    dumps_options["ensure_ascii"] = True
    return json.dumps(value, **dumps_options).replace("\x7f", "\\u007f")
