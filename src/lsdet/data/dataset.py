"""The Open Images detection dataset for training: images + multi-label targets.

Each item is ``(image, target)``: ``image`` a float32 tensor ``[3, H, W]`` in [0, 1] and
``target`` a dict with

* ``boxes``       float32 ``[M, 4]`` pixels (xmin, ymin, xmax, ymax) in the returned image;
* ``labels``      int64 ``[M]``: the primary label in 1..C (class index + 1), the most
                  specific annotated label of the object (deepest in the hierarchy; ties go to
                  the label of the earliest box);
* ``multilabels`` float32 ``[M, C]`` over ``hierarchy.mids`` (column k = class k; the detector
                  prepends the background column): the object's labels and their ancestors;
* ``is_group_of`` bool ``[M]``;
* ``image_id``    str.

* ``skipped``     str, only in the placeholder item of an unreadable image (see below), with
                  ``skipped_reason`` (one of :data:`SKIP_REASONS`).

Boxes of one object annotated several times (same image, IoU >= ``merge_iou``, same group-of
flag; grouping is transitive) become one object with the union of their labels and the mean of
their coordinates. Images without boxes give ``M = 0``.

Missing and unreadable images. The image folder is listed once when the dataset is built, so
a missing file is found before any training or evaluation starts: with ``strict=True`` it is
an :class:`ImageLoadError` naming the files; with ``strict=False`` it is recorded in
``skipped_images`` (a :class:`SkippedImages`, complete in the process that built the
dataset). A file that exists but cannot be decoded is found when it is loaded (possibly in a
DataLoader worker): an error under ``strict``; otherwise, with ``replace_unreadable=True``
(training) the next readable image takes its place (a stand-in), and with
``replace_unreadable=False`` (evaluation) the item is a blank placeholder whose target carries
``skipped`` (the reason), so that the process that runs the model learns of it through the
batch. Either way the image is marked in a table in shared memory, so that the process that
built the dataset counts it (``skipped_images``, with the stand-ins served) even when a
DataLoader worker found it, and it is neither decoded nor logged again.

Images are read as displayed: a JPEG's EXIF orientation is applied (PIL's
``ImageOps.exif_transpose``), as the annotation tools did (Open Images boxes are drawn on the
displayed image); :func:`decode_image_rgb` is the one decoder of training, evaluation and
prediction.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2

from lsdet.boxes import box_iou
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import AnnotationIndex

logger = logging.getLogger(__name__)

# Boxes of one image at or above this IoU (and of one group-of flag) are one object annotated
# under several labels: the same notion of "the same object" as the concurrent rates' default
# IoU threshold (lsdet.data.rates, ``rates.iou_threshold``), kept at 0.95 for now, see
# ``OpenImagesDetection``.
DEFAULT_MERGE_IOU = 0.95


# Why an image is skipped (strict=False), as counted in the reports; the code of each in the
# dataset's shared table is its position here plus one (0: not skipped).
SKIP_REASONS = ("file_not_found", "cannot_decode")
EXIF_ORIENTATION = 0x0112  # the EXIF tag of the orientation; 1 = as stored


class ImageLoadError(RuntimeError):
    """An image file that is missing or cannot be decoded (names the image id and path);
    ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, message: str, reason: str = "cannot_decode") -> None:
        super().__init__(message)
        self.reason = reason


