"""Masking throughput: a 100k-row x 10-column result through every detector, on one core.

The table is generated from a seeded random so every run masks the same, varied data: ints,
amounts, timestamps, text UUIDs, names, emails, phones in several formats, card numbers (most
Luhn-valid, some not), notes of which a quarter carry embedded PII or secrets (and a tenth are
NULL), and short codes. Nothing is cached between runs or between equal values.

`masking_cells_per_s` is cells (rows x columns) divided by the median wall time of
`Masker.mask_rows` over several runs, with the `default` profile (detectors only, all on).
`masking_cells_per_s_pii_strict` is the same table through `pii-strict` without lineage (its
name patterns stand in: keyed hashes, partials, redaction; `notes` and the rest through the
detectors). `masking_cells_per_s_lineage` is the same table as the result of a SELECT on a
`customers` relation traced by lineage: the plan (built per result, as the service does) protects
name, email, phone and card_number by source, the rest goes through the detectors.

Run alone: `.venv/bin/python bench/bench_masking.py`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "layers" / "core" / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "layers" / "core" / "python"))

from gatehouse.lineage import Catalog, LineageEngine, Relation  # noqa: E402
from gatehouse.masking import Masker, load_profile  # noqa: E402
from gatehouse.masking.plan import plan_columns  # noqa: E402

ROWS = 100_000
RUNS = 5
SEED = 20261124
KEY = b"bench-masking-key-0123456789abcdef"
COLUMNS = ("id", "customer_ref", "name", "email", "phone", "card_number", "amount", "created_at",
           "notes", "code")  # fmt: skip

FIRST = ["John", "Maria", "Wei", "Aisha", "Carlos", "Olga", "Kenji", "Fatima", "Liam", "Noor",
         "Sofia", "Mateo", "Yuki", "Amara", "Lukas", "Priya", "Omar", "Elena", "Tariq", "Zoe"]  # fmt: skip
LAST = ["Smith", "Garcia", "Chen", "Khan", "Silva", "Ivanova", "Tanaka", "Haddad", "Murphy", "Ali",
        "Novak", "Rossi", "Okafor", "Dubois", "Jensen", "Patel", "Kowalski", "Nguyen", "Berg",
        "Costa"]  # fmt: skip
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "example.co.uk", "inbox.example.io"]
PLAIN_NOTES = [
    "Called about the invoice, will follow up next week.",
    "Prefers contact by mail; shipment delayed by carrier.",
    "VIP customer since 2019, renewal due 2025-03-01.",
    "Asked to update billing address, ticket ORD-2024-000123 closed.",
    "Upgraded to plan v2.4.1 on 2024-06-30 for 1299.00 USD.",
    "Refund of 45.90 issued, reference RF-88213, see case 7741.",
    "Server 10.0.12.7 migrated; no action needed.",
    "Discussed contract terms with legal; awaiting signature.",
]


def _luhn_complete(rnd: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rnd.choice("0123456789") for _ in range(length - len(prefix) - 1))
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def _card(rnd: random.Random) -> str:
    prefix, length = rnd.choice([("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("4", 13)])
    digits = _luhn_complete(rnd, prefix, length)
    if rnd.random() < 0.1:  # a mistyped number: Luhn fails, must come back unchanged
        digits = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    style = rnd.random()
    if style < 0.4 and length == 16:
        return " ".join(digits[i : i + 4] for i in range(0, 16, 4))
    if style < 0.7 and length == 16:
        return "-".join(digits[i : i + 4] for i in range(0, 16, 4))
    return digits


def _phone(rnd: random.Random) -> str:
    a, b, c = rnd.randint(200, 989), rnd.randint(200, 999), rnd.randint(0, 9999)
    return rnd.choice([
        f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1-{a}-{b}-{c:04d}",
        f"+44 20 {rnd.randint(1000, 9999)} {c:04d}", f"+49 30 {rnd.randint(100000, 999999)}",
    ])  # fmt: skip


def _email(rnd: random.Random) -> str:
    local = f"{rnd.choice(FIRST).lower()}{rnd.choice(['.', '_', ''])}{rnd.choice(LAST).lower()}"
    return f"{local}{rnd.randint(1, 9999)}@{rnd.choice(DOMAINS)}"


def _secretish(rnd: random.Random) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    kind = rnd.randint(0, 5)
    if kind == 0:
        return f"ssn {rnd.randint(100, 665)}-{rnd.randint(10, 99)}-{rnd.randint(1000, 9999)} on file"
    if kind == 1:
        key = "AKIA" + "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        return f"old key {key} rotated"
    if kind == 2:
        header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=")
        body = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(20, 60)))
        sig = "".join(rnd.choice(alphabet) for _ in range(43))
        return f"session {header.decode()}.{body}.{sig} expired"
    if kind == 3:
        return "IBAN DE89 3704 0044 0532 0130 00 for refunds"
    if kind == 4:
        return f"paid with {_card(rnd)}"
    token = "".join(rnd.choice(alphabet) for _ in range(32))
    return f"webhook sent Authorization: Bearer {token}"


def _notes(rnd: random.Random) -> str | None:
    r = rnd.random()
    if r < 0.10:
        return None
    note = rnd.choice(PLAIN_NOTES)
    if r < 0.18:
        return f"{note} Reach me at {_email(rnd)}."
    if r < 0.26:
        return f"{note} Phone {_phone(rnd)} after 5pm."
    if r < 0.35:
        return f"{note} {_secretish(rnd)}."
    return note


def _code(rnd: random.Random) -> str:
    return rnd.choice([
        f"ORD-{rnd.randint(2019, 2026)}-{rnd.randint(0, 999999):06d}", f"A{rnd.randint(0, 9)}",
        f"v{rnd.randint(0, 9)}.{rnd.randint(0, 20)}.{rnd.randint(0, 99)}", f"SKU-{rnd.randint(10000, 99999)}",
        rnd.choice(["active", "churned", "trial", "paused"]),
    ])  # fmt: skip


def make_table(rows: int = ROWS, seed: int = SEED) -> list[tuple[Any, ...]]:
    rnd = random.Random(seed)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return [
        (
            i,
            str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            f"{rnd.choice(FIRST)} {rnd.choice(LAST)}",
            _email(rnd),
            _phone(rnd),
            _card(rnd),
            Decimal(rnd.randint(100, 10_000_000)) / 100,
            start + dt.timedelta(seconds=rnd.randint(0, 86400 * 700)),
            _notes(rnd),
            _code(rnd),
        )
        for i in range(1, rows + 1)
    ]


def _cells_per_s(masker: Masker, table: list[tuple[Any, ...]]) -> float:
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        masker.mask_rows(COLUMNS, table)
        timings.append(time.perf_counter() - started)
    return len(table) * len(COLUMNS) / statistics.median(timings)


def _cells_per_s_lineage(masker: Masker, table: list[tuple[Any, ...]]) -> float:
    relation = Relation(1, "public", "customers", "r", COLUMNS, attnums=tuple(range(1, len(COLUMNS) + 1)))
    catalog = Catalog.build([relation], ["pg_catalog", "public"])
    engine = LineageEngine()
    sql = f"SELECT {', '.join(COLUMNS)} FROM customers"
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        flows = engine.trace(sql, catalog)[-1].columns(len(COLUMNS))
        masker.mask_rows(COLUMNS, table, plan_columns(masker.profile, COLUMNS, flows))
        timings.append(time.perf_counter() - started)
    return len(table) * len(COLUMNS) / statistics.median(timings)


def run() -> dict[str, float]:
    table = make_table()
    default = _cells_per_s(Masker(load_profile("default"), KEY), table)
    strict = _cells_per_s(Masker(load_profile("pii-strict"), KEY), table)
    lineage = _cells_per_s_lineage(Masker(load_profile("pii-strict"), KEY), table)
    figures = {
        "masking_cells_per_s": round(default),
        "masking_cells_per_s_pii_strict": round(strict),
        "masking_cells_per_s_lineage": round(lineage),
    }
    print(
        f"masking: {ROWS:,} rows x {len(COLUMNS)} columns, median of {RUNS} runs: "
        f"default {figures['masking_cells_per_s']:,} cells/s, "
        f"pii-strict {figures['masking_cells_per_s_pii_strict']:,} cells/s, "
        f"pii-strict by lineage {figures['masking_cells_per_s_lineage']:,} cells/s"
    )
    return figures


if __name__ == "__main__":
    run()
