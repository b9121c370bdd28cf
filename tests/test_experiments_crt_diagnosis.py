"""experiments/aggregate.py crt_diagnosis_outputs: the per-class diagnosis of the cRT arms
on a small hand-made results folder (three arms, two seeds, four classes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_experiments import fake_crt_result

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import aggregate  # noqa: E402
import diagnosis  # noqa: E402

# /P is the parent of the leaves /a, /b, /c; /a and /b are a confused pair.
MIDS = ["/P", "/a", "/b", "/c"]
GROUPS = pd.DataFrame(
    {
        "mid": MIDS,
        "name": ["P", "A", "B", "C"],
        "is_leaf": [False, True, True, True],
        "max_offhier_rate": [float("nan"), 0.5, 0.2, 0.0],  # rate bins (0.3, 1], (0.1, 0.3], 0
        "confused_pair": [False, True, True, False],
        "train_images": [300, 100, 40, 3],
        "bucket": ["frequent", "frequent", "common", "rare"],
    }
)[diagnosis.GROUP_COLUMNS]
# the APs of /P, /a, /b, /c per arm and seed
APS = {
    "softmax": {0: [0.5, 0.5, 0.5, 0.5], 1: [0.5, 0.5, 0.5, 0.5]},
    "cs_default": {0: [0.5, 0.6, 0.7, 0.1], 1: [0.4, 0.5, 0.5, 0.5]},
    "cs_hierarchy_rate0": {0: [0.6, 0.6, 0.6, 0.6], 1: [0.4, 0.7, 0.5, 0.2]},
}
ARMS = {
    "softmax": ["loss=softmax"],
    "cs_default": ["loss=concurrent_softmax"],
    "cs_hierarchy_rate0": ["loss=concurrent_softmax", "rates.hierarchy_rate=0"],
    "cs_prior_count0": ["loss=concurrent_softmax", "rates.prior_count=0"],  # no results
}
CLAIMS = [
    {"claim": "cs vs softmax", "run": "cs_default", "against": "softmax"},
    {"claim": "hr0 vs cs", "run": "cs_hierarchy_rate0", "against": "cs_default"},
    {"claim": "pc0 vs cs", "run": "cs_prior_count0", "against": "cs_default"},
]
DETECTOR = {"size": "converged", "run": "t1_softmax", "seed": 0}
SWEEPS = {
    "crt_protocol": {
        "results": "crt", "seeds": [0, 1], "arms": ARMS, "claims": CLAIMS, "detector": DETECTOR,
    }
}  # fmt: skip


def write_crt_results(root: Path) -> Path:
    """The cRT results folder under root (runs/<arm>/val-as_train/seed<k>/ with metrics.json,
    run.json and per_class.csv) and the converged results' class_groups.csv; returns the
    latter's path."""
    folder = root / "crt"
    for arm, by_seed in APS.items():
        for seed, aps in by_seed.items():
            fake_crt_result(folder, arm, seed, sum(aps) / len(aps), "2026-12-06T23:00")
            per_class = GROUPS[["mid", "name", "train_images", "bucket"]].assign(ap=aps)
            per_class.to_csv(
                folder / "runs" / arm / "val-as_train" / f"seed{seed}" / "per_class.csv",
                index=False,
            )
    groups_csv = root / "converged" / diagnosis.CLASS_GROUPS_CSV
    groups_csv.parent.mkdir()
    GROUPS.to_csv(groups_csv, index=False)
    return groups_csv


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_crt_diagnosis_pairs_arms_with_softmax_and_flips_with_cs_default(tmp_path):
    groups_csv = write_crt_results(tmp_path)
    text = aggregate.crt_diagnosis_outputs(tmp_path, SWEEPS, groups_csv)
    folder = tmp_path / "crt"
    for name in ("diagnosis.csv", "diagnosis.md", "diagnosis.png"):
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "diagnosis.md").read_text() == text
    table = pd.read_csv(folder / "diagnosis.csv")
    # every CS arm against softmax, every flip against cs_default; an arm without results
    # (cs_prior_count0) gets no pair
    pairs = set(zip(table["run"], table["against"], table["pair"], strict=True))
    assert pairs == {
        ("cs_default", "softmax", "cRT cs_default - softmax"),
        ("cs_hierarchy_rate0", "softmax", "cRT cs_hierarchy_rate0 - softmax"),
        ("cs_hierarchy_rate0", "cs_default", "cRT cs_hierarchy_rate0 - cs_default"),
    }
    assert set(table["seed"]) == {0, 1}
    at = table.set_index(["run", "against", "grouping", "group", "seed"])

    def delta(run: str, against: str, grouping: str, group: str, seed: int) -> float:
        return float(at.loc[(run, against, grouping, group, seed), "delta"])

    # cs_default - softmax (points): seed 0 P 0, a +10, b +20, c -40; seed 1 P -10, leaves 0
    assert delta("cs_default", "softmax", "confused pair (leaves)", "confused-pair leaf", 0) == (
        pytest.approx(15.0, abs=1e-3)
    )
    assert delta("cs_default", "softmax", "level", "leaf", 0) == pytest.approx(-10 / 3, abs=1e-3)
    assert delta("cs_default", "softmax", "rate bin (leaves)", "0", 0) == pytest.approx(-40.0)
    assert delta("cs_default", "softmax", "level", "parent", 1) == pytest.approx(-10.0)
    assert delta("cs_default", "softmax", "level", "leaf", 1) == pytest.approx(0.0)
    # flip - cs_default: seed 0 P +10, a 0, b -10, c +50; seed 1 P 0, a +20, b 0, c -30
    flip = ("cs_hierarchy_rate0", "cs_default")
    assert delta(*flip, "confused pair (leaves)", "confused-pair leaf", 0) == pytest.approx(-5.0)
    assert delta(*flip, "confused pair (leaves)", "confused-pair leaf", 1) == pytest.approx(10.0)
    assert delta(*flip, "frequency bucket", "rare", 0) == pytest.approx(50.0)
    assert delta(*flip, "level", "leaf", 1) == pytest.approx(-10 / 3, abs=1e-3)
    assert delta(*flip, "rate bin (leaves)", "(0.1, 0.3]", 0) == pytest.approx(-10.0)
    # flip - softmax: seed 1 P -10, a +20, b 0, c -30
    assert delta("cs_hierarchy_rate0", "softmax", "frequency bucket", "frequent", 1) == (
        pytest.approx(5.0)
    )
    assert int(at.loc[(*flip, "level", "leaf", 0), "classes"]) == 3
    # the markdown: one table per pair, the seeds' deltas and their mean
    assert text.count("**Per-class diagnosis: cRT ") == 3
    assert "| confused pair (leaves) | confused-pair leaf | 2 | +15.00 | +0.00 | +7.50 |" in text
    assert "| confused pair (leaves) | confused-pair leaf | 2 | -5.00 | +10.00 | +2.50 |" in text


