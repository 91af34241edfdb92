"""What does this command do? One classifier per target kind.

`classify(kind, text)` is the only entry point callers need; the Postgres classifier is
`gatehouse.classify.postgres.classify_sql`. Kinds without a classifier are refused, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable

from gatehouse.exceptions import ClassificationError
from gatehouse.models import Classification


def _postgres(text: str) -> Classification:
    # Imported on first use: the parser is a compiled extension, and other kinds do not need it.
    from gatehouse.classify.postgres import classify_sql

    return classify_sql(text)


CLASSIFIERS: dict[str, Callable[[str], Classification]] = {"postgres": _postgres}


def classify(kind: str, text: str) -> Classification:
    """Classify `text` for a target of `kind` ("postgres").

    Raises ClassificationError for a kind with no classifier. Bad SQL does not raise: it comes
    back as an `unknown` statement with `parse_error` set.
    """
    classifier = CLASSIFIERS.get(kind)
    if classifier is None:
        known = ", ".join(sorted(CLASSIFIERS))
        raise ClassificationError(
            f"no classifier for target kind {kind!r} (known: {known})", code="unsupported_target_kind"
        )
    return classifier(text)


__all__ = ["CLASSIFIERS", "classify"]
