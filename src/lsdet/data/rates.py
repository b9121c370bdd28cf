"""Concurrent rates: how often an object of class i is (also) labelled j (paper, sec. 3.1).

``r_ij`` is estimated from the training boxes (the matrix R of the loss, eq. 3, and of the
inference scores, eq. 5): among the ``n_i`` boxes of class ``i``, the number ``c_ij`` that
coincide (IoU >= ``iou_threshold``, default 0.9) with a box of class ``j`` in the same image,
shrunk towards 0 by a prior count ``k`` (``prior_count``, default 8)::

    r_ij = c_ij / (n_i + k)

It is computed between leaf classes (boxes of parent classes take no part); rates below
``floor`` (default 0.01) are then set to 0, the diagonal is 0, and the background row and
column (index 0 of the ``[C+1, C+1]`` matrix) are 0.

Why shrink. A rare class's plain fraction ``c_ij / n_i`` comes from one or two boxes: one
box of a two-box class coinciding with another class gives r = 0.5, and eq. 3 then stops
penalising that class on half of the rare class's objects. ``k`` is a pseudo-count of boxes
that coincide with nothing (a Beta(0, k) prior on r_ij), so a rate needs evidence: with the
default k = 8, a pair seen on 1 of a class's 2 boxes gets 1 / 10 = 0.1, while a frequent
class keeps its rate (300 of 1,000 boxes: 300 / 1008 = 0.298). k = 8 is the smallest prior
with r <= 0.1 for the 1-of-2 case; any k up to 34 keeps the 300-of-1,000 rate within 0.01 of
0.3. ``prior_count=0`` gives the unshrunk fraction.

Hierarchy pairs. The paper says ``r_ij`` "is set 0 when i is leaf node with j as its
parent, and vice versa", yet also that at inference "scores of categories in a hierarchy
... would not suppress each other", which needs ``1 - r_ij = 0`` for those pairs. This
project sets every ancestor/descendant pair to ``hierarchy_rate``, default 1.0 (a class
never suppresses its ancestors or descendants); ``hierarchy_rate=0.0`` is the paper's
literal reading.

The coincidence count is vectorised: boxes are sorted by (image, xmin), the within-image
pairs that can reach the IoU threshold (a sweep window on xmin) are enumerated with array
arithmetic in chunks, and pairs of different classes are scored with
:func:`lsdet.boxes.box_iou_paired`; there is no Python loop per image or box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lsdet.boxes import box_iou_paired
from lsdet.data.formats import read_bbox_csv
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import AnnotationIndex

# Pairs scored at once: bounds the temporaries (about 0.2 GB); larger chunks are no faster.
DEFAULT_PAIRS_PER_CHUNK = 2_000_000
# The prior count k of r_ij = c_ij / (n_i + k); see the module docstring for the choice.
DEFAULT_PRIOR_COUNT = 8.0


@dataclass
class CoincidenceCounts:
    """Raw counts behind the rates, over the hierarchy's classes (``[C]`` / ``[C, C]``).

    ``box_counts[i]``: boxes of class i that took part. ``pair_counts[i, j]``: of those,
    the boxes that coincide with at least one box of class j in the same image.
    """

    box_counts: np.ndarray
    pair_counts: np.ndarray
    num_pairs_scored: int  # candidate pairs inside the sweep windows
    # Every (box, class) coincidence once: input row of the box, class it coincides with.
    coinciding_rows: np.ndarray
    coinciding_classes: np.ndarray

    def raw_rates(self, prior_count: float = 0.0) -> np.ndarray:
        """``pair_counts[i, j] / (box_counts[i] + prior_count)``, ``[C, C]`` (0 for classes
        without boxes); ``prior_count`` 0 gives the plain fractions."""
        if not (np.isfinite(prior_count) and prior_count >= 0):
            raise ValueError(f"prior_count must be a finite number >= 0, got {prior_count}")
        denominator = np.maximum(self.box_counts + float(prior_count), 1e-12)[:, None]
        return (self.pair_counts / denominator).astype(np.float64)


def _within_image_pairs(partners: np.ndarray, first: int, last: int):
    """All pairs (p, q), p < q, of rows ``first..last-1`` with the rows after them in the same
    image; ``partners[p]`` is the number of rows after p in p's image (rows sorted by image)."""
    rows = np.arange(first, last, dtype=np.int64)
    counts = partners[first:last]
    p = np.repeat(rows, counts)
    run_start = np.repeat(np.cumsum(counts) - counts, counts)
    q = p + 1 + (np.arange(len(p), dtype=np.int64) - run_start)
    return p, q


