"""API overhead and cold start, on the local stack (moto + a throwaway Postgres, one machine).

`api_overhead_p50_ms` = `api_p50_ms` - `direct_p50_ms`, where

- `api_p50_ms` is the median wall time of one signed `POST /v1/requests` running
  `SELECT id, name FROM customers WHERE id = 7` on `demo-dev` as the agent `analyst`, through
  the whole local path: the client signs (SigV4) and sends it over HTTP (keep-alive) to the API
  Gateway stand-in, which verifies the signature and builds the v2 event; the real
  `functions/api/handler.py` (warm) validates the body, maps the caller to its principal and
  looks up the connection (DynamoDB, each kept CACHE_SECONDS by the warm process, as in
  production: see gatehouse.registry), classifies with pglast, resolves lineage, authorizes with
  Cedar, writes the session log (2 S3 puts with Object Lock on moto: received+decision before
  the command runs, executed+closed before its transaction ends), stores the request record in
  DynamoDB (a put beside the first S3 object, the update beside the second), reads the credential from Secrets
  Manager on moto (cached 60 s by the gateway, as in production), takes the warm target session
  the process keeps for the connection and credential (gatehouse.targets.postgres.TargetPool:
  logged in while the decision is written when none is idle, reset with DISCARD ALL after each
  request), runs the statement in a READ ONLY transaction with a cursor, masks the rows and
  answers;
- `direct_p50_ms` is the median wall time of the same query run by a client holding the
  password (the demo role's, read once from Secrets Manager on moto): a fresh pg8000
  connection, the query, close - what a client without Gatehouse does for one query.

For reference, `direct_kept_p50_ms` is the same query on one session the client keeps open (no
login), measured in the same loop: `api_overhead_vs_kept_p50_ms` = `api_p50_ms` -
`direct_kept_p50_ms` is what Gatehouse adds over a client that pools its own sessions. A login
costs more than this query (a forked backend, SCRAM, and pg8000 building a TLS context per
connection), which is why the API, whose sessions are warm, can answer faster than `direct`.

The two are interleaved (alternating which goes first) after a warm-up, so machine noise hits
both alike. Everything runs on one machine, and moto's server runs in this process: each S3 or
DynamoDB call costs a few milliseconds of Python on the same two cores (and the same GIL) as the
gateway, where AWS would cost network latency instead (S3 PUTs typically take tens of ms). The
overhead is Gatehouse's own work plus moto's and loopback round trips; it is not a production
latency.

`cold_start_ms` is what a Lambda cold start pays in our code: a fresh interpreter (a
`python -c` subprocess with the stack's environment: AWS_ENDPOINT_URL, region, table and bucket
names; and, as in Lambda, LAMBDA_TASK_ROOT, the handler's folder: the process is one execution
environment, see functions/api/handler.py; with POWERTOOLS_TRACE_DISABLED, there being no X-Ray
here) times, with `time.perf_counter`, from its first statement to the first answer:
  1. importing `functions/api/handler.py` from its file, as the Lambda runtime does at init
     (powertools, pydantic, boto3, the gatehouse package), reported as `cold_start_import_ms`;
  2. the first invocation with one API event (a `POST /v1/requests` v2 event as the stand-in
     builds it, for the same query): settings from the environment, boto3 clients, the Cedar
     policy set parsed and validated against its schema, the masking key from Secrets Manager,
     then the request itself; reported as `cold_start_first_request_ms`.
Our own modules (the `gatehouse` package and the handler) are byte-compiled before the runs, so
every run loads bytecode, as a deployment that ships it does: otherwise the figure would depend
on which files were edited since Python last cached them (the subprocesses write no bytecode).
The interpreter's own start-up (before the first statement of `-c`) is AWS's part of a cold
start, not ours; `cold_start_process_ms` gives the whole subprocess wall time, spawn to answer,
for reference. A second invocation in the same process gives `cold_second_request_ms` (warm).
Each figure is the median of `COLD_RUNS` subprocesses.

For reference, alternating with those runs in the same environment, `cold_start_boto3_reference_ms`
times a fresh interpreter that imports stock boto3 and builds the three clients the first request
uses (DynamoDB, Secrets Manager, S3), and nothing else: what the smallest Python function using
those services pays, here, before doing any work. `cold_start_over_boto3_reference` is the median
of the per-run ratios: the absolute figures move with the machine's speed from day to day, so
compare runs by the ratio as well.

Run alone: `.venv/bin/python bench/bench_api.py`; `--cold-only [RUNS]` measures the cold start
alone (RUNS subprocesses, default 7, each printed), without the warm loop.
"""

from __future__ import annotations

import compileall
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "core" / "python"
if str(LAYER) not in sys.path:
    sys.path.insert(0, str(LAYER))

import boto3  # noqa: E402
import pg8000.native  # noqa: E402

from gatehouse import names  # noqa: E402
from gatehouse.client import GatehouseClient  # noqa: E402
from gatehouse.local.apigw import ROUTES, VerifiedCaller, build_event  # noqa: E402
from gatehouse.local.stack import API_HANDLER_PATH, LocalStack, signing_credentials  # noqa: E402

