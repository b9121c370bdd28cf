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
        "+data.metric=lvis",
    ]
    with pytest.raises(ValueError, match="train.eval_image_records=true: .*data.metric='lvis'"):
        run_training(compose_train(overrides), tmp_path / "run")
    with pytest.raises(ValueError, match="train.eval_image_records='yes'"):
        run_training(
            compose_train(tiny_overrides(tmp_path / "synth") + ["train.eval_image_records=yes"]),
            tmp_path / "run",
        )
