"""The classification corpus (tests/unit/data/classify_corpus.txt): every case gets its class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from gatehouse.classify import classify
from gatehouse.models import KIND_CLASSES, StatementClass

CORPUS = Path(__file__).parent / "data" / "classify_corpus.txt"
HEADER = "==== "


@dataclass(frozen=True)
class Case:
    expected: str  # a StatementClass value, or "unparseable" / "empty"
    title: str
    sql: str
    line: int


def load_corpus(path: Path = CORPUS) -> list[Case]:
    cases: list[Case] = []
    current: tuple[str, str, int] | None = None
    body: list[str] = []

    def flush() -> None:
        if current is not None:
            expected, title, line = current
            cases.append(Case(expected, title, "\n".join(body).rstrip("\n"), line))

    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if line.startswith(HEADER):
            flush()
            expected, _, title = line[len(HEADER) :].partition(": ")
            current, body = (expected.strip(), title.strip(), number), []
        elif current is not None:
            body.append(line)
        elif line and not line.startswith("#"):
            raise ValueError(f"{path.name}:{number}: text before the first case")
    flush()
    return cases


CASES = load_corpus()
# SQL's own classes: exec and secrets belong to other target kinds (gatehouse.models.KIND_CLASSES).
VALID = {c.value for c in KIND_CLASSES["postgres"]} | {"unparseable", "empty"}


def test_the_corpus_is_large_and_well_formed() -> None:
    assert len(CASES) >= 150
    assert {c.expected for c in CASES} <= VALID
    # every class the product knows is exercised, several times
    for cls in KIND_CLASSES["postgres"]:
        assert sum(c.expected == cls.value for c in CASES) >= 5, cls


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"L{c.line}-{c.expected}-{c.title}")
def test_corpus_case(case: Case) -> None:
    result = classify("postgres", case.sql)

    if case.expected == "unparseable":
        assert result.cls is StatementClass.UNKNOWN
        assert result.parse_error
        assert result.parse_error != "empty statement"
    elif case.expected == "empty":
        assert result.cls is StatementClass.UNKNOWN
        assert result.parse_error == "empty statement"
    else:
        assert result.parse_error is None, result.parse_error
        assert result.cls.value == case.expected, [(s.text, s.cls.value, s.reason) for s in result.statements]
        assert all(s.reason for s in result.statements)
