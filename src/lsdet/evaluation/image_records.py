"""Per-image records of one Open Images Challenge evaluation, enough to recompute its per-class
APs on any multiset of its images (an image bootstrap: experiments/bootstrap.py).

``lsdet.evaluation.evaluate(..., keep_records=True)`` fills them: per detection that the metric
matched (its image's class is evaluated there) the image index, the class, the score and its
status (true positive, false positive, a group-of box's credited entry, or ignored inside a
group-of box); per (image, class) with ground-truth boxes the number of non-group-of and of
group-of boxes. Detections the metric drops before matching (class not verified in the image,
image not in the ground truth, no area) have no record: they take no part in any AP. A saved
file keeps only the detections that can change an AP
(``ImageRecords.without_uninformative_detections``).

The AP of a class on a multiset of images, each image counted ``w`` times, is the AP of the
evaluation with every image repeated ``w`` times: the repeated entries have equal scores and
form one operating point, so each adds ``w`` times its true/false-positive weight there, and
each ground-truth instance counts ``w`` times. With every ``w = 1`` the APs are the
evaluation's own, exactly (``core.average_precision``'s arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

# Status of a detection record.
FALSE_POSITIVE = 0
TRUE_POSITIVE = 1
GROUP_OF_ENTRY = 2  # the entry of a group-of box (weight group_of_weight), at its best score
IGNORED = 3  # inside a group-of box without being its entry: not counted


@dataclass
class ImageRecords:
    """The records of one evaluation (arrays in the evaluation's order: by class, then by
    descending score, the order of the AP computation)."""

    mids: list[str]
    image_ids: np.ndarray  # [I] the ground truth's image ids; records index them
    det_image: np.ndarray  # [N] int
    det_class: np.ndarray  # [N] int
    det_score: np.ndarray  # [N] float64
    det_status: np.ndarray  # [N] int8: FALSE_POSITIVE | TRUE_POSITIVE | GROUP_OF_ENTRY | IGNORED
    gt_image: np.ndarray  # [P] int, one per (image, class) with ground-truth boxes
    gt_class: np.ndarray  # [P] int
    gt_boxes: np.ndarray  # [P] int, non-group-of boxes
    gt_group_of: np.ndarray  # [P] int, group-of boxes
    group_of_weight: float = 1.0

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def without_uninformative_detections(self) -> ImageRecords:
        """The records without the detections that cannot change any AP of
        :meth:`average_precisions`, whatever the image weights; the APs stay bit-identical.

        - An ignored detection (inside a group-of box, not its entry) is never an entry.
        - A false positive scored below every positive (true positive or group-of entry) of
          its class ranks after the class's last positive, in every image resample too (a
          resample's positives are some of these): it only adds operating points at the
          final recall with a precision no higher than the last positive's, so the envelope
          at every recall step is unchanged, and so are the running sums before it. Those
          scored at least the lowest positive score are kept (ties form one point).
        - A class without positives has AP 0 (NaN without instances) in every resample, with
          or without its false positives.

        The ground-truth counts are all kept. Per-class detection counts of the kept records
        are no longer the evaluation's (``ChallengeResult`` has those)."""
        positive = (self.det_status == TRUE_POSITIVE) | (self.det_status == GROUP_OF_ENTRY)
        lowest = np.full(len(self.mids), np.inf)  # a class without positives keeps nothing
        np.minimum.at(lowest, self.det_class[positive], self.det_score[positive])
        keep = (self.det_status != IGNORED) & (self.det_score >= lowest[self.det_class])
        if np.isnan(self.det_score).any():  # NaN has no rank below a score: only the ignored go
            keep = self.det_status != IGNORED
        return replace(
            self,
            det_image=self.det_image[keep],
            det_class=self.det_class[keep],
            det_score=self.det_score[keep],
            det_status=self.det_status[keep],
        )

    def save(self, path: str | Path) -> Path:
        """Write the records as a compressed ``.npz`` (written to a temporary name, then
        renamed: a file cut short is never left under the name): only the detections that
        can change an AP (:meth:`without_uninformative_detections`), the scores as float32
        where every score is a float32 value (a detector's scores; :meth:`load` restores the
        float64 values bit for bit), else as float64; image indices as uint16 where they fit."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        kept = self.without_uninformative_detections()
        score = np.asarray(kept.det_score, dtype=np.float64)
        narrow = score.astype(np.float32)
        if not np.array_equal(narrow.astype(np.float64), score):
            narrow = score  # not all float32 values: kept exact
        index = np.uint16 if self.num_images <= np.iinfo(np.uint16).max + 1 else np.int32
        np.savez_compressed(
            tmp,
            mids=np.asarray(self.mids, dtype=str),
            image_ids=np.asarray(self.image_ids, dtype=str),
            det_image=kept.det_image.astype(index),
            det_class=kept.det_class.astype(np.int32),
            det_score=narrow,
            det_status=kept.det_status.astype(np.int8),
            gt_image=self.gt_image.astype(index),
            gt_class=self.gt_class.astype(np.int32),
            gt_boxes=self.gt_boxes.astype(np.int32),
            gt_group_of=self.gt_group_of.astype(np.int32),
            group_of_weight=np.float64(self.group_of_weight),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImageRecords:
        """Records written by :meth:`save`; a file without them is an error naming it."""
        with np.load(path, allow_pickle=False) as data:
            missing = sorted(set(_FIELDS) - set(data.files))
            if missing:
                raise ValueError(f"{path}: not an image-records file (no {missing})")
            return cls(
                mids=[str(m) for m in data["mids"]],
                image_ids=data["image_ids"],
                det_image=data["det_image"].astype(np.int64),
                det_class=data["det_class"].astype(np.int64),
                det_score=data["det_score"].astype(np.float64),
                det_status=data["det_status"],
                gt_image=data["gt_image"].astype(np.int64),
                gt_class=data["gt_class"].astype(np.int64),
                gt_boxes=data["gt_boxes"].astype(np.int64),
                gt_group_of=data["gt_group_of"].astype(np.int64),
                group_of_weight=float(data["group_of_weight"]),
            )

    def average_precisions(self, image_weights: np.ndarray | None = None) -> np.ndarray:
        """``[C]`` AP per class with every image counted ``image_weights[i]`` times (None:
        once, the evaluation's own APs); NaN for a class without ground-truth instances."""
        num_classes = len(self.mids)
        if image_weights is None:
            image_weights = np.ones(self.num_images)
        image_weights = np.asarray(image_weights, dtype=np.float64)
        if image_weights.shape != (self.num_images,):
            raise ValueError(
                f"image_weights has shape {image_weights.shape}; expected ({self.num_images},)"
            )
        gt_weight = image_weights[self.gt_image]
        plain = np.bincount(self.gt_class, weights=gt_weight * self.gt_boxes, minlength=num_classes)
        group_of = np.bincount(
            self.gt_class, weights=gt_weight * self.gt_group_of, minlength=num_classes
        )
        num_instances = plain + self.group_of_weight * group_of
        entry = (self.det_status != IGNORED) & (image_weights[self.det_image] > 0)
        classes = self.det_class[entry]
        scores = self.det_score[entry]
        status = self.det_status[entry]
        weight = image_weights[self.det_image[entry]]
        tp_weight = np.where(status == TRUE_POSITIVE, 1.0, 0.0)
        tp_weight[status == GROUP_OF_ENTRY] = self.group_of_weight
        # a false positive is an entry of no positive weight (core.average_precision)
        tp = weight * tp_weight
        fp = weight * (tp_weight <= 0)
        # imported here: core imports this module for the records it builds
        from lsdet.evaluation.core import average_precision_per_class

        return average_precision_per_class(
            classes, scores, tp, num_instances, num_classes, fp_weight=fp
        )

    def mean_average_precision(self, image_weights: np.ndarray | None = None) -> float:
        """The mAP (mean over the classes with instances) with the images so counted."""
        ap = self.average_precisions(image_weights)
        return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


_FIELDS = (
    "mids", "image_ids", "det_image", "det_class", "det_score", "det_status", "gt_image",
    "gt_class", "gt_boxes", "gt_group_of", "group_of_weight",
)  # fmt: skip
