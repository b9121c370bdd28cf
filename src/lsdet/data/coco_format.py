"""COCO and LVIS v1 annotation files (JSON) read into lsdet's annotation index.

A COCO-format file holds ``images`` (``id``, ``width``, ``height``, ``file_name``),
``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` = ``[x, y, width, height]``
in pixels, ``iscrowd``) and ``categories`` (``id``, ``name``). LVIS v1 adds per image
``neg_category_ids`` (verified absent) and ``not_exhaustive_category_ids`` (present, not all
instances boxed), and per category ``frequency`` (``r``/``c``/``f``: fewer than 10, 10-100,
more than 100 training images), ``image_count`` and ``instance_count`` (Gupta et al., LVIS,
CVPR 2019, sec. 3 and 5).

:func:`read_coco_json` turns a file into the tables the Open Images readers return
(:class:`lsdet.data.formats.BoxTable`, :class:`lsdet.data.formats.ImageLabelTable`), so the
annotation index, the samplers and the concurrent-rate estimate are the Open Images code:

* classes: one per category, in the file's order; the class id ("MID") is the category id as
  text (``"1"``, ``"2"``, ...). LVIS and COCO have no class hierarchy, so the hierarchy is flat
  (:func:`flat_hierarchy`: every class a leaf), and concurrent rates come from coinciding boxes
  only (LVIS boxes one object under several synonym-like categories);
* boxes: normalised ``xmin, ymin, xmax, ymax``; a crowd box (``iscrowd=1``) is kept with the
  group-of flag. COCO's evaluation ignores crowd regions (a detection on one is neither a true
  nor a false positive) as the Open Images metric treats a group-of box, and the group-of flag
  lets the training data leave them out or merge them as Open Images group-of boxes are;
* image-level labels: every category boxed in an image is a verified positive (confidence 1),
  every ``neg_category_ids`` entry a verified negative (confidence 0).

Bad input: an annotation whose ``category_id`` is not in ``categories``, whose ``image_id`` is
not in ``images``, whose box is not 4 numbers, is empty, or lies outside its image (by more
than :data:`BOX_TOLERANCE_PIXELS`; within it, the box is clipped: COCO's own boxes overrun
the border by rounding), or whose ``iscrowd`` is not 0/1. With ``strict=True`` the first one
raises :class:`lsdet.data.formats.DataFormatError` naming the file and the annotation id; with
``strict=False`` such annotations are skipped, counted per reason and reported (the
:class:`CocoReadReport`, as the CSV readers' reports). Duplicate image, category or
annotation ids and a category id in an image's negative list that is not a category are
always errors: they make the file ambiguous, not one annotation bad.

:func:`build_or_open_coco_index` builds the memory-mapped index once and rebuilds it when the
JSON file changes. Until :class:`lsdet.data.index.AnnotationIndex` takes reader tables
directly, it passes them through Open Images CSV files in the cache folder (written with
pyarrow in about a second for LVIS v1 train), which the index then reads as it reads any CSV.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from filelock import FileLock

from lsdet.data.formats import (
    MAX_EXAMPLES,
    STRICT_HINT,
    BoxTable,
    DataFormatError,
    ImageLabelTable,
    ReadReport,
)
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import AnnotationIndex, write_folder_atomically

logger = logging.getLogger(__name__)

BOX_TOLERANCE_PIXELS = 1.0  # a box may overrun its image by this much (then it is clipped)
LVIS_FREQUENCIES = ("r", "c", "f")
FREQUENCY_BUCKET_NAMES = {"r": "rare", "c": "common", "f": "frequent"}
_CONVERSION_VERSION = 2  # 2: file_names.json


class CocoReadReport(ReadReport):
    """A :class:`ReadReport` whose examples name annotation ids instead of file lines
    (``examples`` holds ``(annotation id, reason, annotation as JSON)``)."""

    rows_noun: ClassVar[str] = "annotations"
    example_place: ClassVar[str] = "annotation id"


@dataclass
class CocoCategories:
    """The categories of a COCO/LVIS file, in file order (class index k = position k)."""

    ids: np.ndarray  # int64 [C] category ids
    names: list[str]
    frequency: list[str]  # LVIS r / c / f; "" for COCO
    image_count: np.ndarray  # int64 [C]; -1 where the file does not say (COCO)
    instance_count: np.ndarray  # int64 [C]; -1 where the file does not say

    @property
    def mids(self) -> list[str]:
        """The class ids lsdet uses (the category id as text)."""
        return [str(int(category_id)) for category_id in self.ids]

    def to_dict(self) -> dict:
        return {
            "ids": self.ids.tolist(),
            "names": self.names,
            "frequency": self.frequency,
            "image_count": self.image_count.tolist(),
            "instance_count": self.instance_count.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> CocoCategories:
        return cls(
            ids=np.asarray(data["ids"], dtype=np.int64),
            names=list(data["names"]),
            frequency=list(data["frequency"]),
            image_count=np.asarray(data["image_count"], dtype=np.int64),
            instance_count=np.asarray(data["instance_count"], dtype=np.int64),
        )


@dataclass
class CocoAnnotations:
    """A COCO/LVIS file as lsdet's reader tables plus what only COCO/LVIS has."""

    path: Path
    categories: CocoCategories
    image_ids: np.ndarray  # int64 [I], file order
    image_widths: np.ndarray  # float64 [I]
    image_heights: np.ndarray  # float64 [I]
    file_names: list[str]
    boxes: BoxTable  # image ids / class ids as text, normalised boxes, IsGroupOf = iscrowd
    image_labels: ImageLabelTable  # positives (boxed categories) and neg_category_ids
    not_exhaustive: dict[int, list[int]]  # image id -> category ids (LVIS)
    annotation_ids: np.ndarray  # int64 [N] of the kept boxes, in box-table order
    report: CocoReadReport = field(default_factory=lambda: CocoReadReport(Path()))


