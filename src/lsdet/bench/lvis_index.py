"""Benchmarks of the COCO/LVIS path on generated LVIS-sized files.

``python -m lsdet.bench.lvis_index index`` generates an LVIS v1 train-sized annotation file
(100k images, 1.27M boxes, 1203 categories, an 8-point polygon per box) and measures, each in
a fresh process: ``json.load`` of the file alone, building lsdet's annotation index from it
(:func:`lsdet.data.coco_format.build_or_open_coco_index`) and opening the cached index;
wall time and peak RSS side by side.

``python -m lsdet.bench.lvis_index metric`` generates an LVIS v1 val-sized ground truth (20k
images, about 12 boxes each) and 300 detections per image (half of them of categories the
image is annotated for, half of others, which LVIS's federated rules leave out), and times the
library's own entry point (faster-coco-eval: ``COCO``, ``loadRes``, ``COCOeval_faster`` with
``lvis_style=True``) and lsdet's wrapper (:mod:`lsdet.evaluation.lvis_metric`), each in a
fresh process, and prints both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

NUM_LVIS_CATEGORIES = 1203


def generate_lvis_file(
    path: Path, *, num_images: int, boxes_per_image: float, seed: int = 0
) -> dict:
    """An LVIS v1-shaped annotation file (long-tailed categories, r/c/f, negatives);
    returns the ground truth's per-image categories for detection generation."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, NUM_LVIS_CATEGORIES + 1) ** 1.1
    weights /= weights.sum()
    counts = rng.poisson(boxes_per_image, num_images).clip(1)
    image_of_box = np.repeat(np.arange(num_images), counts)
    category_of_box = rng.choice(NUM_LVIS_CATEGORIES, size=len(image_of_box), p=weights) + 1
    widths = rng.integers(320, 641, num_images)
    heights = rng.integers(240, 481, num_images)
    box_w = rng.uniform(0.05, 0.5, len(image_of_box)) * widths[image_of_box]
    box_h = rng.uniform(0.05, 0.5, len(image_of_box)) * heights[image_of_box]
    box_x = rng.uniform(0, 1, len(image_of_box)) * (widths[image_of_box] - box_w)
    box_y = rng.uniform(0, 1, len(image_of_box)) * (heights[image_of_box] - box_h)
    image_counts = np.bincount(
        np.unique(image_of_box * 10_000 + category_of_box) % 10_000,
        minlength=NUM_LVIS_CATEGORIES + 1,
    )[1:]
    categories = [
        {
            "id": k + 1,
            "name": f"category_{k + 1}",
            "frequency": "r" if n < 10 else ("c" if n <= 100 else "f"),
            "image_count": int(n),
            "instance_count": int((category_of_box == k + 1).sum()),
        }
        for k, n in enumerate(image_counts)
    ]
    negatives = rng.integers(1, NUM_LVIS_CATEGORIES + 1, (num_images, 4))
    positives_of_image: list[set[int]] = [set() for _ in range(num_images)]
    for image, category in zip(image_of_box.tolist(), category_of_box.tolist(), strict=True):
        positives_of_image[image].add(category)
    images = []
    for i in range(num_images):
        negative = sorted(set(negatives[i].tolist()) - positives_of_image[i])
        images.append(
            {
                "id": i + 1,
                "width": int(widths[i]),
                "height": int(heights[i]),
                "coco_url": f"http://images.cocodataset.org/train2017/{i + 1:012d}.jpg",
                "neg_category_ids": negative,
                "not_exhaustive_category_ids": [],
            }
        )
    annotations = []
    for n in range(len(image_of_box)):
        x, y, w, h = (round(float(v), 2) for v in (box_x[n], box_y[n], box_w[n], box_h[n]))
        polygon = [x, y, x + w / 2, y, x + w, y, x + w, y + h / 2, x + w, y + h, x, y + h,
                   x, y + h / 2, x + w / 2, y + h / 2]  # fmt: skip
        annotations.append(
            {
                "id": n + 1,
                "image_id": int(image_of_box[n]) + 1,
                "category_id": int(category_of_box[n]),
                "bbox": [x, y, w, h],
                "area": round(w * h, 2),
                "segmentation": [[round(v, 2) for v in polygon]],
            }
        )
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))  # fmt: skip
    return {
        "boxes": np.stack([image_of_box + 1, box_x, box_y, box_w, box_h, category_of_box], 1),
        "negatives": [img["neg_category_ids"] for img in images],
        "sizes": np.stack([widths, heights], 1),
    }


