"""A random Open Images Challenge case (ground truth and detections) shared by the metric
tests."""

from __future__ import annotations

import numpy as np


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` boxes (x0, y0, x1, y1) inside the unit square."""
    corner = rng.uniform(0, 0.7, size=(n, 2))
    size = rng.uniform(0.05, 0.3, size=(n, 2))
    return np.concatenate([corner, corner + size], axis=1)


def random_ground_truth_and_detections(
    rng: np.random.Generator,
    num_images: int,
    num_classes: int,
    num_gt: int = 60,
    num_det: int = 400,
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Random ground truth (a fifth of the boxes group-of, enlarged; 15 image-level labels)
    and detections without scores, half of them jittered GT boxes so that matches are
    frequent. Returns ``(gt_images, gt_classes, gt_boxes, gt_group, label_images,
    label_classes)`` and ``(det_images, det_classes, det_boxes)``; images and classes are
    indices."""
    gt_images = rng.integers(0, num_images, num_gt)
    gt_classes = rng.integers(0, num_classes, num_gt)
    gt_boxes = random_boxes(rng, num_gt)
    gt_group = rng.random(num_gt) < 0.2
    gt_boxes[gt_group, 2:] = np.minimum(gt_boxes[gt_group, 2:] + 0.3, 1.0)
    label_images = rng.integers(0, num_images, 15)
    label_classes = rng.integers(0, num_classes, 15)
    det_images = rng.integers(0, num_images, num_det)
    det_classes = rng.integers(0, num_classes, num_det)
    det_boxes = random_boxes(rng, num_det)
    source = rng.integers(0, num_gt, num_det // 2)
    det_images[: num_det // 2] = gt_images[source]
    det_classes[: num_det // 2] = gt_classes[source]
    det_boxes[: num_det // 2] = gt_boxes[source] + rng.normal(0, 0.03, (num_det // 2, 4))
    gt = (gt_images, gt_classes, gt_boxes, gt_group, label_images, label_classes)
    return gt, (det_images, det_classes, det_boxes)