def flat_hierarchy(categories: CocoCategories) -> Hierarchy:
    """The hierarchy of a data set without one: every category a top-level leaf."""
    return Hierarchy(categories.mids, {}, root=None)


def read_coco_json(path: str | Path, *, strict: bool = True) -> CocoAnnotations:
    """Read a COCO or LVIS v1 annotation file (see the module docstring for the checks)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot open: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise DataFormatError(
            f"{path}: expected a JSON object with lists 'images', 'annotations', 'categories'"
        )
    categories = _read_categories(path, data["categories"])
    category_position = {int(cid): k for k, cid in enumerate(categories.ids)}

    images = data["images"]
    try:
        image_ids = np.array([image["id"] for image in images], dtype=np.int64)
        widths = np.array([image["width"] for image in images], dtype=np.float64)
        heights = np.array([image["height"] for image in images], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFormatError(f"{path}: an image lacks an integer id, width or height") from exc
    _refuse_duplicates(path, "image", image_ids)
    # LVIS v1 names an image by its COCO URL only (".../train2017/000000391895.jpg")
    file_names = [
        str(image.get("file_name") or "/".join(str(image.get("coco_url", "")).split("/")[-2:]))
        for image in images
    ]
    image_position = {int(image_id): i for i, image_id in enumerate(image_ids)}

    annotations = data["annotations"]
    del data
    num_rows = len(annotations)
    annotation_ids = np.array([a.get("id", -1) for a in annotations], dtype=np.int64)
    _refuse_duplicates(path, "annotation", annotation_ids[annotation_ids >= 0])
    image_rows = np.array(
        [image_position.get(_as_int(a.get("image_id")), -1) for a in annotations], dtype=np.int64
    )
    class_rows = np.array(
        [category_position.get(_as_int(a.get("category_id")), -1) for a in annotations],
        dtype=np.int64,
    )
    pixel_boxes = np.array([_box_or_nan(a.get("bbox")) for a in annotations], dtype=np.float64)
    pixel_boxes = pixel_boxes.reshape(num_rows, 4)
    crowd = np.array([_as_int(a.get("iscrowd", 0)) for a in annotations], dtype=np.int64)

    reasons: list[tuple[np.ndarray, str]] = []
    reasons.append((annotation_ids < 0, "no integer 'id'"))
    reasons.append((image_rows < 0, "image_id not in 'images'"))
    reasons.append((class_rows < 0, "category_id not in 'categories'"))
    reasons.append((np.isnan(pixel_boxes).any(axis=1), "bbox is not 4 numbers"))
    x, y, w, h = (pixel_boxes[:, k] for k in range(4))
    reasons.append(((w <= 0) | (h <= 0), "empty bbox (width or height <= 0)"))
    width_of_row = np.where(image_rows >= 0, widths[image_rows], np.nan)
    height_of_row = np.where(image_rows >= 0, heights[image_rows], np.nan)
    outside = (
        (x < -BOX_TOLERANCE_PIXELS)
        | (y < -BOX_TOLERANCE_PIXELS)
        | (x + w > width_of_row + BOX_TOLERANCE_PIXELS)
        | (y + h > height_of_row + BOX_TOLERANCE_PIXELS)
    )
    reasons.append((outside, "bbox outside the image"))
    reasons.append((~np.isin(crowd, (0, 1)), "iscrowd not 0 or 1"))

    keep, report = _resolve_problems(path, annotations, annotation_ids, reasons, strict)
    del annotations
    image_rows, class_rows, crowd = image_rows[keep], class_rows[keep], crowd[keep]
    x, y, w, h = x[keep], y[keep], w[keep], h[keep]
    width_of_row, height_of_row = width_of_row[keep], height_of_row[keep]
    normalised = np.stack(
        [
            np.clip(x / width_of_row, 0, 1),
            np.clip(y / height_of_row, 0, 1),
            np.clip((x + w) / width_of_row, 0, 1),
            np.clip((y + h) / height_of_row, 0, 1),
        ],
        axis=1,
    ).astype(np.float32)

    image_id_values = np.array([str(int(image_id)) for image_id in image_ids], dtype=object)
    box_table = BoxTable(
        path=path,
        image_codes=image_rows.astype(np.int32),
        image_id_values=image_id_values,
        label_codes=class_rows.astype(np.int32),
        label_values=np.array(categories.mids, dtype=object),
        boxes=np.ascontiguousarray(normalised),
        is_group_of=crowd == 1,
        confidence=None,
        flags={"IsGroupOf": crowd.astype(np.int8)},
        report=report,
    )
    image_labels, not_exhaustive = _image_labels(
        path, images, image_ids, image_rows, class_rows, category_position, box_table.label_values
    )
    image_labels.image_id_values = image_id_values
    return CocoAnnotations(
        path=path,
        categories=categories,
        image_ids=image_ids,
        image_widths=widths,
        image_heights=heights,
        file_names=file_names,
        boxes=box_table,
        image_labels=image_labels,
        not_exhaustive=not_exhaustive,
        annotation_ids=annotation_ids[keep],
        report=report,
    )


def _read_categories(path: Path, categories: list) -> CocoCategories:
    if not categories:
        raise DataFormatError(f"{path}: 'categories' is empty")
    try:
        ids = np.array([category["id"] for category in categories], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFormatError(f"{path}: a category lacks an integer 'id'") from exc
    _refuse_duplicates(path, "category", ids)
    frequency = [str(category.get("frequency", "")) for category in categories]
    if any(frequency):  # LVIS: every category has one of r, c, f
        for category, value in zip(categories, frequency, strict=True):
            if value not in LVIS_FREQUENCIES:
                raise DataFormatError(
                    f"{path}: category id {category['id']}: frequency {value!r} is not one of "
                    f"{LVIS_FREQUENCIES} (other categories have one, as in LVIS)"
                )
    return CocoCategories(
        ids=ids,
        names=[str(category.get("name", category["id"])) for category in categories],
        frequency=frequency,
        image_count=np.array([c.get("image_count", -1) for c in categories], dtype=np.int64),
        instance_count=np.array([c.get("instance_count", -1) for c in categories], dtype=np.int64),
    )


def _image_labels(
    path: Path,
    images: list[dict],
    image_ids: np.ndarray,
    image_rows: np.ndarray,
    class_rows: np.ndarray,
    category_position: dict[int, int],
    mids: np.ndarray,
) -> tuple[ImageLabelTable, dict[int, list[int]]]:
    """Verified positives (the boxed categories of each image, once) and LVIS negatives."""
    num_classes = max(category_position.values()) + 1
    pairs = np.unique(image_rows * num_classes + class_rows)
    label_images = [pairs // num_classes]
    label_classes = [pairs % num_classes]
    label_confidence = [np.ones(len(pairs), dtype=np.int8)]
    negative_images, negative_classes = [], []
    not_exhaustive: dict[int, list[int]] = {}
    for position, image in enumerate(images):
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            unknown = [cid for cid in image.get(key, []) if _as_int(cid) not in category_position]
            if unknown:
                raise DataFormatError(
                    f"{path}: image id {int(image_ids[position])}: {key} holds category ids "
                    f"not in 'categories': {unknown[:5]}"
                )
        for category_id in image.get("neg_category_ids", []):
            negative_images.append(position)
            negative_classes.append(category_position[int(category_id)])
        if image.get("not_exhaustive_category_ids"):
            not_exhaustive[int(image_ids[position])] = [
                int(cid) for cid in image["not_exhaustive_category_ids"]
            ]
    label_images.append(np.array(negative_images, dtype=np.int64))
    label_classes.append(np.array(negative_classes, dtype=np.int64))
    label_confidence.append(np.zeros(len(negative_images), dtype=np.int8))
    rows = len(pairs) + len(negative_images)
    table = ImageLabelTable(
        path=path,
        image_codes=np.concatenate(label_images).astype(np.int32),
        image_id_values=np.zeros(0, dtype=object),  # set by the caller (shared with boxes)
        label_codes=np.concatenate(label_classes).astype(np.int32),
        label_values=mids,
        confidence=np.concatenate(label_confidence),
        report=ReadReport(path, rows_read=rows, rows_kept=rows),
    )
    return table, not_exhaustive


def _resolve_problems(
    path: Path,
    annotations: list[dict],
    annotation_ids: np.ndarray,
    reasons: list[tuple[np.ndarray, str]],
    strict: bool,
) -> tuple[np.ndarray, CocoReadReport]:
    """Rows to keep and the report; the first problem of a row is its reason. Raises on the
    first bad annotation (file order) when ``strict``."""
    num_rows = len(annotation_ids)
    reason_of_row = np.full(num_rows, -1, dtype=np.int16)
    for number, (mask, _) in enumerate(reasons):
        reason_of_row[mask & (reason_of_row < 0)] = number
    bad_rows = np.flatnonzero(reason_of_row >= 0)
    report = CocoReadReport(path, rows_read=num_rows, rows_kept=num_rows - len(bad_rows))
    if len(bad_rows) == 0:
        return np.ones(num_rows, dtype=bool), report
    counts = np.bincount(reason_of_row[bad_rows], minlength=len(reasons))
    report.skipped = {reasons[k][1]: int(c) for k, c in enumerate(counts) if c}
    for row in bad_rows[:MAX_EXAMPLES]:
        shown = {key: value for key, value in annotations[row].items() if key != "segmentation"}
        report.examples.append(
            (int(annotation_ids[row]), reasons[reason_of_row[row]][1], json.dumps(shown))
        )
    if strict:
        annotation_id, reason, text = report.examples[0]
        where = f"annotation id {annotation_id}" if annotation_id >= 0 else f"annotation {row}"
        more = len(bad_rows) - 1
        raise DataFormatError(
            f"{path}, {where}: {reason}: {text}"
            + (f" ({more} more bad annotations)" if more else "")
            + f"; {STRICT_HINT}"
        )
    logger.warning("%s", report.summary())
    return reason_of_row < 0, report


def _refuse_duplicates(path: Path, kind: str, ids: np.ndarray) -> None:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        repeated = values[counts > 1][:5].tolist()
        raise DataFormatError(f"{path}: {kind} ids occur more than once: {repeated}")


def _as_int(value: object) -> int:
    """An id as int; -1 for anything that is not an integral number (never a valid id)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return -1
    return int(value) if float(value).is_integer() else -1


