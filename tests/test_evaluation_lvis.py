"""LVIS and COCO metrics through faster-coco-eval (lsdet.evaluation.lvis_metric)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lsdet.evaluate import run_evaluation
from lsdet.evaluation.lvis_metric import (
    cap_detections_per_image,
    evaluate_detections,
    evaluate_from_config,
    load_ground_truth,
    read_detections,
    write_coco_style_outputs,
)

# COCO's 101-point interpolated AP of a few hand-countable cases (recall thresholds 0..1):
# precision 1 up to recall 0.5, then 2/3 up to recall 1 -> (51 * 1 + 50 * 2/3) / 101
AP_HALF_THEN_TWO_THIRDS = (51 + 50 * 2 / 3) / 101
AP_RECALL_HALF = 51 / 101  # precision 1 up to recall 0.5, nothing beyond


def tiny_lvis():
    """3 images of 100 x 100, categories cat (r), dog (c), apple (f); every box exact but one.

    Image 1: cat, apple; dog verified absent; apple not exhaustively boxed.
    Image 2: dog, cat; apple verified absent. Image 3: apple; cat verified absent.
    """
    images = [
        {
            "id": 1,
            "width": 100,
            "height": 100,
            "neg_category_ids": [2],
            "not_exhaustive_category_ids": [3],
        },
        {
            "id": 2,
            "width": 100,
            "height": 100,
            "neg_category_ids": [3],
            "not_exhaustive_category_ids": [],
        },
        {
            "id": 3,
            "width": 100,
            "height": 100,
            "neg_category_ids": [1],
            "not_exhaustive_category_ids": [],
        },
    ]
    boxes = [(1, 1, [10, 10, 20, 20]), (1, 3, [60, 60, 20, 20]), (2, 2, [50, 50, 30, 30]),
             (2, 1, [0, 0, 40, 40]), (3, 3, [10, 10, 50, 50])]  # fmt: skip
    annotations = [
        {"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
         "iscrowd": 0}
        for n, (i, c, b) in enumerate(boxes)
    ]  # fmt: skip
    categories = [
        {"id": 1, "name": "cat", "frequency": "r", "image_count": 5},
        {"id": 2, "name": "dog", "frequency": "c", "image_count": 50},
        {"id": 3, "name": "apple", "frequency": "f", "image_count": 500},
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


# image_id, x, y, w, h, score, category_id
TINY_DETECTIONS = np.array(
    [
        [1, 10, 10, 20, 20, 0.90, 1],  # cat TP
        [3, 5, 5, 10, 10, 0.80, 1],  # cat FP: verified absent from image 3
        [2, 0, 0, 40, 25, 0.70, 1],  # cat, IoU 0.625: TP at IoU 0.5-0.6, FP from 0.65
        [1, 10, 10, 20, 20, 0.95, 2],  # dog FP: verified absent from image 1
        [2, 50, 50, 30, 30, 0.50, 2],  # dog TP
        [3, 10, 10, 50, 50, 0.99, 2],  # dog in image 3: neither boxed nor verified: not evaluated
        [1, 0, 70, 10, 10, 0.65, 3],  # apple unmatched in image 1: not exhaustive: ignored
        [3, 10, 10, 50, 50, 0.60, 3],  # apple TP (the apple of image 1 is missed)
    ]
)

CAT_AP = (3 * AP_HALF_THEN_TWO_THIRDS + 7 * AP_RECALL_HALF) / 10
DOG_AP = 0.5
APPLE_AP = AP_RECALL_HALF


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "lvis_v1_val.json"
    path.write_text(json.dumps(tiny_lvis()))
    return path


def test_lvis_ap_matches_the_hand_count(tiny_file):
    result = evaluate_detections(load_ground_truth(tiny_file), TINY_DETECTIONS, style="lvis")
    summary = result.summary
    assert summary["APr"] == pytest.approx(CAT_AP, abs=1e-6)
    assert summary["APc"] == pytest.approx(DOG_AP, abs=1e-6)
    assert summary["APf"] == pytest.approx(APPLE_AP, abs=1e-6)
    assert summary["AP"] == pytest.approx((CAT_AP + DOG_AP + APPLE_AP) / 3, abs=1e-6)
    assert summary["AP50"] == pytest.approx(
        (AP_HALF_THEN_TWO_THIRDS + DOG_AP + APPLE_AP) / 3, abs=1e-6
    )
    assert summary["AP75"] == pytest.approx((AP_RECALL_HALF + DOG_AP + APPLE_AP) / 3, abs=1e-6)
    per_class = result.per_class.set_index("name")
    np.testing.assert_allclose(per_class["ap"][["cat", "dog", "apple"]], [CAT_AP, 0.5, APPLE_AP])
    assert per_class.loc["cat", "ap50"] == pytest.approx(AP_HALF_THEN_TWO_THIRDS)
    assert per_class["frequency"].tolist() == ["r", "c", "f"]


def test_wrapper_equals_the_library_called_directly(tiny_file):
    """The library's own entry point (COCO, loadRes, COCOeval_faster with lvis_style)."""
    from faster_coco_eval import COCO, COCOeval_faster

    ground_truth = COCO(str(tiny_file))
    results = [
        {"image_id": int(r[0]), "bbox": r[1:5].tolist(), "score": r[5], "category_id": int(r[6])}
        for r in TINY_DETECTIONS
    ]
    evaluator = COCOeval_faster(ground_truth, ground_truth.loadRes(results), "bbox",
                                lvis_style=True)  # fmt: skip
    evaluator.params.maxDets = [300]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    direct = evaluator.stats_as_dict

    wrapped = evaluate_detections(load_ground_truth(tiny_file), TINY_DETECTIONS, style="lvis")
    for ours, theirs in [("AP", "AP_all"), ("AP50", "AP_50"), ("AP75", "AP_75"),
                         ("APr", "APr"), ("APc", "APc"), ("APf", "APf")]:  # fmt: skip
        assert wrapped.summary[ours] == pytest.approx(direct[theirs], abs=1e-9)
    # the per-category mean is the library's AP
    assert wrapped.per_class["ap"].mean() == pytest.approx(direct["AP_all"], abs=1e-9)


