"""Helpers shared by the fault-injection tests (tests/test_faults_*.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from core.checkpoint import read_checkpoint
from tests.conftest import PRETRAIN_DEFAULTS, REPO, tiny_overrides

HOOKS = REPO / "tests" / "fault_hooks"  # sitecustomize.py: faults injected into subprocesses by env vars


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
