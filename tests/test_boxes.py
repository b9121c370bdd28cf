import numpy as np
import pytest

from lsdet.boxes import box_area, box_ioa_paired, box_iou, box_iou_paired


def test_box_area_clips_degenerate_boxes():
    boxes = np.array([[0, 0, 2, 3], [1, 1, 0, 5]], dtype=np.float32)
    np.testing.assert_allclose(box_area(boxes), [6.0, 0.0])


def test_box_iou_by_hand():
    a = np.array([[0, 0, 2, 2]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    # overlap 1, union 4 + 4 - 1 = 7; identical; disjoint
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 1.0, 0.0]])


def test_box_iou_empty_union_is_zero():
    a = np.zeros((1, 4))
    assert box_iou(a, a)[0, 0] == 0.0


def test_box_ioa_is_relative_to_first_argument():
    small = np.array([[0, 0, 1, 1]])
    large = np.array([[0, 0, 4, 4]])
    assert box_ioa_paired(small, large)[0] == pytest.approx(1.0)
    assert box_ioa_paired(large, small)[0] == pytest.approx(1 / 16)
    assert box_iou(small, large)[0, 0] == pytest.approx(1 / 16)


def test_paired_iou_and_ioa_match_the_pairwise_iou():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1, size=(2, 50, 4))
    a = np.concatenate([corners[0, :, :2], corners[0, :, :2] + corners[0, :, 2:]], axis=1)
    b = np.concatenate([corners[1, :, :2], corners[1, :, :2] + corners[1, :, 2:] / 2], axis=1)
    np.testing.assert_allclose(box_iou_paired(a, b), np.diag(box_iou(a, b)))
    # intersection from the IoU: iou = inter / (area_a + area_b - inter)
    iou = np.diag(box_iou(a, b))
    intersection = iou * (box_area(a) + box_area(b)) / (1 + iou)
    np.testing.assert_allclose(box_ioa_paired(a, b), intersection / box_area(a))


def test_paired_iou_and_ioa_by_hand():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 0, 0]])
    b = np.array([[1, 1, 3, 3], [0, 0, 4, 4], [0, 0, 0, 0]])
    np.testing.assert_allclose(box_iou_paired(a, b), [1 / 7, 1 / 16, 0.0])
    np.testing.assert_allclose(box_ioa_paired(a, b), [1 / 4, 1.0, 0.0])
