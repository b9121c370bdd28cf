"""Per-image records of an evaluation (lsdet.evaluation.image_records): they reproduce the
per-class APs exactly, an image counted w times gives the APs of the evaluation with the image
repeated w times, they survive the .npz round trip, and validation writes them when asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from evaluation_helpers import random_ground_truth_and_detections
from train_helpers import compose_train, tiny_overrides

from lsdet.evaluation import EvaluationGroundTruth, evaluate
from lsdet.evaluation import image_records as records_module
from lsdet.evaluation.image_records import ImageRecords


def random_case(seed: int, num_images: int = 12, num_classes: int = 4):
    """A random ground truth (with group-of boxes and image-level labels) and detections,
    half of them jittered GT boxes, with scores rounded so that some tie."""
    rng = np.random.default_rng(seed)
    gt, (det_images, det_classes, det_boxes) = random_ground_truth_and_detections(
        rng, num_images, num_classes
    )
    det_scores = np.round(rng.random(len(det_images)), 2)  # ties
    return dict(
        num_images=num_images,
        mids=[f"c{k}" for k in range(num_classes)],
        gt=gt,
        det=(det_images, det_classes, det_scores, det_boxes),
    )


def evaluate_case(case, weight=1.0, copies=None, keep_records=True):
    """The case evaluated; ``copies[i]``: how many times image i is in the set (as distinct
    images with the same boxes and detections)."""
    copies = np.ones(case["num_images"], dtype=int) if copies is None else np.asarray(copies)
    gt_images, gt_classes, gt_boxes, gt_group, label_images, label_classes = case["gt"]
    det_images, det_classes, det_scores, det_boxes = case["det"]

    def repeat(images, *columns):
        rows = np.repeat(np.arange(len(images)), copies[images])
        copy = np.arange(len(rows)) - np.repeat(np.cumsum(copies[images]) - copies[images],
                                                copies[images])  # fmt: skip
        names = np.array([f"img{i}#{c}" for i, c in zip(images[rows], copy, strict=True)])
        return (names, *(np.asarray(c)[rows] for c in columns))

    g_names, g_classes, g_boxes, g_group = repeat(gt_images, gt_classes, gt_boxes, gt_group)
    l_names, l_classes = repeat(label_images, label_classes)
    gt = EvaluationGroundTruth.from_arrays(
        case["mids"], g_names, g_classes, g_boxes, g_group, l_names, l_classes
    )
    d_names, d_classes, d_scores, d_boxes = repeat(det_images, det_classes, det_scores, det_boxes)
    return evaluate(
        gt, d_names, d_classes, d_scores, d_boxes, group_of_weight=weight,
        keep_records=keep_records,
    )  # fmt: skip


@pytest.mark.parametrize("weight", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_records_reproduce_the_per_class_ap_exactly(seed, weight):
    result = evaluate_case(random_case(seed), weight)
    records = result.image_records
    np.testing.assert_array_equal(records.average_precisions(), result.ap)  # NaN == NaN here
    assert records.mean_average_precision() == result.map
    assert {
        records_module.TRUE_POSITIVE,
        records_module.FALSE_POSITIVE,
        records_module.IGNORED,
    } <= set(records.det_status.tolist())
    assert 0.05 < result.map < 0.95


@pytest.mark.parametrize("seed", [0, 3])
def test_image_weights_equal_the_evaluation_with_repeated_images(seed):
    case = random_case(seed)
    records = evaluate_case(case).image_records
    rng = np.random.default_rng(seed + 10)
    copies = np.bincount(rng.integers(0, case["num_images"], case["num_images"]),
                         minlength=case["num_images"])  # fmt: skip
    assert (copies == 0).any() and (copies > 1).any()  # a bootstrap resample
    repeated = evaluate_case(case, copies=copies, keep_records=False)
    # the records index the images in the ground truth's order
    order = [int(name[3:].split("#")[0]) for name in records.image_ids]
    weights = copies[order]
    np.testing.assert_allclose(
        records.average_precisions(weights), repeated.ap, rtol=1e-12, atol=1e-12
    )


def test_no_records_unless_asked():
    assert evaluate_case(random_case(0), keep_records=False).image_records is None


def test_records_round_trip_through_npz(tmp_path):
    result = evaluate_case(random_case(1), 0.5)
    path = result.image_records.save(tmp_path / "image_records.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["image_records.npz"]  # no temporary left
    loaded = ImageRecords.load(path)
    assert loaded.mids == result.mids and loaded.group_of_weight == 0.5
    assert list(loaded.image_ids) == list(result.image_records.image_ids)
    np.testing.assert_array_equal(loaded.average_precisions(), result.ap)
    np.savez_compressed(tmp_path / "other.npz", scores=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz: not an image-records file"):
        ImageRecords.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="image_weights has shape"):
        loaded.average_precisions(np.ones(3))


def image_weight_vectors(num_images: int, seed: int) -> list[np.ndarray | None]:
    """None (every image once), bootstrap (multinomial) counts and Poisson weights, sparse
    ones (Poisson 0.3) among them, where a class can lose all its true positives."""
    rng = np.random.default_rng(seed)
    multinomial = [rng.multinomial(num_images, np.full(num_images, 1 / num_images)) for _ in "ab"]
    poisson = [rng.poisson(lam, num_images) for lam in (1.0, 1.0, 0.3)]
    return [None, *multinomial, *poisson]


def assert_same_aps(records: ImageRecords, other: ImageRecords, weights) -> None:
    ap, other_ap = records.average_precisions(weights), other.average_precisions(weights)
    assert np.array_equal(ap, other_ap, equal_nan=True)
    assert ap.tobytes() == other_ap.tobytes()  # bit for bit


@pytest.mark.parametrize("weight", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_trimmed_records_give_the_same_aps_under_any_image_weights(seed, weight):
    case = random_case(seed, num_images=20, num_classes=6)
    records = evaluate_case(case, weight).image_records
    trimmed = records.without_uninformative_detections()
    for weights in image_weight_vectors(records.num_images, seed):
        assert_same_aps(records, trimmed, weights)
    # what was dropped: every ignored detection and false positives below every positive
    status = records.det_status
    positive = (status == records_module.TRUE_POSITIVE) | (status == records_module.GROUP_OF_ENTRY)
    lowest = {k: records.det_score[positive & (records.det_class == k)].min(initial=np.inf)
              for k in range(len(records.mids))}  # fmt: skip
    low_fp = (status == records_module.FALSE_POSITIVE) & (
        records.det_score < np.array([lowest[k] for k in records.det_class])
    )
    assert low_fp.any() and (status == records_module.IGNORED).any()
    assert (
        len(trimmed.det_score)
        == len(status) - low_fp.sum() - (status == records_module.IGNORED).sum()
    )
    assert records_module.IGNORED not in trimmed.det_status
    # the kept ones in the evaluation's order (by class, then descending score)
    assert np.all(np.diff(trimmed.det_class) >= 0)
    same_class = trimmed.det_class[1:] == trimmed.det_class[:-1]
    assert np.all(np.diff(trimmed.det_score)[same_class] <= 0)


def test_a_class_without_true_positives_keeps_no_detection():
    records = ImageRecords(
        mids=["a", "b", "c"],
        image_ids=np.array(["i0", "i1"]),
        det_image=np.array([0, 1, 0, 1, 0]),
        det_class=np.array([0, 0, 1, 1, 1]),
        det_score=np.array([0.9, 0.4, 0.8, 0.5, 0.5]),
        det_status=np.array(
            [
                records_module.TRUE_POSITIVE,
                records_module.FALSE_POSITIVE,
                records_module.FALSE_POSITIVE,
                records_module.FALSE_POSITIVE,
                records_module.IGNORED,
            ],
            dtype=np.int8,
        ),
        gt_image=np.array([0, 1]),
        gt_class=np.array([0, 1]),
        gt_boxes=np.array([1, 2]),
        gt_group_of=np.array([0, 0]),
    )
    trimmed = records.without_uninformative_detections()
    assert trimmed.det_score.tolist() == [0.9]
    assert np.array_equal(trimmed.average_precisions(), [1.0, 0.0, np.nan], equal_nan=True)
    for weights in ([1, 1], [0, 3], [2, 0], [0, 0]):
        assert_same_aps(records, trimmed, np.array(weights))
    # a NaN score has no place below the lowest true positive: nothing but ignored ones go
    records.det_score[1] = np.nan
    assert len(records.without_uninformative_detections().det_score) == 4


@pytest.mark.parametrize("float32_scores", [False, True])
def test_saved_records_give_bit_identical_aps(tmp_path, float32_scores):
    case = random_case(5, num_images=20, num_classes=6)
    if float32_scores:  # a detector's scores: float32 values, stored as float32
        det_images, det_classes, det_scores, det_boxes = case["det"]
        scores = np.random.default_rng(5).random(len(det_scores)).astype(np.float32)
        case["det"] = (det_images, det_classes, scores, det_boxes)
    records = evaluate_case(case, 0.5).image_records
    path = records.save(tmp_path / "image_records.npz")
    with np.load(path) as data:
        assert data["det_score"].dtype == (np.float32 if float32_scores else np.float64)
        assert data["det_image"].dtype == np.uint16
    loaded = ImageRecords.load(path)
    trimmed = records.without_uninformative_detections()
    assert loaded.det_score.dtype == np.float64
    assert loaded.det_score.tobytes() == trimmed.det_score.tobytes()
    assert len(loaded.det_score) < len(records.det_score)
    for weights in image_weight_vectors(records.num_images, 5):
        assert_same_aps(records, loaded, weights)


def test_validation_writes_the_records_beside_metrics_json(tmp_path):
    from lsdet.engine.run_folder import EvaluationFolder
    from lsdet.engine.trainer import run_training

    overrides = [o for o in tiny_overrides(tmp_path / "synth") if o != "train.eval_every=never"]
    overrides += [
        "train.max_iters_per_epoch=1",
        "train.eval_epochs=[2]",
        "train.eval_image_records=true",
        "model.roi.score_thresh=0.0",
    ]
    summary = run_training(compose_train(overrides), tmp_path / "run")
    evaluated = [h for h in summary["history"] if "map" in h]
    assert len(evaluated) == 1
    folder = EvaluationFolder(tmp_path / "run" / evaluated[0]["eval_dir"])
    records = ImageRecords.load(folder.image_records)
    per_class = json.loads(folder.metrics.read_text())["per_class_ap"]
    ap = records.average_precisions()
    assert {mid: ap[records.mids.index(mid)] for mid in per_class} == per_class
    assert len(records.det_score) > 0


def test_image_records_are_refused_for_another_metric(tmp_path):
    from lsdet.engine.trainer import run_training

    overrides = tiny_overrides(tmp_path / "synth") + [
        "train.eval_image_records=true",
        "data=synth_lvis",
    ]
    with pytest.raises(ValueError, match="train.eval_image_records=true: .*data.metric='lvis'"):
        run_training(compose_train(overrides), tmp_path / "run")
    with pytest.raises(ValueError, match="train.eval_image_records='yes'"):
        run_training(
            compose_train(tiny_overrides(tmp_path / "synth") + ["train.eval_image_records=yes"]),
            tmp_path / "run",
        )
