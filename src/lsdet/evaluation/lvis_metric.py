"""The LVIS and COCO box metrics, computed by ``faster-coco-eval`` (not a third evaluator).

Library choice. Both candidates were run on the hand-made LVIS file of
tests/test_evaluation_lvis.py and both give its hand-counted AP, AP50, AP75, APr, APc, APf
(the official API only with ``np.float`` patched back in). ``faster-coco-eval`` was kept:

* it is maintained (releases in 2025-2026) and its only run-time dependency is numpy, whereas
  the official ``lvis`` API (0.5.3, June 2020) fails on numpy 2 (``np.float`` in
  ``LVISEval.accumulate``) and pulls opencv-python and Cython in;
* it evaluates COCO and LVIS with the same code: ``COCOeval_faster(..., lvis_style=True)``
  applies LVIS's federated rules (Gupta et al., LVIS, CVPR 2019, sec. 5: a detection of a
  category that is neither boxed in nor verified absent from its image is not evaluated; an
  unmatched detection of a category in the image's ``not_exhaustive_category_ids`` is not a
  false positive) and reports APr / APc / APf over the categories' ``frequency``;
* its matching and accumulation are C++ (1.5M detections over 5k images: 45 s end to end on
  2 shared cores; README, "COCO and LVIS").

What this wrapper adds: LVIS's cap of 300 detections per image over all categories (the
``lvis`` API's ``LVISResults(max_dets=300)``; faster-coco-eval's ``maxDets`` caps each
(image, category) pair only), detections from an lsdet predictions CSV (``ImageID`` = image
id, ``LabelName`` = category id, normalised boxes) or a COCO results JSON, per-category AP
read from the accumulated precision array as detectron2's ``COCOEvaluator`` does, and
lsdet's evaluation files (``metrics.json``, ``per_class.csv`` with each category's training
images and frequency bucket, ``frequency_buckets.csv``, ``ap_vs_frequency.png``).
For LVIS the buckets are LVIS's own r / c / f (``rare`` / ``common`` / ``frequent``); for
COCO, which has none, thirds by training images as for Open Images.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from faster_coco_eval import COCO, COCOeval_faster

from lsdet.data.coco_format import FREQUENCY_BUCKET_NAMES, build_or_open_coco_index
from lsdet.data.formats import DataFormatError
from lsdet.evaluation.outputs import (
    AP_VS_FREQUENCY_PNG,
    FREQUENCY_BUCKETS_CSV,
    METRICS_JSON,
    PER_CLASS_CSV,
    bucket_summary,
    frequency_buckets,
    plot_ap_vs_frequency,
    write_metrics_json,
)
from lsdet.evaluation.predictions import read_predictions_csv

logger = logging.getLogger(__name__)

METRIC_STYLES = ("lvis", "coco")
MAX_DETECTIONS_PER_IMAGE = {"lvis": 300, "coco": 100}


@dataclass
class CocoStyleResult:
    """Summary metrics and per-category AP of one COCO or LVIS evaluation."""

    style: str
    summary: dict[str, float]  # AP, AP50, AP75, APs, APm, APl (+ APr, APc, APf for LVIS)
    per_class: pd.DataFrame  # mid, name, category_id, frequency, ap, ap50, ap75, counts
    num_detections: int  # read
    num_detections_over_cap: int  # dropped by the per-image cap (LVIS)
    max_detections_per_image: int
    seconds: float

    @property
    def map(self) -> float:
        return self.summary["AP"]

    def to_dict(self) -> dict:
        return {
            "metric": self.style,
            **self.summary,
            "num_detections": self.num_detections,
            "num_detections_over_cap": self.num_detections_over_cap,
            "max_detections_per_image": self.max_detections_per_image,
            "evaluation_seconds": round(self.seconds, 3),
            "per_class_ap": {
                str(mid): (None if np.isnan(ap) else float(ap))
                for mid, ap in zip(self.per_class["mid"], self.per_class["ap"], strict=True)
            },
        }


def load_ground_truth(annotation_json: str | Path | dict):
    """faster-coco-eval's ``COCO`` object of an annotation file (or its parsed dict)."""
    if isinstance(annotation_json, dict):
        return COCO(annotation_json)
    path = Path(annotation_json)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    return COCO(str(path))


