"""The Open Images Challenge metric from the CSV files (ground truth, labels, predictions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lsdet.data import Hierarchy, read_bbox_csv, read_image_labels_csv
from lsdet.data.hierarchy import load_hierarchy
from lsdet.evaluation.core import ChallengeResult, EvaluationGroundTruth, evaluate, expand_rows
from lsdet.evaluation.predictions import read_predictions_csv


def load_ground_truth(
    hierarchy: Hierarchy,
    gt_bbox_csv: str | Path,
    image_labels_csv: str | Path | None = None,
    *,
    expand_gt: bool = True,
    strict: bool = True,
) -> EvaluationGroundTruth:
    """Read the GT boxes and image-level labels once, for any number of evaluations.

    With ``expand_gt`` the boxes and the verified-positive labels are expanded to every
    ancestor and the verified-negative labels to every descendant, as the Open Images tools
    expand the files before the official evaluator runs. MIDs must be classes of
    ``hierarchy`` (the data layer's checks apply; ``strict=False`` skips and counts).
    """
    boxes = read_bbox_csv(gt_bbox_csv, known_mids=hierarchy.mids, strict=strict)
    box_classes = boxes.label_codes.astype(np.int64)
    box_rows = np.arange(len(boxes))
    reports = [boxes.report]
    if expand_gt:
        box_rows, box_classes = expand_rows(box_classes, hierarchy.expand_to_ancestors)
    label_images = np.empty(0, dtype=object)
    label_classes = np.empty(0, dtype=np.int64)
    if image_labels_csv is not None:
        labels = read_image_labels_csv(image_labels_csv, known_mids=hierarchy.mids, strict=strict)
        reports.append(labels.report)
        label_classes = labels.label_codes.astype(np.int64)
        label_rows = np.arange(len(labels))
        if expand_gt:
            # The key carries the sign: positives expand up, negatives down.
            label_rows, label_classes = expand_rows(
                label_classes * 2 + (labels.confidence == 1),
                lambda keys: hierarchy.expand_image_labels(keys // 2, keys % 2)[:2],
            )
        label_images = labels.image_ids[label_rows]
    gt = EvaluationGroundTruth.from_arrays(
        hierarchy.mids,
        boxes.image_ids[box_rows],
        box_classes,
        boxes.boxes[box_rows],
        boxes.is_group_of[box_rows],
        label_images,
        label_classes,
        hierarchy=hierarchy,
    )
    gt.read_reports = reports
    return gt


def evaluate_predictions_csv(
    gt: EvaluationGroundTruth,
    predictions_csv: str | Path,
    *,
    expand_predictions: bool = False,
    group_of_weight: float = 1.0,
    iou_threshold: float = 0.5,
    strict: bool = True,
) -> ChallengeResult:
    """Evaluate a predictions CSV (TF or submission layout) against loaded ground truth."""
    predictions = read_predictions_csv(predictions_csv, gt.mids, strict=strict)
    report = predictions.report
    report.ground_truth_files = [read_report.to_dict() for read_report in gt.read_reports]
    gt_index_of_image = gt.image_index_of(predictions.image_ids)
    det_image = gt_index_of_image[predictions.image_index]
    images_with_predictions = np.zeros(len(predictions.image_ids), dtype=bool)
    images_with_predictions[predictions.image_index] = True
    report.images_not_in_ground_truth = int(
        (images_with_predictions & (gt_index_of_image < 0)).sum()
    )
    return evaluate(
        gt,
        det_image,
        predictions.class_indices,
        predictions.scores,
        predictions.boxes,
        group_of_weight=group_of_weight,
        iou_threshold=iou_threshold,
        expand_predictions=expand_predictions,
        report=report,
    )


def oid_challenge_map(
    hierarchy_json: str | Path | Hierarchy,
    gt_bbox_csv: str | Path,
    image_labels_csv: str | Path | None,
    predictions_csv: str | Path,
    *,
    expand_gt: bool = True,
    expand_predictions: bool = False,
    group_of_weight: float = 1.0,
    iou_threshold: float = 0.5,
    strict: bool = True,
    class_descriptions_csv: str | Path | None = None,
) -> ChallengeResult:
    """Open Images Challenge detection mAP from the raw CSV files, as the official evaluator.

    ``predictions_csv`` is the TF layout (``ImageID,LabelName,Score,XMin,XMax,YMin,YMax``) or
    the submission layout (``ImageId,PredictionString``), recognised by its header.
    ``class_descriptions_csv`` (optional) restricts the classes to those it lists (e.g. the
    500 Challenge classes). ``result.map``, ``result.per_class_ap`` (MID -> AP), per-class
    counts in ``result.per_class_frame()``, skipped and ignored predictions in
    ``result.report``.
    """
    hierarchy = load_hierarchy(hierarchy_json, class_descriptions_csv)
    gt = load_ground_truth(
        hierarchy, gt_bbox_csv, image_labels_csv, expand_gt=expand_gt, strict=strict
    )
    return evaluate_predictions_csv(
        gt,
        predictions_csv,
        expand_predictions=expand_predictions,
        group_of_weight=group_of_weight,
        iou_threshold=iou_threshold,
        strict=strict,
    )
