"""Tables (markdown + CSV, mean and standard deviation over seeds) and Figures 4-5 from the
run folders of experiments/run_all.py.

    python experiments/aggregate.py --runs runs/experiments/small --out experiments/results/small

Reads, per run folder <run id>_s<seed>/: summary.json (training runs: mAP after every
evaluation, the last one is the result) or metrics.json + frequency_buckets.csv (Table 2
re-scorings), and the per-class AP table (eval/<last tag>/per_class.csv or per_class.csv).
Runs that did not finish are left out and listed in the output (missing.txt).
"""

from __future__ import annotations

import argparse
import json
import re
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
RUN_DIR_NAME = re.compile(r"^(?P<run>.+)_s(?P<seed>\d+)$")


def read_run(run_dir: Path) -> dict | None:
    """Final metrics of one run folder ({map, map_rare, ..., per_class_csv, history}), or
    None when the run has not finished."""
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        evaluated = [h for h in summary.get("history", []) if "map" in h]
        if summary.get("status") != "finished" or not evaluated:
            return None
        last = evaluated[-1]
        history = [
            {"epoch": i + 1, "phase": h.get("phase"), "map": h["map"]}
            for i, h in enumerate(summary["history"])
            if "map" in h
        ]
        row = {m: last.get(m, np.nan) for m in METRICS}
        row["per_class_csv"] = str(run_dir / last["eval_dir"] / "per_class.csv")
        row["history"] = history
        return row
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():  # an evaluation-only run (lsdet.evaluate)
        row = {m: np.nan for m in METRICS}
        row["map"] = json.loads(metrics_path.read_text())["map"]
        buckets_path = run_dir / "frequency_buckets.csv"
        if buckets_path.is_file():
            for _, b in pd.read_csv(buckets_path).iterrows():
                row[f"map_{b['bucket']}"] = float(b["mean_ap"])
        row["per_class_csv"] = str(run_dir / "per_class.csv")
        row["history"] = []
        return row
    return None


