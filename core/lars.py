"""LARS as the official linear probe uses it (apex LARC, clip off): SGD whose per-parameter step is
rescaled by the trust ratio

    ratio = eta * |w| / (|g| + wd * |w| + eps)

applied to the gradient (weight decay included) before momentum. A parameter whose weight norm or
gradient norm is 0 (a bias at init, an unused row) takes its plain gradient, without the decay term,
as in LARC. Unclipped, the lr then sets the
step relative to the weight's size instead of the gradient's: lr * eta * |w| per step.
"""

from __future__ import annotations

import torch

EPS = 1e-8  # LARC's guard against |g| + wd*|w| == 0; irrelevant when both norms are positive


def trust_ratio(weight: torch.Tensor, grad: torch.Tensor, trust_coefficient: float, weight_decay: float = 0.0,
                eps: float = EPS) -> torch.Tensor:
    """eta*|w|/(|g| + wd*|w| + eps); a zero weight norm (e.g. a bias at init) or zero grad gives 1."""
    w_norm = weight.norm()
    g_norm = grad.norm()
    ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))


class LARS(torch.optim.Optimizer):
    """SGD with momentum (torch's convention: buf = m*buf + d, w -= lr*buf) on trust-scaled gradients."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"bad LARS hyper-parameters lr={lr} momentum={momentum} wd={weight_decay} "
                             f"trust={trust_coefficient}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.norm() > 0 and p.grad.norm() > 0:
                    ratio = trust_ratio(p, p.grad, group["trust_coefficient"], group["weight_decay"])
                    d = p.grad.add(p, alpha=group["weight_decay"]).mul_(ratio)
                else:
                    d = p.grad
                if group["momentum"]:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                    d = state["momentum_buffer"]
                p.add_(d, alpha=-group["lr"])
        return loss
