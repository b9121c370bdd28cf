"""The Open Images Challenge detection metric on in-memory arrays, vectorised: the ground
truth, the matching and the AP share sorted array layouts.

Semantics are those of the TF Object Detection API's ``OpenImagesChallengeEvaluator``
(``object_detection_evaluation.py`` with ``per_image_evaluation.py``):

* Detections without area (xmin >= xmax or ymin >= ymax) are dropped, as TF does.
* Per image, a class is evaluated only when it is verified there (a positive or negative
  image-level label) or has a GT box; detections of any other class are ignored.
* Per (image, class), detections in descending score order each take the non-group-of box
  of highest IoU (the first one on ties). A detection whose box has IoU >= threshold and is
  still free is a true positive and takes it; one whose box is already taken, or whose best
  IoU is below the threshold, is a false positive (it is not re-matched to another box).
* Detections that are not true positives are then matched by IoA (intersection over the
  detection's area) to the group-of box of highest IoA. Those with IoA >= threshold leave
  the false positives; each group-of box that got at least one becomes a single entry with
  the highest such score and weight ``group_of_weight`` (the others are ignored). Group-of
  boxes count ``group_of_weight`` each in the number of GT instances, so an unmatched one is
  a (weighted) false negative.
* AP per class is the all-points (VOC 2010) area under the monotone precision envelope;
  precision = cumulative TP weight / (cumulative TP weight + cumulative FP count).
  mAP = mean over the classes with at least one GT instance (weighted count > 0).

Ties in score: within one (image, class) the earlier detection in the input is matched
first; for AP, detections of equal score form a single operating point, so the AP does not
depend on their order (TF's own order among ties is that of an unstable sort). Where scores
are distinct the numbers are TF's.

Detections are joined once with the evaluated (image, class) pairs of the ground truth
(key = image index * C + class index) and sorted once, by class and descending score; that
order serves the matching and the AP. There is no Python loop over images or detections
(one loop over classes computes the APs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lsdet.boxes import box_ioa_paired, box_iou_paired
from lsdet.data import Hierarchy
from lsdet.evaluation import image_records as records_module

# Pairs of (detection, GT box) scored per chunk; bounds the memory of the matching step.
_PAIRS_PER_CHUNK = 2_000_000
_MAX_EXAMPLES = 20  # examples of skipped images in a report
# The join of detections with evaluated (image, class) pairs uses a bitmap over all
# image * class keys up to this many keys (128 MB); beyond it, a binary search.
_BITMAP_JOIN_MAX_KEYS = 1 << 30
_ROWS_PER_BLOCK = 1 << 16  # rows per block of elementwise work on all detections


def image_id_codes(
    box_image_ids: np.ndarray, label_image_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One integer code per box row and per label row into the image ids they use.

    Returns ``(image_ids, box_codes, label_codes)``: the distinct image ids (object array,
    in order of first appearance, boxes first) and the code of each box and label row.
    """
    box_image_ids = np.asarray(box_image_ids, dtype=object)
    label_image_ids = np.asarray(label_image_ids, dtype=object)
    codes, image_ids = pd.factorize(np.concatenate([box_image_ids, label_image_ids]))
    num_boxes = len(box_image_ids)
    return np.asarray(image_ids, dtype=object), codes[:num_boxes], codes[num_boxes:]


