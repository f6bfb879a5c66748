"""Helpers shared by the tests (the fixtures are in conftest.py): paths, tiny on-disk data, tiny configs
of the real code, the one-error-line check of the error contract, and the fault-injection harness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.checkpoint import read_checkpoint
from core.config import load_config
from core.models import build_backbone

REPO = Path(__file__).resolve().parent.parent
PRETRAIN_DEFAULTS = REPO / "pretrain" / "configs" / "defaults.yaml"
EVAL_DEFAULTS = REPO / "eval" / "configs" / "defaults.yaml"
EVAL_EMBEDDED = REPO / "eval" / "configs" / "embedded_cpu.yaml"
COLOURS = ((220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 210, 30))
HOOKS = REPO / "tests" / "faults" / "hooks"  # sitecustomize.py: faults injected into subprocesses by env vars


# ---------------------------------------------------------------- tiny data and configs
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


# ---------------------------------------------------------------- fault injection (tests/faults/)
def fault_env(**faults) -> dict:
    return {**os.environ, "PYTHONPATH": f"{HOOKS}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1",
            "PYTHON": sys.executable, **{k: str(v) for k, v in faults.items()}}


def train_cmd(out: Path, folder: Path, **extra) -> list[str]:
    return [sys.executable, "-m", "pretrain.train", "--config", str(PRETRAIN_DEFAULTS), *tiny_overrides(out, folder, **extra)]


def start(cmd: list[str], **faults) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=fault_env(**faults), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def global_step(path: Path) -> int:
    try:
        return read_checkpoint(path)["global_step"] if path.exists() else -1
    except Exception:  # being replaced right now
        return -1


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    different = [k for k, v in sa.items() if not torch.equal(v, sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ---------------------------------------------------------------- other methods' checkpoints (core/checkpoint_formats.py)
def _noisy(state: dict, shift: float) -> dict:
    """Another set of weights with the same names (a momentum encoder, a student)."""
    return {k: (v + shift if v.is_floating_point() else v.clone()) for k, v in state.items()}


def _simclr_v2_names(backbone: dict) -> dict:
    """torchvision ResNet-50 names -> SimCLRv2-Pytorch's positional names (the converter's nn.Sequential)."""
    import re

    out = {}
    for k, v in backbone.items():
        if k == "conv1.weight":
            out["net.0.0.weight"] = v
        elif k.startswith("bn1."):
            out["net.0.1.0." + k[4:]] = v
        else:
            stage, block, rest = re.match(r"layer(\d)\.(\d+)\.(.+)", k).groups()
            base = f"net.{stage}.blocks.{block}."
            if rest == "downsample.0.weight":
                out[base + "projection.shortcut.weight"] = v
            elif rest.startswith("downsample.1."):
                out[base + "projection.bn.0." + rest[len("downsample.1."):]] = v
            elif rest.startswith("conv"):
                out[base + f"net.{2 * (int(rest[4]) - 1)}.weight"] = v
            else:  # bnK.x -> net.{2K-1}.0.x
                out[base + f"net.{2 * int(rest[2]) - 1}.0.{rest[4:]}"] = v
    return out


def method_checkpoint(fmt: str, backbone: dict, seed: int = 0) -> tuple[dict, dict]:
    """(file content, {dropped group: count}) of `backbone` (torchvision names, no fc) saved the way
    method `fmt` saves it: wrapped and renamed by its own rules, with its heads, momentum encoder,
    queue or prototypes present (small shapes: only the names and the backbone's tensors matter)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    fc = {"fc.weight": r(10, 8), "fc.bias": r(10)}  # the classifier or projector: dropped, its shape does not matter
    bb = {k: v for k, v in backbone.items()}
    pre = lambda p, d: {p + k: v for k, v in d.items()}  # noqa: E731
    n = len(bb)
    if fmt == "torchvision":
        return {**bb, **fc}, {"classifier (fc)": 2}
    if fmt == "simsiam":
        sd = {**pre("module.encoder.", bb), "module.encoder.fc.0.weight": r(8, 8), "module.encoder.fc.1.running_mean": r(8),
              "module.predictor.0.weight": r(4, 8), "module.predictor.3.bias": r(8)}
        return {"epoch": 3, "arch": "resnet18", "state_dict": sd, "optimizer": {}}, {"projector (fc)": 2, "predictor": 2}
    if fmt == "moco":
        sd = {**pre("module.encoder_q.", {**bb, **fc}), **pre("module.encoder_k.", {**_noisy(bb, 1), **fc}),
              "module.queue": r(8, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
        return {"epoch": 200, "arch": "resnet18", "state_dict": sd}, {"momentum encoder": n + 2, "projector (fc)": 2, "queue": 2}
    if fmt == "moco_v3":
        sd = {**pre("module.base_encoder.", {**bb, "fc.0.weight": r(8, 8), "fc.1.running_var": r(8)}),
              **pre("module.momentum_encoder.", {**_noisy(bb, 1), "fc.0.weight": r(8, 8)}),
              "module.predictor.0.weight": r(8, 8)}
        return {"epoch": 300, "arch": "resnet50", "state_dict": sd, "optimizer": {}}, \
            {"projector (fc)": 2, "momentum encoder": n + 1, "predictor": 1}
    if fmt in ("byol", "timm"):
        return {**bb, **fc}, {"classifier (fc)": 2}
    if fmt == "swav":
        sd = {**pre("module.", bb), "module.projection_head.0.weight": r(8, 8), "module.projection_head.1.running_mean": r(8),
              "module.prototypes.weight": r(30, 8)}
        return sd, {"projector": 2, "prototypes": 1}
    if fmt == "simclr_v1":
        return {"state_dict": {**bb, **fc}}, {"classifier (fc)": 2}
    if fmt == "simclr_v2":
        head = {"layers.0.weight": r(8, 8), "layers.1.running_mean": r(8)}
        return {"resnet": {**_simclr_v2_names(bb), **fc}, "head": head}, {"classifier (fc)": 2}
    if fmt in ("barlow_twins", "vicreg"):
        sd = {**pre("module.backbone.", bb), "module.projector.0.weight": r(8, 8)}
        drops = {"projector": 1}
        if fmt == "barlow_twins":
            sd["module.bn.running_mean"] = r(8)
            drops["loss BN (module.bn)"] = 1
        return {"epoch": 1000, "model": sd, "optimizer": {}}, drops
    if fmt == "dino":
        head = {"module.head.mlp.0.weight": r(8, 8), "module.head.last_layer.weight_g": r(8, 1)}
        return {"student": {**pre("module.backbone.", _noisy(bb, 2)), **head},
                "teacher": {**pre("module.backbone.", bb), **head}, "epoch": 100}, {"DINO head": 2}
    if fmt == "densecl":
        sd = {**pre("backbone.", bb), **pre("encoder_q.0.", bb), "encoder_q.1.mlp.0.weight": r(8, 8),
              **pre("encoder_k.0.", _noisy(bb, 1)), "queue": r(8, 16), "queue_ptr": torch.zeros(1), "queue2": r(8, 16)}
        return {"meta": {"epoch": 200}, "state_dict": sd}, \
            {"encoder_q (the same backbone again + neck)": n + 1, "momentum encoder": n, "queues": 3}
    if fmt == "pixpro":
        sd = {**pre("module.encoder.", bb), **pre("module.encoder_k.", _noisy(bb, 1)),
              "module.projector.linear1.weight": r(8, 8), "module.projector_k.linear1.weight": r(8, 8),
              "module.value_transform.conv.weight": r(8, 8)}
        return {"model": sd, "epoch": 400}, {"momentum encoder": n, "projector": 1, "momentum projector": 1, "PPM": 1}
    if fmt == "solo_learn":
        sd = {**pre("backbone.", bb), **pre("momentum_backbone.", _noisy(bb, 1)), "projector.0.weight": r(8, 8),
              "momentum_projector.0.weight": r(8, 8), "classifier.weight": r(10, 8), "classifier.bias": r(10)}
        return {"epoch": 400, "global_step": 9, "state_dict": sd}, \
            {"momentum encoder": n, "projector": 1, "momentum projector": 1, "online classifier": 2}
    if fmt == "lightly":
        sd = {**pre("backbone.", bb), **pre("teacher_backbone.", _noisy(bb, 1)), "projection_head.layers.0.weight": r(8, 8),
              "online_classifier.classification_head.weight": r(10, 8)}
        return {"epoch": 100, "state_dict": sd}, {"momentum encoder": n, "projector": 1, "online classifier": 1}
    if fmt == "mmselfsup":
        sd = {**pre("backbone.", bb), "neck.mlp.0.weight": r(8, 8), "head.predictor.0.weight": r(8, 8),
              **pre("target_net.0.", _noisy(bb, 1))}
        return {"meta": {"mmselfsup_version": "0.x"}, "state_dict": sd}, {"neck": 1, "head": 1, "momentum encoder": n}
    raise ValueError(fmt)