def _box_or_nan(value: object) -> list[float]:
    if (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return value
    return [np.nan] * 4


# ---------------------------------------------------------------------------- the index
@dataclass
class CocoIndex:
    """The annotation index of a COCO/LVIS file and what the index does not hold."""

    index: AnnotationIndex
    hierarchy: Hierarchy
    categories: CocoCategories
    read_report: dict  # the JSON reader's report (skipped annotations with strict=False)
    tables_dir: Path  # the converted tables, image sizes, file names and categories
    # Each image's file_name (relative to the image folder), keyed by the image id as the
    # index names it (the integer id as text); every image of the file, boxed or not.
    file_names: dict[str, str]


def build_or_open_coco_index(
    annotation_json: str | Path, cache_dir: str | Path, *, strict: bool = True
) -> CocoIndex:
    """The memory-mapped index of ``annotation_json``, built on first use and rebuilt when
    the file's size or modification time changes (as for the Open Images CSVs)."""
    source = Path(annotation_json)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: annotation file not found")
    key_text = json.dumps(
        {"version": _CONVERSION_VERSION, "source": str(source.resolve()), "strict": strict}
    )
    key = hashlib.sha1(key_text.encode()).hexdigest()[:16]
    tables_dir = Path(cache_dir) / f"coco-tables-{key}"
    tables_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(tables_dir) + ".lock"):
        stat = source.stat()
        wanted = {"path": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        manifest_path = tables_dir / "manifest.json"
        manifest = None
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError):
                manifest = None
        if manifest is None or manifest.get("source") != wanted:
            if manifest is not None:
                logger.warning("%s changed (size or modification time): rebuilding", source)
            annotations = read_coco_json(source, strict=strict)
            _write_tables(tables_dir, annotations, wanted)
            manifest = json.loads(manifest_path.read_text())
    categories = CocoCategories.from_dict(manifest["categories"])
    hierarchy = flat_hierarchy(categories)
    index = AnnotationIndex.build_or_open(
        tables_dir / "boxes.csv",
        hierarchy,
        cache_dir,
        image_labels_csv=tables_dir / "image-labels.csv",
        strict=True,  # the converted tables hold only annotations that passed the checks
    )
    file_names = json.loads((tables_dir / "file_names.json").read_text())
    return CocoIndex(index, hierarchy, categories, manifest["read_report"], tables_dir, file_names)


