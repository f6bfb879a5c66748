"""Wall time of the whole demo chain (make demo's command, fresh run and data dirs) and of the whole
test suite (make test's command), each against the 15-minute goal, as subprocesses of this machine.

    python -m bench.bench_wall            # both, ~6 + ~5 min on an idle 2-core machine
    python -m bench.bench_wall --dry      # the same code path on a tiny slice (data stage, one test file)

Skipped (no rows) when BENCH_QUICK=1 (make bench-quick); BENCH_WALL_DRY=1 selects --dry under run_all.
The ratio column is minutes (goal <= 15): a wall time is its own reference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.table import report

REPO = Path(__file__).resolve().parent.parent
GOAL_MIN = 15.0


def _timed(cmd: list[str], what: str) -> tuple[float, bool]:
    """(wall seconds, exit status 0); a failure is a FAIL row, not the end of the table."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    print(f"bench_wall: {what} {seconds:.0f} s, exit {code} ({' '.join(cmd[2:])})", flush=True)
    return seconds, code == 0


def run(dry: bool | None = None) -> list[dict]:
    if os.environ.get("BENCH_QUICK") == "1":
        print("bench_wall: skipped (BENCH_QUICK=1)")
        return []
    dry = os.environ.get("BENCH_WALL_DRY") == "1" if dry is None else dry
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        demo = [py, "-m", "pipeline.run", "--config", "pipeline/configs/demo.yaml",
                f"out_dir={tmp}/demo", f"data_root={tmp}/data"] + (["--only", "data"] if dry else [])
        demo_s, demo_ok = _timed(demo, "demo chain" + (" (dry: data stage only)" if dry else ""))
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + (  # make test's command: both cores
        ["tests/pretrain/test_fast_data_distribution.py"] if dry else ["-n", "2", "--dist", "loadfile"])
    tests_s, tests_ok = _timed(tests, "test suite" + (" (dry: one file)" if dry else ""))
    tag = " (DRY: a slice only)" if dry else ""
    return [{"name": f"demo chain wall time, minutes{tag}", "ratio": demo_s / 60, "goal": f"<= {GOAL_MIN:g} min, exit 0",
             "ok": demo_ok and (None if dry else demo_s / 60 <= GOAL_MIN)},
            {"name": f"test suite wall time, minutes{tag}", "ratio": tests_s / 60, "goal": f"<= {GOAL_MIN:g} min, all pass",
             "ok": tests_ok and (None if dry else tests_s / 60 <= GOAL_MIN)}]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="time a tiny slice to check the code path")
    report(run(p.parse_args().dry))
