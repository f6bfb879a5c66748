"""Checkpoint I/O: atomic writes, weights-only reads, and the one backbone loader every stage uses.

The loader accepts, and says which it found:
  simsiam      ours or the official SimSiam checkpoints: `state_dict` with `module.encoder.*`
  moco         MoCo v1/v2: `state_dict` with `module.encoder_q.*`
  torchvision  a plain ResNet state dict (`conv1.weight`, ...), bare or under `state_dict`/`model`
  random       the literal path "random": a freshly initialised backbone (the "scratch" baseline)
It returns plain torchvision backbone keys without the classifier (`fc.*`), checks the key set and
shapes against the architecture explicitly, and refuses partial or non-finite weights.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from core.cli import UserError
from core.models import build_backbone

RANDOM = "random"
_DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
_PREFIXES = (("module.encoder.", "simsiam"), ("module.encoder_q.", "moco"), ("encoder.", "simsiam"))
_CKPT_RE = re.compile(r"checkpoint_(\d{4,})\.pth\.tar$")


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file, the problem and the fix."""


@contextmanager
def signals_deferred():
    """Hold interrupt/preemption signals until the block ends, then deliver them in order.

    A handler that exits (SLURM's requeue, Ctrl-C) must not fire inside torch.save, whose zip writer
    then fails. Swapping the Python-level handlers also catches a signal that arrived just before
    the block but whose handler had not run yet. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in _DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in caught:
            signal.raise_signal(s)


class _RecordingFile:
    """The file handed to write(): keeps the OSError of a failed write. torch's zip writer swallows it
    and reports only "unexpected pos ..." (a full disk would otherwise read as a torch bug)."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """write(f) into a temp file in the same dir, fsync, then rename: a crash never leaves half a
    file, and a preemption signal waits until the file is complete. A failed write (disk full,
    quota, read-only or vanished dir) removes the temp file and raises one CheckpointError; the
    file at `path`, if any, is untouched."""
    path = Path(path)
    tmp, out = None, None
    with signals_deferred():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                out = _RecordingFile(f)
                write(out)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            cause = e if isinstance(e, OSError) else (out.error if out is not None else None)
            if cause is None:
                raise
            code = errno.errorcode.get(cause.errno, "") if cause.errno else ""
            raise CheckpointError(
                f"cannot write {path}: {cause.strerror or cause}{f' ({code})' if code else ''}; nothing was "
                "replaced, so the previous checkpoint there is intact. Free space or choose another out_dir, "
                "then re-run to resume"
            ) from None


def remove_stale_temp_files(folder: str | Path, name_glob: str = "*") -> list[Path]:
    """Delete the temp files write_atomic leaves when a process is killed (-9) mid-write.

    They hold half a checkpoint that nothing will ever read; call at start-up, from one process."""
    stale = sorted(Path(folder).glob(f".{name_glob}.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_atomic(obj, path: str | Path) -> None:
    """torch.save, atomically."""
    write_atomic(path, lambda f: torch.save(obj, f))


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
            f"{len(missing)} missing tensors {missing[:4]}, {len(extra)} unexpected {extra[:4]}"
        )
    for k, v in state.items():
        if v.shape != ref[k].shape:
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(v.shape)}, a {arch} needs {tuple(ref[k].shape)}")
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
