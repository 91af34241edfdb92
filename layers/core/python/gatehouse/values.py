"""Values as an agent reads them: strict JSON, one shape for a result wherever it is shown.

The API answers with these, and a request that ran after approval stores the same shape in its
record, so `GET /v1/requests/{id}` returns what `POST` would have.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import uuid
from typing import Any

from gatehouse.models import QueryResult


def jsonable(value: Any) -> Any:
    """Postgres values an agent can read in strict JSON: exact numbers as strings, times in ISO 8601.

    Non-finite floats become the strings Postgres prints for them ("NaN", "Infinity",
    "-Infinity"): JSON has no literal for them (RFC 8259 section 6).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal):
        return str(value)  # NaN, sNaN and Infinity included: str() spells them as Postgres does
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def result_view(result: QueryResult) -> dict[str, Any]:
    """A masked result as JSON-ready values: columns, rows, counts, and what was masked."""
    return {
        "columns": list(result.columns),
        "rows": [[jsonable(v) for v in row] for row in result.rows],
        "row_count": result.row_count,
        "truncated": result.truncated,
        "truncated_reason": result.truncated_reason,
        "duration_ms": result.duration_ms,
        "masked": [
            {
                "column": m.column,
                "rule": m.rule,
                "strategy": m.strategy,
                "sources": list(m.sources),
                "reason": m.reason,
            }
            for m in result.masked
        ],
    }
