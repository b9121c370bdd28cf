"""Benchmark: the Open Images Challenge evaluator end to end, against reading the CSVs.

Generates a validation set the size of the Challenge 2019 detection validation set (40,000
images, about 230,000 GT boxes in the 7-column layout, some 9 image-level labels per image,
500 classes in a two-level hierarchy of 50 parents x 9 leaves) and 100 detections per image
(4M), in the TF layout and in the submission layout. Then, each in a fresh subprocess so
that the peak RSS is its own:

* ``pandas``     -- ``pandas.read_csv`` of the GT boxes, labels and TF-layout predictions
  (a floor: an evaluator has to read them at least);
* ``pyarrow``    -- ``pyarrow.csv.read_csv`` of the same three files (another floor);
* ``tf``         -- ``oid_challenge_map`` on the TF-layout predictions, CSV reading included
  (the ground truth loads in a second thread while the predictions are read);
* ``submission`` -- the same on the submission-layout predictions.

Prints wall time (imports included, as the reads import pandas or pyarrow), peak RSS and
the ratio of each run to the faster of the two reads, side by side from one run (timings
on a shared machine are noisy: each task runs ``--repeat`` times, interleaved, and the
fastest run is shown). Goal: the TF layout end to end within 3x the faster read, with the
same mAP.

    python -m lsdet.bench.evaluator                      # Challenge size (a few minutes)
    python -m lsdet.bench.evaluator --images 4000        # a tenth
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lsdet.bench import peak_rss_bytes

NUM_PARENTS, LEAVES_PER_PARENT = 50, 9


def benchmark_mids() -> tuple[list[str], list[str]]:
    parents = [f"/m/evp{k:03d}" for k in range(NUM_PARENTS)]
    leaves = [f"/m/evl{k:04d}" for k in range(NUM_PARENTS * LEAVES_PER_PARENT)]
    return parents, leaves


def generate(
    folder: Path,
    *,
    num_images: int,
    boxes_per_image: float = 5.7,
    detections_per_image: int = 100,
    seed: int = 0,
) -> dict[str, Path]:
    """Write hierarchy, GT boxes, image labels and predictions (both layouts) to ``folder``."""
    # Imported here, not at the top: the children run this module, and a top-level import
    # would add to each child's time and peak RSS.
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from lsdet.evaluation import write_predictions_csv

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "hierarchy": folder / "hierarchy.json",
        "boxes": folder / "validation-bbox.csv",
        "labels": folder / "validation-image-labels.csv",
        "tf": folder / "predictions-tf.csv",
        "submission": folder / "predictions-submission.csv",
    }
    parents, leaves = benchmark_mids()
    tree = {
        "LabelName": "/m/root",
        "Subcategory": [
            {
                "LabelName": parent,
                "Subcategory": [
                    {"LabelName": leaf}
                    for leaf in leaves[k * LEAVES_PER_PARENT : (k + 1) * LEAVES_PER_PARENT]
                ],
            }
            for k, parent in enumerate(parents)
        ],
    }
    paths["hierarchy"].write_text(json.dumps(tree))
    mids = np.array(parents + leaves, dtype=object)
    leaf_of = np.arange(NUM_PARENTS, len(mids))
    parent_of_leaf = np.repeat(np.arange(NUM_PARENTS), LEAVES_PER_PARENT)
    leaf_probs = 1.0 / np.arange(1, len(leaf_of) + 1) ** 1.1
    leaf_probs = rng.permutation(leaf_probs / leaf_probs.sum())

    image_ids = np.array([f"{v:016x}" for v in rng.integers(0, 2**62, num_images)], dtype=object)
    num_boxes = int(num_images * boxes_per_image)
    box_image = np.sort(
        np.concatenate([np.arange(num_images), rng.integers(0, num_images, num_boxes - num_images)])
    )
    leaf_drawn = rng.choice(len(leaf_of), num_boxes, p=leaf_probs)
    box_class = np.where(
        rng.random(num_boxes) < 0.1, parent_of_leaf[leaf_drawn], leaf_of[leaf_drawn]
    )
    corner = rng.uniform(0, 0.7, (num_boxes, 2))
    box = np.concatenate([corner, corner + rng.uniform(0.03, 0.3, (num_boxes, 2))], axis=1)
    box = np.clip(box, 0, 1).round(6)
    group_of = (rng.random(num_boxes) < 0.06).astype(np.int8)
    pa_csv.write_csv(
        pa.table(
            {
                "ImageID": image_ids[box_image],
                "LabelName": mids[box_class],
                "XMin": box[:, 0],
                "XMax": box[:, 2],
                "YMin": box[:, 1],
                "YMax": box[:, 3],
                "IsGroupOf": group_of,
            }
        ),
        paths["boxes"],
    )

    # Labels: every boxed class verified present, plus 2 present and 3 absent at random.
    extra = 5
    label_image = np.concatenate([box_image, np.repeat(np.arange(num_images), extra)])
    label_class = np.concatenate([box_class, leaf_of[rng.choice(len(leaf_of), extra * num_images)]])
    confidence = np.concatenate(
        [np.ones(num_boxes, np.int8), np.tile(np.array([1, 1, 0, 0, 0], np.int8), num_images)]
    )
    order = np.argsort(label_image, kind="stable")
    label_image, label_class, confidence = label_image[order], label_class[order], confidence[order]
    pa_csv.write_csv(
        pa.table(
            {
                "ImageID": image_ids[label_image],
                "Source": np.full(len(label_image), "verification", dtype=object),
                "LabelName": mids[label_class],
                "Confidence": confidence,
            }
        ),
        paths["labels"],
    )

    # Detections: one jittered copy of each GT box (up to the per-image budget), then
    # 30% of the image's labelled classes at random places, the rest any class anywhere.
    num_det = num_images * detections_per_image
    det_image = np.repeat(np.arange(num_images), detections_per_image)
    det_class = rng.integers(0, len(mids), num_det)
    corner = rng.uniform(0, 0.8, (num_det, 2))
    det_box = np.concatenate([corner, corner + rng.uniform(0.02, 0.2, (num_det, 2))], axis=1)
    det_score = rng.uniform(0, 0.6, num_det)
    label_start = np.searchsorted(label_image, np.arange(num_images))
    label_count = np.bincount(label_image, minlength=num_images)
    from_labels = rng.random(num_det) < 0.3
    pick = label_start[det_image] + (rng.random(num_det) * label_count[det_image]).astype(int)
    det_class[from_labels] = label_class[pick[from_labels]]
    box_start = np.searchsorted(box_image, np.arange(num_images))
    rank = np.arange(num_boxes) - box_start[box_image]
    copied = rank < detections_per_image
    slot = box_image[copied] * detections_per_image + rank[copied]
    det_class[slot] = box_class[copied]
    det_box[slot] = box[copied] + rng.normal(0, 0.02, (int(copied.sum()), 4))
    det_score[slot] = rng.uniform(0.2, 1.0, int(copied.sum()))
    det_box = np.clip(det_box, 0, 1)
    xs, ys = det_box[:, [0, 2]], det_box[:, [1, 3]]
    det_box = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1).round(5)
    det_score = det_score.round(5)
    for layout in ("tf", "submission"):
        write_predictions_csv(
            paths[layout],
            image_ids[det_image],
            mids[det_class],
            det_score,
            det_box,
            layout=layout,
        )
    return paths


def _child(task: str, paths: dict[str, Path]) -> dict:
    # Each task imports only what it measures, inside the timed block: its time and peak RSS
    # include its own imports and no other task's.
    started = time.perf_counter()
    result: dict = {}
    if task == "pandas":
        import pandas as pd

        rows = sum(len(pd.read_csv(paths[name])) for name in ("boxes", "labels", "tf"))
    elif task == "pyarrow":
        import pyarrow.csv as pa_csv

        rows = sum(pa_csv.read_csv(paths[name]).num_rows for name in ("boxes", "labels", "tf"))
    elif task in ("tf", "submission"):
        from lsdet.evaluation import oid_challenge_map

        metrics = oid_challenge_map(
            paths["hierarchy"], paths["boxes"], paths["labels"], paths[task]
        )
        rows = metrics.report.num_predictions
        result = {"map": metrics.map, "report": metrics.report.to_dict()}
    else:
        raise ValueError(task)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_rss": peak_rss_bytes(),
        "rows": rows,
        **result,
    }


def _run_child(task: str, folder: Path) -> dict:
    command = [sys.executable, "-m", "lsdet.bench.evaluator", "--child", task]
    command += ["--workdir", str(folder)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _paths(folder: Path) -> dict[str, Path]:
    return {
        "hierarchy": folder / "hierarchy.json",
        "boxes": folder / "validation-bbox.csv",
        "labels": folder / "validation-image-labels.csv",
        "tf": folder / "predictions-tf.csv",
        "submission": folder / "predictions-submission.csv",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--detections-per-image", type=int, default=100)
    parser.add_argument("--boxes-per-image", type=float, default=5.7)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each task; the fastest is shown"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, _paths(args.workdir))))
        return

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.workdir or Path(scratch)
        start = time.perf_counter()
        paths = generate(
            folder,
            num_images=args.images,
            boxes_per_image=args.boxes_per_image,
            detections_per_image=args.detections_per_image,
        )
        sizes = {name: path.stat().st_size / 1e6 for name, path in paths.items()}
        print(
            f"generated {args.images:,} images x {args.detections_per_image} detections in "
            f"{time.perf_counter() - start:.1f} s: "
            + ", ".join(f"{path.name} {sizes[name]:.0f} MB" for name, path in paths.items())
        )
        # Each run --repeat times, interleaved, the fastest kept: on a shared machine a run
        # is often slowed by others' work, never sped up.
        tasks = ("pandas", "pyarrow", "tf", "submission")
        tries: dict[str, list[dict]] = {task: [] for task in tasks}
        for _ in range(args.repeat):
            for task in tasks:
                tries[task].append(_run_child(task, folder))
        runs = {task: min(tries[task], key=lambda run: run["seconds"]) for task in tasks}
        for task in tasks:
            runs[task]["peak_rss"] = max(run["peak_rss"] for run in tries[task])
    floor = min(runs["pandas"]["seconds"], runs["pyarrow"]["seconds"])
    print(f"fastest of {args.repeat} runs each (peak RSS: the highest)")
    header = f"{'run':<34}{'wall s':>8}{'/ faster read':>15}{'peak RSS GB':>13}"
    print("\n" + header + "\n" + "-" * len(header))
    labels = {
        "pandas": "pandas.read_csv (3 files)",
        "pyarrow": "pyarrow.csv.read_csv (3 files)",
        "tf": "oid_challenge_map, TF layout",
        "submission": "oid_challenge_map, submission",
    }
    for task, run in runs.items():
        print(
            f"{labels[task]:<34}{run['seconds']:>8.2f}{run['seconds'] / floor:>14.2f}x"
            f"{run['peak_rss'] / 1e9:>13.2f}"
        )
    tf_run, submission_run = runs["tf"], runs["submission"]
    print(
        f"\nmAP {tf_run['map']:.12f} (TF layout) / {submission_run['map']:.12f} (submission) on "
        f"{tf_run['rows']:,} predictions; ignored: "
        f"{tf_run['report']['ignored_class_not_verified']:,} of classes not verified in their "
        "image.\nGoal: the TF layout end to end within 3x the faster read of the same three "
        "files (the read is the floor: an evaluator has to read them at least)."
    )


if __name__ == "__main__":
    main()
