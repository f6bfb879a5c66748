"""Fast linear probe: multinomial logistic regression on cached pool5 features, in seconds to minutes.

    python -m eval.fast_probe --checkpoint PATH|random --arch resnet50 --train-dir DIR --val-dir DIR --out-dir DIR

Trains on the cached centre-crop training features (plus fast_probe.aug_views cached augmented views),
full-batch L-BFGS on the device. Its L2 weight is chosen on a held-out part of the TRAINING set (val
is never looked at for the choice), then it is refit on the whole training set and scored once on val.
It is a proxy of the official probe for use after every checkpoint; when linear.json of the same
checkpoint sits in the out dir, the result carries the measured gap to it.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m eval.fast_probe: parse before the imports below load torch (fast --help)
    from eval.cli import run_protocol

    run_protocol("eval.fast_probe", __doc__)
    raise SystemExit  # the protocol ran as the module eval.fast_probe, which run_protocol imported

import json
import sys
import time

import torch

from core.config import Config
from core.knn import topk_accuracy
from core.stats import encode_correct
from core.cli import UserError
from eval import logistic
from eval.cli import run_protocol
from eval.context import EvalContext


def _validate(cfg: Config) -> None:
    fp = cfg.fast_probe
    if not fp.l2_grid or any(not isinstance(v, (int, float)) or v < 0 for v in fp.l2_grid):
        raise UserError(f"fast_probe.l2_grid must be a non-empty list of L2 weights >= 0, got {fp.l2_grid!r}")
    if not 0 < fp.holdout_fraction < 1:
        raise UserError(f"fast_probe.holdout_fraction must be in (0, 1), got {fp.holdout_fraction}")
    if fp.aug_views < 0 or fp.max_iter < 1:
        raise UserError("fast_probe.aug_views must be >= 0 and fast_probe.max_iter >= 1")
    if not fp.grad_rel_tol > 0 or fp.grid_extensions < 0:
        raise UserError(f"fast_probe.grad_rel_tol must be > 0 and fast_probe.grid_extensions >= 0, got "
                        f"{fp.grad_rel_tol!r} and {fp.grid_extensions!r}")


def same_run_result(ctx: EvalContext, name: str) -> dict | None:
    """out_dir/<name>.json if it was measured on the same checkpoint and data as this protocol, else None:
    a gap between two protocols means something only then."""
    path = ctx.out_dir / f"{name}.json"
    if not path.is_file():
        return None
    other, mine = json.loads(path.read_text()), ctx.protocol()
    same = all(other["protocol"].get(k) == mine[k] for k in ("checkpoint", "train_dir", "val_dir", "image_size"))
    return other if same else None


def official_gap(ctx: EvalContext, top1: float) -> dict | None:
    """The official probe's numbers beside ours, if linear.json of the same checkpoint and data is there."""
    official = same_run_result(ctx, "linear")
    if official is None:
        return None
    last = official["linear"]["last_epoch"]
    return {"official_last_epoch_top1": last["top1"], "gap_top1": round(top1 - last["top1"], 4),
            "note": "gap = fast probe top1 - official probe last-epoch top1"}


