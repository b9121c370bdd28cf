"""Tables, statistics and figures of a sweep from its results in the repository
(experiments/results/<size>/runs/<run id>/val-<variant>/seed<k>/, written by run_all.py).

    python experiments/aggregate.py --results experiments/results/converged

Writes to the results folder: evaluations.csv (one line per row, validation variant, seed and
evaluation), all_runs.csv (the final evaluation of each), <table>_<variant>.csv and
tables.md (mean ± std over seeds, the paired difference to the table's baseline and its
verdict, the paper's number and direction, convergence), claims_<variant>.csv and claims.md
(each claim of sweeps.yaml: mean Δ, sd, n, t, df, p, the TOST result, the verdict, the
paper's Δ, the seeds for the stated power, and whether the claim is pre-registered or post
hoc), pooled_claims_<variant>.csv (contrasts over several settings: all pairs and the block
model), diagnosis_<variant>.csv, diagnosis.md and diagnosis_<variant>.png (per-class AP
differences by class group, experiments/diagnosis.py), convergence.csv and convergence.png,
Figure 4 and Figure 5 (PNG + CSV), leaf_parent_map.csv and missing.txt, and registered.csv
(the claims of the protocols registered before their runs, sweeps.yaml `diagnosis_sweep:`,
`crt_protocol:` and `crt_m0:`, on the results beside this folder: "not run yet", "in progress: k
of n seed pairs" with the interim estimate and sd but no test or verdict until every registered
seed pair is there, or judged; also at the end of claims.md), and beside the diagnosis
protocol's results bootstrap.csv: the image-bootstrap interval of Δ of every (benchmark, seed)
pair with per-image records (experiments/bootstrap.py; 1000 seeded resamples; rows already in
the file are reused), summarised at the end of claims.md against the seed-to-seed sd of Δ. The
per-class diagnosis is also written, descriptive, for the registered protocols' results: the cRT
arms (<crt results>/diagnosis.*), the cRT confirmation by full training (<crt
results>/confirm/diagnosis.*), the dose-response benchmarks, each by its own class groups
(<diagnosis results>/diagnosis.*), and the cRT arms on the features of detectors that concurrent
softmax trained (sweeps.yaml `crt_features:`, post hoc: <crt results>/features/summary.csv and
diagnosis.*) and the cRT arms on the m = 0 benchmark's softmax detector (sweeps.yaml `crt_m0:`,
<crt results>/m0/diagnosis.*, by that benchmark's class groups).

The verdict rule (sweeps.yaml `statistics:`, experiments/claim_statistics.py): a paired
two-sided t-test of the per-seed differences at alpha and an equivalence test (TOST) at the
margin; "reproduces" / "opposite" when significant with / against the claimed direction, "no
difference" when equivalent, "cannot tell" otherwise. Table rows get the same test against
their baseline ("higher" / "lower" / "equivalent" / "cannot tell"). Convergence: a run has
plateaued when it has at least 4 evaluations and its last two differ by at most 1.0 mAP
point.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from lsdet.engine.run_folder import EvaluationFolder, RunFolder  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import claim_statistics as cs  # noqa: E402
import diagnosis  # noqa: E402

METRICS = ["map", "map_rare", "map_common", "map_frequent"]
PLATEAU_MIN_EVALUATIONS = 4
PLATEAU_MAX_LAST_DIFF = 1.0  # mAP points between the last two evaluations
RUN_COLUMNS = [
    "run", "validation", "seed", "kind", *METRICS, "started_at", "per_class_csv", "history",
]  # fmt: skip
EVAL_COLUMNS = [
    "row", "validation", "seed", "kind", "phase", "epoch", "epoch_total", "iteration", *METRICS,
]  # fmt: skip


# --------------------------------------------------------------------------- reading
def read_result(result_dir: Path) -> dict | None:
    """One result folder of run_all.py: its final metrics, the per-class AP table of the
    final evaluation and the history of evaluations (training runs: every evaluation with
    phase, epoch within the phase, epoch over the run, global iteration). None when the
    folder is incomplete (no run.json) or the training run did not finish."""
    marker = result_dir / "run.json"
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    out = {"run": record["row"], "validation": record["validation"], "seed": record["seed"]}
    out["started_at"] = started_at(record)
    if record["kind"] == "train":
        summary = RunFolder(result_dir).read_summary()
        if summary.get("status") != "finished":
            return None
        history = []
        for epoch_total, h in enumerate(summary["history"], start=1):
            if "map" not in h:  # not evaluated at this epoch, or the evaluation failed
                continue
            history.append(
                {
                    "phase": h.get("phase"),
                    "epoch": h.get("epoch"),
                    "epoch_total": epoch_total,
                    "iteration": h.get("global_step"),
                    **{m: h.get(m, np.nan) for m in METRICS},
                    "per_class_csv": str(EvaluationFolder(result_dir / h["eval_dir"]).per_class),
                }
            )
        if not history:
            return None
        last = history[-1]
        return {
            **out,
            "kind": "training",
            **{m: last[m] for m in METRICS},
            "per_class_csv": last["per_class_csv"],
            "history": history,
        }
    evaluation = EvaluationFolder(result_dir)
    metrics = evaluation.read_metrics()
    row = {**out, "kind": "evaluation", **{m: np.nan for m in METRICS}, "map": metrics["map"]}
    buckets_csv = evaluation.frequency_buckets
    if buckets_csv.is_file():
        for _, b in pd.read_csv(buckets_csv).iterrows():
            row[f"map_{b['bucket']}"] = float(b["mean_ap"])
    row["per_class_csv"] = str(evaluation.per_class)
    row["history"] = []
    return row


def started_at(record: dict) -> str | None:
    """When a result's task started (ISO time): the runner's `started_at`, else (results of
    runners that did not record it) `collected_at` minus `wall_seconds`; None when neither is
    known."""
    if record.get("started_at"):
        return record["started_at"]
    if record.get("collected_at") and record.get("wall_seconds") is not None:
        collected = datetime.datetime.fromisoformat(record["collected_at"])
        start = collected - datetime.timedelta(seconds=float(record["wall_seconds"]))
        return start.isoformat(timespec="seconds")
    return None


def collect_results(results_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per complete result folder under <results_dir>/runs/ and the folders that are
    incomplete or unfinished."""
    rows, incomplete = [], []
    for seed_dir in sorted(Path(results_dir).glob("runs/*/val-*/seed*")):
        result = read_result(seed_dir)
        if result is None:
            incomplete.append(str(seed_dir.relative_to(results_dir)))
        else:
            rows.append(result)
    return pd.DataFrame(rows, columns=RUN_COLUMNS), incomplete


def source_run(sweeps: dict, run_id: str) -> str:
    """The training run whose checkpoint a row scores (the row itself for training runs)."""
    return (sweeps.get("rescoring") or {}).get(run_id, {}).get("from", run_id)


def training_result(runs: pd.DataFrame, run_id: str, seed: int) -> pd.Series | None:
    """The finished training run `run_id` of `seed` (on the variant it was trained with)."""
    sel = runs[(runs["run"] == run_id) & (runs["seed"] == seed) & (runs["kind"] == "training")]
    return None if sel.empty else sel.iloc[0]


def align_buckets(runs: pd.DataFrame, sweeps: dict) -> pd.DataFrame:
    """Frequency-bucket mAPs of the evaluation-only results recomputed with the buckets of the
    training run whose checkpoint they score (same seed), so that a row's buckets are the
    same classes whatever the scoring or validation variant. Results without their training
    run get no bucket mAPs."""
    runs = runs.copy()
    for index, row in runs[runs["kind"] == "evaluation"].iterrows():
        for metric in METRICS[1:]:
            runs.at[index, metric] = np.nan
        source = training_result(runs, source_run(sweeps, row["run"]), row["seed"])
        if source is None:
            continue
        buckets = pd.read_csv(source["per_class_csv"]).set_index("mid")["bucket"]
        per_class = pd.read_csv(row["per_class_csv"]).set_index("mid")["ap"]
        for bucket, value in per_class.groupby(buckets.reindex(per_class.index)).mean().items():
            runs.at[index, f"map_{bucket}"] = value
    return runs


def evaluations_table(runs: pd.DataFrame, sweeps: dict) -> pd.DataFrame:
    """One line per (row, validation variant, seed, evaluation): every evaluation of a
    training run, and the one evaluation of an evaluation-only result, placed at its training
    run's final epoch and iteration (phase "final checkpoint")."""
    lines = []
    for _, r in runs.iterrows():
        base = {"row": r["run"], "validation": r["validation"], "seed": r["seed"]}
        if r["kind"] == "training":
            for h in r["history"]:
                lines.append({**base, "kind": "training", **{c: h[c] for c in EVAL_COLUMNS[4:]}})
            continue
        source = training_result(runs, source_run(sweeps, r["run"]), r["seed"])
        last = source["history"][-1] if source is not None else {}
        lines.append(
            {
                **base,
                "kind": "evaluation",
                "phase": "final checkpoint",
                "epoch": last.get("epoch"),
                "epoch_total": last.get("epoch_total"),
                "iteration": last.get("iteration"),
                **{m: r[m] for m in METRICS},
            }
        )
    table = pd.DataFrame(lines, columns=EVAL_COLUMNS)
    return table.sort_values(["row", "validation", "seed", "iteration"], kind="stable")


# --------------------------------------------------------------------------- statistics
def statistics_settings(sweeps: dict) -> dict:
    """alpha, equivalence_margin (mAP points) and power of sweeps.yaml's `statistics:`
    block (a clear error naming the key when one is missing or out of range)."""
    spec = sweeps.get("statistics")
    if not isinstance(spec, dict):
        raise ValueError("sweeps.yaml: no `statistics:` block (alpha, equivalence_margin, power)")
    out = {}
    for key in ("alpha", "equivalence_margin", "power"):
        if key not in spec:
            raise ValueError(f"sweeps.yaml: statistics.{key} is missing")
        out[key] = float(spec[key])
    if not 0 < out["alpha"] < 1 or not 0 < out["power"] < 1 or out["equivalence_margin"] <= 0:
        raise ValueError(
            f"sweeps.yaml: statistics needs 0 < alpha < 1, 0 < power < 1 and "
            f"equivalence_margin > 0, got {spec}"
        )
    return out


