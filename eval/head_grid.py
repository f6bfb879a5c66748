"""A grid of linear heads on cached pool5 features, DINOv2-style: many lrs x weight decays at once.

    python -m eval.head_grid --checkpoint PATH|random --arch resnet50 --train-dir DIR --val-dir DIR --out-dir DIR

The official probe fixes one lr; a wrong lr for a backbone's feature scale under-reports it. Here every
(lr, weight decay) pair of head_grid.lrs x head_grid.weight_decays is a linear head, all trained together
with SGD (momentum, cosine per step) over the same mini-batches of the cached training features: the
centre crop plus fast_probe.aug_views cached augmented views, the fast probe's rows. The heads are one
[H, C, D] tensor, so one pass over a batch serves them all. The choice is made on a stratified held-out
part of the TRAINING set (val is never given to it); the chosen (lr, wd) is then retrained on all of train
and scored once on val. Only pool5 is offered: other layers or poolings would need other feature passes.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m eval.head_grid: parse before the imports below load torch (fast --help)
    from eval.cli import run_protocol

    run_protocol("eval.head_grid", __doc__)
    raise SystemExit  # the protocol ran as the module eval.head_grid, which run_protocol imported

import itertools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.cli import UserError
from core.config import Config
from core.knn import topk_accuracy
from core.schedule import cosine_lr
from core.stats import encode_correct
from eval import fast_probe, logistic
from eval.cli import run_protocol
from eval.context import EvalContext
from eval.logistic import LinearModel


def _validate(cfg: Config) -> None:
    hg = cfg.head_grid
    if not hg.lrs or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in hg.lrs):
        raise UserError(f"head_grid.lrs must be a non-empty list of learning rates > 0, got {hg.lrs!r}")
    if not hg.weight_decays or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
                                   for v in hg.weight_decays):
        raise UserError(f"head_grid.weight_decays must be a non-empty list of weights >= 0, got {hg.weight_decays!r}")


def batches(n: int, batch_size: int, epochs: int, seed: int):
    """Row indices of every mini-batch, epoch after epoch: a seeded shuffle per epoch, the last batch short."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        yield from torch.randperm(n, generator=g).split(batch_size)


def train_heads(x: torch.Tensor, y: torch.Tensor, num_classes: int, grid: list[tuple[float, float]], epochs: int,
                batch_size: int, momentum: float, seed: int) -> list[LinearModel]:
    """One LinearModel per (lr, weight decay) of `grid`, all trained on the same batches of x (N x D).

    Each head minimises its own batch-mean cross-entropy with SGD + momentum (torch.optim.SGD's update; weight
    decay on the weight, not the bias), lr x cosine per step. The gradient is written out (softmax - one-hot)
    rather than taken by autograd: the heads are independent, so one batched product per step is exact.
    Zero init: no random draw, so a head's result depends only on its (lr, wd) and the batch order.
    Features are standardised with x's mean and std as in the fast probe: one lr grid then suits every backbone.
    """
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    heads, (n, dim) = len(grid), z.shape
    lr = torch.tensor([g[0] for g in grid], dtype=z.dtype, device=z.device)
    wd = torch.tensor([g[1] for g in grid], dtype=z.dtype, device=z.device)[:, None, None]
    w = torch.zeros(heads, num_classes, dim, dtype=z.dtype, device=z.device)
    b = torch.zeros(heads, num_classes, dtype=z.dtype, device=z.device)
    w_buf, b_buf = torch.zeros_like(w), torch.zeros_like(b)
    onehot = F.one_hot(y, num_classes).to(z.dtype)
    steps, per_epoch = epochs * math.ceil(n / batch_size), math.ceil(n / batch_size)
    loss_sum = torch.zeros(heads, dtype=torch.float64, device=z.device)
    for step, idx in enumerate(batches(n, batch_size, epochs, seed)):
        idx = idx.to(z.device)
        zb, yb = z[idx], onehot[idx]
        logits = torch.baddbmm(b[:, None, :], zb.expand(heads, -1, -1), w.transpose(1, 2))  # H x B x C
        if step >= steps - per_epoch:  # the last epoch's mean loss, for the table
            loss_sum += (logits.logsumexp(-1) - (logits * yb).sum(-1)).sum(1).double()
        d = (logits.softmax(-1) - yb) / len(idx)  # d(batch-mean CE)/d logits, per head
        w_buf.mul_(momentum).add_(torch.einsum("hbc,bd->hcd", d, zb) + wd * w)
        b_buf.mul_(momentum).add_(d.sum(1))
        step_lr = lr * cosine_lr(1.0, step, steps)
        w.sub_(step_lr[:, None, None] * w_buf)
        b.sub_(step_lr[:, None] * b_buf)
    return [LinearModel(mean, std, w[h], b[h], {"lr": grid[h][0], "weight_decay": grid[h][1],
                                                "train_loss_last_epoch": (loss_sum[h] / n).item()})
            for h in range(heads)]


@dataclass
class HeadChoice:
    lr: float
    weight_decay: float
    table: list[dict]  # one row per head, in grid order: held-out top-1 and loss, last-epoch train loss


def _diverged(model: LinearModel) -> bool:
    return not (torch.isfinite(model.weight).all() and torch.isfinite(model.bias).all())