def test_crt_diagnosis_without_crt_results_writes_nothing(tmp_path):
    groups_csv = write_crt_results(tmp_path)
    # no crt_protocol block
    before = files_under(tmp_path)
    assert aggregate.crt_diagnosis_outputs(tmp_path, {}, groups_csv) == ""
    # no class-group table
    missing_groups = tmp_path / "converged" / "other.csv"
    assert aggregate.crt_diagnosis_outputs(tmp_path, SWEEPS, missing_groups) == ""
    assert files_under(tmp_path) == before
    # no cRT results folder, then one whose only result is unfinished (no run.json)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert aggregate.crt_diagnosis_outputs(empty, SWEEPS, groups_csv) == ""
    assert files_under(empty) == set()
    (empty / "crt" / "runs" / "softmax" / "val-as_train" / "seed0").mkdir(parents=True)
    assert aggregate.crt_diagnosis_outputs(empty, SWEEPS, groups_csv) == ""
    assert files_under(empty) == set()


def test_crt_m0_diagnosis_uses_the_benchmarks_class_groups_and_its_claims_pairs(tmp_path):
    """A cRT protocol on a diagnosis run's detector (sweeps.yaml `crt_m0:`): the class groups
    of the detector's benchmark (<diagnosis results>/class_groups_<benchmark>.csv), every arm
    against softmax; its results in its own folder."""
    write_crt_results(tmp_path)
    (tmp_path / "crt").rename(tmp_path / "m0_results")
    sweeps = {
        "crt_m0": {
            "results": "m0_results",
            "seeds": [0, 1],
            "arms": {arm: ARMS[arm] for arm in APS},
            "claims": [
                {"claim": "cs vs softmax", "run": "cs_default", "against": "softmax"},
                {"claim": "hr0 vs softmax", "run": "cs_hierarchy_rate0", "against": "softmax"},
            ],
            "detector": {"benchmark": "m0", "run": "d_softmax", "seed": 2},
        },
        "diagnosis_sweep": {"results": "diagnosis"},
        "diagnosis": {"dose_response": {"class_groups": "class_groups_{benchmark}.csv"}},
    }
    converged_groups = tmp_path / "converged" / diagnosis.CLASS_GROUPS_CSV
    # the benchmark's class groups are missing: nothing (the converged ones do not serve)
    assert aggregate.crt_diagnosis_outputs(tmp_path, sweeps, converged_groups, "crt_m0") == ""
    # the benchmark's groups: /c is a confused-pair leaf there, not in the converged groups
    groups = GROUPS.assign(confused_pair=[False, False, False, True])
    (tmp_path / "diagnosis").mkdir()
    groups_csv = aggregate.benchmark_class_groups_csv(tmp_path, sweeps, "m0")
    assert groups_csv == tmp_path / "diagnosis" / "class_groups_m0.csv"
    groups.to_csv(groups_csv, index=False)
    text = aggregate.crt_diagnosis_outputs(tmp_path, sweeps, converged_groups, "crt_m0")
    assert "sweeps.yaml `crt_m0:`" in text
    table = pd.read_csv(tmp_path / "m0_results" / "diagnosis.csv")
    assert set(zip(table["run"], table["against"], strict=True)) == {
        ("cs_default", "softmax"),
        ("cs_hierarchy_rate0", "softmax"),
    }
    at = table.set_index(["run", "against", "grouping", "group", "seed"])["delta"]
    # cs_default - softmax, seed 0: /c (the benchmark's one confused-pair leaf) -40 points
    key = ("cs_default", "softmax", "confused pair (leaves)", "confused-pair leaf", 0)
    assert at[key] == pytest.approx(-40.0)