def difference_verdict(diffs: np.ndarray, settings: dict) -> str:
    """A table row against its baseline by the verdict rule: "higher" / "lower" when the
    paired two-sided t-test is significant at alpha, else "equivalent" when the TOST at the
    margin passes, else "cannot tell"; "n/a" with fewer than 2 paired seeds."""
    test = cs.paired_test(diffs, settings["equivalence_margin"], settings["alpha"])
    if test.n < 2 or np.isnan(test.p):
        return "n/a"
    if test.p < settings["alpha"]:
        return "higher" if test.mean > 0 else "lower"
    return "equivalent" if test.equivalent else "cannot tell"


def paper_direction(
    paper: float | None, baseline_paper: float | None, expected: str | None = None
) -> str:
    """The paper's direction of a row against its baseline: from the two numbers when the
    paper has both, else the row's `expected` (higher | lower); "" if neither."""
    if paper is not None and baseline_paper is not None and paper != baseline_paper:
        return "higher" if paper > baseline_paper else "lower"
    return expected or ""


def agreement(verdict: str, direction: str) -> str:
    """A table row's verdict in the words of the claims: "reproduces" (significant in the
    paper's direction), "opposite", "no difference" (equivalent) or "cannot tell"."""
    if not direction or verdict == "n/a":
        return ""
    if verdict in ("higher", "lower"):
        return "reproduces" if verdict == direction else "opposite"
    return "no difference" if verdict == "equivalent" else "cannot tell"


def convergence(history: list[dict]) -> tuple[int, float, bool]:
    """(evaluations, |last - second last| in mAP points, plateaued) of a training run."""
    maps = [h["map"] for h in history if not pd.isna(h["map"])]
    if len(maps) < 2:
        return len(maps), np.nan, False
    # rounded so that a difference of exactly the threshold is not lost to float noise
    last_diff = round(abs(maps[-1] - maps[-2]) * 100, 6)
    plateau = len(maps) >= PLATEAU_MIN_EVALUATIONS and last_diff <= PLATEAU_MAX_LAST_DIFF
    return len(maps), last_diff, plateau


