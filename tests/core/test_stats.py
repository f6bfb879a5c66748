"""core.stats against scipy on fixed numbers, and bootstrap cases with known answers."""

import math

import pytest
from scipy import stats

from core.stats import (ONE_TRIAL, decode_correct, encode_correct, is_tie, mean_std, paired_bootstrap,
                        resolvable_difference, welch)


def test_mean_and_sample_std():
    mean, std = mean_std([56.0, 57.0, 58.0, 59.0])
    assert mean == 57.5 and std == pytest.approx(stats.tstd([56.0, 57.0, 58.0, 59.0]))
    assert mean_std([42.0]) == (42.0, None)


@pytest.mark.parametrize("a, b", [
    ([56.4, 56.1, 56.7, 56.2, 56.5], [55.9, 56.3, 55.6, 55.8]),   # VOC-like trials, unequal n
    ([33.1, 34.9, 32.0], [30.2, 30.3, 30.25, 30.4, 30.1, 30.3]),  # very unequal variances
])
def test_welch_matches_scipy(a, b):
    out = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert out["df"] == pytest.approx(ref.df, rel=1e-12)
    se = (out["diff"]) / ref.statistic
    half = stats.t.ppf(0.975, ref.df) * se
    assert out["interval"] == pytest.approx((out["diff"] - half, out["diff"] + half), rel=1e-12)
    lo, hi = ref.confidence_interval(0.95)  # scipy's own Welch interval
    assert out["interval"] == pytest.approx((lo, hi), rel=1e-10)
    assert out["tie"] == (lo <= 0 <= hi)


def test_a_tie_is_marked_as_one_and_one_trial_has_no_error_bar():
    tie = welch([56.0, 56.6, 56.2], [56.1, 56.5, 56.3])
    assert tie["interval"][0] < 0 < tie["interval"][1] and tie["tie"] is True and is_tie(tie["interval"])
    clear = welch([60.0, 60.2, 60.1], [50.0, 50.3, 50.1])
    assert clear["tie"] is False and clear["interval"][0] > 0
    single = welch([56.0], [50.0, 51.0])
    assert single["interval"] is None and single["tie"] is None and single["note"] == ONE_TRIAL
    assert single["diff"] == pytest.approx(5.5)


def test_paired_bootstrap_known_answers():
    same = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    out = paired_bootstrap(same, same, samples=500, seed=3)
    assert out["diff"] == 0.0 and out["interval"] == (0.0, 0.0) and out["tie"] is True
    out = paired_bootstrap([1] * 40, [0] * 40, samples=500)
    assert out["diff"] == 100.0 and out["interval"] == (100.0, 100.0) and out["tie"] is False
    # 60 of 200 images only a gets right, 20 only b: +20 points; the interval is seeded and excludes 0
    a = [1] * 60 + [0] * 20 + [1] * 50 + [0] * 70
    b = [0] * 60 + [1] * 20 + [1] * 50 + [0] * 70
    out = paired_bootstrap(a, b, samples=4000, seed=0)
    assert out["diff"] == pytest.approx(20.0) and 0 < out["interval"][0] < 20 < out["interval"][1]
    # normal approximation of the paired difference: se = sqrt(var(d) / n)
    d = [x - y for x, y in zip(a, b)]
    m = sum(d) / len(d)
    se = 100 * math.sqrt(sum((x - m) ** 2 for x in d) / len(d) / len(d))
    assert out["interval"][0] == pytest.approx(20 - 1.96 * se, abs=1.0)
    assert out == paired_bootstrap(a, b, samples=4000, seed=0)  # seeded


def test_resolution_and_correctness_encoding():
    assert resolvable_difference(200) == 0.5 and resolvable_difference(50000) == pytest.approx(0.002)
    assert encode_correct([True, False, 1, 0]) == "1010" and decode_correct("1010") == [1, 0, 1, 0]
    with pytest.raises(ValueError):
        decode_correct("102")
