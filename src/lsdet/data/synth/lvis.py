"""The synthetic benchmark in LVIS v1 format (Gupta et al., LVIS, CVPR 2019): the same images
and the same annotations as the Open Images files, written as ``lvis_train.json`` and
``lvis_val.json`` so that the LVIS path (reader, index, LVIS metric) runs without a download.

What the Open Images files hold, and how each part is carried over:

* categories: the leaves only, in the hierarchy's order, ids 1..L. LVIS has no class hierarchy
  and its categories are the specific names annotators choose (Gupta et al., sec. 3); a parent
  of the synthetic tree ("Polygon", "Triangle") has no look of its own and is boxed only by
  two label problems (leaf_and_parent, parent_only). As a flat LVIS category a parent would be
  a rarely boxed class whose every leaf detection counts against it; so parent boxes are
  dropped, and an object boxed only as a parent is an object of its leaf that is not boxed
  (below). Each category's ``synset`` is its leaf's MID (``/s/f0s1v2``), which ties it to the
  Open Images files; ``name`` is its class description.
* boxes: every box of a leaf label, with the pixel coordinates the Open Images CSV normalises
  (``bbox = [x, y, width, height]``); a group-of box is ``iscrowd = 1``. A multi-labelled
  object (two_leaves, sibling_both, a confused pair) has one annotation per leaf label with
  the same box, as LVIS boxes one object under near-synonym categories. A sibling_swap
  object is boxed as its sibling, as in the Open Images file (annotators' confusions are in
  LVIS too).
* ``neg_category_ids``: the image's verified negative image-level labels (Confidence 0). The
  generator's verification (:func:`lsdet.data.synth.scenes._verify_candidates`) rejects only
  leaves that are neither boxed nor present, so a negative is never boxed in its image.
* ``not_exhaustive_category_ids``: the leaves present in the image with an object that does
  not carry its own leaf label (sibling_swap and parent_only): the generator knows these
  objects were left unboxed by a label problem, as LVIS annotators flag a category whose
  instances are not all boxed (Gupta et al., sec. 4.3). Such a leaf can lack any box in the
  image (its only object was boxed as a parent); the LVIS metric evaluates a category only on
  images where it is boxed or verified absent, so that entry only records the fact.
* ``frequency``: LVIS's rule on the training images a category is boxed in (its
  ``image_count``): rare 1-10, common 11-100, frequent more than 100; a leaf never boxed in
  training (all its objects lost their leaf label) is rare. Both files carry the training
  counts, as LVIS v1's validation file does.

Images: ``file_name`` is ``<split>/<ImageID>.jpg`` relative to the benchmark's root (LVIS v1
names images relative to its root too: ``train2017/...``), ``width`` and ``height`` the image
size. Image ids are integers: the ImageID's number plus 10,000,000 (train) or 20,000,000
(validation), so the two splits share no id and the ids sort as the ImageIDs do (the
annotation index orders images by id text: both formats give the same image order).
Annotation ids run over both files without repeating (training first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsdet.data.synth.settings import SPLITS
from lsdet.data.synth.taxonomy import Taxonomy

LVIS_JSON = {"train": "lvis_train.json", "validation": "lvis_val.json"}
IMAGE_ID_OFFSET = {"train": 10_000_000, "validation": 20_000_000}
RARE_MAX_IMAGES = 10  # LVIS: rare categories are boxed in 1-10 training images
COMMON_MAX_IMAGES = 100  # common 11-100, frequent more


@dataclass
class LvisImage:
    """One image's annotations as the generator drew them, for the LVIS files."""

    image_id: str  # the Open Images ImageID (``tr0000003``)
    # (leaf MID, pixel box x0, y0, x1, y1 with exclusive right/bottom, group-of), in the
    # order of the image's rows in the bbox CSV; parent labels are left out
    boxes: list[tuple[str, tuple[int, int, int, int], bool]] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)  # verified absent leaves
    not_exhaustive: list[str] = field(default_factory=list)  # present leaves not all boxed


