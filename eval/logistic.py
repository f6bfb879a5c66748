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
    report: dict | None = None  # how the fit that made it ended (see fit()); JSON-ready

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias


# Stopping rule of every fit: the largest absolute entry of the gradient of the full objective (mean
# cross-entropy + l2/2 |W|^2) must fall to GRAD_REL_TOL x the objective. Relative, because near separable
# data (weak L2) the loss and its gradient shrink together: an absolute 1e-5 left the objective 10% above
# its optimum on a case whose loss was 3e-4. Measured on four 600 x 256, 10-class, L2 1e-5 ill-conditioned
# problems against scikit-learn at tol 1e-10 (the test file tests/eval/test_probe_convergence.py builds
# one): ratio 1e-4 leaves the objective up to 2e-4 above the optimum, 1e-5 at most 1e-6.
GRAD_REL_TOL = 1e-5

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


def _warm_start(init: LinearModel, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """init's classifier rewritten for another standardisation: the same logits on every input, so a fit
    on more rows (other mean/std) starts exactly where the fit on fewer rows ended."""
    scale = std / init.std
    return init.weight * scale, init.bias + init.weight @ ((mean - init.mean) / init.std)


def fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int,
        init: LinearModel | None = None, grad_rel_tol: float = GRAD_REL_TOL) -> LinearModel:
    """Minimise mean cross-entropy + l2/2 * |W|^2 (bias not penalised) with strong-Wolfe L-BFGS until the
    gradient's largest entry is <= grad_rel_tol x the objective. max_iter (iterations over all L-BFGS calls)
    is only a safety cap; model.report says what ended the fit and whether it converged.

    torch's LBFGS.step() may return early (a step that changes nothing, max_eval) with a large gradient, so
    step() is called again, with a fresh curvature memory, from where it stopped, until the gradient,
    measured here and not taken from the optimizer, meets the tolerance. When float32 can no longer lower
    the objective (its resolution is ~1e-7 of it; weakly regularised, ill-conditioned fits get there
    first), the fit goes on in float64 from that point. A float64 call that lowers nothing ends it as stalled.
    """
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)  # dead (always-zero) channels stay zero instead of dividing by 0
    z = (x - mean) / std
    if init is None:
        w, b = torch.zeros(num_classes, x.shape[1], device=x.device), torch.zeros(num_classes, device=x.device)
    else:
        w, b = _warm_start(init, mean, std)
    w, b = w.to(z.dtype).requires_grad_(True), b.to(z.dtype).requires_grad_(True)

    # L-BFGS sees the objective divided by its value at the start of each call: its absolute internal
    # tolerances (the line search's bracket width x |d| < 1e-9 among them) then act relative to the objective,
    # where near-separable data would otherwise end the line search with gradients of 1e-7.
    scale = 1.0

    def closure():
        w.grad = b.grad = None
        loss = (F.cross_entropy(z @ w.T + b, y) + 0.5 * l2 * (w * w).sum()) / scale
        loss.backward()
        return loss

    def measure() -> tuple[float, float]:
        loss = closure().item() * scale
        return loss, max(w.grad.abs().max().item(), b.grad.abs().max().item()) * scale

    iterations, evaluations, calls, precisions = 0, 0, 0, [str(z.dtype).removeprefix("torch.")]
    with torch.enable_grad(), _single_thread_if_small(z):
        loss, grad = measure()
        evaluations += 1
        while True:
            if grad <= grad_rel_tol * loss:
                stop = "gradient tolerance met"
                break
            if iterations >= max_iter:
                stop = f"iteration cap {max_iter} reached"
                break
            left = max_iter - iterations
            # tolerance_change 1e-12 on the scaled objective (order 1): below float32's resolution, so L-BFGS only
            # stops by itself when a step changes nothing; the loop here decides convergence.
            scale = loss
            opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=left, max_eval=4 * left, history_size=20,
                                    line_search_fn="strong_wolfe", tolerance_grad=grad_rel_tol, tolerance_change=1e-12)
            opt.step(closure)
            iterations += opt.state[w]["n_iter"]
            evaluations += opt.state[w]["func_evals"] + 1
            calls += 1
            before = loss
            loss, grad = measure()
            if loss < before:
                continue
            if z.dtype != torch.float32:
                stop = f"stalled: L-BFGS no longer lowers the {precisions[-1]} objective"
                break
            z = z.double()  # float32 resolution reached: finish in float64 from the same point
            w, b = w.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
            precisions.append("float64")
            loss, grad = measure()
            evaluations += 1
    with torch.no_grad():
        train_top1 = 100.0 * ((z @ w.T + b).argmax(1) == y).float().mean().item()
    report = {"l2": l2, "converged": grad <= grad_rel_tol * loss, "stop": stop, "iterations": iterations,
              "evaluations": evaluations, "lbfgs_calls": calls, "precision": " then ".join(precisions),
              "objective": loss, "grad_max": grad, "grad_rel": grad / loss, "grad_rel_tol": grad_rel_tol,
              "train_top1": train_top1, "warm_start": init is not None}
    return LinearModel(mean, std, w.detach().to(x.dtype), b.detach().to(x.dtype), report)


def objective(model: LinearModel, x: torch.Tensor, y: torch.Tensor, l2: float) -> float:
    """The objective fit() minimises, in float64, for any model in the same standardised coordinates."""
    z = ((x - model.mean) / model.std).double()
    w, b = model.weight.double(), model.bias.double()
    return (F.cross_entropy(z @ w.T + b, y) + 0.5 * l2 * (w * w).sum()).item()


