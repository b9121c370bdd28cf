"""Per-class diagnosis of a difference between two rows of the sweep: where in the class set
the mAP change comes from.

Each class gets groups (the class-group table, class_groups.csv in the results folder):
  * rate bin: a leaf's largest off-hierarchy concurrent rate max_j r_ij (j neither an
    ancestor nor a descendant of i; lsdet.data.rates, the R of eq. 3 and 5), binned
    {0, (0, 0.1], (0.1, 0.3], (0.3, 1]};
  * confused pair: the leaf is one of the generator's strongly confused sibling pairs;
  * level: leaf or parent class;
  * frequency bucket: rare / common / frequent (per_class.csv's bucket);
  * bucket x rate bin (leaves): rate and frequency are confounded on the benchmark (the
    leaves with rate 0 are the rarest), so the cross-table shows both with its class counts.
The AP differences (run minus against, same seed, points) are averaged over a group's classes
per seed.

The class-group table is made once from the benchmark data, the way training estimates the
rates (lsdet.engine.training_data.training_rates with a run's ``rates.*`` settings):

    python experiments/diagnosis.py --results experiments/results/converged

(the data root of the size must exist: ``python -m lsdet.data.synth`` with the size's
settings, as experiments/run_all.py generates it). The aggregation then reads only the CSV.
The dose-response benchmarks of the diagnosis sweep each get their own table
(results/diagnosis/class_groups_<benchmark>.csv; their data roots data/synth_m*):

    python experiments/diagnosis.py --protocol diagnosis
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from lsdet.engine.run_folder import EvaluationFolder, RunFolder  # noqa: E402

HERE = Path(__file__).resolve().parent
CLASS_GROUPS_CSV = "class_groups.csv"
GROUP_COLUMNS = [
    "mid", "name", "is_leaf", "max_offhier_rate", "confused_pair", "train_images", "bucket",
]  # fmt: skip
RATE_BINS = ["0", "(0, 0.1]", "(0.1, 0.3]", "(0.3, 1]"]
BUCKETS = ["rare", "common", "frequent"]
GROUPINGS = ["rate bin (leaves)", "confused pair (leaves)", "level", "frequency bucket"]


def rate_bin(rate: float) -> str:
    """The bin of a leaf's largest off-hierarchy rate ("" for a parent class, rate nan)."""
    if pd.isna(rate):
        return ""
    if rate < 0 or rate > 1:
        raise ValueError(f"a concurrent rate must lie in [0, 1], got {rate}")
    if rate == 0:
        return RATE_BINS[0]
    if rate <= 0.1:
        return RATE_BINS[1]
    if rate <= 0.3:
        return RATE_BINS[2]
    return RATE_BINS[3]


def class_groups_table(
    mids: list[str],
    leaf_mask: np.ndarray,
    related: np.ndarray,
    rates: np.ndarray,
    confused_mids: set[str],
    per_class: pd.DataFrame,
) -> pd.DataFrame:
    """The class-group table. ``rates`` is the [C, C] matrix over ``mids`` (r_ij: of the boxes
    of class i, the share labelled j too; no background row), ``related`` [C, C] marks
    ancestor/descendant pairs (excluded: they are set to the hierarchy rate, not measured),
    ``per_class`` a per_class.csv (mid, name, train_images, bucket)."""
    rates = np.asarray(rates, dtype=float)
    off_hierarchy = np.where(related | np.eye(len(mids), dtype=bool), 0.0, rates)
    info = per_class.set_index("mid")
    missing = [m for m in mids if m not in info.index]
    if missing:
        raise ValueError(f"per_class table lacks the classes {missing[:5]} of the hierarchy")
    records = []
    for k, mid in enumerate(mids):
        leaf = bool(leaf_mask[k])
        records.append(
            {
                "mid": mid,
                "name": info.at[mid, "name"],
                "is_leaf": leaf,
                "max_offhier_rate": float(off_hierarchy[k].max()) if leaf else np.nan,
                "confused_pair": mid in confused_mids,
                "train_images": int(info.at[mid, "train_images"]),
                "bucket": info.at[mid, "bucket"],
            }
        )
    return pd.DataFrame(records, columns=GROUP_COLUMNS)


def class_groups_from_data(config_yaml: Path, per_class_csv: Path) -> pd.DataFrame:
    """The class-group table of a run: its data and rates settings (config.yaml), the
    training rates estimated as the trainer does, the data's confused pairs (manifest.json)
    and the classes' training images and buckets (the run's per_class.csv)."""
    from omegaconf import OmegaConf

    from lsdet.data import Hierarchy
    from lsdet.engine.training_data import open_split_index, training_rates

    cfg = OmegaConf.load(config_yaml)
    manifest_path = Path(str(cfg.data.root)) / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(
            f"{manifest_path} not found: generate the data of {config_yaml} first "
            "(python -m lsdet.data.synth with the size's settings of experiments/sweeps.yaml)"
        )
    manifest = json.loads(manifest_path.read_text())
    confused = {m for pair in manifest["summary"]["confused_pairs"] for m in pair["mids"]}
    hierarchy = Hierarchy.from_json(str(cfg.data.hierarchy_json))
    index = open_split_index(cfg.data, "train", hierarchy)
    rates = training_rates(cfg.rates, index, hierarchy).numpy()[1:, 1:]
    related = hierarchy.ancestors | hierarchy.descendants
    return class_groups_table(
        hierarchy.mids, hierarchy.leaf_mask, related, rates, confused, pd.read_csv(per_class_csv)
    )


