"""experiments/bootstrap.py: the image bootstrap of the diagnosis runs' final metric from the
per-image records of their last two evaluations (paired difference of two runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_evaluation_image_records import evaluate_case, random_case

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import bootstrap  # noqa: E402


def noisy(case: dict, seed: int, spread: float) -> dict:
    """The case with its detection scores perturbed (another run on the same images)."""
    det_images, det_classes, det_scores, det_boxes = case["det"]
    rng = np.random.default_rng(seed)
    scores = np.clip(det_scores + rng.normal(0, spread, len(det_scores)), 0.001, 1.0)
    return {**case, "det": (det_images, det_classes, scores, det_boxes)}


def evaluations(case: dict, seed: int, spread: float) -> list:
    return [evaluate_case(noisy(case, seed + k, spread)) for k in range(2)]


def test_final_metric_is_the_mean_over_classes_of_the_two_evaluations_aps():
    results = evaluations(random_case(0), seed=1, spread=0.1)
    records = [r.image_records for r in results]
    expected = np.nanmean((results[0].ap + results[1].ap) / 2)
    assert bootstrap.final_metric(records) == pytest.approx(expected, abs=1e-15)
    assert bootstrap.final_metric(records, classes=["c1"]) == pytest.approx(
        (results[0].ap[1] + results[1].ap[1]) / 2, abs=1e-15
    )
    with pytest.raises(ValueError, match="not classes of the evaluation"):
        bootstrap.final_metric(records, classes=["c9"])


def test_paired_difference_replicates_and_interval():
    case = random_case(1)
    run = [r.image_records for r in evaluations(case, seed=2, spread=0.05)]
    against = [r.image_records for r in evaluations(case, seed=5, spread=0.3)]
    result = bootstrap.paired_difference(run, against, replicates=200, seed=7)
    assert result.estimate == bootstrap.final_metric(run) - bootstrap.final_metric(against)
    assert result.low <= result.estimate <= result.high or np.isclose(result.low, result.estimate)
    assert len(result.replicates) == 200 and result.low < result.high
    # a replicate is both runs scored on the same resample of the images
    counts = bootstrap.resample_counts(case["num_images"], 200, 7)
    assert (counts.sum(axis=1) == case["num_images"]).all()
    k = 17
    assert result.replicates[k] == bootstrap.final_metric(run, counts[k]) - bootstrap.final_metric(
        against, counts[k]
    )
    again = bootstrap.paired_difference(run, against, replicates=200, seed=7)
    np.testing.assert_array_equal(again.replicates, result.replicates)
    # a run against itself: no difference on any resample
    same = bootstrap.paired_difference(run, run, replicates=50, seed=0)
    assert same.estimate == same.low == same.high == 0.0


def test_runs_on_other_images_are_refused():
    run = [r.image_records for r in evaluations(random_case(0), seed=1, spread=0.1)]
    other = [
        r.image_records for r in evaluations(random_case(0, num_images=10), seed=1, spread=0.1)
    ]
    with pytest.raises(ValueError, match="not on the same validation images"):
        bootstrap.paired_difference(run, other, replicates=10)


def write_run(folder: Path, results: list, earlier_maps=(0.1,)) -> None:
    """A run's results folder: summary.json whose history has an early evaluation without
    records and the two final ones with records."""
    history = [
        {"map": m, "eval_dir": f"eval/main_epoch{i + 1}"} for i, m in enumerate(earlier_maps)
    ]
    history.append({"epoch": len(history) + 1})  # not evaluated
    for result in results:
        tag = f"main_epoch{len(history) + 1}"
        (folder / "eval" / tag).mkdir(parents=True)
        result.image_records.save(folder / "eval" / tag / "image_records.npz")
        history.append({"map": result.map, "eval_dir": f"eval/{tag}"})
    (folder / "summary.json").write_text(json.dumps({"status": "finished", "history": history}))


def test_cli_reads_the_last_two_evaluations_of_each_run(tmp_path, capsys):
    case = random_case(2)
    run, against = evaluations(case, 3, 0.05), evaluations(case, 8, 0.3)
    write_run(tmp_path / "a", run)
    write_run(tmp_path / "b", against)
    records = bootstrap.run_records(tmp_path / "a")
    assert [r.mids for r in records] == [run[0].mids] * 2
    np.testing.assert_array_equal(records[1].average_precisions(), run[1].ap)
    classes = tmp_path / "classes.csv"
    classes.write_text("benchmark,mid\nm0.4,c0\nm0.4,c2\nm0.1,c1\n")
    code = bootstrap.main(
        [str(tmp_path / "a"), str(tmp_path / "b"), "--replicates", "50",
         "--classes", str(classes), "--benchmark", "m0.4"]
    )  # fmt: skip
    assert code == 0
    expected = np.mean([(run[0].ap[k] + run[1].ap[k]) / 2 for k in (0, 2)]) - np.mean(
        [(against[0].ap[k] + against[1].ap[k]) / 2 for k in (0, 2)]
    )
    assert f"{expected * 100:+.2f} [" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="3 evaluations in summary.json.*needs the last 4"):
        bootstrap.main([str(tmp_path / "a"), str(tmp_path / "b"), "--evaluations", "4"])
    (tmp_path / "a" / "eval" / "main_epoch3" / "image_records.npz").unlink()
    with pytest.raises(SystemExit, match="main_epoch3/image_records.npz: no per-image records"):
        bootstrap.main([str(tmp_path / "a"), str(tmp_path / "b")])