def sklearn_optimum(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int = 100_000) -> LinearModel:
    """The reference for fit(): scikit-learn's multinomial lbfgs to tol 1e-10 in float64 on the same
    standardised inputs. sklearn minimises C x (sum of per-sample losses) + |W|^2 / 2, intercept unpenalised:
    the minimiser of our mean loss + l2/2 |W|^2 for C = 1 / (l2 n). Used by the tests and bench/bench_probe.py."""
    from sklearn.linear_model import LogisticRegression  # a dependency of the package, loaded only here

    mean, std = x.double().mean(0), x.double().std(0).clamp_min(1e-6)
    z = ((x.double() - mean) / std).cpu().numpy()
    clf = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=max_iter).fit(z, y.cpu().numpy())
    iterations = int(clf.n_iter_.max())
    dev = x.device
    model = LinearModel(mean.float().to(dev), std.float().to(dev), torch.tensor(clf.coef_, dtype=torch.float32, device=dev),
                        torch.tensor(clf.intercept_, dtype=torch.float32, device=dev))
    model.report = {"l2": l2, "converged": iterations < max_iter, "iterations": iterations,
                    "objective": objective(model, x, y, l2)}
    return model


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Bool mask of held-out rows: round(fraction * n_c) random images of each class, at least one kept to fit."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(labels.numel(), dtype=torch.bool)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        n_hold = min(int(round(fraction * idx.numel())), idx.numel() - 1)
        mask[idx[torch.randperm(idx.numel(), generator=g)[:n_hold]]] = True
    return mask


@dataclass
class L2Search:
    l2: float  # the chosen weight
    table: list[dict]  # one row per fit, in the order fitted: held-out top-1 and loss, and the fit's report
    model: LinearModel  # the held-out search's fit at the chosen weight: the final refit starts from it
    extensions: list[float]  # weights added beyond the grid's edges because the choice sat on one
    at_edge: bool  # the choice still sits on an edge of the (extended) grid: the best weight may lie beyond


def best_holdout_row(table: list[dict]) -> dict:
    """The row of a held-out table with the best top-1, ties broken by the lower held-out loss (shared by
    the fast probe's L2 search and the head grid)."""
    return max(table, key=lambda r: (r["holdout_top1"], -r["holdout_loss"]))


def holdout_split(train_views: torch.Tensor, train_labels: torch.Tensor, fraction: float, seed: int, key: str):
    """(fit_x, fit_y, hold_x, hold_y) from TRAINING features only: a held-out image keeps all its views out
    of the fit (V x N x D, view 0 the centre crop) and is scored on its centre crop. `key` names the config
    key of `fraction` in the error."""
    hold = stratified_holdout(train_labels.cpu(), fraction, seed).to(train_labels.device)
    if not hold.any():
        raise UserError(f"the held-out part of the training set is empty; raise {key} or use more training images")
    fit_x = train_views[:, ~hold].reshape(-1, train_views.shape[-1])
    fit_y = train_labels[~hold].repeat(train_views.shape[0])
    return fit_x, fit_y, train_views[0, hold], train_labels[hold]


def choose_l2(train_views: torch.Tensor, train_labels: torch.Tensor, num_classes: int, grid: list[float],
              holdout_fraction: float, seed: int, max_iter: int, grad_rel_tol: float = GRAD_REL_TOL,
              max_extensions: int = 3) -> L2Search:
    """Pick the L2 weight by held-out top-1 (ties: lower held-out loss) using training features only.

    train_views: V x N x D, view 0 the centre crop; the views of a held-out image are all kept out of the
    fit and the held-out image is scored on its centre crop. The grid is walked from strong to weak
    regularisation, each fit warm-started from the previous one. A choice on the grid's strongest or weakest
    weight says the optimum may lie beyond, so the grid grows by a decade on that side (warm-started from the
    edge's fit), up to max_extensions times. A one-weight grid is a fixed weight, not a search: never extended.
    """
    fit_x, fit_y, hold_x, hold_y = holdout_split(train_views, train_labels, holdout_fraction, seed,
                                                 "fast_probe.holdout_fraction")
    table, models = [], {}

    def try_l2(l2: float, init: LinearModel | None, extension: bool) -> LinearModel:
        model = fit(fit_x, fit_y, num_classes, l2, max_iter, init=init, grad_rel_tol=grad_rel_tol)
        with torch.no_grad():
            logits = model.logits(hold_x)
        table.append({"l2": l2, "holdout_top1": 100.0 * (logits.argmax(1) == hold_y).float().mean().item(),
                      "holdout_loss": F.cross_entropy(logits, hold_y).item(), "extension": extension,
                      "fit": model.report})
        models[l2] = model
        return model

    model = None
    for l2 in sorted(set(grid), reverse=True):
        model = try_l2(l2, model, extension=False)
    extensions = []

    def edge_beyond(l2: float) -> float | None:
        """The next decade past the edge the choice sits on, None when it is inside (or nothing lies beyond)."""
        if len(models) < 2:
            return None
        if l2 == min(models) and l2 > 0:  # L2 = 0 is unregularised: nothing weaker exists
            return float(f"{l2 / 10:.12g}")  # 1e-6, not 1.0000000000000002e-06, in the table
        if l2 == max(models):
            return float(f"{l2 * 10:.12g}")
        return None

    best = best_holdout_row(table)
    while (beyond := edge_beyond(best["l2"])) is not None and len(extensions) < max_extensions:
        try_l2(beyond, models[best["l2"]], extension=True)
        extensions.append(beyond)
        best = best_holdout_row(table)
    return L2Search(best["l2"], table, models[best["l2"]], extensions, edge_beyond(best["l2"]) is not None)
