"""``python -m lsdet.evaluate``: the Open Images Challenge metric of a predictions CSV
(``predictions_csv=``) or of a training checkpoint (``checkpoint=``: the validation images are
predicted in memory). Writes the evaluator's files (``lsdet.evaluation.outputs``) to
``output_dir``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from lsdet.data import Hierarchy, load_hierarchy, read_class_descriptions
from lsdet.evaluation import ChallengeResult, oid_challenge_map
from lsdet.evaluation.outputs import write_evaluation_outputs

logger = logging.getLogger(__name__)


def train_image_counts(cfg: DictConfig, hierarchy: Hierarchy) -> np.ndarray | None:
    """Training images per class, a class counted with its descendants (as the trainer's
    reports count it), from the data layer's cached index of ``cfg.train_bbox_csv``; None
    (no frequency buckets) when the config names no training CSV or it does not exist."""
    from lsdet.data.index import AnnotationIndex

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
    from lsdet.engine.inference import (
        ImageFiles,
        load_detector_from_config,
        predict_images,
        skipped_by_reason,
    )
    from lsdet.evaluation import evaluate, load_ground_truth

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
    detections = predict_images(
        model,
        dataset,
        device,
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.num_workers),
        desc="evaluate checkpoint",
    )
    if detections.skipped_images:  # files that cannot be decoded, with strict=false
        undecodable = skipped_by_reason(detections.skipped_images)
        logger.warning(
            "%d images of the ground truth cannot be decoded (%s): skipped, their ground "
            "truth left out of the metric",
            len(detections.skipped_images),
            ", ".join(f"{entry['count']} {reason}" for reason, entry in undecodable.items()),
        )
        ids, reasons = zip(*detections.skipped_images, strict=True)
        gt = gt.without_images(list(ids), list(reasons))
    result = evaluate(
        gt,
        detections.image_ids,
        detections.class_indices,
        detections.scores,
        detections.boxes,
        group_of_weight=cfg.group_of_weight,
        iou_threshold=cfg.iou_threshold,
        expand_predictions=cfg.expand_predictions,
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
        "undecodable_images": skipped_by_reason(detections.skipped_images),
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


@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    if cfg.get("checkpoint"):  # a training checkpoint: predict in memory, then evaluate
        evaluate_checkpoint(cfg)
    else:
        evaluate_csv(cfg)


if __name__ == "__main__":
    main()