def training_result(folder: Path, row: str, seed: int, aps_per_evaluation: list[list[float]]):
    """A training result as run_all.py copies it (run.json, summary.json, the per_class.csv
    of each evaluation; aps_per_evaluation[i]: the APs of MIDS at evaluation i)."""
    out = folder / "runs" / row / "val-as_train" / f"seed{seed}"
    history = []
    for epoch, aps in enumerate(aps_per_evaluation, start=1):
        eval_dir = out / "eval" / f"main_epoch{epoch}"
        eval_dir.mkdir(parents=True)
        GROUPS[["mid", "name", "train_images", "bucket"]].assign(ap=aps).to_csv(
            eval_dir / "per_class.csv", index=False
        )
        history.append(
            {"phase": "main", "epoch": epoch, "global_step": epoch, "map": sum(aps) / len(aps),
             "eval_dir": f"eval/main_epoch{epoch}"}
        )  # fmt: skip
    (out / "summary.json").write_text(json.dumps({"status": "finished", "history": history}))
    record = {"row": row, "validation": "as_train", "seed": seed, "kind": "train"}
    (out / "run.json").write_text(json.dumps(record))


CONFIRM_SWEEPS = {
    "crt_protocol": {
        "results": "crt",
        "detector": {"size": "converged", "run": "t1_softmax", "seed": 0},
        "confirm": {"seeds": [0, 1], "against": "t1_concurrent_softmax", "expected": "higher"},
    }
}


def test_confirmation_diagnosis_pairs_the_full_trainings_with_cs_and_softmax(tmp_path):
    groups_csv = tmp_path / "converged" / diagnosis.CLASS_GROUPS_CSV
    groups_csv.parent.mkdir()
    GROUPS.to_csv(groups_csv, index=False)
    assert aggregate.confirmation_diagnosis_outputs(tmp_path, CONFIRM_SWEEPS, groups_csv) == ""
    confirm = tmp_path / "crt" / "confirm"
    # the final evaluation counts, not the earlier one (0.0 everywhere)
    for seed in (0, 1):
        training_result(confirm, "crt_confirm_x", seed, [[0.0] * 4, [0.5, 0.6, 0.7, 0.1 + seed]])
    converged = tmp_path / "converged"
    for seed in (0, 1, 2):
        training_result(converged, "t1_concurrent_softmax", seed, [[0.5] * 4])
    training_result(converged, "t1_softmax", 0, [[0.0] * 4, [0.4] * 4])
    text = aggregate.confirmation_diagnosis_outputs(tmp_path, CONFIRM_SWEEPS, groups_csv)
    assert (confirm / "diagnosis.md").read_text() == text
    assert (confirm / "diagnosis.png").stat().st_size > 0
    table = pd.read_csv(confirm / "diagnosis.csv")
    seeds = table.groupby("against")["seed"].unique()
    assert sorted(seeds["t1_concurrent_softmax"]) == [0, 1]  # the seeds both runs have
    assert sorted(seeds["t1_softmax"]) == [0]
    at = table.set_index(["against", "grouping", "group", "seed"])["delta"]
    assert at[("t1_concurrent_softmax", "rate bin (leaves)", "0", 0)] == pytest.approx(-40.0)
    assert at[("t1_concurrent_softmax", "rate bin (leaves)", "0", 1)] == pytest.approx(60.0)
    assert at[("t1_softmax", "level", "parent", 0)] == pytest.approx(10.0)
    assert "**Per-class diagnosis: full training crt_confirm_x - t1_concurrent_softmax**" in text
    assert "**Per-class diagnosis: full training crt_confirm_x - t1_softmax**" in text
    # no confirm block: nothing
    assert aggregate.confirmation_diagnosis_outputs(tmp_path, SWEEPS, groups_csv) == ""


