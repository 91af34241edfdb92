"""Keep row values out of database error texts.

PostgreSQL quotes the offending value in many messages (`invalid input syntax for type integer:
"Ann Smith"`, `value "4111..." is out of range`) and shows rows and keys in DETAIL lines
(`Key (ssn)=(123-45-6789) already exists.`, `Failing row contains (1, Ann, ...)`). When a
statement touches a protected column, every quoted span that is not a name from the target's
catalog (a relation or column name, which the agent may see) is replaced, and so is every value
list of a DETAIL line. The SQLSTATE and the shape of the message stay, so the agent can still
tell what went wrong.
"""

from __future__ import annotations

import re
from collections.abc import Set

REDACTED = "[REDACTED]"
_QUOTED = re.compile(r'"((?:[^"]|"")*)"')
# A number outside the redacted quotes (digits, with a sign, a decimal part or an exponent).
_NUMBER = re.compile(r"(?<![\w\[])[-+]?\d[\d.,:]*(?:e[-+]?\d+)?(?![\w\]])", re.IGNORECASE)
# What is left of a word with a digit in it: the bytes an encoding error lists (`invalid byte
# sequence for encoding "UTF8": 0xf0 0x43 0x47`, where a crafted value turns a protected one into
# bytes), a value glued to letters. Type names like int4 go too, in these texts only.
_DIGIT_WORD = re.compile(r"\b\w*\d\w*\b")
# `=(...)` after a key column list, `contains (...)` for a failing row; the value list runs to
# the closing parenthesis that ends the line's clause (values may hold parentheses themselves).
_DETAIL_VALUES = re.compile(r"(=\(|contains \()(.*)(\))", re.DOTALL)


def redact_error_text(text: str, identifiers: Set[str], *, detail: bool = False) -> str:
    """`text` with quoted values (and, for a DETAIL line, value lists) replaced.

    A quoted value may itself hold quotes (a row or JSON value cast to another type), so quoted
    spans are judged together: when every one is a catalog name the text stays; otherwise all from
    the first quote to the last is one value, and it is replaced whole.
    """
    spans = [m.group(1).replace('""', '"') for m in _QUOTED.finditer(text)]
    out = text
    if spans and not all(span in identifiers for span in spans):
        first, last = text.index('"'), text.rindex('"')
        out = f'{text[:first]}"{REDACTED}"{text[last + 1 :]}'
    # Some messages repeat a computed value without quotes (`make_date`: "date field value out of
    # range: 434709213-13-01", `chr`: "requested character too large ...: 435823325", encoding
    # errors list the bytes in hex): numbers and words with a digit go too. Messages stay
    # readable; a type modifier like varchar(3) or a name like int4 is a small loss.
    out = _NUMBER.sub(REDACTED, out)
    out = _DIGIT_WORD.sub(REDACTED, out)
    if detail:
        out = _DETAIL_VALUES.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(3)}", out)
    return out