def _write_tables(directory: Path, annotations: CocoAnnotations, source: dict) -> None:
    """Open Images CSVs of the boxes and image-level labels, image sizes, file names (by
    image id) and categories, written into a fresh folder that then replaces ``directory``."""

    def write(staging: Path) -> None:
        boxes = annotations.boxes
        mids = np.array(annotations.categories.mids, dtype=object)
        box_columns = {
            "ImageID": boxes.image_id_values[boxes.image_codes],
            "LabelName": mids[boxes.label_codes],
            "XMin": boxes.boxes[:, 0],
            "XMax": boxes.boxes[:, 2],
            "YMin": boxes.boxes[:, 1],
            "YMax": boxes.boxes[:, 3],
            "IsGroupOf": boxes.flags["IsGroupOf"],
        }
        pa_csv.write_csv(pa.table(box_columns), staging / "boxes.csv")
        labels = annotations.image_labels
        label_columns = {
            "ImageID": labels.image_id_values[labels.image_codes],
            "Source": np.full(len(labels.image_codes), "annotation_json", dtype=object),
            "LabelName": mids[labels.label_codes],
            "Confidence": labels.confidence,
        }
        pa_csv.write_csv(pa.table(label_columns), staging / "image-labels.csv")
        np.save(staging / "image_ids.npy", annotations.image_ids)
        np.save(
            staging / "image_sizes.npy",
            np.stack([annotations.image_widths, annotations.image_heights], axis=1),
        )
        file_names = {
            str(int(image_id)): name
            for image_id, name in zip(annotations.image_ids, annotations.file_names, strict=True)
        }
        (staging / "file_names.json").write_text(json.dumps(file_names))
        manifest = {
            "version": _CONVERSION_VERSION,
            "source": source,
            "categories": annotations.categories.to_dict(),
            "read_report": annotations.report.to_dict(),
            "num_images": len(annotations.image_ids),
            "num_boxes": len(boxes.image_codes),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest))

    write_folder_atomically(directory, write)