def convergence_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per training run and seed: evaluations, last-two difference, plateau."""
    records = []
    for _, r in runs[runs["kind"] == "training"].iterrows():
        evaluations, last_diff, plateau = convergence(r["history"])
        records.append(
            {
                "run": r["run"],
                "seed": r["seed"],
                "evaluations": evaluations,
                "last_two_diff": last_diff,
                "plateau": plateau,
                "final_map": r["map"] * 100,
            }
        )
    columns = ["run", "seed", "evaluations", "last_two_diff", "plateau", "final_map"]
    return pd.DataFrame(records, columns=columns)


def seed_results(runs: pd.DataFrame, run_id: str, variant: str) -> pd.DataFrame:
    """The results of one row on one validation variant, indexed by seed."""
    return runs[(runs["run"] == run_id) & (runs["validation"] == variant)].set_index("seed")


def paired_differences(values: pd.Series, baseline: pd.Series) -> pd.Series:
    """Per-seed differences in points (%) of two seed-indexed metric series, on the seeds
    where both have a value."""
    common = values.index.intersection(baseline.index)
    diff = (values.loc[common].astype(float) - baseline.loc[common].astype(float)) * 100
    return diff.dropna()


def difference_statistics(diff: pd.Series) -> dict:
    """Mean, sample std, standard error and number of paired seed differences."""
    n = len(diff)
    std = diff.std(ddof=1) if n > 1 else np.nan
    return {
        "delta_mean": diff.mean() if n else np.nan,
        "delta_std": std,
        "delta_se": std / np.sqrt(n) if n > 1 else np.nan,
        "delta_seeds": n,
    }


def registration_time(registered: str | None) -> datetime.datetime | None:
    """A claim's `registered` (ISO date or time); a date alone counts as the end of that day
    (a result started on the registration day may have been seen)."""
    if registered is None:
        return None
    text = str(registered)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as error:
        raise ValueError(f"sweeps.yaml: registered {text!r} is not an ISO date or time") from error
    if len(text) == 10:  # YYYY-MM-DD
        moment = moment.replace(hour=23, minute=59, second=59)
    return moment


def claim_results(runs: pd.DataFrame, sweeps: dict, row_ids: list[str]) -> pd.DataFrame:
    """Every result a claim judges: the results of its rows (any validation variant) and of
    the training runs whose checkpoints they score."""
    judged = set(row_ids) | {source_run(sweeps, r) for r in row_ids}
    return runs[runs["run"].isin(judged)]


def registration_status(registered: str | None, starts: list[str | None]) -> tuple[str, str]:
    """("pre-registered" | "post hoc" | "unknown" | "not registered", earliest start) of a
    claim: post hoc when any result it judges started before the claim was registered."""
    moment = registration_time(registered)
    known = sorted(datetime.datetime.fromisoformat(t) for t in starts if isinstance(t, str))
    earliest = known[0].isoformat(timespec="minutes") if known else ""
    if moment is None:
        return "not registered", earliest
    if known and known[0] < moment:
        return "post hoc", earliest
    if len(known) < len(starts) or not starts:
        return "unknown", earliest
    return "pre-registered", earliest


def _registration_columns(
    runs: pd.DataFrame, sweeps: dict, claim: dict, row_ids: list[str]
) -> dict[str, str]:
    """A claim's registration columns: its registration date, the earliest start of the
    results it judges (those of row_ids and of their training runs) and registration_status."""
    judged = claim_results(runs, sweeps, row_ids)
    status, earliest = registration_status(claim.get("registered"), list(judged["started_at"]))
    return {
        "registered": claim.get("registered") or "",
        "first_result_started": earliest,
        "registration": status,
    }


def _paired_metric_differences(
    runs: pd.DataFrame, run_id: str, against: str, variant: str, metric: str
) -> pd.Series:
    """Per seed, `metric` of run_id minus that of `against` on one validation variant."""
    return paired_differences(
        seed_results(runs, run_id, variant)[metric], seed_results(runs, against, variant)[metric]
    )


def _test_columns(test: cs.TTest, prefix: str = "") -> dict:
    return {
        f"{prefix}delta_mean": test.mean,
        f"{prefix}delta_std": test.sd,
        f"{prefix}delta_seeds": test.n,
        f"{prefix}t": test.t,
        f"{prefix}df": test.df,
        f"{prefix}p": test.p,
        f"{prefix}tost_p": test.tost_p,
        f"{prefix}equivalent": test.equivalent,
    }


def _claim_direction(claim: dict) -> tuple[float, str]:
    """(the paper's Δ or nan, the claimed direction) of a claim of sweeps.yaml."""
    paper, paper_against = claim.get("paper") or (None, None)
    direction = paper_direction(paper, paper_against, claim.get("expected"))
    if direction not in ("higher", "lower"):
        raise ValueError(
            f"sweeps.yaml: claim {claim.get('claim')!r} needs `paper: [run, against]` with two "
            "different numbers or `expected: higher | lower`"
        )
    return (paper - paper_against if paper is not None else np.nan), direction


def _seeds_needed(paper_delta: float, sd: float, settings: dict) -> float:
    effect = paper_delta if not pd.isna(paper_delta) else settings["equivalence_margin"]
    n = cs.seeds_for_power(effect, sd, settings["power"], settings["alpha"])
    return np.nan if n is None else n


def summarize_claims(
    runs: pd.DataFrame, claims: list[dict], variant: str, settings: dict, sweeps: dict
) -> pd.DataFrame:
    """One line per claim of sweeps.yaml on one validation variant: the paired per-seed
    difference of `run` minus `against` on `metric` (default map): mean, sd, n, t, df, p, the
    TOST p and result at the margin, the verdict, the paper's Δ and direction, the seeds for
    the stated power at the measured sd (for the paper's Δ, else the margin), and whether the
    claim was registered before every result it judges started."""
    out = []
    for claim in claims:
        metric = claim.get("metric", "map")
        diff = _paired_metric_differences(runs, claim["run"], claim["against"], variant, metric)
        paper_delta, direction = _claim_direction(claim)
        test = cs.paired_test(diff.to_numpy(), settings["equivalence_margin"], settings["alpha"])
        record = {"claim": claim["claim"], "run": claim["run"], "against": claim["against"]}
        record.update({"metric": metric, "validation": variant})
        record.update(_test_columns(test))
        record["verdict"] = cs.verdict(test, direction, settings["alpha"])
        record["paper_delta"] = paper_delta
        record["paper_direction"] = direction
        record["seeds_for_power"] = _seeds_needed(paper_delta, test.sd, settings)
        record.update(_registration_columns(runs, sweeps, claim, [claim["run"], claim["against"]]))
        out.append(record)
    return pd.DataFrame(out)


def summarize_pooled_claims(
    runs: pd.DataFrame, claims: list[dict], variant: str, settings: dict, sweeps: dict
) -> pd.DataFrame:
    """One line per pooled claim (a contrast measured under several settings): (a) the paired
    t-test and TOST over all seed pairs, (b) the block model's common-effect test (the setting
    as a block, df = pairs - settings), each with its verdict, the seeds (pairs) for the
    stated power at its sd, and the registration status."""
    out = []
    for claim in claims:
        metric = claim.get("metric", "map")
        by_setting = []
        for run_id, against in claim["pairs"]:
            diff = _paired_metric_differences(runs, run_id, against, variant, metric)
            by_setting.append(diff.to_numpy())
        if "paper_delta" in claim:  # the paper's effect in one of the settings (power only)
            paper_delta = float(claim["paper_delta"])
            direction = "higher" if paper_delta > 0 else "lower"
        else:
            paper_delta, direction = _claim_direction(claim)
        margin, alpha = settings["equivalence_margin"], settings["alpha"]
        all_pairs = cs.paired_test(np.concatenate(by_setting), margin, alpha)
        block = cs.block_test(by_setting, margin, alpha)
        record = {"claim": claim["claim"], "metric": metric, "validation": variant}
        record["pairs"] = "; ".join(f"{r} - {a}" for r, a in claim["pairs"])
        record["settings"] = sum(len(d) > 0 for d in by_setting)
        record["setting_means"] = "; ".join(
            f"{d.mean():+.2f}" if len(d) else "n/a" for d in by_setting
        )
        record.update(_test_columns(all_pairs))
        record["verdict"] = cs.verdict(all_pairs, direction, alpha)
        record.update(_test_columns(block, "block_"))
        record["block_verdict"] = cs.verdict(block, direction, alpha)
        record["paper_delta"] = paper_delta
        record["paper_direction"] = direction
        record["seeds_for_power"] = _seeds_needed(paper_delta, all_pairs.sd, settings)
        record["block_seeds_for_power"] = _seeds_needed(paper_delta, block.sd, settings)
        row_ids = [r for pair in claim["pairs"] for r in pair]
        record.update(_registration_columns(runs, sweeps, claim, row_ids))
        out.append(record)
    return pd.DataFrame(out)


def summarize_table(
    runs: pd.DataFrame,
    table: dict,
    variant: str,
    converged: pd.DataFrame,
    sweeps: dict,
    settings: dict,
) -> pd.DataFrame:
    """One line per table row on one validation variant: mean and sample std (ddof 1) over
    seeds of every metric (%), the paired difference to the baseline (mean, std, standard
    error, seeds, t, df, p, TOST p), difference_verdict's verdict, the paper's number, direction and the agreement, and the
    convergence of the training runs behind the row (all seeds)."""
    baseline = seed_results(runs, table["baseline"], variant)["map"]
    baseline_paper = next(
        (r.get("paper") for r in table["rows"] if r["run"] == table["baseline"]), None
    )
    out = []
    for row in table["rows"]:
        sel = seed_results(runs, row["run"], variant)
        record = {"row": row["label"], "run": row["run"], "validation": variant}
        record["seeds"] = len(sel)
        for metric in METRICS:
            values = sel[metric].astype(float) * 100
            record[f"{metric}_mean"] = values.mean() if len(values) else np.nan
            record[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        diff = paired_differences(sel["map"], baseline)
        record.update(difference_statistics(diff))
        is_baseline = row["run"] == table["baseline"]
        test = cs.paired_test(diff.to_numpy(), settings["equivalence_margin"], settings["alpha"])
        record["t"], record["df"], record["p"] = test.t, test.df, test.p
        record["tost_p"] = test.tost_p
        verdict = difference_verdict(diff.to_numpy(), settings)
        record["verdict"] = "baseline" if is_baseline else verdict
        record["paper_map"] = row.get("paper")
        record["paper_direction"] = (
            ""
            if is_baseline
            else paper_direction(row.get("paper"), baseline_paper, row.get("expected"))
        )
        record["agreement"] = agreement(record["verdict"], record["paper_direction"])
        source = converged[converged["run"] == source_run(sweeps, row["run"])]
        record["evaluations"] = int(source["evaluations"].min()) if len(source) else 0
        record["last_two_diff_max"] = source["last_two_diff"].max() if len(source) else np.nan
        record["plateau"] = (
            "n/a" if source.empty else f"{int(source['plateau'].sum())} of {len(source)} seeds"
        )
        out.append(record)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- markdown
def _num(value: float, digits: int = 2, sign: bool = False) -> str:
    if pd.isna(value):
        return "n/a"
    if np.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "n/a" if pd.isna(value) else (f"{value:.3f}" if value >= 0.001 else "<0.001")


def _tost(r: pd.Series, prefix: str = "") -> str:
    p = r[f"{prefix}tost_p"]
    if pd.isna(p):
        return "n/a"
    return f"{'equivalent' if r[f'{prefix}equivalent'] else 'not equivalent'} (p {_p(p)})"


def _seeds(value: float) -> str:
    return "n/a" if pd.isna(value) else str(int(value))


def markdown_claims(summary: pd.DataFrame, variant: str, settings: dict) -> str:
    """The claims of one validation variant as markdown, with the rule's settings."""
    lines = [
        f"**The paper's claims**, validation labels {variant}. Δ = paired per-seed difference "
        "of the claim's run minus the run it is compared with (mAP points, mean ± sd over "
        f"seeds); paired two-sided t-test at {settings['alpha']:g}; TOST at "
        f"±{settings['equivalence_margin']:g} points; seeds for {settings['power']:.0%} power "
        "at the measured sd for the paper's Δ (else the margin).",
        "",
        "| claim | metric | n | Δ | t (df) | p | TOST | verdict | paper Δ | seeds for power | "
        "registered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        paper = (
            _num(r["paper_delta"], sign=True)
            if not pd.isna(r["paper_delta"])
            else (r["paper_direction"])
        )
        lines.append(
            f"| {r['claim']} | {r['metric']} | {r['delta_seeds']} | "
            f"{_pm(r['delta_mean'], r['delta_std'], 2)} | {_num(r['t'])} ({r['df']}) | "
            f"{_p(r['p'])} | {_tost(r)} | **{r['verdict']}** | {paper} | "
            f"{_seeds(r['seeds_for_power'])} | {_registration_cell(r)} |"
        )
    return "\n".join(lines) + "\n"


def _registration_cell(r: pd.Series) -> str:
    """A claim's registration as a table cell: its status, registration time and the
    earliest start of the results it judges."""
    cell = f"{r['registration']} ({r['registered']}"
    if r.get("first_result_started"):
        cell += f"; first result started {r['first_result_started']}"
    return cell + ")"


def markdown_pooled_claims(summary: pd.DataFrame, variant: str, settings: dict) -> str:
    """The pooled claims of one validation variant: all pairs, and the block model."""
    lines = [
        f"**Pooled contrasts**, validation labels {variant}: (a) paired t-test over all seed "
        "pairs (df = pairs - 1); (b) block model Δ = μ + b_setting + e, common effect: t = "
        "mean / (sd_within / √pairs), df = pairs - settings.",
        "",
        "| claim | test | settings (mean Δ each) | pairs | Δ ± sd | t (df) | p | TOST | "
        "verdict | seeds for power | registered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        registered = _registration_cell(r)
        for name, prefix, verdict in [
            ("all pairs", "", "verdict"),
            ("block model", "block_", "block_verdict"),
        ]:
            lines.append(
                f"| {r['claim']} | {name} | {r['settings']} ({r['setting_means']}) | "
                f"{r[prefix + 'delta_seeds']} | "
                f"{_pm(r[prefix + 'delta_mean'], r[prefix + 'delta_std'], 2)} | "
                f"{_num(r[prefix + 't'])} ({r[prefix + 'df']}) | {_p(r[prefix + 'p'])} | "
                f"{_tost(r, prefix)} | **{r[verdict]}** | "
                f"{_seeds(r[prefix + 'seeds_for_power'])} | {registered} |"
            )
    return "\n".join(lines) + "\n"


def _pm(mean: float, std: float, digits: int = 1) -> str:
    if pd.isna(mean):
        return "n/a"
    if pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(summary: pd.DataFrame, table: dict, variant: str) -> str:
    """The summary of one table on one validation variant as markdown."""
    baseline_label = next(r["label"] for r in table["rows"] if r["run"] == table["baseline"])
    lines = [
        f"**{table['title']}**, validation labels {variant} (mAP in %, mean ± std over seeds; "
        f"Δ = paired difference to '{baseline_label}', mean ± std over seeds; p of the paired "
        "two-sided t-test; vs baseline by the verdict rule of claims.md)",
        "",
        "| row | seeds | mAP | Δ mAP | p | vs baseline | rare | common | frequent | paper | "
        "paper says | agrees | plateau (last-two diff) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        is_baseline = r["verdict"] == "baseline"
        delta = "(baseline)" if is_baseline else _pm(r["delta_mean"], r["delta_std"], 2)
        paper = "" if r["paper_map"] is None or pd.isna(r["paper_map"]) else f"{r['paper_map']:.2f}"
        plateau = r["plateau"]
        if not pd.isna(r["last_two_diff_max"]):
            plateau += f" (≤ {r['last_two_diff_max']:.2f})"
        lines.append(
            f"| {r['row']} | {r['seeds']} | {_pm(r['map_mean'], r['map_std'])} | {delta} | "
            f"{'' if is_baseline else _p(r['p'])} | {'' if is_baseline else r['verdict']} | "
            f"{_pm(r['map_rare_mean'], r['map_rare_std'])} | "
            f"{_pm(r['map_common_mean'], r['map_common_std'])} | "
            f"{_pm(r['map_frequent_mean'], r['map_frequent_std'])} | {paper} | "
            f"{r['paper_direction']} | {r['agreement']} | {plateau} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures
def curves(evaluations: pd.DataFrame, run_id: str, variant: str) -> pd.DataFrame:
    """mAP (%) after every evaluation of a training run, mean and std over seeds, by epoch
    over the run."""
    sel = evaluations[
        (evaluations["row"] == run_id)
        & (evaluations["validation"] == variant)
        & (evaluations["kind"] == "training")
    ]
    if sel.empty:
        return pd.DataFrame(columns=["epoch_total", "mean", "std", "seeds"])
    grouped = (sel.assign(map=sel["map"] * 100)).groupby("epoch_total")["map"]
    return pd.DataFrame(
        {"mean": grouped.mean(), "std": grouped.std(ddof=1), "seeds": grouped.count()}
    ).reset_index()


def plot_figure4(evaluations: pd.DataFrame, spec: list[dict], variant: str, path: Path) -> Path:
    """Figure 4: mAP after every epoch per lambda (mean over seeds, band = ± 1 std)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for item in spec:
        c = curves(evaluations, item["run"], variant)
        if c.empty:
            continue
        label = f"{item['label']} (n={c['seeds'].max()})"
        ax.plot(c["epoch_total"], c["mean"], marker="o", label=label)
        band = c["std"].fillna(0)
        ax.fill_between(c["epoch_total"], c["mean"] - band, c["mean"] + band, alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation mAP (%), labels {variant}")
    ax.set_title("Figure 4: mAP over training per soft-balance lambda", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.lines:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_convergence(evaluations: pd.DataFrame, variant: str, path: Path) -> Path:
    """mAP per evaluation for every training run (one panel per run, one line per seed)."""
    sel = evaluations[(evaluations["validation"] == variant) & (evaluations["kind"] == "training")]
    run_ids = sorted(sel["row"].unique()) or ["(no runs)"]
    cols = 4
    rows = int(np.ceil(len(run_ids) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.3 * rows), squeeze=False)
    for ax, run_id in zip(axes.flat, run_ids, strict=False):
        for seed, group in sel[sel["row"] == run_id].groupby("seed"):
            ax.plot(
                group["iteration"], group["map"] * 100, marker=".", color=f"C{seed}",
                label=f"seed {seed}",
            )  # fmt: skip
        ax.set_title(run_id, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(run_ids) :]:
        ax.axis("off")
    fig.supxlabel("iteration", fontsize=9)
    fig.supylabel(f"validation mAP (%), labels {variant}", fontsize=9)
    # one legend entry per seed: each seed has the same colour in every panel
    line_of_label = {
        label: line
        for ax in axes.flat
        for line, label in zip(*ax.get_legend_handles_labels(), strict=True)
    }
    labels = sorted(line_of_label)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    fig.legend([line_of_label[k] for k in labels], labels, loc="center right", fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def per_class_ap(runs: pd.DataFrame, run_id: str, variant: str) -> pd.DataFrame:
    """Per-class AP (%) of a row's final evaluation, mean over seeds, with the class's
    training images."""
    tables = []
    for _, r in runs[(runs["run"] == run_id) & (runs["validation"] == variant)].iterrows():
        t = pd.read_csv(r["per_class_csv"])[["mid", "name", "train_images", "ap"]]
        tables.append(t.assign(seed=r["seed"]))
    if not tables:
        return pd.DataFrame(columns=["mid", "name", "train_images", "ap", "seeds"])
    grouped = pd.concat(tables).groupby(["mid", "name", "train_images"], as_index=False)
    return grouped.agg(ap=("ap", lambda a: a.mean() * 100), seeds=("seed", "count"))


def frequency_bins(train_images: np.ndarray, num_bins: int = 6) -> np.ndarray:
    """Log-spaced bin edges over the classes' training-image counts (at least 1)."""
    counts = np.maximum(np.asarray(train_images, dtype=float), 1)
    return np.geomspace(counts.min(), counts.max() * 1.0001, num_bins + 1)


def plot_figure5(
    runs: pd.DataFrame, spec: list[dict], variant: str, path: Path
) -> tuple[Path, pd.DataFrame]:
    """Figure 5: per-class AP against training images (log x) for each row, points = classes
    (mean over seeds), lines = mean AP per log-spaced frequency bin. Returns the bins."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    binned_rows = []
    tables = {item["label"]: per_class_ap(runs, item["run"], variant) for item in spec}
    all_counts = np.concatenate([t["train_images"].to_numpy() for t in tables.values()] or [[1]])
    edges = frequency_bins(all_counts if len(all_counts) else np.array([1]))
    for i, (label, t) in enumerate(tables.items()):
        if t.empty:
            continue
        color = f"C{i}"
        x = np.maximum(t["train_images"].to_numpy(dtype=float), 1)
        ax.scatter(x, t["ap"], s=6, alpha=0.35, color=color)
        which = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
        centers, means = [], []
        for b in range(len(edges) - 1):
            in_bin = which == b
            if in_bin.any():
                centers.append(np.sqrt(edges[b] * edges[b + 1]))
                means.append(t["ap"].to_numpy()[in_bin].mean())
                binned_rows.append(
                    {
                        "row": label,
                        "min_train_images": edges[b],
                        "max_train_images": edges[b + 1],
                        "classes": int(in_bin.sum()),
                        "mean_ap": means[-1],
                    }
                )
        ax.plot(centers, means, marker="o", color=color, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (hierarchy-expanded)")
    ax.set_ylabel(f"AP (%), mean over seeds, labels {variant}")
    ax.set_title("Figure 5: per-class AP vs class frequency", fontsize=10)
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, pd.DataFrame(binned_rows)


def leaf_parent_table(
    runs: pd.DataFrame, leaf_mids: set[str], labels: dict[str, str], variant: str
) -> pd.DataFrame:
    """Mean AP (%) over leaf classes and over parent classes per row (mean ± std over seeds):
    where a method's mAP change comes from in the hierarchy."""
    records = []
    for run_id, label in labels.items():
        per_seed = []
        sel = runs[(runs["run"] == run_id) & (runs["validation"] == variant)]
        for _, r in sel.iterrows():
            t = pd.read_csv(r["per_class_csv"])
            is_leaf = t["mid"].isin(leaf_mids)
            per_seed.append((t.loc[is_leaf, "ap"].mean() * 100, t.loc[~is_leaf, "ap"].mean() * 100))
        values = np.array(per_seed, dtype=float).reshape(-1, 2)
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.full(2, np.nan)
        records.append(
            {
                "row": label,
                "run": run_id,
                "validation": variant,
                "seeds": len(values),
                "leaf_map_mean": values[:, 0].mean() if len(values) else np.nan,
                "leaf_map_std": std[0],
                "parent_map_mean": values[:, 1].mean() if len(values) else np.nan,
                "parent_map_std": std[1],
            }
        )
    return pd.DataFrame(records)


def leaf_mids_of(hierarchy_json: Path) -> set[str]:
    """Leaf classes of the hierarchy file beside the results (empty when it is absent)."""
    if not hierarchy_json.is_file():
        return set()
    from lsdet.data import Hierarchy

    hierarchy = Hierarchy.from_json(hierarchy_json)
    return {m for m, leaf in zip(hierarchy.mids, hierarchy.leaf_mask, strict=True) if leaf}


# --------------------------------------------------------------------------- registered protocols
# sweeps.yaml blocks whose claims are registered before their runs
PROTOCOLS = ("diagnosis_sweep", "crt_protocol", "crt_m0")


MULTI_LABELLED_CSV = (
    "multi_labelled_classes.csv"  # benchmark, mid (diagnosis.multi_labelled_leaves)
)


def last_two_mean(history: list[dict], per_class: bool = False) -> float | pd.DataFrame:
    """The final metric of the diagnosis sweep: the mean of the last two evaluations' mAP,
    or (per_class) of their per-class APs (mid, ap); nan / empty with fewer than two."""
    if len(history) < 2:
        return pd.DataFrame(columns=["mid", "ap"]) if per_class else np.nan
    last = history[-2:]
    if not per_class:
        return float(np.mean([h["map"] for h in last]))
    tables = [pd.read_csv(h["per_class_csv"])[["mid", "ap"]].set_index("mid") for h in last]
    return ((tables[0]["ap"] + tables[1]["ap"]) / 2).rename("ap").reset_index()


def _protocol_values(
    runs: pd.DataFrame, row: str, metric: str, classes: set[str] | None
) -> pd.Series:
    """Per seed, a diagnosis row's final metric (fraction): mAP of the last two
    evaluations, or the mean of their per-class APs over ``classes``."""
    values = {}
    for _, r in runs[runs["run"] == row].iterrows():
        if metric == "map":
            values[int(r["seed"])] = last_two_mean(r["history"])
        else:
            per_class = last_two_mean(r["history"], per_class=True)
            chosen = per_class[per_class["mid"].isin(classes or set())]["ap"]
            values[int(r["seed"])] = float(chosen.mean()) if len(chosen) else np.nan
    return pd.Series(values, dtype=float)


def _protocol_row(protocol: str, claim: dict, status: str, **values) -> dict:
    return {
        "protocol": protocol,
        "claim": claim["claim"],
        "kind": claim.get("kind", "paired"),
        "status": status,
        "registered": claim.get("registered") or "",
        **values,
    }


def _words(test, expected: str | None, alpha: float) -> str:
    """The verdict words: with a claimed direction the claims' words, else those of table
    rows (higher / lower / equivalent / cannot tell)."""
    if test.n < 2 or np.isnan(test.p):
        return "n/a"
    if expected:
        return cs.verdict(test, expected, alpha)
    if test.p < alpha:
        return "higher" if test.mean > 0 else "lower"
    return "equivalent" if test.equivalent else "cannot tell"


def read_multi_labelled(folder: Path) -> dict[str, set[str]] | None:
    """Per benchmark its multi-labelled classes (<folder>/multi_labelled_classes.csv), or
    None without the file."""
    if not (Path(folder) / MULTI_LABELLED_CSV).is_file():
        return None
    table = pd.read_csv(Path(folder) / MULTI_LABELLED_CSV)
    return {b: set(g["mid"]) for b, g in table.groupby("benchmark")}


def registered_seeds(spec: dict, protocol: str) -> list[int]:
    """The seeds a protocol registered (sweeps.yaml `<protocol>.seeds`): the design its
    claims' verdicts are for."""
    seeds = spec.get("seeds")
    if not seeds:
        raise ValueError(f"sweeps.yaml: `{protocol}.seeds` is missing; a claim's design needs it")
    return [int(s) for s in seeds]


CRT_BASELINE_ARM = "cs_default"  # the arm the flips are judged against (crt_protocol.claims)


@dataclass
class CrtChoice:
    """The arm the cRT results pick for confirmation by full training (sweeps.yaml
    `crt_protocol.confirm`), None when the results are incomplete or no arm qualifies, and
    why."""

    arm: str | None
    reason: str
    complete: bool


def choose_crt_confirmation(sweeps: dict, results_root: Path) -> CrtChoice:
    """The registered rule of `crt_protocol.confirm`: once every arm has a result for every
    registered seed, among the arms a claim compares with cs_default, those whose paired
    t-test at alpha (the verdict rule, sweeps.yaml `statistics.alpha`) is significant with a
    positive mean Δ qualify, and the one with the highest mean Δ is chosen; none qualifies:
    no confirmation."""
    spec = sweeps["crt_protocol"]
    alpha = float(sweeps["statistics"]["alpha"])
    seeds = [int(s) for s in spec["seeds"]]
    folder = Path(results_root) / spec["results"]
    runs = collect_results(folder)[0]
    have = set(zip(runs["run"], runs["seed"].astype(int), strict=True))
    needed = {(arm, seed) for arm in spec["arms"] for seed in seeds}
    if not needed <= have:
        return CrtChoice(
            None,
            f"the cRT results are incomplete ({len(needed & have)} of {len(needed)} arm and "
            "seed results): the confirmation waits for all of them",
            False,
        )
    baseline = seed_results(runs, CRT_BASELINE_ARM, "as_train")["map"]
    qualified = []  # (mean Δ, arm, p)
    lines = []
    for claim in spec["claims"]:
        if claim["against"] != CRT_BASELINE_ARM:
            continue
        arm = claim["run"]
        values = seed_results(runs, arm, "as_train")["map"]
        diff = paired_differences(values, baseline)
        test = cs.paired_test(diff[diff.index.isin(seeds)].to_numpy(), alpha=alpha)
        p = f"= {test.p:.3f}" if test.p >= 0.001 else "< 0.001"
        lines.append(f"{arm} {test.mean:+.2f} (t({test.df}) = {test.t:.2f}, p {p})")
        if test.p < alpha and test.mean > 0:
            qualified.append((test.mean, arm, test.p))
    judged = "; ".join(lines)
    if not qualified:
        return CrtChoice(
            None,
            f"no arm is significantly higher than {CRT_BASELINE_ARM} (paired t-test at "
            f"{alpha:g}; mean Δ in mAP points: {judged}): nothing to confirm",
            True,
        )
    mean, arm, _ = max(qualified)
    return CrtChoice(
        arm,
        f"{arm}: the highest mean Δ ({mean:+.2f} points) of the arms significantly higher "
        f"than {CRT_BASELINE_ARM} ({', '.join(a for _, a, _ in sorted(qualified, reverse=True))}"
        f"; {judged})",
        True,
    )


def summarize_protocols(results_root: Path, sweeps: dict, settings: dict) -> pd.DataFrame:
    """Every claim of the registered protocols (sweeps.yaml `diagnosis_sweep:`, `crt_protocol:`
    and `crt_m0:`), on the results in <results_root>/<block's results>/. Diagnosis claims:
    kind slope (the slope of the per-seed Δ over m, cs.slope_test, TOST at margin / the m
    range), pooled (block model over the benchmarks) or equivalence; cRT claims: paired by
    seed; the confirmation of the cRT's chosen arm by full training
    (summarize_crt_confirmation). Only the registered seeds count.

    Status: "not run yet" without a seed pair; "in progress: k of n seed pairs" while the
    registered design (n = benchmarks x registered seeds) is incomplete: the interim estimate
    and its sd only, no t, p, TOST or verdict (the verdict rule holds for the registered n,
    and a test repeated as the results arrive would not keep its 5% level); "run" when all n
    pairs are there, with the test and the verdict."""
    margin, alpha = settings["equivalence_margin"], settings["alpha"]
    rows = []
    for protocol in PROTOCOLS:
        spec = sweeps.get(protocol)
        if not spec:
            continue
        seeds = registered_seeds(spec, protocol)
        folder = Path(results_root) / spec["results"]
        runs = collect_results(folder)[0] if (folder / "runs").is_dir() else pd.DataFrame()
        multi_labelled = read_multi_labelled(folder)
        for claim in spec.get("claims") or []:
            # a diagnosis claim pairs its two runs on each of its benchmarks; a cRT claim
            # pairs two arms on one detector's features
            if "benchmarks" not in claim:
                pairs = [(claim["run"], claim["against"], None)]
            else:
                pairs = [
                    (f"{claim['run']}_{b}", f"{claim['against']}_{b}", b)
                    for b in claim["benchmarks"]
                ]
            present = [p for p in pairs if not runs.empty and {p[0], p[1]} <= set(runs["run"])]
            if not present:
                rows.append(_protocol_row(protocol, claim, "not run yet"))
                continue
            metric = claim.get("metric", "map")
            if metric == "map_multi_labelled" and multi_labelled is None:
                rows.append(
                    _protocol_row(protocol, claim, f"needs {spec['results']}/{MULTI_LABELLED_CSV}")
                )
                continue
            diffs = []  # (benchmark, Δ per registered seed in points)
            for run_id, against, benchmark in present:
                if benchmark is None:
                    a = seed_results(runs, run_id, "as_train")["map"]
                    b = seed_results(runs, against, "as_train")["map"]
                else:
                    classes = (multi_labelled or {}).get(benchmark, set())
                    a = _protocol_values(runs, run_id, metric, classes)
                    b = _protocol_values(runs, against, metric, classes)
                d = paired_differences(a, b)
                diffs.append((benchmark, d[d.index.isin(seeds)]))
            kind = claim.get("kind", "paired")
            if kind == "slope":
                rates = {b: float(v["multi_label_rate"]) for b, v in spec["benchmarks"].items()}
                x = np.concatenate([[rates[b]] * len(d) for b, d in diffs])
                y = np.concatenate([d.to_numpy() for _, d in diffs])
                span = max(rates.values()) - min(rates.values())
                test = cs.slope_test(x, y, margin / span, alpha)
                # sd of Δ about the line (se of the slope = sd / sqrt(sum (x - mean x)^2))
                sd = test.se * np.sqrt(((x - x.mean()) ** 2).sum()) if len(x) else np.nan
                se = test.se
            elif kind == "pooled":
                test = cs.block_test([d.to_numpy() for _, d in diffs], margin, alpha)
                sd, se = test.sd, test.sd / np.sqrt(test.n) if test.n else np.nan
            else:
                test = cs.paired_test(
                    np.concatenate([d.to_numpy() for _, d in diffs]), margin, alpha
                )
                sd, se = test.sd, test.sd / np.sqrt(test.n) if test.n else np.nan
            starts = list(runs[runs["run"].isin({r for p in present for r in p[:2]})]["started_at"])
            pairs_done, pairs_registered = sum(len(d) for _, d in diffs), len(pairs) * len(seeds)
            rows.append(
                _judged_row(
                    protocol, claim, test, sd, se, pairs_done, pairs_registered, starts, alpha
                )
            )
        if protocol == "crt_protocol" and spec.get("confirm"):
            rows.append(summarize_crt_confirmation(results_root, sweeps, settings))
    return pd.DataFrame(rows)


def _judged_row(
    protocol: str,
    claim: dict,
    test,
    sd: float,
    se: float,
    pairs_done: int,
    pairs_registered: int,
    starts: list[str | None],
    alpha: float,
) -> dict:
    """A registered claim's row: its estimate and registration status; its test and verdict
    only when every registered seed pair is there ("in progress: k of n seed pairs" before)."""
    registration, earliest = registration_status(claim.get("registered"), starts)
    values = dict(
        estimate=test.mean, sd=sd, se=se, n=test.n, pairs=pairs_done,
        registered_pairs=pairs_registered, registration=registration,
        first_result_started=earliest,
    )  # fmt: skip
    if pairs_done < pairs_registered:
        status = f"in progress: {pairs_done} of {pairs_registered} seed pairs"
        untested = dict(df=np.nan, t=np.nan, p=np.nan, tost_p=np.nan, verdict="")
        return _protocol_row(protocol, claim, status, **values, **untested)
    return _protocol_row(
        protocol, claim, "run", **values, df=test.df, t=test.t, p=test.p,
        tost_p=test.tost_p, verdict=_words(test, claim.get("expected"), alpha),
    )  # fmt: skip


def summarize_crt_confirmation(results_root: Path, sweeps: dict, settings: dict) -> dict:
    """The claim of `crt_protocol.confirm`: the arm the cRT results pick
    (choose_crt_confirmation), trained in full (crt_confirm_<arm>, results in <crt
    results>/confirm/), against the run it names (t1_concurrent_softmax, results of the
    detector's size), paired by seed over the confirmation's seeds. The metric is the one
    every claim of the converged sweep judges: the mAP of a run's final evaluation, on its
    own validation labels (as_train). Status "waits for the cRT results" or "no arm to
    confirm" until an arm is chosen; then as every registered claim (_judged_row)."""
    spec = sweeps["crt_protocol"]
    confirm = spec["confirm"]
    margin, alpha = settings["equivalence_margin"], settings["alpha"]
    seeds = [int(s) for s in confirm["seeds"]]
    choice = choose_crt_confirmation(sweeps, results_root)
    against = confirm["against"]
    arm_run = f"crt_confirm_{choice.arm}" if choice.arm else "crt_confirm_<arm>"
    claim = {
        "claim": f"cRT confirmation: {arm_run} (full training) beats {against}",
        "kind": "paired",
        "expected": confirm.get("expected"),
        "registered": confirm.get("registered"),
    }
    if not choice.complete:
        return _protocol_row("crt_protocol", claim, "waits for the cRT results")
    if choice.arm is None:
        return _protocol_row("crt_protocol", claim, "no arm to confirm")
    folders = {
        arm_run: Path(results_root) / spec["results"] / "confirm",
        against: Path(results_root) / spec["detector"]["size"],
    }
    values, starts = {}, []
    for run_id, folder in folders.items():
        runs = collect_results(folder)[0]
        own = seed_results(runs, run_id, "as_train")
        values[run_id] = own["map"]
        starts += list(own[own.index.isin(seeds)]["started_at"])
    if values[arm_run].empty:
        return _protocol_row("crt_protocol", claim, "not run yet")
    diff = paired_differences(values[arm_run], values[against])
    diff = diff[diff.index.isin(seeds)]
    test = cs.paired_test(diff.to_numpy(), margin, alpha)
    se = test.sd / np.sqrt(test.n) if test.n else np.nan
    return _judged_row(
        "crt_protocol", claim, test, test.sd, se, len(diff), len(seeds), starts, alpha
    )


def _in_progress(status: str) -> bool:
    return str(status).startswith("in progress")


def markdown_protocols(summary: pd.DataFrame) -> str:
    """The registered protocols' claims as markdown: "not run yet" until results are there;
    while a claim's registered design is incomplete its interim estimate and sd, no test."""
    lines = [
        "**Registered before their runs** (sweeps.yaml `diagnosis_sweep:` and "
        "`crt_protocol:`, before the diagnosis runs; `crt_m0:`, after the interim m = 0 "
        "result of the diagnosis sweep, before its own runs; estimate = mean Δ, or the "
        "slope of Δ over m, in mAP points; sd = sd of Δ, about the line for the slope). "
        "A claim gets its test and verdict only when every registered seed pair is there: "
        "the verdict rule is for the registered n. "
        "While it is in progress the table shows the interim estimate and its sd only.",
        "",
        "| protocol | claim | status | estimate | sd | t (df) | p | TOST p | verdict | "
        "registered |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        judged = r["status"] == "run"
        if judged:
            cells = [
                _num(r["estimate"], sign=True),
                _num(r["sd"]),
                f"{_num(r['t'])} ({int(r['df'])})",
                _p(r["p"]),
                _p(r["tost_p"]),
                f"**{r['verdict']}**",
            ]
        elif _in_progress(r["status"]):
            cells = [_num(r["estimate"], sign=True), _num(r["sd"]), "", "", "", "no verdict yet"]
        else:
            cells = ["", "", "", "", "", ""]
        registered = (
            _registration_cell(r) if judged or _in_progress(r["status"]) else r["registered"]
        )
        lines.append(
            f"| {r['protocol']} | {r['claim']} | {r['status']} | {' | '.join(cells)} | "
            f"{registered} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- image bootstrap
BOOTSTRAP_CSV = "bootstrap.csv"  # in the diagnosis protocol's results folder
BOOTSTRAP_REPLICATES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_KEY = [
    "run", "against", "benchmark", "seed", "metric", "replicates", "bootstrap_seed",
    "run_started", "against_started",
]  # fmt: skip


def _bootstrap_key(values) -> tuple[str, ...]:
    """A bootstrap.csv key as text (a value read back from the file compares equal)."""
    return tuple("" if v is None or pd.isna(v) else str(v) for v in values)


def _bootstrap_metrics(spec: dict) -> dict[tuple[str, str, str], set[str]]:
    """(run, against, benchmark) -> the metrics the diagnosis claims judge on it."""
    wanted: dict[tuple[str, str, str], set[str]] = {}
    for claim in spec.get("claims") or []:
        for benchmark in claim["benchmarks"]:
            key = (claim["run"], claim["against"], benchmark)
            wanted.setdefault(key, set()).add(claim.get("metric", "map"))
    return wanted


def diagnosis_bootstrap(
    folder: Path,
    spec: dict,
    *,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = BOOTSTRAP_SEED,
    previous: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The image-bootstrap interval of the paired Δ (points) of every diagnosis (benchmark,
    seed) pair whose two runs have the per-image records of their last two evaluations, for
    each metric a diagnosis claim judges on that benchmark (map; map_multi_labelled with
    the benchmark's multi-labelled classes): experiments/bootstrap.py, the same resamples
    for both runs and both metrics. Rows of ``previous`` (an earlier bootstrap.csv) with the
    same key (runs, seed, metric, replicates, seed of the resamples and the runs' start
    times) are kept, not computed again. Also returns the pairs left out and why."""
    import bootstrap  # experiments/bootstrap.py

    runs = collect_results(folder)[0] if (Path(folder) / "runs").is_dir() else pd.DataFrame()
    if runs.empty:
        return pd.DataFrame(columns=[*BOOTSTRAP_KEY]), []
    multi_labelled = read_multi_labelled(folder) or {}
    done = {}
    if previous is not None and not previous.empty:
        for _, r in previous.iterrows():
            done[_bootstrap_key(r[c] for c in BOOTSTRAP_KEY)] = r.to_dict()
    seeds = registered_seeds(spec, "diagnosis_sweep")
    rows, skipped = [], []
    for (run_id, against, benchmark), metrics in _bootstrap_metrics(spec).items():
        row_a, row_b = f"{run_id}_{benchmark}", f"{against}_{benchmark}"
        a, b = seed_results(runs, row_a, "as_train"), seed_results(runs, row_b, "as_train")
        for s in sorted(set(a.index) & set(b.index) & set(seeds)):
            class_sets = {"map": None}
            if "map_multi_labelled" in metrics and multi_labelled.get(benchmark):
                class_sets["map_multi_labelled"] = sorted(multi_labelled[benchmark])
            started = (a.at[s, "started_at"], b.at[s, "started_at"])
            keys = {
                m: (run_id, against, benchmark, int(s), m, replicates, seed, *started)
                for m in class_sets
            }
            if all(_bootstrap_key(k) in done for k in keys.values()):
                rows += [done[_bootstrap_key(k)] for k in keys.values()]
                continue
            result_dirs = [
                Path(folder) / "runs" / row / "val-as_train" / f"seed{s}" for row in (row_a, row_b)
            ]
            try:
                records = [bootstrap.run_records(d) for d in result_dirs]
                intervals = bootstrap.paired_differences(
                    *records, class_sets, replicates=replicates, seed=seed, level=BOOTSTRAP_LEVEL
                )
            except (FileNotFoundError, ValueError) as error:
                skipped.append(f"{row_a} - {row_b} seed {s}: {error}")
                continue
            for metric, interval in intervals.items():
                rows.append(
                    dict(
                        zip(BOOTSTRAP_KEY, keys[metric], strict=True),
                        images=records[0][0].num_images,
                        estimate=interval.estimate * 100,
                        low=interval.low * 100,
                        high=interval.high * 100,
                        bootstrap_sd=float(np.nanstd(interval.replicates, ddof=1) * 100),
                        level=interval.level,
                    )
                )
    return pd.DataFrame(rows), skipped


def markdown_bootstrap(table: pd.DataFrame, skipped: list[str], where: str) -> str:
    """What the image bootstrap measures, and per benchmark and metric the mean bootstrap sd
    of one pair's Δ beside the seed-to-seed sd of Δ (two or more seed pairs)."""
    lines = [
        f"**Image bootstrap of the diagnosis pairs** ({where}; per (benchmark, seed) pair the "
        "percentile interval of Δ = CS - softmax, mAP points, over image resamples of the "
        "validation split, both runs on the same resamples). It measures the evaluation-set "
        "noise of one pair of runs (which images happen to be in the validation split), not "
        "the seed-to-seed noise the registered paired tests use; the seed-to-seed sd of Δ "
        "contains the evaluation-set noise and the training noise.",
        "",
    ]
    if table.empty:
        lines.append("No pair has the per-image records of its last two evaluations yet.")
    else:
        lines += [
            "| benchmark | metric | seed pairs | resamples | mean bootstrap sd of Δ | "
            "seed-to-seed sd of Δ |",
            "|---|---|---|---|---|---|",
        ]
        for (benchmark, metric), g in table.groupby(["benchmark", "metric"], sort=True):
            seed_sd = g["estimate"].std(ddof=1) if len(g) > 1 else np.nan
            lines.append(
                f"| {benchmark} | {metric} | {len(g)} | {int(g['replicates'].iloc[0])} | "
                f"{_num(g['bootstrap_sd'].mean())} | "
                f"{_num(seed_sd) if len(g) > 1 else 'n/a (one seed pair)'} |"
            )
    if skipped:
        lines += ["", f"Pairs without a bootstrap ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def write_diagnosis_bootstrap(results_root: Path, sweeps: dict) -> str:
    """The image bootstrap of the diagnosis protocol (diagnosis_bootstrap) into
    <results_root>/<diagnosis results>/bootstrap.csv, reusing the rows of the file already
    there; returns its markdown ("" without the protocol or any result)."""
    spec = sweeps.get("diagnosis_sweep")
    if not spec:
        return ""
    folder = Path(results_root) / spec["results"]
    if not (folder / "runs").is_dir():
        return ""
    csv = folder / BOOTSTRAP_CSV
    previous = pd.read_csv(csv) if csv.is_file() else None
    table, skipped = diagnosis_bootstrap(folder, spec, previous=previous)
    table.to_csv(csv, index=False, float_format="%.5f")
    return markdown_bootstrap(table, skipped, f"{spec['results']}/{BOOTSTRAP_CSV}")


# --------------------------------------------------------------------------- all
def expected_results(sweeps: dict) -> set[tuple[str, str, int]]:
    """(run id, validation variant, seed) of every result the sweep should have."""
    variants: dict[str, set[str]] = {}
    for table in sweeps["tables"].values():
        for row in table["rows"]:
            variants.setdefault(row["run"], set()).update(table.get("validation") or [])
    run_ids = list(sweeps["runs"]) + list(sweeps.get("rescoring") or {})
    return {
        (run_id, variant, seed)
        for run_id in run_ids
        for variant in variants.get(run_id) or {"as_train"}
        for seed in sweeps["seeds"]
    }


def final_per_class(result: pd.Series) -> pd.DataFrame:
    """The per-class APs (mid, ap) of a result's final evaluation."""
    return pd.read_csv(result["per_class_csv"])


def last_two_per_class(result: pd.Series) -> pd.DataFrame:
    """The per-class APs (mid, ap) of the diagnosis sweep's final metric: the mean of a
    training result's last two evaluations (last_two_mean)."""
    return last_two_mean(result["history"], per_class=True)


def pair_group_differences(
    runs: pd.DataFrame,
    run_id: str,
    against: str,
    variant: str,
    groups: pd.DataFrame,
    per_class: Callable[[pd.Series], pd.DataFrame] = final_per_class,
) -> pd.DataFrame:
    """Per seed both runs have and class group: the mean AP difference (points) of ``run_id``
    minus ``against`` on one validation variant (diagnosis.group_differences), each result's
    per-class APs read by ``per_class``."""
    run_results = seed_results(runs, run_id, variant)
    against_results = seed_results(runs, against, variant)
    per_seed = {
        int(seed): (per_class(run_results.loc[seed]), per_class(against_results.loc[seed]))
        for seed in sorted(run_results.index.intersection(against_results.index))
    }
    return diagnosis.group_differences(per_seed, groups)


def diagnosis_outputs(
    runs: pd.DataFrame, sweeps: dict, results_dir: Path, variant: str
) -> tuple[str, pd.DataFrame]:
    """The per-class diagnosis of every pair of sweeps.yaml's `diagnosis:` block on one
    validation variant: markdown, and the long table (pair, grouping, group, seed, classes,
    delta); writes diagnosis_<variant>.png."""
    spec = sweeps["diagnosis"]
    groups_csv = results_dir / spec.get("class_groups", diagnosis.CLASS_GROUPS_CSV)
    if not groups_csv.is_file():
        raise SystemExit(
            f"{groups_csv} not found (sweeps.yaml `diagnosis:`): make it with "
            f"python experiments/diagnosis.py --results {results_dir}"
        )
    groups = diagnosis.read_class_groups(groups_csv)
    texts, tables, by_pair = [], [], {}
    for pair in spec["pairs"]:
        diffs = pair_group_differences(runs, pair["run"], pair["against"], variant, groups)
        if diffs.empty:
            continue
        by_pair[pair["label"]] = diffs
        texts.append(diagnosis.markdown_diagnosis(diffs, pair["label"], variant))
        tables.append(diffs.assign(pair=pair["label"], run=pair["run"], against=pair["against"]))
    diagnosis.plot_diagnosis(by_pair, variant, results_dir / f"diagnosis_{variant}.png")
    table = pd.concat(tables) if tables else pd.DataFrame()
    return "\n".join(texts), table


@dataclass
class PairDiagnosis:
    """The class-group differences of one pair of rows (pair_group_differences)."""

    label: str
    run: str
    against: str
    diffs: pd.DataFrame


def write_pair_diagnoses(folder: Path, pairs: list[PairDiagnosis], heading: str) -> str:
    """Writes <folder>/diagnosis.md (``heading``, then one table per pair), diagnosis.csv (the
    long table: grouping, group, seed, classes, delta, pair, run, against) and diagnosis.png
    (validation labels as_train) of the pairs that have a seed in common; returns the
    markdown, "" when no pair has one (nothing written)."""
    pairs = [p for p in pairs if not p.diffs.empty]
    if not pairs:
        return ""
    diagnosis.plot_diagnosis(
        {p.label: p.diffs for p in pairs}, "as_train", folder / "diagnosis.png"
    )
    table = pd.concat([p.diffs.assign(pair=p.label, run=p.run, against=p.against) for p in pairs])
    table.to_csv(folder / "diagnosis.csv", index=False, float_format="%.3f")
    texts = [diagnosis.markdown_diagnosis(p.diffs, p.label, "as_train") for p in pairs]
    text = heading + "\n\n" + "\n".join(texts)
    (folder / "diagnosis.md").write_text(text)
    return text


def pair_diagnoses(
    runs: pd.DataFrame, pairs: list[tuple[str, str]], groups: pd.DataFrame, kind: str
) -> list[PairDiagnosis]:
    """One PairDiagnosis ("<kind> <run> - <against>") per pair of rows, on their final
    evaluations on the as_train labels."""
    return [
        PairDiagnosis(
            f"{kind} {run_id} - {against}",
            run_id,
            against,
            pair_group_differences(runs, run_id, against, "as_train", groups),
        )
        for run_id, against in pairs
    ]


def benchmark_class_groups_csv(results_root: Path, sweeps: dict, benchmark: str) -> Path:
    """The class groups of a diagnosis benchmark: <diagnosis results>/<the
    `diagnosis.dose_response.class_groups` pattern for the benchmark>."""
    pattern = sweeps["diagnosis"]["dose_response"]["class_groups"]
    folder = Path(results_root) / sweeps["diagnosis_sweep"]["results"]
    return folder / pattern.format(benchmark=benchmark)


def crt_diagnosis_outputs(
    results_root: Path, sweeps: dict, groups_csv: Path, block: str = "crt_protocol"
) -> str:
    """The per-class diagnosis of a cRT protocol's arms (sweeps.yaml `crt_protocol:` or
    `crt_m0:`), descriptive: per class group and seed, the AP difference of every
    concurrent-softmax arm against softmax and of the other pairs its registered claims
    compare (crt_protocol: every flip against cs_default), over the seeds both arms have.
    The class groups are those of the detector's benchmark: ``groups_csv`` (the converged
    results' class_groups.csv) for a detector of the converged sweep, <diagnosis
    results>/class_groups_<benchmark>.csv for a diagnosis run's. Writes <block
    results>/diagnosis.md, diagnosis.csv and diagnosis.png; returns the markdown ("" when
    there are no results or class groups)."""
    spec = sweeps.get(block)
    folder = Path(results_root) / spec["results"] if spec else None
    if folder is None or not (folder / "runs").is_dir():
        return ""
    benchmark = spec["detector"].get("benchmark")
    if benchmark is not None:
        groups_csv = benchmark_class_groups_csv(results_root, sweeps, benchmark)
    if not groups_csv.is_file():
        return ""
    runs = collect_results(folder)[0]
    arms = [arm for arm in spec["arms"] if arm in set(runs["run"])]
    pairs = [(arm, "softmax") for arm in arms if arm != "softmax" and "softmax" in arms]
    pairs += [
        (claim["run"], claim["against"])
        for claim in spec.get("claims") or []
        if {claim["run"], claim["against"]} <= set(arms)
        and (claim["run"], claim["against"]) not in pairs
    ]
    groups = diagnosis.read_class_groups(groups_csv)
    diagnoses = pair_diagnoses(runs, pairs, groups, "cRT")
    return write_pair_diagnoses(
        folder,
        diagnoses,
        f"Per-class diagnosis of the cRT arms of sweeps.yaml `{block}:` (descriptive, no test: "
        "the registered claims are judged on the mAP in the converged results' claims.md)",
    )


def confirmation_diagnosis_outputs(results_root: Path, sweeps: dict, groups_csv: Path) -> str:
    """The per-class diagnosis of the cRT confirmation by full training (sweeps.yaml
    `crt_protocol.confirm`), descriptive: every crt_confirm_<arm> run against the run the
    claim names (t1_concurrent_softmax) and against the detector's row (t1_softmax), final
    evaluation, over the seeds both have. The runs train on the converged benchmark, so its
    class groups are the converged results' class_groups.csv. Writes <crt
    results>/confirm/diagnosis.md, diagnosis.csv and diagnosis.png; returns the markdown (""
    without confirmation results)."""
    spec = sweeps.get("crt_protocol") or {}
    if not spec.get("confirm") or not groups_csv.is_file():
        return ""
    folder = Path(results_root) / spec["results"] / "confirm"
    confirm_runs = collect_results(folder)[0]
    if confirm_runs.empty:
        return ""
    size_runs = collect_results(Path(results_root) / spec["detector"]["size"])[0]
    runs = pd.concat([confirm_runs, size_runs], ignore_index=True)
    groups = diagnosis.read_class_groups(groups_csv)
    pairs = [
        (run_id, against)
        for run_id in sorted(set(confirm_runs["run"]))
        for against in (spec["confirm"]["against"], spec["detector"]["run"])
    ]
    diagnoses = pair_diagnoses(runs, pairs, groups, "full training")
    return write_pair_diagnoses(
        folder,
        diagnoses,
        "Per-class diagnosis of the cRT confirmation by full training (descriptive, no test: "
        "the registered claim is judged on the mAP in the converged results' registered.csv)",
    )


def crt_features_results(results_root: Path, sweeps: dict) -> pd.DataFrame:
    """The cRT results of the arms of sweeps.yaml `crt_features:` (post hoc, descriptive) per
    detector: the crt_protocol's own (the softmax detector, crt_protocol.detector) first, then
    each detector of `crt_features.detectors` (<crt_features results>/<run>_s<seed>/) that has
    results; RUN_COLUMNS plus ``detector`` (<run>_s<seed>) and ``arm``, ``run`` being
    "<arm> @ <detector>" so that rows of different detectors pair by seed."""
    spec, crt = sweeps.get("crt_features"), sweeps.get("crt_protocol")
    if not spec or not crt:
        return pd.DataFrame(columns=[*RUN_COLUMNS, "detector", "arm"])
    root = Path(results_root)
    reference = crt["detector"]
    folders = {f"{reference['run']}_s{reference['seed']}": root / crt["results"]}
    for detector in spec["detectors"]:
        label = f"{detector['run']}_s{detector['seed']}"
        folders[label] = root / spec["results"] / label
    frames = []
    for label, folder in folders.items():
        runs = collect_results(folder)[0]
        runs = runs[runs["run"].isin(spec["arms"])]
        if not runs.empty:
            frames.append(
                runs.assign(detector=label, arm=runs["run"], run=runs["run"] + " @ " + label)
            )
    if not frames:
        return pd.DataFrame(columns=[*RUN_COLUMNS, "detector", "arm"])
    runs = pd.concat(frames, ignore_index=True)
    # the block's detector and arm order, not the folders' alphabetical one
    order = [list(folders).index(d) * len(spec["arms"]) + spec["arms"].index(a)
             for d, a in zip(runs["detector"], runs["arm"], strict=True)]  # fmt: skip
    return runs.assign(order=order).sort_values(["order", "seed"]).drop(columns="order")


def crt_features_outputs(results_root: Path, sweeps: dict, groups_csv: Path) -> str:
    """The cRT arms on the features of the detectors of sweeps.yaml `crt_features:` beside the
    same arms on the softmax detector's (crt_features_results), descriptive: summary.csv (per
    detector and arm: mAP mean, sd and seeds, points) and, per detector, the class-group AP
    differences of the softmax classifier on its features minus on the softmax detector's
    (where the features lose) and of every other arm minus softmax on its features (what the
    loss does to the classifier there), over the cRT seeds both have. The detectors train on
    the converged benchmark, so its class groups are the converged results' class_groups.csv.
    Writes <crt_features results>/summary.csv, diagnosis.md, diagnosis.csv and diagnosis.png;
    returns the markdown ("" without results on a detector of the block)."""
    runs = crt_features_results(results_root, sweeps)
    if runs.empty or runs["detector"].nunique() < 2 or not groups_csv.is_file():
        return ""
    spec, crt = sweeps["crt_features"], sweeps["crt_protocol"]
    folder = Path(results_root) / spec["results"]
    reference = f"{crt['detector']['run']}_s{crt['detector']['seed']}"
    summary = (
        runs.assign(map=runs["map"] * 100)
        .groupby(["detector", "arm"], sort=False)["map"]
        .agg(map_mean="mean", map_std="std", seeds="count")
        .reset_index()
    )
    summary.to_csv(folder / "summary.csv", index=False, float_format="%.3f")
    groups = diagnosis.read_class_groups(groups_csv)
    pairs = []
    for detector in [d for d in runs["detector"].unique() if d != reference]:
        pairs.append((f"softmax @ {detector}", f"softmax @ {reference}"))
        pairs += [
            (f"{arm} @ {detector}", f"softmax @ {detector}")
            for arm in spec["arms"]
            if arm != "softmax"
        ]
    diagnoses = pair_diagnoses(runs, pairs, groups, "cRT")
    lines = [
        "cRT arms on the features of detectors trained in full with concurrent softmax, beside "
        f"the softmax detector's ({reference}; sweeps.yaml `crt_features:`, post hoc, "
        "descriptive: one detector per run and seed, so a difference between detectors "
        "holds their seed-to-seed noise too)",
        "",
        "| detector | arm | mAP (points, mean ± sd) | seeds |",
        "|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r['detector']} | {r['arm']} | {_pm(r['map_mean'], r['map_std'], 2)} | "
            f"{r['seeds']} |"
        )
    return write_pair_diagnoses(folder, diagnoses, "\n".join(lines))


def dose_response_diagnosis_outputs(results_root: Path, sweeps: dict) -> str:
    """The per-class diagnosis of the dose-response benchmarks (sweeps.yaml `diagnosis_sweep`,
    pair and class-group tables named in `diagnosis.dose_response`), descriptive: per
    benchmark, the run minus against on the sweep's final metric (the mean of the last two
    evaluations' per-class APs), by the benchmark's own class groups
    (<diagnosis results>/class_groups_<benchmark>.csv, experiments/diagnosis.py --protocol
    diagnosis). Writes <diagnosis results>/diagnosis.md, diagnosis.csv and diagnosis.png;
    returns the markdown ("" without results), which names the benchmarks whose class groups
    are missing."""
    spec = sweeps.get("diagnosis_sweep")
    dose = (sweeps.get("diagnosis") or {}).get("dose_response")
    if not spec or not dose:
        return ""
    folder = Path(results_root) / spec["results"]
    runs = collect_results(folder)[0]
    if runs.empty:
        return ""
    diagnoses, without_groups = [], []
    for benchmark, settings in spec["benchmarks"].items():
        groups_csv = benchmark_class_groups_csv(results_root, sweeps, benchmark)
        if not groups_csv.is_file():
            without_groups.append(benchmark)
            continue
        run_id, against = f"{dose['run']}_{benchmark}", f"{dose['against']}_{benchmark}"
        diffs = pair_group_differences(
            runs,
            run_id,
            against,
            "as_train",
            diagnosis.read_class_groups(groups_csv),
            per_class=last_two_per_class,
        )
        label = f"m = {settings['multi_label_rate']:g}: {dose['run']} - {dose['against']}"
        diagnoses.append(PairDiagnosis(label, run_id, against, diffs))
    heading = (
        "Per-class diagnosis of the dose-response benchmarks (descriptive, no test: the "
        "registered claims are judged in the converged results' registered.csv); final metric: "
        "the mean of the last two evaluations' per-class APs"
    )
    if without_groups:
        heading += (
            f". No class groups for {', '.join(without_groups)}: make them with python "
            "experiments/diagnosis.py --protocol diagnosis"
        )
    return write_pair_diagnoses(folder, diagnoses, heading)


def aggregate(results_dir: Path, sweeps: dict) -> str:
    """Writes every output of the module docstring into results_dir; returns the markdown of
    the tables and the note of what is missing."""
    results_dir = Path(results_dir)
    settings = statistics_settings(sweeps)
    runs, incomplete = collect_results(results_dir)
    # Seeds beyond the sweep's (t1_concurrent_softmax 3-7, the baseline of the cRT
    # confirmation, which registered.csv judges) stay out of the tables, figures and claims,
    # so that every row averages the same seeds.
    in_sweep = runs["seed"].isin(sweeps["seeds"])
    beyond = runs[~in_sweep]
    runs = align_buckets(runs[in_sweep], sweeps)
    evaluations = evaluations_table(runs, sweeps)
    evaluations.to_csv(results_dir / "evaluations.csv", index=False, float_format="%.5f")
    portable = runs.drop(columns=["history"])  # file paths relative to the results folder
    portable["per_class_csv"] = [os.path.relpath(p, results_dir) for p in runs["per_class_csv"]]
    portable.to_csv(results_dir / "all_runs.csv", index=False, float_format="%.5f")
    converged = convergence_table(runs)
    converged.to_csv(results_dir / "convergence.csv", index=False, float_format="%.3f")
    texts = []
    variants_used: list[str] = []
    for key, table in sweeps["tables"].items():
        for variant in table.get("validation") or ["as_train"]:
            variants_used += [variant] if variant not in variants_used else []
            summary = summarize_table(runs, table, variant, converged, sweeps, settings)
            summary.to_csv(results_dir / f"{key}_{variant}.csv", index=False, float_format="%.3f")
            texts.append(markdown_table(summary, table, variant))
    claim_texts = []
    for variant in variants_used:
        claims = summarize_claims(runs, sweeps.get("claims") or [], variant, settings, sweeps)
        claims.to_csv(results_dir / f"claims_{variant}.csv", index=False, float_format="%.4f")
        claim_texts.append(markdown_claims(claims, variant, settings))
        if sweeps.get("pooled_claims"):
            pooled = summarize_pooled_claims(
                runs, sweeps["pooled_claims"], variant, settings, sweeps
            )
            pooled.to_csv(
                results_dir / f"pooled_claims_{variant}.csv", index=False, float_format="%.4f"
            )
            claim_texts.append(markdown_pooled_claims(pooled, variant, settings))
    protocols = summarize_protocols(results_dir.parent, sweeps, settings)
    if not protocols.empty:
        protocols.to_csv(results_dir / "registered.csv", index=False, float_format="%.4f")
        claim_texts.append(markdown_protocols(protocols))
    bootstrap_text = write_diagnosis_bootstrap(results_dir.parent, sweeps)
    if bootstrap_text:
        claim_texts.append(bootstrap_text)
    (results_dir / "claims.md").write_text("\n".join(claim_texts))
    if sweeps.get("diagnosis"):
        diagnosis_texts = []
        for variant in variants_used:
            text, table = diagnosis_outputs(runs, sweeps, results_dir, variant)
            table.to_csv(results_dir / f"diagnosis_{variant}.csv", index=False, float_format="%.3f")
            diagnosis_texts.append(text)
        (results_dir / "diagnosis.md").write_text("\n".join(diagnosis_texts))
        groups_csv = results_dir / sweeps["diagnosis"].get(
            "class_groups", diagnosis.CLASS_GROUPS_CSV
        )
        for block in ("crt_protocol", "crt_m0"):
            crt_diagnosis_outputs(results_dir.parent, sweeps, groups_csv, block)
        confirmation_diagnosis_outputs(results_dir.parent, sweeps, groups_csv)
        dose_response_diagnosis_outputs(results_dir.parent, sweeps)
        crt_features_outputs(results_dir.parent, sweeps, groups_csv)
    texts = claim_texts + texts
    own = variants_used[0] if variants_used else "as_train"
    plot_convergence(evaluations, own, results_dir / "convergence.png")
    for variant in variants_used:
        curve_rows = [
            c.assign(row=item["label"], run=item["run"], validation=variant)
            for item in sweeps["figure4"]
            if not (c := curves(evaluations, item["run"], variant)).empty
        ]
        if curve_rows:
            pd.concat(curve_rows).to_csv(
                results_dir / f"figure4_map_per_epoch_{variant}.csv",
                index=False,
                float_format="%.3f",
            )
        plot_figure4(
            evaluations, sweeps["figure4"], variant, results_dir / f"figure4_{variant}.png"
        )
        _, binned = plot_figure5(
            runs, sweeps["figure5"], variant, results_dir / f"figure5_{variant}.png"
        )
        binned.to_csv(
            results_dir / f"figure5_ap_by_frequency_bin_{variant}.csv",
            index=False,
            float_format="%.3f",
        )
    leaf_mids = leaf_mids_of(results_dir / "hierarchy.json")
    if leaf_mids:
        labels: dict[str, str] = {}  # run id -> its label in the first table that has it
        for table in sweeps["tables"].values():
            for row in table["rows"]:
                labels.setdefault(row["run"], f"{table['title'].split(':')[0]}: {row['label']}")
        levels = leaf_parent_table(runs, leaf_mids, labels, own)
        levels.to_csv(results_dir / "leaf_parent_map.csv", index=False, float_format="%.3f")
        lines = [
            f"**AP of leaf and of parent classes**, validation labels {own} (%, mean ± std)",
            "",
            "| row | seeds | leaf classes mAP | parent classes mAP |",
            "|---|---|---|---|",
        ]
        for _, r in levels.iterrows():
            leaf = _pm(r["leaf_map_mean"], r["leaf_map_std"])
            parent = _pm(r["parent_map_mean"], r["parent_map_std"])
            lines.append(f"| {r['row']} | {r['seeds']} | {leaf} | {parent} |")
        texts.append("\n".join(lines) + "\n")
    present = set(zip(runs["run"], runs["validation"], runs["seed"], strict=True))
    missing = sorted(expected_results(sweeps) - present)
    not_plateaued = converged[~converged["plateau"]]
    note = (
        f"results: {len(present)}; incomplete or unfinished: {incomplete}; "
        f"missing ({len(missing)}): {[f'{r}/val-{v}/seed{s}' for r, v, s in missing]}; "
        f"training runs without a plateau ({len(not_plateaued)}): "
        f"{[f'{r}/seed{s}' for r, s in zip(not_plateaued['run'], not_plateaued['seed'], strict=True)]}; "
        f"beyond the sweep's seeds, left out of the tables ({len(beyond)}): "
        f"{[f'{r}/val-{v}/seed{s}' for r, v, s in zip(beyond['run'], beyond['validation'], beyond['seed'], strict=True)]}\n"
    )
    (results_dir / "missing.txt").write_text(note)
    all_md = "\n".join(texts)
    (results_dir / "tables.md").write_text(all_md)
    return all_md + "\n" + note


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python experiments/aggregate.py", description=__doc__)
    parser.add_argument(
        "--results", default=str(HERE / "results" / "converged"), help="a size's results folder"
    )
    parser.add_argument("--sweeps", default=str(HERE / "sweeps.yaml"))
    args = parser.parse_args(argv)
    results_dir = Path(args.results)
    if not (results_dir / "runs").is_dir():
        raise SystemExit(f"no results at {results_dir / 'runs'}: run experiments/run_all.py first")
    with open(args.sweeps) as f:
        sweeps = yaml.safe_load(f)
    text = aggregate(results_dir, sweeps)
    print(text)
    return text


if __name__ == "__main__":
    main()