@dataclass
class EvaluationGroundTruth:
    """Ground truth of one evaluation set, ready for repeated evaluation.

    Build it once (``from_arrays`` here, or ``lsdet.evaluation.load_ground_truth`` from the
    Open Images CSVs) and pass it to :func:`evaluate` for every set of detections.
    Boxes are ``(xmin, ymin, xmax, ymax)`` in the same unit as the detections (the Open
    Images CSVs are normalised to [0, 1]). Class lists are already expanded to the hierarchy
    when the caller wants that (``load_ground_truth`` does it).

    Attributes:
        mids: class names (MIDs) in class-index order, ``C`` of them.
        image_ids: ``[I]`` image ids; an image is in the set if it has a box or a label.
        box_image, box_class: ``[B]`` int64 per box, sorted by (image, class, input order).
        boxes: ``[B, 4]`` float64; box_is_group_of: ``[B]`` bool.
        verified_keys: sorted unique ``image * C + class`` of the evaluated (image, class)
            pairs: image-level labels (positive or negative) and classes with a box.
        hierarchy: the class hierarchy (``mids`` order), needed only for
            ``expand_predictions``.
        read_reports: the GT readers' reports (rows read and skipped), when read from files.
        left_out_images: images taken out by :meth:`without_images` (id -> reason).
        left_out_boxes: their GT boxes (after expansion), which the metric does not see.
    """

    mids: list[str]
    image_ids: np.ndarray
    box_image: np.ndarray
    box_class: np.ndarray
    boxes: np.ndarray
    box_is_group_of: np.ndarray
    verified_keys: np.ndarray
    hierarchy: Hierarchy | None = None
    read_reports: list = field(default_factory=list)
    left_out_images: dict[str, str] = field(default_factory=dict)
    left_out_boxes: int = 0
    _image_lookup: pd.Index = field(init=False, repr=False)
    _matching: _MatchingTables | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._image_lookup = pd.Index(self.image_ids)
        if not self._image_lookup.is_unique:
            raise ValueError("EvaluationGroundTruth.image_ids must be unique")

    @property
    def num_classes(self) -> int:
        return len(self.mids)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_arrays(
        cls,
        mids: list[str],
        box_image_ids: np.ndarray,
        box_classes: np.ndarray,
        boxes: np.ndarray,
        box_is_group_of: np.ndarray,
        label_image_ids: np.ndarray | None = None,
        label_classes: np.ndarray | None = None,
        *,
        hierarchy: Hierarchy | None = None,
    ) -> EvaluationGroundTruth:
        """Ground truth from per-box and per-label arrays (class indices into ``mids``).

        ``label_*`` are the verified image-level labels, positive and negative alike (both
        make the class evaluated in that image). Nothing is expanded here.
        """
        if label_image_ids is None:
            label_image_ids = np.empty(0, dtype=object)
            label_classes = np.empty(0, dtype=np.int64)
        image_ids, box_images, label_images = image_id_codes(box_image_ids, label_image_ids)
        return cls.from_image_codes(
            mids,
            image_ids,
            box_images,
            box_classes,
            boxes,
            box_is_group_of,
            label_images,
            label_classes,
            hierarchy=hierarchy,
        )

    @classmethod
    def from_image_codes(
        cls,
        mids: list[str],
        image_id_values: np.ndarray,
        box_images: np.ndarray,
        box_classes: np.ndarray,
        boxes: np.ndarray,
        box_is_group_of: np.ndarray,
        label_images: np.ndarray,
        label_classes: np.ndarray,
        *,
        hierarchy: Hierarchy | None = None,
    ) -> EvaluationGroundTruth:
        """:meth:`from_arrays` with image ids given as integer codes into
        ``image_id_values`` (a reader's dictionary; values may repeat and need not all be
        used), which spares hashing one string per row."""
        num_classes = len(mids)
        box_images = np.asarray(box_images, dtype=np.int64)
        box_classes = np.asarray(box_classes, dtype=np.int64)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        box_is_group_of = np.asarray(box_is_group_of, dtype=bool)
        label_images = np.asarray(label_images, dtype=np.int64)
        label_classes = np.asarray(label_classes, dtype=np.int64)
        if not (len(box_images) == len(box_classes) == len(boxes) == len(box_is_group_of)):
            raise ValueError("box arrays must have the same length")
        if len(label_images) != len(label_classes):
            raise ValueError("label arrays must have the same length")
        for name, classes in (("box_classes", box_classes), ("label_classes", label_classes)):
            if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
                raise ValueError(f"{name} must lie in [0, {num_classes})")

        # Sorted ids of the images used: the same set of images gives the same arrays
        # whatever the row order.
        value_code, sorted_values = pd.factorize(
            np.asarray(image_id_values, dtype=object), sort=True
        )
        box_image = value_code[box_images]
        label_image = value_code[label_images]
        used = np.zeros(len(sorted_values), dtype=bool)
        used[box_image] = True
        used[label_image] = True
        new_index = np.cumsum(used) - 1
        box_image, label_image = new_index[box_image], new_index[label_image]

        box_keys = box_image * num_classes + box_classes
        order = np.argsort(box_keys, kind="stable")
        label_keys = label_image * num_classes + label_classes
        return cls(
            mids=list(mids),
            image_ids=np.asarray(sorted_values, dtype=object)[used],
            box_image=box_image[order],
            box_class=box_classes[order],
            boxes=boxes[order],
            box_is_group_of=box_is_group_of[order],
            verified_keys=sorted_unique(np.concatenate([box_keys, label_keys])),
            hierarchy=hierarchy,
        )

    def without_images(self, image_ids: Any, reasons: Any = None) -> EvaluationGroundTruth:
        """This ground truth without the given images (their boxes and verified labels).

        For images the detector could not see: a missing or unreadable file skipped with
        ``strict=False`` (``OpenImagesDetection.skipped_images``). Their boxes are left out
        rather than counted as misses, so that the mAP stays a measure of the detector on
        the images it was given and a data problem does not pass for a weaker detector; the
        images and their boxes are counted in the result's report (``skipped_images``,
        ``ground_truth_boxes_left_out`` in ``metrics.json``), so the change is never silent.
        Detections of those images are then ignored like those of any image outside the set.
        ``reasons`` (optional, one per id) say why each was left out; ids not in the set
        are recorded too.
        """
        image_ids = [str(image_id) for image_id in image_ids]
        reasons = ["left out"] * len(image_ids) if reasons is None else list(reasons)
        position = self.image_index_of(image_ids)
        drop = np.zeros(self.num_images, dtype=bool)
        drop[position[position >= 0]] = True
        new_index = np.cumsum(~drop) - 1
        keep_box = ~drop[self.box_image]
        key_image, key_class = np.divmod(self.verified_keys, self.num_classes)
        keep_key = ~drop[key_image]
        return EvaluationGroundTruth(
            mids=list(self.mids),
            image_ids=self.image_ids[~drop],
            box_image=new_index[self.box_image[keep_box]],
            box_class=self.box_class[keep_box],
            boxes=self.boxes[keep_box],
            box_is_group_of=self.box_is_group_of[keep_box],
            verified_keys=new_index[key_image[keep_key]] * self.num_classes + key_class[keep_key],
            hierarchy=self.hierarchy,
            read_reports=list(self.read_reports),
            left_out_images={
                **self.left_out_images,
                **dict(zip(image_ids, map(str, reasons), strict=True)),
            },
            left_out_boxes=self.left_out_boxes + int((~keep_box).sum()),
        )

    def image_index_of(self, image_ids: Any) -> np.ndarray:
        """Index of each image id in ``image_ids`` (int64), -1 for ids not in the set."""
        return self._image_lookup.get_indexer(np.asarray(image_ids, dtype=object)).astype(np.int64)

    def matching_tables(self) -> _MatchingTables:
        """The boxes by evaluated (image, class) pair, built on first use and kept."""
        if self._matching is None:
            self._matching = _MatchingTables.build(self)
        return self._matching

    def num_instances(self, group_of_weight: float = 1.0) -> np.ndarray:
        """``[C]`` GT instance count per class as the metric uses it (group-of weighted)."""
        counts = np.bincount(self.box_class[~self.box_is_group_of], minlength=self.num_classes)
        group_of = np.bincount(self.box_class[self.box_is_group_of], minlength=self.num_classes)
        return counts + group_of_weight * group_of


