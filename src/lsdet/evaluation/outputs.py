"""The evaluator's files for one evaluation: ``metrics.json`` (mAP, per-class AP, the report
of skipped and ignored rows, the frequency-bucket summary), ``per_class.csv`` (MID, name, AP,
GT counts, detections, true/false positives, training images, bucket),
``frequency_buckets.csv`` (rare / common / frequent thirds of the classes by training images)
and ``ap_vs_frequency.png`` (per-class AP against training images, the paper's Figure 5).
``lsdet.evaluate``, ``lsdet.predict`` and the trainer's validation all write them here."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsdet.evaluation.core import ChallengeResult

# The file names of one evaluation's folder, the one place that spells them: what
# write_evaluation_outputs and the LVIS/COCO metric (lsdet.evaluation.lvis_metric) write, the
# per-image records (lsdet.evaluation.image_records) and the detections an LVIS/COCO
# validation scores (lsdet.inference.validation). lsdet.engine.run_folder's EvaluationFolder
# gives their paths in a run folder.
METRICS_JSON = "metrics.json"
PER_CLASS_CSV = "per_class.csv"
FREQUENCY_BUCKETS_CSV = "frequency_buckets.csv"
AP_VS_FREQUENCY_PNG = "ap_vs_frequency.png"
IMAGE_RECORDS_NPZ = "image_records.npz"
PREDICTIONS_CSV = "predictions.csv"

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
    # Imported where a plot is drawn: matplotlib takes about a second to import, and the
    # file-only Agg backend is chosen here, not for whoever imports this module.
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


def write_metrics_json(path: Path, metrics: dict[str, Any]) -> Path:
    """``metrics`` as strict JSON (NaN and infinities as ``null``), the one way every metric
    writes its metrics.json."""
    path.write_text(json.dumps(json_ready(metrics), indent=2, allow_nan=False))
    return path


def json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None (JSON ``null``: ``json.dumps``
    would write ``NaN``, which is not JSON) and numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    and the plot; returns the paths by kind. ``extra`` is merged into metrics.json, which
    is strict JSON: an undefined number (the mean AP of an empty bucket) is ``null``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = per_class_table(result, names=names, train_image_counts=train_image_counts)
    paths = {"per_class": output_dir / PER_CLASS_CSV, "metrics": output_dir / METRICS_JSON}
    table.to_csv(paths["per_class"], index=False)
    metrics = {**result.to_dict(), **(extra or {})}
    if train_image_counts is not None:
        summary = bucket_summary(table)
        paths["buckets"] = output_dir / FREQUENCY_BUCKETS_CSV
        summary.to_csv(paths["buckets"], index=False)
        metrics["frequency_buckets"] = summary.to_dict(orient="records")
    write_metrics_json(paths["metrics"], metrics)
    if plot:
        paths["plot"] = plot_ap_vs_frequency(table, output_dir / AP_VS_FREQUENCY_PNG)
    return paths
