"""A detector's detections scored with the Open Images Challenge metric: the one flow from a
detector to its mAP, used by validation during training (``lsdet.inference.validation``) and
by ``lsdet.evaluate checkpoint=...``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from lsdet.engine.distributed import DistInfo
from lsdet.evaluation import ChallengeResult, EvaluationGroundTruth, evaluate
from lsdet.inference.detections import Detections, gather_detections, predict_images


def evaluate_detections(
    gt: EvaluationGroundTruth,
    detections: Detections,
    *,
    group_of_weight: float = 1.0,
    iou_threshold: float = 0.5,
    expand_predictions: bool = False,
    keep_records: bool = False,
) -> ChallengeResult:
    """The metric of ``detections`` against ``gt``. The images the detector could not read
    (``detections.skipped_images``) leave their ground truth out: a missing image must not
    pass for a weaker detector. ``keep_records``: the result holds per-image records
    (``lsdet.evaluation.image_records``)."""
    if detections.skipped_images:
        ids, reasons = zip(*detections.skipped_images, strict=True)
        gt = gt.without_images(list(ids), list(reasons))
    return evaluate(
        gt,
        detections.image_ids,
        detections.class_indices,
        detections.scores,
        detections.boxes,
        group_of_weight=group_of_weight,
        iou_threshold=iou_threshold,
        expand_predictions=expand_predictions,
        keep_records=keep_records,
    )


def detect_and_evaluate(
    model: nn.Module,
    images: Dataset,
    gt: EvaluationGroundTruth,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    indices: Sequence[int] | None = None,
    dist: DistInfo | None = None,
    amp: bool = False,
    progress: bool = True,
    desc: str = "evaluate",
    group_of_weight: float = 1.0,
    iou_threshold: float = 0.5,
    expand_predictions: bool = False,
    keep_records: bool = False,
) -> tuple[Detections, ChallengeResult | None]:
    """Predict the items ``indices`` of ``images`` (this rank's shard under ``dist``), gather
    the ranks' detections and score them against ``gt`` (``evaluate_detections``). Returns
    the detections and the result; the result is None on the ranks other than the main one."""
    detections = predict_images(
        model,
        images,
        device,
        batch_size=batch_size,
        num_workers=num_workers,
        indices=indices,
        amp=amp,
        progress=progress,
        desc=desc,
    )
    if dist is not None:
        detections = gather_detections(detections, dist)
        if not dist.is_main:
            return detections, None
    result = evaluate_detections(
        gt,
        detections,
        group_of_weight=group_of_weight,
        iou_threshold=iou_threshold,
        expand_predictions=expand_predictions,
        keep_records=keep_records,
    )
    return detections, result