@dataclass
class _KeyBitmap:
    """A set of integer keys in ``[0, K)`` as a bitmap with the count of keys before each
    64-bit word (a rank directory, as in succinct data structures): the position of a key
    in the sorted set costs two lookups and a popcount, in ``K / 8`` bytes (2.5 MB for
    40,000 images x 500 classes; a table of positions would take 32 times that)."""

    words: np.ndarray  # [ceil(K / 64)] uint64
    keys_before_word: np.ndarray  # [ceil(K / 64)] int64

    @classmethod
    def build(cls, sorted_keys: np.ndarray, num_keys: int) -> _KeyBitmap:
        words = np.zeros((num_keys + 63) // 64, dtype=np.uint64)
        word_of_key = sorted_keys >> 6
        bits = np.left_shift(np.uint64(1), (sorted_keys & 63).astype(np.uint64))
        starts = np.flatnonzero(np.r_[True, word_of_key[1:] != word_of_key[:-1]])
        if len(sorted_keys):
            words[word_of_key[starts]] = np.bitwise_or.reduceat(bits, starts)
        counts = np.bitwise_count(words).astype(np.int64)
        return cls(words=words, keys_before_word=np.cumsum(counts) - counts)

    def rank_of(self, keys: np.ndarray) -> np.ndarray:
        """The position of each key (in ``[0, K)``) in the sorted set, -1 where absent."""
        word_index = keys >> 6
        word = self.words[word_index]
        bit = (keys & 63).astype(np.uint64)
        present = ((word >> bit) & np.uint64(1)).astype(bool)
        below = np.left_shift(np.uint64(1), bit)
        below -= np.uint64(1)
        below &= word
        rank = self.keys_before_word[word_index]
        rank += np.bitwise_count(below)
        rank[~present] = -1
        return rank


@dataclass
class _MatchingTables:
    """The GT boxes by evaluated (image, class) pair, for the join with the detections.

    Pair ``p`` is ``verified_keys[p]``; its non-group-of boxes are
    ``plain_boxes[plain_start[p] : plain_start[p] + plain_count[p]]`` (group-of alike).
    """

    num_classes: int
    verified_keys: np.ndarray
    key_bitmap: _KeyBitmap | None  # None where I * C is too large for one
    plain_start: np.ndarray
    plain_count: np.ndarray
    plain_boxes: np.ndarray
    group_start: np.ndarray
    group_count: np.ndarray
    group_boxes: np.ndarray
    group_classes: np.ndarray

    @classmethod
    def build(cls, gt: EvaluationGroundTruth) -> _MatchingTables:
        keys = gt.box_image * gt.num_classes + gt.box_class  # sorted (from_arrays sorts them)
        plain = ~gt.box_is_group_of
        ranges = []
        for subset in (plain, ~plain):
            start = np.searchsorted(keys[subset], gt.verified_keys, side="left")
            end = np.searchsorted(keys[subset], gt.verified_keys, side="right")
            ranges += [start, end - start]
        bitmap = None
        if gt.num_images * gt.num_classes <= _BITMAP_JOIN_MAX_KEYS:
            bitmap = _KeyBitmap.build(gt.verified_keys, gt.num_images * gt.num_classes)
        return cls(
            num_classes=gt.num_classes,
            verified_keys=gt.verified_keys,
            key_bitmap=bitmap,
            plain_start=ranges[0],
            plain_count=ranges[1],
            plain_boxes=gt.boxes[plain],
            group_start=ranges[2],
            group_count=ranges[3],
            group_boxes=gt.boxes[~plain],
            group_classes=gt.box_class[~plain],
        )

    def pair_of(
        self, image_index: np.ndarray, class_index: np.ndarray, kept: np.ndarray | None = None
    ) -> np.ndarray:
        """The evaluated pair of each (image index, class index), -1 where there is none
        (or the row is not ``kept``, or its image index is -1): the one join of the
        detections with the ground truth."""
        pair = np.empty(len(image_index), dtype=np.int64)
        # In blocks, so that the temporaries stay in the cache and are reused rather than
        # mapped afresh for every step (page faults cost more than the arithmetic here).
        for start in range(0, len(pair), _ROWS_PER_BLOCK):
            block = slice(start, start + _ROWS_PER_BLOCK)
            images = image_index[block]
            valid = images >= 0
            if kept is not None:
                valid &= kept[block]
            keys = np.where(valid, images, 0).astype(np.int64) * self.num_classes
            keys += class_index[block]
            pair[block] = np.where(valid, self._pair_of_keys(keys), -1)
        return pair

    def _pair_of_keys(self, keys: np.ndarray) -> np.ndarray:
        if self.key_bitmap is not None:
            return self.key_bitmap.rank_of(keys)
        position = np.searchsorted(self.verified_keys, keys)
        found = position < len(self.verified_keys)
        found[found] = self.verified_keys[position[found]] == keys[found]
        return np.where(found, position, -1)


@dataclass
class EvaluationReport:
    """What happened to the predictions: read, skipped as bad, ignored by the metric."""

    num_predictions: int = 0
    skipped_bad_rows: dict[str, int] = field(default_factory=dict)
    bad_row_examples: list[str] = field(default_factory=list)
    ignored_image_not_in_ground_truth: int = 0
    images_not_in_ground_truth: int = 0
    ignored_degenerate_box: int = 0
    ignored_class_not_verified: int = 0
    ignored_in_group_of: int = 0
    added_by_expansion: int = 0
    ground_truth_files: list[dict] = field(default_factory=list)  # the GT readers' reports
    # Images the detector could not see (EvaluationGroundTruth.without_images): id -> reason.
    skipped_images: dict[str, str] = field(default_factory=dict)
    ground_truth_boxes_left_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_predictions": self.num_predictions,
            "skipped_bad_rows": dict(self.skipped_bad_rows),
            "num_skipped_bad_rows": int(sum(self.skipped_bad_rows.values())),
            "duplicate_predictions": int(
                sum(n for reason, n in self.skipped_bad_rows.items() if "duplicate" in reason)
            ),
            "bad_row_examples": list(self.bad_row_examples),
            "ignored_image_not_in_ground_truth": self.ignored_image_not_in_ground_truth,
            "images_not_in_ground_truth": self.images_not_in_ground_truth,
            "ignored_degenerate_box": self.ignored_degenerate_box,
            "ignored_class_not_verified": self.ignored_class_not_verified,
            "ignored_in_group_of": self.ignored_in_group_of,
            "added_by_expansion": self.added_by_expansion,
            "ground_truth_files": list(self.ground_truth_files),
            "skipped_images": len(self.skipped_images),
            "skipped_image_examples": [
                {"image_id": image_id, "reason": reason}
                for image_id, reason in list(self.skipped_images.items())[:_MAX_EXAMPLES]
            ],
            "ground_truth_boxes_left_out": self.ground_truth_boxes_left_out,
        }


