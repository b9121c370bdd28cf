"""Benchmark: concurrent rates over an Open Images sized training set.

The Challenge 2019 train CSV has 12.2M boxes on 1.74M images and 500 classes (443 leaves,
57 parents). The synthetic set here has those totals: boxes per image from a log-normal
(mean 7, sigma 1, at most 500 per image, so a few images hold hundreds of boxes), classes
drawn with the heavy-tailed sizes of :func:`lsdet.bench.sampling.class_sizes`, a two-level
hierarchy, and ``--coincident`` of the boxes (default 8%) near-copies of another box of the
same image under another class (leaf and parent, two leaves), which is what the rates count.

Timed side by side:
  vectorised   ``concurrent_rates_from_boxes`` on the arrays (what the trainer calls with
               the annotation index), all images;
  per-image    the straightforward implementation: a Python loop over images with the
               pairwise ``box_iou`` matrix, timed on ``--baseline-images`` images and
               extrapolated to all (ratio quoted);
  with --csv   the file is also written, and ``estimate_concurrent_rates(bbox_csv, ...)`` is
               timed end to end (reading the CSV included) beside the CSV read alone.

    python -m lsdet.bench.concurrent_rates                  # Open Images size
    python -m lsdet.bench.concurrent_rates --csv            # + the CSV entry point (~1 GB file)
    python -m lsdet.bench.concurrent_rates --images 100000  # smaller
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from lsdet.bench import peak_rss_bytes
from lsdet.bench.sampling import class_sizes
from lsdet.boxes import box_iou
from lsdet.data.formats import read_bbox_csv
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.rates import concurrent_rates_from_boxes, estimate_concurrent_rates

OPEN_IMAGES_IMAGES = 1_743_042
OPEN_IMAGES_BOXES = 12_195_144


def synthetic_hierarchy(num_leaves: int = 443, num_parents: int = 57) -> dict:
    """A two-level tree: ``num_parents`` parents, the leaves spread over them."""
    parents = [{"LabelName": f"/b/p{k}", "Subcategory": []} for k in range(num_parents)]
    for leaf in range(num_leaves):
        parents[leaf % num_parents]["Subcategory"].append({"LabelName": f"/b/l{leaf}"})
    return {"LabelName": "/b/root", "Subcategory": parents}


def synthetic_boxes(
    num_images: int, num_boxes: int, num_classes: int, coincident: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image index [N] int64, class index [N] int64, boxes [N, 4] float32), sorted by image."""
    rng = np.random.default_rng(seed)
    per_image = np.clip(np.round(rng.lognormal(np.log(7.0) - 0.5, 1.0, size=num_images)), 1, 500)
    per_image = np.maximum(1, np.round(per_image * num_boxes / per_image.sum())).astype(np.int64)
    image = np.repeat(np.arange(num_images), per_image)
    total = len(image)
    sizes = class_sizes(num_classes, total, num_images, seed=seed).astype(np.float64)
    label = rng.choice(num_classes, size=total, p=sizes / sizes.sum())
    xy = rng.uniform(0, 0.7, size=(total, 2)).astype(np.float32)
    wh = rng.uniform(0.02, 0.3, size=(total, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    # Near-copies: a box takes the previous box of its image (jittered) under another class.
    copy = rng.random(total) < coincident
    copy[0] = False
    copy &= image == np.r_[-1, image[:-1]]
    rows = np.flatnonzero(copy)
    boxes[rows] = boxes[rows - 1] + rng.normal(0, 0.002, size=(len(rows), 4)).astype(np.float32)
    return image, label, np.clip(boxes, 0, 1)


def per_image_loop(image, label, boxes, num_classes, tau):
    """The straightforward reference: one pairwise IoU matrix per image."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])
    ends = np.r_[starts[1:], len(image)]
    for start, end in zip(starts, ends, strict=True):
        lab = label[start:end]
        hit = (box_iou(boxes[start:end], boxes[start:end]) >= tau) & (lab[:, None] != lab[None])
        rows, cols = np.nonzero(hit)
        for row, j in set(zip(rows.tolist(), lab[cols].tolist(), strict=True)):
            counts[lab[row], j] += 1
    return counts


def write_csv(path: Path, image, label, boxes, mids) -> None:
    # Imported here: only --csv needs pyarrow, and the RSS figures of the in-memory run
    # should not include it.
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n = len(image)
    zeros = np.zeros(n, dtype=np.int8)
    table = pa.table(
        {
            "ImageID": pa.array(np.char.mod("%016x", image)),
            "Source": pa.array(np.full(n, "xclick")),
            "LabelName": pa.array(np.asarray(mids, dtype=object)[label]),
            "Confidence": pa.array(np.ones(n, dtype=np.int8)),
            "XMin": boxes[:, 0],
            "XMax": boxes[:, 2],
            "YMin": boxes[:, 1],
            "YMax": boxes[:, 3],
            "IsOccluded": zeros,
            "IsTruncated": zeros,
            "IsGroupOf": zeros,
            "IsDepiction": zeros,
            "IsInside": zeros,
        }
    )
    pacsv.write_csv(table, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=OPEN_IMAGES_IMAGES)
    parser.add_argument("--boxes", type=int, default=None, help="default: 7 per image")
    parser.add_argument("--coincident", type=float, default=0.08)
    parser.add_argument("--baseline-images", type=int, default=20_000)
    parser.add_argument("--csv", action="store_true", help="also time the CSV entry point")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    num_boxes = args.boxes or round(args.images * OPEN_IMAGES_BOXES / OPEN_IMAGES_IMAGES)

    workdir = tempfile.TemporaryDirectory()
    hierarchy_json = Path(workdir.name) / "hierarchy.json"
    hierarchy_json.write_text(json.dumps(synthetic_hierarchy()))
    hierarchy = Hierarchy.from_json(hierarchy_json)
    start = time.perf_counter()
    image, label, boxes = synthetic_boxes(
        args.images, num_boxes, hierarchy.num_classes, args.coincident, args.seed
    )
    print(
        f"synthetic set: {len(label):,} boxes on {args.images:,} images, "
        f"{hierarchy.num_classes} classes ({int(hierarchy.leaf_mask.sum())} leaves), "
        f"max {np.bincount(image).max()} boxes per image, built in "
        f"{time.perf_counter() - start:.1f} s"
    )

    rss_before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    rates = concurrent_rates_from_boxes(image, label, boxes, hierarchy)
    vectorised_s = time.perf_counter() - start
    peak_rss = peak_rss_bytes()

    leaf_rows = hierarchy.leaf_mask[label]
    sample_images = min(args.baseline_images, args.images)
    in_sample = leaf_rows & (image < sample_images)
    start = time.perf_counter()
    per_image_loop(image[in_sample], label[in_sample], boxes[in_sample], hierarchy.num_classes, 0.9)
    loop_s = (time.perf_counter() - start) * args.images / sample_images

    nonzero = rates[1:, 1:][~(hierarchy.ancestors | hierarchy.descendants)]
    results = {
        "boxes": int(len(label)),
        "images": args.images,
        "vectorised_s": round(vectorised_s, 2),
        "per_image_loop_s_extrapolated": round(loop_s, 1),
        "speedup": round(loop_s / vectorised_s, 1),
        "rss_before_mb": round(rss_before / 2**20),
        "peak_rss_mb": round(peak_rss / 2**20),
        "nonzero_non_hierarchy_rates": int((nonzero > 0).sum()),
    }
    print(
        f"process RSS {rss_before / 2**20:.0f} MB with the boxes loaded, peak "
        f"{peak_rss / 2**20:.0f} MB after the vectorised run"
    )
    print(f"{'method':<34}{'seconds':>10}{'ratio':>8}")
    print(f"{'vectorised (arrays)':<34}{vectorised_s:>10.2f}{1.0:>8.1f}")
    print(
        f"{'per-image loop (extrapolated)':<34}{loop_s:>10.1f}{loop_s / vectorised_s:>8.1f}"
        f"   ({sample_images:,} images timed)"
    )

    if args.csv:
        bbox_csv = Path(workdir.name) / "train-bbox.csv"
        start = time.perf_counter()
        write_csv(bbox_csv, image, label, boxes, hierarchy.mids)
        print(
            f"wrote {bbox_csv.stat().st_size / 2**20:.0f} MB CSV in "
            f"{time.perf_counter() - start:.1f} s"
        )
        start = time.perf_counter()
        read_bbox_csv(bbox_csv, known_mids=hierarchy.mids)
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        from_csv, _ = estimate_concurrent_rates(bbox_csv, hierarchy_json)
        csv_s = time.perf_counter() - start
        same = bool(np.allclose(from_csv, rates, atol=1e-6))
        print(f"{'read_bbox_csv alone':<34}{read_s:>10.2f}{read_s / vectorised_s:>8.1f}")
        print(
            f"{'estimate_concurrent_rates (CSV)':<34}{csv_s:>10.2f}{csv_s / vectorised_s:>8.1f}"
            f"   (same rates as from arrays: {same})"
        )
        results.update(read_csv_s=round(read_s, 2), csv_entry_point_s=round(csv_s, 2))
    workdir.cleanup()
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
