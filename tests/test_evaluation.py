"""The in-memory Open Images Challenge metric: TF's own test numbers and one case per rule."""

import numpy as np
import pytest
from evaluation_helpers import random_ground_truth_and_detections

from lsdet.data import Hierarchy
from lsdet.evaluation import EvaluationGroundTruth, average_precision, evaluate


def tf_challenge_case() -> tuple[EvaluationGroundTruth, dict]:
    """TF's OpenImagesChallengeEvaluatorTest (detection): classes cat, dog, elephant.

    TF boxes are [ymin, xmin, ymax, xmax]; every box here is a square at the same offset on
    both axes, so the order does not matter.
    """
    gt = EvaluationGroundTruth.from_arrays(
        ["cat", "dog", "elephant"],
        box_image_ids=["img1"] * 3 + ["img2"] * 3 + ["img3"],
        box_classes=[0, 2, 0, 0, 0, 2, 1],
        boxes=[
            [0, 0, 1, 1],
            [0, 0, 2, 2],
            [0, 0, 3, 3],
            [10, 10, 11, 11],
            [500, 500, 510, 510],
            [10, 10, 12, 12],
            [0, 0, 1, 1],
        ],
        box_is_group_of=[False, False, True, False, False, True, False],
        label_image_ids=["img1"] * 3,  # img1 verifies cat, dog and elephant
        label_classes=[0, 1, 2],
    )
    detections = dict(
        image_ids=["img1", "img1", "img2", "img2", "img2", "img2", "img3"],
        class_indices=[1, 1, 0, 0, 1, 2, 1],
        scores=[0.7, 0.8, 0.7, 0.8, 0.5, 0.9, 0.5],
        boxes=[
            [10, 10, 11, 11],
            [100, 100, 120, 120],
            [10, 10, 11, 11],
            [100, 100, 120, 120],
            [100, 100, 220, 220],
            [10, 10, 11, 11],
            [0, 0, 1, 1],
        ],
    )
    return gt, detections


def test_reproduces_tf_open_images_challenge_evaluator_numbers():
    gt, detections = tf_challenge_case()
    result = evaluate(gt, **detections, group_of_weight=0.5)
    assert result.per_class_ap["dog"] == pytest.approx(0.3333333333, abs=1e-9)
    assert result.per_class_ap["elephant"] == pytest.approx(0.333333333333, abs=1e-9)
    assert result.per_class_ap["cat"] == pytest.approx(0.142857142857, abs=1e-9)
    assert result.map == pytest.approx(0.269841269, abs=1e-9)
    # The dog detection of img2 is of a class img2 does not verify: ignored.
    assert result.report.ignored_class_not_verified == 1
    np.testing.assert_array_equal(result.num_true_positives, [1, 1, 1])
    np.testing.assert_array_equal(result.num_false_positives, [1, 2, 0])
    np.testing.assert_array_equal(result.num_gt_boxes, [3, 1, 1])
    np.testing.assert_array_equal(result.num_group_of_boxes, [1, 0, 1])


def test_tf_case_with_group_of_weight_one():
    # Same case, weight 1: cat has 4 GT instances (FP 0.8, TP 0.7) -> 0.5 * 1/4;
    # elephant 2 instances, one group-of TP -> 1/2; dog unchanged 1/3.
    gt, detections = tf_challenge_case()
    result = evaluate(gt, **detections)
    assert result.per_class_ap == pytest.approx({"cat": 1 / 8, "dog": 1 / 3, "elephant": 1 / 2})


def one_class_gt(boxes, group_of, images=None, labels=()) -> EvaluationGroundTruth:
    images = images or ["a"] * len(boxes)
    return EvaluationGroundTruth.from_arrays(
        ["c0", "c1"],
        images,
        [0] * len(boxes),
        boxes,
        group_of,
        [image for image, _ in labels],
        [cls for _, cls in labels],
    )


def test_detection_of_unverified_class_is_ignored():
    gt = one_class_gt([[0, 0, 1, 1]], [False])
    # c1 is neither boxed nor labelled in image a: its detection is not a false positive.
    result = evaluate(gt, ["a", "a"], [1, 0], [0.9, 0.5], [[0, 0, 1, 1]] * 2)
    assert result.per_class_ap == {"c0": 1.0}
    assert result.report.ignored_class_not_verified == 1
    assert result.num_detections.tolist() == [1, 0]


