"""The questions an auditor asks of the session log, as SQL that runs unchanged on Athena and DuckDB.

Each query reads table `gatehouse_events` (the Glue table on AWS, a view over S3 in DuckDB) whose
columns are the event schema (`gatehouse.audit.events`) plus the partition column `dt`
(`YYYY-MM-DD`, a string). The SQL keeps to what both engines share (Trino and DuckDB):
`CROSS JOIN UNNEST(x) AS r (c)`, `array_agg`, `flatten`, `array_distinct`, `array_sort`, `substr`,
`lower`, `greatest`, `IS NOT DISTINCT FROM`, string comparison of the fixed-width `time`; `"time"`
is quoted because TIME is a keyword.

Parameters are written `{name}` and replaced by `render` with SQL string literals (single quotes
doubled; NUL and other control characters refused), never pasted raw. Time parameters (`since`,
`until`) accept a date or an RFC 3339 / ISO 8601 time, are converted to UTC and written in the
log's own format, so `"time" >= {since}` compares like with like; `substr({since}, 1, 10)` bounds
the `dt` partitions Athena reads. `since` is inclusive, `until` exclusive; both have defaults.

Imports only the standard library: the CDK app imports `NAMED_QUERIES` to create Athena named
queries (it can store `query.example_sql()`, which is runnable as is).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum

TABLE = "gatehouse_events"


class ParamKind(StrEnum):
    TEXT = "text"
    TIME = "time"


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    kind: ParamKind = ParamKind.TEXT
    default: str | None = None  # None: required
    example: str = ""


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    sql: str
    params: tuple[Param, ...] = ()

    def render(self, params: Mapping[str, str] | None = None) -> str:
        return render(self, params or {})

    def example_sql(self) -> str:
        """The SQL with every parameter set to its example (or default): runnable as is."""
        return render(self, {p.name: p.example or p.default or "" for p in self.params})


SINCE = Param(
    "since", "start of the period (inclusive)", ParamKind.TIME, "1970-01-01T00:00:00.000Z", "2026-01-01"
)
UNTIL = Param(
    "until", "end of the period (exclusive)", ParamKind.TIME, "9999-12-31T23:59:59.999Z", "2100-01-01"
)
_PERIOD = """dt >= substr({since}, 1, 10) AND dt <= substr({until}, 1, 10)
  AND "time" >= {since} AND "time" < {until}"""

# Statement classes that change something; `unknown` counts because it is the highest risk.
_CHANGING = "('write', 'ddl', 'privilege', 'admin', 'unknown')"

NAMED_QUERIES: tuple[NamedQuery, ...] = (
    NamedQuery(
        name="activity_on_connection",
        description="Who ran what on a connection in a period: every command that ran (or failed), in order.",
        sql=f"""SELECT "time", principal_name, principal_arn, kind, statement_class, statement, outcome,
  row_count, duration_ms, error, session_id, request_id
FROM {TABLE}
WHERE connection = {{connection}}
  AND kind IN ('executed', 'failed')
  AND {_PERIOD}
ORDER BY "time", session_id, seq""",
        params=(Param("connection", "connection name", example="demo-prod"), SINCE, UNTIL),
    ),
    NamedQuery(
        name="changes_with_approvers",
        description=(
            "Every write, DDL or privilege change that ran on connections of an environment (prod by "
            "default), and who approved it (approvers is NULL when a policy allowed it without approval)."
        ),
        sql=f"""SELECT w."time", w.connection, w.principal_name, w.statement_class, w.statement, w.row_count,
  a.approvers, a.approved_at, w.session_id, w.request_id
FROM {TABLE} w
LEFT JOIN (
  SELECT session_id, request_id, array_sort(array_distinct(flatten(array_agg(approvers)))) AS approvers,
    max("time") AS approved_at
  FROM {TABLE}
  WHERE kind IN ('approval_vote', 'approved') AND approvers IS NOT NULL AND dt <= substr({{until}}, 1, 10)
  GROUP BY session_id, request_id
) a ON a.session_id = w.session_id AND a.request_id IS NOT DISTINCT FROM w.request_id
WHERE w.kind = 'executed'
  AND w.connection_env = {{env}}
  AND w.statement_class IN {_CHANGING}
  AND w.dt >= substr({{since}}, 1, 10) AND w.dt <= substr({{until}}, 1, 10)
  AND w."time" >= {{since}} AND w."time" < {{until}}
ORDER BY w."time", w.session_id, w.seq""",
        params=(Param("env", "connection environment", default="prod", example="prod"), SINCE, UNTIL),
    ),
    NamedQuery(
        name="denied_by_agent",
        description="Denied attempts per agent in a period: by policy, or by an approver.",
        sql=f"""SELECT principal_name, principal_arn, count(*) AS denied,
  count(DISTINCT connection) AS connections, min("time") AS first_denied, max("time") AS last_denied