def as_displayed(image: Image.Image) -> Image.Image:
    """``image`` as a viewer displays it: its EXIF orientation applied (rotated and/or
    mirrored; PIL's ``ImageOps.exif_transpose``). An image without the tag, or with 1 (as
    stored), is returned as it is, without a copy."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def decode_image_rgb(path: str | Path) -> torch.Tensor:
    """Decode one image file as displayed (:func:`as_displayed`), uint8 RGB ``[3, H, W]``;
    Pillow's errors propagate (each reader wraps them in its own error)."""
    with Image.open(path) as image:
        pixels = np.array(as_displayed(image).convert("RGB"))  # writable copy for torch
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def read_image_rgb(path: str | Path, image_id: str) -> torch.Tensor:
    """Decode one image file as displayed, uint8 RGB ``[3, H, W]``: a JPEG's EXIF orientation
    is applied (rotated/mirrored as a viewer shows it, the image the annotators drew boxes
    on). A file that cannot be decoded is an :class:`ImageLoadError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image {image_id}: file not found: {path}", "file_not_found")
    try:
        return decode_image_rgb(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"image {image_id}: cannot decode {path}: {exc}") from exc


@dataclass
class SkippedImages:
    """Images left out because their file is missing or cannot be decoded (``strict=False``).

    ``entries`` are ``(image id, message)`` in the order found, ``reasons`` the reason of each
    image (one of :data:`SKIP_REASONS`), ``stand_ins`` how many training items were served by
    the next readable image in place of a skipped one. ``to_dict()`` is the JSON-ready summary
    for a run's records (``data_report.json``, ``metrics.json``): the count, the count per
    reason, the stand-ins and a few examples.
    """

    entries: list[tuple[str, str]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    stand_ins: int = 0

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def image_ids(self) -> list[str]:
        return [image_id for image_id, _ in self.entries]

    def add(self, image_id: str, message: str, reason: str = "cannot_decode") -> None:
        if image_id not in self.reasons:
            self.entries.append((image_id, message))
            self.reasons[image_id] = reason

    def count_by_reason(self) -> dict[str, int]:
        counts = dict.fromkeys(SKIP_REASONS, 0)
        for reason in self.reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def to_dict(self, max_examples: int = 10) -> dict[str, Any]:
        return {
            "count": self.count,
            "by_reason": self.count_by_reason(),
            "stand_ins": self.stand_ins,
            "examples": [
                {"image_id": image_id, "reason": self.reasons[image_id], "message": message}
                for image_id, message in self.entries[:max_examples]
            ],
        }


@dataclass
class MergedObjects:
    """Objects of one image after merging coincident boxes (normalised coordinates)."""

    boxes: np.ndarray  # float32 [M, 4]
    labels: np.ndarray  # bool [M, C], as annotated (no ancestors added)
    primary: np.ndarray  # int64 [M], class index of the most specific label
    is_group_of: np.ndarray  # bool [M]


def merge_coincident_boxes(
    boxes: np.ndarray,
    class_ids: np.ndarray,
    is_group_of: np.ndarray,
    *,
    depth: np.ndarray,
    merge_iou: float = DEFAULT_MERGE_IOU,
) -> MergedObjects:
    """Merge boxes of one image that overlap with IoU >= ``merge_iou`` (and share the group-of
    flag) into objects; objects come in the order of their first box."""
    num_classes = len(depth)
    num_boxes = len(boxes)
    class_ids = np.asarray(class_ids, dtype=np.int64)
    is_group_of = np.asarray(is_group_of, dtype=bool)
    if num_boxes == 0:
        return MergedObjects(
            np.zeros((0, 4), np.float32),
            np.zeros((0, num_classes), bool),
            np.zeros(0, np.int64),
            np.zeros(0, bool),
        )
    linked = (box_iou(boxes, boxes) >= merge_iou) & (is_group_of[:, None] == is_group_of[None, :])
    # Connected components: every box takes the smallest box index reachable from it.
    component = np.arange(num_boxes)
    while True:
        reachable_min = np.where(linked, component[None, :], num_boxes).min(axis=1)
        updated = np.minimum(component, reachable_min)
        if np.array_equal(updated, component):
            break
        component = updated
    first_boxes, object_of_box = np.unique(component, return_inverse=True)
    num_objects = len(first_boxes)

    counts = np.bincount(object_of_box, minlength=num_objects)
    merged = (
        np.stack(
            [
                np.bincount(object_of_box, weights=boxes[:, k], minlength=num_objects)
                for k in range(4)
            ],
            axis=1,
        )
        / counts[:, None]
    )
    labels = np.zeros((num_objects, num_classes), dtype=bool)
    labels[object_of_box, class_ids] = True
    # Primary label: deepest class, ties to the earliest box (lexsort: last key is primary).
    order = np.lexsort((np.arange(num_boxes), -depth[class_ids], object_of_box))
    first_in_object = np.ones(num_boxes, dtype=bool)
    first_in_object[1:] = object_of_box[order][1:] != object_of_box[order][:-1]
    primary = class_ids[order][first_in_object]
    return MergedObjects(
        merged.astype(np.float32), labels, primary, is_group_of[first_boxes].copy()
    )


class OpenImagesDetection(torch.utils.data.Dataset):
    """Images ``<image_root>/<ImageID><image_suffix>`` (Open Images) or
    ``<image_root>/<file_name>`` (COCO/LVIS, ``file_names``) with the index's boxes as targets.

    Args:
        index: the annotation index (its classes must be ``hierarchy.mids``).
        hierarchy: adds the ancestors to each object's labels; gives the primary label.
        image_root: folder of the images.
        image_size: ``None`` keeps each image's size; an int or ``(height, width)`` resizes
            every image to that fixed size (aspect ratio not kept).
        hflip_prob: probability of a horizontal flip (e.g. 0.5 for training, 0 for eval).
        merge_iou: IoU at or above which boxes of one image (with one group-of flag) are one
            object annotated under several labels, whose labels become one multi-label
            target (the paper's section 3.1: an object may carry several labels). It is the
            same notion as the concurrent rates' coincidence (``rates.iou_threshold``, 0.9),
            and nothing calls for two values: the 0.95 default is the value this project
            started with, kept so that results do not move; pass the rates' threshold to
            make the two one setting.
        strict: a missing or corrupt image raises :class:`ImageLoadError` naming it (missing
            files when the dataset is built); with False it is logged, recorded in
            ``skipped_images`` and handled as ``replace_unreadable`` says.
        replace_unreadable: with ``strict=False``, True returns the next readable image in
            index order in place of an unreadable one (training); False returns a blank
            placeholder whose target has ``skipped`` (evaluation: its ground truth must then
            be left out, ``EvaluationGroundTruth.without_images``).
        check_files: list the image folder when the dataset is built, to find missing files
            up front (one listing per folder); False leaves it to the first load.
        file_names: each image's path relative to ``image_root`` by image id (a COCO/LVIS
            file's ``file_name``, ``lsdet.data.coco_format.CocoIndex.file_names``), in place of
            ``<ImageID><image_suffix>``; every image of the index must have one.
    """

    def __init__(
        self,
        index: AnnotationIndex,
        hierarchy: Hierarchy,
        image_root: str | Path,
        *,
        image_size: int | tuple[int, int] | None = None,
        hflip_prob: float = 0.0,
        merge_iou: float = DEFAULT_MERGE_IOU,
        strict: bool = True,
        image_suffix: str = ".jpg",
        replace_unreadable: bool = True,
        check_files: bool = True,
        file_names: dict[str, str] | None = None,
    ):
        if list(index.mids) != list(hierarchy.mids):
            raise ValueError(
                f"the annotation index {index.directory} was built for other classes than the "
                "hierarchy's (different MIDs or order)"
            )
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        if not 0.0 < merge_iou <= 1.0:
            raise ValueError(f"merge_iou must lie in (0, 1], got {merge_iou}")
        self.index = index
        self.hierarchy = hierarchy
        self.image_root = Path(image_root)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.hflip_prob = hflip_prob
        steps = []
        if self.image_size is not None:
            steps.append(v2.Resize(list(self.image_size), antialias=True))
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        self.transform = v2.Compose(steps or [v2.Identity()])
        self.merge_iou = merge_iou
        self.strict = strict
        self.image_suffix = image_suffix
        self.file_names = file_names
        if file_names is not None:
            unnamed = [i for i in index.image_ids if i not in file_names]
            if unnamed:
                raise ValueError(
                    f"{len(unnamed)} images of the annotation index {index.directory} have no "
                    f"file name (e.g. image id {unnamed[0]})"
                )
        self.replace_unreadable = replace_unreadable
        self.bad_images: list[tuple[str, str]] = []  # (image id, message), this process only
        self._bad_seen: set[str] = set()
        self._skipped = SkippedImages()
        # Shared with DataLoader workers (forked, or sent by file descriptor when spawned):
        # the reason code of each skipped image, and the stand-ins served for it.
        self._skip_codes = torch.zeros(len(self), dtype=torch.uint8).share_memory_()
        self._stand_ins = torch.zeros(len(self), dtype=torch.int32).share_memory_()
        self._missing = np.zeros(len(self), dtype=bool)
        if check_files:
            self._find_missing_files()

    def _find_missing_files(self) -> None:
        paths = [self.image_path(k) for k in range(len(self))]
        listed: dict[Path, set[str]] = {}  # each folder listed once
        for folder in {path.parent for path in paths}:
            try:
                listed[folder] = {entry.name for entry in os.scandir(folder)}
            except FileNotFoundError:
                if folder == self.image_root:
                    raise ImageLoadError(f"image folder {folder} does not exist") from None
                listed[folder] = set()  # a subfolder of file_names: its images are missing
            except OSError as exc:
                raise ImageLoadError(f"image folder {folder} cannot be listed: {exc}") from exc
        self._missing = np.array([path.name not in listed[path.parent] for path in paths], bool)
        missing = np.flatnonzero(self._missing)
        if len(missing) == 0:
            return
        shown = ", ".join(str(self.image_path(k)) for k in missing[:3])
        message = (
            f"{len(missing)} of the {len(self)} images of the annotation index have no file "
            f"in {self.image_root}: {shown}" + (", ..." if len(missing) > 3 else "")
        )
        if self.strict:
            raise ImageLoadError(
                f"{message}; to skip them and go on, pass strict=False "
                "(data.strict=false on the command line)"
            )
        for k in missing:
            self._mark_skipped(int(k), "file_not_found")
        logger.warning("%s; they are skipped (strict=False)", message)

    def _mark_skipped(self, image_index: int, reason: str) -> None:
        self._skip_codes[image_index] = SKIP_REASONS.index(reason) + 1

    def _skip_message(self, image_index: int) -> str:
        reason = SKIP_REASONS[int(self._skip_codes[image_index]) - 1]
        what = "file not found:" if reason == "file_not_found" else "cannot decode"
        return f"image {self.index.image_id(image_index)}: {what} {self.image_path(image_index)}"

    @property
    def skipped_images(self) -> SkippedImages:
        """Every image skipped so far, also those found in DataLoader workers, with the
        stand-ins served for them (``strict=False``)."""
        for k in np.flatnonzero(self._skip_codes.numpy()):
            reason = SKIP_REASONS[int(self._skip_codes[k]) - 1]
            self._skipped.add(self.index.image_id(int(k)), self._skip_message(int(k)), reason)
        self._skipped.stand_ins = int(self._stand_ins.sum())
        return self._skipped

    def __len__(self) -> int:
        return self.index.num_images

    def image_path(self, image_index: int) -> Path:
        image_id = self.index.image_id(image_index)
        if self.file_names is not None:
            return self.image_root / self.file_names[image_id]
        return self.image_root / f"{image_id}{self.image_suffix}"

    def load_image(self, image_index: int) -> torch.Tensor:
        """Decode one image as displayed (EXIF orientation applied), uint8 RGB ``[3, H, W]``;
        ImageLoadError naming it if it fails."""
        return read_image_rgb(self.image_path(image_index), self.index.image_id(image_index))

    def objects(self, image_index: int) -> MergedObjects:
        """The merged objects of one image (normalised boxes, labels as annotated)."""
        annotations = self.index.annotations(image_index)
        return merge_coincident_boxes(
            np.asarray(annotations.boxes),
            np.asarray(annotations.class_ids),
            annotations.is_group_of,
            depth=self.hierarchy.depth,
            merge_iou=self.merge_iou,
        )

    def __getitem__(self, image_index: int) -> tuple[torch.Tensor, dict]:
        if self.strict:
            return self._make_item(image_index, self.load_image(image_index))
        for attempt in range(len(self)):
            position = (image_index + attempt) % len(self)
            image_id = self.index.image_id(position)
            if self._skip_codes[position]:
                # Found when the dataset was built (a missing file) or by another process:
                # not decoded again.
                message = self._skip_message(position)
            else:
                try:
                    image = self.load_image(position)
                except ImageLoadError as exc:
                    message = str(exc)
                    self._mark_skipped(position, exc.reason)
                    self._skipped.add(image_id, message, exc.reason)
                    if self.replace_unreadable:
                        logger.warning("%s; skipped, the next image stands in (strict=False)", exc)
                else:
                    if attempt > 0:
                        self._stand_ins[image_index] += 1
                    return self._make_item(position, image)
            if image_id not in self._bad_seen:
                self._bad_seen.add(image_id)
                self.bad_images.append((image_id, message))
            if not self.replace_unreadable:
                return self._placeholder(position, message)
        raise ImageLoadError(f"no image of the dataset under {self.image_root} could be loaded")

    def _placeholder(self, image_index: int, reason: str) -> tuple[torch.Tensor, dict]:
        """A blank item for an unreadable image; its target says why (``skipped``)."""
        logger.warning("%s; skipped (strict=False)", reason)
        height, width = self.image_size if self.image_size is not None else (32, 32)
        target = {
            "boxes": torch.zeros((0, 4), dtype=torch.float32),
            "labels": torch.zeros(0, dtype=torch.int64),
            "multilabels": torch.zeros((0, self.hierarchy.num_classes), dtype=torch.float32),
            "is_group_of": torch.zeros(0, dtype=torch.bool),
            "image_id": self.index.image_id(image_index),
            "skipped": reason,
            "skipped_reason": SKIP_REASONS[int(self._skip_codes[image_index]) - 1],
        }
        return torch.zeros((3, height, width), dtype=torch.float32), target

    def _make_item(self, image_index: int, image: torch.Tensor) -> tuple[torch.Tensor, dict]:
        height, width = image.shape[-2:]
        objects = self.objects(image_index)
        scale = np.array([width, height, width, height], dtype=np.float32)
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(np.ascontiguousarray(objects.boxes * scale, dtype=np.float32)),
            format="XYXY",
            canvas_size=(height, width),
        )
        image, boxes = self.transform(image, boxes)  # resize, random flip: boxes follow
        height, width = image.shape[-2:]
        boxes = _at_least_one_pixel(boxes.as_subclass(torch.Tensor).numpy(), width, height)
        multilabels = self.hierarchy.expand_multihot(objects.labels).astype(np.float32)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(objects.primary + 1),
            "multilabels": torch.from_numpy(multilabels),
            "is_group_of": torch.from_numpy(objects.is_group_of),
            "image_id": self.index.image_id(image_index),
        }
        return image.float().div_(255.0), target


def _at_least_one_pixel(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Widen boxes thinner than one pixel to one pixel (inside the image): torchvision's
    detectors reject boxes of zero width or height, which annotations may contain."""
    boxes = boxes.copy()
    for low, high, size in ((0, 2, width), (1, 3, height)):
        thin = boxes[:, high] - boxes[:, low] < 1.0
        if thin.any():
            centre = (boxes[thin, low] + boxes[thin, high]) / 2
            start = np.clip(centre - 0.5, 0.0, max(size - 1.0, 0.0))
            boxes[thin, low] = start
            boxes[thin, high] = start + 1.0
    return boxes


def collate_fn(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Batch as lists (images may differ in size), the form torchvision detectors take."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)
