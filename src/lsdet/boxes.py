"""Box geometry on numpy arrays, shared by the data layer, the rates and the evaluator.

Boxes are ``[N, 4]`` arrays ``(xmin, ymin, xmax, ymax)`` in any consistent unit
(normalised [0, 1] coordinates or pixels).
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of each box, ``[N]``; degenerate boxes have area 0."""
    boxes = np.asarray(boxes)
    width = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    height = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return width * height


def _pairwise_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union, ``[len(a), len(b)]``; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    inter = _pairwise_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _paired_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    width = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    height = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def box_iou_paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of ``a[i]`` with ``b[i]``, ``[N]`` (``a``, ``b`` both ``[N, 4]``).

    The vectorised evaluator scores millions of (detection, box) pairs this way instead of
    building one pairwise matrix per image.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    inter = _paired_intersection(a, b)
    union = box_area(a) + box_area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_ioa_paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise intersection of ``a[i]`` and ``b[i]`` over the area of ``a[i]``, ``[N]``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    inter = _paired_intersection(a, b)
    area_a = box_area(a)
    return np.divide(inter, area_a, out=np.zeros_like(inter), where=area_a > 0)