def test_several_detections_in_one_group_of_box_count_once():
    gt = one_class_gt([[0, 0, 10, 10]], [True])
    boxes = [[0, 0, 2, 2], [3, 3, 5, 5], [6, 6, 9, 9]]
    result = evaluate(gt, ["a"] * 3, [0] * 3, [0.9, 0.8, 0.7], boxes)
    assert result.per_class_ap == {"c0": 1.0}
    assert result.num_true_positives[0] == 1
    assert result.num_false_positives[0] == 0
    assert result.report.ignored_in_group_of == 2


def test_unmatched_group_of_box_is_a_false_negative():
    gt = one_class_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [True, True])
    result = evaluate(gt, ["a"], [0], [0.9], [[1, 1, 2, 2]])
    assert result.per_class_ap == {"c0": 0.5}  # precision 1 up to recall 1/2


def test_detection_mostly_outside_a_group_of_box_is_a_false_positive():
    gt = one_class_gt([[0, 0, 10, 10]], [True])
    # IoA = 25 / 100 < 0.5
    result = evaluate(gt, ["a"], [0], [0.9], [[5, 5, 15, 15]])
    assert result.per_class_ap == {"c0": 0.0}
    assert result.num_false_positives[0] == 1


def test_detection_of_verified_negative_class_is_a_false_positive():
    # Image a: c0 verified (negative label), no box; image b: one c0 box.
    gt = one_class_gt([[0, 0, 1, 1]], [False], images=["b"], labels=[("a", 0)])
    result = evaluate(gt, ["a", "b"], [0, 0], [0.9, 0.5], [[0, 0, 1, 1]] * 2)
    # FP at 0.9 then TP: precision 1/2 at recall 1.
    assert result.per_class_ap == {"c0": 0.5}
    assert result.num_false_positives[0] == 1


def test_duplicate_on_a_taken_box_is_a_false_positive_not_rematched():
    # Boxes A and B overlap; both detections have A as best box. The second is a false
    # positive even though its IoU with the free box B is above 0.5 (TF's rule).
    gt = one_class_gt([[0, 0, 10, 10], [1, 0, 11, 10]], [False, False])
    detections = [[0, 0, 10, 10], [0, 0, 10.5, 10]]
    result = evaluate(gt, ["a", "a"], [0, 0], [0.9, 0.8], detections)
    assert result.num_true_positives[0] == 1
    assert result.per_class_ap["c0"] == pytest.approx(0.5)


def test_low_iou_detection_in_a_group_of_box_is_absorbed_not_false():
    # A non-group-of box and a group-of box; a detection inside the group-of box with low
    # IoU to the plain box falls through to the group-of stage.
    gt = one_class_gt([[0, 0, 2, 2], [0, 0, 10, 10]], [False, True])
    result = evaluate(gt, ["a", "a"], [0, 0], [0.9, 0.8], [[0, 0, 2, 2], [5, 5, 6, 6]])
    assert result.per_class_ap == {"c0": 1.0}
    assert result.num_true_positives[0] == 2


def test_ties_in_score_do_not_depend_on_order():
    gt = one_class_gt([[0, 0, 1, 1]], [False], images=["a"], labels=[("b", 0)])
    images, scores = ["a", "b"], [0.5, 0.5]
    boxes = [[0, 0, 1, 1]] * 2
    forward = evaluate(gt, images, [0, 0], scores, boxes)
    backward = evaluate(gt, images[::-1], [0, 0], scores, boxes)
    # One operating point: precision 1/2 at recall 1.
    assert forward.per_class_ap["c0"] == backward.per_class_ap["c0"] == pytest.approx(0.5)


def test_ties_within_an_image_match_in_input_order():
    # Two equal-score detections on one box: the first in the input takes it.
    gt = one_class_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [False, True])
    boxes = [[0, 0, 10, 10], [21, 21, 29, 29]]
    # Either way one is a TP on the plain box and the other credits the group-of box.
    result = evaluate(gt, ["a", "a"], [0, 0], [0.5, 0.5], boxes)
    assert result.num_true_positives[0] == 2
    assert result.per_class_ap == {"c0": 1.0}
    gt = one_class_gt([[0, 0, 10, 10]], [False])
    result = evaluate(gt, ["a", "a"], [0, 0], [0.5, 0.5], [[0, 0, 10, 10], [0, 0, 10, 10]])
    assert result.num_true_positives[0] == 1
    assert result.num_false_positives[0] == 1


