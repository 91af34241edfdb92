"""Content detectors: find sensitive spans inside free text, whatever the column.

Speed comes from scanning many values at once. The engine joins a column's text values with
NUL between them (and around them) and calls `ContentScanner.scan` once per column, so the
regex engine, not Python, walks the characters. That only works because of three rules:

- no pattern matches NUL (explicit character classes; `\\s` and `[^\\x00]` never match it), so
  no match spans two values and splitting on NUL gives the values back;
- a pattern starts with a literal or a character class (lookbehinds come after the first
  character), so `re` skips to candidates with its prefix scan instead of trying a match at
  every position. Where that cannot be (the email local part, case-insensitive keywords), the
  pass starts from a `str.find` of the anchor (`@`, `bearer`, `secret`, `pass`) instead;
- a pass runs only when a cheap substring test says it can match (`"@" in text`, ...).

Checks a regex cannot do (Luhn, IBAN mod-97, the JWT header, what a bearer token looks like,
whether digits glued to letters sit in a UUID or a hex hash) run in Python on candidates only.
A candidate that fails its check is handed back to the other detectors, so a Luhn-invalid
14-digit run still has its phone number masked.

Numbers are found glued to words (`x434-70-9213`, `5555 3689 1377 5317x`) and with any of
`-` `.` `_` space, tab, en dash or no-break space (one, or two spaces) between the groups of a
card or a phone; IBANs in any case, whole or in groups of four split by spaces or dashes.

`aws_secret_key` (40 characters of base64, which random identifiers also look like) is flagged
only (a) after an AKIA/ASIA access key id (up to 5 separator characters between), (b) after a
keyword such as `secret`, `AWS_SECRET`, `aws_secret_access_key`, `secret_key`, `SecretAccessKey`
with `=`, `:`, `=>` or spaces, or (c) when it is a whole value on its own and mixes upper case,
lower case and digits (so a 40-character hex SHA-1 is not flagged).

`api_token` is a token in a documented format, known by its prefix: GitHub (`ghp_`, `gho_`,
`ghu_`, `ghs_`, `ghr_`, `github_pat_`), Slack (`xoxb-`, `xoxp-`, ...), Stripe secret and
restricted keys (`sk_live_`, `rk_live_`, and `_test_`), Google API keys (`AIza`).
`connection_secret` is the password of a URI (`postgres://user:PASSWORD@host`) or of a
`password=` / `pwd=` / `password:` pair (libpq, ODBC, JDBC, URL queries, JSON, YAML) and SQL's
`PASSWORD '...'`; the user name, host and the rest stay readable.
"""

from __future__ import annotations

import base64
import json
import re
import string
from collections.abc import Callable, Mapping
from re import Match

NUL = "\x00"  # separates values in a joined column; no pattern matches it
NULL_MARK = "\x01"  # a replacement that asks the engine to null the whole value

Replace = Callable[[str], str]


# --- validators ---------------------------------------------------------------------------

# Luhn: digits in odd places from the right count as they are, the others doubled (minus 9 when
# over 9). Translating each half of the ASCII bytes to those values and summing keeps the loop in C.
_LUHN_PLAIN = bytes.maketrans(b"0123456789", bytes(range(10)))
_LUHN_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum (ISO/IEC 7812) of a string of digits, rightmost digit the check digit."""
    raw = digits.encode("ascii")
    return (sum(raw[-1::-2].translate(_LUHN_PLAIN)) + sum(raw[-2::-2].translate(_LUHN_DOUBLED))) % 10 == 0


def card_number_ok(digits: str) -> bool:
    """13 to 19 digits, Luhn-valid, and a major industry identifier in use: not 0, and 1 only
    for 15 digits (UATP). That keeps 13-digit epoch milliseconds (1700000000000) out."""
    first = digits[0]
    return (
        13 <= len(digits) <= 19 and first != "0" and (first != "1" or len(digits) == 15) and luhn_ok(digits)
    )


def card_groups_ok(groups: list[int]) -> bool:
    """How a written card number is grouped, when it has separators: a first group of 4, then
    groups of 4 or 6, the last of 1 to 6 (4-4-4-4, 4-4-4-4-3, 4-6-5, 4-6-4). This is what
    keeps the digit groups of UUIDs and other dashed identifiers from being read as cards."""
    return len(groups) < 2 or (
        groups[0] == 4 and all(g in (4, 6) for g in groups[1:-1]) and 1 <= groups[-1] <= 6
    )


# IBAN length per country (SWIFT IBAN registry), with the territories that use their
# parent's format. A country not listed is still accepted when its whole candidate passes
# mod-97 (odds of 1 in 97 for a random string of that shape).
IBAN_LENGTHS: Mapping[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AX": 18, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BL": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GF": 27, "GG": 22, "GI": 23, "GL": 18, "GP": 27,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IM": 22, "IQ": 23, "IS": 26,
    "IT": 27, "JE": 22, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MF": 27, "MK": 19, "MN": 20,
    "MQ": 27, "MR": 27, "MT": 31, "MU": 30, "NC": 27, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PF": 27, "PK": 24, "PL": 28, "PM": 27, "PS": 29, "PT": 25, "QA": 29, "RE": 27, "RO": 24,
    "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "SO": 23, "ST": 25, "SV": 28, "TF": 27, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22,
    "VG": 24, "WF": 27, "XK": 20, "YE": 30, "YT": 27,
}  # fmt: skip
_IBAN_LETTERS = {ord(c): str(i) for i, c in enumerate(string.ascii_uppercase, start=10)}


def iban_ok(compact: str) -> bool:
    """ISO 13616 mod-97 check of an IBAN without spaces (check digits 02..98)."""
    if not 15 <= len(compact) <= 34 or not "02" <= compact[2:4] <= "98":
        return False
    return int((compact[4:] + compact[:4]).translate(_IBAN_LETTERS)) % 97 == 1


def ssn_ok(text: str) -> bool:
    """###-##-#### with area not 000, 666 or 9xx, group not 00, serial not 0000."""
    m = _SSN_SHAPE.fullmatch(text)
    if m is None:
        return False
    area, group, serial = m.groups()
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


