"""Writing one split: its scenes, its images (in parallel when asked) and its three CSV
files (boxes, verified image-level labels, drawn objects), and the split's summary."""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lsdet.data.synth.lvis import LvisImage
from lsdet.data.synth.render import _render
from lsdet.data.synth.scenes import (
    SceneObject,
    _apply_label_problems,
    _assign_leaves_to_images,
    _place_objects,
    _verify_candidates,
)
from lsdet.data.synth.settings import (
    BBOX_HEADER,
    CONFUSED_PAIR,
    IMAGE_LABELS_HEADER,
    LABEL_PROBLEMS,
    OBJECTS_HEADER,
    SPLITS,
    SynthSettings,
    image_ids,
    split_files,
)
from lsdet.data.synth.taxonomy import Taxonomy


@dataclass
class _ImageJob:
    path: str
    objects: list[SceneObject]
    settings: SynthSettings
    taxonomy: Taxonomy
    seed_key: list[int]


def _render_job(job: _ImageJob) -> list[tuple[int, int, int, int] | None]:
    image, tight = _render(job.objects, job.settings, job.taxonomy, job.seed_key)
    image.save(job.path, format="JPEG", quality=job.settings.jpeg_quality)
    return tight


def _fmt(value: float) -> str:
    return f"{value:.6f}"


def layout_rng(settings: SynthSettings, split: str) -> np.random.Generator:
    """The random stream that places a split's leaves in its images."""
    return np.random.default_rng([settings.seed, SPLITS.index(split), 1])


