"""Is a difference between two inits real? Mean and sample std, Welch's interval for two sets of
trials, a paired bootstrap over val images for two classifiers, and the resolution of a val set.

Conventions every comparison of the report follows:
  * a difference is a - b in the metric's own unit (percentage points);
  * its 95% interval containing 0 makes the comparison a tie: no winner may be claimed;
  * one trial on either side has no error bar, and the comparison says so instead of an interval.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95
ONE_TRIAL = "one trial: no error bar"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std (n - 1: the unbiased variance for a handful of trials); one value has no std."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to aggregate")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def is_tie(interval) -> bool:
    """A difference whose interval contains 0 is not resolved: neither side wins."""
    return interval is not None and interval[0] <= 0.0 <= interval[1]


def welch(a: list[float], b: list[float], level: float = LEVEL) -> dict:
    """mean(a) - mean(b) with its Welch interval: t quantile at the Welch-Satterthwaite df, unequal
    variances (trials of two inits need not scatter alike). Fewer than 2 values on a side: no interval."""
    ma, sa = mean_std(list(a))
    mb, sb = mean_std(list(b))
    out = {"diff": ma - mb, "n": [len(a), len(b)], "method": "Welch t interval", "level": level}
    if sa is None or sb is None:
        return {**out, "interval": None, "df": None, "tie": None, "note": ONE_TRIAL}
    va, vb = sa * sa / len(a), sb * sb / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:  # every trial of both sides gave the same number: the difference is exact
        interval, df = (out["diff"], out["diff"]), None
    else:
        df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
        half = float(_scipy_stats.t.ppf(0.5 + level / 2, df)) * se
        interval = (out["diff"] - half, out["diff"] + half)
    return {**out, "interval": interval, "df": df, "tie": is_tie(interval), "note": None}


def paired_bootstrap(correct_a, correct_b, samples: int = 10000, seed: int = 0, level: float = LEVEL) -> dict:
    """Top-1 of a minus top-1 of b (percentage points) over the same val images, with the percentile
    interval of a paired bootstrap: images are resampled with replacement, both classifiers keep their
    answer on each. The resampled difference depends only on how many drawn images are +1 (a right, b
    wrong), -1 or 0, so each bootstrap sample is drawn exactly as one multinomial count: O(samples)."""
    a = np.asarray(correct_a, dtype=np.int64)
    b = np.asarray(correct_b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"per-image correctness must be two equal, non-empty lists, got {a.shape} and {b.shape}")
    n = len(a)
    d = a - b
    p = np.array([(d == 1).sum(), (d == -1).sum(), (d == 0).sum()], dtype=np.float64) / n
    counts = np.random.default_rng(seed).multinomial(n, p, size=samples)
    diffs = 100.0 * (counts[:, 0] - counts[:, 1]) / n
    lo, hi = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    interval = (float(lo), float(hi))
    return {"diff": 100.0 * float(d.mean()), "interval": interval, "tie": is_tie(interval), "n": n,
            "method": f"paired bootstrap over val images ({samples} samples, seed {seed})", "level": level,
            "note": None}


def resolvable_difference(num_images: int) -> float:
    """The smallest top-1 change a val set of this size can show: one image, in percentage points."""
    return 100.0 / num_images


def encode_correct(correct) -> str:
    """Per-image correctness (bools or 0/1, val order) as one '0'/'1' string: a compact JSON value."""
    return "".join("1" if bool(c) else "0" for c in correct)


def decode_correct(text: str) -> list[int]:
    if set(text) - {"0", "1"}:
        raise ValueError("per-image correctness must be a string of 0 and 1")
    return [int(c) for c in text]
