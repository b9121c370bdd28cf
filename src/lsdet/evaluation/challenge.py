"""The Open Images Challenge metric from the CSV files (ground truth, labels, predictions)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lsdet.data import AnnotationIndex, DataFormatError, Hierarchy, ReadReport
from lsdet.data.formats import read_split_annotations
from lsdet.data.hierarchy import load_hierarchy
from lsdet.data.index import FLAG_GROUP_OF
from lsdet.evaluation.core import (
    ChallengeResult,
    EvaluationGroundTruth,
    evaluate,
    expand_rows,
)
from lsdet.evaluation.predictions import PredictionTable, first_equal_row, read_predictions_csv


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
    expand the files before the official evaluator runs (files expanded already are not
    counted twice: :func:`_expand_ground_truth_codes`). MIDs must be classes of
    ``hierarchy`` (the data layer's checks apply; ``strict=False`` skips and counts); rows of
    classes left out of a subset hierarchy (``hierarchy.excluded_mids``) are dropped and
    counted as excluded: the files are read by ``lsdet.data.formats.read_split_annotations``,
    as the annotation index reads them.
    A box file that gives no box (only a header, or every row skipped or excluded) is an
    error naming it: without a GT instance no class has an AP and the mAP is undefined.
    """
    boxes, labels = read_split_annotations(hierarchy, gt_bbox_csv, image_labels_csv, strict=strict)
    if len(boxes) == 0:
        report = boxes.report
        raise DataFormatError(
            f"{gt_bbox_csv}: no ground-truth box to evaluate against ({report.rows_read} rows "
            f"read, {report.rows_skipped} skipped as bad, {report.excluded} of classes outside "
            "the hierarchy's selection); the mAP needs at least one box"
        )
    reports = [boxes.report]
    label_images = np.empty(0, dtype=np.int64)
    label_classes = np.empty(0, dtype=np.int64)
    label_confidence = np.empty(0, dtype=np.int8)
    image_id_values = boxes.image_id_values
    if labels is not None:
        reports.append(labels.report)
        # One dictionary of image ids for both files: the labels' codes come after the boxes'.
        image_id_values = np.concatenate([boxes.image_id_values, labels.image_id_values])
        label_images = labels.image_codes.astype(np.int64) + len(boxes.image_id_values)
        label_classes = labels.label_codes
        label_confidence = labels.confidence
    gt = _expand_ground_truth_codes(
        hierarchy,
        image_id_values,
        boxes.image_codes,
        boxes.label_codes,
        boxes.boxes,
        boxes.is_group_of,
        label_images,
        label_classes,
        label_confidence,
        expand_gt=expand_gt,
    )
    gt.read_reports = reports
    return gt


def load_ground_truth_from_index(
    index: AnnotationIndex, hierarchy: Hierarchy, *, expand_gt: bool = True
) -> EvaluationGroundTruth:
    """The ground truth of a split from its :class:`~lsdet.data.AnnotationIndex` (the index
    the validation loader uses), without reading the CSVs again.

    Gives the same :class:`EvaluationGroundTruth` as :func:`load_ground_truth` on the CSVs
    the index was built from (same reader settings): boxes, group-of flags and verified
    image-level labels are all in the index. ``gt.read_reports`` are the index's reports.
    """
    if list(index.mids) != list(hierarchy.mids):
        raise ValueError(
            f"the annotation index {index.directory} was built for other classes than the "
            "hierarchy's (different MIDs or order)"
        )
    image_ids = np.asarray(index.image_ids, dtype=object)
    image_codes = np.arange(len(image_ids))
    box_images = np.repeat(image_codes, index.num_boxes_per_image())
    label_images = np.repeat(image_codes, np.diff(np.asarray(index.label_offsets)))
    gt = _expand_ground_truth_codes(
        hierarchy,
        image_ids,
        box_images,
        np.asarray(index.class_ids),
        np.asarray(index.boxes),
        (np.asarray(index.flags) & FLAG_GROUP_OF) != 0,
        label_images,
        np.asarray(index.label_class_ids),
        np.asarray(index.label_confidence),
        expand_gt=expand_gt,
    )
    gt.read_reports = [ReadReport.from_dict(report) for report in index.reports]
    return gt