@dataclass
class ChallengeResult:
    """Result of one evaluation. Per-class arrays are ``[C]`` in ``mids`` order.

    ``ap`` is NaN for classes without GT instances; those are left out of ``map`` and of
    ``per_class_ap``. ``num_detections`` counts the detections evaluated for the class
    (after the per-image class filter), ``num_true_positives`` the non-group-of boxes matched
    plus the group-of boxes credited, ``num_false_positives`` the rest that were not
    absorbed by a group-of box.
    """

    mids: list[str]
    ap: np.ndarray
    num_gt_boxes: np.ndarray
    num_group_of_boxes: np.ndarray
    num_detections: np.ndarray
    num_true_positives: np.ndarray
    num_false_positives: np.ndarray
    report: EvaluationReport
    group_of_weight: float = 1.0
    iou_threshold: float = 0.5
    # per-image records for an image bootstrap (``evaluate(..., keep_records=True)``)
    image_records: records_module.ImageRecords | None = None

    @property
    def has_ground_truth(self) -> np.ndarray:
        return ~np.isnan(self.ap)

    @property
    def map(self) -> float:
        evaluated = self.ap[self.has_ground_truth]
        return float(evaluated.mean()) if len(evaluated) else float("nan")

    @property
    def per_class_ap(self) -> dict[str, float]:
        """MID -> AP for every class with at least one GT instance."""
        return {
            mid: float(ap)
            for mid, ap, has_gt in zip(self.mids, self.ap, self.has_ground_truth, strict=True)
            if has_gt
        }

    def per_class_frame(self) -> pd.DataFrame:
        """One row per class: MID, AP and the counts."""
        return pd.DataFrame(
            {
                "mid": self.mids,
                "ap": self.ap,
                "num_gt_boxes": self.num_gt_boxes,
                "num_group_of_boxes": self.num_group_of_boxes,
                "num_detections": self.num_detections,
                "num_true_positives": self.num_true_positives,
                "num_false_positives": self.num_false_positives,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-class APs included, counts in :meth:`per_class_frame`);
        ``map`` is None when no class has a GT instance."""
        return {
            "map": self.map if self.has_ground_truth.any() else None,
            "num_classes_evaluated": int(self.has_ground_truth.sum()),
            "group_of_weight": self.group_of_weight,
            "iou_threshold": self.iou_threshold,
            "per_class_ap": self.per_class_ap,
            "report": self.report.to_dict(),
        }


def evaluate(
    gt: EvaluationGroundTruth,
    image_ids: Any,
    class_indices: Any,
    scores: Any,
    boxes: Any,
    *,
    group_of_weight: float = 1.0,
    iou_threshold: float = 0.5,
    expand_predictions: bool = False,
    report: EvaluationReport | None = None,
    keep_records: bool = False,
) -> ChallengeResult:
    """Open Images Challenge AP per class and mAP of detections against ``gt``.

    Args:
        gt: the ground truth (built once, reused across calls).
        image_ids: ``[N]`` image id strings, or integer indices into ``gt.image_ids``
            (-1 = not in the set). Detections of images not in the set are ignored (counted).
        class_indices: ``[N]`` int, index into ``gt.mids`` (detector label k+1 -> k).
        scores: ``[N]`` float. boxes: ``[N, 4]`` (xmin, ymin, xmax, ymax), same unit as GT.
        group_of_weight: weight of a group-of box as a GT instance and as a true positive.
        iou_threshold: for IoU (non-group-of) and IoA (group-of) matching.
        expand_predictions: also count each detection for every ancestor class
            (needs ``gt.hierarchy``); off in the official metric.
        report: a reader's report to extend (otherwise a fresh one).
        keep_records: also return the per-image records of the matching
            (``result.image_records``, ``lsdet.evaluation.image_records``).
    """
    num_classes = gt.num_classes
    image_ids = np.asarray(image_ids)
    if image_ids.dtype.kind in "iu":
        det_image = image_ids
        if len(det_image) and det_image.max() >= gt.num_images:
            raise ValueError("integer image_ids must index gt.image_ids (or be -1)")
    else:
        det_image = gt.image_index_of(image_ids)
    det_class = np.asarray(class_indices)
    if det_class.dtype.kind not in "iu":
        det_class = det_class.astype(np.int64)
    det_scores = np.asarray(scores).astype(np.float64, copy=False)
    det_boxes = np.asarray(boxes).astype(np.float64, copy=False).reshape(-1, 4)
    if not (len(det_image) == len(det_class) == len(det_scores) == len(det_boxes)):
        raise ValueError(
            "image_ids, class_indices, scores and boxes must have the same length, got "
            f"{len(det_image)}, {len(det_class)}, {len(det_scores)}, {len(det_boxes)}"
        )
    if len(det_class) and (det_class.min() < 0 or det_class.max() >= num_classes):
        raise ValueError(f"class_indices must lie in [0, {num_classes})")
    if report is None:
        report = EvaluationReport(num_predictions=len(det_image))
    elif report.num_predictions == 0:
        report.num_predictions = len(det_image)

    report.skipped_images = dict(gt.left_out_images)
    report.ground_truth_boxes_left_out = gt.left_out_boxes
    not_in_gt = det_image < 0
    report.ignored_image_not_in_ground_truth = int(not_in_gt.sum())
    if image_ids.dtype.kind not in "iu":  # with indices the caller knows the ids
        report.images_not_in_ground_truth = len(pd.unique(image_ids[not_in_gt]))
    # TF drops detections without area (xmin >= xmax or ymin >= ymax) before matching.
    with np.errstate(invalid="ignore"):
        has_area = (det_boxes[:, 0] < det_boxes[:, 2]) & (det_boxes[:, 1] < det_boxes[:, 3])
    report.ignored_degenerate_box = int((~has_area & ~not_in_gt).sum())
    kept = ~not_in_gt & has_area
    tables = gt.matching_tables()
    # ``rows`` index the input; every later array is one entry per element of ``rows``.
    if expand_predictions:
        if gt.hierarchy is None:
            raise ValueError("expand_predictions needs gt.hierarchy")
        rows = np.flatnonzero(kept)
        copies, classes = expand_rows(det_class[rows], gt.hierarchy.expand_to_ancestors)
        report.added_by_expansion = len(copies) - len(rows)
        rows = rows[copies]
        pair = tables.pair_of(det_image[rows], classes)
        num_candidates = len(rows)
    else:  # one pass over the input, without copies; what is not kept has no pair
        pair = tables.pair_of(det_image, det_class, kept)
        rows, classes = None, det_class
        num_candidates = int(np.count_nonzero(kept))
    verified = np.flatnonzero(pair >= 0)
    report.ignored_class_not_verified = num_candidates - len(verified)
    rows = verified if rows is None else rows[verified]
    classes, pair = classes[verified], pair[verified]
    # One order serves the matching and the AP: by class, then highest score first; stable,
    # so within an (image, class) pair ties keep the input order.
    order = _order_by_class_then_score(classes, det_scores[rows], num_classes)
    rows, classes, pair = rows[order], classes[order], pair[order]
    det_scores, det_boxes = det_scores[rows], det_boxes[rows]

    # Stage 1: non-group-of boxes by IoU; a detection whose best box is taken is an FP.
    best_box, best_iou = _best_overlap(
        det_boxes, tables.plain_start[pair], tables.plain_count[pair], tables.plain_boxes, "iou"
    )
    is_tp = np.zeros(len(rows), dtype=bool)
    candidates = np.flatnonzero(best_iou >= iou_threshold)
    _, first = np.unique(best_box[candidates], return_index=True)
    is_tp[candidates[first]] = True

    # Stage 2: the rest against group-of boxes by IoA; one entry per group-of box.
    rest = np.flatnonzero(~is_tp)
    rest_pair = pair[rest]
    best_group, best_ioa = _best_overlap(
        det_boxes[rest],
        tables.group_start[rest_pair],
        tables.group_count[rest_pair],
        tables.group_boxes,
        "ioa",
    )
    in_group = np.zeros(len(rows), dtype=bool)
    absorbed = rest[best_ioa >= iou_threshold]
    in_group[absorbed] = True
    credited_boxes, first = np.unique(best_group[best_ioa >= iou_threshold], return_index=True)
    # The entry of a group-of box takes the place of its first (highest-scoring) detection,
    # so the entries stay in (class, score) order.
    group_entry = absorbed[first]
    # TF keeps a group-of entry only for a positive score and a positive weight.
    if group_of_weight > 0:
        credited = det_scores[group_entry] > 0
    else:
        credited = np.zeros(len(first), dtype=bool)
    credited_classes = tables.group_classes[credited_boxes[credited]]
    report.ignored_in_group_of = int(len(absorbed) - credited.sum())

    scored = ~in_group
    entry_weight = is_tp.astype(np.float64)
    entry_weight[group_entry[credited]] = float(group_of_weight)
    is_entry = scored.copy()
    is_entry[group_entry[credited]] = True

    records = None
    if keep_records:
        status = np.where(is_tp, records_module.TRUE_POSITIVE, records_module.FALSE_POSITIVE)
        status[in_group] = records_module.IGNORED
        status[group_entry[credited]] = records_module.GROUP_OF_ENTRY
        # the (image, class) pairs with boxes and their counts, as the matching tables hold them
        with_boxes = np.flatnonzero(tables.plain_count + tables.group_count)
        gt_image, gt_class = np.divmod(tables.verified_keys[with_boxes], num_classes)
        records = records_module.ImageRecords(
            mids=list(gt.mids),
            image_ids=np.asarray(gt.image_ids),
            det_image=det_image[rows],
            det_class=classes,
            det_score=det_scores,
            det_status=status.astype(np.int8),
            gt_image=gt_image,
            gt_class=gt_class,
            gt_boxes=tables.plain_count[with_boxes],
            gt_group_of=tables.group_count[with_boxes],
            group_of_weight=float(group_of_weight),
        )
    num_instances = gt.num_instances(group_of_weight)
    ap = average_precision_per_class(
        classes[is_entry],
        det_scores[is_entry],
        entry_weight[is_entry],
        num_instances,
        num_classes,
    )
    return ChallengeResult(
        mids=list(gt.mids),
        ap=ap,
        num_gt_boxes=np.bincount(gt.box_class[~gt.box_is_group_of], minlength=num_classes),
        num_group_of_boxes=np.bincount(tables.group_classes, minlength=num_classes),
        num_detections=np.bincount(classes, minlength=num_classes),
        num_true_positives=np.bincount(classes[is_tp], minlength=num_classes)
        + np.bincount(credited_classes, minlength=num_classes),
        num_false_positives=np.bincount(classes[scored & ~is_tp], minlength=num_classes),
        report=report,
        group_of_weight=float(group_of_weight),
        iou_threshold=float(iou_threshold),
        image_records=records,
    )


def expand_rows(
    keys: np.ndarray, expand_unique: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Expand many rows whose expansion depends only on an integer key (e.g. the class).

    ``expand_unique(unique_keys) -> (source_rows, classes)`` expands the distinct keys (a
    ``Hierarchy.expand_*`` method); the result is ``(source_rows, classes)`` for all rows,
    in input order, each row's own entry first. Costs memory per distinct key, not per row.
    """
    keys = np.asarray(keys, dtype=np.int64)
    unique, inverse = np.unique(keys, return_inverse=True)
    unique_rows, unique_classes = expand_unique(unique)
    counts = np.bincount(unique_rows, minlength=len(unique))
    offsets = np.cumsum(counts) - counts
    per_row = counts[inverse]
    rows = np.repeat(np.arange(len(keys)), per_row)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    return rows, np.asarray(unique_classes, dtype=np.int64)[offsets[inverse[rows]] + within]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of integers by a sort (numpy's hash-based unique is slower here)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _order_by_class_then_score(
    classes: np.ndarray, scores: np.ndarray, num_classes: int
) -> np.ndarray:
    """Stable order by class, then descending score: two stable sorts, the second one a
    radix sort on 16-bit class indices (far cheaper than a two-key ``lexsort``)."""
    by_score = np.argsort(-scores, kind="stable")
    class_type = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int64
    return by_score[np.argsort(classes[by_score].astype(class_type), kind="stable")]


def _best_overlap(
    det_boxes: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    gt_boxes: np.ndarray,
    kind: str,
) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the box of ``gt_boxes[starts[i] : starts[i] + counts[i]]`` with
    the highest overlap (the first on ties).

    Returns (index into ``gt_boxes`` or -1, overlap or -1).
    """
    overlap_fn = box_iou_paired if kind == "iou" else box_ioa_paired
    best_box = np.full(len(det_boxes), -1, dtype=np.int64)
    best_overlap = np.full(len(det_boxes), -1.0)
    # Most detections have a single candidate box: no pairs to expand.
    single = np.flatnonzero(counts == 1)
    best_box[single] = starts[single]
    best_overlap[single] = overlap_fn(det_boxes[single], gt_boxes[starts[single]])
    with_gt = np.flatnonzero(counts > 1)
    if len(with_gt) == 0:
        return best_box, best_overlap
    # Chunks of detections with a bounded number of pairs each.
    pair_end = np.cumsum(counts[with_gt])
    chunk_edges = np.searchsorted(
        pair_end, np.arange(_PAIRS_PER_CHUNK, pair_end[-1], _PAIRS_PER_CHUNK), side="left"
    )
    for chunk in np.split(with_gt, chunk_edges + 1):
        if len(chunk) == 0:
            continue
        chunk_counts = counts[chunk]
        chunk_offsets = np.cumsum(chunk_counts) - chunk_counts
        pair_det = np.repeat(np.arange(len(chunk)), chunk_counts)
        pair_gt = (
            np.repeat(starts[chunk], chunk_counts)
            + np.arange(len(pair_det))
            - np.repeat(chunk_offsets, chunk_counts)
        )
        overlap = overlap_fn(det_boxes[chunk[pair_det]], gt_boxes[pair_gt])
        segment_max = np.maximum.reduceat(overlap, chunk_offsets)
        at_max = np.flatnonzero(overlap == np.repeat(segment_max, chunk_counts))
        first = at_max[np.r_[True, pair_det[at_max][1:] != pair_det[at_max][:-1]]]
        best_box[chunk] = pair_gt[first]
        best_overlap[chunk] = segment_max
    return best_box, best_overlap


def average_precision_per_class(
    classes: np.ndarray,
    scores: np.ndarray,
    tp_weight: np.ndarray,
    num_instances: np.ndarray,
    num_classes: int,
    fp_weight: np.ndarray | None = None,
) -> np.ndarray:
    """AP of each class with instances (NaN for the others); the entries come sorted by
    class, then score. ``fp_weight`` as in :func:`average_precision`."""
    ap = np.full(num_classes, np.nan)
    bounds = np.searchsorted(classes, np.arange(num_classes + 1))
    for k in np.flatnonzero(num_instances > 0):
        lo, hi = bounds[k], bounds[k + 1]
        ap[k] = average_precision(
            scores[lo:hi],
            tp_weight[lo:hi],
            num_instances[k],
            fp_weight=None if fp_weight is None else fp_weight[lo:hi],
        )
    return ap


def average_precision(
    scores: np.ndarray,
    tp_weight: np.ndarray,
    num_instances: float,
    fp_weight: np.ndarray | None = None,
) -> float:
    """All-points (VOC 2010) AP of one class's detections, sorted by descending score.

    ``tp_weight`` is the true-positive weight of each entry; ``fp_weight`` its
    false-positive weight, by default 1 for an entry of no positive weight and 0 otherwise
    (the per-image records pass weighted ones, ``ImageRecords.average_precisions``).
    Entries of equal score form one operating point.
    """
    if len(scores) == 0:
        return 0.0
    cum_tp = np.cumsum(tp_weight)
    cum_fp = np.cumsum(tp_weight <= 0 if fp_weight is None else fp_weight)
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    cum_tp, cum_fp = cum_tp[last_of_tie], cum_fp[last_of_tie]
    precision = np.concatenate([[0.0], cum_tp / (cum_tp + cum_fp), [0.0]])
    recall = np.concatenate([[0.0], cum_tp / num_instances, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))
