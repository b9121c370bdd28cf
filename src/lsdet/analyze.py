"""Dataset analysis: the paper's Figures 2 and 3 and what each sampler does to the classes.

    python -m lsdet.analyze data=synth              # the synthetic benchmark
    python -m lsdet.analyze data=openimages data.root=/path/to/openimages

Writes into ``output_dir`` (default: the Hydra run dir) a PNG and a CSV per analysis and a
``summary.json``, and prints the main figures:

* ``images_per_class``: training images per class (boxes as annotated, not expanded),
  sorted, log scale, and the imbalance magnitude (largest / smallest non-zero count):
  the paper's Figure 2;
* ``confused_pairs``: the class pairs whose boxes most often coincide (IoU >=
  ``iou_threshold``) in the same image, ancestor/descendant pairs left out: Figure 3a;
* ``parents_without_leaf``: per parent class, the share of its boxes that coincide with no
  box of one of its leaf descendants (the object was labelled with the parent only):
  Figure 3b;
* ``sampling_exposure``: for each ``lam`` of ``lams``, one epoch drawn with the
  soft-balance sampler of :mod:`lsdet.sampling` (lam 0 = by image counts, 1 = class-aware):
  per class, how many times its images are drawn on average and the share of its images
  never drawn (the paper: under class-aware sampling Person loses 99% of its images,
  Pressure cooker is repeated 252 times).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lsdet.data.formats import read_class_descriptions
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import AnnotationIndex
from lsdet.data.rates import CoincidenceCounts, count_coincidences
from lsdet.data.synth import ensure_synthetic_benchmark
from lsdet.sampling import build_sampler

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- numbers
def images_per_class(
    image_counts: np.ndarray, hierarchy: Hierarchy, names: dict[str, str]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Classes sorted by training image count (descending) and the imbalance magnitude."""
    image_counts = np.asarray(image_counts, dtype=np.int64)
    table = pd.DataFrame(
        {
            "mid": hierarchy.mids,
            "name": [names.get(mid, mid) for mid in hierarchy.mids],
            "is_leaf": hierarchy.leaf_mask,
            "images": image_counts,
        }
    ).sort_values("images", ascending=False, kind="stable")
    present = image_counts[image_counts > 0]
    leaves = image_counts[hierarchy.leaf_mask & (image_counts > 0)]
    summary = {
        "classes": int(hierarchy.num_classes),
        "classes_with_images": int(len(present)),
        "largest": int(present.max()) if len(present) else 0,
        "smallest": int(present.min()) if len(present) else 0,
        "imbalance": float(present.max() / present.min()) if len(present) else float("nan"),
        "leaf_imbalance": float(leaves.max() / leaves.min()) if len(leaves) else float("nan"),
    }
    return table.reset_index(drop=True), summary


def confused_pairs(
    counts: CoincidenceCounts,
    hierarchy: Hierarchy,
    names: dict[str, str],
    *,
    top: int = 20,
    min_class_boxes: int = 10,
) -> pd.DataFrame:
    """The ``top`` pairs (i, j), not ancestor/descendant, with the highest share of class-i
    boxes that coincide with a box of class j; classes with fewer than ``min_class_boxes``
    boxes are left out (a rate of 1/1 says little)."""
    rates = counts.raw_rates()
    eligible = (counts.pair_counts > 0) & (counts.box_counts >= min_class_boxes)[:, None]
    eligible &= ~(hierarchy.ancestors | hierarchy.descendants)
    i, j = np.nonzero(eligible)
    order = np.lexsort((j, i, -rates[i, j]))[:top]
    i, j = i[order], j[order]
    mids = np.asarray(hierarchy.mids, dtype=object)
    return pd.DataFrame(
        {
            "mid": mids[i],
            "name": [names.get(m, m) for m in mids[i]],
            "coinciding_mid": mids[j],
            "coinciding_name": [names.get(m, m) for m in mids[j]],
            "rate": rates[i, j],
            "coinciding_boxes": counts.pair_counts[i, j],
            "class_boxes": counts.box_counts[i],
        }
    )


def parents_without_leaf(
    counts: CoincidenceCounts,
    class_idx: np.ndarray,
    hierarchy: Hierarchy,
    names: dict[str, str],
) -> pd.DataFrame:
    """Per parent class with boxes: its boxes, and the share that coincide with no box of
    any of its leaf descendants. ``counts`` must come from the same rows as ``class_idx``."""
    class_idx = np.asarray(class_idx, dtype=np.int64)
    rows, classes = counts.coinciding_rows, counts.coinciding_classes
    own = class_idx[rows]
    # A coincidence gives box `row` (of class own) a leaf label if the class it meets is a
    # leaf descendant of own.
    with_leaf = hierarchy.descendants[own, classes] & hierarchy.leaf_mask[classes]
    has_leaf = np.zeros(len(class_idx), dtype=bool)
    has_leaf[rows[with_leaf]] = True
    parents = np.flatnonzero(~hierarchy.leaf_mask)
    boxes = np.bincount(class_idx, minlength=hierarchy.num_classes)[parents]
    without = np.bincount(class_idx[~has_leaf], minlength=hierarchy.num_classes)[parents]
    keep = boxes > 0
    parents, boxes, without = parents[keep], boxes[keep], without[keep]
    table = pd.DataFrame(
        {
            "mid": [hierarchy.mids[k] for k in parents],
            "name": [names.get(hierarchy.mids[k], hierarchy.mids[k]) for k in parents],
            "boxes": boxes,
            "boxes_without_leaf": without,
            "ratio_without_leaf": without / boxes,
        }
    )
    return table.sort_values("ratio_without_leaf", ascending=False, kind="stable").reset_index(
        drop=True
    )


