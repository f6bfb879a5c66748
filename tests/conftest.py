"""Shared fixtures (the helpers they build on are in tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import write_image_folder

# One thread per process, here and in the subprocesses tests start (torchrun, pipeline stages): on a
# 2-core machine shared with anything else, 2 OpenMP threads per process thrash (a small conv measured
# 94 ms instead of 2 ms), and single-threaded float reductions are reproducible.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def embedded_imagefolder(tmp_path_factory) -> Path:
    """The embedded generator's classification split (imagefolder/{train,val}: 10 classes, 50 + 20 each)."""
    from embedded.generator import EmbeddedDataConfig, generate

    cfg = EmbeddedDataConfig(voc07_trainval=2, voc07_test=2, voc12_trainval=2, coco_train=1, coco_val=1)
    return generate(tmp_path_factory.mktemp("embedded"), cfg) / "imagefolder"
