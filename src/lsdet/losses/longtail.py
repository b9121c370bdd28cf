"""Long-tail losses of 2021 that detection papers compare against: Seesaw, EQLv2, Federated.

Written from the papers' formulas (and, for the choices the papers leave open, the behaviour of
the reference implementations named in each docstring), in this package's layout: logits
[R, C+1] with column 0 = background, multi-hot ``multilabels`` [R, C+1], primary ``labels``
[R]. Each loss states what it needs from the detector through the head contract of
``ClassificationLoss`` (``sigmoid_classifier``, ``classifier_temperature``,
``objectness_logit``, ``default_scoring``).

Statistics accumulated over training (Seesaw's class counts, EQLv2's gradient sums) are
persistent buffers: they are part of the detector's state_dict, hence of every checkpoint, so a
resumed run continues with the statistics an uninterrupted run would have. Under
torch.distributed each step's contribution is summed over the ranks before it is added, so all
ranks hold identical statistics (DDP's buffer broadcast from rank 0 then changes nothing).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from numpy.typing import ArrayLike

from lsdet.losses.classification import ClassificationLoss, _as_tensor


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the processes of the default group (in place), or unchanged
    when torch.distributed is not initialised or has one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class SeesawLoss(ClassificationLoss):
    """Seesaw loss (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR
    2021, Sec. 3), with the normalised linear classifier and the objectness branch of the
    reference implementation (mmdetection ``SeesawLoss`` + ``NormedLinear``).

    Class term, on foreground RoIs only, over the C foreground logits and the primary label i::

        L = -log( e^{z_i} / (sum_{j != i} S_ij e^{z_j} + e^{z_i}) ),   S_ij = M_ij C_ij
        M_ij = (N_j / N_i)^p  if N_j < N_i  else 1        (mitigation, accumulated counts N)
        C_ij = (s_j / s_i)^q  if s_j > s_i  else 1        (compensation, s = softmax(z), no grad)

    Objectness term, on every RoI: 2-way softmax cross-entropy of (foreground, background).
    Both are summed per RoI and averaged over the R RoIs (mmdetection averages each over all
    sampled RoIs and adds them). N counts the primary labels of the sampled RoIs seen so far,
    this step's included (as the reference does, so N_i >= 1 for the current label).

    Logits [R, C+2]: column 0 = the background objectness logit, 1..C the classes, C+1 the
    foreground objectness logit (the detector adds that column when ``objectness_logit``).
    Scores at inference (``softmax_objectness``): softmax over the classes times the
    foreground probability of the objectness pair.

    A multi-label RoI is trained on its primary label like the softmax baseline; the other
    positives are negatives of the class softmax.
    """

    objectness_logit: ClassVar[bool] = True
    classifier_temperature: float | None = 20.0
    default_scoring: ClassVar[str] = "softmax_objectness"

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        *,
        p: float = 0.8,
        q: float = 2.0,
        temperature: float = 20.0,
        eps: float = 1e-2,
    ) -> None:
        super().__init__(num_classes, class_weights)
        if p < 0 or q < 0:
            raise ValueError(f"seesaw loss needs p >= 0 and q >= 0, got p={p}, q={q}")
        if not temperature > 0:
            raise ValueError(
                f"loss.temperature={temperature}: the normalised linear classifier's "
                "temperature must be > 0"
            )
        if not eps > 0:
            raise ValueError(f"loss.eps={eps} must be > 0")
        self.p = float(p)
        self.q = float(q)
        self.classifier_temperature = float(temperature)
        self.eps = float(eps)
        # Primary labels of the sampled RoIs seen so far, column 0 = background.
        self.register_buffer("class_counts", torch.zeros(num_classes, dtype=torch.float64))

    def accumulate(self, labels: torch.Tensor) -> None:
        step = torch.bincount(labels, minlength=self.num_classes).to(self.class_counts)
        self.class_counts += sum_over_ranks(step)

    def seesaw_factors(self, class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """S [R, C] for foreground RoIs: class_logits [R, C] (foreground classes), labels [R]
        in 1..C. Detached (the factors re-weight the loss; they are not trained)."""
        rows = torch.arange(len(labels), device=labels.device)
        own = labels - 1
        factors = torch.ones_like(class_logits)
        if self.p > 0:
            counts = self.class_counts[1:].to(class_logits).clamp(min=1.0)
            ratio = counts[None, :] / counts[own][:, None]  # N_j / N_i
            factors = factors * torch.where(ratio < 1.0, ratio.pow(self.p), 1.0)
        if self.q > 0:
            probs = F.softmax(class_logits.detach(), dim=1)
            ratio = probs / probs[rows, own].clamp(min=self.eps)[:, None]  # s_j / s_i
            factors = factors * torch.where(ratio > 1.0, ratio.pow(self.q), 1.0)
        return factors.detach()

    def forward(self, logits, multilabels, labels):
        self._check(logits, multilabels, labels)
        logits = logits.float()
        self.accumulate(labels)
        class_logits = logits[:, 1:-1]
        objectness = torch.stack([logits[:, -1], logits[:, 0]], dim=1)  # (foreground, background)
        per_roi = F.cross_entropy(objectness, (labels == 0).long(), reduction="none")
        foreground = labels > 0
        if bool(foreground.any()):
            fg_logits = class_logits[foreground]
            fg_labels = labels[foreground]
            factors = self.seesaw_factors(fg_logits, fg_labels)
            negatives = torch.ones_like(factors)
            negatives[torch.arange(len(fg_labels)), fg_labels - 1] = 0.0
            # S_ij e^{z_j} = e^{z_j + log S_ij}: the seesaw denominator is a shifted softmax.
            shifted = fg_logits + negatives * factors.log()
            class_term = F.cross_entropy(shifted, fg_labels - 1, reduction="none")
            per_roi = per_roi.index_add(0, torch.nonzero(foreground).flatten(), class_term)
        return (per_roi * self.row_weights(labels)).mean()


class EQLv2Loss(ClassificationLoss):
    """Equalization loss v2 (Tan et al., "Equalization Loss v2: A New Gradient Balance
    Approach for Long-tailed Object Detection", CVPR 2021, Sec. 3.2), as the reference
    implementation applies it (mmdetection ``EQLv2``).

    Sigmoid cross-entropy per class; the positive and negative gradients of class j are
    re-weighted by

        r_j = f(g_j),   q_j = 1 + alpha (1 - r_j),   f(x) = 1 / (1 + exp(-gamma (x - mu)))

    where g_j is the ratio of the accumulated (re-weighted) positive to negative gradient
    magnitudes |p - y| of class j over the previous iterations. Before the first step g_j =
    ``INITIAL_RATIO`` = 100, as in the authors' code (tztztztztz/eqlv2, ``eqlv2.py``: "a high
    value ... so that the weight for pos gradients and neg gradients are 1"; its first version
    set the weights to 1 explicitly): with the published gamma and mu, f(100) rounds to 1, so
    the first step has r_j = q_j = 1 exactly, and what accumulates from it is the unweighted gradient. Re-weighting a term's
    gradient is weighting the term with a constant, so L = sum_j w_j BCE(z_j, y_j) / R with
    w_j = q_j for positives, r_j for negatives. Targets are the RoI's multi-hot labels (like
    ``bce``; the reference's are one-hot of the primary label).

    Column 0 is the background ("objectness") logit, trained with weight 1 (target 1 on
    background RoIs) and not accumulated; scores at inference (``sigmoid_objectness``):
    sigmoid(z_j) (1 - sigmoid(z_0)), the reference's ``test_with_obj``.
    """

    sigmoid_classifier: ClassVar[bool] = True
    default_scoring: ClassVar[str] = "sigmoid_objectness"
    INITIAL_RATIO: ClassVar[float] = 100.0

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        *,
        gamma: float = 12.0,
        mu: float = 0.8,
        alpha: float = 4.0,
    ) -> None:
        super().__init__(num_classes, class_weights)
        if gamma <= 0 or alpha < 0:
            raise ValueError(
                f"eqlv2 needs gamma > 0 and alpha >= 0, got gamma={gamma}, alpha={alpha}"
            )
        self.gamma = float(gamma)
        self.mu = float(mu)
        self.alpha = float(alpha)
        c = num_classes - 1
        self.register_buffer("pos_grad", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(c, dtype=torch.float64))
        self.register_buffer(
            "pos_neg_ratio", torch.full((c,), self.INITIAL_RATIO, dtype=torch.float64)
        )

    def class_term_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, r) [C]: the weights of the positive and negative terms of each class."""
        r = torch.sigmoid(self.gamma * (self.pos_neg_ratio - self.mu))
        return 1.0 + self.alpha * (1.0 - r), r

    def forward(self, logits, multilabels, labels):
        self._check(logits, multilabels, labels)
        logits = logits.float()
        targets = multilabels.float().clone()
        targets[:, 0] = (labels == 0).float()
        pos_w, neg_w = self.class_term_weights()
        one = torch.ones(1, dtype=pos_w.dtype, device=pos_w.device)
        pos_w = torch.cat([one, pos_w]).to(logits)
        neg_w = torch.cat([one, neg_w]).to(logits)
        weights = targets * pos_w + (1.0 - targets) * neg_w
        weights = weights * self.row_weights(labels)[:, None]
        terms = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        loss = (terms * weights).sum(dim=1).mean()
        self.accumulate(logits.detach(), targets, weights.detach(), bool(torch.isfinite(loss)))
        return loss

    def accumulate(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, finite: bool
    ) -> None:
        grad = (torch.sigmoid(logits) - targets).abs() * weights
        sums = torch.stack(
            [(grad * targets).sum(dim=0)[1:], (grad * (1.0 - targets)).sum(dim=0)[1:]]
        ).to(self.pos_grad)
        if not finite:
            sums.fill_(float("nan"))
        sums = sum_over_ranks(sums)
        if not bool(torch.isfinite(sums).all()):
            # A non-finite loss on any rank (a step the trainer skips) must not poison the
            # statistics for good; after the sum every rank sees it and skips alike.
            return
        self.pos_grad += sums[0]
        self.neg_grad += sums[1]
        self.pos_neg_ratio.copy_(self.pos_grad / (self.neg_grad + 1e-10))


