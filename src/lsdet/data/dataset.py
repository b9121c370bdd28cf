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

Boxes of one object annotated several times (same image, IoU >= ``merge_iou``, same group-of
flag; grouping is transitive) become one object with the union of their labels and the mean of
their coordinates. Images without boxes give ``M = 0``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as transforms
from PIL import Image

from lsdet.boxes import box_iou
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import AnnotationIndex

logger = logging.getLogger(__name__)


class ImageLoadError(RuntimeError):
    """An image file that is missing or cannot be decoded (names the image id and path)."""


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
    merge_iou: float = 0.95,
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
    """Images ``<image_root>/<ImageID><image_suffix>`` with the index's boxes as targets.

    Args:
        index: the annotation index (its classes must be ``hierarchy.mids``).
        hierarchy: adds the ancestors to each object's labels; gives the primary label.
        image_root: folder of the images.
        image_size: ``None`` keeps each image's size; an int or ``(height, width)`` resizes
            every image to that fixed size (aspect ratio not kept).
        hflip_prob: probability of a horizontal flip (e.g. 0.5 for training, 0 for eval).
        merge_iou: IoU at or above which boxes of one image are one object.
        strict: a missing or corrupt image raises :class:`ImageLoadError`; with False it is
            logged as a warning naming the image, counted in ``bad_images`` (of this process)
            and the next image in index order is returned in its place.
    """

    def __init__(
        self,
        index: AnnotationIndex,
        hierarchy: Hierarchy,
        image_root: str | Path,
        *,
        image_size: int | tuple[int, int] | None = None,
        hflip_prob: float = 0.0,
        merge_iou: float = 0.95,
        strict: bool = True,
        image_suffix: str = ".jpg",
    ):
        if list(index.mids) != list(hierarchy.mids):
            raise ValueError(
                f"the annotation index {index.directory} was built for other classes than the "
                "hierarchy's (different MIDs or order)"
            )
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.index = index
        self.hierarchy = hierarchy
        self.image_root = Path(image_root)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.hflip_prob = hflip_prob
        self.merge_iou = merge_iou
        self.strict = strict
        self.image_suffix = image_suffix
        self.bad_images: list[tuple[str, str]] = []  # (image id, reason), this process only

    def __len__(self) -> int:
        return self.index.num_images

    def image_path(self, image_index: int) -> Path:
        return self.image_root / f"{self.index.image_id(image_index)}{self.image_suffix}"

    def load_image(self, image_index: int) -> torch.Tensor:
        """Decode one image as uint8 RGB ``[3, H, W]``; ImageLoadError naming it if it fails."""
        path = self.image_path(image_index)
        image_id = self.index.image_id(image_index)
        if not path.is_file():
            raise ImageLoadError(f"image {image_id}: file not found: {path}")
        try:
            with Image.open(path) as image:
                pixels = np.array(image.convert("RGB"))  # writable copy for torch
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(f"image {image_id}: cannot decode {path}: {exc}") from exc
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

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
        for attempt in range(len(self)):
            position = (image_index + attempt) % len(self)
            try:
                image = self.load_image(position)
            except ImageLoadError as exc:
                if self.strict:
                    raise
                self.bad_images.append((self.index.image_id(position), str(exc)))
                logger.warning("%s; using the next image instead (strict=False)", exc)
                continue
            return self._make_item(position, image)
        raise ImageLoadError(f"no image of the dataset under {self.image_root} could be loaded")

    def _make_item(self, image_index: int, image: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.image_size is not None:
            image = transforms.resize(image, list(self.image_size), antialias=True)
        height, width = image.shape[-2:]
        objects = self.objects(image_index)
        boxes = objects.boxes * np.array([width, height, width, height], dtype=np.float32)
        if self.hflip_prob > 0 and torch.rand(()) < self.hflip_prob:
            image = image.flip(-1)
            boxes = np.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1
            )
        boxes = _at_least_one_pixel(boxes, width, height)
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
