"""Every protocol on one checkpoint, one JSON summary (out_dir/summary.json).

    python -m eval.all --checkpoint PATH|random --arch resnet50 --train-dir DIR --val-dir DIR --out-dir DIR

Order: kNN (one centre-crop pass over train and val, cached), the official linear probe (reuses the
val features), then the fast probe (reuses the train features) with its measured gap to the official
probe, then the head grid (the fast probe's rows again) with its gaps to both. The summary's `headline`
holds the numbers; the full results, each with its whole protocol, follow it and are also written as
knn.json, linear.json, fast_probe.json and head_grid.json.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m eval.all: parse before the imports below load torch (fast --help)
    from eval.cli import run_protocol

    run_protocol("eval.all", __doc__)
    raise SystemExit  # the protocol ran as the module eval.all, which run_protocol imported

from core.config import Config
from eval import fast_probe, head_grid, knn, linear
from eval.cli import run_protocol
from eval.context import EvalContext


def main(cfg: Config) -> dict:
    ctx = EvalContext(cfg)
    knn_result = knn.main(cfg, ctx)
    official = linear.main(cfg, ctx)
    fast = fast_probe.main(cfg, ctx)
    grid = head_grid.main(cfg, ctx)
    last, best = official["linear"]["last_epoch"], official["linear"]["best_epoch"]
    fast_top1 = fast["fast_probe"]["top1"]
    headline = {
        **{f"knn_top1 (k={r['k']}, T={r['T']:g})": r["top1"] for r in knn_result["knn"]},
        f"linear_top1 (official, last epoch {last['epoch']})": last["top1"],
        f"linear_top1 (official, best epoch {best['epoch']}, chosen on val)": best["top1"],
        "fast_probe_top1": fast_top1,
        "fast_minus_official_top1": round(fast_top1 - last["top1"], 4),
        "head_grid_top1 (lr, wd chosen on held-out train)": grid["head_grid"]["top1"],
    }
    summary = {"checkpoint": ctx.checkpoint_id, "headline": headline,
               "knn": knn_result, "linear": official, "fast_probe": fast, "head_grid": grid}
    if ctx.dist.is_main:
        print("summary: " + "; ".join(f"{k} {v:.2f}" for k, v in headline.items()))
    ctx.write_result("summary", summary)  # the last write and the last line
    return summary


def cli_main(argv=None) -> None:
    run_protocol(__name__, __doc__, argv)