def read_detections(path: str | Path, ground_truth, *, strict: bool = True) -> np.ndarray:
    """Detections as float64 ``[N, 7]`` rows ``image_id, x, y, w, h, score, category_id``
    (pixels), from a COCO results JSON (``[{image_id, category_id, bbox, score}, ...]``) or an
    lsdet predictions CSV (either layout; class ids are category ids as text)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return _detections_from_results_json(path, ground_truth)
    categories = sorted(ground_truth.cats)
    table = read_predictions_csv(path, [str(c) for c in categories], strict=strict)
    try:
        image_ids = np.array([int(image_id) for image_id in table.image_ids], dtype=np.int64)
    except ValueError as exc:
        raise DataFormatError(f"{path}: ImageID values must be the integer image ids") from exc
    unknown = [i for i in image_ids.tolist() if i not in ground_truth.imgs]
    if unknown:
        raise DataFormatError(
            f"{path}: {len(unknown)} ImageID values are not images of the annotation file, "
            f"e.g. {unknown[:5]}"
        )
    sizes = np.array(
        [[ground_truth.imgs[i]["width"], ground_truth.imgs[i]["height"]] for i in image_ids],
        dtype=np.float64,
    ).reshape(-1, 2)
    width = sizes[table.image_index, 0]
    height = sizes[table.image_index, 1]
    boxes = table.boxes.astype(np.float64)
    return np.stack(
        [
            image_ids[table.image_index].astype(np.float64),
            boxes[:, 0] * width,
            boxes[:, 1] * height,
            (boxes[:, 2] - boxes[:, 0]) * width,
            (boxes[:, 3] - boxes[:, 1]) * height,
            table.scores.astype(np.float64),
            np.asarray(categories, dtype=np.float64)[table.class_indices],
        ],
        axis=1,
    )


def _detections_from_results_json(path: Path, ground_truth) -> np.ndarray:
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read a COCO results JSON: {exc}") from exc
    if not isinstance(results, list):
        raise DataFormatError(f"{path}: a COCO results file is a JSON list of detections")
    rows = np.zeros((len(results), 7), dtype=np.float64)
    for number, detection in enumerate(results):
        try:
            rows[number, 0] = detection["image_id"]
            rows[number, 1:5] = detection["bbox"]
            rows[number, 5] = detection["score"]
            rows[number, 6] = detection["category_id"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(
                f"{path}, detection {number}: needs image_id, bbox [x, y, w, h], score, "
                f"category_id: {detection!r}"
            ) from exc
    bad_image = ~np.isin(rows[:, 0], np.fromiter(ground_truth.imgs, dtype=np.float64))
    bad_category = ~np.isin(rows[:, 6], np.fromiter(ground_truth.cats, dtype=np.float64))
    for mask, what in ((bad_image, "image_id"), (bad_category, "category_id")):
        if mask.any():
            number = int(np.flatnonzero(mask)[0])
            raise DataFormatError(
                f"{path}, detection {number}: {what} not in the annotation file "
                f"({int(mask.sum())} such detections): {results[number]!r}"
            )
    return rows


def cap_detections_per_image(detections: np.ndarray, max_per_image: int) -> np.ndarray:
    """The ``max_per_image`` highest-scoring detections of each image (LVIS's rule), in the
    order image, then descending score."""
    if len(detections) == 0:
        return detections
    order = np.lexsort((-detections[:, 5], detections[:, 0]))
    detections = detections[order]
    image = detections[:, 0]
    starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])
    rank = np.arange(len(image)) - np.repeat(starts, np.diff(np.r_[starts, len(image)]))
    return detections[rank < max_per_image]


def evaluate_detections(
    ground_truth,
    detections: np.ndarray,
    *,
    style: str,
    max_detections_per_image: int | None = None,
) -> CocoStyleResult:
    """Run faster-coco-eval on ``detections`` (``[N, 7]`` as :func:`read_detections`)."""
    if style not in METRIC_STYLES:
        raise ValueError(f"metric style must be one of {METRIC_STYLES}, got {style!r}")
    started = time.perf_counter()
    cap = max_detections_per_image or MAX_DETECTIONS_PER_IMAGE[style]
    num_read = len(detections)
    if style == "lvis":
        detections = cap_detections_per_image(detections, cap)
    results = [
        {
            "image_id": int(row[0]),
            "bbox": [float(row[1]), float(row[2]), float(row[3]), float(row[4])],
            "score": float(row[5]),
            "category_id": int(row[6]),
            # present, so that loadRes does not make a box-shaped polygon per detection
            # (boxes are evaluated with iouType="bbox"; the polygons would only cost memory)
            "segmentation": [],
        }
        for row in detections
    ]
    detections_api = ground_truth.loadRes(results)
    evaluator = COCOeval_faster(
        ground_truth,
        detections_api,
        iouType="bbox",
        lvis_style=style == "lvis",
        print_function=logger.debug,
    )
    if style == "lvis":
        evaluator.params.maxDets = [cap]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    summary = {
        "AP": stats["AP_all"],
        "AP50": stats["AP_50"],
        "AP75": stats["AP_75"],
        "APs": stats["AP_small"],
        "APm": stats["AP_medium"],
        "APl": stats["AP_large"],
    }
    if style == "lvis":
        summary.update({"APr": stats["APr"], "APc": stats["APc"], "APf": stats["APf"]})
        summary[f"AR@{cap}"] = stats["AR_all"]  # LVIS's one cap fills the first AR slot
    else:
        summary["AR@100"] = stats["AR_third"]
    summary = {key: float(value) for key, value in summary.items()}
    per_class = _per_class_table(ground_truth, evaluator, detections)
    return CocoStyleResult(
        style=style,
        summary=summary,
        per_class=per_class,
        num_detections=num_read,
        num_detections_over_cap=num_read - len(detections),
        max_detections_per_image=cap,
        seconds=time.perf_counter() - started,
    )


def _per_class_table(ground_truth, evaluator, detections: np.ndarray) -> pd.DataFrame:
    """AP per category from the precision array ``[T, R, K, A, M]`` (area "all", the largest
    detection cap); -1 entries (no ground truth) are left out, NaN where all are -1."""
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]
    iou_thresholds = np.asarray(evaluator.params.iouThrs)

    def mean_valid(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(valid.mean()) if valid.size else float("nan")

    at_50 = int(np.argmin(np.abs(iou_thresholds - 0.5)))
    at_75 = int(np.argmin(np.abs(iou_thresholds - 0.75)))
    category_ids = list(evaluator.params.catIds)
    gt_counts = {cid: [0, 0] for cid in category_ids}  # boxes, crowd boxes
    for annotation in ground_truth.anns.values():
        if annotation["category_id"] in gt_counts:
            gt_counts[annotation["category_id"]][int(bool(annotation.get("iscrowd", 0)))] += 1
    detection_counts = dict(
        zip(*np.unique(detections[:, 6].astype(np.int64), return_counts=True), strict=True)
    )
    rows = []
    for k, category_id in enumerate(category_ids):
        category = ground_truth.cats[category_id]
        rows.append(
            {
                "mid": str(category_id),
                "name": category.get("name", ""),
                "frequency": category.get("frequency", ""),
                "ap": mean_valid(precision[:, :, k]),
                "ap50": mean_valid(precision[at_50, :, k]),
                "ap75": mean_valid(precision[at_75, :, k]),
                "num_gt_boxes": gt_counts[category_id][0],
                "num_group_of_boxes": gt_counts[category_id][1],  # crowd boxes
                "num_detections": int(detection_counts.get(category_id, 0)),
            }
        )
    return pd.DataFrame(rows)


def write_coco_style_outputs(
    result: CocoStyleResult,
    output_dir: str | Path,
    *,
    train_image_counts: np.ndarray | None = None,
    plot: bool = True,
    extra: dict | None = None,
) -> dict[str, Path]:
    """metrics.json, per_class.csv, frequency_buckets.csv and ap_vs_frequency.png, as
    :func:`lsdet.evaluation.outputs.write_evaluation_outputs` writes them for Open Images.
    ``train_image_counts`` is ``[K]`` in ``result.per_class`` order."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = result.per_class.copy()
    if train_image_counts is not None:
        table["train_images"] = np.asarray(train_image_counts, dtype=np.int64)
    if result.style == "lvis":
        table["bucket"] = [FREQUENCY_BUCKET_NAMES.get(f, "") for f in table["frequency"]]
    elif train_image_counts is not None:
        table["bucket"] = frequency_buckets(train_image_counts, table["ap"].notna().to_numpy())
    paths = {"per_class": output_dir / PER_CLASS_CSV, "metrics": output_dir / METRICS_JSON}
    table.to_csv(paths["per_class"], index=False)
    metrics = {**result.to_dict(), **(extra or {})}
    if "bucket" in table and "train_images" in table:
        summary = bucket_summary(table)
        paths["buckets"] = output_dir / FREQUENCY_BUCKETS_CSV
        summary.to_csv(paths["buckets"], index=False)
        metrics["frequency_buckets"] = summary.to_dict(orient="records")
    write_metrics_json(paths["metrics"], metrics)
    if plot:
        title = f"Per-category {result.style.upper()} AP vs frequency"
        paths["plot"] = plot_ap_vs_frequency(table, output_dir / AP_VS_FREQUENCY_PNG, title=title)
    return paths


def training_image_counts(
    per_class: pd.DataFrame,
    train_annotation_json: str | Path | None,
    cache_dir: str | Path,
    *,
    strict: bool = True,
    ground_truth=None,
) -> tuple[np.ndarray | None, str]:
    """Training images per category of ``per_class`` and where they came from: the training
    file's annotation index (images with a box of the category), else the evaluation file's
    LVIS ``image_count`` (LVIS's frequency is defined on it), else none."""
    if train_annotation_json and Path(train_annotation_json).is_file():
        built = build_or_open_coco_index(train_annotation_json, cache_dir, strict=strict)
        by_mid = dict(zip(built.index.mids, built.index.class_image_counts().tolist(), strict=True))
        counts = np.array([by_mid.get(mid, 0) for mid in per_class["mid"]], dtype=np.int64)
        return counts, f"annotation index of {train_annotation_json}"
    if ground_truth is not None:
        counts = [ground_truth.cats[int(mid)].get("image_count", -1) for mid in per_class["mid"]]
        if all(count >= 0 for count in counts):
            return np.array(counts, dtype=np.int64), "image_count of the evaluated file"
    return None, "none"


def evaluate_from_config(cfg) -> tuple[CocoStyleResult, dict[str, Path]]:
    """``python -m lsdet.evaluate data=lvis|coco predictions_csv=...``: reads
    ``data.metric``, ``data.val.annotation_json``, ``data.train.annotation_json``,
    ``data.cache_dir``, ``data.strict`` and the evaluate config's ``predictions_csv`` (a CSV
    or a COCO results ``.json``), ``plot`` and ``output_dir``."""
    style = cfg.data.metric
    ground_truth = load_ground_truth(cfg.data.val.annotation_json)
    detections = read_detections(cfg.predictions_csv, ground_truth, strict=cfg.data.strict)
    result = evaluate_detections(ground_truth, detections, style=style)
    counts, counts_source = training_image_counts(
        result.per_class,
        cfg.data.train.get("annotation_json"),
        cfg.data.cache_dir,
        strict=cfg.data.strict,
        ground_truth=ground_truth,
    )
    paths = write_coco_style_outputs(
        result,
        cfg.output_dir,
        train_image_counts=counts,
        plot=cfg.plot,
        extra={
            "predictions": str(cfg.predictions_csv),
            "annotation_json": str(cfg.data.val.annotation_json),
            "train_images_from": counts_source,
        },
    )
    logger.info(
        "%s AP %.4f over %d categories (%d detections, %d over the cap of %d per image); "
        "outputs in %s",
        style.upper(),
        result.map,
        int(result.per_class["ap"].notna().sum()),
        result.num_detections,
        result.num_detections_over_cap,
        result.max_detections_per_image,
        cfg.output_dir,
    )
    return result, paths
