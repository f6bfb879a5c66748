"""Shared fixtures: tiny on-disk ImageFolders and tiny pretraining configs (seeded, CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import load_config

REPO = Path(__file__).resolve().parent.parent
PRETRAIN_DEFAULTS = REPO / "pretrain" / "configs" / "defaults.yaml"

# One thread per process, here and in the subprocesses tests start (torchrun, pipeline stages): on a
# 2-core machine shared with anything else, 2 OpenMP threads per process thrash (a small conv measured
# 94 ms instead of 2 ms), and single-threaded float reductions are reproducible.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """Random-noise JPEGs in root/<class>/<i>.jpg, each class with its own mean colour."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        for i in range(per_class):
            px = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(d / f"{i:03d}.jpg")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def embedded_imagefolder(tmp_path_factory) -> Path:
    """The embedded generator's classification split (imagefolder/{train,val}: 10 classes, 50 + 20 each)."""
    from embedded.generator import EmbeddedDataConfig, generate

    cfg = EmbeddedDataConfig(voc07_trainval=2, voc07_test=2, voc12_trainval=2, coco_train=1, coco_val=1)
    return generate(tmp_path_factory.mktemp("embedded"), cfg) / "imagefolder"


def tiny_overrides(out_dir: Path, train_dir: Path, **extra) -> list[str]:
    """A CPU-fast run of the real loop: ResNet-18, 32 px views, batch 8, small heads, no kNN monitor."""
    items = {
        "out_dir": out_dir, "arch": "resnet18", "device": "cpu", "data.train_dir": train_dir,
        "data.crop_size": 32, "data.workers": 0, "optim.batch_size": 8, "optim.epochs": 2,
        "model.dim": 64, "model.pred_dim": 16, "monitor.knn_every": 0,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def tiny_config(out_dir: Path, train_dir: Path, **extra):
    return load_config(PRETRAIN_DEFAULTS, tiny_overrides(out_dir, train_dir, **extra))


def one_error_line(capsys, call) -> str:
    """Run an entry point that must refuse its input: exit 2, one `error: ` line (the last thing on
    stderr), no traceback. Returns that line."""
    with pytest.raises(SystemExit) as exc:
        call()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-2000:]
    return lines[0]
