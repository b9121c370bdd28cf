"""Class-sampling distributions of the paper's soft-balance method (eq. 6-8)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def soft_balance_probs(image_counts: ArrayLike, lam: float) -> np.ndarray:
    """P_s* of the paper's eq. 6-8: the soft-balance class-sampling distribution.

    With n_i the number of training images containing class i, P_n(i) = n_i / sum(n) and
    P_a(i) = 1 / C:

        P_s(i) = P_a(i)^lam * P_n(i)^(1 - lam),    P_s*(i) = P_s(i) / sum_j P_s(j).

    lam = 0 gives P_n (non-balance), lam = 1 the uniform distribution over the classes that
    have images (class-aware sampling), lam > 1 over-samples rare classes further. Classes
    with n_i = 0 get probability 0 (they cannot be drawn: they have no image). Because P_a is
    a constant it cancels, so P_s*(i) is proportional to n_i^(1 - lam); that is how it is
    computed here, in log space so that extreme counts and lam do not overflow.

    Args:
        image_counts: [C] non-negative image counts per class.
        lam: the balance exponent lambda >= 0.

    Returns:
        float64 [C], summing to 1.
    """
    counts = np.asarray(image_counts, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(f"image_counts must be a 1-D array [C], got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        bad = int(np.flatnonzero(~np.isfinite(counts) | (counts < 0))[0])
        raise ValueError(f"image_counts must be finite and >= 0; class {bad} has {counts[bad]!r}")
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    present = counts > 0
    if not np.any(present):
        raise ValueError("image_counts are all zero: no class has an image to sample")
    log_weights = np.full(counts.shape, -np.inf)
    log_weights[present] = (1.0 - lam) * np.log(counts[present])
    log_weights -= log_weights[present].max()
    probs = np.exp(log_weights)
    return probs / probs.sum()
