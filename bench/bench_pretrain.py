"""Pretraining speed, as ratios measured in one run (absolute numbers on a shared machine are noise).

1. loop overhead: our training loop's compute throughput (images/s with the data-wait time taken
   out) against a bare forward/loss/backward/step loop of the same model and batch on tensors.
(The data path, official vs data.backend=fast, is bench/bench_data.py.)

    python -m bench.bench_pretrain [--arch resnet18] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.table import report
from core.config import load_config
from embedded.generator import EmbeddedDataConfig, generate
from core.models import SimSiam
from core.schedule import scaled_lr
from pretrain.loss import simsiam_loss
from pretrain.loop import build_optimizer, main

REPO = Path(__file__).resolve().parent.parent


def bare_images_per_s(cfg, steps: int) -> float:
    torch.manual_seed(0)
    model = SimSiam(cfg.arch, cfg.model.dim, cfg.model.pred_dim, cfg.model.proj_layers)
    opt = build_optimizer(model, cfg, scaled_lr(cfg.optim.base_lr, cfg.optim.batch_size))
    b, s = cfg.optim.batch_size, cfg.data.crop_size
    x1, x2 = torch.randn(b, 3, s, s), torch.randn(b, 3, s, s)
    model.train()
    start = None
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()  # the first step warms up allocators
        p1, p2, z1, z2 = model(x1, x2)
        loss = simsiam_loss(p1, p2, z1, z2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * b / (time.perf_counter() - start)


def loop_images_per_s(cfg, out_dir: Path) -> tuple[float, float]:
    main(cfg)
    record = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return record["images_per_s"] / (1 - record["data_wait_frac"]), record["images_per_s"]


def run(arch: str = "resnet18", steps: int = 12) -> list[dict]:
    # One compute thread for both loops: the loop's DataLoader worker then has the second core to itself
    # instead of taking cycles from the step (with 2 threads the loop measured 0.80 of the bare step,
    # also at the previous commit: CPU contention, not loop overhead).
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "data", EmbeddedDataConfig(voc07_trainval=2, voc07_test=2, voc12_trainval=2,
                                                               coco_train=1, coco_val=1))
        train_dir = root / "imagefolder" / "train"
        out = Path(tmp) / "run"
        batch = 32
        cfg = load_config(REPO / "pretrain/configs/embedded_cpu.yaml", [
            f"out_dir={out}", f"arch={arch}", f"data.train_dir={train_dir}", "data.workers=1",
            f"optim.batch_size={batch}", "optim.epochs=1", "monitor.knn_every=0"])
        # one epoch of the 500 images = 15 steps at batch 32
        ours_compute, ours_total = loop_images_per_s(cfg, out)
        bare = bare_images_per_s(cfg, steps)
    return [
        {"name": f"pretrain loop vs bare step ({arch}, batch {batch}, compute only)", "ratio": ours_compute / bare,
         "goal": ">= 0.95 (overhead <= 5%)", "ok": ours_compute / bare >= 0.95},
        {"name": "pretrain loop vs bare step, data wait included (info)", "ratio": ours_total / bare,
         "goal": "info", "ok": None},
    ]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--steps", type=int, default=12)
    a = p.parse_args()
    report(run(a.arch, a.steps))