def choose_head(train_views: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                grid: list[tuple[float, float]], holdout_fraction: float, seed: int, epochs: int, batch_size: int,
                momentum: float) -> HeadChoice:
    """The (lr, wd) of the head with the best held-out top-1 (ties: lower held-out loss), training features only.

    train_views: V x N x D, view 0 the centre crop; as in logistic.choose_l2, a held-out image's views are all
    kept out of the fit and it is scored on its centre crop. A head whose weights overflowed is marked diverged
    and never chosen."""
    fit_x, fit_y, hold_x, hold_y = logistic.holdout_split(train_views, train_labels, holdout_fraction, seed,
                                                          "head_grid.holdout_fraction")
    table = []
    for head in train_heads(fit_x, fit_y, num_classes, grid, epochs, batch_size, momentum, seed):
        row = {**head.report, "diverged": _diverged(head), "holdout_top1": None, "holdout_loss": None}
        if not row["diverged"]:
            with torch.no_grad():
                logits = head.logits(hold_x)
            row["holdout_top1"] = round(100.0 * (logits.argmax(1) == hold_y).float().mean().item(), 4)
            row["holdout_loss"] = F.cross_entropy(logits, hold_y).item()
        table.append(row)
    usable = [r for r in table if not r["diverged"]]
    if not usable:
        raise UserError(f"every head of the grid diverged (lrs {[g[0] for g in grid]}); lower head_grid.lrs")
    best = logistic.best_holdout_row(usable)  # the fast probe's rule: top-1, then loss
    return HeadChoice(best["lr"], best["weight_decay"], table)


def _beside(ctx: EvalContext, top1: float) -> dict:
    """Measured gaps to the official probe (linear.json) and the fast probe (fast_probe.json) of the same
    checkpoint and data, when they sit in out_dir."""
    out = {}
    official = fast_probe.official_gap(ctx, top1)
    if official:
        out["official_probe"] = {**official, "note": "gap = head grid top1 - official probe last-epoch top1"}
    fast = fast_probe.same_run_result(ctx, "fast_probe")
    if fast is not None:
        fast_top1 = fast["fast_probe"]["top1"]
        out["fast_probe"] = {"fast_probe_top1": fast_top1, "gap_top1": round(top1 - fast_top1, 4),
                             "note": "gap = head grid top1 - fast probe top1"}
    return out


def main(cfg: Config, ctx: EvalContext | None = None) -> dict:
    _validate(cfg)
    hg = cfg.head_grid
    ctx = ctx or EvalContext(cfg)
    device = ctx.dist.device
    grid = [(float(lr), float(wd)) for lr, wd in itertools.product(hg.lrs, hg.weight_decays)]
    start = time.perf_counter()
    train_views, labels, view_infos = fast_probe.stacked_train_views(ctx, cfg.fast_probe.aug_views)
    features_s = time.perf_counter() - start

    start = time.perf_counter()
    choice = choose_head(train_views, labels, ctx.num_classes, grid, hg.holdout_fraction, cfg.seed, hg.epochs,
                         hg.batch_size, hg.momentum)
    # Only now, with (lr, wd) fixed, is the chosen head retrained on every training row and val loaded.
    (model,) = train_heads(train_views.reshape(-1, train_views.shape[-1]), labels.repeat(train_views.shape[0]),
                           ctx.num_classes, [(choice.lr, choice.weight_decay)], hg.epochs, hg.batch_size, hg.momentum,
                           cfg.seed)
    if _diverged(model):
        raise UserError(f"the chosen head (lr {choice.lr:g}) diverged when retrained on all of train; "
                        "lower head_grid.lrs")
    fit_s = time.perf_counter() - start
    val_feats, val_labels, val_info = ctx.center_features("val")
    with torch.no_grad():
        val_logits = model.logits(val_feats.to(device))
        acc = topk_accuracy(val_logits, val_labels.to(device))
        correct = encode_correct(val_logits.argmax(1).cpu() == val_labels.cpu())
    top1, top5 = round(acc["top1"], 4), round(acc["top5"], 4)
    result = {
        "protocol": ctx.protocol(
            method="grid of linear heads on cached pool5 features, SGD, chosen on held-out train, retrained on all",
            features="train centre crop" + (f" + {cfg.fast_probe.aug_views} augmented views"
                                            if cfg.fast_probe.aug_views else ""),
            train_transform_views=[i["transform"] for i in view_infos], standardise="train mean / std",
            lrs=list(hg.lrs), weight_decays=list(hg.weight_decays), heads=len(grid), epochs=hg.epochs,
            batch_size=hg.batch_size, momentum=hg.momentum, init="zeros",
            optimizer="SGD + momentum, weight decay on the weight only, lr x cosine per step, batch-mean CE",
            selection=f"held-out top-1 (ties: loss) on a stratified {hg.holdout_fraction:g} of train (val unused)",
            final="chosen (lr, wd) retrained on all training rows, same epochs and batch size, scored once on val"),
        "head_grid": {"top1": top1, "top5": top5, "chosen": {"lr": choice.lr, "weight_decay": choice.weight_decay},
                      "train_loss_last_epoch": model.report["train_loss_last_epoch"], "correct": correct,
                      "holdout": choice.table},
        **_beside(ctx, top1),
        "seconds": {"features": round(features_s, 3), "fit": round(fit_s, 3)},
        "features": {"train": view_infos, "val": val_info},
    }
    if ctx.dist.is_main:
        print(f"head grid: top1 {top1:.2f} top5 {top5:.2f} (lr {choice.lr:g}, wd {choice.weight_decay:g} chosen of "
              f"{len(grid)} heads on held-out train), fit {fit_s:.1f} s")
    ctx.write_result("head_grid", result)  # the last write and the last line
    return result


def cli_main(argv=None) -> None:
    run_protocol(__name__, __doc__, argv)
