"""Validation during training: predict the validation split (sharded over ranks), score it with
the data config's metric (``data.metric``): the Open Images Challenge metric against the ground
truth of the same validation index, or for an LVIS/COCO data config the detections written as
``predictions.csv`` and scored by ``lsdet.evaluate.run_evaluation`` (the LVIS/COCO metric of
``data.val.annotation_json``); write the evaluator's files under ``<run_dir>/eval/<tag>/`` and
log the figures."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from lsdet.engine.distributed import DistInfo, broadcast_object
from lsdet.engine.loaders import ShardedSequence
from lsdet.engine.run_folder import EvaluationFolder, RunFolder
from lsdet.engine.run_logger import RunLogger
from lsdet.engine.training_data import TrainingData
from lsdet.evaluate import OID_CHALLENGE, metric_named, run_evaluation
from lsdet.evaluation import ChallengeResult
from lsdet.evaluation.outputs import (
    bucket_summary,
    per_class_table,
    write_evaluation_outputs,
    write_metrics_json,
)
from lsdet.evaluation.predictions import write_predictions_csv
from lsdet.inference.detections import Detections, gather_detections, predict_images
from lsdet.inference.metric import detect_and_evaluate

log = logging.getLogger(__name__)


def validate(
    model: nn.Module,
    data: TrainingData,
    *,
    tag: str,
    run_dir: Path,
    run_name: str,
    device: torch.device,
    dist: DistInfo,
    logger: RunLogger,
    step: int,
    batch_size: int,
    num_workers: int,
    max_images: int | None = None,
    amp: bool = False,
    progress: bool = True,
    image_records: bool = False,
) -> dict[str, Any]:
    """mAP and bucket mAPs of the model on the validation split (the same dict on every rank);
    ``image_records``: the evaluation's per-image records (``lsdet.evaluation.image_records``)
    are written beside its metrics.json (the Open Images Challenge metric only)."""
    n = len(data.val_set) if not max_images else min(len(data.val_set), int(max_images))
    start = time.perf_counter()
    metric = metric_named(data.validation.metric)
    if metric != OID_CHALLENGE:
        if image_records:
            raise ValueError(
                "train.eval_image_records=true: per-image records are kept by the Open Images "
                f"Challenge metric only, not by data.metric={metric!r}"
            )
        detections = predict_images(
            model,
            data.val_set,
            device,
            batch_size=batch_size,
            num_workers=num_workers,
            indices=ShardedSequence(n, dist.rank, dist.world_size),
            amp=amp,
            progress=dist.is_main and progress,
            desc=f"eval {tag}",
        )
        detections = gather_detections(detections, dist)
        metrics: dict[str, Any] = {}
        if dist.is_main:
            out = RunFolder(run_dir).evaluation(tag)
            metrics = evaluate_with_data_metric(
                detections, data, out.path, run_name=run_name, tag=tag, start=start
            )
            log_evaluation(logger, metrics, out, step)
            tqdm.write(f"[{tag}] {metric.upper()} AP {metrics['map']:.4f}")
            metrics["eval_dir"] = RunFolder.evaluation_name(tag)
        return broadcast_object(metrics, dist)
    _, result = detect_and_evaluate(
        model,
        data.val_set,
        data.val_gt,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        indices=ShardedSequence(n, dist.rank, dist.world_size),
        dist=dist,
        amp=amp,
        progress=dist.is_main and progress,
        desc=f"eval {tag}",
        keep_records=image_records,
    )
    metrics: dict[str, Any] = {}
    if dist.is_main:
        seconds = time.perf_counter() - start
        out = RunFolder(run_dir).evaluation(tag)
        extra = {"run": run_name, "tag": tag, "eval_seconds": round(seconds, 2)}
        metrics = record_evaluation(result, data, out.path, extra=extra)
        metrics["eval_seconds"] = round(seconds, 2)
        log_evaluation(logger, metrics, out, step)
        buckets = {k: v for k, v in metrics.items() if k.startswith("map_")}
        tqdm.write(
            f"[{tag}] mAP {metrics['map']:.4f} | "
            + " | ".join(f"{k[4:]} {v:.4f}" for k, v in buckets.items())
        )
        metrics["eval_dir"] = RunFolder.evaluation_name(tag)  # relative to the run folder
    return broadcast_object(metrics, dist)


def record_evaluation(
    result: ChallengeResult, data: TrainingData, out_dir: Path, *, extra: dict[str, Any]
) -> dict[str, Any]:
    """Write the evaluator's files for ``result`` into ``out_dir`` (``extra`` joins the
    metrics.json summary; the per-image records are written when the result holds them);
    returns the mAP as ``map`` and the frequency-bucket mAPs as ``map_<bucket>``. Validation
    during training and the cRT evaluation (``lsdet.crt.evaluate_predictor``) share it."""
    names = dict(zip(data.hierarchy.mids, data.class_names, strict=True))
    counts = data.expanded_image_counts
    write_evaluation_outputs(result, out_dir, names=names, train_image_counts=counts, extra=extra)
    if result.image_records is not None:
        result.image_records.save(EvaluationFolder(Path(out_dir)).image_records)
    table = per_class_table(result, names=names, train_image_counts=counts)
    buckets = {row["bucket"]: row["mean_ap"] for _, row in bucket_summary(table).iterrows()}
    return {"map": result.map, **{f"map_{k}": v for k, v in buckets.items()}}


def evaluate_with_data_metric(
    detections: Detections,
    data: TrainingData,
    out_dir: Path,
    *,
    run_name: str,
    tag: str,
    start: float,
) -> dict[str, Any]:
    """Score the detections of an LVIS/COCO validation split as ``lsdet.evaluate`` does: they
    are written as ``out_dir/predictions.csv`` (``ImageID`` = image id, ``LabelName`` =
    category id) and evaluated by ``run_evaluation`` with the data config's metric and files
    (``data.validation``). Returns the AP as ``map``, the frequency-bucket APs as
    ``map_<bucket>`` (LVIS: rare, common, frequent) and the metric's other summary figures."""
    source = data.validation
    metric = metric_named(source.metric)
    if detections.skipped_images:  # data.strict=false: unreadable validation images
        log.warning(
            "%d validation images could not be read; the %s metric counts their ground "
            "truth as missed (e.g. %s)",
            len(detections.skipped_images),
            metric,
            detections.skipped_images[0][1],
        )
    mids = np.asarray(data.hierarchy.mids, dtype=object)
    predictions = write_predictions_csv(
        EvaluationFolder(Path(out_dir)).predictions,
        detections.image_ids,
        mids[detections.class_indices],
        detections.scores,
        detections.boxes,
        layout="tf",
    )
    # The evaluate config of lsdet.evaluate's LVIS/COCO mode; the training split's
    # per-category image counts come from the index training built (its cache folder).
    cfg = OmegaConf.create(
        {
            "predictions_csv": str(predictions),
            "output_dir": str(out_dir),
            "plot": True,
            "data": {
                "metric": metric,
                "val": {"annotation_json": source.val_annotation_json},
                "train": {"annotation_json": source.train_annotation_json},
                "cache_dir": source.train_cache_dir,
                "strict": source.strict,
            },
        }
    )
    result, paths = run_evaluation(cfg)
    seconds = round(time.perf_counter() - start, 2)
    summary = json.loads(Path(paths["metrics"]).read_text())
    summary.update(
        run=run_name,
        tag=tag,
        eval_seconds=seconds,
        skipped_images=len(detections.skipped_images),
    )
    write_metrics_json(Path(paths["metrics"]), summary)
    buckets = {row["bucket"]: row["mean_ap"] for row in summary.get("frequency_buckets", [])}
    others = {key: value for key, value in result.summary.items() if key != "AP"}
    return {
        "map": result.map,
        **{f"map_{bucket}": value for bucket, value in buckets.items()},
        **others,
        "eval_seconds": seconds,
    }


def log_evaluation(
    logger: RunLogger, metrics: dict[str, Any], out: EvaluationFolder, step: int
) -> None:
    """The figures, the per-class AP table and the AP-vs-frequency plot to wandb."""
    logger.log({f"val/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=step)
    table = pd.read_csv(out.per_class)
    columns = [c for c in ("mid", "name", "train_images", "bucket", "ap") if c in table]
    rows = table[columns].replace({np.nan: None}).values.tolist()
    logger.log_table("val/per_class_ap", columns, rows, step)
    plot = out.ap_vs_frequency
    if plot.is_file():
        logger.log_image("val/ap_vs_frequency", plot, step)
