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
    """Shared plumbing: the class-weight buffer and input checks.

    Class attributes say what a loss needs from the training data and the detector:
    ``inputs`` (what ``build_loss`` passes besides the class weights: "rates", "ancestors",
    "image_counts"), ``sigmoid_classifier`` (prior-probability bias init),
    ``classifier_temperature`` (None: a linear classifier; a number: a normalised (cosine)
    classifier with that temperature), ``objectness_logit`` (the detector adds a foreground
    objectness logit: logits [R, C+2]) and ``default_scoring`` (``model.scoring=auto``).
    """

    inputs: ClassVar[tuple[str, ...]] = ()
    sigmoid_classifier: ClassVar[bool] = False
    classifier_temperature: float | None = None
    objectness_logit: ClassVar[bool] = False
    default_scoring: ClassVar[str] = "softmax"

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

    @property
    def num_logits(self) -> int:
        """Columns of the logits this loss takes (C + 1, or C + 2 with an objectness logit)."""
        return self.num_classes

    def _check(self, logits: torch.Tensor, multilabels: torch.Tensor, labels: torch.Tensor):
        if logits.dim() != 2 or tuple(logits.shape) != (logits.shape[0], self.num_logits):
            raise ValueError(f"logits must be [R, {self.num_logits}], got {tuple(logits.shape)}")
        expected = (logits.shape[0], self.num_classes)
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
    implementation ("auto": Triton on CUDA, PyTorch on CPU). Scored with eq. 5.
    """

    inputs: ClassVar[tuple[str, ...]] = ("rates",)
    default_scoring: ClassVar[str] = "concurrent_softmax"

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

    sigmoid_classifier: ClassVar[bool] = True
    default_scoring: ClassVar[str] = "sigmoid"

    def per_element(self, logits, multilabels):
        return F.binary_cross_entropy_with_logits(
            logits[:, 1:].float(), multilabels[:, 1:].float(), reduction="none"
        )

    def ignore_mask(self, multilabels: torch.Tensor) -> torch.Tensor | None:
        """[R, C] bool: the terms that get no loss (None: none)."""
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
    """Co-BCE (PFDet, Akiba et al., arXiv:1809.00778, Sec. 3): BCE without the negative terms
    of classes that are likely present but unannotated on a RoI:

    - ``ignore_descendants``: the descendants of a RoI's parent-only label (a positive class
      none of whose descendants is positive: the object may be any of them);
    - ``cooccur_threshold``: the frequent co-occurrence partners j of a positive class k,
      rates[k, j] >= the threshold, hierarchy pairs excluded (an ancestor of a positive is
      itself positive after label expansion, and a descendant is covered by the first rule;
      the rates matrix gives hierarchy pairs ``rates.hierarchy_rate``, 1 by default, which
      would otherwise drop every sibling negative of a leaf under its expanded parent).

    ``ancestors`` [C, C] bool over mids (ancestors[k, j]: j is a strict ancestor of k; the
    Hierarchy's matrix, no background) and ``rates`` [C+1, C+1] (row/col 0 = background).
    """

    inputs: ClassVar[tuple[str, ...]] = ("rates", "ancestors")

    def __init__(
        self,
        num_classes,
        class_weights=None,
        *,
        ancestors=None,
        rates=None,
        cooccur_threshold: float | None = 0.1,
        ignore_descendants: bool = True,
    ):
        super().__init__(num_classes, class_weights)
        c = num_classes - 1
        if ancestors is None:
            raise ValueError("co_bce needs the class hierarchy's ancestors matrix [C, C]")
        ancestors = _as_tensor(ancestors, torch.bool)
        if tuple(ancestors.shape) != (c, c):
            raise ValueError(
                f"ancestors must be [C, C] = [{c}, {c}] over the classes (no background), "
                f"got {tuple(ancestors.shape)}"
            )
        partners = torch.zeros(c, c, dtype=torch.bool)
        if cooccur_threshold is not None:
            if rates is None:
                raise ValueError("co_bce with a cooccur_threshold needs the rates matrix")
            rates = _as_tensor(rates, torch.float32)
            if tuple(rates.shape) != (num_classes, num_classes):
                raise ValueError(
                    f"rates must be [num_classes, num_classes] = [{num_classes}, {num_classes}] "
                    f"(row/col 0 = background), got {tuple(rates.shape)}"
                )
            partners = rates[1:, 1:] >= cooccur_threshold
            partners &= ~(ancestors | ancestors.T)
            partners.fill_diagonal_(False)
        self.ignore_descendants = bool(ignore_descendants)
        # descendants[k, j]: j is below k; partners[k, j]: a positive k ignores j's negative.
        self.register_buffer("descendants", ancestors.T.contiguous(), persistent=False)
        self.register_buffer("partners", partners, persistent=False)

    def ignore_mask(self, multilabels):
        positive = multilabels[:, 1:] > 0
        pos = positive.float()
        ignore = (pos @ self.partners.float()) > 0
        if self.ignore_descendants:
            below = self.descendants.float()
            has_positive_below = (pos @ below.T) > 0
            parent_only = positive & ~has_positive_below & self.descendants.any(dim=1)
            ignore |= (parent_only.float() @ below) > 0
        return ignore & ~positive


class DistributedCrossEntropy(ClassificationLoss):
    """Softmax cross-entropy with target 1/k on each of a RoI's k positives (Mahajan et al.
    2018); each positive's term scaled by its class weight."""

    default_scoring: ClassVar[str] = "softmax"

    def forward(self, logits, multilabels, labels):
        self._check(logits, multilabels, labels)
        positive = (multilabels > 0).float()
        targets = positive / positive.sum(dim=1, keepdim=True).clamp(min=1.0)
        log_probs = F.log_softmax(logits.float(), dim=1)
        terms = torch.where(targets > 0, targets * self.class_weights * log_probs, 0.0)
        per_roi = -terms.sum(dim=1)
        return per_roi.mean()
