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
from lsdet.config_schema.loss import POSITIVE_TARGETS
from lsdet.losses.scoring import RATE_SCORINGS, check_scoring_key, class_scores


def _as_tensor(values: ArrayLike | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(values), dtype=dtype)


class ClassificationLoss(nn.Module):
    """Shared plumbing (the class-weight buffer, input checks) and the head contract: what a
    loss needs from the training data and the detector, and how its detector is scored.

    Class attributes: ``inputs`` (the training statistics ``build_loss`` passes besides the
    class weights: "rates", "ancestors", "image_counts"), ``sigmoid_classifier``
    (prior-probability bias init), ``classifier_temperature`` (None: a linear classifier; a
    number: a normalised (cosine) classifier with that temperature), ``objectness_logit``
    (the detector adds a foreground objectness logit: ``num_logits`` = C + 2) and
    ``default_scoring`` (the scorer of ``lsdet.losses.scoring`` that ``model.scoring=auto``
    selects). ``scoring_for``, ``needs_rates`` and ``scores`` read them.
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
        return self.num_classes + int(self.objectness_logit)

    @classmethod
    def scoring_for(cls, scoring: str) -> str:
        """The scorer key of ``model.scoring``: ``auto`` -> this loss's ``default_scoring``
        (the paper scores a concurrent-softmax model with eq. 5, Seesaw uses its objectness,
        EQLv2 multiplies by its background sigmoid); any other key selects that scorer."""
        if scoring == "auto":
            return cls.default_scoring
        check_scoring_key(scoring)
        return scoring

    @classmethod
    def needs_rates(cls, scoring: str) -> bool:
        """Whether training with this loss and scoring with ``scoring`` (``model.scoring``)
        use the concurrent rates."""
        return "rates" in cls.inputs or cls.scoring_for(scoring) in RATE_SCORINGS

    @classmethod
    def scores(
        cls,
        logits: torch.Tensor,
        *,
        scoring: str = "auto",
        rates: torch.Tensor | None = None,
        descendants: torch.Tensor | None = None,
        parent_scores: str = "own",
    ) -> torch.Tensor:
        """Class scores [R, C+1] of a detector trained with this loss: the scorer
        ``scoring_for(scoring)`` on the logits, then the parents as ``parent_scores`` says
        (``lsdet.losses.scoring.class_scores``)."""
        return class_scores(
            logits,
            cls.scoring_for(scoring),
            rates=rates,
            descendants=descendants,
            parent_scores=parent_scores,
        )

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
    """The paper's concurrent softmax (Peng et al., CVPR 2020, section 3.1, eq. 3) over each
    RoI's multi-hot targets, via ``lsdet.ops.concurrent_softmax_loss``; scored with eq. 5.

    For a RoI with logits z, positives K and the concurrent rates R:
        s*_i = e^{z_i} / (sum_j (1 - y_j)(1 - r_ij) e^{z_j} + e^{z_i}),   i in K
        L = -sum_{i in K} w_i log s*_i

    The paper leaves open which labels are K and how they combine; both are settings:

    ``positive_targets`` (``loss.positive_targets``), which classes are K:
      * ``expanded`` (default, what lsdet has always done): every label of the object and all
        its ancestors, as the dataset gives them (``OpenImagesDetection`` expands each
        object's labels up the hierarchy, as the Open Images tools expand ground truth). A
        leaf box thus has the leaf and each ancestor as positives, and each ancestor's term
        pushes down every negative outside its own subtree: on a 3-level hierarchy a leaf box
        pushes the other families' classes down about three times as hard as softmax does.
      * ``annotated``: only the object's annotated labels. The targets arrive expanded, so
        they are recovered as the most specific ones: a positive that is an ancestor of
        another positive of the RoI is taken as added by the expansion (an ancestor
        annotated on the same object as its descendant cannot be told apart after
        expansion and is treated alike). The ancestors of the annotated labels are then
        neither positives nor negatives ("ignored": in no denominator, gradient 0): the
        annotation says they are present, so they must not be pushed down. With
        ``rates.hierarchy_rate=1`` (default) r_ij = 1 for the leaf's own term already
        removes them; the ignoring matters with ``rates.hierarchy_rate=0`` (the paper's
        literal wording, under which an ancestor that is a negative would suppress its own
        leaf) and for the other positives of a RoI with labels in two subtrees. Descendants
        of an annotated parent-only label stay negatives, suppressing it as
        ``rates.hierarchy_rate`` says (1: not at all, 0: fully). Needs ``ancestors``. With
        ``rates.hierarchy_rate=0`` eq. 5 at test keeps the ancestors in a leaf's denominator
        while this loss never pushes them down on the leaf's RoIs, so they take the leaf's
        score: that combination trains and scores inconsistently.

    ``positive_reduction`` (``loss.positive_reduction``), how a RoI's terms combine:
    ``sum`` (default; eq. 3 as printed) or ``mean`` (the sum divided by |K|, gradient
    likewise, so a RoI weighs the same whatever its number of positives).

    With one positive per RoI and R = 0, every combination is softmax cross-entropy.

    ``rates`` [C+1, C+1] (row/column 0 = background, zero); ``ancestors`` [C, C] bool over
    the classes (ancestors[k, j]: j is a strict ancestor of k; no background), needed by
    ``annotated``. ``impl`` picks the op's implementation ("auto": Triton on CUDA, PyTorch
    on CPU).
    """

    inputs: ClassVar[tuple[str, ...]] = ("rates", "ancestors")
    default_scoring: ClassVar[str] = "concurrent_softmax"

    def __init__(
        self,
        num_classes,
        class_weights=None,
        *,
        rates,
        ancestors=None,
        impl: str = "auto",
        positive_targets: str = "expanded",
        positive_reduction: str = "sum",
    ):
        super().__init__(num_classes, class_weights)
        if rates is None:
            raise ValueError("the concurrent_softmax loss needs the rates matrix [C+1, C+1]")
        rates = _as_tensor(rates, torch.float32)
        if tuple(rates.shape) != (num_classes, num_classes):
            raise ValueError(
                f"rates must be [num_classes, num_classes] = [{num_classes}, {num_classes}] "
                f"(row/col 0 = background), got {tuple(rates.shape)}"
            )
        if positive_targets not in POSITIVE_TARGETS:
            raise ValueError(
                f"loss.positive_targets={positive_targets!r}; expected one of {POSITIVE_TARGETS}"
            )
        if positive_reduction not in ops.POSITIVE_REDUCTIONS:
            raise ValueError(
                f"loss.positive_reduction={positive_reduction!r}; expected one of "
                f"{ops.POSITIVE_REDUCTIONS}"
            )
        self.register_buffer("rates", rates, persistent=False)
        self.impl = impl
        self.positive_targets = positive_targets
        self.positive_reduction = positive_reduction
        # [C+1, C+1] with the background row/column False; only "annotated" reads it.
        ancestors_full = torch.zeros(num_classes, num_classes, dtype=torch.bool)
        if positive_targets == "annotated":
            c = num_classes - 1
            if ancestors is None:
                raise ValueError(
                    "loss.positive_targets=annotated needs the class hierarchy's ancestors "
                    "matrix [C, C]"
                )
            ancestors = _as_tensor(ancestors, torch.bool)
            if tuple(ancestors.shape) != (c, c):
                raise ValueError(
                    f"ancestors must be [C, C] = [{c}, {c}] over the classes (no background), "
                    f"got {tuple(ancestors.shape)}"
                )
            ancestors_full[1:, 1:] = ancestors
        self.register_buffer("ancestors", ancestors_full, persistent=False)

    def targets_and_ignored(
        self, multilabels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The positives of eq. 3 [R, C+1] bool and the ignored columns (None: none), as
        ``positive_targets`` says."""
        positive = multilabels > 0
        if self.positive_targets == "expanded":
            return positive, None
        # ancestor_of_positive[r, j]: j is a strict ancestor of some positive of row r.
        ancestor_of_positive = (positive.float() @ self.ancestors.float()) > 0
        annotated = positive & ~ancestor_of_positive
        ignored = (annotated.float() @ self.ancestors.float()) > 0
        return annotated, ignored

    def forward(self, logits, multilabels, labels):
        self._check(logits, multilabels, labels)
        targets, ignored = self.targets_and_ignored(multilabels)
        return ops.concurrent_softmax_loss(
            logits,
            targets,
            self.rates,
            self.class_weights,
            reduction="mean",
            impl=self.impl,
            ignore=ignored,
            positive_reduction=self.positive_reduction,
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
