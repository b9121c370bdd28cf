"""`python -m lsdet.evaluate` and its public reporting functions."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from lsdet.data import DataFormatError
from lsdet.evaluate import evaluate_csv
from lsdet.evaluation import EvaluationGroundTruth, evaluate
from lsdet.evaluation.outputs import (
    bucket_summary,
    frequency_buckets,
    per_class_table,
    plot_ap_vs_frequency,
    write_evaluation_outputs,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HIERARCHY = {
    "LabelName": "/m/root",
    "Subcategory": [
        {
            "LabelName": "/m/animal",
            "Subcategory": [{"LabelName": "/m/cat"}, {"LabelName": "/m/dog"}],
        },
        {"LabelName": "/m/elephant"},
    ],
}
BOX_HEADER = "ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf\n"
TRAIN_HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
    "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n"
)


def test_frequency_buckets_cut_the_evaluated_classes_in_thirds():
    counts = np.array([50, 1, 7, 300, 2, 9, 1000])
    evaluated = np.array([True, True, True, True, True, True, False])
    buckets = frequency_buckets(counts, evaluated)
    # Evaluated classes by count: 1 (1), 2 (4), 7 (2), 9 (5), 50 (0), 300 (3).
    assert buckets.tolist() == ["frequent", "rare", "common", "frequent", "rare", "common", ""]


def small_result():
    gt = EvaluationGroundTruth.from_arrays(
        ["a", "b", "c"], ["i", "i", "i"], [0, 1, 2], [[0, 0, 1, 1]] * 3, [False] * 3
    )
    # a found, b found after a false positive, c missed.
    return evaluate(
        gt,
        ["i"] * 3,
        [0, 1, 1],
        [0.9, 0.8, 0.7],
        [[0, 0, 1, 1], [0.5, 0.5, 1, 1], [0, 0, 1, 1]],
    )


def test_per_class_table_and_bucket_summary():
    result = small_result()
    table = per_class_table(result, names={"a": "A"}, train_image_counts=np.array([10, 5, 1]))
    assert table["name"].tolist() == ["A", "", ""]
    assert table["bucket"].tolist() == ["frequent", "common", "rare"]
    np.testing.assert_allclose(table["ap"], [1.0, 0.5, 0.0])
    summary = bucket_summary(table).set_index("bucket")
    assert summary.loc["frequent", "mean_ap"] == 1.0
    assert summary.loc["common", "mean_ap"] == 0.5
    assert summary.loc["rare", "max_train_images"] == 1
    assert summary["num_classes"].tolist() == [1, 1, 1]


def test_plot_writes_a_png(tmp_path):
    result = small_result()
    with_counts = per_class_table(result, train_image_counts=np.array([10, 5, 1]))
    path = plot_ap_vs_frequency(with_counts, tmp_path / "plot.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    path = plot_ap_vs_frequency(per_class_table(result), tmp_path / "no_counts.png")
    assert path.stat().st_size > 1000


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "hierarchy": tmp_path / "hierarchy.json",
        "descriptions": tmp_path / "classes.csv",
        "boxes": tmp_path / "val-boxes.csv",
        "labels": tmp_path / "val-labels.csv",
        "train": tmp_path / "train-boxes.csv",
        "predictions": tmp_path / "predictions.csv",
    }
    paths["hierarchy"].write_text(json.dumps(HIERARCHY))
    paths["descriptions"].write_text(
        "/m/animal,Animal\n/m/cat,Cat\n/m/dog,Dog\n/m/elephant,Elephant\n"
    )
    paths["boxes"].write_text(
        BOX_HEADER + "v1,/m/cat,0,0.5,0,0.5,0\nv1,/m/elephant,0.5,1,0.5,1,0\nv2,/m/dog,0,1,0,1,0\n"
    )
    paths["labels"].write_text("ImageID,Source,LabelName,Confidence\nv2,human,/m/cat,0\n")
    train_rows = [f"t{k},xclick,/m/cat,1,0,1,0,1,0,0,0,0,0\n" for k in range(6)]
    train_rows += [f"t{k},xclick,/m/dog,1,0,1,0,1,0,0,0,0,0\n" for k in range(3)]
    train_rows += ["t0,xclick,/m/elephant,1,0,1,0,1,0,0,0,0,0\n"]
    paths["train"].write_text(TRAIN_HEADER + "".join(train_rows))
    paths["predictions"].write_text(
        "ImageID,LabelName,Score,XMin,XMax,YMin,YMax\n"
        "v1,/m/cat,0.9,0,0.5,0,0.5\n"
        "v2,/m/cat,0.8,0,1,0,1\n"  # cat verified absent in v2: false positive
        "v2,/m/dog,0.7,0,1,0,1\n"
        "v3,/m/dog,0.7,0,1,0,1\n"  # no GT at all for v3: ignored
    )
    return paths


def overrides(files: dict[str, Path], tmp_path: Path) -> list[str]:
    return [
        f"predictions_csv={files['predictions']}",
        f"hierarchy_json={files['hierarchy']}",
        f"class_descriptions_csv={files['descriptions']}",
        f"gt_bbox_csv={files['boxes']}",
        f"image_labels_csv={files['labels']}",
        f"train_bbox_csv={files['train']}",
        "train_image_labels_csv=null",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def test_csv_mode_writes_metrics_table_buckets_and_plot(files, tmp_path):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[*overrides(files, tmp_path), f"output_dir={tmp_path}"])
    result, paths = evaluate_csv(cfg)
    # cat: TP 0.9 then FP 0.8 -> AP 1; dog 1; elephant 0; animal 0 (2 instances, no detection).
    assert result.per_class_ap == pytest.approx(
        {"/m/animal": 0.0, "/m/cat": 1.0, "/m/dog": 1.0, "/m/elephant": 0.0}
    )
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["map"] == pytest.approx(0.5)
    assert metrics["report"]["ignored_image_not_in_ground_truth"] == 1
    table = pd.read_csv(paths["per_class"])
    assert table["name"].tolist() == ["Animal", "Cat", "Dog", "Elephant"]
    # a parent counts the images of its descendants: t0..t5 hold a cat, dog or elephant
    assert table["train_images"].tolist() == [6, 6, 3, 1]
    # sorted by count (stable): Elephant 1, Dog 3, Animal 6, Cat 6; thirds of sizes 2, 1, 1
    assert table["bucket"].tolist() == ["common", "frequent", "rare", "rare"]
    assert [row["bucket"] for row in metrics["frequency_buckets"]] == ["rare", "common", "frequent"]
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_module_runs_from_the_command_line(files, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "lsdet.evaluate", *overrides(files, tmp_path)]
    command += [f"hydra.run.dir={run_dir}", "plot=false"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["map"] == pytest.approx(0.5)
    assert not (run_dir / "ap_vs_frequency.png").exists()


def test_train_image_counts_none_without_a_training_csv(tmp_path):
    from omegaconf import OmegaConf

    from lsdet.data.hierarchy import Hierarchy
    from lsdet.evaluate import train_image_counts

    hierarchy_json = tmp_path / "h.json"
    hierarchy_json.write_text(
        json.dumps({"LabelName": "root", "Subcategory": [{"LabelName": "A"}]})
    )
    hierarchy = Hierarchy.from_json(hierarchy_json)
    assert train_image_counts(OmegaConf.create({"train_bbox_csv": None}), hierarchy) is None
    missing = OmegaConf.create({"train_bbox_csv": str(tmp_path / "absent.csv")})
    assert train_image_counts(missing, hierarchy) is None


def test_a_header_only_ground_truth_csv_is_an_error_naming_it(files, tmp_path):
    files["boxes"].write_text(BOX_HEADER)
    output_dir = tmp_path / "out"
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "evaluate", overrides=[*overrides(files, tmp_path), f"output_dir={output_dir}"]
        )
    with pytest.raises(DataFormatError, match=r"val-boxes\.csv: no ground-truth box.*0 rows read"):
        evaluate_csv(cfg)
    assert not (output_dir / "metrics.json").exists()


def _strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_metrics_json_is_strict_json_with_null_for_undefined_numbers(tmp_path):
    gt = EvaluationGroundTruth.from_arrays(
        ["a", "b", "c"], ["i", "i"], [0, 1], [[0, 0, 1, 1]] * 2, [False] * 2
    )
    result = evaluate(gt, ["i"], [0], [0.9], [[0, 0, 1, 1]])
    # Two evaluated classes cut in thirds: one bucket is empty and has no mean AP.
    paths = write_evaluation_outputs(
        result, tmp_path / "two", train_image_counts=np.array([5, 1, 0]), plot=False
    )
    metrics = _strict_json(paths["metrics"].read_text())
    assert metrics["map"] == pytest.approx(0.5)
    assert [row["mean_ap"] for row in metrics["frequency_buckets"]] == [0.0, 1.0, None]

    labels_only = EvaluationGroundTruth.from_arrays(
        ["a"], [], [], np.zeros((0, 4)), [], label_image_ids=["i"], label_classes=[0]
    )
    no_instances = evaluate(labels_only, ["i"], [0], [0.9], [[0, 0, 1, 1]])
    paths = write_evaluation_outputs(
        no_instances, tmp_path / "none", extra={"ratio": float("inf")}, plot=False
    )
    metrics = _strict_json(paths["metrics"].read_text())
    assert metrics["map"] is None and metrics["num_classes_evaluated"] == 0
    assert metrics["ratio"] is None


def test_the_csv_modes_of_lsdet_evaluate_do_not_import_torch():
    """torch takes seconds to import; only checkpoint= needs it (lsdet.inference)."""
    code = "import sys, lsdet.evaluate; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
