"""Replacement strategies: what a masked value or a detected span becomes."""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Callable
from typing import Any

from gatehouse.masking.profiles import Strategy

COLUMN_LABEL = "[REDACTED]"
HASH_PREFIX = "hash:"
# 16 hex digits (64 bits): two distinct values share a token with odds of about n²/2⁶⁵,
# negligible for results of any size this gateway returns, short enough to read.
HASH_HEX_DIGITS = 16
KEEP_LAST = 4
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")  # exactly str.isalnum(), in any script
_ASCII_ALNUM_TO_STAR = str.maketrans(dict.fromkeys(string.ascii_letters + string.digits, "*"))


def detector_label(detector: str) -> str:
    """`email` -> `[EMAIL]`."""
    return f"[{detector.upper()}]"


def partial(text: str) -> str:
    """Keep the last letters/digits, put `*` for the others, keep punctuation and spacing.

    At most 4 are kept, and never more than half of them, so a short value is not shown whole:
    `4111-1111-1111-1111` -> `****-****-****-1111`, `123-45-6789` -> `***-**-6789`, `Ann` -> `**n`.
    """
    if text.isascii():
        masked = text.translate(_ASCII_ALNUM_TO_STAR)
        count = masked.count("*") - text.count("*")
    else:
        masked = _LETTER_OR_DIGIT.sub("*", text)
        count = len(_LETTER_OR_DIGIT.findall(text))
    keep = min(KEEP_LAST, count // 2)
    cut = len(text)
    while keep:
        cut -= 1
        if text[cut].isalnum():
            keep -= 1
    return masked[:cut] + text[cut:]


def keyed_hash(key: bytes, text: str | bytes) -> str:
    """A stable token for a value: equal values give equal tokens under one key, so masked
    columns can still be compared and joined, and nobody without the key can test a guess."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return HASH_PREFIX + hmac.digest(key, data, "sha256").hex()[:HASH_HEX_DIGITS]


class KeyedHasher:
    """`keyed_hash` with the key's HMAC pads hashed once (RFC 2104), not once per value:
    OpenSSL 3 makes a one-shot `hmac.digest` cost about 1.4 µs, this about 0.9 µs."""

    _BLOCK = 64  # SHA-256 block size in bytes

    def __init__(self, key: bytes) -> None:
        if len(key) > self._BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(self._BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __call__(self, text: str | bytes) -> str:
        inner = self._inner.copy()
        inner.update(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return HASH_PREFIX + outer.hexdigest()[:HASH_HEX_DIGITS]


def value_masker(strategy: Strategy, hasher: Callable[[str | bytes], str]) -> Callable[[Any], Any]:
    """The function a column rule applies to each value that is not None."""
    if strategy is Strategy.REDACT:
        return lambda _value: COLUMN_LABEL
    if strategy is Strategy.NULL:
        return lambda _value: None
    if strategy is Strategy.HASH:
        return lambda value: hasher(value if isinstance(value, str) else _as_text(value))
    return lambda value: partial(_text_for_partial(value))


def _as_text(value: Any) -> str | bytes:
    """The text a column rule masks for a value of any type (bytes hash as themselves)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value)


def _text_for_partial(value: Any) -> str:
    text = _as_text(value)
    return text.decode("latin-1") if isinstance(text, bytes) else text
