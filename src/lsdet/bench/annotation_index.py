"""Benchmark: building the annotation index vs just reading the bbox CSV.

Generates an Open-Images-sized bbox CSV (default 1.74M images, 12.2M boxes, 500 classes with
a long-tailed frequency, 13-column V6 layout, rows sorted by ImageID like the real file), then
runs, each in a fresh subprocess so that peak RSS is its own:

* ``pandas``  -- ``pandas.read_csv(path)`` (C parser, default options): the baseline;
* ``pyarrow`` -- ``pyarrow.csv.read_csv(path)``: the faster baseline;
* ``build``   -- ``AnnotationIndex.build`` (read + validate + sort + write the cache);
* ``open``    -- opening the built index and reading one image's boxes.

Steps run in ``--repeats`` rounds; the ratios are the medians of the per-round ratios (the
machine may be shared and noisy). Prints times, peak RSS and the build/read ratios, the cache size on disk, and writes the
figures to ``<workdir>/annotation_index_bench.json``. Goals: build <= 2x the read time,
peak RSS <= 4 GB, cache <= 400 MB, open < 1 s.

    python -m lsdet.bench.annotation_index                     # full size (a few minutes)
    python -m lsdet.bench.annotation_index --images 100000 --boxes 700000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lsdet.bench import peak_rss_bytes

HEADER = [
    "ImageID",
    "Source",
    "LabelName",
    "Confidence",
    "XMin",
    "XMax",
    "YMin",
    "YMax",
    "IsOccluded",
    "IsTruncated",
    "IsGroupOf",
    "IsDepiction",
    "IsInside",
]


def benchmark_mids(num_classes: int) -> list[str]:
    return [f"/m/bench{k:04d}" for k in range(num_classes)]


def hierarchy_path(csv_path: Path) -> Path:
    """The flat hierarchy JSON written beside a generated CSV."""
    return csv_path.with_name(csv_path.stem + "-hierarchy.json")


def generate_bbox_csv(
    path: Path, *, num_images: int, num_boxes: int, num_classes: int = 500, seed: int = 0
) -> None:
    """Write a synthetic 13-column bbox CSV and a flat hierarchy JSON of its classes."""
    # Imported here, not at the top: the children run this module, and a top-level import
    # would add to each child's peak RSS.
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    from tqdm import tqdm

    if num_boxes < num_images:
        raise ValueError("need at least one box per image")
    rng = np.random.default_rng(seed)
    raw_ids = np.unique(rng.integers(0, 2**63, size=int(num_images * 1.01) + 16, dtype=np.int64))
    raw_ids = rng.permutation(raw_ids)[:num_images]
    image_ids = np.array(sorted(f"{value:016x}" for value in raw_ids))
    # Every image gets one box, the rest are spread at random; rows grouped by image.
    box_image = np.concatenate(
        [np.arange(num_images), rng.integers(0, num_images, num_boxes - num_images)]
    )
    box_image.sort()
    class_weights = 1.0 / np.arange(1, num_classes + 1) ** 1.2
    class_probs = class_weights / class_weights.sum()
    mids = np.array(benchmark_mids(num_classes))

    path.parent.mkdir(parents=True, exist_ok=True)
    tree = {"LabelName": "/m/root", "Subcategory": [{"LabelName": mid} for mid in mids]}
    hierarchy_path(path).write_text(json.dumps(tree))
    schema = pa.schema(
        [(name, pa.string()) for name in HEADER[:3]]
        + [
            (name, pa.int8() if name.startswith("Is") or name == "Confidence" else pa.float64())
            for name in HEADER[3:]
        ]
    )
    chunk = 1_000_000
    options = pa_csv.WriteOptions(quoting_style="needed")
    with pa_csv.CSVWriter(path, schema, write_options=options) as writer:
        for start in tqdm(range(0, num_boxes, chunk), desc="writing CSV", unit="Mrow"):
            n = min(chunk, num_boxes - start)
            x = np.sort(rng.random((n, 2)), axis=1).round(6)
            y = np.sort(rng.random((n, 2)), axis=1).round(6)
            flags = (rng.random((n, 5)) < [0.6, 0.3, 0.05, 0.05, 0.05]).astype(np.int8)
            columns = [
                image_ids[box_image[start : start + n]],
                np.where(rng.random(n) < 0.8, "xclick", "activemil"),
                mids[rng.choice(num_classes, size=n, p=class_probs)],
                np.ones(n, dtype=np.int8),
                x[:, 0],
                x[:, 1],
                y[:, 0],
                y[:, 1],
                *flags.T,
            ]
            writer.write_table(pa.table(columns, schema=schema))


# ---------------------------------------------------------------------------- children
def _child(task: str, csv_path: Path, cache_dir: Path) -> dict:
    # Each task imports only what it measures: its peak RSS includes no other task's modules.
    started = time.perf_counter()
    if task == "pandas":
        import pandas as pd

        rows = len(pd.read_csv(csv_path))
    elif task == "pyarrow":
        import pyarrow.csv as pa_csv

        rows = pa_csv.read_csv(csv_path).num_rows
    elif task == "build":
        from lsdet.data.hierarchy import Hierarchy
        from lsdet.data.index import AnnotationIndex

        hierarchy = Hierarchy.from_json(hierarchy_path(csv_path))
        started = time.perf_counter()
        rows = AnnotationIndex.build(csv_path, hierarchy, cache_dir).num_boxes
    elif task == "open":
        from lsdet.data.index import AnnotationIndex

        started = time.perf_counter()
        index = AnnotationIndex(cache_dir)
        rows = len(index.annotations(index.num_images // 2).class_ids)
    else:
        raise ValueError(task)
    return {"seconds": time.perf_counter() - started, "peak_rss": peak_rss_bytes(), "rows": rows}


def _run_child(task: str, csv_path: Path, cache_dir: Path) -> dict:
    command = [sys.executable, "-m", "lsdet.bench.annotation_index", "--child", task]
    command += ["--csv", str(csv_path), "--cache", str(cache_dir)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lsdet.bench.annotation_index")
    parser.add_argument("--images", type=int, default=1_743_042)
    parser.add_argument("--boxes", type=int, default=12_195_144)
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all steps")
    parser.add_argument("--workdir", type=Path, default=Path("data/bench/annotation_index"))
    parser.add_argument("--child", choices=["pandas", "pyarrow", "build", "open"])
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.csv, args.cache)))
        return

    csv_path = args.workdir / f"bbox-{args.images}-{args.boxes}-{args.classes}.csv"
    cache_dir = args.workdir / f"index-{args.images}-{args.boxes}-{args.classes}"
    if not csv_path.exists():
        started = time.perf_counter()
        generate_bbox_csv(
            csv_path, num_images=args.images, num_boxes=args.boxes, num_classes=args.classes
        )
        print(f"generated {csv_path} in {time.perf_counter() - started:.1f} s")
    csv_bytes = csv_path.stat().st_size
    print(f"CSV: {args.images} images, {args.boxes} boxes, {csv_bytes / 1e6:.0f} MB")

    # The machine is shared and its load swings: run the steps in rounds (each round's steps
    # back to back, so they see a similar load), and quote the median of the per-round ratios.
    tasks = ("pandas", "pyarrow", "build", "open")
    rounds: list[dict[str, dict]] = []
    for round_number in range(args.repeats):
        rounds.append({})
        for task in tasks:
            result = _run_child(task, csv_path, cache_dir)
            rounds[-1][task] = result
            print(f"  round {round_number + 1} {task:8s} {result['seconds']:.2f} s", flush=True)
    cache_bytes = _folder_bytes(cache_dir)

    def seconds(task: str) -> np.ndarray:
        return np.array([one[task]["seconds"] for one in rounds])

    def peak_rss(task: str) -> float:
        return max(one[task]["peak_rss"] for one in rounds)

    labels = {
        "pandas": "pandas.read_csv (baseline)",
        "pyarrow": "pyarrow.csv.read_csv (baseline)",
        "build": "AnnotationIndex.build",
        "open": "AnnotationIndex open + 1 image",
    }
    print(f"\n{'step':<34}{'median s':>10}{'min s':>8}{'max s':>8}{'peak RSS GB':>13}")
    for task, label in labels.items():
        times = seconds(task)
        print(
            f"{label:<34}{np.median(times):>10.2f}{times.min():>8.2f}{times.max():>8.2f}"
            f"{peak_rss(task) / 1e9:>13.2f}"
        )
    over_pandas = seconds("build") / seconds("pandas")
    over_pyarrow = seconds("build") / seconds("pyarrow")
    summary = {
        "images": args.images,
        "boxes": args.boxes,
        "csv_mb": csv_bytes / 1e6,
        "cache_mb": cache_bytes / 1e6,
        "build_over_pandas_per_round": over_pandas.tolist(),
        "build_over_pyarrow_per_round": over_pyarrow.tolist(),
        "build_over_pandas": float(np.median(over_pandas)),
        "build_over_pyarrow": float(np.median(over_pyarrow)),
        "build_peak_rss_gb": peak_rss("build") / 1e9,
        "open_seconds": float(np.median(seconds("open"))),
        "rounds": rounds,
    }
    rounds_text = ", ".join(f"{ratio:.2f}" for ratio in over_pandas)
    print(
        f"\nbuild / pandas read : {summary['build_over_pandas']:.2f}x median ({rounds_text})"
        "   goal <= 2x"
    )
    rounds_text = ", ".join(f"{ratio:.2f}" for ratio in over_pyarrow)
    print(f"build / pyarrow read: {summary['build_over_pyarrow']:.2f}x median ({rounds_text})")
    print(f"build peak RSS      : {summary['build_peak_rss_gb']:.2f} GB   goal <= 4 GB")
    print(f"cache on disk       : {summary['cache_mb']:.0f} MB   goal <= 400 MB")
    print(f"open                : {summary['open_seconds'] * 1000:.1f} ms   goal < 1 s")
    out = args.workdir / "annotation_index_bench.json"
    out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
