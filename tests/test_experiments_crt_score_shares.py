"""experiments/crt_score_shares.py: the softmax shares of a leaf and of its ancestors on the
cached leaf-labelled RoIs, by hand on a three-class hierarchy (/P the parent of /a and /b)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import crt_score_shares  # noqa: E402

from lsdet.crt import CACHE_FORMAT  # noqa: E402

TREE = {
    "LabelName": "/root",
    "Subcategory": [{"LabelName": "/P", "Subcategory": [{"LabelName": "/a"}, {"LabelName": "/b"}]}],
}
MIDS = ["/P", "/a", "/b"]
ANCESTORS = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0]], bool)  # /P is an ancestor of /a, /b
LEAF_MASK = np.array([False, True, True])
# Two features, one per RoI; the classifier's logits are its bias plus feature 0 times the
# first weight column: RoI 0 (label /a) has logits [0, log 2, log 3, 0] (background, /P, /a,
# /b), RoI 1 (label /P, not a leaf) and RoI 2 (background) do not count.
FEATURES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
LABELS = np.array([2, 1, 0])
WEIGHT = torch.tensor([[0.0, 5.0], [np.log(2), 5.0], [np.log(3), 5.0], [0.0, 5.0]])
BIAS = torch.zeros(4)


def test_leaf_and_ancestor_shares_by_hand():
    count, leaf, ancestors = crt_score_shares.leaf_score_shares(
        FEATURES, LABELS, WEIGHT, BIAS, ANCESTORS, LEAF_MASK
    )
    # softmax of [0, log 2, log 3, 0] = [1, 2, 3, 1] / 7
    assert count == 1
    assert leaf == pytest.approx(3 / 7) and ancestors == pytest.approx(2 / 7)
    # no leaf-labelled RoI: nothing to average
    count, leaf, _ = crt_score_shares.leaf_score_shares(
        FEATURES, np.array([1, 0, 0]), WEIGHT, BIAS, ANCESTORS, LEAF_MASK
    )
    assert count == 0 and np.isnan(leaf)
    with pytest.raises(ValueError, match="scores 3 columns"):
        crt_score_shares.leaf_score_shares(
            FEATURES, LABELS, WEIGHT[:3], BIAS[:3], ANCESTORS, LEAF_MASK
        )


def write_run(tmp_path: Path, sha: str = "abc") -> Path:
    cache = {"format": CACHE_FORMAT, "features": FEATURES.half(), "labels": torch.tensor(LABELS),
             "class_mids": MIDS, "checkpoint_sha256": "abc"}  # fmt: skip
    torch.save(cache, tmp_path / "roi_cache.pt")
    (tmp_path / "hierarchy.json").write_text(json.dumps(TREE))
    seed_dir = tmp_path / "runs" / "cs_x" / "val-as_train" / "seed3"
    seed_dir.mkdir(parents=True)
    saved = {"classifier": {"cls_score.weight": WEIGHT, "cls_score.bias": BIAS},
             "checkpoint_sha256": sha}  # fmt: skip
    torch.save(saved, seed_dir / "classifier.pt")
    return tmp_path


def test_score_shares_reads_every_arm_and_seed_of_a_crt_run(tmp_path, capsys):
    root = write_run(tmp_path)
    out = tmp_path / "shares.csv"
    table = crt_score_shares.main(
        ["--cache", str(root / "roi_cache.pt"), "--runs", str(root / "runs"),
         "--hierarchy", str(root / "hierarchy.json"), "--out", str(out)]
    )  # fmt: skip
    assert list(table.columns) == crt_score_shares.SHARE_COLUMNS
    row = table.iloc[0]
    assert (row["arm"], row["seed"], row["leaf_rois"]) == ("cs_x", 3, 1)
    assert row["ancestors_share"] == pytest.approx(2 / 7, abs=1e-3)  # features stored in fp16
    assert out.is_file() and "cs_x" in capsys.readouterr().out


def test_score_shares_refuses_a_classifier_of_another_cache(tmp_path):
    root = write_run(tmp_path, sha="other")
    with pytest.raises(ValueError, match="another cache"):
        crt_score_shares.score_shares(root / "roi_cache.pt", root / "runs", root / "hierarchy.json")
