"""Helpers shared by the tests/test_eval_*.py files (no tests here): toy data, configs, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.config import load_config
from core.models import build_backbone

REPO = Path(__file__).resolve().parent.parent
EVAL_DEFAULTS = REPO / "eval" / "configs" / "defaults.yaml"
EVAL_EMBEDDED = REPO / "eval" / "configs" / "embedded_cpu.yaml"
COLOURS = ((220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 210, 30))


def solid_colour_folder(root: Path, per_class: int, size: int = 32, seed: int = 0, colours=COLOURS) -> Path:
    """root/<colour_i>/<n>.png: each class one solid colour plus a little noise (linearly separable)."""
    rng = np.random.default_rng(seed)
    for c, rgb in enumerate(colours):
        d = root / f"colour{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = np.clip(np.array(rgb) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(d / f"{i:03d}.png")
    return root


def toy_splits(tmp: Path, train_per_class: int = 8, val_per_class: int = 4) -> tuple[Path, Path]:
    return (solid_colour_folder(tmp / "train", train_per_class, seed=1),
            solid_colour_folder(tmp / "val", val_per_class, seed=2))


def eval_config(out_dir: Path, train_dir: Path, val_dir: Path, checkpoint="random", **extra):
    """A CPU-fast config on the real code: ResNet-18, 16 px, no workers, small batches, few epochs."""
    items = {"checkpoint": checkpoint, "arch": "resnet18", "out_dir": out_dir, "device": "cpu",
             "data.train_dir": train_dir, "data.val_dir": val_dir, "data.image_size": 16, "data.workers": 0,
             "features.batch_size": 64, "knn.grid": "[[4,0.2],[2,0.07]]", "linear.epochs": 3, "linear.batch_size": 32,
             "fast_probe.l2_grid": "[0.01,0.001]", "fast_probe.max_iter": 50}
    items.update(extra)
    return load_config(EVAL_EMBEDDED, [f"{k}={v}" for k, v in items.items()])


def torchvision_checkpoint(path: Path, arch: str = "resnet18", seed: int = 0) -> Path:
    """A bare torchvision state dict with non-trivial BN running statistics (so train-mode BN would show)."""
    torch.manual_seed(seed)
    net = build_backbone(arch, zero_init_residual=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), path)
    return path
