"""Run SQL over the session log: DuckDB on a laptop (over moto's S3), Athena on AWS.

Both backends expose the same table, `gatehouse_events` (the event columns plus `dt`), and return
`(columns, rows)`, so `named_queries` runs unchanged on either.

DuckDB cannot download extensions here, so `DuckDBAuditQuery` loads httpfs from the
`duckdb-extension-httpfs` wheel (its version must equal duckdb's) and reads S3 with path-style
URLs. The view is re-declared before each query: `read_json` fails on a glob that matches no file,
so an empty log gets an empty view with the same typed columns.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from gatehouse import names
from gatehouse.audit import events, named_queries
from gatehouse.exceptions import GatehouseError

Rows = list[tuple[Any, ...]]


class AuditQueryError(GatehouseError):
    """The audit query could not run (bad SQL, the engine failed, or it timed out)."""

    code = "audit_query_failed"
    status = 400


class AuditQuery(Protocol):
    def run(self, sql: str) -> tuple[list[str], Rows]: ...


def run_named(
    backend: AuditQuery, name: str, params: Mapping[str, str] | None = None
) -> tuple[list[str], Rows]:
    return backend.run(named_queries.render(name, params or {}))


def httpfs_extension_path() -> Path:
    """The httpfs extension shipped in the `duckdb-extension-httpfs` wheel, for this duckdb version."""
    import duckdb

    spec = importlib.util.find_spec("duckdb_extension_httpfs")
    if spec is None or not spec.submodule_search_locations:
        raise AuditQueryError("duckdb-extension-httpfs is not installed (pip install 'gatehouse[local]')")
    root = Path(next(iter(spec.submodule_search_locations)))
    version_dir = f"v{duckdb.__version__}"
    found = sorted(p for p in root.rglob("httpfs.duckdb_extension") if version_dir in p.parts)
    if not found:
        raise AuditQueryError(
            f"no httpfs extension for duckdb {duckdb.__version__} under {root}: "
            "duckdb and duckdb-extension-httpfs versions must match"
        )
    return found[0]


def _duckdb_columns() -> str:
    return "{" + ", ".join(f"'{c.name}': '{c.duckdb_type}'" for c in events.COLUMNS) + "}"


def _select_list(prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{c.name}"' for c in events.COLUMNS)


class DuckDBAuditQuery:
    """`gatehouse_events` as a DuckDB view over the log bucket (moto locally, or any S3 endpoint)."""

    def __init__(
        self,
        s3_endpoint_url: str,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
    ) -> None:
        parsed = urlparse(s3_endpoint_url if "://" in s3_endpoint_url else f"http://{s3_endpoint_url}")
        if not parsed.netloc:
            raise ValueError(f"not an endpoint URL: {s3_endpoint_url!r}")
        self._endpoint = parsed.netloc
        self._use_ssl = parsed.scheme == "https"
        self._bucket = bucket
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._conn: Any = None

    def __enter__(self) -> DuckDBAuditQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def glob(self) -> str:
        return f"s3://{self._bucket}/{names.EVENTS_PREFIX}*/*/*.json"

    def run(self, sql: str) -> tuple[list[str], Rows]:
        import duckdb

        conn = self._connect()
        try:
            self._declare_view(conn)
            cursor = conn.execute(sql)
            columns = [d[0] for d in cursor.description or []]
            return columns, [tuple(row) for row in cursor.fetchall()]
        except duckdb.Error as exc:
            raise AuditQueryError(f"query failed: {str(exc).strip().splitlines()[0]}") from exc

    def _connect(self) -> Any:
        if self._conn is not None:
            return self._conn
        import duckdb

        lit = named_queries.sql_literal
        conn = duckdb.connect(
            ":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        )
        try:
            conn.execute(f"LOAD {lit(str(httpfs_extension_path()))}")
            conn.execute(
                "CREATE OR REPLACE SECRET gatehouse_log (TYPE s3, "
                f"KEY_ID {lit(self._access_key)}, SECRET {lit(self._secret_key)}, "
                f"REGION {lit(self._region)}, ENDPOINT {lit(self._endpoint)}, "
                f"URL_STYLE 'path', USE_SSL {'true' if self._use_ssl else 'false'})"
            )
        except duckdb.Error as exc:
            conn.close()
            raise AuditQueryError(f"cannot set up DuckDB over S3: {exc}") from exc
        self._conn = conn
        return conn

    def _declare_view(self, conn: Any) -> None:
        lit = named_queries.sql_literal
        (count,) = conn.execute(f"SELECT count(*) FROM glob({lit(self.glob)})").fetchone()
        if count:
            source = (
                f"SELECT {_select_list()}, dt FROM read_json({lit(self.glob)}, "
                "format='newline_delimited', hive_partitioning=true, "
                "hive_types={'dt': 'VARCHAR', 'session': 'VARCHAR'}, "
                f"columns={_duckdb_columns()})"
            )
        else:
            typed = ", ".join(f'CAST(NULL AS {c.duckdb_type}) AS "{c.name}"' for c in events.COLUMNS)
            source = f"SELECT {typed}, CAST(NULL AS VARCHAR) AS dt WHERE false"
        conn.execute(f"CREATE OR REPLACE TEMP VIEW {named_queries.TABLE} AS {source}")


_ATHENA_DONE = {"SUCCEEDED", "FAILED", "CANCELLED"}


class AthenaAuditQuery:
    """Start a query in the Gatehouse workgroup, poll until it ends, page through its results."""

    def __init__(
        self,
        athena_client: Any,
        workgroup: str = names.ATHENA_WORKGROUP,
        database: str = names.GLUE_DATABASE,
        *,
        poll_interval_s: float = 0.5,
        timeout_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._athena = athena_client
        self._workgroup = workgroup
        self._database = database
        self._poll = poll_interval_s
        self._timeout = timeout_s
        self._sleep = sleep
        self._monotonic = monotonic

    def run(self, sql: str) -> tuple[list[str], Rows]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            started = self._athena.start_query_execution(
                QueryString=sql,
                WorkGroup=self._workgroup,
                QueryExecutionContext={"Database": self._database},
            )
            query_id = started["QueryExecutionId"]
            self._wait(query_id)
            return self._results(query_id)
        except (ClientError, BotoCoreError) as exc:
            raise AuditQueryError(f"Athena: {exc}") from exc

    def _wait(self, query_id: str) -> None:
        deadline = self._monotonic() + self._timeout
        while True:
            status = self._athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
            state = status.get("State")
            if state == "SUCCEEDED":
                return
            if state in _ATHENA_DONE:
                reason = status.get("StateChangeReason") or state
                raise AuditQueryError(f"Athena query {query_id} {state.lower()}: {reason}")
            if self._monotonic() >= deadline:
                self._athena.stop_query_execution(QueryExecutionId=query_id)
                raise AuditQueryError(f"Athena query {query_id} timed out after {self._timeout:.0f} s")
            self._sleep(self._poll)

    def _results(self, query_id: str) -> tuple[list[str], Rows]:
        columns: list[str] = []
        types: list[str] = []
        rows: Rows = []
        paginator = self._athena.get_paginator("get_query_results")
        first_page = True
        for page in paginator.paginate(QueryExecutionId=query_id):
            result = page.get("ResultSet", {})
            if first_page:
                info = result.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                columns = [c.get("Name") or c.get("Label") or "" for c in info]
                types = [str(c.get("Type", "varchar")).lower() for c in info]
            data = [
                [cell.get("VarCharValue") for cell in row.get("Data", [])] for row in result.get("Rows", [])
            ]
            # A SELECT's first row is the header.
            if first_page and data and columns and data[0] == columns:
                data = data[1:]
            first_page = False
            rows.extend(tuple(_athena_value(v, t) for v, t in zip(row, types, strict=False)) for row in data)
        return columns, rows


def _athena_value(value: str | None, type_name: str) -> Any:
    if value is None:
        return None
    if type_name in {"tinyint", "smallint", "integer", "int", "bigint"}:
        return int(value)
    if type_name in {"double", "float", "real"}:
        return float(value)
    if type_name == "boolean":
        return value == "true"
    return value


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows as dicts (for --json)."""
    return [dict(zip(columns, row, strict=True)) for row in rows]