def exposure_from_stream(
    stream: np.ndarray, class_offsets: np.ndarray, class_images: np.ndarray, num_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class [C]: mean number of times its images occur in ``stream`` (one epoch's image
    indices) and the share of its images that never occur (NaN for classes without images)."""
    class_offsets = np.asarray(class_offsets, dtype=np.int64)
    class_images = np.asarray(class_images, dtype=np.int64)
    seen = np.bincount(np.asarray(stream, dtype=np.int64), minlength=num_images)
    per_pair = seen[class_images]
    # Sums per class over the CSR runs (cumulative sums handle empty runs).
    total_seen = np.diff(np.r_[0, np.cumsum(per_pair)][class_offsets])
    total_unseen = np.diff(np.r_[0, np.cumsum(per_pair == 0)][class_offsets])
    sizes = np.diff(class_offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        times_seen = np.where(sizes > 0, total_seen / sizes, np.nan)
        never_seen = np.where(sizes > 0, total_unseen / sizes, np.nan)
    return times_seen, never_seen


def sampling_exposure(
    class_offsets: np.ndarray,
    class_images: np.ndarray,
    num_images: int,
    lams: list[float],
    *,
    seed: int = 0,
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """For each lam: (times seen [C], never-seen share [C]) over one soft-balance epoch."""
    out = {}
    for lam in lams:
        sampler = build_sampler(
            {"name": "soft_balance", "lam": float(lam), "num_samples": None},
            class_offsets=class_offsets,
            class_images=class_images,
            num_images=num_images,
            seed=seed,
        )
        stream = sampler.global_stream(0)
        out[float(lam)] = exposure_from_stream(stream, class_offsets, class_images, num_images)
    return out


# --------------------------------------------------------------------------- plots
def _plot_images_per_class(table: pd.DataFrame, summary: dict, path: Path) -> None:
    counts = table["images"].to_numpy()
    counts = counts[counts > 0]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("classes, sorted by training images")
    ax.set_ylabel("training images (log)")
    ax.set_title(
        f"Images per class: imbalance {summary['imbalance']:.0f} "
        f"({summary['largest']} / {summary['smallest']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_bars(labels: list[str], values: np.ndarray, xlabel: str, title: str, path: Path):
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.28 * len(labels) + 1)))
    y = np.arange(len(labels))
    ax.barh(y, values, color="tab:orange")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_exposure(image_counts: np.ndarray, exposure: dict, path: Path) -> None:
    order = np.argsort(-image_counts, kind="stable")
    order = order[image_counts[order] > 0]
    rank = np.arange(len(order))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for lam, (times_seen, never_seen) in exposure.items():
        top.plot(rank, times_seen[order], label=f"lam={lam:g}")
        bottom.plot(rank, never_seen[order], label=f"lam={lam:g}")
    top.set_yscale("log")
    top.set_ylabel("times each image is drawn\n(class mean, one epoch)")
    top.axhline(1.0, color="grey", lw=0.8, ls=":")
    bottom.set_ylabel("share of the class's images\nnever drawn")
    bottom.set_xlabel("classes, sorted by training images (frequent first)")
    top.legend()
    top.set_title("Soft-balance sampling: one epoch per lambda")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- driver
def analyze(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Runs every analysis on ``cfg.data``'s ``cfg.split`` split; writes into ``output_dir``."""
    data_cfg = cfg.data
    if data_cfg.get("generate") is not None and cfg.get("generate_if_missing", True):
        ensure_synthetic_benchmark(data_cfg)
    split = str(cfg.split)
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, got {split!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    names = read_class_descriptions(data_cfg.class_descriptions_csv)
    hierarchy = Hierarchy.from_json(data_cfg.hierarchy_json, subset_mids=list(names))
    files = data_cfg[split]
    index = AnnotationIndex.build_or_open(
        files.bbox_csv,
        hierarchy,
        Path(str(data_cfg.cache_dir)) / split,
        image_labels_csv=files.image_labels_csv,
        strict=bool(data_cfg.get("strict", True)),
    )
    summary: dict[str, Any] = {
        "data": str(data_cfg.name),
        "split": split,
        "images": index.num_images,
        "boxes": index.num_boxes,
    }

    image_counts = np.asarray(index.class_image_counts())
    per_class, summary["images_per_class"] = images_per_class(image_counts, hierarchy, names)
    per_class.to_csv(output_dir / "images_per_class.csv", index=False)
    _plot_images_per_class(
        per_class, summary["images_per_class"], output_dir / "images_per_class.png"
    )

    class_idx = np.asarray(index.class_ids, dtype=np.int64)
    image_codes = np.repeat(np.arange(index.num_images), index.num_boxes_per_image())
    counts = count_coincidences(
        image_codes,
        class_idx,
        np.asarray(index.boxes),
        hierarchy.num_classes,
        iou_threshold=float(cfg.iou_threshold),
    )
    pairs = confused_pairs(
        counts, hierarchy, names, top=int(cfg.top_pairs), min_class_boxes=int(cfg.min_class_boxes)
    )
    pairs.to_csv(output_dir / "confused_pairs.csv", index=False)
    _plot_bars(
        [f"{a} -> {b}" for a, b in zip(pairs["name"], pairs["coinciding_name"], strict=True)],
        pairs["rate"].to_numpy(),
        f"share of the first class's boxes coinciding (IoU >= {cfg.iou_threshold}) "
        "with a box of the second",
        "Top confused class pairs",
        output_dir / "confused_pairs.png",
    )
    summary["confused_pairs"] = pairs[["name", "coinciding_name", "rate"]].to_dict("records")

    parents = parents_without_leaf(counts, class_idx, hierarchy, names)
    parents.to_csv(output_dir / "parents_without_leaf.csv", index=False)
    _plot_bars(
        list(parents["name"]),
        parents["ratio_without_leaf"].to_numpy(),
        "share of the parent's boxes with no coinciding leaf-descendant box",
        "Parent boxes without a leaf label",
        output_dir / "parents_without_leaf.png",
    )
    summary["parents_without_leaf"] = dict(
        zip(parents["name"], parents["ratio_without_leaf"].round(4), strict=True)
    )

    class_offsets, class_images = index.class_to_images()
    exposure = sampling_exposure(
        np.asarray(class_offsets),
        np.asarray(class_images),
        index.num_images,
        [float(lam) for lam in cfg.lams],
        seed=int(cfg.seed),
    )
    table = per_class[["mid", "name", "images"]].copy()
    position = np.asarray([hierarchy.index(mid) for mid in table["mid"]])
    summary["sampling_exposure"] = {}
    for lam, (times_seen, never_seen) in exposure.items():
        table[f"times_seen_lam{lam:g}"] = times_seen[position]
        table[f"never_seen_lam{lam:g}"] = never_seen[position]
        head, tail = position[0], position[table["images"].to_numpy() > 0][-1]
        summary["sampling_exposure"][f"lam={lam:g}"] = {
            "largest_class": str(table["name"].iloc[0]),
            "largest_class_never_seen": round(float(never_seen[head]), 4),
            "smallest_class": names.get(hierarchy.mids[tail], hierarchy.mids[tail]),
            "smallest_class_times_seen": round(float(times_seen[tail]), 2),
        }
    table.to_csv(output_dir / "sampling_exposure.csv", index=False)
    _plot_exposure(image_counts, exposure, output_dir / "sampling_exposure.png")

    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _print_summary(summary, pairs, parents)
    return summary


def _print_summary(summary: dict, pairs: pd.DataFrame, parents: pd.DataFrame) -> None:
    stats = summary["images_per_class"]
    print(
        f"{summary['data']} {summary['split']}: {summary['images']} images, {summary['boxes']} "
        f"boxes, {stats['classes_with_images']}/{stats['classes']} classes with images"
    )
    print(
        f"imbalance magnitude {stats['imbalance']:.1f} ({stats['largest']} / {stats['smallest']} "
        f"images), leaves only {stats['leaf_imbalance']:.1f}"
    )
    print("\ntop confused pairs (share of the first class's boxes):")
    columns = ["name", "coinciding_name", "rate", "coinciding_boxes"]
    print(pairs[columns].head(10).to_string() if len(pairs) else "  (none)")
    print("\nparent boxes without a leaf label:")
    columns = ["name", "boxes", "ratio_without_leaf"]
    print(parents[columns].head(10).to_string() if len(parents) else "  (no parent boxes)")
    print("\nsampling, one epoch:")
    for lam, row in summary["sampling_exposure"].items():
        print(
            f"  {lam}: {row['largest_class']} never drawn {100 * row['largest_class_never_seen']:.1f}%"
            f", {row['smallest_class']} drawn {row['smallest_class_times_seen']:.1f}x per image"
        )


@hydra.main(version_base="1.3", config_path="../../conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    analyze(cfg, output_dir)
    print(f"\nwrote the analysis to {output_dir}")


if __name__ == "__main__":
    main()
