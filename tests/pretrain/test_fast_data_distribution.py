"""The fast path's random parameters follow the official recipe's distributions, checked against
torchvision's own samplers and the recipe's rates on 20000 seeded draws (deterministic: no flakes).

Thresholds: two-sample / one-sample Kolmogorov-Smirnov and chi-square tests must give p > 1e-3;
Bernoulli rates must lie within 4.5 standard errors (sqrt(p(1-p)/n) = 0.0028 at p=0.8, n=20000).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision import transforms

from pretrain.fast_data import ViewSampler
from pretrain.view_batch import P

N, W, H = 20000, 500, 375
P_MIN = 1e-3


@pytest.fixture(scope="module")
def draws():
    torch.default_generator.manual_seed(12345)
    sampler = ViewSampler(min_scale=0.2, blur=True)
    boxes, params = zip(*(sampler.draw(W, H) for _ in range(N)))
    return np.array(boxes, dtype=float), np.array(params)


def _rate_ok(values, p):
    return abs(values.mean() - p) <= 4.5 * math.sqrt(p * (1 - p) / len(values))


def test_crop_scale_and_aspect_match_torchvision(draws):
    boxes, _ = draws
    torch.default_generator.manual_seed(999)  # an independent sample straight from torchvision
    rrc = transforms.RandomResizedCrop(224, scale=(0.2, 1.0))
    ref = np.array([rrc.get_params(torch.empty(1, H, W), rrc.scale, rrc.ratio) for _ in range(N)], dtype=float)
    for b in (boxes, ref):
        assert (b[:, 2] <= H).all() and (b[:, 3] <= W).all() and (b[:, :2] >= 0).all()
    area = lambda b: b[:, 2] * b[:, 3] / (W * H)  # noqa: E731
    log_aspect = lambda b: np.log(b[:, 3] / b[:, 2])  # noqa: E731
    assert stats.ks_2samp(area(boxes), area(ref)).pvalue > P_MIN
    assert stats.ks_2samp(log_aspect(boxes), log_aspect(ref)).pvalue > P_MIN
    assert stats.ks_2samp(boxes[:, 0] / H, ref[:, 0] / H).pvalue > P_MIN  # top-left position too
    assert 0.19 <= area(boxes).min() and area(boxes).max() <= 1.0
    assert np.abs(log_aspect(boxes)).max() <= math.log(4 / 3) + 0.02  # rounding to whole pixels


def test_rates_of_jitter_grayscale_blur_flip(draws):
    _, v = draws
    for name, p in (("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("flip", 0.5)):
        assert _rate_ok(v[:, P[name]], p), (name, v[:, P[name]].mean())
    # independence of the switches (official: separate RandomApply / Random* ops)
    both = v[:, P["jitter"]] * v[:, P["gray"]]
    assert _rate_ok(both, 0.16)


def test_jitter_factors_order_and_blur_sigma(draws):
    _, v = draws
    on = v[:, P["jitter"]] == 1
    for name, lo, hi in (("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4), ("saturation", 0.6, 1.4), ("hue", -0.1, 0.1)):
        x = v[on, P[name]]
        assert lo <= x.min() and x.max() <= hi
        assert stats.kstest(x, stats.uniform(lo, hi - lo).cdf).pvalue > P_MIN, name
        assert (v[~on, P[name]] == (0.0 if name == "hue" else 1.0)).all()  # identity when not applied
    orders = v[on][:, P["order0"]:P["order3"] + 1].astype(int)
    assert (np.sort(orders, 1) == np.arange(4)).all()  # each a permutation
    codes = orders @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > P_MIN  # all 24 orders equally likely
    sigma = v[v[:, P["blur"]] == 1, P["sigma"]]
    assert stats.kstest(sigma, stats.uniform(0.1, 1.9).cdf).pvalue > P_MIN


def test_no_blur_recipe_never_blurs():
    torch.default_generator.manual_seed(0)
    sampler = ViewSampler(min_scale=0.08, blur=False)
    v = np.array([sampler.draw(32, 32)[1] for _ in range(2000)])
    assert (v[:, P["blur"]] == 0).all() and _rate_ok(v[:, P["flip"]], 0.5)
