"""experiments/claim_statistics.py (the verdict rule), the post-hoc marking and the per-class
diagnosis of experiments/diagnosis.py on small hand-made inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import aggregate  # noqa: E402
import claim_statistics as cs  # noqa: E402
import diagnosis  # noqa: E402


# --------------------------------------------------------------------------- statistics
def test_paired_test_matches_scipy():
    run = np.array([56.1, 55.0, 57.3, 54.2, 55.9])
    against = np.array([55.0, 55.4, 55.1, 53.0, 54.8])
    test = cs.paired_test(run - against, margin=0.5)
    expected = stats.ttest_rel(run, against)
    assert test.t == pytest.approx(expected.statistic)
    assert test.p == pytest.approx(expected.pvalue)
    assert test.df == 4 and test.n == 5
    assert test.mean == pytest.approx((run - against).mean())
    assert test.sd == pytest.approx((run - against).std(ddof=1))
    assert cs.paired_test(np.array([1.0, np.nan, 2.0, 4.0])).n == 3  # missing pairs dropped


def test_tost_matches_two_one_sided_scipy_tests():
    d = np.array([0.1, -0.2, 0.05, 0.15, -0.1, 0.0])
    test = cs.paired_test(d, margin=0.5)
    lower = stats.ttest_1samp(d, -0.5, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.5, alternative="less").pvalue
    assert test.tost_p == pytest.approx(max(lower, upper))
    assert test.equivalent
    # a mean near the margin is not equivalent, whatever its precision
    near = cs.paired_test(d + 0.45, margin=0.5)
    assert not near.equivalent and near.tost_p > 0.05
    # without a margin, no equivalence test
    assert np.isnan(cs.paired_test(d).tost_p) and not cs.paired_test(d).equivalent


def test_block_test_by_hand():
    # two settings with different effects: within-setting deviations only count
    a, b = np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.0])
    test = cs.block_test([a, b], margin=0.5)
    within = ((a - 2.0) ** 2).sum() + ((b + 0.5) ** 2).sum()  # 2 + 0.5
    sd_within = np.sqrt(within / (5 - 2))
    t = (5.0 / 5) / (sd_within / np.sqrt(5))
    assert test.df == 3 and test.n == 5
    assert test.sd == pytest.approx(sd_within)
    assert test.t == pytest.approx(t)
    assert test.p == pytest.approx(2 * stats.t.sf(abs(t), 3))
    # one setting: the block test is the paired t-test
    one = cs.block_test([a])
    assert one.t == pytest.approx(stats.ttest_1samp(a, 0).statistic) and one.df == 2
    # as many settings as pairs: no within-setting degree of freedom, no test
    assert np.isnan(cs.block_test([np.array([1.0]), np.array([2.0])]).p)


def test_verdict_words():
    significant_up = cs.paired_test(np.array([2.0, 3.0, 4.0]), margin=0.5)
    assert cs.verdict(significant_up, "higher") == "reproduces"
    assert cs.verdict(significant_up, "lower") == "opposite"
    tiny = cs.paired_test(np.array([0.1, -0.1, 0.1, -0.1]), margin=0.5)
    assert cs.verdict(tiny, "higher") == "no difference"
    noisy = cs.paired_test(np.array([-1.0, 0.0, 4.0]), margin=0.5)
    assert cs.verdict(noisy, "higher") == "cannot tell"
    assert cs.verdict(cs.paired_test(np.array([1.0])), "higher") == "n/a"
    with pytest.raises(ValueError, match="direction"):
        cs.verdict(noisy, "up")


def test_identical_differences_give_a_decided_test():
    same = cs.paired_test(np.array([-5.0, -5.0]), margin=0.5)
    assert same.p == 0.0 and same.t == -np.inf and not same.equivalent
    zero = cs.paired_test(np.array([0.0, 0.0]), margin=0.5)
    assert zero.p == 1.0 and zero.equivalent


@pytest.mark.parametrize(("sd", "seeds"), [(0.86, 7), (1.05, 9), (1.96, 26), (2.67, 46)])
def test_seeds_for_80_percent_power_of_the_table1_effect(sd, seeds):
    # issue figures for the paper's Table 1 effect of 1.13 points
    assert cs.seeds_for_power(1.13, sd) == seeds
    assert cs.power(1.13, sd, seeds) >= 0.8 > cs.power(1.13, sd, seeds - 1)


def test_power_by_hand_and_degenerate_inputs():
    # noncentral t: n 10, effect/sd 1 -> noncentrality sqrt(10), df 9
    critical = stats.t.ppf(0.975, 9)
    by_hand = stats.nct.sf(critical, 9, np.sqrt(10)) + stats.nct.cdf(-critical, 9, np.sqrt(10))
    assert cs.power(1.0, 1.0, 10) == pytest.approx(by_hand)
    assert cs.power(-1.0, 1.0, 10) == pytest.approx(by_hand)  # two-sided: sign-free
    assert cs.seeds_for_power(1.0, np.nan) is None and cs.seeds_for_power(0.0, 1.0) is None
    assert cs.seeds_for_power(0.01, 10.0, max_seeds=50) is None


# --------------------------------------------------------------------------- post hoc
def test_started_at_prefers_the_runners_record():
    record = {"collected_at": "2026-11-25T16:53:19", "wall_seconds": 1572.5}
    assert aggregate.started_at(record) == "2026-11-25T16:27:06"
    assert aggregate.started_at({**record, "started_at": "2026-11-25T10:00:00"}) == (
        "2026-11-25T10:00:00"
    )
    assert aggregate.started_at({"collected_at": "2026-11-25T16:53:19"}) is None


def test_registration_status_marks_claims_registered_after_a_start_post_hoc():
    starts = ["2026-11-25T16:27:06", "2026-11-26T01:00:00"]
    assert aggregate.registration_status("2026-11-25T20:08", starts) == (
        "post hoc",
        "2026-11-25T16:27",
    )
    assert aggregate.registration_status("2026-11-25T16:00", starts)[0] == "pre-registered"
    # a date alone is the end of that day: a result started that day may have been seen
    assert aggregate.registration_status("2026-11-25", starts)[0] == "post hoc"
    assert aggregate.registration_status("2026-11-24", starts)[0] == "pre-registered"
    assert aggregate.registration_status("2026-11-24", starts + [None])[0] == "unknown"
    assert aggregate.registration_status(None, starts)[0] == "not registered"
    with pytest.raises(ValueError, match="not an ISO date"):
        aggregate.registration_status("last week", starts)


def _result(results: Path, run: str, seed: int, value: float, started: str) -> None:
    out = results / "runs" / run / "val-as_train" / f"seed{seed}"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"map": value}))
    pd.DataFrame({"mid": ["/a"], "ap": [value], "bucket": ["rare"]}).to_csv(
        out / "per_class.csv", index=False
    )
    record = {"row": run, "seed": seed, "validation": "as_train", "kind": "evaluate"}
    record.update({"started_at": started})
    (out / "run.json").write_text(json.dumps(record))


def test_claim_registered_after_a_run_started_is_post_hoc(tmp_path):
    for seed in range(3):
        _result(tmp_path, "a", seed, 0.5 + 0.01 * seed, f"2026-11-2{seed + 1}T12:00:00")
        _result(tmp_path, "b", seed, 0.5, f"2026-11-2{seed + 1}T12:00:00")
    runs, _ = aggregate.collect_results(tmp_path)
    settings = {"alpha": 0.05, "equivalence_margin": 0.5, "power": 0.8}
    claims = [
        {"claim": "before", "run": "a", "against": "b", "expected": "higher"},
        {"claim": "after", "run": "a", "against": "b", "expected": "higher"},
    ]
    claims[0]["registered"] = "2026-11-20"
    claims[1]["registered"] = "2026-11-22T00:00"  # seed 0 started on the 21st
    out = aggregate.summarize_claims(runs, claims, "as_train", settings, {}).set_index("claim")
    assert out.loc["before", "registration"] == "pre-registered"
    assert out.loc["after", "registration"] == "post hoc"
    assert out.loc["after", "first_result_started"] == "2026-11-21T12:00"


def test_pooled_claim_reports_all_pairs_and_block_model(tmp_path):
    starts = "2026-11-21T12:00:00"
    for seed, (a, b, c, d) in enumerate([(0.50, 0.52, 0.60, 0.63), (0.51, 0.52, 0.61, 0.62)]):
        _result(tmp_path, "cs1", seed, a, starts)
        _result(tmp_path, "sm1", seed, b, starts)
        _result(tmp_path, "cs2", seed, c, starts)
        _result(tmp_path, "sm2", seed, d, starts)
    runs, _ = aggregate.collect_results(tmp_path)
    settings = {"alpha": 0.05, "equivalence_margin": 0.5, "power": 0.8}
    claim = {
        "claim": "cs helps",
        "pairs": [["cs1", "sm1"], ["cs2", "sm2"]],
        "paper_delta": 1.13,
        "registered": "2026-12-06",
    }
    out = aggregate.summarize_pooled_claims(runs, [claim], "as_train", settings, {}).iloc[0]
    diffs = [np.array([-2.0, -1.0]), np.array([-3.0, -1.0])]
    assert out["t"] == pytest.approx(stats.ttest_1samp(np.concatenate(diffs), 0).statistic)
    assert out["df"] == 3 and out["block_df"] == 2
    assert out["block_t"] == pytest.approx(cs.block_test(diffs).t)
    assert out["paper_direction"] == "higher" and out["registration"] == "post hoc"
    assert out["setting_means"] == "-1.50; -2.00"


# --------------------------------------------------------------------------- diagnosis
def test_rate_bins():
    assert [diagnosis.rate_bin(r) for r in [0.0, 0.05, 0.1, 0.2, 0.3, 0.65, 1.0]] == [
        "0", "(0, 0.1]", "(0, 0.1]", "(0.1, 0.3]", "(0.1, 0.3]", "(0.3, 1]", "(0.3, 1]",
    ]  # fmt: skip
    assert diagnosis.rate_bin(np.nan) == ""
    with pytest.raises(ValueError, match="must lie in"):
        diagnosis.rate_bin(1.5)


def _groups() -> pd.DataFrame:
    # P is the parent of leaves a, b, c; a and b are a confused pair; P-a is a hierarchy pair
    mids = ["/P", "/a", "/b", "/c"]
    leaf = np.array([False, True, True, True])
    related = np.zeros((4, 4), dtype=bool)
    related[0, 1:] = related[1:, 0] = True
    rates = np.zeros((4, 4))
    rates[:, 0] = rates[0, :] = 1.0  # hierarchy rate: not an off-hierarchy rate
    rates[1, 2], rates[2, 1], rates[3, 1] = 0.5, 0.2, 0.05
    per_class = pd.DataFrame(
        {
            "mid": mids,
            "name": ["P", "A", "B", "C"],
            "train_images": [300, 100, 40, 3],
            "bucket": ["frequent", "frequent", "common", "rare"],
        }
    )
    return diagnosis.class_groups_table(mids, leaf, related, rates, {"/a", "/b"}, per_class)


def test_class_groups_table_takes_the_largest_off_hierarchy_rate():
    groups = _groups().set_index("mid")
    assert list(groups["max_offhier_rate"].iloc[1:]) == [0.5, 0.2, 0.05]
    assert np.isnan(groups.at["/P", "max_offhier_rate"])  # parents: no leaf rate
    assert list(groups["confused_pair"]) == [False, True, True, False]
    assert list(_groups().columns) == diagnosis.GROUP_COLUMNS


def test_group_differences_average_classes_per_seed():
    groups = _groups()
    against = pd.DataFrame({"mid": ["/P", "/a", "/b", "/c"], "ap": [0.5, 0.5, 0.5, 0.5]})
    seed0 = pd.DataFrame({"mid": ["/P", "/a", "/b", "/c"], "ap": [0.5, 0.6, 0.7, 0.1]})
    seed1 = pd.DataFrame({"mid": ["/P", "/a", "/b", "/c"], "ap": [0.4, 0.5, 0.5, np.nan]})
    diffs = diagnosis.group_differences({0: (seed0, against), 1: (seed1, against)}, groups)
    at = diffs.set_index(["grouping", "group", "seed"])
    assert at.loc[("confused pair (leaves)", "confused-pair leaf", 0), "delta"] == pytest.approx(
        15.0
    )
    assert at.loc[("rate bin (leaves)", "(0, 0.1]", 0), "delta"] == pytest.approx(-40.0)
    assert at.loc[("level", "parent", 1), "delta"] == pytest.approx(-10.0)
    # a class without an AP in one evaluation leaves its groups for that seed
    assert at.loc[("level", "leaf", 1), "classes"] == 2
    assert at.loc[("level", "leaf", 0), "classes"] == 3
    assert at.loc[("bucket x rate bin (leaves)", "rare / (0, 0.1]", 0), "classes"] == 1
    text = diagnosis.markdown_diagnosis(diffs, "x vs y", "as_train")
    assert "| rate bin (leaves) | (0.3, 1] | 1 | +10.00 | +0.00 | +5.00 |" in text
    assert "| rare | – | -40.00 (1) |" in text


def test_read_class_groups_names_a_missing_column(tmp_path):
    path = tmp_path / "class_groups.csv"
    _groups().drop(columns=["bucket"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="class_groups.csv: missing columns \\['bucket'\\]"):
        diagnosis.read_class_groups(path)


def test_committed_class_groups_match_the_committed_runs():
    results = EXPERIMENTS / "results" / "converged"
    groups = diagnosis.read_class_groups(results / diagnosis.CLASS_GROUPS_CSV)
    per_class = pd.read_csv(
        results / "runs/t1_softmax/val-as_train/seed0/eval/main_epoch7/per_class.csv"
    )
    assert set(groups["mid"]) == set(per_class["mid"])
    assert int(groups["confused_pair"].sum()) == 20  # 10 confused pairs (sweeps.yaml)
    leaves = groups[groups["is_leaf"]]
    assert leaves["max_offhier_rate"].between(0, 1).all()


def _training_result(results: Path, run: str, seed: int, aps: list[float]) -> None:
    out = results / "runs" / run / "val-as_train" / f"seed{seed}"
    (out / "eval" / "main_epoch1").mkdir(parents=True)
    per_class = _groups()[["mid", "name", "train_images", "bucket"]].assign(ap=aps)
    per_class.to_csv(out / "eval" / "main_epoch1" / "per_class.csv", index=False)
    history = [{"phase": "main", "epoch": 1, "global_step": 1, "map": float(np.mean(aps))}]
    history[0]["eval_dir"] = "eval/main_epoch1"
    (out / "summary.json").write_text(json.dumps({"status": "finished", "history": history}))
    record = {"row": run, "seed": seed, "validation": "as_train", "kind": "train"}
    (out / "run.json").write_text(json.dumps(record))


def test_aggregate_writes_the_diagnosis_and_needs_the_class_groups(tmp_path):
    for seed in range(2):
        _training_result(tmp_path, "cs", seed, [0.5, 0.6 + 0.1 * seed, 0.7, 0.1])
        _training_result(tmp_path, "sm", seed, [0.5, 0.5, 0.5, 0.5])
    sweeps = {
        "seeds": [0, 1],
        "runs": {"cs": {}, "sm": {}},
        "tables": {
            "t": {
                "title": "T: fake",
                "baseline": "sm",
                "validation": ["as_train"],
                "rows": [{"label": "sm", "run": "sm"}, {"label": "cs", "run": "cs"}],
            }
        },
        "figure4": [],
        "figure5": [],
        "statistics": {"alpha": 0.05, "equivalence_margin": 0.5, "power": 0.8},
        "claims": [],
        "diagnosis": {"pairs": [{"label": "cs vs sm", "run": "cs", "against": "sm"}]},
    }
    with pytest.raises(SystemExit, match="class_groups.csv not found"):
        aggregate.aggregate(tmp_path, sweeps)
    _groups().to_csv(tmp_path / "class_groups.csv", index=False)
    aggregate.aggregate(tmp_path, sweeps)
    table = pd.read_csv(tmp_path / "diagnosis_as_train.csv")
    confused = table[(table["group"] == "confused-pair leaf")].set_index("seed")["delta"]
    assert list(confused) == pytest.approx([15.0, 20.0])
    assert "Per-class diagnosis: cs vs sm" in (tmp_path / "diagnosis.md").read_text()
    assert (tmp_path / "diagnosis_as_train.png").stat().st_size > 0