def count_coincidences(
    image_codes: np.ndarray,
    class_idx: np.ndarray,
    boxes: np.ndarray,
    num_classes: int,
    *,
    iou_threshold: float = 0.9,
    pairs_per_chunk: int = DEFAULT_PAIRS_PER_CHUNK,
    progress: bool = True,
) -> CoincidenceCounts:
    """Counts, per ordered class pair (i, j), the boxes of i that coincide with a box of j.

    ``image_codes`` [N] (any image key: integers or strings), ``class_idx`` [N] in
    ``0..num_classes-1``, ``boxes`` [N, 4] (xmin, ymin, xmax, ymax). Pairs of the same class
    are not counted.
    """
    image_codes = np.asarray(image_codes)
    class_idx = np.asarray(class_idx, dtype=np.int64)
    boxes = np.asarray(boxes)
    if not (len(image_codes) == len(class_idx) == len(boxes)):
        raise ValueError(
            f"image_codes, class_idx and boxes differ in length: "
            f"{len(image_codes)}, {len(class_idx)}, {len(boxes)}"
        )
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    if len(class_idx) and (class_idx.min() < 0 or class_idx.max() >= num_classes):
        raise ValueError(f"class indices must lie in 0..{num_classes - 1}")
    box_counts = np.bincount(class_idx, minlength=num_classes).astype(np.int64)
    pair_counts = np.zeros(num_classes * num_classes, dtype=np.int64)
    num_rows = len(class_idx)
    if num_rows == 0:
        empty = np.zeros(0, dtype=np.int64)
        return CoincidenceCounts(
            box_counts, pair_counts.reshape(num_classes, num_classes), 0, empty, empty
        )

    # Sort by (image, xmin). A pair with IoU >= tau has |xmin_p - xmin_q| <= (1 - tau) *
    # max(width_p, width_q): IoU >= tau gives intersection >= tau * area_p, so the overlap
    # width is >= tau * width_p, and xmin_q - xmin_p <= width_p - overlap width. So each box
    # is only paired with the boxes after it whose xmin lies within (1 - tau) * (widest box
    # of the image) of its own: a sweep window, found with one searchsorted.
    _, image_rank = np.unique(image_codes, return_inverse=True)
    image_rank = image_rank.reshape(-1).astype(np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    xmin = boxes[:, 0] - boxes[:, 0].min()
    widths = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None)
    span = xmin.max() + widths.max() + 1.0  # keys of different images stay apart
    sort_key = image_rank * span + xmin
    order = np.argsort(sort_key, kind="stable")
    sort_key = sort_key[order]
    labels = class_idx[order]
    boxes = boxes[order]
    image_rank = image_rank[order]
    widths = widths[order]
    starts = np.flatnonzero(np.r_[True, image_rank[1:] != image_rank[:-1]])
    widest = np.maximum.reduceat(widths, starts)
    window = np.repeat((1.0 - iou_threshold) * widest, np.diff(np.r_[starts, num_rows]))
    slack = 1e-9 * span + 8 * np.spacing(sort_key[-1])  # rounding of the keys
    window_end = np.searchsorted(sort_key, sort_key + window + slack, side="right")
    partners = np.maximum(window_end - np.arange(num_rows) - 1, 0)
    cumulative = np.cumsum(partners)

    found_keys = []  # (box row, coinciding class) of every coincidence found
    num_pairs = 0
    first = 0
    bar = tqdm(
        total=int(cumulative[-1]), desc="candidate box pairs", unit="pair", disable=not progress
    )
    while first < num_rows:
        # Rows first..last-1 hold about pairs_per_chunk pairs (at least one row).
        done = cumulative[first - 1] if first else 0
        last = int(np.searchsorted(cumulative, done + pairs_per_chunk, side="right"))
        last = min(max(last, first + 1), num_rows)
        p, q = _within_image_pairs(partners, first, last)
        num_pairs += len(p)
        bar.update(len(p))
        different = labels[p] != labels[q]
        p, q = p[different], q[different]
        hit = box_iou_paired(boxes[p], boxes[q]) >= iou_threshold
        p, q = p[hit], q[hit]
        found_keys.append(p * num_classes + labels[q])
        found_keys.append(q * num_classes + labels[p])
        first = last
    bar.close()
    keys = np.unique(np.concatenate(found_keys))  # a box counts once per coinciding class
    rows, coinciding = np.divmod(keys, num_classes)
    np.add.at(pair_counts, labels[rows] * num_classes + coinciding, 1)
    return CoincidenceCounts(
        box_counts,
        pair_counts.reshape(num_classes, num_classes),
        num_pairs,
        coinciding_rows=order[rows],
        coinciding_classes=coinciding,
    )


