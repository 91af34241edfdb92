from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Classified:
    cls: str
    reason: str
    text: str


@dataclass(frozen=True)
class KindResult:
    status: str
    body: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False
    duration_ms: float = 0.0
    row_count: int | None = None