def _expand_ground_truth_codes(
    hierarchy: Hierarchy,
    image_id_values: np.ndarray,
    box_images: np.ndarray,
    box_classes: np.ndarray,
    boxes: np.ndarray,
    box_is_group_of: np.ndarray,
    label_images: np.ndarray,
    label_classes: np.ndarray,
    label_confidence: np.ndarray,
    *,
    expand_gt: bool,
) -> EvaluationGroundTruth:
    """Ground truth from per-row arrays as read (image ids as integer codes into
    ``image_id_values``, class indices into ``hierarchy.mids``), expanded to the hierarchy
    when ``expand_gt``.

    Files already expanded by the official tool (``oid_hierarchical_labels_expansion.py``:
    every box copied to each ancestor, positive labels copied up, negatives down) are not
    counted twice: a box that the expansion creates is not added where the same box (image,
    class, coordinates, group-of flag) is already in the file, and identical boxes of one
    class created from several labels of one object count once. Boxes duplicated in the
    file itself, with no expansion involved, are kept as they are. So expanded and
    unexpanded files give the same ground truth. The official tool, run on an unexpanded
    file, would instead keep two identical ancestor boxes for an object boxed as two
    classes (e.g. a leaf and its parent), one of which no detection can match.
    Image-level labels only say which classes are verified per image (a set), so copies
    there change nothing.
    """
    box_images = np.asarray(box_images, dtype=np.int64)
    box_classes = np.asarray(box_classes, dtype=np.int64)
    boxes = np.asarray(boxes).reshape(-1, 4)
    box_is_group_of = np.asarray(box_is_group_of, dtype=bool)
    label_images = np.asarray(label_images, dtype=np.int64)
    label_classes = np.asarray(label_classes, dtype=np.int64)
    box_rows = np.arange(len(box_classes))
    label_rows = np.arange(len(label_classes))
    if expand_gt:
        box_rows, expanded = expand_rows(box_classes, hierarchy.expand_to_ancestors)
        keep = _without_repeated_expansion(
            box_images[box_rows] * hierarchy.num_classes + expanded,
            boxes[box_rows],
            box_is_group_of[box_rows],
            created=expanded != box_classes[box_rows],
        )
        box_rows, box_classes = box_rows[keep], expanded[keep]
        # The key carries the sign: positives expand up, negatives down.
        label_rows, label_classes = expand_rows(
            label_classes * 2 + (np.asarray(label_confidence) == 1),
            lambda keys: hierarchy.expand_image_labels(keys // 2, keys % 2)[:2],
        )
    return EvaluationGroundTruth.from_image_codes(
        hierarchy.mids,
        image_id_values,
        box_images[box_rows],
        box_classes,
        boxes[box_rows],
        box_is_group_of[box_rows],
        label_images[label_rows],
        label_classes,
        hierarchy=hierarchy,
    )


def _without_repeated_expansion(
    image_class_keys: np.ndarray,
    boxes: np.ndarray,
    is_group_of: np.ndarray,
    *,
    created: np.ndarray,
) -> np.ndarray:
    """Mask of the rows to keep: of the rows with one (image, class, box, group-of) key, only
    the first is kept where any of them was created by the expansion; keys made only of
    rows of the file keep them all."""
    if len(image_class_keys) == 0:
        return np.ones(0, dtype=bool)
    first = first_equal_row([image_class_keys * 2 + is_group_of, *(boxes[:, k] for k in range(4))])
    key_has_created_row = np.bincount(first, weights=created, minlength=len(first)) > 0
    return (first == np.arange(len(first))) | ~key_has_created_row[first]


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
    return _evaluate_table(
        gt,
        read_predictions_csv(predictions_csv, gt.mids, strict=strict),
        expand_predictions=expand_predictions,
        group_of_weight=group_of_weight,
        iou_threshold=iou_threshold,
    )


def _evaluate_table(
    gt: EvaluationGroundTruth,
    predictions: PredictionTable,
    *,
    expand_predictions: bool,
    group_of_weight: float,
    iou_threshold: float,
) -> ChallengeResult:
    report = predictions.report
    report.ground_truth_files = [read_report.to_dict() for read_report in gt.read_reports]
    gt_index_of_image = gt.image_index_of(predictions.image_ids).astype(np.int32)
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
    # The ground truth loads in a second thread while this one reads the predictions: both
    # are Arrow and numpy work that releases the GIL, so on two cores the ground truth
    # costs little wall time.
    with ThreadPoolExecutor(max_workers=1) as pool:
        gt_future = pool.submit(
            load_ground_truth,
            hierarchy,
            gt_bbox_csv,
            image_labels_csv,
            expand_gt=expand_gt,
            strict=strict,
        )
        try:
            predictions = read_predictions_csv(predictions_csv, hierarchy.mids, strict=strict)
        except Exception:
            gt_future.result()  # an error in the ground truth comes first, as read in turn
            raise
        gt = gt_future.result()
    return _evaluate_table(
        gt,
        predictions,
        expand_predictions=expand_predictions,
        group_of_weight=group_of_weight,
        iou_threshold=iou_threshold,
    )