def generate_detections(path: Path, truth: dict, *, per_image: int, seed: int = 1) -> int:
    """``per_image`` detections per image as a COCO results JSON: half of the image's
    annotated categories (near a box of it, or anywhere for a negative), half of random ones."""
    rng = np.random.default_rng(seed)
    boxes = truth["boxes"]
    sizes = truth["sizes"]
    num_images = len(sizes)
    starts = np.searchsorted(boxes[:, 0], np.arange(1, num_images + 2))
    results = []
    for i in range(num_images):
        own = boxes[starts[i] : starts[i + 1]]
        width, height = sizes[i]
        for d in range(per_image):
            if d % 2 == 0:
                if truth["negatives"][i] and rng.random() < 0.2:
                    category = int(rng.choice(truth["negatives"][i]))
                    x, y, w, h = rng.uniform(0, 0.5, 4) * [width, height, width, height]
                else:
                    row = own[rng.integers(len(own))]
                    category = int(row[5])
                    jitter = rng.normal(0, 0.1, 4) * [row[3], row[4], row[3], row[4]]
                    x, y, w, h = np.maximum(row[1:5] + jitter, [0, 0, 1, 1])
            else:
                category = int(rng.integers(1, NUM_LVIS_CATEGORIES + 1))
                x, y, w, h = rng.uniform(0, 0.5, 4) * [width, height, width, height]
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": category,
                    "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                    "score": round(float(rng.random()), 4),
                }
            )
    path.write_text(json.dumps(results))
    return len(results)


_MEASURE = """
import json, sys, time
started = time.perf_counter()
{body}
seconds = time.perf_counter() - started
# VmHWM: this process's own peak (ru_maxrss would start from the forking parent's)
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak_gib = int(status.split()[0]) / 2**20
print(json.dumps({{"seconds": round(seconds, 2), "peak_rss_gib": round(peak_gib, 2), **extra}}))
"""


def _measure(body: str) -> dict:
    """Run ``body`` in a fresh Python process; its wall time and peak RSS (and ``extra``)."""
    completed = subprocess.run(
        [sys.executable, "-c", _MEASURE.format(body=body)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"benchmark step failed with exit status {completed.returncode} (-9: killed, "
            f"usually for memory):\n{completed.stderr[-3000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bench_index(work: Path, num_images: int, boxes_per_image: float) -> None:
    path = work / "lvis_v1_train_generated.json"
    generate_lvis_file(path, num_images=num_images, boxes_per_image=boxes_per_image)
    size_mib = path.stat().st_size / 2**20
    cache = work / "cache"
    steps = {
        "json.load of the file": (
            f"data = json.load(open({str(path)!r}))\n"
            "extra = {'annotations': len(data['annotations'])}"
        ),
        "lsdet index build (read + checks + index)": (
            "from lsdet.data.coco_format import build_or_open_coco_index\n"
            f"built = build_or_open_coco_index({str(path)!r}, {str(cache)!r})\n"
            "extra = {'boxes': built.index.num_boxes, 'images': built.index.num_images}"
        ),
        "lsdet index open (cached)": (
            "from lsdet.data.coco_format import build_or_open_coco_index\n"
            f"built = build_or_open_coco_index({str(path)!r}, {str(cache)!r})\n"
            "extra = {'boxes': built.index.num_boxes}"
        ),
    }
    print(f"file: {size_mib:.0f} MiB, {num_images} images")
    for name, body in steps.items():
        print(f"{name:45s} {_measure(body)}")


def bench_metric(work: Path, num_images: int, boxes_per_image: float, per_image: int) -> None:
    gt_path = work / "lvis_v1_val_generated.json"
    results_path = work / "detections.json"
    truth = generate_lvis_file(gt_path, num_images=num_images, boxes_per_image=boxes_per_image)
    num_detections = generate_detections(results_path, truth, per_image=per_image)
    print(f"{num_images} images, {len(truth['boxes'])} GT boxes, {num_detections} detections")
    library = (
        "from faster_coco_eval import COCO, COCOeval_faster\n"
        f"gt = COCO({str(gt_path)!r})\n"
        f"dt = gt.loadRes({str(results_path)!r})\n"
        "ev = COCOeval_faster(gt, dt, 'bbox', lvis_style=True, print_function=lambda *a: None)\n"
        f"ev.params.maxDets = [{per_image}]\n"
        "ev.evaluate(); ev.accumulate(); ev.summarize()\n"
        "s = ev.stats_as_dict\n"
        "extra = {k: round(s[k], 4) for k in ('AP_all', 'APr', 'APc', 'APf')}"
    )
    wrapper = (
        "from lsdet.evaluation.lvis_metric import load_ground_truth, read_detections, "
        "evaluate_detections\n"
        f"gt = load_ground_truth({str(gt_path)!r})\n"
        f"detections = read_detections({str(results_path)!r}, gt)\n"
        "result = evaluate_detections(gt, detections, style='lvis')\n"
        "extra = {k: round(result.summary[k], 4) for k in ('AP', 'APr', 'APc', 'APf')}"
    )
    print(f"{'faster-coco-eval entry point':32s} {_measure(library)}")
    print(f"{'lsdet.evaluation.lvis_metric':32s} {_measure(wrapper)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("index", "metric"))
    parser.add_argument("--images", type=int, default=None, help="100000 (index), 20000 (metric)")
    parser.add_argument("--boxes-per-image", type=float, default=None, help="12.7 / 12.4")
    parser.add_argument("--detections-per-image", type=int, default=300)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lsdet-lvis-bench-") as temporary:
        work = args.work_dir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        if args.part == "index":
            bench_index(work, args.images or 100_000, args.boxes_per_image or 12.7)
        else:
            bench_metric(
                work, args.images or 20_000, args.boxes_per_image or 12.4,
                args.detections_per_image,
            )  # fmt: skip


if __name__ == "__main__":
    main()
