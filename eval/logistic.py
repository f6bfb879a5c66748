"""Multinomial logistic regression on fixed features: full-batch L-BFGS on the features' device.

The L2 weight is chosen on a stratified held-out part of the TRAINING features only (the functions
here never see val), then the model is refit on the whole training set with that weight.
Features are standardised with the fitting rows' mean and std: a fixed affine map, so the model class
is still a linear classifier on pool5, but one L2 grid then suits every backbone's feature scale.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.cli import UserError


@dataclass
class LinearModel:
    mean: torch.Tensor  # D, standardisation fitted on the training rows
    std: torch.Tensor  # D
    weight: torch.Tensor  # C x D
    bias: torch.Tensor  # C

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias


# Below this many feature values a CPU fit is bound by per-op overhead, and on a busy machine intra-op
# threads make every small op wait for a descheduled peer (measured: a small conv 94 ms with 2 threads
# vs 2 ms with 1 on a loaded 2-core box). Such fits run single-threaded; the setting is restored after.
SMALL_PROBLEM = 1 << 22


@contextlib.contextmanager
def _single_thread_if_small(x: torch.Tensor):
    if x.device.type != "cpu" or x.numel() >= SMALL_PROBLEM or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int,
        init: LinearModel | None = None) -> LinearModel:
    """Minimise mean cross-entropy + l2/2 * |W|^2 (bias not penalised) with strong-Wolfe L-BFGS."""
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)  # dead (always-zero) channels stay zero instead of dividing by 0
    z = (x - mean) / std
    w = torch.zeros(num_classes, x.shape[1], device=x.device) if init is None else init.weight.clone()
    b = torch.zeros(num_classes, device=x.device) if init is None else init.bias.clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-5, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _single_thread_if_small(z):
        opt.step(closure)
    return LinearModel(mean, std, w.detach(), b.detach())


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Bool mask of held-out rows: round(fraction * n_c) random images of each class, at least one kept to fit."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(labels.numel(), dtype=torch.bool)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        n_hold = min(int(round(fraction * idx.numel())), idx.numel() - 1)
        mask[idx[torch.randperm(idx.numel(), generator=g)[:n_hold]]] = True
    return mask


def choose_l2(train_views: torch.Tensor, train_labels: torch.Tensor, num_classes: int, grid: list[float],
              holdout_fraction: float, seed: int, max_iter: int) -> tuple[float, list[dict]]:
    """Pick the L2 weight by held-out top-1 (ties: lower held-out loss) using training features only.

    train_views: V x N x D, view 0 the centre crop; the views of a held-out image are all kept out of the
    fit and the held-out image is scored on its centre crop. The grid is walked from strong to weak
    regularisation, each fit warm-started from the previous one.
    """
    hold = stratified_holdout(train_labels.cpu(), holdout_fraction, seed).to(train_labels.device)
    if not hold.any():
        raise UserError("the held-out part of the training set is empty; raise fast_probe.holdout_fraction "
                         "or use more training images")
    fit_x = train_views[:, ~hold].reshape(-1, train_views.shape[-1])
    fit_y = train_labels[~hold].repeat(train_views.shape[0])
    hold_x, hold_y = train_views[0, hold], train_labels[hold]
    table, model = [], None
    for l2 in sorted(grid, reverse=True):
        model = fit(fit_x, fit_y, num_classes, l2, max_iter, init=model)
        logits = model.logits(hold_x)
        table.append({"l2": l2, "holdout_top1": 100.0 * (logits.argmax(1) == hold_y).float().mean().item(),
                      "holdout_loss": F.cross_entropy(logits, hold_y).item()})
    best = max(table, key=lambda r: (r["holdout_top1"], -r["holdout_loss"]))
    return best["l2"], table