def test_lvis_cap_keeps_the_best_detections_of_each_image(tiny_file):
    capped = cap_detections_per_image(TINY_DETECTIONS, 1)
    assert sorted(capped[:, 5].tolist()) == [0.7, 0.95, 0.99]
    result = evaluate_detections(
        load_ground_truth(tiny_file), TINY_DETECTIONS, style="lvis", max_detections_per_image=1
    )
    assert result.num_detections_over_cap == 5
    # only the cat of image 2 is left to match (IoU 0.625): recall 1/2 at IoU 0.5-0.6
    assert result.summary["APr"] == pytest.approx(3 * AP_RECALL_HALF / 10, abs=1e-6)
    assert result.summary["APc"] == pytest.approx(0.0)


def test_coco_ignores_detections_on_crowd_regions(tmp_path):
    data = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400,
             "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [40, 40, 60, 60], "area": 3600,
             "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }  # fmt: skip
    detections = np.array([[1, 50, 50, 20, 20, 0.9, 1], [1, 0, 0, 20, 20, 0.8, 1]])
    path = tmp_path / "crowd.json"
    path.write_text(json.dumps(data))
    result = evaluate_detections(load_ground_truth(path), detections, style="coco")
    assert result.summary["AP"] == pytest.approx(1.0)
    data["annotations"][1]["iscrowd"] = 0  # now a missed person and a false positive
    path.write_text(json.dumps(data))
    result = evaluate_detections(load_ground_truth(path), detections, style="coco")
    assert result.summary["AP"] < 0.6


