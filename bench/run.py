"""`make bench`: measure, print, and write `.bench/results.json`.

Figures that cannot be measured yet (the Postgres proxy's pgbench runs arrive with the proxy)
are absent, never estimated.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import bench_api, bench_decision, bench_lineage, bench_masking, bench_proxy  # noqa: E402


def main() -> int:
    results: dict[str, object] = {}
    for name, module in (
        ("decision", bench_decision),
        ("lineage", bench_lineage),
        ("masking", bench_masking),
        ("api", bench_api),
        ("proxy", bench_proxy),
    ):
        started = time.perf_counter()
        figures = module.run()
        print(
            f"{name}: "
            + ", ".join(f"{k}={v}" for k, v in figures.items())
            + f"  ({time.perf_counter() - started:.1f} s)"
        )
        results.update(figures)
    results["_meta"] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": "make bench",
    }
    out = ROOT / ".bench" / "results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
