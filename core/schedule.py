"""Learning-rate schedules of pretraining and the linear probe: pure functions of the epoch, so they are
unit-testable and resumable."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """Linear scaling rule of the recipe: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256


def cosine_lr(lr: float, epoch: int, epochs: int, warmup_epochs: int = 0) -> float:
    """lr for 0-based `epoch`: optional linear warmup, then lr * 0.5 * (1 + cos(pi * e / epochs)).

    Without warmup this is the official per-epoch schedule; with warmup (Table 2's large batches) the
    cosine runs over the epochs after the warmup.
    """
    if epoch < warmup_epochs:
        return lr * (epoch + 1) / warmup_epochs
    e, span = epoch - warmup_epochs, epochs - warmup_epochs
    return lr * 0.5 * (1.0 + math.cos(math.pi * e / span))


def set_lr(optimizer, lr: float, init_lr: float) -> None:
    """Give every param group `lr`, except groups marked fix_lr (the constant-lr predictor): `init_lr`."""
    for group in optimizer.param_groups:
        group["lr"] = init_lr if group.get("fix_lr") else lr
