"""A multi-label box head for torchvision's Faster R-CNN.

Training: each sampled proposal inherits the multi-hot label set of the object it matched
(``targets[i]["multilabels"]``, [num_objects, C] over the hierarchy's classes), background
proposals get the one-hot background row; the classification loss is any loss of
``lsdet.losses`` called as ``loss_fn(logits [R, C+1], multilabels [R, C+1], labels [R])``
(logits [R, C+2] for a loss with an objectness logit: Seesaw).

Inference: class scores [R, C+1] from the logits by the training loss's head contract
(``ClassificationLoss.scores``: the scorer ``scoring`` selects, then the parents as
``parent_scores`` says). Box regression is class-agnostic
by default: parent classes are rarely anyone's primary label, so class-specific regressors
for them would stay untrained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from lsdet.losses import ClassificationLoss
from lsdet.losses.scoring import check_parent_scores, check_scoring_key


def prior_bias(prior_prob: float) -> float:
    """The classifier bias b with sigmoid(b) = prior_prob: -log((1 - p) / p)."""
    if not 0 < prior_prob < 1:
        raise ValueError(f"model.prior_prob must be in (0, 1), got {prior_prob}")
    return -math.log((1 - prior_prob) / prior_prob)


class NormalizedLinear(nn.Linear):
    """Cosine classifier: temperature x cos(x, w_k) + b_k (the normalised linear layer that
    Seesaw loss is paired with: Wang et al., CVPR 2021; mmdetection ``NormedLinear``).

    The temperature is a buffer, so a checkpoint restores the value it was trained with.
    """

    def __init__(self, in_features: int, out_features: int, temperature: float) -> None:
        super().__init__(in_features, out_features)
        if not temperature > 0:
            raise ValueError(
                f"the normalised classifier's temperature must be > 0, got {temperature}"
            )
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        nn.init.normal_(self.weight, std=0.01)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(
            F.normalize(x, dim=1, eps=1e-6), F.normalize(self.weight, dim=1, eps=1e-6)
        )
        return self.temperature * cosine + self.bias


class MultiLabelBoxPredictor(nn.Module):
    """Class logits [R, C+1] (or [R, C+2] with ``objectness_logit``) and box deltas [R, 4]
    (class-agnostic) or [R, 4 (C+1)].

    ``temperature``: None = a linear classifier, a number = ``NormalizedLinear`` with it.
    ``objectness_logit``: add a foreground objectness logit as the last column (Seesaw's
    objectness pair is (that column, column 0)); it is a separate one-row layer of the same
    kind, so ``cls_score`` keeps its [C+1] rows.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        class_agnostic_box_reg: bool = True,
        prior_prob: float | None = None,
        temperature: float | None = None,
        objectness_logit: bool = False,
    ) -> None:
        super().__init__()

        def classifier(rows: int) -> nn.Linear:
            if temperature is None:
                return nn.Linear(in_channels, rows)
            return NormalizedLinear(in_channels, rows, temperature)

        self.cls_score = classifier(num_classes)
        self.objectness_score = classifier(1) if objectness_logit else None
        self.bbox_pred = nn.Linear(in_channels, 4 if class_agnostic_box_reg else 4 * num_classes)
        self.class_agnostic_box_reg = class_agnostic_box_reg
        if prior_prob is not None:
            # Sigmoid losses start every class at probability prior_prob; from the default
            # bias 0 (p = 0.5 for hundreds of negatives) they diverge.
            nn.init.constant_(self.cls_score.bias, prior_bias(prior_prob))

    @property
    def objectness_logit(self) -> bool:
        return self.objectness_score is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        logits = self.cls_score(x)
        if self.objectness_score is not None:
            logits = torch.cat([logits, self.objectness_score(x)], dim=1)
        return logits, self.bbox_pred(x)


def best_after_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float,
    max_kept: int,
) -> torch.Tensor:
    """Indices of the ``max_kept`` best boxes that class-wise NMS keeps, best first: what
    ``batched_nms(boxes, scores, labels, iou_threshold)[:max_kept]`` returns (up to the order
    of equal scores). Whether NMS keeps a box depends only on the higher-scoring boxes of its
    class, so NMS over the best-scoring candidates decides them exactly; the candidates grow
    until ``max_kept`` survive. At score threshold 0 every (proposal, class) pair is a
    candidate, and most of them are never looked at."""
    order = scores.argsort(descending=True)
    num_candidates = min(len(order), 4 * max_kept)
    while True:
        candidates = order[:num_candidates]
        keep = box_ops.batched_nms(
            boxes[candidates], scores[candidates], labels[candidates], iou_threshold
        )
        if len(keep) >= max_kept or num_candidates == len(order):
            return candidates[keep[:max_kept]]
        num_candidates = min(len(order), 4 * num_candidates)


def check_scoring(scoring: str, box_predictor: nn.Module) -> None:
    """A clear error when ``scoring`` cannot read the predictor's logits: the objectness
    scoring of Seesaw needs its objectness column, and the others cannot use it."""
    check_scoring_key(scoring)
    has_objectness = bool(getattr(box_predictor, "objectness_logit", False))
    if has_objectness and scoring != "softmax_objectness":
        raise ValueError(
            f"model.scoring={scoring}: this detector was trained with an objectness logit "
            "(loss=seesaw) and is scored with model.scoring=softmax_objectness"
        )
    if scoring == "softmax_objectness" and not has_objectness:
        raise ValueError(
            "model.scoring=softmax_objectness needs a detector with an objectness logit "
            "(trained with loss=seesaw)"
        )


