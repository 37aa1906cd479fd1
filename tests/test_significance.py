"""Paired statistics (llava.eval.significance) against SciPy's implementations and against known cases."""

from __future__ import annotations

import numpy as np
import pytest

from llava.eval.significance import mcnemar_exact, paired_bootstrap

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (3, 0), (7, 12), (30, 26), (5, 40)])
def test_mcnemar_is_scipys_exact_binomial_test(a_only, b_only):
    both, neither = 50, 20
    a = np.array([True] * a_only + [False] * b_only + [True] * both + [False] * neither)
    b = np.array([False] * a_only + [True] * b_only + [True] * both + [False] * neither)
    m = mcnemar_exact(a, b)
    assert (m.a_only, m.b_only) == (a_only, b_only)
    expected = 1.0 if a_only + b_only == 0 else scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert m.p_value == pytest.approx(expected, rel=1e-9)


def test_one_seed_interval_agrees_with_scipys_paired_bootstrap():
    """With one seed, resampling questions is the paired bootstrap of the mean difference; SciPy's percentile
    interval (its own resampling) must agree to within the Monte Carlo error."""
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.55
    b = rng.random(400) < 0.45
    ours = paired_bootstrap(a, b, reps=20_000, seed=3)
    ref = scipy_stats.bootstrap((a.astype(float), b.astype(float)), lambda x, y, axis: 100 * np.mean(x - y, axis=axis),
                                paired=True, vectorized=True, n_resamples=20_000, method="percentile", random_state=4,
                                confidence_level=0.95)
    assert ours.difference == pytest.approx(100 * (a.mean() - b.mean()))
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.5)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.5)


def test_seed_level_widens_the_interval():
    """Two seeds that disagree about the sign: resampling seeds must carry that into the interval."""
    rng = np.random.default_rng(2)
    base = rng.random((2, 500)) < 0.5
    a = base.copy()
    a[0, :60] = True  # seed 1: A clearly better
    a[1, :60] = False  # seed 2: A clearly worse
    b = base.copy()
    b[:, :60] = ~a[:, :60]  # B the opposite of A on those questions
    per_seed = [paired_bootstrap(a[i], b[i], reps=4000) for i in range(2)]
    assert per_seed[0].low > 0 and per_seed[1].high < 0
    both = paired_bootstrap(a, b, reps=4000)
    assert both.low < 0 < both.high and not both.excludes_zero


def test_identical_settings_and_bad_shapes():
    a = np.random.default_rng(0).random((3, 50)) < 0.5
    same = paired_bootstrap(a, a, reps=100)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap(a, a[:, :40])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap(np.zeros((3, 0)), np.zeros((3, 0)))
    with pytest.raises(ValueError, match="same questions"):
        mcnemar_exact(a[0], a[0, :10])
