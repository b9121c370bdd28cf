"""The per-class diagnosis of the dose-response benchmarks: experiments/diagnosis.py
--protocol diagnosis (a class-group table per benchmark) and aggregate.py
dose_response_diagnosis_outputs (per benchmark, on the sweep's final metric), on hand-made
results folders; nothing is trained."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_experiments_crt_diagnosis import GROUPS, training_result

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import aggregate  # noqa: E402
import diagnosis  # noqa: E402

SWEEPS = {
    "diagnosis": {
        "dose_response": {
            "class_groups": "groups_{benchmark}.csv",
            "rates_from": "cs",
            "run": "cs",
            "against": "sm",
        }
    },
    "diagnosis_sweep": {
        "results": "diag",
        "benchmarks": {"m0": {"multi_label_rate": 0.0}, "m0.4": {"multi_label_rate": 0.4}},
    },
}


def test_dose_response_diagnosis_per_benchmark_on_the_mean_of_the_last_two_evaluations(
    tmp_path,
):
    assert aggregate.dose_response_diagnosis_outputs(tmp_path, SWEEPS) == ""
    folder = tmp_path / "diag"
    for benchmark in ("m0", "m0.4"):
        for seed in (0, 1):
            # three evaluations; the first (1.0 everywhere) is not part of the final metric
            training_result(
                folder, f"cs_{benchmark}", seed,
                [[1.0] * 4, [0.5, 0.6, 0.7, 0.1], [0.5, 0.8, 0.7, 0.3 + 0.1 * seed]],
            )  # fmt: skip
            training_result(folder, f"sm_{benchmark}", seed, [[0.0] * 4, [0.5] * 4, [0.5] * 4])
    GROUPS.to_csv(folder / "groups_m0.csv", index=False)  # none for m0.4
    text = aggregate.dose_response_diagnosis_outputs(tmp_path, SWEEPS)
    assert (folder / "diagnosis.md").read_text() == text
    assert (folder / "diagnosis.png").stat().st_size > 0
    assert "No class groups for m0.4: make them with python experiments/diagnosis.py" in text
    assert text.count("**Per-class diagnosis: m = 0: cs - sm**") == 1
    assert "m = 0.4" not in text
    table = pd.read_csv(folder / "diagnosis.csv")
    assert set(zip(table["run"], table["against"], strict=True)) == {("cs_m0", "sm_m0")}
    at = table.set_index(["grouping", "group", "seed"])["delta"]
    # /a: (0.6 + 0.8) / 2 - 0.5 = +20 points; /c: (0.1 + 0.3 + 0.1 seed) / 2 - 0.5
    assert at[("rate bin (leaves)", "(0.3, 1]", 0)] == pytest.approx(20.0)
    assert at[("rate bin (leaves)", "0", 0)] == pytest.approx(-30.0)
    assert at[("rate bin (leaves)", "0", 1)] == pytest.approx(-25.0)
    assert aggregate.dose_response_diagnosis_outputs(tmp_path, {"diagnosis": {}}) == ""


def test_diagnosis_protocol_writes_each_benchmarks_class_groups_once(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    training_result(results / "diag", "cs_m0", 0, [[0.5] * 4])
    (results / "diag" / "runs/cs_m0/val-as_train/seed0/config.yaml").write_text("data: {}\n")
    sweeps_yaml = tmp_path / "sweeps.yaml"
    sweeps_yaml.write_text(yaml.safe_dump(SWEEPS))
    made = []

    def from_data(config_yaml: Path, per_class_csv: Path) -> pd.DataFrame:
        made.append((config_yaml, per_class_csv))
        return GROUPS

    monkeypatch.setattr(diagnosis, "class_groups_from_data", from_data)
    argv = ["--protocol", "diagnosis", "--results", str(results / "converged")]
    argv += ["--sweeps", str(sweeps_yaml)]
    assert diagnosis.main(argv) == 0
    source = results / "diag/runs/cs_m0/val-as_train/seed0"
    assert made == [(source / "config.yaml", source / "eval/main_epoch1/per_class.csv")]
    assert "m0.4: no result of cs_m0.4 seed 0 yet, no class groups" in capsys.readouterr().out
    written = results / "diag" / "groups_m0.csv"
    assert diagnosis.read_class_groups(written)["mid"].tolist() == GROUPS["mid"].tolist()
    assert not (results / "diag" / "groups_m0.4.csv").exists()
    with pytest.raises(SystemExit, match="groups_m0.csv exists: move it away"):
        diagnosis.main(argv)


def test_committed_dose_response_class_groups_match_their_benchmarks():
    folder = EXPERIMENTS / "results" / "diagnosis"
    for benchmark in ("m0", "m0.1", "m0.2", "m0.4"):
        groups = diagnosis.read_class_groups(folder / f"class_groups_{benchmark}.csv")
        leaves = groups[groups["is_leaf"]]
        assert len(groups) == 144 and len(leaves) == 120
        if benchmark == "m0":  # no object carries two leaf labels: no off-hierarchy rate
            assert (leaves["max_offhier_rate"] == 0).all()
            assert not leaves["confused_pair"].any()
        else:
            assert int(leaves["confused_pair"].sum()) == 20  # 10 pairs (sweeps.yaml)
            assert leaves["max_offhier_rate"].between(0, 1).all()
