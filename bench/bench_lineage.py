"""Lineage latency: classify (pglast) + lineage (parse tree against the catalog) for one text.

The catalog is a real snapshot: a throwaway Postgres seeded with the demo tables (plus a view),
read once with the same query the service uses (`gatehouse.lineage.catalog.CATALOG_SQL`): every
table-like relation of the database, system views included. The corpus is the decision bench's
plus reads that rename, transform, join, nest and expand protected columns. Each sample is one
`classify(...)` + `LineageEngine.trace(...)` + the protected-column lists Cedar receives, after a
warm-up, on one core; `lineage_p50_ms` and `lineage_p99_ms` are the median and 99th percentile.
`catalog_read_ms` is one catalog read on loopback (paid per connection and refresh, never per
request).

Run alone: `.venv/bin/python bench/bench_lineage.py`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "layers" / "core" / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "layers" / "core" / "python"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_decision import CORPUS as DECISION_CORPUS  # noqa: E402
from gatehouse.classify import classify  # noqa: E402
from gatehouse.lineage import Catalog, Flow, LineageEngine  # noqa: E402
from gatehouse.lineage.catalog import CATALOG_SQL  # noqa: E402
from gatehouse.local.postgres import ThrowawayPostgres  # noqa: E402
from gatehouse.local.seed import seed_database  # noqa: E402
from gatehouse.masking import load_profile  # noqa: E402
from gatehouse.masking.plan import protected_names  # noqa: E402

WARMUP_ROUNDS = 20
ROUNDS = 300

LINEAGE_CORPUS = (
    "SELECT name AS who, reverse(ssn), md5(email) FROM customers",
    "SELECT c.*, (c).name, c.row_to_json FROM customers c",
    "WITH customers AS (SELECT id, ssn AS notes FROM customers) SELECT notes FROM customers",
    "SELECT name FROM customers UNION ALL SELECT email FROM customers",
    "SELECT (SELECT ssn FROM customers c2 WHERE c2.id = c.id), l.x FROM customers c, "
    "LATERAL (SELECT c.email AS x) l",
    "SELECT json_build_object('n', name, 'e', email), format('%s', phone), xmlelement(name p, ssn) "
    "FROM customers",
    "SELECT id, row_number() OVER (PARTITION BY email ORDER BY ssn) FROM customers WHERE ssn LIKE '4%'",
    "SELECT who, mail FROM contact_book",
    "SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
    "WHERE o.status = 'paid' ORDER BY o.amount DESC LIMIT 20",
    "SELECT query, pid FROM pg_stat_activity",
)


def _percentile(sorted_ns: list[int], fraction: float) -> float:
    index = min(len(sorted_ns) - 1, int(fraction * len(sorted_ns)))
    return sorted_ns[index] / 1e6


def _catalog() -> tuple[Catalog, float]:
    with ThrowawayPostgres() as pg:
        seed_database(pg, "bench", customers=50)
        con = pg.connect("bench")
        try:
            con.run("CREATE VIEW contact_book AS SELECT id, name AS who, lower(email) AS mail FROM customers")
            started = time.perf_counter()
            text = con.run(CATALOG_SQL)[0][0]
            elapsed = (time.perf_counter() - started) * 1000
        finally:
            con.close()
    return Catalog.from_json(text), elapsed


def run() -> dict[str, float]:
    catalog, catalog_ms = _catalog()
    profile = load_profile("pii-strict")
    engine = LineageEngine()
    corpus = (*DECISION_CORPUS, *LINEAGE_CORPUS)

    def step(sql: str) -> None:
        classify("postgres", sql)
        for traced in engine.trace(sql, catalog):
            protected_names(profile, (o.flow for o in traced.outputs))
            protected_names(profile, [Flow(traced.filtered)])

    for _ in range(WARMUP_ROUNDS):
        for sql in corpus:
            step(sql)
    samples: list[int] = []
    for _ in range(ROUNDS):
        for sql in corpus:
            started = time.perf_counter_ns()
            step(sql)
            samples.append(time.perf_counter_ns() - started)
    samples.sort()
    figures = {
        "lineage_p50_ms": round(_percentile(samples, 0.50), 3),
        "lineage_p99_ms": round(_percentile(samples, 0.99), 3),
        "catalog_read_ms": round(catalog_ms, 1),
    }
    print(
        f"lineage: {len(samples):,} samples over {len(corpus)} texts, catalog of "
        f"{len(catalog.relations)} relations: p50 {figures['lineage_p50_ms']} ms, "
        f"p99 {figures['lineage_p99_ms']} ms; one catalog read {figures['catalog_read_ms']} ms"
    )
    return figures


if __name__ == "__main__":
    run()