def _write_split(
    root: Path,
    split: str,
    counts: np.ndarray,
    num_images: int,
    settings: SynthSettings,
    taxonomy: Taxonomy,
    lvis_images: list[LvisImage] | None = None,
) -> dict[str, Any]:
    """Writes one split's images and CSV files; returns its summary. When ``lvis_images``
    is a list, each image's annotations for the LVIS files are appended to it."""
    s = settings
    split_code = SPLITS.index(split)
    files = split_files(root, split)
    files["image_dir"].mkdir(parents=True, exist_ok=True)
    per_image = _assign_leaves_to_images(
        counts, num_images, s.max_objects_per_image, layout_rng(s, split), split
    )
    ids = image_ids(split, num_images)
    scenes: list[list[SceneObject]] = []
    for i, leaves in enumerate(per_image):
        rng = np.random.default_rng([s.seed, split_code, 2, i])
        objects = _place_objects(leaves, s, taxonomy, rng)
        noisy = split == "train" or s.val_label_noise == "as_train"
        _apply_label_problems(objects, s, taxonomy, rng, noisy=noisy)
        scenes.append(objects)

    jobs = [
        _ImageJob(
            path=str(files["image_dir"] / f"{image_id}.jpg"),
            objects=objects,
            settings=s,
            taxonomy=taxonomy,
            seed_key=[s.seed, split_code, 3, i],
        )
        for i, (image_id, objects) in enumerate(zip(ids, scenes, strict=True))
    ]
    progress = dict(total=len(jobs), desc=f"synth {split}", unit="img", mininterval=1.0)
    if s.num_workers > 1:
        with Pool(s.num_workers) as pool:
            tight_boxes = list(tqdm(pool.imap(_render_job, jobs, chunksize=32), **progress))
    else:
        tight_boxes = [_render_job(job) for job in tqdm(jobs, **progress)]

    size = float(s.image_size)
    bbox_lines = [BBOX_HEADER]
    label_lines = [IMAGE_LABELS_HEADER]
    object_lines = [OBJECTS_HEADER]
    problem_counts = dict.fromkeys([*LABEL_PROBLEMS, CONFUSED_PAIR, "clean"], 0)
    dropped = 0
    candidate_counts = {"lookalike": 0, "random": 0, "negatives": 0, "lookalike_negatives": 0}
    leaf_set = set(taxonomy.leaves)
    for i, (image_id, objects, tight) in enumerate(zip(ids, scenes, tight_boxes, strict=True)):
        visible = [(o, b) for o, b in zip(objects, tight, strict=True) if b is not None]
        dropped += len(objects) - len(visible)
        pixel_boxes = np.asarray([b for _, b in visible], dtype=np.float64).reshape(-1, 4)
        rows: list[tuple[int, str, str]] = []  # (object, label, bbox line)
        for k, (obj, (x0, y0, x1, y1)) in enumerate(visible):
            others = np.delete(pixel_boxes, k, axis=0)
            inter_w = np.clip(np.minimum(others[:, 2], x1) - np.maximum(others[:, 0], x0), 0, None)
            inter_h = np.clip(np.minimum(others[:, 3], y1) - np.maximum(others[:, 1], y0), 0, None)
            # Objects are drawn in order: a later one that overlaps this box occludes it.
            later = np.arange(len(visible) - 1) >= k
            occluded = int(bool(((inter_w * inter_h > 0) & later).any()))
            coords = ",".join(_fmt(v) for v in (x0 / size, x1 / size, y0 / size, y1 / size))
            for mid in obj.labels:
                line = f"{image_id},xclick,{mid},1,{coords},{occluded},0,{int(obj.group_of)},0,0"
                rows.append((k, mid, line))
            problem_counts[obj.problem] += 1
        # The rows of an image in random order: file order tells nothing about which label
        # of an object is its true class (Open Images' files carry no such order either).
        rng = np.random.default_rng([s.seed, split_code, 5, i])
        rows = [rows[j] for j in rng.permutation(len(rows))]
        bbox_lines += [line for _, _, line in rows]
        for k, (obj, (x0, y0, x1, y1)) in enumerate(visible):
            coords = ",".join(_fmt(v) for v in (x0 / size, x1 / size, y0 / size, y1 / size))
            in_file_order = [mid for row_object, mid, _ in rows if row_object == k]
            object_lines.append(
                f"{image_id},{k},{taxonomy.leaves[obj.leaf]},{coords},{int(obj.group_of)},"
                f"{len(obj.instances)},{obj.problem},{';'.join(in_file_order)}"
            )
        boxed = {mid for _, mid, _ in rows}
        true_leaves = sorted({o.leaf for o, _ in visible})
        positives, negatives, drawn = _verify_candidates(
            boxed, true_leaves, s, taxonomy, np.random.default_rng([s.seed, split_code, 4, i])
        )
        for key, value in drawn.items():
            candidate_counts[key] += value
        label_lines += [f"{image_id},verification,{mid},1" for mid in sorted(positives)]
        label_lines += [f"{image_id},verification,{mid},0" for mid in sorted(negatives)]
        if lvis_images is not None:
            lvis_images.append(
                LvisImage(
                    image_id=image_id,
                    boxes=[
                        (mid, visible[k][1], visible[k][0].group_of)
                        for k, mid, _ in rows
                        if mid in leaf_set
                    ],
                    negatives=sorted(negatives),
                    # objects left without their own leaf label (sibling_swap, parent_only)
                    not_exhaustive=sorted(
                        {
                            taxonomy.leaves[obj.leaf]
                            for obj, _ in visible
                            if taxonomy.leaves[obj.leaf] not in obj.labels
                        }
                    ),
                )
            )

    files["bbox_csv"].write_text("\n".join(bbox_lines) + "\n")
    files["image_labels_csv"].write_text("\n".join(label_lines) + "\n")
    files["objects_csv"].write_text("\n".join(object_lines) + "\n")
    num_objects = sum(problem_counts.values())
    return {
        "num_images": num_images,
        "num_objects": num_objects,
        "num_boxes": len(bbox_lines) - 1,
        "objects_not_visible": dropped,
        "label_problem_rates": {
            k: round(v / max(num_objects, 1), 4) for k, v in problem_counts.items()
        },
        "image_level_candidates": candidate_counts,
        "images_per_leaf_max": int(counts.max()),
        "images_per_leaf_min": int(counts.min()),
        "imbalance": round(float(counts.max() / counts.min()), 2),
    }