AGENT = "analyst"
CONNECTION = "demo-dev"
SQL = "SELECT id, name FROM customers WHERE id = 7"
ITERATIONS = 200
WARMUP = 20
COLD_RUNS = 7
COLD_TIMEOUT_S = 60.0
RESULT_MARK = "BENCH_API_COLD "

# Runs in a fresh interpreter; reads the event on stdin, prints one marked JSON line.
COLD_START_CODE = """
import time
t0 = time.perf_counter()
import importlib.util, json, sys, uuid
event = json.loads(sys.stdin.read())
path, expect, mark = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Context:
    function_name = "gatehouse-api"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:gatehouse-api"
    memory_limit_in_mb = 512
    log_group_name = "/aws/lambda/gatehouse-api"
    log_stream_name = "bench"
    def __init__(self):
        self.aws_request_id = str(uuid.uuid4())
    def get_remaining_time_in_millis(self):
        return 29000

spec = importlib.util.spec_from_file_location("gatehouse_api_handler", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
t1 = time.perf_counter()
first = module.lambda_handler(event, Context())
t2 = time.perf_counter()
second = module.lambda_handler(event, Context())
t3 = time.perf_counter()
for answer in (first, second):
    if answer.get("statusCode") != expect:
        raise SystemExit(f"unexpected answer: {answer}")
print(mark + json.dumps({"import_ms": (t1 - t0) * 1000, "first_ms": (t2 - t1) * 1000,
                         "second_ms": (t3 - t2) * 1000}))
"""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _direct_query(pg_host: str, pg_port: int, user: str, password: str) -> Callable[[], None]:
    def once() -> None:
        con = pg8000.native.Connection(
            user, host=pg_host, port=pg_port, database=CONNECTION, password=password
        )
        try:
            rows = con.run(SQL)
        finally:
            con.close()
        if len(rows) != 1:
            raise RuntimeError(f"direct query returned {len(rows)} rows")

    return once


def _kept_query(con: pg8000.native.Connection) -> Callable[[], None]:
    def once() -> None:
        rows = con.run(SQL)
        if len(rows) != 1:
            raise RuntimeError(f"direct query returned {len(rows)} rows")

    return once


def _api_query(client: GatehouseClient) -> Callable[[], None]:
    def once() -> None:
        answer = client.submit(CONNECTION, SQL)
        if answer.status_code != 200 or answer.body.get("row_count") != 1:
            raise RuntimeError(f"the API answered {answer.status_code}: {answer.body}")

    return once


def _timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _api_event(stack: LocalStack, state: dict[str, Any]) -> dict[str, Any]:
    """The v2 event the stand-in would hand the function for the bench query, already verified."""
    assert stack.provisioned is not None
    key = state["agents"][AGENT]["access_key_id"]
    body = json.dumps({"connection": CONNECTION, "sql": SQL}).encode()
    headers = http.client.HTTPMessage()
    headers["Host"] = state["api"].split("//", 1)[1]
    headers["Content-Type"] = "application/json"
    headers["Content-Length"] = str(len(body))
    route = next(r for r in ROUTES if r.route_key == "POST /v1/requests")
    return build_event(
        route=route,
        path_parameters={},
        method="POST",
        target="/v1/requests",
        headers=headers,
        body=body,
        source_ip="127.0.0.1",
        api_id="gatehouselocal",
        account_id=stack.provisioned.account_id,
        request_id="bench-cold-start",
        caller=VerifiedCaller(key, signing_credentials(stack.provisioned)[key]),
    )


# The reference for the cold start, run alternately with it in the same environment: a fresh
# interpreter that imports stock boto3 and builds the three clients the API's first request uses,
# what the smallest Python function using those services pays before any work of its own.
REFERENCE_CODE = """
import time
t0 = time.perf_counter()
import json, sys
import boto3
session = boto3.session.Session()
for service in ("dynamodb", "secretsmanager", "s3"):
    session.client(service)
print(sys.argv[1] + json.dumps({"reference_ms": (time.perf_counter() - t0) * 1000}))
"""


def _compile_our_code() -> None:
    """Fresh bytecode for our modules, so no run pays for compiling a recently edited file."""
    ok = compileall.compile_dir(str(LAYER / "gatehouse"), quiet=1)
    ok = compileall.compile_file(str(API_HANDLER_PATH), quiet=1) and ok
    if not ok:
        raise RuntimeError("our code does not compile")


