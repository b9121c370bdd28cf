"""Tests of lsdet.sampling: the soft-balance distribution and the samplers."""

import numpy as np
import pytest

from lsdet.sampling import soft_balance_probs


def test_soft_balance_probs_by_hand():
    counts = np.array([1, 4, 16])
    # lam = 0.5: weights n^0.5 = 1, 2, 4 -> / 7
    np.testing.assert_allclose(soft_balance_probs(counts, 0.5), [1 / 7, 2 / 7, 4 / 7])
    # lam = 1.5: weights n^-0.5 = 1, 1/2, 1/4 -> / 1.75
    np.testing.assert_allclose(soft_balance_probs(counts, 1.5), [4 / 7, 2 / 7, 1 / 7])


def test_soft_balance_probs_matches_paper_formula():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 10_000, size=50)
    p_n = counts / counts.sum()
    p_a = np.full(50, 1 / 50)
    for lam in (0.0, 0.3, 0.5, 0.7, 1.0, 1.5):
        p_s = p_a**lam * p_n ** (1 - lam)
        expected = p_s / p_s.sum()
        got = soft_balance_probs(counts, lam)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_soft_balance_probs_limits_and_empty_classes():
    counts = np.array([0, 3, 0, 9, 12])
    np.testing.assert_allclose(soft_balance_probs(counts, 0.0), counts / counts.sum())
    np.testing.assert_allclose(soft_balance_probs(counts, 1.0), [0, 1 / 3, 0, 1 / 3, 1 / 3])
    for lam in (0.0, 0.7, 1.5):
        p = soft_balance_probs(counts, lam)
        assert p[0] == 0 and p[2] == 0
        assert p.sum() == pytest.approx(1.0)


def test_soft_balance_probs_extreme_counts_do_not_overflow():
    p = soft_balance_probs(np.array([1, 10**12]), 5.0)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [1 / (1 + 1e-48), 1e-48 / (1 + 1e-48)])


@pytest.mark.parametrize(
    ("counts", "lam", "match"),
    [
        ([1, -2], 0.5, "class 1"),
        ([1, np.nan], 0.5, "class 1"),
        ([[1, 2]], 0.5, "1-D"),
        ([0, 0], 0.5, "all zero"),
        ([1, 2], -0.1, "lam"),
    ],
)
def test_soft_balance_probs_rejects_bad_input(counts, lam, match):
    with pytest.raises(ValueError, match=match):
        soft_balance_probs(counts, lam)
