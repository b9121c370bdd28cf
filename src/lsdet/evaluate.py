"""``python -m lsdet.evaluate``: the Open Images Challenge metric on a predictions CSV.

Outputs (in ``output_dir``): ``metrics.json`` (mAP, per-class AP, the report of skipped and
ignored predictions, the frequency-bucket summary), ``per_class.csv`` (MID, name, AP, GT
counts, detections, true/false positives, training images, bucket),
``frequency_buckets.csv`` (rare / common / frequent thirds of the classes by training
images) and ``ap_vs_frequency.png`` (per-class AP against training images, the paper's
Figure 5). The reporting functions are public so that the trainer writes the same files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from lsdet.data import Hierarchy, read_class_descriptions
from lsdet.evaluation import ChallengeResult, load_hierarchy, oid_challenge_map

logger = logging.getLogger(__name__)

BUCKETS = ("rare", "common", "frequent")


def frequency_buckets(train_image_counts: np.ndarray, evaluated: np.ndarray) -> np.ndarray:
    """Bucket name per class: the evaluated classes sorted by training images, cut in thirds.

    ``train_image_counts`` and ``evaluated`` (bool) are ``[C]``; classes not evaluated get
    ``""``. Ties are cut by class order (a stable sort), so the thirds have equal sizes.
    """
    counts = np.asarray(train_image_counts)
    evaluated_classes = np.flatnonzero(np.asarray(evaluated, dtype=bool))
    buckets = np.full(len(counts), "", dtype=object)
    by_frequency = evaluated_classes[np.argsort(counts[evaluated_classes], kind="stable")]
    for name, members in zip(BUCKETS, np.array_split(by_frequency, 3), strict=True):
        buckets[members] = name
    return buckets


def per_class_table(
    result: ChallengeResult,
    *,
    names: dict[str, str] | None = None,
    train_image_counts: np.ndarray | None = None,
) -> pd.DataFrame:
    """The per-class table: result counts plus name, training images and frequency bucket."""
    table = result.per_class_frame()
    table.insert(1, "name", [(names or {}).get(mid, "") for mid in result.mids])
    if train_image_counts is not None:
        table["train_images"] = np.asarray(train_image_counts, dtype=np.int64)
        table["bucket"] = frequency_buckets(train_image_counts, result.has_ground_truth)
    return table


def bucket_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean AP and training-image range per frequency bucket of a :func:`per_class_table`."""
    rows = []
    for name in BUCKETS:
        members = table[table["bucket"] == name]
        rows.append(
            {
                "bucket": name,
                "num_classes": len(members),
                "mean_ap": float(members["ap"].mean()) if len(members) else float("nan"),
                "min_train_images": int(members["train_images"].min()) if len(members) else 0,
                "max_train_images": int(members["train_images"].max()) if len(members) else 0,
            }
        )
    return pd.DataFrame(rows)


def plot_ap_vs_frequency(table: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Per-class AP against class frequency (log scale), buckets shaded: the paper's Figure 5.

    Uses ``train_images`` when the table has it, otherwise the GT instances of the
    evaluation set.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    shown = table[table["ap"].notna()]
    if "train_images" in shown:
        frequency, label = shown["train_images"].to_numpy(), "training images of the class"
    else:
        frequency = (shown["num_gt_boxes"] + shown["num_group_of_boxes"]).to_numpy()
        label = "GT boxes of the class (evaluation set)"
    frequency = np.maximum(frequency, 1)
    figure, axes = plt.subplots(figsize=(9, 4.5))
    if "bucket" in shown:
        colours = {"rare": "tab:red", "common": "tab:orange", "frequent": "tab:green"}
        for name in BUCKETS:
            member = (shown["bucket"] == name).to_numpy()
            if member.any():
                mean_ap = shown["ap"].to_numpy()[member].mean()
                axes.scatter(
                    frequency[member],
                    shown["ap"].to_numpy()[member],
                    s=12,
                    alpha=0.7,
                    color=colours[name],
                    label=f"{name}: {member.sum()} classes, mean AP {mean_ap:.3f}",
                )
    else:
        axes.scatter(frequency, shown["ap"], s=12, alpha=0.7)
    order = np.argsort(frequency, kind="stable")
    window = max(1, len(order) // 20)
    if len(order) >= 2 * window > 0:
        smooth = pd.Series(shown["ap"].to_numpy()[order]).rolling(window, center=True).mean()
        axes.plot(frequency[order], smooth, color="black", linewidth=1.5, label="running mean")
    axes.set_xscale("log")
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel(label)
    axes.set_ylabel("AP (Open Images Challenge)")
    axes.set_title(title or f"Per-class AP vs frequency ({len(shown)} classes)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_evaluation_outputs(
    result: ChallengeResult,
    output_dir: str | Path,
    *,
    names: dict[str, str] | None = None,
    train_image_counts: np.ndarray | None = None,
    plot: bool = True,
    extra: dict | None = None,
) -> dict[str, Path]:
    """Write metrics.json, per_class.csv and (with training counts) frequency_buckets.csv,
    and the plot; returns the paths by kind. ``extra`` is merged into metrics.json."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = per_class_table(result, names=names, train_image_counts=train_image_counts)
    paths = {"per_class": output_dir / "per_class.csv", "metrics": output_dir / "metrics.json"}
    table.to_csv(paths["per_class"], index=False)
    metrics = {**result.to_dict(), **(extra or {})}
    if train_image_counts is not None:
        summary = bucket_summary(table)
        paths["buckets"] = output_dir / "frequency_buckets.csv"
        summary.to_csv(paths["buckets"], index=False)
        metrics["frequency_buckets"] = summary.to_dict(orient="records")
    paths["metrics"].write_text(json.dumps(metrics, indent=2))
    if plot:
        paths["plot"] = plot_ap_vs_frequency(table, output_dir / "ap_vs_frequency.png")
    return paths


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


@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    if cfg.get("checkpoint"):  # a training checkpoint: predict in memory, then evaluate
        from lsdet.engine.inference import evaluate_checkpoint

        evaluate_checkpoint(cfg)
    else:
        evaluate_csv(cfg)


if __name__ == "__main__":
    main()
