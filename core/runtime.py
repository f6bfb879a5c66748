"""Run bookkeeping shared by the stages: seeding, provenance, metrics files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from core.cli import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_revision() -> str:
    """The repo's commit (with '-dirty' when the tree has changes), or 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


_SHA256: dict = {}  # (path, size, mtime) -> digest: a checkpoint is hashed once per process


def file_sha256(path: str | Path) -> str:
    st = os.stat(path)
    memo = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA256[memo] = h.hexdigest()
    return _SHA256[memo]


def rng_state() -> dict:
    """RNG states in types a weights-only load accepts (tensors, tuples, ints)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def check_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove it writable now, before hours of work depend on it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=path)  # unique: every DDP rank probes
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"output dir {path} is not writable ({e.strerror}); choose another with out_dir=...") from None
    return path


class MetricsLogger:
    """Appends one JSON object per line to metrics.jsonl and mirrors scalars to tensorboard (rank 0 only)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

            self.tb = SummaryWriter(str(Path(out_dir) / "tb"))

    def log(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        # An append-only log, the one file not written through core.files: appending is right for a
        # log (a torn last line after a kill is skipped by its readers), and each record is fsynced so
        # that what the log says happened is on disk before training goes on.
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