FROM {TABLE}
WHERE ((kind = 'decision' AND decision = 'deny') OR kind = 'denied_by_approver')
  AND {_PERIOD}
GROUP BY principal_name, principal_arn
ORDER BY denied DESC, principal_name""",
        params=(SINCE, UNTIL),
    ),
    NamedQuery(
        name="denied_attempts",
        description="Each denied attempt in a period, with the policies or approvers that said no.",
        sql=f"""SELECT "time", principal_name, connection, kind, statement_class, statement, policy_ids,
  approvers, error, reason, session_id
FROM {TABLE}
WHERE ((kind = 'decision' AND decision = 'deny') OR kind = 'denied_by_approver')
  AND {_PERIOD}
ORDER BY "time", session_id, seq""",
        params=(SINCE, UNTIL),
    ),
    NamedQuery(
        name="sessions_touching_relation",
        description=(
            "Sessions whose commands named a table or view (matched with or without its schema, "
            "case-insensitively), with how many of those commands ran or were denied."
        ),
        sql=f"""SELECT e.session_id, min(e.principal_name) AS principal_name, min(e.connection) AS connection,
  min(e."time") AS first_time, max(e."time") AS last_time,
  array_sort(array_distinct(array_agg(e.statement_class))) AS statement_classes,
  count(DISTINCT CASE WHEN e.kind = 'executed' THEN e.event_id END) AS executed,
  count(DISTINCT CASE WHEN e.kind = 'decision' AND e.decision = 'deny' THEN e.event_id END) AS denied
FROM {TABLE} e
CROSS JOIN UNNEST(e.relations) AS r (relation)
WHERE e.kind IN ('decision', 'executed')
  AND (lower(r.relation) = lower({{relation}})
    OR substr(lower(r.relation), greatest(length(r.relation) - length({{relation}}), 1))
      = '.' || lower({{relation}}))
  AND e.dt >= substr({{since}}, 1, 10) AND e.dt <= substr({{until}}, 1, 10)
  AND e."time" >= {{since}} AND e."time" < {{until}}
GROUP BY e.session_id
ORDER BY first_time, e.session_id""",
        params=(
            Param("relation", "table or view, e.g. customers or public.customers", example="customers"),
            SINCE,
            UNTIL,
        ),
    ),
    NamedQuery(
        name="approval_decisions",
        description="What approvers decided in a period: approvals, votes and refusals, with the command.",
        sql=f"""SELECT "time", kind, approvers, principal_name AS requested_by, connection, statement_class,
  statement, reason, session_id, request_id
FROM {TABLE}
WHERE kind IN ('approval_vote', 'approved', 'denied_by_approver', 'approval_expired')
  AND {_PERIOD}
ORDER BY "time", session_id, seq""",
        params=(SINCE, UNTIL),
    ),
    NamedQuery(
        name="session_events",
        description="Every event of one session in order (reads all partitions: give a period if you can).",
        sql=f"""SELECT seq, "time", kind, principal_name, statement_class, statement, decision, policy_ids,
  approvers, outcome, row_count, duration_ms, error, reason
FROM {TABLE}
WHERE session_id = {{session_id}}
  AND {_PERIOD}
ORDER BY seq""",
        params=(
            Param("session_id", "session id", example="00000000-0000-0000-0000-000000000000"),
            SINCE,
            UNTIL,
        ),
    ),
)

_BY_NAME = {q.name: q for q in NAMED_QUERIES}
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def get(name: str) -> NamedQuery:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no named query {name!r}; one of {', '.join(_BY_NAME)}") from None


def sql_literal(value: str) -> str:
    """A SQL string literal both engines read the same way (standard quoting, no backslash escapes)."""
    if not isinstance(value, str):
        raise TypeError("query parameters are strings")
    if _CONTROL.search(value):
        raise ValueError("query parameters may not contain control characters")
    return "'" + value.replace("'", "''") + "'"


def normalize_time(value: str) -> str:
    """A date or an ISO 8601 time -> the log's format, `YYYY-MM-DDTHH:MM:SS.mmmZ`, in UTC."""
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"not a date or time: {value!r} (use 2026-11-24 or 2026-11-24T07:05:00Z)") from exc
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def render(query: NamedQuery | str, params: Mapping[str, str]) -> str:
    """The query's SQL with each `{name}` replaced by a quoted literal. Unknown or missing -> ValueError."""
    named = get(query) if isinstance(query, str) else query
    declared = {p.name: p for p in named.params}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(
            f"{named.name} takes no parameter(s) {', '.join(unknown)}; it takes {', '.join(declared)}"
        )
    values: dict[str, str] = {}
    for p in named.params:
        raw = params.get(p.name)
        if raw is None or raw == "":
            if p.default is None:
                raise ValueError(f"{named.name} needs --param {p.name}=... ({p.description})")
            raw = p.default
        values[p.name] = sql_literal(normalize_time(raw) if p.kind is ParamKind.TIME else raw)
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], named.sql)