def test_group_of_entry_needs_a_positive_score_and_weight():
    gt = one_class_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [True, False])
    detections = dict(image_ids=["a"] * 2, class_indices=[0, 0], scores=[0.0, 0.9])
    detections["boxes"] = [[1, 1, 2, 2], [20, 20, 30, 30]]
    # Score 0 inside the group-of box: absorbed, but no entry (TF keeps scores > 0 only).
    result = evaluate(gt, **detections)
    assert result.per_class_ap == {"c0": 0.5}
    # Weight 0: group-of boxes are not instances at all; the plain box alone is found.
    result = evaluate(gt, **detections, group_of_weight=0.0)
    assert result.per_class_ap == {"c0": 1.0}


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    gt = one_class_gt([[0, 0, 1, 1]], [False], labels=[("a", 1)])
    result = evaluate(gt, ["a", "a"], [0, 1], [0.9, 0.9], [[0, 0, 1, 1]] * 2)
    assert result.per_class_ap == {"c0": 1.0}  # c1 verified, detected, but has no GT box
    assert np.isnan(result.ap[1])
    assert result.num_false_positives[1] == 1
    assert result.map == 1.0


def test_class_with_ground_truth_but_no_detection_has_ap_zero():
    gt = EvaluationGroundTruth.from_arrays(
        ["c0", "c1"], ["a", "a"], [0, 1], [[0, 0, 1, 1]] * 2, [False, False]
    )
    result = evaluate(gt, ["a"], [0], [0.9], [[0, 0, 1, 1]])
    assert result.per_class_ap == {"c0": 1.0, "c1": 0.0}
    assert result.map == 0.5


def test_images_outside_the_ground_truth_are_ignored_and_counted():
    gt = one_class_gt([[0, 0, 1, 1]], [False])
    result = evaluate(gt, ["a", "x", "x", "y"], [0] * 4, [0.1, 0.9, 0.9, 0.9], [[0, 0, 1, 1]] * 4)
    assert result.per_class_ap == {"c0": 1.0}
    assert result.report.ignored_image_not_in_ground_truth == 3
    assert result.report.images_not_in_ground_truth == 2


def test_integer_image_ids_index_the_ground_truth():
    gt, detections = tf_challenge_case()
    as_index = gt.image_index_of(detections["image_ids"])
    by_name = evaluate(gt, **detections, group_of_weight=0.5)
    by_index = evaluate(gt, **{**detections, "image_ids": as_index}, group_of_weight=0.5)
    np.testing.assert_array_equal(by_name.ap, by_index.ap)


def test_expand_predictions_counts_detections_for_ancestors():
    hierarchy = Hierarchy(["animal", "cat"], {"root": ["animal"], "animal": ["cat"]}, "root")
    gt = EvaluationGroundTruth.from_arrays(
        hierarchy.mids, ["a", "a"], [0, 1], [[0, 0, 1, 1]] * 2, [False, False], hierarchy=hierarchy
    )
    plain = evaluate(gt, ["a"], [1], [0.9], [[0, 0, 1, 1]])
    expanded = evaluate(gt, ["a"], [1], [0.9], [[0, 0, 1, 1]], expand_predictions=True)
    assert plain.per_class_ap == {"animal": 0.0, "cat": 1.0}
    assert expanded.per_class_ap == {"animal": 1.0, "cat": 1.0}
    assert expanded.report.added_by_expansion == 1


def test_bad_arrays_are_rejected():
    gt, detections = tf_challenge_case()
    with pytest.raises(ValueError, match="same length"):
        evaluate(gt, **{**detections, "scores": [0.5]})
    with pytest.raises(ValueError, match="class_indices"):
        evaluate(gt, **{**detections, "class_indices": [5] * 7})


def test_average_precision_by_hand():
    # TP, FP, TP with 4 instances: precision 1, 1/2, 2/3 at recall 1/4, 1/4, 1/2;
    # envelope 1 on (0, 1/4], 2/3 on (1/4, 1/2]: AP = 1/4 + 2/3 * 1/4.
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([1.0, 0.0, 1.0]), 4)
    assert ap == pytest.approx(0.25 + 2 / 3 * 0.25)
    assert average_precision(np.array([]), np.array([]), 3) == 0.0