def lvis_image_id(split: str, image_id: str) -> int:
    """The integer LVIS image id of an Open Images ImageID of the benchmark."""
    return IMAGE_ID_OFFSET[split] + int(image_id[2:])


def lvis_frequency(image_count: int) -> str:
    """LVIS's frequency group of a category boxed in ``image_count`` training images."""
    if image_count <= RARE_MAX_IMAGES:
        return "r"
    return "c" if image_count <= COMMON_MAX_IMAGES else "f"


def lvis_categories(taxonomy: Taxonomy, train_images: list[LvisImage]) -> list[dict[str, Any]]:
    """The categories (the leaves) with their training image and instance counts."""
    images_of: dict[str, set[str]] = {mid: set() for mid in taxonomy.leaves}
    instances_of = dict.fromkeys(taxonomy.leaves, 0)
    for image in train_images:
        for mid, _, _ in image.boxes:
            images_of[mid].add(image.image_id)
            instances_of[mid] += 1
    return [
        {
            "id": position + 1,
            "name": taxonomy.names[mid],
            "synset": mid,
            "synonyms": [taxonomy.names[mid]],
            "def": f"synthetic class {mid} ({taxonomy.names[mid]})",
            "image_count": len(images_of[mid]),
            "instance_count": instances_of[mid],
            "frequency": lvis_frequency(len(images_of[mid])),
        }
        for position, mid in enumerate(taxonomy.leaves)
    ]


def lvis_dataset(
    split: str,
    images: list[LvisImage],
    categories: list[dict[str, Any]],
    image_size: int,
    first_annotation_id: int,
) -> dict[str, Any]:
    """One split as an LVIS v1 annotation file (a JSON-ready dict)."""
    category_id = {category["synset"]: category["id"] for category in categories}
    lvis_images, annotations = [], []
    for image in images:
        lvis_id = lvis_image_id(split, image.image_id)
        lvis_images.append(
            {
                "id": lvis_id,
                "file_name": f"{split}/{image.image_id}.jpg",
                "width": image_size,
                "height": image_size,
                "neg_category_ids": sorted(category_id[mid] for mid in image.negatives),
                "not_exhaustive_category_ids": sorted(
                    category_id[mid] for mid in image.not_exhaustive
                ),
            }
        )
        for mid, (x0, y0, x1, y1), group_of in image.boxes:
            annotations.append(
                {
                    "id": first_annotation_id + len(annotations),
                    "image_id": lvis_id,
                    "category_id": category_id[mid],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": int(group_of),
                }
            )
    return {
        "info": {
            "description": f"lsdet synthetic benchmark, {split} split, in LVIS v1 format",
        },
        "images": lvis_images,
        "annotations": annotations,
        "categories": categories,
    }


def write_lvis_files(
    folder: Path,
    taxonomy: Taxonomy,
    images_of_split: dict[str, list[LvisImage]],
    image_size: int,
) -> dict[str, Any]:
    """Writes ``lvis_train.json`` and ``lvis_val.json`` into ``folder``; returns a summary
    (categories per frequency group, annotations and flagged images per split)."""
    categories = lvis_categories(taxonomy, images_of_split["train"])
    summary: dict[str, Any] = {
        "num_categories": len(categories),
        "frequency": {
            group: sum(category["frequency"] == group for category in categories)
            for group in ("r", "c", "f")
        },
    }
    next_annotation_id = 1
    for split in SPLITS:
        dataset = lvis_dataset(
            split, images_of_split[split], categories, image_size, next_annotation_id
        )
        next_annotation_id += len(dataset["annotations"])
        (folder / LVIS_JSON[split]).write_text(json.dumps(dataset) + "\n")
        summary[split] = {
            "num_images": len(dataset["images"]),
            "num_annotations": len(dataset["annotations"]),
            "num_crowd": sum(a["iscrowd"] for a in dataset["annotations"]),
            "images_with_not_exhaustive": sum(
                bool(image["not_exhaustive_category_ids"]) for image in dataset["images"]
            ),
        }
    return summary
