"""Training-side summaries and plots: sampler draws per class, AP against class frequency,
and the side-by-side table of finished runs (``python -m lsdet.engine.report RUN_DIR ...``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def sampled_class_counts(
    stream: np.ndarray, class_offsets: np.ndarray, class_images: np.ndarray, num_images: int
) -> np.ndarray:
    """[C] number of drawn images that contain each class, for an epoch's stream of image
    indices (an image drawn twice counts twice)."""
    draws = np.bincount(np.asarray(stream, dtype=np.int64), minlength=num_images)
    per_pair = draws[np.asarray(class_images, dtype=np.int64)]
    cumulative = np.concatenate([[0], np.cumsum(per_pair)])
    offsets = np.asarray(class_offsets, dtype=np.int64)
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def frequency_buckets(image_counts: np.ndarray) -> np.ndarray:
    """Bucket per class (0 rare, 1 common, 2 frequent): thirds of the classes ordered by the
    number of training images (ties broken by class index)."""
    counts = np.asarray(image_counts)
    order = np.lexsort((np.arange(len(counts)), counts))
    buckets = np.empty(len(counts), dtype=np.int64)
    buckets[order] = np.arange(len(counts)) * 3 // max(len(counts), 1)
    return buckets


BUCKET_NAMES = ("rare", "common", "frequent")


def frequency_bucket_summary(ap: np.ndarray, image_counts: np.ndarray) -> dict[str, float]:
    """Mean AP of the rare / common / frequent third of the classes (classes without GT,
    AP NaN, left out)."""
    ap = np.asarray(ap, dtype=np.float64)
    buckets = frequency_buckets(image_counts)
    out = {}
    for b, name in enumerate(BUCKET_NAMES):
        values = ap[(buckets == b) & ~np.isnan(ap)]
        out[name] = float(values.mean()) if len(values) else float("nan")
    return out


def plot_ap_vs_frequency(
    ap: np.ndarray, image_counts: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """Per-class AP against training images of the class (log x), the paper's Figure 5."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ap = np.asarray(ap, dtype=np.float64)
    counts = np.maximum(np.asarray(image_counts), 1)
    keep = ~np.isnan(ap)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(counts[keep], ap[keep], s=12, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("AP (OID metric)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sampler_histogram(
    draws: np.ndarray, image_counts: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """Draws per class in one epoch beside the class's training images, classes sorted by
    frequency (log y)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = np.argsort(-np.asarray(image_counts), kind="stable")
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(x, np.maximum(np.asarray(image_counts)[order], 0.5), label="training images")
    ax.bar(x, np.maximum(np.asarray(draws)[order], 0.5), alpha=0.6, label="draws this epoch")
    ax.set_yscale("log")
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def final_metrics(run_dir: str | Path) -> dict:
    """The last evaluation of a finished run (from its summary.json)."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    evaluated = [h for h in summary["history"] if "map" in h]
    if not evaluated:
        raise ValueError(f"{run_dir}: the run has no evaluation (train.eval_every=never?)")
    return {**evaluated[-1], "status": summary["status"]}


def comparison_table(run_dirs: list[str | Path]) -> str:
    """Markdown table: mAP overall and by frequency bucket per run, and the difference of
    each run to the first (the baseline)."""
    rows = []
    for run_dir in run_dirs:
        metrics = final_metrics(run_dir)
        rows.append((Path(run_dir).name, metrics))
    header = "| run | mAP | rare | common | frequent | vs first |\n|---|---|---|---|---|---|"
    lines = [header]
    base = rows[0][1]["map"]
    for name, m in rows:
        diff = "" if m is rows[0][1] else f"{m['map'] - base:+.4f}"
        lines.append(
            f"| {name} | {m['map']:.4f} | {m['map_rare']:.4f} | {m['map_common']:.4f} | "
            f"{m['map_frequent']:.4f} | {diff} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m lsdet.engine.report",
        description="Side-by-side final mAP (overall, rare/common/frequent) of training runs; "
        "the first run is the baseline.",
    )
    parser.add_argument("run_dirs", nargs="+", help="run folders holding summary.json")
    parser.add_argument("--out", default=None, help="also write the table to this .md file")
    args = parser.parse_args(argv)
    table = comparison_table(args.run_dirs)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