def reference_challenge_ap(gt_rows, det_rows, verified, num_classes, weight=1.0, threshold=0.5):
    """A literal, loop-by-loop transcription of TF's per-image evaluation, for checking.

    gt_rows: (image, class, box, group_of); det_rows: (image, class, score, box);
    verified: set of (image, class). Scores must be distinct.
    """

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    def ioa(det, box):
        iw = max(0.0, min(det[2], box[2]) - max(det[0], box[0]))
        ih = max(0.0, min(det[3], box[3]) - max(det[1], box[1]))
        area = (det[2] - det[0]) * (det[3] - det[1])
        return iw * ih / area if area > 0 else 0.0

    # TF's _remove_invalid_boxes: detections need xmin < xmax and ymin < ymax.
    det_rows = [d for d in det_rows if d[3][0] < d[3][2] and d[3][1] < d[3][3]]
    entries = {k: [] for k in range(num_classes)}
    num_gt = np.zeros(num_classes)
    for _, cls, _, group_of in gt_rows:
        num_gt[cls] += weight if group_of else 1
    for image, cls in sorted(verified):
        dets = sorted([d for d in det_rows if d[0] == image and d[1] == cls], key=lambda d: -d[2])
        plain = [g[2] for g in gt_rows if g[0] == image and g[1] == cls and not g[3]]
        groups = [g[2] for g in gt_rows if g[0] == image and g[1] == cls and g[3]]
        tp = [False] * len(dets)
        taken = [False] * len(plain)
        for i, det in enumerate(dets):
            if plain:
                overlaps = [iou(det[3], box) for box in plain]
                best = int(np.argmax(overlaps))
                if overlaps[best] >= threshold and not taken[best]:
                    tp[i], taken[best] = True, True
        in_group = [False] * len(dets)
        group_score = [0.0] * len(groups)
        for i, det in enumerate(dets):
            if groups and not tp[i]:
                overlaps = [ioa(det[3], box) for box in groups]
                best = int(np.argmax(overlaps))
                if overlaps[best] >= threshold:
                    in_group[i] = True
                    group_score[best] = max(group_score[best], det[2])
        for i, det in enumerate(dets):
            if not in_group[i]:
                entries[cls].append((det[2], 1.0 if tp[i] else 0.0))
        for score in group_score:
            if score > 0 and weight > 0:
                entries[cls].append((score, weight))
    aps = np.full(num_classes, np.nan)
    for cls in range(num_classes):
        if num_gt[cls] == 0:
            continue
        rows = sorted(entries[cls], key=lambda e: -e[0])
        aps[cls] = average_precision(
            np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), num_gt[cls]
        )
    return aps


@pytest.mark.parametrize("bitmap_join", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_metric_matches_a_loop_transcription_of_tf(seed, bitmap_join, monkeypatch):
    from lsdet.evaluation import core

    if not bitmap_join:  # the join by binary search, used where a bitmap would be large
        monkeypatch.setattr(core, "_BITMAP_JOIN_MAX_KEYS", 0)
    rng = np.random.default_rng(seed)
    num_images, num_classes = 12, 4
    gt_columns, (det_images, det_classes, det_boxes) = random_ground_truth_and_detections(
        rng, num_images, num_classes
    )
    gt_images, gt_classes, gt_boxes, gt_group, label_images, label_classes = gt_columns
    num_det = len(det_images)
    det_scores = rng.permutation(num_det) / num_det + 0.001  # distinct

    names = np.array([f"img{i}" for i in range(num_images)], dtype=object)
    gt = EvaluationGroundTruth.from_arrays(
        [f"c{k}" for k in range(num_classes)],
        names[gt_images],
        gt_classes,
        gt_boxes,
        gt_group,
        names[label_images],
        label_classes,
    )
    verified = set(zip(gt_images.tolist(), gt_classes.tolist(), strict=True))
    verified |= set(zip(label_images.tolist(), label_classes.tolist(), strict=True))
    gt_rows = list(
        zip(gt_images.tolist(), gt_classes.tolist(), gt_boxes.tolist(), gt_group, strict=True)
    )
    det_rows = list(
        zip(
            det_images.tolist(),
            det_classes.tolist(),
            det_scores.tolist(),
            det_boxes.tolist(),
            strict=True,
        )
    )
    for weight in (1.0, 0.5):
        expected = reference_challenge_ap(gt_rows, det_rows, verified, num_classes, weight)
        result = evaluate(
            gt, names[det_images], det_classes, det_scores, det_boxes, group_of_weight=weight
        )
        np.testing.assert_allclose(result.ap, expected, rtol=1e-12, atol=1e-12)
    assert 0.05 < result.map < 0.95  # the case exercises both hits and misses


def test_detections_without_area_are_dropped_like_tf_does():
    gt = one_class_gt([[0, 0, 1, 1]], [False])
    boxes = [[0.5, 0, 0.5, 1], [0, 0, 1, 1], [0, 0.2, 1, 0.2]]
    result = evaluate(gt, ["a"] * 3, [0] * 3, [0.9, 0.5, 0.8], boxes)
    assert result.per_class_ap == {"c0": 1.0}  # not false positives ahead of the TP
    assert result.report.ignored_degenerate_box == 2
    assert result.num_detections[0] == 1