def concurrent_rates_from_boxes(
    image_codes: np.ndarray,
    class_idx: np.ndarray,
    boxes: np.ndarray,
    hierarchy: Hierarchy,
    *,
    iou_threshold: float = 0.9,
    floor: float = 0.01,
    hierarchy_rate: float = 1.0,
    prior_count: float = DEFAULT_PRIOR_COUNT,
    progress: bool = True,
) -> np.ndarray:
    """The ``[C+1, C+1]`` float32 rates from boxes already in memory (e.g. the annotation
    index): ``class_idx`` indexes ``hierarchy.mids``. See the module docstring."""
    class_idx = np.asarray(class_idx, dtype=np.int64)
    leaf_rows = hierarchy.leaf_mask[class_idx]
    counts = count_coincidences(
        np.asarray(image_codes)[leaf_rows],
        class_idx[leaf_rows],
        np.asarray(boxes)[leaf_rows],
        hierarchy.num_classes,
        iou_threshold=iou_threshold,
        progress=progress,
    )
    return rates_from_counts(
        counts, hierarchy, floor=floor, hierarchy_rate=hierarchy_rate, prior_count=prior_count
    )


def concurrent_rates_from_index(
    index: AnnotationIndex,
    hierarchy: Hierarchy,
    *,
    iou_threshold: float = 0.9,
    floor: float = 0.01,
    hierarchy_rate: float = 1.0,
    prior_count: float = DEFAULT_PRIOR_COUNT,
    progress: bool = True,
) -> np.ndarray:
    """The ``[C+1, C+1]`` float32 rates from an :class:`AnnotationIndex` built over
    ``hierarchy`` (no second read of the CSV)."""
    if list(index.mids) != list(hierarchy.mids):
        raise ValueError(
            f"the annotation index {index.directory} was built over other classes than the "
            f"hierarchy ({index.num_classes} vs {hierarchy.num_classes})"
        )
    image_codes = np.repeat(np.arange(index.num_images), index.num_boxes_per_image())
    return concurrent_rates_from_boxes(
        image_codes,
        np.asarray(index.class_ids),
        np.asarray(index.boxes),
        hierarchy,
        iou_threshold=iou_threshold,
        floor=floor,
        hierarchy_rate=hierarchy_rate,
        prior_count=prior_count,
        progress=progress,
    )


def rates_from_counts(
    counts: CoincidenceCounts,
    hierarchy: Hierarchy,
    *,
    floor: float,
    hierarchy_rate: float,
    prior_count: float = DEFAULT_PRIOR_COUNT,
) -> np.ndarray:
    """Shrunk rates ``c_ij / (n_i + prior_count)``, then the floor, the hierarchy pairs, the
    zero diagonal and the background row/column: ``[C+1, C+1]``."""
    if not 0.0 <= hierarchy_rate <= 1.0:
        raise ValueError(f"hierarchy_rate must lie in [0, 1], got {hierarchy_rate}")
    rates = counts.raw_rates(prior_count)
    rates[rates < floor] = 0.0
    related = hierarchy.ancestors | hierarchy.descendants
    rates[related] = hierarchy_rate
    np.fill_diagonal(rates, 0.0)
    full = np.zeros((hierarchy.num_classes + 1,) * 2, dtype=np.float32)
    full[1:, 1:] = rates
    return full


def estimate_concurrent_rates(
    bbox_csv: str | Path,
    hierarchy_json: str | Path,
    *,
    iou_threshold: float = 0.9,
    floor: float = 0.01,
    hierarchy_rate: float = 1.0,
    prior_count: float = DEFAULT_PRIOR_COUNT,
    subset_mids: list[str] | None = None,
    strict: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Concurrent rates from a training bbox CSV: ``(rates float32 [C+1, C+1], mids)``.

    ``mids`` are the hierarchy's classes (``subset_mids`` selects e.g. the 500 Challenge
    classes) in column order 1..C; row/column 0 is the background. Boxes of classes outside
    the hierarchy are an error (``strict``) or skipped and reported by the reader.

    Ancestor/descendant pairs get ``hierarchy_rate`` (default 1.0: a class never suppresses
    its ancestors or descendants; 0.0 is the paper's literal wording); ``prior_count`` shrinks
    the rates of classes with few boxes. See the module docs.
    """
    hierarchy = Hierarchy.from_json(hierarchy_json, subset_mids=subset_mids)
    table = read_bbox_csv(bbox_csv, known_mids=hierarchy.mids, strict=strict)
    rates = concurrent_rates_from_boxes(
        table.image_codes,
        table.label_codes,
        table.boxes,
        hierarchy,
        iou_threshold=iou_threshold,
        floor=floor,
        hierarchy_rate=hierarchy_rate,
        prior_count=prior_count,
        progress=progress,
    )
    return rates, list(hierarchy.mids)
