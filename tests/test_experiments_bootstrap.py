"""experiments/bootstrap.py: the image bootstrap of the diagnosis runs' final metric from the
per-image records of their last two evaluations (paired difference of two runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
    assert result.replicates[k] == pytest.approx(
        bootstrap.final_metric(run, counts[k]) - bootstrap.final_metric(against, counts[k]),
        abs=1e-12,
    )
    again = bootstrap.paired_difference(run, against, replicates=200, seed=7)
    np.testing.assert_array_equal(again.replicates, result.replicates)
    # a run against itself: no difference on any resample
    same = bootstrap.paired_difference(run, run, replicates=50, seed=0)
    assert same.estimate == same.low == same.high == 0.0


def test_resample_counts_are_the_draws_of_each_replicate():
    counts = bootstrap.resample_counts(7, 5, seed=3)
    draws = np.random.default_rng(3).integers(0, 7, size=(5, 7))
    expected = np.stack([np.bincount(row, minlength=7) for row in draws])
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("weight", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_replicate_aps_are_the_records_aps_of_each_resample(seed, weight, monkeypatch):
    """All replicates at once equal ImageRecords.average_precisions per replicate: ties,
    group-of entries, ignored detections, images drawn 0 times (a class may then lose its
    instances: NaN, or its detections: AP 0); also when computed in chunks."""
    records = evaluate_case(random_case(seed, num_images=15, num_classes=5), weight).image_records
    counts = bootstrap.resample_counts(records.num_images, 40, seed)
    counts[0] = 1  # the evaluation itself
    counts[1] = 0
    counts[1, :2] = [3, 1]  # two images only
    expected = np.stack([records.average_precisions(w) for w in counts])
    np.testing.assert_allclose(
        bootstrap.replicate_average_precisions(records, counts), expected, rtol=0, atol=1e-12
    )
    assert np.isnan(expected).any()  # some resample has a class without instances
    monkeypatch.setattr(bootstrap, "REPLICATE_CHUNK", 7)
    np.testing.assert_allclose(
        bootstrap.replicate_average_precisions(records, counts), expected, rtol=0, atol=1e-12
    )


def test_several_class_sets_share_the_resamples():
    case = random_case(4, num_images=20)
    run = [r.image_records for r in evaluations(case, seed=2, spread=0.05)]
    against = [r.image_records for r in evaluations(case, seed=5, spread=0.3)]
    both = bootstrap.paired_differences(
        run, against, {"all": None, "c1 c2": ["c1", "c2"]}, replicates=60, seed=1
    )
    for name, classes in (("all", None), ("c1 c2", ["c1", "c2"])):
        alone = bootstrap.paired_difference(run, against, replicates=60, seed=1, classes=classes)
        assert both[name].estimate == alone.estimate
        np.testing.assert_allclose(both[name].replicates, alone.replicates, atol=1e-15)
    assert not np.allclose(both["all"].replicates, both["c1 c2"].replicates)


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


# --------------------------------------------------------------------------- in the aggregation
DIAGNOSIS_SPEC = {
    "results": "diag",
    "seeds": [0, 1, 2],
    "benchmarks": {"m0": {"multi_label_rate": 0.0}, "m0.4": {"multi_label_rate": 0.4}},
    "claims": [
        {"claim": "slope", "kind": "slope", "run": "cs", "against": "sm",
         "benchmarks": ["m0", "m0.4"], "metric": "map"},
        {"claim": "multi", "kind": "pooled", "run": "cs", "against": "sm",
         "benchmarks": ["m0.4"], "metric": "map_multi_labelled"},
    ],
}  # fmt: skip


def write_diagnosis_result(folder: Path, row: str, seed: int, results: list | None) -> Path:
    """A diagnosis training result as run_all.py copies it (run.json, summary.json, the two
    final evaluations with their per-class APs and, unless results is None, their image
    records)."""
    result = folder / "runs" / row / "val-as_train" / f"seed{seed}"
    history = []
    for epoch in (6, 7):
        tag = f"main_epoch{epoch}"
        (result / "eval" / tag).mkdir(parents=True)
        (result / "eval" / tag / "per_class.csv").write_text("mid,ap\n")
        if results is not None:
            results[epoch - 6].image_records.save(result / "eval" / tag / "image_records.npz")
        history.append({"phase": "main", "epoch": epoch, "map": 0.5, "eval_dir": f"eval/{tag}"})
    (result / "summary.json").write_text(json.dumps({"status": "finished", "history": history}))
    record = {"row": row, "validation": "as_train", "seed": seed, "kind": "train",
              "started_at": f"2026-12-07T0{seed}:00:00"}  # fmt: skip
    (result / "run.json").write_text(json.dumps(record))
    return result


def test_aggregation_bootstraps_every_diagnosis_pair_with_records(tmp_path, monkeypatch):
    import aggregate

    folder = tmp_path / "diag"
    case = random_case(5, num_images=16)
    made = {}
    for benchmark, seeds in (("m0", (0, 1)), ("m0.4", (0, 1))):
        for seed in seeds:
            cs_run = evaluations(case, 10 * seed + 1, 0.05)
            sm_run = evaluations(case, 10 * seed + 5, 0.3)
            records = None if (benchmark, seed) == ("m0.4", 1) else sm_run  # one run without
            write_diagnosis_result(folder, f"cs_{benchmark}", seed, cs_run)
            write_diagnosis_result(folder, f"sm_{benchmark}", seed, records)
            made[(benchmark, seed)] = ([r.image_records for r in cs_run],
                                       [r.image_records for r in sm_run])  # fmt: skip
    write_diagnosis_result(folder, "cs_m0", 5, None)  # not a registered seed: not bootstrapped
    write_diagnosis_result(folder, "sm_m0", 5, None)
    (folder / aggregate.MULTI_LABELLED_CSV).write_text("benchmark,mid\nm0.4,c1\nm0.4,c2\n")
    sweeps = {"diagnosis_sweep": DIAGNOSIS_SPEC}
    text = aggregate.write_diagnosis_bootstrap(tmp_path, sweeps)
    table = pd.read_csv(folder / "bootstrap.csv")
    assert sorted(zip(table["benchmark"], table["seed"], table["metric"], strict=True)) == [
        ("m0", 0, "map"), ("m0", 1, "map"), ("m0.4", 0, "map"), ("m0.4", 0, "map_multi_labelled"),
    ]  # fmt: skip
    assert set(table["replicates"]) == {1000} and set(table["bootstrap_seed"]) == {0}
    for _, r in table.iterrows():
        run, against = made[(r["benchmark"], r["seed"])]
        classes = ["c1", "c2"] if r["metric"] == "map_multi_labelled" else None
        alone = bootstrap.paired_difference(run, against, replicates=1000, seed=0, classes=classes)
        assert r["estimate"] == pytest.approx(alone.estimate * 100, abs=1e-4)
        assert (r["low"], r["high"]) == pytest.approx((alone.low * 100, alone.high * 100), abs=1e-4)
        assert r["bootstrap_sd"] == pytest.approx(np.std(alone.replicates, ddof=1) * 100, abs=1e-4)
        assert r["images"] == run[0].num_images
    assert "evaluation-set noise of one pair of runs" in text and "not the seed-to-seed" in text
    m0 = table[(table["benchmark"] == "m0")]
    seed_sd = np.std(m0["estimate"], ddof=1)
    assert f"| m0 | map | 2 | 1000 | {m0['bootstrap_sd'].mean():.2f} | {seed_sd:.2f} |" in text
    assert "| m0.4 | map | 1 | 1000 |" in text and "n/a (one seed pair)" in text
    assert "sm_m0.4 seed 1" in text and "no per-image records" in text

    # run again: the rows of bootstrap.csv are reused, nothing is resampled again
    def refuse(*args, **kwargs):
        raise AssertionError("bootstrapped again")

    monkeypatch.setattr(bootstrap, "paired_differences", refuse)
    assert aggregate.write_diagnosis_bootstrap(tmp_path, sweeps) == text
    pd.testing.assert_frame_equal(pd.read_csv(folder / "bootstrap.csv"), table)