_SSN_SHAPE = re.compile(r"([0-9]{3})-([0-9]{2})-([0-9]{4})")


def jwt_ok(token: str) -> bool:
    """The first segment is base64url JSON with an `alg` member (RFC 7515 §4.1.1)."""
    header = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, RecursionError):  # binascii, JSON and UTF-8 errors are ValueErrors
        return False
    return isinstance(decoded, dict) and "alg" in decoded


_TOKEN_PUNCT = frozenset("0123456789._~+/-=")


def bearer_token_ok(token: str) -> bool:
    """Looks like a credential rather than a word ("the bearer of", "Bearer authentication"):
    at least 8 characters and a digit or punctuation, an inner capital, or 20+ characters."""
    if len(token) < 8:
        return False
    if len(token) >= 20 or not _TOKEN_PUNCT.isdisjoint(token):
        return True
    return any(c.isupper() for c in token[1:])


# --- patterns -----------------------------------------------------------------------------

PRIVATE_KEY_RE = re.compile(
    r"-----BEGIN [A-Z0-9 ]{0,40}?PRIVATE KEY(?: BLOCK)?-----"
    # a block cut short (a truncated value) is masked to the end of the value
    r"[^\x00]*?(?:-----END [A-Z0-9 ]{0,40}?PRIVATE KEY(?: BLOCK)?-----|(?=\x00)|\Z)"
)

# RFC 6750 b64token after `Bearer`, or the credentials of an `Authorization` header. Matched
# where the keyword starts (see `_keyword_sub`).
_AUTH_SCHEMES = r"bearer|basic|token|digest|negotiate|ntlm|apikey|aws4-hmac-sha256"
BEARER_RE = re.compile(
    r"(?P<prefix>(?:"
    r"authorization(?<![A-Za-z0-9_-]authorization)[\"']?[ \t]*[:=][ \t]*[\"']?"
    r"(?:(?P<scheme>" + _AUTH_SCHEMES + r")[ \t]+)?"
    r"|bearer(?<![A-Za-z0-9_-]bearer)[ \t]+))"
    r"(?P<token>[A-Za-z0-9._~+/-]+=*)",
    re.IGNORECASE,
)
_BEARER_KEYWORDS = ("authorization", "bearer")

JWT_RE = re.compile(r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]*+\.[A-Za-z0-9_-]++\.[A-Za-z0-9_-]*+")