class FederatedLoss(ClassificationLoss):
    """Federated loss (Zhou, Koltun, Krähenbühl, "Probabilistic two-stage detection",
    arXiv:2103.07461, 2021, their LVIS entry; detectron2 ``USE_FED_LOSS``).

    Sigmoid cross-entropy restricted to a per-batch class set S: the classes positive on some
    RoI of the batch plus classes drawn without replacement, with probability proportional to
    (training images of the class)^power, until the set has num_classes_per_batch members (all
    present classes are kept when there are more). Classes outside S get no term at all: on
    federated (not exhaustively labelled) data such as Open Images an absent label is not a
    negative. L = sum_{j in S} BCE(z_j, y_j) / R; column 0 (background) gets no loss, like
    ``bce``. Draws use torch's global generator (saved in checkpoints by the trainer). Scores:
    sigmoid.

    The background counts toward num_classes_per_batch when the batch has a background RoI,
    as in the reference (detectron2 ``FastRCNNOutputLayers.get_fed_loss_classes``, from
    CenterNet2's ``fed_loss.py``), whose set is ``torch.unique(gt_classes)`` with the
    background label among them, topped up by draws that never pick the background: a usual
    batch (it has background RoIs) gets num_classes_per_batch - 1 foreground classes. The
    published numbers come from that rule, so it is kept here. Conventions of this package:
    the present classes are those of the multi-hot labels (a box's expanded parents included;
    the reference has one label per RoI), and a class without training images is never drawn,
    also with power 0, and the draw stops at the classes that can be drawn (the reference's
    ``torch.multinomial`` would fail).
    """

    sigmoid_classifier: ClassVar[bool] = True
    default_scoring: ClassVar[str] = "sigmoid"
    inputs: ClassVar[tuple[str, ...]] = ("image_counts",)

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        *,
        image_counts: ArrayLike | torch.Tensor | None,
        num_classes_per_batch: int = 50,
        power: float = 0.5,
    ) -> None:
        super().__init__(num_classes, class_weights)
        if image_counts is None:
            raise ValueError("the federated loss needs the training image counts per class")
        counts = _as_tensor(image_counts, torch.float64)
        if tuple(counts.shape) != (num_classes - 1,):
            raise ValueError(
                f"image_counts must be [C] = [{num_classes - 1}] (no background), "
                f"got {tuple(counts.shape)}"
            )
        if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
            raise ValueError("image_counts must be finite and >= 0")
        if num_classes_per_batch < 1:
            raise ValueError(f"loss.num_classes_per_batch={num_classes_per_batch} must be >= 1")
        if power < 0:
            raise ValueError(f"loss.power={power} must be >= 0")
        self.num_classes_per_batch = int(num_classes_per_batch)
        self.power = float(power)
        # Classes without training images are never drawn (0^power = 0, also for power 0).
        # The power is taken in float32 like detectron2's get_fed_loss_cls_weights, so that
        # the weights, hence the seeded draws, are the reference's bit for bit.
        draw = torch.where(counts > 0, counts.float().pow(self.power), 0.0)
        self.register_buffer("draw_weights", draw, persistent=False)

    def batch_classes(self, multilabels: torch.Tensor) -> torch.Tensor:
        """[C] bool over the foreground classes: the set S of this batch. A background RoI
        (column 0 of its row positive) takes one place of num_classes_per_batch."""
        chosen = (multilabels[:, 1:] > 0).any(dim=0)
        has_background = bool((multilabels[:, 0] > 0).any())
        missing = self.num_classes_per_batch - int(chosen.sum()) - int(has_background)
        if missing > 0:
            weights = self.draw_weights.to(multilabels.device).masked_fill(chosen, 0.0)
            missing = min(missing, int((weights > 0).sum()))
            if missing > 0:
                drawn = torch.multinomial(weights, missing, replacement=False)
                chosen = chosen.clone()
                chosen[drawn] = True
        return chosen

    def forward(self, logits, multilabels, labels):
        self._check(logits, multilabels, labels)
        chosen = self.batch_classes(multilabels)
        terms = F.binary_cross_entropy_with_logits(
            logits[:, 1:].float(), multilabels[:, 1:].float(), reduction="none"
        )
        per_roi = (terms * chosen.to(terms)).sum(dim=1)
        return (per_roi * self.row_weights(labels)).mean()