def collect_runs(runs_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per finished run folder (run, seed, metrics, per_class_csv, history) and the
    names of the folders that have not finished."""
    rows, unfinished = [], []
    for run_dir in sorted(p for p in Path(runs_dir).iterdir() if p.is_dir()):
        match = RUN_DIR_NAME.match(run_dir.name)
        if match is None:
            continue
        result = read_run(run_dir)
        if result is None:
            unfinished.append(run_dir.name)
            continue
        rows.append({"run": match["run"], "seed": int(match["seed"]), **result})
    columns = ["run", "seed", *METRICS, "per_class_csv", "history"]
    return pd.DataFrame(rows, columns=columns), unfinished


def align_rescored_buckets(runs: pd.DataFrame, rescoring: dict) -> pd.DataFrame:
    """Frequency-bucket mAPs of the evaluation-only runs recomputed with the buckets of the
    training run they re-score (same seed): lsdet.evaluate buckets classes by their training
    images as annotated, the trainer by hierarchy-expanded counts, so the two bucketings
    differ for parent classes. Runs without their training run get no bucket mAPs."""
    runs = runs.copy()
    for index, row in runs[runs["run"].isin(list(rescoring))].iterrows():
        source = runs[
            (runs["run"] == rescoring[row["run"]]["from"]) & (runs["seed"] == row["seed"])
        ]
        for metric in METRICS[1:]:
            runs.at[index, metric] = np.nan
        if source.empty:
            continue
        buckets = pd.read_csv(source["per_class_csv"].iloc[0]).set_index("mid")["bucket"]
        per_class = pd.read_csv(row["per_class_csv"]).set_index("mid")["ap"]
        means = per_class.groupby(buckets.reindex(per_class.index)).mean()
        for bucket, value in means.items():
            runs.at[index, f"map_{bucket}"] = value
    return runs


def summarize_table(runs: pd.DataFrame, table: dict) -> pd.DataFrame:
    """One row per table row: mean and sample standard deviation (ddof 1) over seeds of every
    metric (in %), the number of seeds, and the difference to the baseline row, paired over
    the seeds both rows have (mean and standard deviation of the per-seed differences)."""
    baseline = runs[runs["run"] == table["baseline"]].set_index("seed")["map"]
    out = []
    for row in table["rows"]:
        sel = runs[runs["run"] == row["run"]].set_index("seed")
        record = {"row": row["label"], "run": row["run"], "seeds": len(sel)}
        for metric in METRICS:
            values = sel[metric].astype(float) * 100
            record[f"{metric}_mean"] = values.mean() if len(values) else np.nan
            record[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        common = sel.index.intersection(baseline.index)
        diff = (sel.loc[common, "map"].astype(float) - baseline.loc[common].astype(float)) * 100
        record["delta_mean"] = diff.mean() if len(diff) else np.nan
        record["delta_std"] = diff.std(ddof=1) if len(diff) > 1 else np.nan
        record["delta_seeds"] = len(diff)
        record["paper_map"] = row.get("paper")
        out.append(record)
    return pd.DataFrame(out)


def leaf_parent_table(
    runs: pd.DataFrame, leaf_mids: set[str], labels: dict[str, str]
) -> pd.DataFrame:
    """Mean AP (%) over leaf classes and over parent classes per run id (mean ± std over
    seeds): where a method's mAP change comes from in the hierarchy."""
    records = []
    for run_id, label in labels.items():
        per_seed = []
        for _, r in runs[runs["run"] == run_id].iterrows():
            t = pd.read_csv(r["per_class_csv"])
            is_leaf = t["mid"].isin(leaf_mids)
            per_seed.append((t.loc[is_leaf, "ap"].mean() * 100, t.loc[~is_leaf, "ap"].mean() * 100))
        values = np.array(per_seed, dtype=float).reshape(-1, 2)
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.full(2, np.nan)
        records.append(
            {
                "row": label,
                "run": run_id,
                "seeds": len(values),
                "leaf_map_mean": values[:, 0].mean() if len(values) else np.nan,
                "leaf_map_std": std[0],
                "parent_map_mean": values[:, 1].mean() if len(values) else np.nan,
                "parent_map_std": std[1],
            }
        )
    return pd.DataFrame(records)


def _pm(mean: float, std: float, digits: int = 1) -> str:
    if pd.isna(mean):
        return "n/a"
    if pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(summary: pd.DataFrame, table: dict) -> str:
    """The summary as a markdown table (mAP and buckets mean ± std in %, paired delta)."""
    baseline_label = next(r["label"] for r in table["rows"] if r["run"] == table["baseline"])
    lines = [
        f"**{table['title']}** (mAP in %, mean ± std over seeds; Δ = paired difference to "
        f"'{baseline_label}')",
        "",
        "| row | seeds | mAP | Δ mAP | rare | common | frequent | paper (Open Images) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        is_baseline = r["run"] == table["baseline"]
        delta = "(baseline)" if is_baseline else _pm(r["delta_mean"], r["delta_std"], 2)
        paper = "" if r["paper_map"] is None or pd.isna(r["paper_map"]) else f"{r['paper_map']:.2f}"
        lines.append(
            f"| {r['row']} | {r['seeds']} | {_pm(r['map_mean'], r['map_std'])} | {delta} | "
            f"{_pm(r['map_rare_mean'], r['map_rare_std'])} | "
            f"{_pm(r['map_common_mean'], r['map_common_std'])} | "
            f"{_pm(r['map_frequent_mean'], r['map_frequent_std'])} | {paper} |"
        )
    return "\n".join(lines) + "\n"


def curves(runs: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """mAP (%) after every evaluation of a run, mean and std over seeds, by epoch."""
    records = [
        {"seed": r["seed"], "epoch": h["epoch"], "map": h["map"] * 100}
        for _, r in runs[runs["run"] == run_id].iterrows()
        for h in r["history"]
    ]
    if not records:
        return pd.DataFrame(columns=["epoch", "mean", "std", "seeds"])
    frame = pd.DataFrame(records).groupby("epoch")["map"]
    return pd.DataFrame(
        {"mean": frame.mean(), "std": frame.std(ddof=1), "seeds": frame.count()}
    ).reset_index()


def plot_figure4(runs: pd.DataFrame, spec: list[dict], path: Path) -> Path:
    """Figure 4: mAP after every epoch per lambda (mean over seeds, band = ± 1 std)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for item in spec:
        c = curves(runs, item["run"])
        if c.empty:
            continue
        ax.plot(c["epoch"], c["mean"], marker="o", label=f"{item['label']} (n={c['seeds'].max()})")
        ax.fill_between(
            c["epoch"], c["mean"] - c["std"].fillna(0), c["mean"] + c["std"].fillna(0), alpha=0.15
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP (%)")
    ax.set_title("Figure 4: mAP over training per soft-balance lambda", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def per_class_ap(runs: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Per-class AP (%) of a run, mean over seeds, with the class's training images."""
    tables = []
    for _, r in runs[runs["run"] == run_id].iterrows():
        t = pd.read_csv(r["per_class_csv"])[["mid", "name", "train_images", "ap"]]
        tables.append(t.assign(seed=r["seed"]))
    if not tables:
        return pd.DataFrame(columns=["mid", "name", "train_images", "ap", "seeds"])
    frame = pd.concat(tables)
    grouped = frame.groupby(["mid", "name", "train_images"], as_index=False)
    return grouped.agg(ap=("ap", lambda a: a.mean() * 100), seeds=("seed", "count"))


def frequency_bins(train_images: np.ndarray, num_bins: int = 6) -> np.ndarray:
    """Log-spaced bin edges over the classes' training-image counts (at least 1)."""
    counts = np.maximum(np.asarray(train_images, dtype=float), 1)
    return np.geomspace(counts.min(), counts.max() * 1.0001, num_bins + 1)


def plot_figure5(runs: pd.DataFrame, spec: list[dict], path: Path) -> tuple[Path, pd.DataFrame]:
    """Figure 5: per-class AP against training images (log x) for each run, points = classes
    (mean over seeds), lines = mean AP per log-spaced frequency bin. Returns the binned table."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    binned_rows = []
    tables = {item["label"]: per_class_ap(runs, item["run"]) for item in spec}
    all_counts = np.concatenate([t["train_images"].to_numpy() for t in tables.values()] or [[1]])
    edges = frequency_bins(all_counts)
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
    ax.set_ylabel("AP (%), mean over seeds")
    ax.set_title("Figure 5: per-class AP vs class frequency", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, pd.DataFrame(binned_rows)


def aggregate(runs_dir: Path, out_dir: Path, sweeps: dict) -> str:
    """Writes <table>.csv / .md, all_runs.csv, figure4*.png/.csv, figure5*.png/.csv and
    missing.txt to out_dir; returns the markdown of all tables."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, unfinished = collect_runs(runs_dir)
    runs = align_rescored_buckets(runs, sweeps.get("rescoring") or {})
    runs.drop(columns=["history"]).to_csv(out_dir / "all_runs.csv", index=False)
    texts = []
    for key, table in sweeps["tables"].items():
        summary = summarize_table(runs, table)
        summary.to_csv(out_dir / f"{key}.csv", index=False, float_format="%.3f")
        text = markdown_table(summary, table)
        (out_dir / f"{key}.md").write_text(text)
        texts.append(text)
    curve_rows = [
        c.assign(row=item["label"], run=item["run"])
        for item in sweeps["figure4"]
        if not (c := curves(runs, item["run"])).empty
    ]
    if curve_rows:
        pd.concat(curve_rows).to_csv(
            out_dir / "figure4_map_per_epoch.csv", index=False, float_format="%.3f"
        )
    plot_figure4(runs, sweeps["figure4"], out_dir / "figure4_map_per_lambda.png")
    _, binned = plot_figure5(runs, sweeps["figure5"], out_dir / "figure5_ap_vs_frequency.png")
    binned.to_csv(out_dir / "figure5_ap_by_frequency_bin.csv", index=False, float_format="%.3f")
    leaf_mids = _leaf_mids(runs_dir)
    if leaf_mids:
        labels: dict[str, str] = {}  # run id -> its label in the first table that has it
        for table in sweeps["tables"].values():
            for row in table["rows"]:
                labels.setdefault(row["run"], row["label"])
        levels = leaf_parent_table(runs, leaf_mids, labels)
        levels.to_csv(out_dir / "leaf_parent_map.csv", index=False, float_format="%.3f")
        lines = ["| row | seeds | leaf classes mAP | parent classes mAP |", "|---|---|---|---|"]
        for _, r in levels.iterrows():
            leaf = _pm(r["leaf_map_mean"], r["leaf_map_std"])
            parent = _pm(r["parent_map_mean"], r["parent_map_std"])
            lines.append(f"| {r['row']} | {r['seeds']} | {leaf} | {parent} |")
        text = "**AP of leaf and of parent classes** (%, mean ± std over seeds)\n\n"
        texts.append(text + "\n".join(lines) + "\n")
        (out_dir / "leaf_parent_map.md").write_text(texts[-1])
    expected = {f"{r}_s{s}" for r in _all_run_ids(sweeps) for s in sweeps["seeds"]}
    present = {f"{r}_s{s}" for r, s in zip(runs["run"], runs["seed"], strict=True)}
    missing = sorted(expected - present)
    note = f"finished: {len(present)}; not finished: {unfinished}; missing: {missing}\n"
    (out_dir / "missing.txt").write_text(note)
    all_md = "\n".join(texts)
    (out_dir / "tables.md").write_text(all_md)
    return all_md + "\n" + note


def _leaf_mids(runs_dir: Path) -> set[str]:
    """Leaf classes of the hierarchy the runs were trained on (from a run's config.yaml);
    empty when no run folder has a config."""
    from omegaconf import OmegaConf

    from lsdet.data import Hierarchy

    for config in sorted(Path(runs_dir).glob("*/config.yaml")):
        hierarchy = Hierarchy.from_json(OmegaConf.load(config).data.hierarchy_json)
        return {m for m, leaf in zip(hierarchy.mids, hierarchy.leaf_mask, strict=True) if leaf}
    return set()


def _all_run_ids(sweeps: dict) -> list[str]:
    return list(sweeps["runs"]) + list(sweeps.get("rescoring") or {})


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python experiments/aggregate.py", description=__doc__)
    parser.add_argument("--runs", default="runs/experiments/small", help="the sweep's run folders")
    parser.add_argument("--out", default="experiments/results/small", help="tables and figures")
    parser.add_argument("--sweeps", default=str(HERE / "sweeps.yaml"))
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs)
    if not runs_dir.is_dir():
        raise SystemExit(f"no run folders at {runs_dir}: run experiments/run_all.py first")
    with open(args.sweeps) as f:
        sweeps = yaml.safe_load(f)
    text = aggregate(runs_dir, Path(args.out), sweeps)
    print(text)
    return text


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