_SECRET_LENGTH = 40
_ACCESS_KEY_LENGTH = 20
# The shortest PEM private-key header ("-----BEGIN " + "PRIVATE KEY-----"): 27 characters.
_PRIVATE_KEY_LENGTH = len("-----BEGIN ") + len("PRIVATE KEY-----")
_SECRET_40 = r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"  # noqa: S105 (a pattern)
AWS_ACCESS_KEY_RE = re.compile(
    r"A(?<![A-Za-z0-9/+]A)(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"(?:(?P<sep>[ \t\r\n,:;|\"'=]{1,5})(?P<secret>" + _SECRET_40 + r"))?"
)
# Matched where `secret` starts, or up to 4 characters before it (`aws_secret...`).
AWS_SECRET_CONTEXT_RE = re.compile(
    r"(?P<prefix>(?:aws[ _.-]?)?secrets?(?:[ _.-]?(?:access[ _.-]?)?key)?"
    r"[\"']?(?:[ \t]*(?:=>|[:=])[ \t]*|[ \t]+)[\"']?)"
    r"(?P<secret>" + _SECRET_40 + r")",
    re.IGNORECASE,
)
_SECRET_KEYWORDS = ("secret",)
_SECRET_LOOKBACK = 4
# A whole value (between NULs): checked once per value, the prefix scan jumps from NUL to NUL.
AWS_SECRET_ALONE_RE = re.compile(
    r"\x00[ \t\r\n]*(?=[A-Za-z0-9/+]{40}[ \t\r\n]*\x00)"
    r"(?=[a-z0-9/+]{0,39}[A-Z])(?=[A-Z0-9/+]{0,39}[a-z])(?=[A-Za-z/+]{0,39}[0-9])"
    r"(?P<secret>[A-Za-z0-9/+]{40})[ \t\r\n]*(?=\x00)"
)

# Well-known token formats, found by their prefix (each issuer documents it so that leaked
# tokens can be scanned for). Tokens with an underscore in their prefix (GitHub `ghp_`,
# `github_pat_`, Stripe `sk_live_`) are found from that underscore, a literal `re` searches for
# quickly; the match starts there and `_API_TOKEN_BACK` says how far back the token begins.
_API_TOKEN_UNDERSCORE_RE = re.compile(
    r"_(?:"
    r"(?<=(?<![A-Za-z0-9])gh[pousr]_)(?P<gh>)[A-Za-z0-9]{20,}"
    r"|(?<=(?<![A-Za-z0-9])github_)(?P<github>)pat_[A-Za-z0-9_]{22,}"
    r"|(?<=(?<![A-Za-z0-9])[sr]k_)(?P<stripe>)(?:live|test)_[A-Za-z0-9]{16,}"
    r")"
)
_API_TOKEN_BACK = {"gh": 3, "github": 6, "stripe": 2}
_UNDERSCORE_TOKEN_LENGTH = 24  # the shortest match: ghp_ or sk_live_ and 20 or 16 more
# Slack: xoxb- (bot), xoxp- (user), xoxa-, xoxe-, xoxr-, xoxs-; always with digits in them.
_SLACK_TOKEN_LENGTH = 15
SLACK_TOKEN_RE = re.compile(r"xox(?<![A-Za-z0-9]xox)[abeprs]-(?=[A-Za-z0-9-]*?[0-9])[A-Za-z0-9-]{10,}")
# Google API keys: AIza and 35 more characters.
_GOOGLE_API_KEY_LENGTH = 39
GOOGLE_API_KEY_RE = re.compile(r"AIza(?<![A-Za-z0-9]AIza)[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")

# The password of a URI's userinfo (RFC 3986 §3.2.1: `scheme://user:password@host`), up to
# the last `@` before the path: an unencoded `@` in a password is common and still secret.
URI_PASSWORD_RE = re.compile(
    r"://(?<=[A-Za-z0-9+.-]://)(?P<user>[^\x00-\x20/?#@:]*+):(?P<secret>[^\x00-\x20/?#]+)@"
    r"(?=[^\x00-\x20/?#@])"
)
# `password=...` and kin: libpq keyword strings (`password='x'`), ODBC/JDBC strings
# (`Pwd=x;`), URL queries (`&password=x`), JSON, YAML, and SQL's `PASSWORD 'x'`. Matched where
# the keyword starts (see `_keyword_sub`). The short forms `pass` and `pwd` need `=` and a
# non-letter before them (`compass=north`, `pwd: /tmp` are not passwords).
# A quoted value ends at its closing quote; inside, a backslash escapes (libpq) and a doubled
# quote stands for one (SQL).
_QUOTED_VALUE = (
    r"""(?P<quote>["'])(?P<quoted>(?:[^"'\\\x00\x01]|\\[^\x00\x01]|(?P=quote){2}|(?!(?P=quote))["'])+)"""
    r"(?P=quote)"
)
PASSWORD_PAIR_RE = re.compile(
    r"(?P<prefix>(?:"
    r"pass(?:word|wd|phrase)[\"']?(?:[ \t]*(?:=>|[:=])[ \t]*|[ \t]+(?='))"
    r"|(?<![A-Za-z])(?:pass|pwd)[\"']?[ \t]*=[ \t]*))"
    r"(?:" + _QUOTED_VALUE + r"|(?P<bare>[^\x00-\x20\"';&]+))",
    re.IGNORECASE,
)
_PASSWORD_KEYWORDS = re.compile("pass|pwd")  # one search (prefix "p") for both

_LOCAL = r"[A-Za-z0-9._%+-]"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*+\.(?=[A-Za-z0-9]))++[A-Za-z]{2,63}(?![A-Za-z0-9-])"
EMAIL_RE = re.compile(r"(?<!" + _LOCAL + r")" + _LOCAL + r"++@" + _DOMAIN)
# Where addresses are rare in a long text, start from each "@" instead: the domain forwards,
# the local part backwards (a forward match over the reversed text).
_EMAIL_DOMAIN_RE = re.compile(_DOMAIN)
_EMAIL_LOCAL_REVERSED_RE = re.compile(_LOCAL + "*+")
# A full scan costs about 12 ns a character, a start from "@" about 1.5 µs.
_EMAIL_SPARSE_CHARS = 128

# Numbers: one pattern for cards, SSNs, phones and IBANs, so text is walked once. It starts with
# the character before the number (not a letter or digit: a boundary) so that `re`'s prefix
# scan stops only at punctuation and spaces, not at every digit; the replacement puts it back.
# Then come the letters of a word the number is glued to (`glue`, possessive: never given
# back), so `x434-70-9213` and `card4111...` are found without stopping at every letter; an
# IBAN's country code is such glue, of exactly two letters. After it, alternatives begin with
# a literal or a class (which `re` checks before entering them), those that begin with two
# digits share them, and each holds one empty named group: `match.lastgroup` names the
# alternative that matched (for a card, `card_glued` when a letter follows it).
_NUMBER_START = r"[^A-Za-z0-9](?P<glue>[A-Za-z]*+)"
_NOT_FRACTION = r"(?<![0-9]\.[0-9]{2})"  # after "0." a run of digits is a fraction, not a number
# Between the digit groups of a card or a phone: a dash, en dash, dot, underscore, space, tab or
# no-break space, or two of them (two spaces, in text laid out by hand). A class repeat, not an
# alternation: `re` runs it in one C loop.
_SEP = r"[-._ \t\u00a0\u2013]{1,2}"
_SEP_OPT = r"[-._ \t\u00a0\u2013]{0,2}"
_SPACE = r"[ \t\u00a0]{0,2}"
_NUMBER_END = r"(?![0-9]|[-.,_\u2013][0-9])"
_US_REST = r"[0-9]{3}" + _SEP + r"[0-9]{4}" + _NUMBER_END  # exchange and line number
# (detector, group, family, alternative); the "2d" family follows two shared digits.
_NUMBER_ALTERNATIVES: tuple[tuple[str, str, str, str], ...] = (
    # Any case, whole or in groups of 4 split by a space or a dash (ISO 13616's print form),
    # 15 characters at least. First: after a country code, the digits are its check digits.
    ("iban", "iban", "2d", r"(?<=[^A-Za-z0-9][A-Za-z]{2}[0-9]{2})(?P<iban>)(?:[A-Za-z0-9]{11,30}"
     r"|(?:[ -][A-Za-z0-9]{4}){2}(?:(?:[ -][A-Za-z0-9]{4}){1,5}(?:[ -][A-Za-z0-9]{1,4})?"
     r"|[ -][A-Za-z0-9]{3,4}))(?![A-Za-z0-9])"),
    # Contiguous (13 to 19 digits), or grouped with a first group of 4 (see card_groups_ok).
    # A letter may follow (a glued word); a digit or a decimal part may not.
    ("card_number", "card_number", "2d", r"(?<=[1-9][0-9])(?P<card_number>)[0-9]{2}"
     r"(?:[0-9]{9,15}|" + _SEP + r"[0-9](?:" + _SEP_OPT + r"[0-9]){8,14})(?![0-9]|\.[0-9])"
     r"(?:(?=[A-Za-z])(?P<card_glued>))?"),
    ("ssn", "ssn", "2d", r"(?<=[0-8][0-9])(?P<ssn>)[0-9]-[0-9]{2}-[0-9]{4}" + _NUMBER_END),
    # US national: 415-555-0132, 415.555.0132, 415 555 0132; 1-415-555-0132, 1 (415) 555-0132
    ("phone", "phone_us", "2d", r"(?P<phone_us>)[0-9]" + _SEP + _US_REST),
    ("phone", "phone_one", "", r"1(?<![0-9]\.1)(?P<phone_one>)" + _SEP_OPT + r"(?:\([0-9]{3}\)"
     + _SPACE + r"|[0-9]{3}" + _SEP + ")" + _US_REST),
    ("phone", "phone_paren", "", r"\((?P<phone_paren>)[0-9]{3}\)" + _SPACE + _US_REST),
    # E.164: + country code, 8 to 15 digits in all, separators between digits
    ("phone", "phone_intl", "", r"\+(?P<phone_intl>)"
     r"(?:1" + _SEP_OPT + r"\([0-9]{3}\)" + _SPACE + _US_REST
     + r"|[1-9](?:" + _SEP_OPT + r"[0-9]){7,14}" + _NUMBER_END + ")"),
)  # fmt: skip
_GROUP_DETECTOR = {group: detector for detector, group, _, _ in _NUMBER_ALTERNATIVES}
_GROUP_DETECTOR["card_glued"] = "card_number"
_PHONE_GROUPS = frozenset(g for g, d in _GROUP_DETECTOR.items() if d == "phone")
_LETTERS = frozenset(string.ascii_letters)


def _number_pattern(detectors: frozenset[str]) -> re.Pattern[str] | None:
    shared = [rx for d, _, family, rx in _NUMBER_ALTERNATIVES if d in detectors and family == "2d"]
    alts = [rx for d, _, family, rx in _NUMBER_ALTERNATIVES if d in detectors and family == ""]
    if shared:
        alts.insert(0, "[0-9][0-9]" + _NOT_FRACTION + "(?:" + "|".join(shared) + ")")
    if not alts:
        return None
    return re.compile(_NUMBER_START + "(?:" + "|".join(alts) + ")")


def _number_start(m: Match[str]) -> int:
    """Where the number itself starts in a number match: after the boundary and any glue
    (an IBAN's country code, which is glue to the pattern, belongs to the IBAN)."""
    return m.start() + 1 if m.lastgroup == "iban" else m.end("glue")


_ALNUM = re.compile(r"[A-Za-z0-9]")
_ALNUM_CHARS = frozenset(string.ascii_letters + string.digits)
_DIGIT_RUN = re.compile(r"[0-9]+")
_IBAN_GROUP_SPLIT = re.compile(r"[ -]")
_UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# What a card glued to letters is not: part of a UUID, or of a hex string as long as the
# shortest common hex identifier (a 24-digit ObjectId; MD5 is 32, SHA-1 40): a card with four
# glued letters is at most 23 characters long.
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{24,}")
_UUID_LENGTH = 36


def glued_to_identifier(text: str, start: int, end: int) -> bool:
    """Whether the card candidate `text[start:end]`, glued to letters, sits inside a UUID or a
    long hex string (hashes, ids), where runs of digits occur by chance."""
    lo, hi = start, end
    while lo > 0 and text[lo - 1] in _ALNUM_CHARS:
        lo -= 1
    while hi < len(text) and text[hi] in _ALNUM_CHARS:
        hi += 1
    window_start = max(0, lo - _UUID_LENGTH)
    for uuid in _UUID_RE.finditer(text, window_start, hi + _UUID_LENGTH):
        if uuid.start() < end and start < uuid.end():
            return True
    first = _DIGIT_RUN.match(text, start)
    first_end = first.end() if first is not None else start
    last_start = end
    while last_start > start and text[last_start - 1].isdigit():
        last_start -= 1
    return any(
        _HEX_RUN.fullmatch(token) is not None and not token.isdigit()
        for token in (text[lo:first_end], text[last_start:hi], text[lo:hi])
    )


# --- the scanner --------------------------------------------------------------------------


class ContentScanner:
    """Applies the enabled detectors to a text, each match replaced by its detector's function.

    `replace` maps each enabled detector to a function of the matched text. `fixed` optionally
    maps a detector to a constant replacement (redact, null), which lets a pass substitute in C
    with no Python call per match. The scanner holds no per-call state: one instance serves
    every request and thread.
    """

    def __init__(self, replace: Mapping[str, Replace], fixed: Mapping[str, str]) -> None:
        self._replace = dict(replace)
        # A constant replacement goes into re.sub as a template: escape its backslashes.
        self._fixed = dict(fixed)
        self._templates = {d: v.replace("\\", "\\\\") for d, v in fixed.items()}
        enabled = frozenset(replace)
        self._enabled = enabled
        self._numbers = _number_pattern(enabled)
        # Numbers left over after a rejected card or IBAN candidate: the other number detectors,
        # compiled on the first rejection (each pattern is large: compiling the three costs a
        # cold start ~10 ms, and most answers never reject a candidate).
        self._leftover: dict[str, re.Pattern[str] | None] = {}
        self._needs_lower = bool(enabled & {"bearer_token", "aws_secret_key", "connection_secret"})

    @property
    def detectors(self) -> frozenset[str]:
        return self._enabled

    def scan(self, text: str, *, longest: int | None = None) -> tuple[str, set[str]]:
        """Mask `text`; return it with the names of the detectors that matched.

        Values must be framed by NUL (before the first, between two, after the last): the
        number pattern needs a character before a number, the standalone-secret rule needs
        to see where a value starts and ends. `longest`, the length of the longest value when
        the caller knows it, lets the scan skip the passes whose shortest match is longer.
        """
        hits: set[str] = set()
        enabled = self._enabled
        span = len(text) if longest is None else longest
        lower, lowered = (text.lower(), text) if self._needs_lower else ("", text)
        if "private_key" in enabled and span >= _PRIVATE_KEY_LENGTH and "PRIVATE KEY" in text:
            text = self._simple(PRIVATE_KEY_RE, "private_key", text, hits)
        if "bearer_token" in enabled and ("bearer" in lower or "authorization" in lower):
            if lowered is not text:
                lower, lowered = text.lower(), text
            text = _keyword_sub(text, lower, _BEARER_KEYWORDS, 0, BEARER_RE, lambda m: self._bearer(m, hits))
        if "jwt" in enabled and "eyJ" in text:
            text = JWT_RE.sub(lambda m: self._checked(m, "jwt", jwt_ok, hits), text)
        if "aws_access_key" in enabled and span >= _ACCESS_KEY_LENGTH and ("AKIA" in text or "ASIA" in text):
            text = AWS_ACCESS_KEY_RE.sub(lambda m: self._access_key(m, hits), text)
        if "aws_secret_key" in enabled:
            # a replacement never brings the word in, so the first lower-casing still tells
            if "secret" in lower:
                if lowered is not text:
                    lower, lowered = text.lower(), text
                text = _keyword_sub(
                    text, lower, _SECRET_KEYWORDS, _SECRET_LOOKBACK, AWS_SECRET_CONTEXT_RE,
                    lambda m: m["prefix"] + self._hit("aws_secret_key", m["secret"], hits),
                )  # fmt: skip
            if span >= _SECRET_LENGTH:
                text = self._standalone_secret(text, hits)
        if "connection_secret" in enabled:
            if "@" in text:  # the pattern starts with "://", which `re` finds as fast as `in`
                text = URI_PASSWORD_RE.sub(lambda m: self._uri_password(m, hits), text)
            # a keyword needs `=` or `:` after it (or a quote: SQL's PASSWORD 'x')
            if "=" in text or ":" in text or "'" in text:
                if lowered is not text:
                    lower, lowered = text.lower(), text
                text = _keyword_sub(
                    text, lower, _PASSWORD_KEYWORDS, 0, PASSWORD_PAIR_RE, lambda m: self._password(m, hits)
                )
        if "api_token" in enabled:
            text = self._api_tokens(text, span, hits)
        if "email" in enabled and "@" in text:
            text = self._email(text, hits)
        if self._numbers is not None and any(d in text for d in "0123456789"):
            text = self._numbers.sub(self._number_callback(hits), text)
        return text, hits

    def _number_callback(self, hits: set[str]) -> Callable[[Match[str]], str]:
        """The replacement function for the number pattern, with fast paths for the common
        cases (a phone to redact, a card written whole or in four groups of four)."""
        general = self._number
        add = hits.add
        phone_fixed = self._fixed.get("phone")
        card_fixed = self._fixed.get("card_number")
        card_replace = self._replace.get("card_number")

        def on_number(m: Match[str]) -> str:
            group = m.lastgroup
            if group == "card_number" and card_replace is not None:
                # Glued to a word before it, `number` starts with letters: neither test below
                # passes, and the general path deals with the glue.
                matched = m.group()
                number = matched[1:]
                if number.isdigit():
                    digits = number
                elif len(number) == 19 and number[4] == number[9] == number[14]:
                    digits = number.replace(number[4], "")  # 4-4-4-4 with one kind of separator
                    digits = digits if len(digits) == 16 and digits.isdigit() else ""
                else:
                    digits = ""
                if len(digits) < 13 or not card_number_ok(digits):
                    return general(m, hits)
                add("card_number")
                return matched[0] + (card_fixed if card_fixed is not None else card_replace(number))
            if phone_fixed is not None and group in _PHONE_GROUPS:
                matched = m.group()
                if matched[1] not in _LETTERS:  # not glued to a word: one boundary character
                    add("phone")
                    return matched[0] + phone_fixed
            return general(m, hits)

        return on_number

    # Each helper returns the replacement for one match and records the detector that hit.

    def _hit(self, detector: str, matched: str, hits: set[str]) -> str:
        hits.add(detector)
        return self._replace[detector](matched)

    def _simple(self, pattern: re.Pattern[str], detector: str, text: str, hits: set[str]) -> str:
        template = self._templates.get(detector)
        if template is None:
            return pattern.sub(lambda m: self._hit(detector, m.group(), hits), text)
        text, count = pattern.subn(template, text)
        if count:
            hits.add(detector)
        return text

    def _checked(self, m: Match[str], detector: str, check: Callable[[str], bool], hits: set[str]) -> str:
        matched = m.group()
        return self._hit(detector, matched, hits) if check(matched) else matched

    def _bearer(self, m: Match[str], hits: set[str]) -> str:
        token = m["token"]
        if (m["scheme"] is not None and len(token) >= 4) or bearer_token_ok(token):
            return m["prefix"] + self._hit("bearer_token", token, hits)
        return m.group()

    def _access_key(self, m: Match[str], hits: set[str]) -> str:
        secret = m["secret"]
        if secret is None:
            return self._hit("aws_access_key", m.group(), hits)
        key = m.group()[: m.start("sep") - m.start()]
        if "aws_secret_key" in self._enabled:
            secret = self._hit("aws_secret_key", secret, hits)
        return self._hit("aws_access_key", key, hits) + m["sep"] + secret

    def _uri_password(self, m: Match[str], hits: set[str]) -> str:
        return "://" + m["user"] + ":" + self._hit("connection_secret", m["secret"], hits) + "@"

    def _password(self, m: Match[str], hits: set[str]) -> str:
        quote = m["quote"]
        if quote is None:
            return m["prefix"] + self._hit("connection_secret", m["bare"], hits)
        return m["prefix"] + quote + self._hit("connection_secret", m["quoted"], hits) + quote

    def _api_tokens(self, text: str, span: int, hits: set[str]) -> str:
        if span >= _UNDERSCORE_TOKEN_LENGTH and "_" in text:
            pieces = []
            done = 0  # text[:done] is in pieces
            for m in _API_TOKEN_UNDERSCORE_RE.finditer(text):
                start = m.start() - _API_TOKEN_BACK[m.lastgroup or ""]
                if start >= done:
                    pieces.append(text[done:start])
                    pieces.append(self._hit("api_token", text[start : m.end()], hits))
                    done = m.end()
            if pieces:
                pieces.append(text[done:])
                text = "".join(pieces)
        # No cheaper test than the search itself: each pattern starts with a literal.
        if span >= _SLACK_TOKEN_LENGTH:
            text = self._simple(SLACK_TOKEN_RE, "api_token", text, hits)
        if span >= _GOOGLE_API_KEY_LENGTH:
            text = self._simple(GOOGLE_API_KEY_RE, "api_token", text, hits)
        return text

    def _standalone_secret(self, text: str, hits: set[str]) -> str:
        template = self._templates.get("aws_secret_key")
        if template is None:
            return AWS_SECRET_ALONE_RE.sub(
                lambda m: NUL + self._hit("aws_secret_key", m["secret"], hits), text
            )
        text, count = AWS_SECRET_ALONE_RE.subn(NUL + template, text)
        if count:
            hits.add("aws_secret_key")
        return text

    def _email(self, text: str, hits: set[str]) -> str:
        if text.count("@") * _EMAIL_SPARSE_CHARS > len(text):
            return self._simple(EMAIL_RE, "email", text, hits)
        reversed_text = text[::-1]
        size = len(text)
        pieces = []
        done = 0  # text[:done] is in pieces
        at = text.find("@")
        while at >= 0:
            domain = _EMAIL_DOMAIN_RE.match(text, at + 1)
            if domain is not None:
                local = _EMAIL_LOCAL_REVERSED_RE.match(reversed_text, size - at)
                start = at - (local.end() - local.start()) if local is not None else at
                if done <= start < at:
                    pieces.append(text[done:start])
                    pieces.append(self._hit("email", text[start : domain.end()], hits))
                    done = domain.end()
            at = text.find("@", max(at + 1, done))
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _number(self, m: Match[str], hits: set[str]) -> str:
        group = m.lastgroup
        matched = m.group()
        cut = _number_start(m) - m.start()
        boundary, number = matched[:cut], matched[cut:]
        if group in ("card_number", "card_glued"):
            glued = cut > 1 or group == "card_glued"
            if glued and glued_to_identifier(m.string, m.start() + cut, m.end()):
                return matched
            return boundary + self._card(number, hits)
        if group == "iban":
            return boundary + self._iban(number, hits)
        detector = _GROUP_DETECTOR[group] if group is not None else ""
        if detector == "ssn" and not ssn_ok(number):
            return matched
        hits.add(detector)
        return boundary + self._replace[detector](number)

    def _card(self, text: str, hits: set[str]) -> str:
        if text.isdigit():
            if card_number_ok(text):
                return self._hit("card_number", text, hits)
            return self._leftover_numbers(text, "card_number", hits)
        runs = [(r.start(), r.end()) for r in _DIGIT_RUN.finditer(text)]
        groups = [text[start:end] for start, end in runs]
        sizes = list(map(len, groups))
        if card_groups_ok(sizes) and card_number_ok("".join(groups)):
            return self._hit("card_number", text, hits)
        # The longest run of whole groups that is a card, leftmost first: in
        # "4111 1111 1111 1111 12/27" a card is followed by something else.
        for count in range(len(groups) - 1, 0, -1):
            for first in range(len(groups) - count + 1):
                last = first + count
                if 13 <= sum(sizes[first:last]) <= 19 and card_groups_ok(sizes[first:last]):
                    if card_number_ok("".join(groups[first:last])):
                        start, end = runs[first][0], runs[last - 1][1]
                        return (
                            self._leftover_numbers(text[:start], "card_number", hits)
                            + self._hit("card_number", text[start:end], hits)
                            + self._leftover_numbers(text[end:], "card_number", hits)
                        )
        return self._leftover_numbers(text, "card_number", hits)

    def _iban(self, text: str, hits: set[str]) -> str:
        compact = text.replace(" ", "").replace("-", "")
        known = IBAN_LENGTHS.get(compact[:2].upper())
        # An unlisted country is accepted only in capitals: in lower case, hex strings (hashes,
        # ids) would pass the 1-in-97 checksum too often.
        length = known if known is not None else len(compact) if compact.isupper() else 0
        compact = compact.upper()
        if length and len(compact) >= length and iban_ok(compact[:length]):
            # where the IBAN ends in `text`, which may hold separators and a trailing group
            end = [a.end() for a in _ALNUM.finditer(text)][length - 1]
            if iban_grouping_ok(text, end):
                return self._hit("iban", text[:end], hits) + self._leftover_numbers(text[end:], "iban", hits)
        return self._leftover_numbers(text, "iban", hits)

    def _leftover_numbers(self, text: str, rejected: str, hits: set[str]) -> str:
        """The other number detectors on what a rejected card or IBAN candidate covered.

        Terminates: a card candidate holds no letters, so no IBAN within it, and a card
        within an IBAN candidate is shorter than the candidate.
        """
        if not text:
            return text
        if rejected not in self._leftover:
            self._leftover[rejected] = _number_pattern(self._enabled - {rejected})
        pattern = self._leftover[rejected]
        if pattern is None:
            return text
        return pattern.sub(lambda m: self._number(m, hits), NUL + text)[1:]


def iban_grouping_ok(text: str, end: int) -> bool:
    """An IBAN candidate `text` (separators allowed) holds an IBAN in `text[:end]` as it is
    written (ISO 13616's print form): whole, or in groups of four with a last group of 1 to 4,
    and ending where a group ends, not in the middle of a longer word."""
    if end < len(text) and text[end] not in " -":
        return False
    groups = _IBAN_GROUP_SPLIT.split(text[:end])
    return len(groups) == 1 or (all(len(g) == 4 for g in groups[:-1]) and 1 <= len(groups[-1]) <= 4)


def _keyword_sub(
    text: str,
    lower: str,
    keywords: tuple[str, ...] | re.Pattern[str],
    lookback: int,
    pattern: re.Pattern[str],
    replace: Callable[[Match[str]], str],
) -> str:
    """`pattern.sub(replace, text)`, trying matches only where a keyword occurs.

    A case-insensitive pattern with no literal start makes `re` try every position (about
    17 ns a character); the keywords are found with `str.find` on the lower-cased text instead,
    and the pattern is matched at the keyword, or up to `lookback` characters before it.
    """
    if len(lower) != len(text):  # lower-casing changed offsets (rare Unicode): scan it all
        return pattern.sub(replace, text)
    if isinstance(keywords, re.Pattern):
        starts = [k.start() for k in keywords.finditer(lower)]
    else:
        starts = sorted({p for word in keywords for p in _occurrences(lower, word)})
    pieces = []
    done = 0
    for position in starts:
        if position < done:
            continue
        for start in range(max(done, position - lookback), position + 1):
            m = pattern.match(text, start)
            if m is not None and m.end() > m.start():
                pieces.append(text[done : m.start()])
                pieces.append(replace(m))
                done = m.end()
                break
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _occurrences(text: str, word: str) -> list[int]:
    found = []
    at = text.find(word)
    while at >= 0:
        found.append(at)
        at = text.find(word, at + 1)
    return found
