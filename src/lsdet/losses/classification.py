"""RoI classification losses, all called as ``loss_fn(logits, multilabels, labels)``.

Inputs: ``logits`` [R, C+1] (column 0 = background), ``multilabels`` [R, C+1] float multi-hot
(a background RoI is the one-hot row of column 0), ``labels`` [R] int64 primary (most specific)
label, 0 = background. Every loss returns a scalar: the per-RoI loss (summed over classes)
averaged over the R RoIs.

Class weights w [C+1] (``class_weights``; background 1): a loss that sums over a RoI's
positives (concurrent_softmax, dist_ce; softmax has one positive) scales each positive's term
by its class's weight; the sigmoid losses (bce, focal, co_bce), whose terms include every
negative of a RoI, scale the whole RoI's loss by its primary label's weight (the class-balanced
sigmoid loss of Cui et al. 2019).

Sigmoid losses score the C foreground columns only (column 0 gets no loss: a background RoI
is one whose every foreground target is 0) and need the classifier bias initialised to
-log((1 - p) / p), p about 0.01 (``sigmoid_classifier`` = True says so).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from lsdet import ops


def _as_tensor(values: ArrayLike | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(values), dtype=dtype)


class ClassificationLoss(nn.Module):
    """Shared plumbing: the class-weight buffer and input checks."""

    sigmoid_classifier: ClassVar[bool] = False

    def __init__(self, num_classes: int, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"num_classes counts the background and must be >= 2, got {num_classes}"
            )
        self.num_classes = num_classes
        if class_weights is None:
            weights = torch.ones(num_classes)
        else:
            weights = _as_tensor(class_weights, torch.float32)
            if tuple(weights.shape) != (num_classes,):
                raise ValueError(
                    f"class_weights must be [num_classes] = [{num_classes}] (column 0 = "
                    f"background), got shape {tuple(weights.shape)}"
                )
        self.register_buffer("class_weights", weights, persistent=False)

    def _check(self, logits: torch.Tensor, multilabels: torch.Tensor, labels: torch.Tensor):
        expected = (logits.shape[0], self.num_classes)
        if logits.dim() != 2 or tuple(logits.shape) != expected:
            raise ValueError(f"logits must be [R, {self.num_classes}], got {tuple(logits.shape)}")
        if tuple(multilabels.shape) != expected:
            raise ValueError(
                f"multilabels must be [R, {self.num_classes}] like the logits, "
                f"got {tuple(multilabels.shape)}"
            )
        if tuple(labels.shape) != (logits.shape[0],):
            raise ValueError(f"labels must be [R] = [{logits.shape[0]}], got {tuple(labels.shape)}")

    def row_weights(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_weights[labels]


class SoftmaxCrossEntropy(ClassificationLoss):
    """Softmax cross-entropy on the primary label (the baseline); weight w[label] per RoI."""

    def forward(self, logits, multilabels, labels):
        self._check(logits, multilabels, labels)
        per_roi = F.cross_entropy(logits.float(), labels, reduction="none")
        return (per_roi * self.row_weights(labels)).mean()


class ConcurrentSoftmaxLoss(ClassificationLoss):
    """The paper's concurrent softmax (eq. 3) over the multi-hot targets, via ``lsdet.ops``.

    ``rates`` [C+1, C+1] (row/column 0 = background, zero). ``impl`` picks the op's
    implementation ("auto": Triton on CUDA, PyTorch on CPU).
    """

    def __init__(self, num_classes, class_weights=None, *, rates, impl: str = "auto"):
        super().__init__(num_classes, class_weights)
        if rates is None:
            raise ValueError("the concurrent_softmax loss needs the rates matrix [C+1, C+1]")
        rates = _as_tensor(rates, torch.float32)
        if tuple(rates.shape) != (num_classes, num_classes):
            raise ValueError(
                f"rates must be [num_classes, num_classes] = [{num_classes}, {num_classes}] "
                f"(row/col 0 = background), got {tuple(rates.shape)}"
            )
        self.register_buffer("rates", rates, persistent=False)
        self.impl = impl

    def forward(self, logits, multilabels, labels):
        self._check(logits, multilabels, labels)
        return ops.concurrent_softmax_loss(
            logits, multilabels, self.rates, self.class_weights, reduction="mean", impl=self.impl
        )


class BinaryCrossEntropy(ClassificationLoss):
    """Sigmoid BCE over the C foreground columns of the multi-hot, summed over classes."""

    sigmoid_classifier = True

    def per_element(self, logits, multilabels):
        return F.binary_cross_entropy_with_logits(
            logits[:, 1:].float(), multilabels[:, 1:].float(), reduction="none"
        )

    def ignore_mask(self, multilabels: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, logits, multilabels, labels):
        self._check(logits, multilabels, labels)
        terms = self.per_element(logits, multilabels)
        ignore = self.ignore_mask(multilabels)
        if ignore is not None:
            terms = terms.masked_fill(ignore, 0.0)
        return (terms.sum(dim=1) * self.row_weights(labels)).mean()


class FocalLoss(BinaryCrossEntropy):
    """Sigmoid focal loss (Lin et al. 2017): alpha_t (1 - p_t)^gamma BCE, per class."""

    def __init__(self, num_classes, class_weights=None, *, gamma: float = 2.0, alpha: float = 0.25):
        super().__init__(num_classes, class_weights)
        if gamma < 0 or not (alpha < 0 or 0 <= alpha <= 1):
            raise ValueError(
                f"focal loss needs gamma >= 0 and alpha in [0, 1] (or < 0 = off), "
                f"got gamma={gamma}, alpha={alpha}"
            )
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def per_element(self, logits, multilabels):
        return sigmoid_focal_loss(
            logits[:, 1:].float(),
            multilabels[:, 1:].float(),
            alpha=self.alpha,
            gamma=self.gamma,
            reduction="none",
        )


class CoOccurrenceBCE(BinaryCrossEntropy):
    """Co-BCE (PFDet, arXiv 1809.00778): BCE that ignores the negative term of class j for a
    RoI with a positive class k when j is an ancestor of k or j co-occurs with k often
    (rates[k, j] >= cooccur_threshold): such a j is likely present but unannotated.

    ``ancestors`` [C, C] bool over mids (ancestors[k, j]: j is a strict ancestor of k; the
    Hierarchy's matrix, no background) and/or ``rates`` [C+1, C+1] (row/col 0 = background).
    """

    def __init__(
        self,
        num_classes,
        class_weights=None,
        *,
        ancestors=None,
        rates=None,
        cooccur_threshold: float = 0.1,
        ignore_ancestors: bool = True,
    ):
        super().__init__(num_classes, class_weights)
        c = num_classes - 1
        ignore = torch.zeros(c, c, dtype=torch.bool)
        if ignore_ancestors:
            if ancestors is None:
                raise ValueError("co_bce with ignore_ancestors=True needs the ancestors matrix")
            ancestors = _as_tensor(ancestors, torch.bool)
            if tuple(ancestors.shape) != (c, c):
                raise ValueError(
                    f"ancestors must be [C, C] = [{c}, {c}] over the classes (no background), "
                    f"got {tuple(ancestors.shape)}"
                )
            ignore |= ancestors
        if cooccur_threshold is not None:
            if rates is None:
                raise ValueError("co_bce with a cooccur_threshold needs the rates matrix")
            rates = _as_tensor(rates, torch.float32)
            if tuple(rates.shape) != (num_classes, num_classes):
                raise ValueError(
                    f"rates must be [num_classes, num_classes] = [{num_classes}, {num_classes}] "
                    f"(row/col 0 = background), got {tuple(rates.shape)}"
                )
            ignore |= rates[1:, 1:] >= cooccur_threshold
        ignore.fill_diagonal_(False)
        # ignore_matrix[k, j]: a positive k makes the negative term of j ignored.
        self.register_buffer("ignore_matrix", ignore, persistent=False)

    def ignore_mask(self, multilabels):
        positive = multilabels[:, 1:] > 0
        hit = positive.float() @ self.ignore_matrix.float()
        return (hit > 0) & ~positive


class DistributedCrossEntropy(ClassificationLoss):
    """Softmax cross-entropy with target 1/k on each of a RoI's k positives (Mahajan et al.
    2018); each positive's term scaled by its class weight."""

    def forward(self, logits, multilabels, labels):
        self._check(logits, multilabels, labels)
        positive = (multilabels > 0).float()
        targets = positive / positive.sum(dim=1, keepdim=True).clamp(min=1.0)
        log_probs = F.log_softmax(logits.float(), dim=1)
        terms = torch.where(targets > 0, targets * self.class_weights * log_probs, 0.0)
        per_roi = -terms.sum(dim=1)
        return per_roi.mean()


LOSSES: dict[str, type[ClassificationLoss]] = {
    "softmax": SoftmaxCrossEntropy,
    "concurrent_softmax": ConcurrentSoftmaxLoss,
    "bce": BinaryCrossEntropy,
    "focal": FocalLoss,
    "co_bce": CoOccurrenceBCE,
    "dist_ce": DistributedCrossEntropy,
}