FEATURES_SWEEPS = {
    "crt_protocol": {
        "results": "crt",
        "detector": {"size": "converged", "run": "t1_softmax", "seed": 0},
        "arms": ARMS,
    },
    "crt_features": {
        "results": "crt/features",
        "detectors": [{"run": "t1_cs", "seed": 6}, {"run": "t1_cs", "seed": 7}],
        "arms": ["softmax", "cs_default"],
        "seeds": [0, 1],
    },
}


def test_crt_features_compares_the_detectors_features_and_each_arm_on_them(tmp_path):
    groups_csv = write_crt_results(tmp_path)  # the softmax detector's cRT results (APS)
    assert aggregate.crt_features_outputs(tmp_path, FEATURES_SWEEPS, groups_csv) == ""
    features = tmp_path / "crt" / "features"
    # detector t1_cs_s6 only (t1_cs_s7 has no results): softmax at 0.3 on every class, seed 1
    # of cs_default missing
    for arm, by_seed in {
        "softmax": {0: [0.3] * 4, 1: [0.3] * 4},
        "cs_default": {0: [0.4] * 4},
    }.items():
        for seed, aps in by_seed.items():
            folder = features / "t1_cs_s6"
            fake_crt_result(folder, arm, seed, sum(aps) / len(aps), "2026-12-07T07:00")
            GROUPS[["mid", "name", "train_images", "bucket"]].assign(ap=aps).to_csv(
                folder / "runs" / arm / "val-as_train" / f"seed{seed}" / "per_class.csv",
                index=False,
            )
    text = aggregate.crt_features_outputs(tmp_path, FEATURES_SWEEPS, groups_csv)
    assert (features / "diagnosis.md").read_text() == text
    assert (features / "diagnosis.png").stat().st_size > 0
    summary = pd.read_csv(features / "summary.csv").set_index(["detector", "arm"])
    # the reference detector's arms listed in crt_features only (not cs_hierarchy_rate0)
    assert list(summary.index) == [
        ("t1_softmax_s0", "softmax"),
        ("t1_softmax_s0", "cs_default"),
        ("t1_cs_s6", "softmax"),
        ("t1_cs_s6", "cs_default"),
    ]
    assert summary.loc[("t1_softmax_s0", "cs_default"), "map_mean"] == pytest.approx(47.5)
    assert summary.loc[("t1_cs_s6", "softmax"), "map_mean"] == pytest.approx(30.0)
    assert summary.loc[("t1_cs_s6", "cs_default"), "seeds"] == 1
    table = pd.read_csv(features / "diagnosis.csv")
    at = table.set_index(["run", "against", "grouping", "group", "seed"])["delta"]
    # the softmax classifier on t1_cs_s6's features minus on t1_softmax_s0's: 0.3 - 0.5
    features_pair = ("softmax @ t1_cs_s6", "softmax @ t1_softmax_s0")
    assert at[(*features_pair, "level", "leaf", 0)] == pytest.approx(-20.0)
    assert sorted(table[table["run"] == features_pair[0]]["seed"].unique()) == [0, 1]
    # cs_default minus softmax on t1_cs_s6's features: +10 everywhere, seed 0 only
    arm_pair = ("cs_default @ t1_cs_s6", "softmax @ t1_cs_s6")
    assert at[(*arm_pair, "rate bin (leaves)", "0", 0)] == pytest.approx(10.0)
    assert sorted(table[table["run"] == arm_pair[0]]["seed"].unique()) == [0]
    assert "| t1_cs_s6 | softmax | 30.00 ± 0.00 | 2 |" in text
    assert "**Per-class diagnosis: cRT cs_default @ t1_cs_s6 - softmax @ t1_cs_s6**" in text
    # no crt_features block: nothing
    assert aggregate.crt_features_outputs(tmp_path, SWEEPS, groups_csv) == ""
