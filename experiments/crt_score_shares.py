"""Where a cRT classifier puts the probability of a leaf's RoIs: per arm and seed, over the
cached training RoIs whose primary label is a leaf, the mean softmax share (over every
column, background included) of the leaf itself and of its ancestors.

    python experiments/crt_score_shares.py --cache runs/experiments/crt_m0/roi_cache.pt \\
        --runs runs/experiments/crt_m0/runs --hierarchy data/synth_m0/hierarchy.json \\
        --out experiments/results/crt/m0/score_shares.csv

With every concurrent rate 0 (rates.hierarchy_rate=0 and no off-hierarchy rate) eq. 5 of
Peng et al. is this softmax, so the ancestors' share is what they take from the leaf's score
at test; with rates.hierarchy_rate=1 eq. 5 leaves the ancestors out of the leaf's
denominator and their share does not touch its score. Descriptive: one detector's features,
the training RoIs, no test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lsdet.crt import load_cache
from lsdet.data import Hierarchy

SHARE_COLUMNS = ["arm", "seed", "leaf_rois", "leaf_share", "ancestors_share"]


def leaf_score_shares(
    features: torch.Tensor,
    labels: np.ndarray,
    weight: torch.Tensor,
    bias: torch.Tensor,
    ancestors: np.ndarray,
    leaf_mask: np.ndarray,
) -> tuple[int, float, float]:
    """Over the RoIs whose label (column of the logits, 0 = background) is a leaf: their
    number, the mean softmax probability of the label and the mean summed probability of its
    strict ancestors. ``ancestors`` [C, C] (ancestors[k, j]: class j is a strict ancestor of
    class k), ``leaf_mask`` [C] over the classes (no background column)."""
    num_classes = len(leaf_mask)
    if tuple(ancestors.shape) != (num_classes, num_classes):
        raise ValueError(f"ancestors must be [{num_classes}, {num_classes}], got {ancestors.shape}")
    if tuple(weight.shape[:1]) != (num_classes + 1,):
        raise ValueError(
            f"the classifier scores {weight.shape[0]} columns; the hierarchy has {num_classes} "
            "classes and the background"
        )
    labels = np.asarray(labels)
    is_leaf = np.concatenate([[False], np.asarray(leaf_mask, bool)])
    rows = np.flatnonzero(is_leaf[labels])
    if len(rows) == 0:
        return 0, float("nan"), float("nan")
    with torch.no_grad():
        logits = features[torch.as_tensor(rows)].float() @ weight.float().T + bias.float()
        probabilities = torch.softmax(logits, dim=1).numpy()
    column_ancestors = np.zeros((num_classes + 1, num_classes + 1), bool)
    column_ancestors[1:, 1:] = np.asarray(ancestors, bool)
    chosen = labels[rows]
    leaf_share = probabilities[np.arange(len(rows)), chosen]
    ancestors_share = (probabilities * column_ancestors[chosen]).sum(axis=1)
    return len(rows), float(leaf_share.mean()), float(ancestors_share.mean())


def score_shares(cache_file: Path, runs_dir: Path, hierarchy_json: Path) -> pd.DataFrame:
    """leaf_score_shares of every classifier.pt under <runs_dir>/<arm>/val-*/seed<k>/ on the
    RoIs of the cache they were trained on (one row per arm and seed)."""
    cache = load_cache(cache_file)
    hierarchy = Hierarchy.from_json(hierarchy_json)
    if list(hierarchy.mids) != list(cache["class_mids"]):
        raise ValueError(f"{hierarchy_json} lists other classes than the cache {cache_file}")
    labels = cache["labels"].numpy()
    rows = []
    for classifier_file in sorted(Path(runs_dir).glob("*/val-*/seed*/classifier.pt")):
        saved = torch.load(classifier_file, map_location="cpu", weights_only=False)
        if saved["checkpoint_sha256"] != cache["checkpoint_sha256"]:
            raise ValueError(f"{classifier_file} was trained on another cache than {cache_file}")
        if set(saved["classifier"]) != {"cls_score.weight", "cls_score.bias"}:
            raise ValueError(
                f"{classifier_file}: {sorted(saved['classifier'])} is not a linear class-score "
                "layer (cls_score.weight, cls_score.bias)"
            )
        count, leaf, ancestors = leaf_score_shares(
            cache["features"],
            labels,
            saved["classifier"]["cls_score.weight"],
            saved["classifier"]["cls_score.bias"],
            hierarchy.ancestors,
            hierarchy.leaf_mask,
        )
        seed = int(classifier_file.parent.name.removeprefix("seed"))
        rows.append([classifier_file.parents[2].name, seed, count, leaf, ancestors])
    return pd.DataFrame(rows, columns=SHARE_COLUMNS)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(prog="python experiments/crt_score_shares.py")
    parser.add_argument("--cache", required=True, help="the RoI cache (lsdet.crt stage=cache)")
    parser.add_argument("--runs", required=True, help="the cRT output_dir's runs/ folder")
    parser.add_argument("--hierarchy", required=True, help="the detector's hierarchy.json")
    parser.add_argument("--out", default=None, help="a CSV of the rows (default: print only)")
    args = parser.parse_args(argv)
    table = score_shares(Path(args.cache), Path(args.runs), Path(args.hierarchy))
    if table.empty:
        raise SystemExit(f"error: no classifier.pt under {args.runs}/<arm>/val-*/seed*/")
    if args.out:
        table.to_csv(args.out, index=False, float_format="%.4f")
    means = table.groupby("arm", sort=False)[["leaf_share", "ancestors_share"]].agg(["mean", "std"])
    print(f"mean over seeds ({table['leaf_rois'].iloc[0]} leaf-labelled RoIs):")
    print(means.round(3).to_string())
    return table


if __name__ == "__main__":
    main()
