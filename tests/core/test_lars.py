"""LARS: the trust ratio and one optimizer step against a hand computation, zero-norm cases included."""

import pytest
import torch

from core.lars import EPS, LARS, trust_ratio


def test_trust_ratio_by_hand():
    w = torch.tensor([3.0, 4.0])  # |w| = 5
    g = torch.tensor([0.0, 0.5])  # |g| = 0.5
    assert trust_ratio(w, g, 0.001).item() == pytest.approx(0.001 * 5 / (0.5 + EPS))
    assert trust_ratio(w, g, 0.001, weight_decay=0.1).item() == pytest.approx(0.001 * 5 / (0.5 + 0.5 + EPS))
    assert trust_ratio(torch.zeros(2), g, 0.001).item() == 1.0  # zero weight norm: plain gradient
    assert trust_ratio(w, torch.zeros(2), 0.001).item() == 1.0  # zero grad norm: plain gradient


def test_steps_by_hand_with_momentum_and_zero_norm_bias():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    b = torch.nn.Parameter(torch.zeros(2))  # |b| = 0: takes the plain gradient, like a bias at init
    opt = LARS([w, b], lr=2.0, momentum=0.9, trust_coefficient=0.01)
    w.grad, b.grad = torch.tensor([0.0, 0.5]), torch.tensor([1.0, -1.0])
    opt.step()
    r1 = 0.01 * 5 / 0.5  # = 0.1
    d1 = torch.tensor([0.0, 0.5]) * r1  # first step: momentum buffer = d
    w1 = torch.tensor([3.0, 4.0]) - 2.0 * d1
    assert torch.allclose(w.data, w1)
    assert torch.allclose(b.data, torch.tensor([-2.0, 2.0]))  # 0 - lr * plain grad
    # second step: now |b| > 0, so the trust ratio applies to b too; momentum accumulates
    w.grad, b.grad = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    opt.step()
    d2 = torch.tensor([1.0, 0.0]) * (0.01 * w1.norm() / 1.0)
    assert torch.allclose(w.data, w1 - 2.0 * (0.9 * d1 + d2))
    rb = 0.01 * torch.tensor([-2.0, 2.0]).norm() / torch.tensor([1.0, 1.0]).norm()
    buf_b = 0.9 * torch.tensor([1.0, -1.0]) + rb * torch.tensor([1.0, 1.0])
    assert torch.allclose(b.data, torch.tensor([-2.0, 2.0]) - 2.0 * buf_b)


def test_lars_update_is_scale_free():
    # Unclipped LARS moves a weight by lr * eta * |w| per step (without momentum), whatever |g| is.
    for scale in (1e-3, 1.0, 1e3):
        w = torch.nn.Parameter(torch.ones(4))
        w.grad = torch.full((4,), scale)
        LARS([w], lr=1.0, momentum=0.0, trust_coefficient=0.001).step()
        assert (torch.ones(4) - w.data).norm().item() == pytest.approx(0.001 * 2.0, rel=1e-4)  # float32 rounding of 1 - w
