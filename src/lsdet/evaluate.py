"""``python -m lsdet.evaluate``: the metric of the data config (``data.metric``) for a
predictions file or a training checkpoint; writes the evaluator's files (metrics.json,
per_class.csv, frequency_buckets.csv, ap_vs_frequency.png) to ``output_dir``.

* ``oid_challenge`` (the default, Open Images and the synthetic data): the Open Images
  Challenge metric of a predictions CSV (``predictions_csv=``) or of a training checkpoint
  (``checkpoint=``: the validation images are predicted in memory, ``lsdet.inference``).
* ``lvis`` / ``coco`` (``data=lvis``, ``data=coco``): the LVIS or COCO box metric of a
  predictions CSV or a COCO results JSON (``lsdet.evaluation.lvis_metric``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from lsdet.data import Hierarchy, load_hierarchy, read_class_descriptions
from lsdet.data.index import AnnotationIndex
from lsdet.evaluation import ChallengeResult, load_ground_truth, oid_challenge_map
from lsdet.evaluation.lvis_metric import METRIC_STYLES, evaluate_from_config
from lsdet.evaluation.outputs import write_evaluation_outputs

OID_CHALLENGE = "oid_challenge"
METRICS = (OID_CHALLENGE, *METRIC_STYLES)

logger = logging.getLogger(__name__)


def train_image_counts(cfg: DictConfig, hierarchy: Hierarchy) -> np.ndarray | None:
    """Training images per class, a class counted with its descendants (as the trainer's
    reports count it), from the data layer's cached index of ``cfg.train_bbox_csv``; None
    (no frequency buckets) when the config names no training CSV or it does not exist."""
    if not cfg.get("train_bbox_csv"):
        return None
    if not Path(cfg.train_bbox_csv).is_file():
        logger.warning("train_bbox_csv %s not found: no frequency buckets", cfg.train_bbox_csv)
        return None
    index = AnnotationIndex.build_or_open(
        cfg.train_bbox_csv,
        hierarchy,
        cfg.cache_dir,
        image_labels_csv=cfg.get("train_image_labels_csv"),
        strict=cfg.strict,
    )
    return index.class_image_counts_with_descendants(hierarchy.descendants)


def evaluate_csv(cfg: DictConfig) -> tuple[ChallengeResult, dict[str, Path]]:
    """The CSV mode: evaluate ``cfg.predictions_csv`` and write the outputs.

    Reads the keys documented in conf/evaluate.yaml; returns the result and output paths.
    """
    hierarchy = load_hierarchy(cfg.hierarchy_json, cfg.get("class_descriptions_csv"))
    names = None
    if cfg.get("class_descriptions_csv"):
        names = read_class_descriptions(cfg.class_descriptions_csv)
    result = oid_challenge_map(
        hierarchy,
        cfg.gt_bbox_csv,
        cfg.get("image_labels_csv"),
        cfg.predictions_csv,
        expand_gt=cfg.expand_gt,
        expand_predictions=cfg.expand_predictions,
        group_of_weight=cfg.group_of_weight,
        iou_threshold=cfg.iou_threshold,
        strict=cfg.strict,
    )
    counts = train_image_counts(cfg, hierarchy)
    paths = write_evaluation_outputs(
        result,
        cfg.output_dir,
        names=names,
        train_image_counts=counts,
        plot=cfg.plot,
        extra={"predictions_csv": str(cfg.predictions_csv)},
    )
    report = result.report
    logger.info(
        "mAP %.4f over %d classes; %d predictions, %d skipped as bad, %d of images without GT, "
        "%d of unverified classes ignored; outputs in %s",
        result.map,
        int(result.has_ground_truth.sum()),
        report.num_predictions,
        sum(report.skipped_bad_rows.values()),
        report.ignored_image_not_in_ground_truth,
        report.ignored_class_not_verified,
        cfg.output_dir,
    )
    return result, paths


def evaluate_checkpoint(cfg: DictConfig) -> tuple[ChallengeResult, dict[str, Path]]:
    """The checkpoint mode: predict every image of the ground truth (``data.val.image_dir``)
    with a training checkpoint in memory, score the detections and write the outputs.

    The images are prepared as in the checkpoint's training (its ``data.image_size``, the
    detector's ``min_size``/``max_size`` and normalisation) unless ``data.image_size``,
    ``min_size`` or ``max_size`` are given; metrics.json's ``input`` says which were used.

    An image of the ground truth without a file is an error naming it (``strict=true``) or,
    with ``strict=false``, skipped, counted and reported in metrics.json; its ground truth is
    left out of the metric (a missing file must not pass for a weaker detector); a file that
    cannot be decoded likewise (``undecodable_images``, counted per reason)."""
    # Imported here: torch takes seconds to import, and the CSV modes do not need it.
    from lsdet.inference import (
        ImageFiles,
        detect_and_evaluate,
        load_detector_from_config,
        skipped_by_reason,
    )

    # data.image_size: "auto" (conf/evaluate.yaml's default) = the checkpoint's training size.
    model, trained_hierarchy, _, device, input_settings = load_detector_from_config(
        cfg, image_size=cfg.data.get("image_size"), image_size_key="data.image_size"
    )
    hierarchy = load_hierarchy(cfg.hierarchy_json, cfg.get("class_descriptions_csv"))
    if list(hierarchy.mids) != list(trained_hierarchy.mids):
        raise ValueError(
            f"checkpoint {cfg.checkpoint} was trained on other classes than {cfg.hierarchy_json} "
            "lists; pass the data config it was trained with (data=...)"
        )
    gt = load_ground_truth(
        hierarchy,
        cfg.gt_bbox_csv,
        cfg.get("image_labels_csv"),
        expand_gt=cfg.expand_gt,
        strict=cfg.strict,
    )
    image_dir = Path(cfg.data.val.image_dir)
    paths = [image_dir / f"{image_id}.jpg" for image_id in gt.image_ids]
    missing = [p for p in paths if not p.is_file()]
    if missing and cfg.strict:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(paths)} images of the ground truth {cfg.gt_bbox_csv} "
            f"have no file in {image_dir} (first: {missing[0].name}); with strict=false "
            "(data.strict=false) they are skipped and counted"
        )
    if missing:
        logger.warning(
            "%d images of the ground truth have no file in %s (e.g. %s): skipped, their "
            "ground truth left out of the metric",
            len(missing),
            image_dir,
            missing[0].name,
        )
        gt = gt.without_images([p.stem for p in missing], ["no image file"] * len(missing))
    missing_set = set(missing)
    dataset = ImageFiles(
        [p for p in paths if p not in missing_set],
        image_size=input_settings.image_size,
        strict=bool(cfg.strict),
    )
    detections, result = detect_and_evaluate(
        model,
        dataset,
        gt,
        device=device,
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.num_workers),
        desc="evaluate checkpoint",
        group_of_weight=cfg.group_of_weight,
        iou_threshold=cfg.iou_threshold,
        expand_predictions=cfg.expand_predictions,
    )
    undecodable = skipped_by_reason(detections.skipped_images)
    if undecodable:  # files that cannot be decoded, with strict=false
        logger.warning(
            "%d images of the ground truth cannot be decoded (%s): skipped, their ground "
            "truth left out of the metric",
            len(detections.skipped_images),
            ", ".join(f"{entry['count']} {reason}" for reason, entry in undecodable.items()),
        )
    names = (
        read_class_descriptions(cfg.class_descriptions_csv)
        if cfg.get("class_descriptions_csv")
        else None
    )
    extra = {
        "checkpoint": str(cfg.checkpoint),
        "scoring": model.roi_heads.scoring,
        "score_thresh": model.roi_heads.score_thresh,
        "detections_per_img": model.roi_heads.detections_per_img,
        "missing_images": {
            "count": len(missing),
            "examples": [p.name for p in missing[:10]],
        },
        "undecodable_images": undecodable,
        "input": input_settings.to_dict(),
    }
    outputs = write_evaluation_outputs(
        result,
        cfg.output_dir,
        names=names,
        train_image_counts=train_image_counts(cfg, hierarchy),
        plot=cfg.plot,
        extra=extra,
    )
    print(
        f"mAP {result.map:.4f} ({model.roi_heads.scoring} scoring, image_size "
        f"{input_settings.image_size} ({input_settings.sources['image_size']})); outputs in "
        f"{cfg.output_dir}"
    )
    return result, outputs


def data_metric(data_cfg: Any) -> str:
    """The metric a data config names (``data.metric``; ``oid_challenge`` when unset)."""
    return metric_named(data_cfg.get("metric"))


def metric_named(metric: str | None) -> str:
    """The metric ``data.metric`` names (``oid_challenge`` when None or empty); one lsdet does
    not know is an error naming data.metric."""
    metric = metric or OID_CHALLENGE
    if metric not in METRICS:
        raise ValueError(f"data.metric={metric!r}; expected one of {METRICS}")
    return metric


def run_evaluation(cfg: DictConfig) -> tuple[Any, dict[str, Path]]:
    """The evaluation ``data.metric`` names (``oid_challenge`` when the data config has no
    ``metric``); returns the result and the paths of the files written. Validation during
    training hands its detections of an LVIS/COCO data config to it as ``predictions_csv``."""
    metric = data_metric(cfg.data)
    if metric != OID_CHALLENGE:
        if cfg.get("checkpoint"):
            raise ValueError(
                f"data.metric={metric}: checkpoint= evaluates with the Open Images Challenge "
                "metric only; write the detections with lsdet.predict and pass them as "
                "predictions_csv="
            )
        return evaluate_from_config(cfg)
    if cfg.get("checkpoint"):  # a training checkpoint: predict in memory, then evaluate
        return evaluate_checkpoint(cfg)
    return evaluate_csv(cfg)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_evaluation(cfg)


if __name__ == "__main__":
    main()
