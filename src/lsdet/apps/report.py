"""The side-by-side table and plots of finished runs (``python -m lsdet.apps.report RUN_DIR
...``). Per-class AP tables, frequency buckets and the AP-vs-frequency plot of one evaluation
are the evaluator's (lsdet.evaluate)."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lsdet.engine.run_folder import RunFolder  # noqa: E402


def comparison_table(run_dirs: list[str | Path]) -> str:
    """Markdown table: mAP overall and by frequency bucket per run, the difference of each
    run to the first (the baseline) and the run's wall time (training + evaluation)."""
    rows = []
    for run_dir in run_dirs:
        metrics = RunFolder(run_dir).final_metrics()
        rows.append((Path(run_dir).name, metrics))
    header = (
        "| run | mAP | rare | common | frequent | vs first | minutes |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = [header]
    base = rows[0][1]["map"]
    for name, m in rows:
        diff = "" if m is rows[0][1] else f"{m['map'] - base:+.4f}"
        minutes = f"{m['seconds'] / 60:.1f}" if m.get("seconds") is not None else ""
        lines.append(
            f"| {name} | {m['map']:.4f} | {m['map_rare']:.4f} | {m['map_common']:.4f} | "
            f"{m['map_frequent']:.4f} | {diff} | {minutes} |"
        )
    return "\n".join(lines)


def plot_run_comparison(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Plots of finished runs side by side: mAP by frequency bucket per run
    (``map_by_bucket.png``) and, with two or more runs, each class's AP in a run against the
    first run's (``per_class_ap_vs_<first>.png``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [Path(d).name for d in run_dirs]
    metrics = [RunFolder(d).final_metrics() for d in run_dirs]
    groups = ["map_rare", "map_common", "map_frequent", "map"]
    labels = ["rare", "common", "frequent", "all"]
    width = 0.8 / len(run_dirs)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, m) in enumerate(zip(names, metrics, strict=True)):
        values = [m.get(g, float("nan")) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(groups)) + width * (len(run_dirs) - 1) / 2, labels)
    ax.set_ylabel("mAP (OID metric)")
    ax.set_title("mAP by class-frequency bucket (thirds of the classes by training images)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths = [out_dir / "map_by_bucket.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    if len(run_dirs) >= 2:
        tables = [pd.read_csv(RunFolder(d).final_evaluation().per_class) for d in run_dirs]
        base = tables[0][["mid", "ap"]]
        fig, ax = plt.subplots(figsize=(5, 5))
        for name, table in zip(names[1:], tables[1:], strict=True):
            joined = base.merge(table[["mid", "ap"]], on="mid", suffixes=("", "_other"))
            joined = joined.dropna(subset=["ap", "ap_other"])
            ax.scatter(joined["ap"], joined["ap_other"], s=12, alpha=0.7, label=name)
        ax.plot([0, 1], [0, 1], color="black", linewidth=1)
        ax.set_xlabel(f"per-class AP, {names[0]}")
        ax.set_ylabel("per-class AP, other run")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / f"per_class_ap_vs_{names[0]}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m lsdet.apps.report",
        description="Side-by-side final mAP (overall, rare/common/frequent) of training runs; "
        "the first run is the baseline.",
    )
    parser.add_argument("run_dirs", nargs="+", help="folders of finished runs")
    parser.add_argument("--out", default=None, help="also write the table to this .md file")
    parser.add_argument("--plots", default=None, help="write comparison plots to this folder")
    args = parser.parse_args(argv)
    table = comparison_table(args.run_dirs)
    print(table)
    if args.plots:
        for path in plot_run_comparison(args.run_dirs, args.plots):
            print(f"wrote {path}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