def stacked_train_views(ctx: EvalContext, aug_views: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """(V x N x D features on the device, N labels there, per-view cache infos): the centre crop, then
    `aug_views` cached augmented views. The head grid trains on the same rows."""
    centre, labels, centre_info = ctx.center_features("train")
    views, view_infos = [centre], [centre_info]
    for v in range(aug_views):
        feats, view_labels, info = ctx.augmented_train_features(v)
        assert torch.equal(view_labels, labels)
        views.append(feats)
        view_infos.append(info)
    return torch.stack(views).to(ctx.dist.device), labels.to(ctx.dist.device), view_infos


def convergence_warnings(final: dict, search: logistic.L2Search, grid: list[float]) -> list[str]:
    """One line per thing that makes the number less than the optimum's: an unconverged fit, an edge choice."""
    def why(report: dict) -> str:
        return (f"{report['stop']}, max |gradient| {report['grad_max']:.2e} = {report['grad_rel']:.1e} x objective "
                f"> tolerance {report['grad_rel_tol']:g}")

    out = []
    if not final["converged"]:
        out.append(f"fast probe: the final fit (L2 {final['l2']:g}) did NOT converge ({why(final)}); top1 is not "
                   "the optimum's; raise fast_probe.max_iter")
    stuck = [r["fit"] for r in search.table if not r["fit"]["converged"]]
    if stuck:
        out.append(f"fast probe: {len(stuck)} of {len(search.table)} held-out fits did NOT converge (L2 "
                   f"{', '.join(format(r['l2'], 'g') for r in stuck)}; first: {why(stuck[0])}); the L2 choice may be off")
    if search.at_edge:
        side = "weakest" if search.l2 == min(r["l2"] for r in search.table) else "strongest"
        out.append(f"fast probe: the chosen L2 {search.l2:g} is still the {side} tried after extending the grid "
                   f"{grid} by {len(search.extensions)} decade(s); the best weight may lie beyond; widen "
                   "fast_probe.l2_grid")
    return out


def main(cfg: Config, ctx: EvalContext | None = None) -> dict:
    _validate(cfg)
    fp = cfg.fast_probe
    ctx = ctx or EvalContext(cfg)
    device = ctx.dist.device
    start = time.perf_counter()
    train_views, labels, view_infos = stacked_train_views(ctx, fp.aug_views)
    features_s = time.perf_counter() - start

    start = time.perf_counter()
    search = logistic.choose_l2(train_views, labels, ctx.num_classes, list(fp.l2_grid), fp.holdout_fraction,
                                cfg.seed, fp.max_iter, fp.grad_rel_tol, fp.grid_extensions)
    # Only now, with the L2 weight fixed, do val features enter. The held-out search's fit at that weight is
    # the same problem on 80% of the rows: the refit starts there.
    model = logistic.fit(train_views.reshape(-1, train_views.shape[-1]), labels.repeat(train_views.shape[0]),
                         ctx.num_classes, search.l2, fp.max_iter, init=search.model, grad_rel_tol=fp.grad_rel_tol)
    fit_s = time.perf_counter() - start
    val_feats, val_labels, val_info = ctx.center_features("val")
    with torch.no_grad():
        val_logits = model.logits(val_feats.to(device))
        acc = topk_accuracy(val_logits, val_labels.to(device))
        # top-1 right (1) or wrong (0) per val image in val order: the paired comparison of inits
        correct = encode_correct(val_logits.topk(1, dim=1).indices[:, 0].cpu() == val_labels.cpu())
    top1, top5 = round(acc["top1"], 4), round(acc["top5"], 4)
    warnings = convergence_warnings(model.report, search, list(fp.l2_grid))
    result = {
        "protocol": ctx.protocol(
            method="fast probe: multinomial logistic regression on cached pool5 features, full-batch L-BFGS",
            features="train centre crop" + (f" + {fp.aug_views} augmented views" if fp.aug_views else ""),
            train_transform_views=[i["transform"] for i in view_infos], standardise="train mean / std",
            l2_grid=list(fp.l2_grid), l2_selection=f"stratified {fp.holdout_fraction:g} of train held out (val unused)",
            grid_extensions=f"up to {fp.grid_extensions} decades beyond an edge the choice sits on",
            optimizer="L-BFGS, full batch, strong-Wolfe line search, float32 then float64 if float32 stalls",
            stopping=f"max |gradient entry| <= {fp.grad_rel_tol:g} x objective; {fp.max_iter} iterations is a "
                     "safety cap, reaching it is reported as not converged",
            max_iter=fp.max_iter, grad_rel_tol=fp.grad_rel_tol),
        "fast_probe": {"top1": top1, "top5": top5, "chosen_l2": search.l2, "correct": correct,
                       # every fit, final and held-out, met its gradient tolerance: only then is top1 the optimum's
                       "converged": model.report["converged"] and all(r["fit"]["converged"] for r in search.table),
                       "warnings": warnings, "fit": model.report, "grid_extensions": search.extensions,
                       "chosen_at_grid_edge": search.at_edge, "holdout": search.table},
        "official_probe": official_gap(ctx, top1),
        "seconds": {"features": round(features_s, 3), "fit": round(fit_s, 3)},
        "features": {"train": view_infos, "val": val_info},
    }
    if ctx.dist.is_main:
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        print(f"fast probe: top1 {top1:.2f} top5 {top5:.2f} (L2 {search.l2:g} chosen on held-out train), "
              f"fit {fit_s:.1f} s, {model.report['iterations']} L-BFGS iterations, "
              f"{'converged' if result['fast_probe']['converged'] else 'NOT CONVERGED'}")
    ctx.write_result("fast_probe", result)  # the last write and the last line
    return result


def cli_main(argv=None) -> None:
    run_protocol(__name__, __doc__, argv)