class MultiLabelRoIHeads(RoIHeads):
    """torchvision RoIHeads (boxes only) with multi-hot targets and a pluggable loss.

    ``head_contract`` is the training loss's class (``lsdet.losses``): it scores the logits
    (``scores``) with the scorer ``scoring`` selects. ``loss_fn`` is the loss module (a
    placeholder when the detector is built for inference)."""

    def __init__(
        self,
        *args,
        loss_fn: nn.Module,
        num_classes: int,
        head_contract: type[ClassificationLoss],
        scoring: str = "softmax",
        parent_scores: str = "max_descendants",
        rates: torch.Tensor | None = None,
        descendants: torch.Tensor | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_parent_scores(parent_scores)
        check_scoring(scoring, self.box_predictor)
        self.loss_fn = loss_fn
        self.head_contract = head_contract
        self.scoring = scoring
        self.parent_scores = parent_scores
        num_fg = num_classes - 1
        if rates is None:
            rates = torch.zeros(num_classes, num_classes)
        if tuple(rates.shape) != (num_classes, num_classes):
            raise ValueError(
                f"rates must be [{num_classes}, {num_classes}], got {tuple(rates.shape)}"
            )
        if descendants is None:
            descendants = torch.zeros(num_fg, num_fg, dtype=torch.bool)
        # Buffers: saved with the checkpoint so that prediction needs no training data.
        self.register_buffer("rates", rates.float().clone())
        self.register_buffer("descendants", descendants.bool().clone())

    def multilabel_targets(
        self,
        matched_idxs: list[torch.Tensor],
        labels: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """[R, C+1] multi-hot per sampled proposal: the matched object's label set for
        foreground rows, the background one-hot for the others."""
        rows = []
        for idxs, lab, target in zip(matched_idxs, labels, targets, strict=True):
            gt_multi = target["multilabels"].to(torch.float32)
            num_fg = gt_multi.shape[1]
            if gt_multi.shape[0] == 0:
                gt_multi = gt_multi.new_zeros(1, num_fg)
            multi = torch.cat([gt_multi.new_zeros(len(idxs), 1), gt_multi[idxs]], dim=1)
            foreground = lab > 0
            multi[~foreground] = 0
            multi[~foreground, 0] = 1
            # The primary label is always among the positives (it may be a parent).
            multi[foreground, lab[foreground]] = 1
            rows.append(multi)
        return torch.cat(rows, dim=0)

    def box_regression_loss(
        self, box_regression: torch.Tensor, labels: torch.Tensor, regression_targets: torch.Tensor
    ) -> torch.Tensor:
        """Smooth-L1 on the foreground rows, normalised by all sampled rows (torchvision's)."""
        positive = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(box_regression.shape[0], -1, 4)
        columns = torch.zeros_like(labels[positive]) if deltas.shape[1] == 1 else labels[positive]
        loss = F.smooth_l1_loss(
            deltas[positive, columns], regression_targets[positive], beta=1 / 9, reduction="sum"
        )
        return loss / max(labels.numel(), 1)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            for i, t in enumerate(targets):
                if "multilabels" not in t:
                    raise KeyError(f"target {i} has no 'multilabels' [num_objects, C] entry")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        if self.training:
            multilabels = self.multilabel_targets(matched_idxs, labels, targets)
            labels_flat = torch.cat(labels, dim=0)
            regression_flat = torch.cat(regression_targets, dim=0)
            losses = {
                "loss_classifier": self.loss_fn(class_logits.float(), multilabels, labels_flat),
                "loss_box_reg": self.box_regression_loss(
                    box_regression.float(), labels_flat, regression_flat
                ),
            }
            return [], losses

        boxes, scores, labels = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes
        )
        result = [
            {"boxes": b, "labels": lab, "scores": s}
            for b, s, lab in zip(boxes, scores, labels, strict=True)
        ]
        return result, {}

    def class_scores(self, class_logits: torch.Tensor) -> torch.Tensor:
        """Scores [R, C+1] of the box predictor's logits, parents as ``parent_scores`` says."""
        check_scoring(self.scoring, self.box_predictor)
        return self.head_contract.scores(
            class_logits,
            scoring=self.scoring,
            rates=self.rates,
            descendants=self.descendants,
            parent_scores=self.parent_scores,
        )

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        pred_scores = self.class_scores(class_logits)
        num_classes = pred_scores.shape[-1]
        boxes_per_image = [len(p) for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression.float(), proposals)
        if pred_boxes.shape[1] == 1:
            pred_boxes = pred_boxes.expand(-1, num_classes, -1)

        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(
            pred_boxes.split(boxes_per_image),
            pred_scores.split(boxes_per_image),
            image_shapes,
            strict=True,
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
            # Drop the background column, then one candidate per (proposal, class).
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = best_after_nms(boxes, scores, labels, self.nms_thresh, self.detections_per_img)
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels
