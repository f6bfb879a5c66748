"""Fast probe against the official linear probe on the embedded data, both from a cold feature cache:
wall-time ratio official/fast (goal >= 20x) and top-1 gap (goal within 1 point).

    python -m bench.bench_probe [--checkpoint PATH] [--arch resnet18] [--pretrain-epochs 20]

Without --checkpoint a short SimSiam run on the embedded data is trained first (once; reused from
runs/bench/probe/pretrain afterwards). Both probes run eval/configs/embedded_cpu.yaml unchanged but
for the arch; extra `key=value` arguments override it for both.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from bench.table import report
from core.checkpoint import epoch_checkpoints
from core.config import load_config
from embedded.generator import generate
from eval import fast_probe, linear

REPO = Path(__file__).resolve().parent.parent
TIME_GOAL, GAP_GOAL = 20.0, 1.0


def pretrained_checkpoint(work: Path, data: Path, arch: str, epochs: int) -> Path:
    from pretrain.loop import main as pretrain

    out = work / "pretrain"
    cfg = load_config(REPO / "pretrain" / "configs" / "embedded_cpu.yaml",
                      [f"arch={arch}", f"out_dir={out}", f"data.train_dir={data / 'train'}", f"optim.epochs={epochs}",
                       "monitor.knn_every=0", "optim.base_lr=0.5"])
    if not (out / "done").exists():
        pretrain(cfg)
    return epoch_checkpoints(out)[-1]


def run(checkpoint: str | None = None, arch: str = "resnet18", pretrain_epochs: int = 20,
        work_dir: str = str(REPO / "runs" / "bench" / "probe"), overrides: tuple = ()) -> list[dict]:
    work = Path(work_dir)
    data = generate(work / "embedded") / "imagefolder"
    ckpt = checkpoint or pretrained_checkpoint(work, data, arch, pretrain_epochs)
    import torch._dynamo  # noqa: F401  -- torch's optimizers import it lazily (seconds); keep it out of both timings

    results, seconds = {}, {}
    for name, probe in (("official", linear), ("fast", fast_probe)):
        out = work / name
        shutil.rmtree(out, ignore_errors=True)  # cold: each probe pays for its own feature passes
        cfg = load_config(REPO / "eval" / "configs" / "embedded_cpu.yaml",
                          [f"checkpoint={ckpt}", f"arch={arch}", f"out_dir={out}", f"data.train_dir={data / 'train'}",
                           f"data.val_dir={data / 'val'}", *overrides])
        start = time.perf_counter()
        results[name] = probe.main(cfg)
        seconds[name] = time.perf_counter() - start
    official = results["official"]["linear"]["last_epoch"]["top1"]
    fast = results["fast"]["fast_probe"]["top1"]
    ratio, gap = seconds["official"] / seconds["fast"], fast - official
    print(f"bench_probe: official probe {official:.2f}% in {seconds['official']:.1f} s, fast probe {fast:.2f}% in "
          f"{seconds['fast']:.1f} s (checkpoint {ckpt})")
    return [{"name": "probe wall time official/fast", "ratio": ratio, "goal": f">= {TIME_GOAL:g}x",
             "ok": ratio >= TIME_GOAL},
            {"name": "probe top-1 gap fast-official", "ratio": gap, "goal": f"|gap| <= {GAP_GOAL:g} point",
             "ok": abs(gap) <= GAP_GOAL}]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint to probe (default: a short SimSiam run, trained once)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--work-dir", default=str(REPO / "runs" / "bench" / "probe"))
    p.add_argument("overrides", nargs="*", help="eval config overrides for both probes")
    a = p.parse_args()
    report(run(a.checkpoint, a.arch, a.pretrain_epochs, a.work_dir, tuple(a.overrides)))