def read_class_groups(path: Path) -> pd.DataFrame:
    """The committed class-group table; a clear error when it lacks a column."""
    table = pd.read_csv(path)
    missing = [c for c in GROUP_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (expected {GROUP_COLUMNS})")
    return table


def class_group_labels(groups: pd.DataFrame) -> pd.DataFrame:
    """One line per (class, grouping, group): the groups each class belongs to."""
    lines = []
    for _, g in groups.iterrows():
        leaf = bool(g["is_leaf"])
        lines.append((g["mid"], "level", "leaf" if leaf else "parent"))
        lines.append((g["mid"], "frequency bucket", g["bucket"]))
        if leaf:
            rate = rate_bin(g["max_offhier_rate"])
            lines.append((g["mid"], "rate bin (leaves)", rate))
            pair = "confused-pair leaf" if g["confused_pair"] else "other leaf"
            lines.append((g["mid"], "confused pair (leaves)", pair))
            lines.append((g["mid"], "bucket x rate bin (leaves)", f"{g['bucket']} / {rate}"))
    return pd.DataFrame(lines, columns=["mid", "grouping", "group"])


def group_differences(
    per_class_by_seed: dict[int, tuple[pd.DataFrame, pd.DataFrame]], groups: pd.DataFrame
) -> pd.DataFrame:
    """Per seed and class group: the mean AP difference (points) of run minus against over the
    group's classes that both evaluations score. ``per_class_by_seed``: seed -> (run's
    per_class table, against's per_class table)."""
    labels = class_group_labels(groups)
    records = []
    for seed, (run_table, against_table) in sorted(per_class_by_seed.items()):
        diff = (
            run_table.set_index("mid")["ap"] - against_table.set_index("mid")["ap"]
        ).dropna() * 100
        joined = labels.join(diff.rename("delta"), on="mid").dropna(subset=["delta"])
        for (grouping, group), sel in joined.groupby(["grouping", "group"], sort=False):
            records.append(
                {
                    "grouping": grouping,
                    "group": group,
                    "seed": seed,
                    "classes": len(sel),
                    "delta": sel["delta"].mean(),
                }
            )
    return pd.DataFrame(records, columns=["grouping", "group", "seed", "classes", "delta"])


def _group_order(grouping: str, groups: list[str]) -> list[str]:
    if grouping == "rate bin (leaves)":
        return [g for g in RATE_BINS if g in groups]
    if grouping == "frequency bucket":
        return [g for g in BUCKETS if g in groups] + sorted(set(groups) - set(BUCKETS))
    return sorted(groups)


def markdown_diagnosis(diffs: pd.DataFrame, label: str, variant: str) -> str:
    """The per-group table of one pair (one column per seed, then the mean) and the
    bucket x rate-bin cross-table (mean over seeds, classes per cell)."""
    seeds = sorted(diffs["seed"].unique())
    lines = [
        f"**Per-class diagnosis: {label}**, validation labels {variant} (mean AP difference "
        "over the group's classes, points)",
        "",
        "| grouping | group | classes | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
        "|---|---|---|" + "---|" * (len(seeds) + 1),
    ]
    for grouping in GROUPINGS:
        sel = diffs[diffs["grouping"] == grouping]
        for group in _group_order(grouping, list(sel["group"].unique())):
            g = sel[sel["group"] == group].set_index("seed")
            cells = " | ".join(f"{g.at[s, 'delta']:+.2f}" if s in g.index else "" for s in seeds)
            lines.append(
                f"| {grouping} | {group} | {int(g['classes'].max())} | {cells} | "
                f"{g['delta'].mean():+.2f} |"
            )
    cross = diffs[diffs["grouping"] == "bucket x rate bin (leaves)"]
    if not cross.empty:
        lines += [
            "",
            "Leaves by frequency bucket (rows) and rate bin (columns): mean AP difference over "
            "seeds (classes in the cell)",
            "",
            "| bucket | " + " | ".join(RATE_BINS) + " |",
            "|---|" + "---|" * len(RATE_BINS),
        ]
        for bucket in BUCKETS:
            cells = []
            for rate in RATE_BINS:
                cell = cross[cross["group"] == f"{bucket} / {rate}"]
                cells.append(
                    f"{cell['delta'].mean():+.2f} ({int(cell['classes'].max())})"
                    if len(cell)
                    else "–"
                )
            lines.append(f"| {bucket} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_diagnosis(diffs_by_pair: dict[str, pd.DataFrame], variant: str, path: Path) -> Path:
    """One panel per pair: the AP difference of every class group, one marker per seed, the
    bar the mean over seeds."""
    pairs = list(diffs_by_pair) or ["(no pairs)"]
    fig, axes = plt.subplots(len(pairs), 1, figsize=(10, 2.8 * len(pairs)), squeeze=False)
    for ax, label in zip(axes[:, 0], pairs, strict=True):
        diffs = diffs_by_pair.get(label, pd.DataFrame(columns=["grouping", "group", "seed"]))
        names = []
        for grouping in GROUPINGS:
            sel = diffs[diffs["grouping"] == grouping]
            names += [(grouping, g) for g in _group_order(grouping, list(sel["group"].unique()))]
        for x, (grouping, group) in enumerate(names):
            g = diffs[(diffs["grouping"] == grouping) & (diffs["group"] == group)]
            ax.bar(x, g["delta"].mean(), color="lightgray", edgecolor="gray")
            for _, r in g.iterrows():
                seed = int(r["seed"])
                ax.scatter(x, r["delta"], color=f"C{seed}", s=14, zorder=3, label=f"seed {seed}")
        ax.axhline(0, color="black", lw=0.8)
        ticks = [f"rate {g}" if grouping.startswith("rate") else g for grouping, g in names]
        ax.set_xticks(range(len(names)), ticks, rotation=30, fontsize=7, ha="right")
        ax.set_ylabel("Δ AP (points)", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        handles = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        if handles:
            ax.legend(handles.values(), handles.keys(), fontsize=7, loc="upper left")
    fig.suptitle(f"AP difference by class group, validation labels {variant}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_class_groups(source: Path, out: Path) -> pd.DataFrame:
    """The class-group table of the training result ``source`` (a results folder's
    runs/<run>/val-as_train/seed<k>/: its config.yaml and its last evaluation's
    per_class.csv), written to ``out``; refuses to overwrite ``out``."""
    if out.exists():
        raise SystemExit(f"{out} exists: move it away to make it again")
    run = RunFolder(source)
    per_class = EvaluationFolder(source / run.read_summary()["history"][-1]["eval_dir"]).per_class
    table = class_groups_from_data(run.config, per_class)
    table.to_csv(out, index=False, float_format="%.4f")
    print(f"wrote {out}: {len(table)} classes, {int(table['is_leaf'].sum())} leaves")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/diagnosis.py", description=__doc__)
    parser.add_argument("--results", default=str(HERE / "results" / "converged"))
    parser.add_argument("--sweeps", default=str(HERE / "sweeps.yaml"))
    parser.add_argument(
        "--protocol",
        choices=["diagnosis"],
        help="the class groups of every benchmark of the dose-response sweep (sweeps.yaml "
        "`diagnosis.dose_response`) in its results folder, beside --results",
    )
    args = parser.parse_args(argv)
    with open(args.sweeps) as f:
        sweeps = yaml.safe_load(f)
    spec = sweeps.get("diagnosis")
    if not spec:
        raise SystemExit(f"{args.sweeps}: no `diagnosis:` block")
    if args.protocol is None:
        results = Path(args.results)
        source = results / "runs" / spec["rates_from"] / "val-as_train" / "seed0"
        write_class_groups(source, results / spec.get("class_groups", CLASS_GROUPS_CSV))
        return 0
    dose = spec.get("dose_response")
    if not dose:
        raise SystemExit(f"{args.sweeps}: no `diagnosis.dose_response` block")
    results = Path(args.results).parent / sweeps["diagnosis_sweep"]["results"]
    for benchmark in sweeps["diagnosis_sweep"]["benchmarks"]:
        run = f"{dose['rates_from']}_{benchmark}"
        source = results / "runs" / run / "val-as_train" / "seed0"
        if not (source / "summary.json").is_file():
            print(f"{benchmark}: no result of {run} seed 0 yet, no class groups")
            continue
        write_class_groups(source, results / dose["class_groups"].format(benchmark=benchmark))
    return 0


def multi_labelled_leaves(objects_csv: Path, hierarchy_json: Path, min_share: float) -> list[str]:
    """The leaves of a generated benchmark of which at least ``min_share`` of the training
    objects carry two leaf labels (its train-objects.csv: each drawn object's true class and
    labels, lsdet.data.synth), sorted by MID."""
    from lsdet.data import Hierarchy

    hierarchy = Hierarchy.from_json(hierarchy_json)
    objects = pd.read_csv(objects_csv)
    two_leaves = objects["LabelNames"].map(
        lambda names: sum(hierarchy.is_leaf(mid) for mid in str(names).split(";")) >= 2
    )
    share = two_leaves.groupby(objects["TrueLabelName"]).mean()
    return sorted(str(mid) for mid in share.index[share >= min_share])


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
