"""Decision latency: classify (pglast) + authorize (Cedar) one command text, on one core.

The corpus mixes what agents send: plain reads, joins and aggregates, writes, hidden writes in
CTEs, DDL, session settings, and multi-statement texts; each is decided for the demo agent on
both demo connections (dev and prod) with the packaged policies. The policy set is parsed once,
as in a running process; nothing else is cached between iterations except what the engine
itself keeps (the parsed entity set for a principal/connection pair).

Each sample is one `classify(...)` + `engine.authorize(...)` call pair, timed with
`time.perf_counter_ns` after a warm-up. `decision_p50_ms` and `decision_p99_ms` are the median
and 99th percentile over all samples.

Run alone: `.venv/bin/python bench/bench_decision.py`.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "layers" / "core" / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "layers" / "core" / "python"))

from gatehouse.classify import classify  # noqa: E402
from gatehouse.models import Connection, Principal  # noqa: E402
from gatehouse.policy import PolicyEngine  # noqa: E402

WARMUP_ROUNDS = 20
ROUNDS = 400  # x corpus size x 2 connections samples

CORPUS = (
    "select 1",
    "SELECT id, name, email FROM public.customers WHERE id = 42",
    "select c.id, lower(c.email), count(o.id), sum(o.total) from customers c "
    "left join orders o on o.customer_id = c.id where c.created_at > now() - interval '30 days' "
    "group by c.id, c.email order by 4 desc limit 20",
    "with recent as (select * from orders where created_at > now() - interval '1 day') "
    "select customer_id, count(*) from recent group by 1 having count(*) > 3",
    "select * from customers c where exists (select 1 from orders o where o.customer_id = c.id "
    "and o.total > (select avg(total) from orders))",
    "insert into customers (name, email, phone) values ('Ada', 'ada@example.com', '+44 20 7946 0000')",
    "update customers set notes = 'called back' where id = 7",
    "delete from sessions where expires_at < now()",
    "with gone as (delete from customers where id = 9 returning *) insert into archive select * from gone",
    "select * from accounts where id = 3 for update",
    "create table audit_copy (id bigint primary key, body jsonb not null, created timestamptz default now())",
    "alter table customers add column vip boolean default false",
    "set statement_timeout = '5s'",
    "begin; update accounts set balance = balance - 10 where id = 1; "
    "update accounts set balance = balance + 10 where id = 2; commit",
    "select 1; select count(*) from customers; drop table orders",
)

AGENT = Principal(name="analyst", kind="agent", attributes={"team": "data", "clearance": "standard"})
CONNECTIONS = tuple(
    Connection(
        name=f"demo-{env}",
        kind="postgres",
        host="127.0.0.1",
        port=5432,
        database=f"demo-{env}",
        secret_id=f"gatehouse/connections/demo-{env}",
        attributes={"env": env, "data_classification": "pii" if env == "prod" else "internal"},
    )
    for env in ("dev", "prod")
)


def _percentile(sorted_ns: list[int], fraction: float) -> float:
    index = min(len(sorted_ns) - 1, int(fraction * len(sorted_ns)))
    return sorted_ns[index] / 1e6


def run() -> dict[str, float]:
    engine = PolicyEngine.default()
    now = datetime.now(UTC)
    pairs = [(sql, conn) for sql in CORPUS for conn in CONNECTIONS]

    for _ in range(WARMUP_ROUNDS):
        for sql, conn in pairs:
            engine.authorize(AGENT, conn, classify(conn.kind, sql), now=now)

    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(ROUNDS):
        for sql, conn in pairs:
            started = clock()
            engine.authorize(AGENT, conn, classify(conn.kind, sql), now=now)
            samples.append(clock() - started)
    samples.sort()
    return {
        "decision_p50_ms": round(_percentile(samples, 0.50), 4),
        "decision_p99_ms": round(_percentile(samples, 0.99), 4),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key}={value}")
