"""Dataset analysis: hand-made cases for each number, and the command on a tiny synthetic set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from train_helpers import mini_generator_settings

from lsdet.analyze import (
    analyze,
    confused_pairs,
    exposure_from_stream,
    images_per_class,
    parents_without_leaf,
)
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.rates import count_coincidences

REPO_ROOT = Path(__file__).resolve().parents[1]

# root > A > (a1, a2); root > B. Column order: A a1 a2 B.
A, A1, A2, B = range(4)


def small_hierarchy() -> Hierarchy:
    children = {"/r": ["/A", "/B"], "/A": ["/a1", "/a2"]}
    return Hierarchy(["/A", "/a1", "/a2", "/B"], children, root="/r")


def test_images_per_class_by_hand():
    hierarchy = small_hierarchy()
    table, summary = images_per_class(np.array([5, 0, 2, 10]), hierarchy, {"/B": "Bee"})
    assert table["mid"].tolist() == ["/B", "/A", "/a2", "/a1"]
    assert table["name"].tolist() == ["Bee", "/A", "/a2", "/a1"]
    assert summary["imbalance"] == 5.0  # 10 / 2; the class with no image is left out
    assert summary["leaf_imbalance"] == 5.0  # leaves a2 (2) and B (10)
    assert summary["classes_with_images"] == 3


def test_confused_pairs_and_parents_without_leaf_by_hand():
    hierarchy = small_hierarchy()
    rows = [  # (image, class, box)
        (0, A, [0, 0, 1, 1]),
        (0, A1, [0, 0, 1, 1]),  # A box with a leaf of A: has a leaf label
        (1, A, [0, 0, 1, 1]),
        (1, B, [0, 0, 1, 1]),  # A box with B only: B is no leaf of A
        (2, A, [0, 0, 1, 1]),  # A box alone
        (2, A2, [0.5, 0.5, 0.6, 0.6]),  # far away
        (3, B, [0, 0, 0.5, 0.5]),
        (3, A2, [0, 0, 0.5, 0.49]),  # IoU 0.98
    ]
    image = np.array([r[0] for r in rows])
    label = np.array([r[1] for r in rows])
    boxes = np.array([r[2] for r in rows], dtype=np.float32)
    counts = count_coincidences(image, label, boxes, 4, progress=False)

    parents = parents_without_leaf(counts, label, hierarchy, {})
    assert parents["mid"].tolist() == ["/A"]
    assert parents["boxes"].tolist() == [3]
    assert parents["boxes_without_leaf"].tolist() == [2]

    pairs = confused_pairs(counts, hierarchy, {}, top=10, min_class_boxes=1)
    got = {
        (m, c): r
        for m, c, r in zip(pairs["mid"], pairs["coinciding_mid"], pairs["rate"], strict=True)
    }
    # A-a1 is a hierarchy pair: left out. B has 2 boxes, each meets A or a2 once.
    assert got == {
        ("/A", "/B"): pytest.approx(1 / 3),
        ("/B", "/A"): pytest.approx(1 / 2),
        ("/B", "/a2"): pytest.approx(1 / 2),
        ("/a2", "/B"): pytest.approx(1 / 2),
    }
    assert pairs["rate"].is_monotonic_decreasing
    assert len(confused_pairs(counts, hierarchy, {}, top=10, min_class_boxes=3)) == 1  # A only


def test_exposure_from_stream_by_hand():
    offsets = np.array([0, 3, 4, 4])  # class 0: images 0, 1, 2; class 1: image 2; class 2: none
    images = np.array([0, 1, 2, 2])
    times_seen, never_seen = exposure_from_stream(np.array([0, 0, 2, 2, 2]), offsets, images, 4)
    np.testing.assert_allclose(times_seen[:2], [5 / 3, 3.0])
    np.testing.assert_allclose(never_seen[:2], [1 / 3, 0.0])
    assert np.isnan(times_seen[2]) and np.isnan(never_seen[2])


TINY_DATA = [
    "data.image_size=32",
    "data.generate.seed=5",
    "data.generate.num_train_images=300",
    "data.generate.num_val_images=40",
    "data.generate.num_families=2",
    "data.generate.shapes_per_family=3",
    "data.generate.hues_per_shape=2",
    "data.generate.textures_per_shape=2",
    "data.generate.imbalance=30",
    "data.generate.object_size=[0.3,0.5]",
    "data.generate.val_min_images_per_class=2",
    "data.generate.label_noise.parent_only=0.15",
    "data.generate.label_noise.leaf_and_parent=0.15",
    "data.generate.confused_pairs.num_pairs=2",
    "data.generate.confused_pairs.min_rate=0.5",
]


def test_analyze_on_a_tiny_synthetic_set(tmp_path):
    overrides = [f"data.root={tmp_path / 'synth'}", *TINY_DATA, "lams=[0.0,1.0]"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=overrides)
    out = tmp_path / "out"
    summary = analyze(cfg, out)
    for stem in ("images_per_class", "confused_pairs", "parents_without_leaf", "sampling_exposure"):
        assert (out / f"{stem}.png").stat().st_size > 0
        assert (out / f"{stem}.csv").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))

    # Image counts and the imbalance, recomputed from the bbox CSV with pandas.
    boxes = pd.read_csv(tmp_path / "synth" / "train-annotations-bbox.csv")
    per_class = boxes.groupby("LabelName")["ImageID"].nunique()
    stats = summary["images_per_class"]
    assert stats["imbalance"] == pytest.approx(per_class.max() / per_class.min())
    table = pd.read_csv(out / "images_per_class.csv")
    assert dict(zip(table["mid"], table["images"], strict=True)) == per_class.to_dict()

    # Parent boxes without a leaf: the generator's side file says which objects were
    # labelled with an ancestor only (parent_only) or with the leaf too (leaf_and_parent).
    objects = pd.read_csv(tmp_path / "synth" / "train-objects.csv")
    labels = objects.assign(mid=objects["LabelNames"].str.split(";")).explode("mid")
    parent_rows = labels[labels["mid"] != labels["TrueLabelName"]]
    parent_rows = parent_rows[parent_rows["LabelProblem"].isin(["parent_only", "leaf_and_parent"])]
    expected = parent_rows.groupby("mid")["LabelProblem"].apply(
        lambda p: (p == "parent_only").mean()
    )
    parents = pd.read_csv(out / "parents_without_leaf.csv").set_index("mid")
    pd.testing.assert_series_equal(
        parents["ratio_without_leaf"].sort_index(), expected.sort_index(), check_names=False
    )

    # Figure 3a: the generator's strongly confused pairs lead the list, near their rates
    # (about 20 boxes per class here, so within 0.2).
    manifest = json.loads((tmp_path / "synth" / "manifest.json").read_text())
    top = pd.read_csv(out / "confused_pairs.csv").head(4)
    targets = {
        frozenset(pair["mids"]): pair["target_rate"]
        for pair in manifest["summary"]["confused_pairs"]
    }
    assert len(targets) == 2
    for mid, other, rate in zip(top["mid"], top["coinciding_mid"], top["rate"], strict=True):
        assert abs(rate - targets[frozenset((mid, other))]) < 0.2

    # Class-aware sampling (lam = 1) leaves more of the largest class unseen than lam = 0,
    # and repeats the smallest class's images more.
    exposure = pd.read_csv(out / "sampling_exposure.csv")
    assert exposure["never_seen_lam1"].iloc[0] > exposure["never_seen_lam0"].iloc[0]
    assert exposure["times_seen_lam1"].iloc[-1] > exposure["times_seen_lam0"].iloc[-1]


def test_command_line(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "lsdet.analyze", f"data.root={tmp_path / 'synth'}", *TINY_DATA,
        f"output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}", "top_pairs=5",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imbalance magnitude" in result.stdout
    assert len(pd.read_csv(out / "confused_pairs.csv")) <= 5
    assert (out / "summary.json").is_file()


def test_analyze_never_generates_into_a_user_folder(tmp_path):
    """A data.root of the user's (no manifest of the generator) is an error; nothing changes."""
    from lsdet.data.synth import NotAGeneratedFolderError

    root = tmp_path / "mine"
    (root / "train").mkdir(parents=True)
    (root / "train" / "img.jpg").write_bytes(b"user data")
    overrides = [f"data.root={root}", *TINY_DATA]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=overrides)
    with pytest.raises(NotAGeneratedFolderError, match="data.root="):
        analyze(cfg, tmp_path / "out")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "train",
        "train/img.jpg",
    ]
    assert (root / "train" / "img.jpg").read_bytes() == b"user data"


def test_analyze_refuses_a_benchmark_generated_with_other_settings(tmp_path):
    """A data.root the generator wrote with other settings (here 24 training images of 16 px)
    is an error naming the differing settings, never silently regenerated."""
    from lsdet.data.synth import GeneratedWithOtherSettingsError, generate_synthetic_benchmark

    root = tmp_path / "synth"
    generate_synthetic_benchmark(root, mini_generator_settings(image_size=16))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"data.root={root}", *TINY_DATA])
    with pytest.raises(GeneratedWithOtherSettingsError) as error:
        analyze(cfg, tmp_path / "out")
    assert "data.generate.num_train_images: 24 there, 300 in the config" in str(error.value)
    assert "data.image_size: 16 there, 32 in the config" in str(error.value)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
