"""Checkpoint reads (weights-only) and the one backbone loader every stage uses; checkpoints are
written by core.files.save_atomic, the writer of every file.

The loader reads every format of core/checkpoint_formats.py (SimSiam, MoCo v1/v2/v3, BYOL, SwAV,
SimCLR v1/v2, Barlow Twins, VICReg, DINO, DenseCL, PixPro, solo-learn, lightly, mmselfsup, timm,
torchvision), detected from the file or named by the escape hatches (`Choice`: --format,
--checkpoint-key, --prefix), and says what it decided (`Detection`: format, container, prefix,
tensors kept and dropped, the input normalisation the weights expect). Besides:
  random       the literal path "random": a freshly initialised backbone with the architecture's
               standard torchvision init (zero_init_residual off), seeded: the random-init baseline
It returns plain torchvision backbone keys without the classifier (`fc.*`), checks the key set and
shapes against the architecture explicitly, and refuses partial or non-finite weights: nothing is
ever loaded partially.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from core.checkpoint_formats import Choice, Detection, detect, random_detection
from core.errors import CheckpointError
from core.models import ARCHS, build_backbone

RANDOM = "random"
_CKPT_RE = re.compile(r"checkpoint_(\d{4,})\.pth\.tar$")


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


def detect_backbone(obj: dict, source: str = "<dict>", choice: Choice | None = None) -> Detection:
    """The format of a loaded checkpoint and its backbone (torchvision keys, fc dropped); see
    core/checkpoint_formats.py. One-line CheckpointError when no format or several fit."""
    return detect(obj, source, choice or Choice())


def backbone_state_from_checkpoint(obj: dict, source: str = "<dict>", choice: Choice | None = None) -> tuple[dict, str]:
    """Extract plain torchvision backbone keys (heads, momentum encoders, `fc.*` dropped) and the format name."""
    detection = detect_backbone(obj, source, choice)
    return detection.state, detection.format


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


def load_backbone_state(path: str | Path, arch: str = "resnet50", seed: int = 0,
                        choice: Choice | None = None) -> tuple[dict, str]:
    """Backbone weights (torchvision keys, no fc) from any supported checkpoint, or 'random' init."""
    if str(path) == RANDOM:
        torch.manual_seed(seed)
        # The literature's random init is the architecture's standard one: zero_init_residual is a
        # training trick that would switch every residual branch off (core/models.py build_backbone).
        # Its BN statistics are still the init's (0, 1); eval re-estimates them (core/bn_stats.py).
        net = build_backbone(arch, zero_init_residual=False)
        state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
        return state, RANDOM
    detection = read_backbone(path, arch, choice)
    return detection.state, detection.format


def read_backbone(path: str | Path, arch: str = "resnet50", choice: Choice | None = None) -> Detection:
    """A checkpoint file's Detection (format, normalisation, report) with its strictly checked state."""
    detection = detect_backbone(read_checkpoint(path), str(path), choice)
    if detection.archs and arch not in detection.archs:
        raise CheckpointError(f"{path}: {detection.format} checkpoints hold {' or '.join(detection.archs)} "
                              f"backbones, not {arch}; pass --arch {detection.archs[0]} (config key arch)")
    check_backbone_state(detection.state, arch, str(path))
    return detection


def load_backbone_detected(path: str | Path, arch: str = "resnet50", seed: int = 0,
                           choice: Choice | None = None) -> tuple[dict, Detection]:
    """(state, Detection) of a checkpoint or of 'random': what stages need to follow the format
    (its input normalisation) and to report what was read."""
    if str(path) == RANDOM:
        return load_backbone_state(path, arch, seed)[0], random_detection(arch)
    detection = read_backbone(path, arch, choice)
    return detection.state, detection


def load_backbone(path: str | Path, arch: str = "resnet50", seed: int = 0, num_classes: int = 1000,
                  choice: Choice | None = None):
    """(net, Detection): a torchvision ResNet with the checkpoint's backbone weights; its fc is left at init."""
    state, detection = load_backbone_detected(path, arch, seed, choice)
    net = build_backbone(arch, num_classes=num_classes)
    missing, unexpected = net.load_state_dict(state, strict=False)
    leftover = {k for k in missing if not k.endswith("num_batches_tracked")}
    assert leftover == {"fc.weight", "fc.bias"} and not unexpected, (leftover, unexpected)
    return net, detection
