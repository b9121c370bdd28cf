"""Tables, statistics and figures of a sweep from its results in the repository
(experiments/results/<size>/runs/<run id>/val-<variant>/seed<k>/, written by run_all.py).

    python experiments/aggregate.py --results experiments/results/converged

Writes to the results folder: evaluations.csv (one line per row, validation variant, seed and
evaluation), all_runs.csv (the final evaluation of each), <table>_<variant>.csv and
tables.md (mean ± std over seeds, the paired difference to the table's baseline, whether it is
above seed noise, the paper's number and direction, convergence), claims_<variant>.csv and
claims.md (each claim of sweeps.yaml: the paired difference of its two runs, the same noise
rule, the paper's difference and whether the result agrees), convergence.csv and
convergence.png, Figure 4 and Figure 5 (PNG + CSV), leaf_parent_map.csv and missing.txt.

Seed noise: a row differs from the baseline "above seed noise" when the mean of the per-seed
paired differences is more than two standard errors from 0: |mean d| > 2 sd(d) / sqrt(n)
(n seeds both rows have, n >= 2). Convergence: a run has plateaued when it has at least 4
evaluations and its last two differ by at most 1.0 mAP point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

HERE = Path(__file__).resolve().parent
METRICS = ["map", "map_rare", "map_common", "map_frequent"]
NOISE_STANDARD_ERRORS = 2.0  # |mean paired difference| above this many standard errors
PLATEAU_MIN_EVALUATIONS = 4
PLATEAU_MAX_LAST_DIFF = 1.0  # mAP points between the last two evaluations
RUN_COLUMNS = ["run", "validation", "seed", "kind", *METRICS, "per_class_csv", "history"]
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
    if record["kind"] == "train":
        summary = json.loads((result_dir / "summary.json").read_text())
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
                    "per_class_csv": str(result_dir / h["eval_dir"] / "per_class.csv"),
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
    metrics = json.loads((result_dir / "metrics.json").read_text())
    row = {**out, "kind": "evaluation", **{m: np.nan for m in METRICS}, "map": metrics["map"]}
    buckets_csv = result_dir / "frequency_buckets.csv"
    if buckets_csv.is_file():
        for _, b in pd.read_csv(buckets_csv).iterrows():
            row[f"map_{b['bucket']}"] = float(b["mean_ap"])
    row["per_class_csv"] = str(result_dir / "per_class.csv")
    row["history"] = []
    return row


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
def noise_verdict(diffs: np.ndarray) -> str:
    """ "higher" / "lower" when the mean paired difference is more than
    NOISE_STANDARD_ERRORS standard errors (sd / sqrt(n)) from 0, "within seed noise"
    otherwise, "n/a" with fewer than 2 paired seeds."""
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:
        return "n/a"
    mean, standard_error = diffs.mean(), diffs.std(ddof=1) / np.sqrt(len(diffs))
    if abs(mean) > NOISE_STANDARD_ERRORS * standard_error:
        return "higher" if mean > 0 else "lower"
    return "within seed noise"


def paper_direction(
    paper: float | None, baseline_paper: float | None, expected: str | None = None
) -> str:
    """The paper's direction of a row against its baseline: from the two numbers when the
    paper has both, else the row's `expected` (higher | lower); "" if neither."""
    if paper is not None and baseline_paper is not None and paper != baseline_paper:
        return "higher" if paper > baseline_paper else "lower"
    return expected or ""


def agreement(verdict: str, direction: str) -> str:
    """Whether a row's verdict agrees with the paper's direction."""
    if not direction or verdict == "n/a":
        return ""
    if verdict == "within seed noise":
        return "cannot tell (within seed noise)"
    return "same direction as the paper" if verdict == direction else "opposite to the paper"


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


def summarize_claims(runs: pd.DataFrame, claims: list[dict], variant: str) -> pd.DataFrame:
    """One line per claim of sweeps.yaml on one validation variant: the paired per-seed
    difference of `run` minus `against` on `metric` (default map), the noise verdict, the
    paper's difference (from its two numbers, else its `expected` direction) and whether the
    result agrees with it."""
    out = []
    for claim in claims:
        metric = claim.get("metric", "map")
        diff = paired_differences(
            seed_results(runs, claim["run"], variant)[metric],
            seed_results(runs, claim["against"], variant)[metric],
        )
        paper, paper_against = claim.get("paper") or (None, None)
        record = {"claim": claim["claim"], "run": claim["run"], "against": claim["against"]}
        record.update({"metric": metric, "validation": variant})
        record.update(difference_statistics(diff))
        record["verdict"] = noise_verdict(diff.to_numpy())
        record["paper_delta"] = paper - paper_against if paper is not None else np.nan
        record["paper_direction"] = paper_direction(paper, paper_against, claim.get("expected"))
        record["agreement"] = agreement(record["verdict"], record["paper_direction"])
        out.append(record)
    return pd.DataFrame(out)


def summarize_table(
    runs: pd.DataFrame, table: dict, variant: str, converged: pd.DataFrame, sweeps: dict
) -> pd.DataFrame:
    """One line per table row on one validation variant: mean and sample std (ddof 1) over
    seeds of every metric (%), the paired difference to the baseline (mean, std, standard
    error, seeds), the noise verdict, the paper's number, direction and the agreement, and the
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
        record["verdict"] = "baseline" if is_baseline else noise_verdict(diff.to_numpy())
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
def markdown_claims(summary: pd.DataFrame, variant: str) -> str:
    lines = [
        f"**The paper's claims**, validation labels {variant} (Δ = paired per-seed difference "
        "of the claim's run minus the run it is compared with, in points, mean ± std over "
        "seeds)",
        "",
        "| claim | metric | seeds | Δ | vs seed noise | paper Δ | paper says | agrees |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        paper_delta = "" if pd.isna(r["paper_delta"]) else f"{r['paper_delta']:+.2f}"
        lines.append(
            f"| {r['claim']} | {r['metric']} | {r['delta_seeds']} | "
            f"{_pm(r['delta_mean'], r['delta_std'], 2)} | {r['verdict']} | {paper_delta} | "
            f"{r['paper_direction']} | {r['agreement']} |"
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
        f"Δ = paired difference to '{baseline_label}', mean ± std over seeds)",
        "",
        "| row | seeds | mAP | Δ mAP | vs seed noise | rare | common | frequent | paper | "
        "paper says | agrees | plateau (last-two diff) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
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
            f"{'' if is_baseline else r['verdict']} | "
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


def aggregate(results_dir: Path, sweeps: dict) -> str:
    """Writes every output of the module docstring into results_dir; returns the markdown of
    the tables and the note of what is missing."""
    results_dir = Path(results_dir)
    runs, incomplete = collect_results(results_dir)
    runs = align_buckets(runs, sweeps)
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
            summary = summarize_table(runs, table, variant, converged, sweeps)
            summary.to_csv(results_dir / f"{key}_{variant}.csv", index=False, float_format="%.3f")
            texts.append(markdown_table(summary, table, variant))
    claim_texts = []
    for variant in variants_used:
        claims = summarize_claims(runs, sweeps.get("claims") or [], variant)
        claims.to_csv(results_dir / f"claims_{variant}.csv", index=False, float_format="%.3f")
        claim_texts.append(markdown_claims(claims, variant))
    (results_dir / "claims.md").write_text("\n".join(claim_texts))
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
        f"{[f'{r}/seed{s}' for r, s in zip(not_plateaued['run'], not_plateaued['seed'], strict=True)]}\n"
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
    sys.path.insert(0, str(HERE))
    main()
