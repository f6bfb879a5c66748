"""Run every benchmark of the project (bench/bench_*.py, each exposing run() -> rows) and print one table.

    python -m bench.run_all            # or: make bench
    BENCH_QUICK=1 python -m bench.run_all      # or: make bench-quick; no demo-chain / test-suite wall times
    BENCH_WALL_DRY=1 python -m bench.run_all   # those two rows on a tiny slice (checks their code path)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from bench.table import report


def main() -> int:
    rows = []
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        module = importlib.import_module(f"bench.{path.stem}")
        print(f"running {path.stem} ...", flush=True)
        rows += module.run()
    print()
    report(rows)
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