def test_predictions_csv_and_results_json_give_the_same_ap(tiny_file, tmp_path):
    ground_truth = load_ground_truth(tiny_file)
    rows = TINY_DETECTIONS
    csv = pd.DataFrame(
        {
            "ImageID": rows[:, 0].astype(int).astype(str),
            "LabelName": rows[:, 6].astype(int).astype(str),
            "Score": rows[:, 5],
            "XMin": rows[:, 1] / 100,
            "XMax": (rows[:, 1] + rows[:, 3]) / 100,
            "YMin": rows[:, 2] / 100,
            "YMax": (rows[:, 2] + rows[:, 4]) / 100,
        }
    )
    csv.to_csv(tmp_path / "predictions.csv", index=False)
    results = [
        {"image_id": int(r[0]), "bbox": r[1:5].tolist(), "score": r[5], "category_id": int(r[6])}
        for r in rows
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    from_csv = read_detections(tmp_path / "predictions.csv", ground_truth)
    from_json = read_detections(tmp_path / "results.json", ground_truth)
    order = np.lexsort((from_csv[:, 5],))
    np.testing.assert_allclose(from_csv[order], from_json[np.lexsort((from_json[:, 5],))])
    bad = results + [{"image_id": 99, "bbox": [0, 0, 1, 1], "score": 0.1, "category_id": 1}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad.json, detection 8: image_id not in"):
        read_detections(tmp_path / "bad.json", ground_truth)


def test_evaluate_from_config_writes_the_evaluation_files(tiny_file, tmp_path):
    results = [
        {"image_id": int(r[0]), "bbox": r[1:5].tolist(), "score": r[5], "category_id": int(r[6])}
        for r in TINY_DETECTIONS
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    cfg = OmegaConf.create(
        {
            "data": {
                "metric": "lvis",
                "strict": True,
                "cache_dir": str(tmp_path / "cache"),
                "train": {"annotation_json": str(tmp_path / "absent_train.json")},
                "val": {"annotation_json": str(tiny_file)},
            },
            "predictions_csv": str(tmp_path / "results.json"),
            "plot": True,
            "output_dir": str(tmp_path / "eval"),
        }
    )
    result, paths = evaluate_from_config(cfg)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["metric"] == "lvis" and metrics["APr"] == pytest.approx(CAT_AP, abs=1e-6)
    assert metrics["train_images_from"] == "image_count of the evaluated file"
    assert [b["bucket"] for b in metrics["frequency_buckets"]] == ["rare", "common", "frequent"]
    table = pd.read_csv(paths["per_class"])
    assert table["bucket"].tolist() == ["rare", "common", "frequent"]
    assert table["train_images"].tolist() == [5, 50, 500]
    assert paths["plot"].stat().st_size > 0

    # with a training file, the training images come from its annotation index
    train = tiny_lvis()
    train["annotations"].append(
        {"id": 9, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
    )
    (tmp_path / "absent_train.json").write_text(json.dumps(train))
    _, paths = evaluate_from_config(cfg)
    assert pd.read_csv(paths["per_class"])["train_images"].tolist() == [3, 1, 2]


@pytest.mark.parametrize(
    ("name", "train_file"),
    [("lvis", "lvis_v1_train.json"), ("coco", "annotations/instances_train2017.json")],
)
def test_data_configs_name_the_expected_files(name, train_file):
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(version_base=None, config_dir=str(conf)):
        cfg = compose("evaluate", overrides=[f"data={name}", "data.root=/data/x"])
    assert cfg.data.metric == name
    assert cfg.data.train.annotation_json == f"/data/x/{train_file}"
    assert cfg.data.val.annotation_json.startswith("/data/x/")
    assert cfg.hierarchy_json is None  # the Open Images keys resolve, to null


def test_lsdet_evaluate_picks_the_metric_of_the_data_config(tiny_file, tmp_path):
    """data=lvis: `python -m lsdet.evaluate` scores with the LVIS metric (data.metric)."""
    results = [
        {"image_id": int(r[0]), "bbox": r[1:5].tolist(), "score": r[5], "category_id": int(r[6])}
        for r in TINY_DETECTIONS
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    conf = Path(__file__).resolve().parents[1] / "conf"
    overrides = [
        "data=lvis",
        f"data.root={tmp_path}",  # holds lvis_v1_val.json (tiny_file); no training file
        f"data.cache_dir={tmp_path / 'cache'}",
        f"predictions_csv={tmp_path / 'results.json'}",
        f"output_dir={tmp_path / 'eval'}",
        "plot=false",
    ]
    with initialize_config_dir(version_base=None, config_dir=str(conf)):
        cfg = compose("evaluate", overrides=overrides)
        refused = compose("evaluate", overrides=[*overrides, "checkpoint=last.pt"])
        unknown = compose("evaluate", overrides=[*overrides, "data.metric=voc"])
    result, paths = run_evaluation(cfg)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["metric"] == "lvis" and metrics["APr"] == pytest.approx(CAT_AP, abs=1e-6)
    assert result.map == pytest.approx((CAT_AP + DOG_AP + APPLE_AP) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="data.metric=lvis: checkpoint="):
        run_evaluation(refused)
    with pytest.raises(ValueError, match="data.metric='voc'"):
        run_evaluation(unknown)


def test_lvis_metrics_json_is_strict_json(tiny_file, tmp_path):
    result = evaluate_detections(load_ground_truth(tiny_file), TINY_DETECTIONS, style="lvis")
    paths = write_coco_style_outputs(
        result, tmp_path / "out", plot=False, extra={"ratio": float("inf"), "gap": float("nan")}
    )

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    metrics = json.loads(paths["metrics"].read_text(), parse_constant=refuse)
    assert metrics["ratio"] is None and metrics["gap"] is None
    assert metrics["AP"] == pytest.approx((CAT_AP + DOG_AP + APPLE_AP) / 3, abs=1e-6)