def _cold_env() -> dict[str, str]:
    # os.environ holds the stack's handler environment while the stack is up.
    return {
        **os.environ,
        "PYTHONPATH": str(LAYER),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LAMBDA_TASK_ROOT": str(API_HANDLER_PATH.parent),
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def _fresh_interpreter(what: str, code: str, *args: str, stdin: str = "") -> tuple[dict[str, Any], float]:
    """Run `code` in a fresh interpreter with the handler's environment; its marked JSON line and
    the process's wall time in ms."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, RESULT_MARK],
        input=stdin,
        capture_output=True,
        text=True,
        env=_cold_env(),
        cwd=str(ROOT),
        timeout=COLD_TIMEOUT_S,
        check=False,
    )
    process_ms = (time.perf_counter() - started) * 1000
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {what} subprocess failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return dict(json.loads(lines[-1][len(RESULT_MARK) :])), process_ms


def _reference_ms() -> float:
    figures, _ = _fresh_interpreter("reference", REFERENCE_CODE)
    return float(figures["reference_ms"])


def _cold_start(event: dict[str, Any]) -> dict[str, float]:
    figures, process_ms = _fresh_interpreter(
        "cold-start", COLD_START_CODE, str(API_HANDLER_PATH), "200", stdin=json.dumps(event)
    )
    figures["process_ms"] = process_ms
    figures["cold_ms"] = figures["import_ms"] + figures["first_ms"]
    return figures


@contextmanager
def _local_stack() -> Iterator[tuple[LocalStack, dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="gatehouse-bench-") as tmp:
        stack = LocalStack(state_dir=Path(tmp) / ".gatehouse")
        state = stack.up()
        try:
            yield stack, state
        finally:
            stack.down()


def _cold_starts(stack: LocalStack, state: dict[str, Any], runs: int) -> list[dict[str, float]]:
    event = _api_event(stack, state)
    _compile_our_code()
    runs_out = []
    for i in range(runs):
        # Alternate which goes first, so machine noise hits both alike.
        reference = _reference_ms() if i % 2 == 0 else None
        figures = _cold_start(event)
        figures["reference_ms"] = _reference_ms() if reference is None else reference
        runs_out.append(figures)
    return runs_out


def _cold_medians(cold: list[dict[str, float]]) -> dict[str, float]:
    def cold_median(key: str) -> float:
        return round(statistics.median(c[key] for c in cold), 1)

    return {
        "cold_start_ms": cold_median("cold_ms"),
        "cold_start_import_ms": cold_median("import_ms"),
        "cold_start_first_request_ms": cold_median("first_ms"),
        "cold_second_request_ms": cold_median("second_ms"),
        "cold_start_process_ms": cold_median("process_ms"),
        "cold_start_boto3_reference_ms": cold_median("reference_ms"),
        "cold_start_over_boto3_reference": round(
            statistics.median(c["cold_ms"] / c["reference_ms"] for c in cold), 2
        ),
    }


def run_cold_only(runs: int) -> dict[str, float]:
    """Only the cold-start figures (a quick loop while working on start-up), each run printed."""
    with _local_stack() as (stack, state):
        cold = _cold_starts(stack, state, runs)
    for figures in cold:
        print(" ".join(f"{key}={value:.1f}" for key, value in sorted(figures.items())))
    return _cold_medians(cold)


def run() -> dict[str, float]:
    with _local_stack() as (stack, state):
        pg = stack.postgres
        assert pg is not None
        secrets = boto3.client(
            "secretsmanager",
            endpoint_url=state["aws"],
            region_name=state["region"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        cred = json.loads(
            secrets.get_secret_value(SecretId=names.connection_secret_name(CONNECTION))["SecretString"]
        )
        direct = _direct_query(pg.host, pg.port, cred["username"], cred["password"])
        api = _api_query(GatehouseClient.from_local(AGENT, stack.state_path))
        session = pg8000.native.Connection(
            cred["username"], host=pg.host, port=pg.port, database=CONNECTION, password=cred["password"]
        )
        kept = _kept_query(session)

        for _ in range(WARMUP):
            api()
            direct()
            kept()
        api_ms: list[float] = []
        direct_ms: list[float] = []
        kept_ms: list[float] = []
        for i in range(ITERATIONS):
            if i % 2:
                api_ms.append(_timed(api))
                direct_ms.append(_timed(direct))
            else:
                direct_ms.append(_timed(direct))
                api_ms.append(_timed(api))
            kept_ms.append(_timed(kept))
        session.close()
        cold = _cold_starts(stack, state, COLD_RUNS)

    api_p50 = statistics.median(api_ms)
    direct_p50 = statistics.median(direct_ms)
    kept_p50 = statistics.median(kept_ms)

    return {
        "api_overhead_p50_ms": round(api_p50 - direct_p50, 2),
        "api_p50_ms": round(api_p50, 2),
        "api_p99_ms": round(percentile(api_ms, 0.99), 2),
        "direct_p50_ms": round(direct_p50, 2),
        "direct_p99_ms": round(percentile(direct_ms, 0.99), 2),
        "direct_kept_p50_ms": round(kept_p50, 2),
        "api_overhead_vs_kept_p50_ms": round(api_p50 - kept_p50, 2),
        **_cold_medians(cold),
    }


if __name__ == "__main__":
    started = time.perf_counter()
    if sys.argv[1:2] == ["--cold-only"]:
        figures = run_cold_only(int(sys.argv[2]) if len(sys.argv) > 2 else 7)
    else:
        figures = run()
    for name, value in figures.items():
        print(f"{name}: {value}")
    print(f"({time.perf_counter() - started:.1f} s)")
