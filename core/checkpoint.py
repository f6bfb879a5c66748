"""Checkpoint reads (weights-only) and the one backbone loader every stage uses; checkpoints are
written by core.files.save_atomic, the writer of every file.

The loader accepts, and says which it found:
  simsiam      ours or the official SimSiam checkpoints: `state_dict` with `module.encoder.*`
  moco         MoCo v1/v2: `state_dict` with `module.encoder_q.*`
  torchvision  a plain ResNet state dict (`conv1.weight`, ...), bare or under `state_dict`/`model`
  random       the literal path "random": a freshly initialised backbone (the "scratch" baseline)
It returns plain torchvision backbone keys without the classifier (`fc.*`), checks the key set and
shapes against the architecture explicitly, and refuses partial or non-finite weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from core.cli import UserError
from core.models import ARCHS, build_backbone

RANDOM = "random"
_PREFIXES = (("module.encoder.", "simsiam"), ("module.encoder_q.", "moco"), ("encoder.", "simsiam"))
_CKPT_RE = re.compile(r"checkpoint_(\d{4,})\.pth\.tar$")


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file, the problem and the fix."""


def epoch_checkpoints(out_dir: str | Path) -> list[Path]:
    """The official per-epoch files `checkpoint_XXXX.pth.tar` in `out_dir`, oldest first."""
    files = [p for p in Path(out_dir).glob("checkpoint_*.pth.tar") if _CKPT_RE.search(p.name)]
    return sorted(files, key=lambda p: int(_CKPT_RE.search(p.name).group(1)))


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True (a pickle that carries code is refused), clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. Give the path of an existing .pth/.pth.tar file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, objects that are not weights...
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}. "
            "It may be truncated or not a weights-only PyTorch checkpoint; re-download or re-export it"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def _inner_state_dict(obj: dict) -> dict:
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def backbone_state_from_checkpoint(obj: dict, source: str = "<dict>") -> tuple[dict, str]:
    """Extract plain torchvision backbone keys (classifier/projector `fc.*` dropped) and the format name."""
    sd = _inner_state_dict(obj)
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    for prefix, kind in _PREFIXES:
        if any(k.startswith(prefix) for k in tensors):
            picked = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            break
    else:
        if "conv1.weight" not in tensors:
            sample = ", ".join(list(sd)[:5])
            raise CheckpointError(
                f"{source}: unrecognised checkpoint layout (first keys: {sample}). Expected SimSiam "
                "'module.encoder.*', MoCo 'module.encoder_q.*' or torchvision ResNet keys ('conv1.weight', ...)"
            )
        picked, kind = tensors, "torchvision"
    return {k: v for k, v in picked.items() if not k.startswith("fc.")}, kind


def _arch_hint(state: dict, arch: str) -> str:
    """'; it is a resnet18 backbone: pass --arch resnet18' when another known arch fits every tensor."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for other in ARCHS:
        if other == arch:
            continue
        ref = {k: tuple(v.shape) for k, v in build_backbone(other).state_dict().items() if not k.startswith("fc.")}
        required = {k for k in ref if not k.endswith("num_batches_tracked")}
        if required <= shapes.keys() <= ref.keys() and all(ref[k] == shape for k, shape in shapes.items()):
            return f"; it is a {other} backbone: pass --arch {other} (config key arch)"
    return ""


def check_backbone_state(state: dict, arch: str, source: str = "<dict>") -> None:
    """The state must cover exactly the backbone's tensors (minus fc) with the right shapes, all finite."""
    ref = {k: v for k, v in build_backbone(arch).state_dict().items() if not k.startswith("fc.")}
    optional = {k for k in ref if k.endswith("num_batches_tracked")}  # absent from some exports
    missing = sorted(set(ref) - set(state) - optional)
    extra = sorted(set(state) - set(ref))
    if missing or extra:
        hint = "it may be another architecture" if len(missing) > 10 else "it is a partial or edited checkpoint"
        raise CheckpointError(
            f"{source} does not match a {arch} backbone ({hint}): "
            f"{len(missing)} missing tensors {missing[:4]}, {len(extra)} unexpected {extra[:4]}{_arch_hint(state, arch)}"
        )
    for k, v in state.items():
        if v.shape != ref[k].shape:
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(v.shape)}, a {arch} needs "
                                  f"{tuple(ref[k].shape)}{_arch_hint(state, arch)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{source}: tensor {k} holds NaN or inf; the run that wrote it diverged")


def load_backbone_state(path: str | Path, arch: str = "resnet50", seed: int = 0) -> tuple[dict, str]:
    """Backbone weights (torchvision keys, no fc) from any supported checkpoint, or 'random' init."""
    if str(path) == RANDOM:
        torch.manual_seed(seed)
        state = {k: v for k, v in build_backbone(arch).state_dict().items() if not k.startswith("fc.")}
        return state, RANDOM
    state, kind = backbone_state_from_checkpoint(read_checkpoint(path), str(path))
    check_backbone_state(state, arch, str(path))
    return state, kind


def load_backbone(path: str | Path, arch: str = "resnet50", seed: int = 0, num_classes: int = 1000):
    """A torchvision ResNet with the checkpoint's backbone weights; its fc is left at init."""
    state, kind = load_backbone_state(path, arch, seed)
    net = build_backbone(arch, num_classes=num_classes)
    missing, unexpected = net.load_state_dict(state, strict=False)
    leftover = {k for k in missing if not k.endswith("num_batches_tracked")}
    assert leftover == {"fc.weight", "fc.bias"} and not unexpected, (leftover, unexpected)
    return net, kind
