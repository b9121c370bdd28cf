"""Per-class loss weights over the logit columns (column 0 = background, weight 1)."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

from lsdet.config_schema.loss import WEIGHTINGS
from lsdet.sampling.soft_balance import soft_balance_weights


def effective_number_weights(counts: ArrayLike, beta: float) -> torch.Tensor:
    """Class-balanced weights of Cui et al. (CVPR 2019, eq. 4): w_i proportional to
    (1 - beta) / (1 - beta^n_i), n_i = the training boxes (or images) of class i.

    Normalised like the soft-balance weights: their mean over the training samples is 1,
    sum_i n_i w_i = sum_i n_i, so that the foreground keeps its overall share of the loss
    against the background's weight 1. (Cui et al. normalise to mean 1 over the classes, which
    with hundreds of classes and a long tail leaves the average foreground box a small fraction
    of the background's weight.) A class with n_i = 0 gets weight 1 (it has no sample to weight).
    Returns float32 [C] over the given classes.
    """
    n = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    if n.ndim != 1 or np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"counts must be a 1-D array of finite values >= 0, got {n!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    present = n > 0
    if not np.any(present):
        raise ValueError("counts are all zero: no class to weight")
    weights = np.ones_like(n)
    # 1 - beta^n = -expm1(n log beta), exact for beta close to 1 (log1p(-(1-beta)) = log beta).
    log_beta = np.log1p(-(1.0 - beta)) if beta > 0 else -np.inf
    weights[present] = -np.expm1(log_beta) / -np.expm1(n[present] * log_beta)
    weights[present] /= (n[present] * weights[present]).sum() / n[present].sum()
    return torch.as_tensor(weights, dtype=torch.float32)


def class_weights(
    kind: str,
    *,
    image_counts: ArrayLike,
    box_counts: ArrayLike | None = None,
    lam: float = 0.7,
    beta: float = 0.999,
) -> torch.Tensor:
    """Loss weights [C + 1] over the logit columns; column 0 (background) has weight 1.

    Args:
        kind: "none" (all 1), "soft_balance" (P_s*(i) / P_n(i) of the paper's eq. 6-8 with
            lam, ``lsdet.sampling.soft_balance.soft_balance_weights``; mean 1 over the boxes
            when box_counts is given), or "effective_number" ((1 - beta) / (1 - beta^n) of Cui
            et al. 2019 with n = box_counts, or image_counts without them; mean 1 over those
            boxes / images).
        image_counts: [C] training images per class, in mids order.
        box_counts: [C] training boxes per class, or None.
        lam: soft-balance exponent lambda.
        beta: effective-number beta in [0, 1).
    """
    counts = np.asarray(
        image_counts.cpu() if isinstance(image_counts, torch.Tensor) else image_counts
    )
    if kind == "none":
        per_class = torch.ones(counts.shape[0], dtype=torch.float32)
    elif kind == "soft_balance":
        per_class = soft_balance_weights(counts, lam, box_counts=box_counts)
    elif kind == "effective_number":
        per_class = effective_number_weights(counts if box_counts is None else box_counts, beta)
    else:
        raise ValueError(f"class weighting must be one of {WEIGHTINGS}, got {kind!r}")
    return torch.cat([torch.ones(1, dtype=torch.float32), per_class])
