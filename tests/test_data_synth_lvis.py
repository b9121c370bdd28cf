"""The synthetic benchmark in LVIS v1 format (lsdet.data.synth.lvis) against its Open Images
files, conf/data/synth_lvis.yaml, and the LVIS v1 presets (conf/experiment/lvis_*.yaml)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from train_helpers import CONF_DIR, compose_train

from lsdet.data.coco_format import build_or_open_coco_index, read_coco_json
from lsdet.data.formats import read_bbox_csv, read_image_labels_csv
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import AnnotationIndex
from lsdet.data.synth import (
    LVIS_JSON,
    ensure_synthetic_benchmark,
    generate_synthetic_benchmark,
    lvis_frequency,
    lvis_image_id,
    split_files,
)
from lsdet.sampling.samplers import build_sampler
from lsdet.sampling.schedule import Schedule

# Small, every label problem frequent, and a long tail whose leaves fall in all three LVIS
# frequency groups (1-10, 11-100, more than 100 training images).
SETTINGS = {
    "seed": 5,
    "image_size": 32,
    "num_train_images": 500,
    "num_val_images": 60,
    "num_families": 3,
    "shapes_per_family": 2,
    "hues_per_shape": 2,
    "textures_per_shape": 2,
    "imbalance": 60.0,
    "object_size": [0.3, 0.5],
    "group_of_rate": 0.1,
    "val_min_images_per_class": 2,
    "label_noise": {
        "leaf_and_parent": 0.1,
        "two_leaves": 0.1,
        "sibling_swap": 0.1,
        "sibling_both": 0.1,
        "parent_only": 0.1,
    },
    "confused_pairs": {"num_pairs": 3, "top_rate": 0.7, "min_rate": 0.4},
}
SPLIT_OF = {"train": "train", "val": "validation"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth_lvis")
    return root, generate_synthetic_benchmark(root, SETTINGS, write_lvis=True)


def leaf_mids(root: Path) -> list[str]:
    hierarchy = Hierarchy.from_json(root / "hierarchy.json")
    return [mid for mid in hierarchy.mids if hierarchy.is_leaf(mid)]


def mid_of_category(annotations) -> dict[int, str]:
    data = json.loads(Path(annotations.path).read_text())
    return {category["id"]: category["synset"] for category in data["categories"]}


@pytest.mark.parametrize("split", ["train", "validation"])
def test_lvis_boxes_are_the_open_images_leaf_boxes(bench, split):
    """Same boxes (pixels in the LVIS file, normalised in the CSV: equal within 1e-6), same
    labels, same group-of flags, in the same order; the parent boxes are the only ones left
    out."""
    root, _ = bench
    leaves = set(leaf_mids(root))
    csv = read_bbox_csv(split_files(root, split)["bbox_csv"], strict=True)
    lvis = read_coco_json(root / LVIS_JSON[split])
    assert lvis.report.rows_skipped == 0
    keep = np.array([mid in leaves for mid in csv.mids])
    assert 0 < keep.sum() < len(csv)  # some parent boxes exist and are dropped
    mids = mid_of_category(lvis)
    lvis_mids = np.array([mids[int(c)] for c in lvis.boxes.mids])
    csv_image_ids = [lvis_image_id(split, image_id) for image_id in csv.image_ids[keep]]
    assert [int(i) for i in lvis.boxes.image_ids] == csv_image_ids
    assert lvis_mids.tolist() == csv.mids[keep].tolist()
    np.testing.assert_array_equal(lvis.boxes.is_group_of, csv.is_group_of[keep])
    assert lvis.boxes.is_group_of.any()
    np.testing.assert_allclose(lvis.boxes.boxes, csv.boxes[keep], rtol=0, atol=1e-6)
    # the pixel boxes are the generator's integer pixel boxes
    data = json.loads((root / LVIS_JSON[split]).read_text())
    pixels = np.array([a["bbox"] for a in data["annotations"]], dtype=np.float64)
    np.testing.assert_array_equal(pixels, np.round(pixels))
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] for a in data["annotations"])


@pytest.mark.parametrize("split", ["train", "validation"])
def test_lvis_images_are_the_split_images(bench, split):
    root, _ = bench
    lvis = read_coco_json(root / LVIS_JSON[split])
    image_files = sorted(split_files(root, split)["image_dir"].glob("*.jpg"))
    assert lvis.file_names == [f"{split}/{path.name}" for path in image_files]
    assert lvis.image_ids.tolist() == [lvis_image_id(split, path.stem) for path in image_files]
    assert (lvis.image_widths == SETTINGS["image_size"]).all()
    assert (lvis.image_heights == SETTINGS["image_size"]).all()
    for name in lvis.file_names:
        assert (root / name).is_file()
    # every image the Open Images files name is an LVIS image
    files = split_files(root, split)
    named = set(pd.read_csv(files["bbox_csv"])["ImageID"])
    named |= set(pd.read_csv(files["image_labels_csv"])["ImageID"])
    assert {lvis_image_id(split, image_id) for image_id in named} <= set(lvis.image_ids.tolist())


def test_the_splits_share_no_image_or_annotation_id(bench):
    root, _ = bench
    train, val = (json.loads((root / LVIS_JSON[s]).read_text()) for s in ("train", "validation"))
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}
    annotation_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(set(annotation_ids)) == len(annotation_ids)
    assert train["categories"] == val["categories"]  # training counts in both, as LVIS v1


@pytest.mark.parametrize("split", ["train", "validation"])
def test_verified_labels_are_the_open_images_ones(bench, split):
    """Negatives: the verified negatives of the image-labels CSV, exactly. Positives: LVIS's
    (the boxed categories) are verified positives there; a leaf verified present but not
    boxed (its objects lost their leaf label) is flagged not exhaustive."""
    root, _ = bench
    leaves = set(leaf_mids(root))
    labels = read_image_labels_csv(split_files(root, split)["image_labels_csv"], strict=True)
    csv_pos, csv_neg = defaultdict(set), defaultdict(set)
    for image_id, mid, confidence in zip(
        labels.image_ids, labels.mids, labels.confidence, strict=True
    ):
        if mid in leaves:
            (csv_pos if confidence == 1 else csv_neg)[lvis_image_id(split, image_id)].add(mid)
    assert all(mid in leaves for mid in labels.mids[labels.confidence == 0])
    lvis = read_coco_json(root / LVIS_JSON[split])
    mids = mid_of_category(lvis)
    lvis_pos, lvis_neg = defaultdict(set), defaultdict(set)
    table = lvis.image_labels
    for image_id, category, confidence in zip(
        table.image_ids, table.mids, table.confidence, strict=True
    ):
        (lvis_pos if confidence == 1 else lvis_neg)[int(image_id)].add(mids[int(category)])
    assert dict(lvis_neg) == dict(csv_neg) and lvis_neg
    not_exhaustive = {
        image: {mids[c] for c in categories} for image, categories in lvis.not_exhaustive.items()
    }
    unboxed_positives = 0
    for image in set(csv_pos) | set(lvis_pos):
        assert lvis_pos[image] <= csv_pos[image]
        unboxed = csv_pos[image] - lvis_pos[image]
        assert unboxed <= not_exhaustive.get(image, set())
        unboxed_positives += len(unboxed)
        assert not lvis_neg[image] & (lvis_pos[image] | not_exhaustive.get(image, set()))
    assert unboxed_positives > 0


@pytest.mark.parametrize("split", ["train", "validation"])
def test_not_exhaustive_are_the_objects_left_without_their_leaf_label(bench, split):
    root, _ = bench
    objects = pd.read_csv(split_files(root, split)["objects_csv"])
    unlabelled = objects[
        [
            true not in names.split(";")
            for true, names in zip(objects["TrueLabelName"], objects["LabelNames"], strict=True)
        ]
    ]
    assert set(unlabelled["LabelProblem"]) == {"sibling_swap", "parent_only"}
    expected = defaultdict(set)
    for image_id, mid in zip(unlabelled["ImageID"], unlabelled["TrueLabelName"], strict=True):
        expected[lvis_image_id(split, image_id)].add(mid)
    lvis = read_coco_json(root / LVIS_JSON[split])
    mids = mid_of_category(lvis)
    found = {image: {mids[c] for c in cats} for image, cats in lvis.not_exhaustive.items()}
    assert found == dict(expected) and found


def test_lvis_frequency_rule():
    assert [lvis_frequency(n) for n in (0, 1, 10, 11, 100, 101, 5000)] == list("rrrccff")


def test_categories_are_the_leaves_with_training_counts(bench):
    root, manifest = bench
    leaves = leaf_mids(root)
    data = json.loads((root / LVIS_JSON["train"]).read_text())
    categories = data["categories"]
    assert [c["synset"] for c in categories] == leaves
    assert [c["id"] for c in categories] == list(range(1, len(leaves) + 1))
    boxes = pd.read_csv(split_files(root, "train")["bbox_csv"])
    boxes = boxes[boxes["LabelName"].isin(leaves)]
    images = boxes.groupby("LabelName")["ImageID"].nunique()
    instances = boxes.groupby("LabelName").size()
    for category in categories:
        mid = category["synset"]
        assert category["image_count"] == images.get(mid, 0)
        assert category["instance_count"] == instances.get(mid, 0)
        assert category["frequency"] == lvis_frequency(category["image_count"])
    groups = {c["frequency"] for c in categories}
    assert groups == {"r", "c", "f"}
    assert manifest["summary"]["lvis"]["frequency"] == {
        group: sum(c["frequency"] == group for c in categories) for group in "rcf"
    }
    frequency = read_coco_json(root / LVIS_JSON["train"]).categories.frequency
    assert frequency and set(frequency) <= {"r", "c", "f"}


def test_both_indexes_give_the_same_per_class_training_images(bench, tmp_path):
    """The samplers' input: the images of each leaf, in the same image order. The LVIS index
    lacks only images with no leaf box and no verified negative (nothing to learn from in
    LVIS's terms); on this benchmark there are none, so a seeded sampler draws the same
    images from both."""
    root, _ = bench
    hierarchy = Hierarchy.from_json(root / "hierarchy.json")
    files = split_files(root, "train")
    oid = AnnotationIndex.build_or_open(
        files["bbox_csv"],
        hierarchy,
        tmp_path / "cache",
        image_labels_csv=files["image_labels_csv"],
    )
    coco = build_or_open_coco_index(root / LVIS_JSON["train"], tmp_path / "cache")
    oid_names = [oid.image_id(i) for i in range(oid.num_images)]
    lvis_to_name = {lvis_image_id("train", name): name for name in oid_names}
    coco_names = [lvis_to_name[int(coco.index.image_id(i))] for i in range(coco.index.num_images)]
    assert coco_names == sorted(coco_names)  # the same image order as the Open Images index
    assert set(coco_names) <= set(oid_names)
    leaves = [mid for mid in hierarchy.mids if hierarchy.is_leaf(mid)]
    category_of_leaf = {c: m for c, m in zip(coco.categories.mids, leaves, strict=True)}
    assert list(category_of_leaf.values()) == leaves
    oid_offsets, oid_images = oid.class_to_images()
    coco_offsets, coco_images = coco.index.class_to_images()
    for k, category in enumerate(coco.categories.mids):
        j = hierarchy.mids.index(category_of_leaf[category])
        from_oid = [oid_names[i] for i in oid_images[oid_offsets[j] : oid_offsets[j + 1]]]
        from_coco = [coco_names[i] for i in coco_images[coco_offsets[k] : coco_offsets[k + 1]]]
        assert from_oid == from_coco and from_oid
    assert coco_names == oid_names  # every image has a leaf box or a verified negative here

    # A sampler over the leaves' images draws the same images from either index.
    leaf_rows = [hierarchy.mids.index(mid) for mid in leaves]
    oid_leaf_offsets = np.concatenate(
        [[0], np.cumsum([oid_offsets[j + 1] - oid_offsets[j] for j in leaf_rows])]
    )
    oid_leaf_images = np.concatenate(
        [oid_images[oid_offsets[j] : oid_offsets[j + 1]] for j in leaf_rows]
    )
    for sampler_cfg in (
        {"name": "class_aware"},
        {"name": "repeat_factor", "repeat_threshold": 0.1},
    ):
        streams = [
            build_sampler(
                sampler_cfg,
                class_offsets=offsets,
                class_images=images,
                num_images=num_images,
                seed=3,
            ).global_stream(epoch=0)
            for offsets, images, num_images in (
                (oid_leaf_offsets, oid_leaf_images, oid.num_images),
                (coco_offsets, coco_images, coco.index.num_images),
            )
        ]
        np.testing.assert_array_equal(streams[0], streams[1])


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def data_config(root: Path, name: str = "synth"):
    cfg = OmegaConf.load(CONF_DIR / "data" / "synth.yaml")
    if name == "synth_lvis":
        lvis = OmegaConf.load(CONF_DIR / "data" / "synth_lvis.yaml")
        del lvis["defaults"]
        cfg = OmegaConf.merge(cfg, lvis)
    small = {k: v for k, v in SETTINGS.items() if k != "image_size"}
    small.update(num_train_images=120, num_val_images=30, imbalance=10.0)
    return OmegaConf.merge(
        cfg, {"root": str(root), "image_size": SETTINGS["image_size"], "generate": small}
    )


def test_lvis_files_are_extra_outputs_that_keep_the_settings_hash(tmp_path):
    """A folder generated for data=synth gets the LVIS files when data=synth_lvis asks for
    them: same settings hash, the Open Images files byte for byte the same; the next
    data=synth or data=synth_lvis run finds the folder up to date."""
    root = tmp_path / "bench"
    plain = ensure_synthetic_benchmark(data_config(root))
    assert plain["generated"] and not (root / LVIS_JSON["train"]).exists()
    assert "lvis" not in plain["summary"] and "train.lvis_json" not in plain["files"]
    before = file_digests(root)
    with_lvis = ensure_synthetic_benchmark(data_config(root, "synth_lvis"))
    assert with_lvis["generated"]
    assert with_lvis["settings_hash"] == plain["settings_hash"]
    after = file_digests(root)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {LVIS_JSON["train"], LVIS_JSON["validation"]}
    assert set(LVIS_JSON.values()) <= set(with_lvis["files_written"])
    assert with_lvis["files"]["validation.lvis_json"] == LVIS_JSON["validation"]
    assert not ensure_synthetic_benchmark(data_config(root, "synth_lvis"))["generated"]
    assert not ensure_synthetic_benchmark(data_config(root))["generated"]
    # a forced regeneration for data=synth keeps the LVIS files the folder had
    again = ensure_synthetic_benchmark(data_config(root), force=True)
    assert again["generated"] and file_digests(root) == after


def test_the_command_line_writes_the_lvis_files_when_asked(tmp_path, capsys):
    from lsdet.data.synth import main

    root = tmp_path / "bench"
    small = data_config(root).generate
    args = [f"root={root}", f"image_size={SETTINGS['image_size']}"]
    args += [f"generate.{key}={small[key]}" for key in ("seed", "num_train_images")]
    args += [f"generate.{key}={small[key]}" for key in ("num_val_images", "imbalance")]
    args += ["generate.num_families=2", "generate.val_min_images_per_class=1"]
    assert main(args)["generated"] and not (root / LVIS_JSON["train"]).exists()
    manifest = main([*args, "write_lvis=true"])
    assert manifest["generated"] and "lvis" in manifest["summary"]
    frequency = read_coco_json(root / LVIS_JSON["validation"]).categories.frequency
    assert frequency and set(frequency) <= {"r", "c", "f"}
    assert not main([*args, "write_lvis=true"])["generated"]
    assert "up to date" in capsys.readouterr().out


def test_a_user_file_in_place_of_an_lvis_file_is_refused(tmp_path):
    from lsdet.data.synth import NotAGeneratedFolderError

    root = tmp_path / "bench"
    ensure_synthetic_benchmark(data_config(root))
    mine = root / LVIS_JSON["train"]
    mine.write_text("my own file")
    with pytest.raises(NotAGeneratedFolderError, match="lvis_train.json"):
        ensure_synthetic_benchmark(data_config(root, "synth_lvis"))
    assert mine.read_text() == "my own file"


def test_synth_lvis_config_reads_the_lvis_files_of_the_synth_folder():
    with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
        lvis = compose("evaluate", overrides=["data=synth_lvis", "predictions_csv=p.csv"])
        synth = compose("evaluate", overrides=["data=synth", "predictions_csv=p.csv"])
    data = lvis.data
    assert data.metric == "lvis" and data.write_lvis is True
    assert data.root == synth.data.root and data.generate == synth.data.generate
    assert data.train.annotation_json == f"{data.root}/{LVIS_JSON['train']}"
    assert data.val.annotation_json == f"{data.root}/{LVIS_JSON['validation']}"
    assert data.val.image_dir == data.root  # file_name is <split>/<ImageID>.jpg
    assert data.hierarchy_json is None and data.val.bbox_csv is None
    assert synth.data.write_lvis is False


def test_lsdet_evaluate_scores_the_synthetic_lvis_files(bench, tmp_path):
    """data=synth_lvis: the validation truth as detections scores LVIS AP 1 (the crowd boxes
    are not detected: LVIS ignores detections on them and they count as no object)."""
    from lsdet.evaluate import run_evaluation

    root, _ = bench
    data = json.loads((root / LVIS_JSON["validation"]).read_text())
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in data["annotations"]
        if not a["iscrowd"]
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    overrides = [
        "data=synth_lvis",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"predictions_csv={tmp_path / 'results.json'}",
        f"output_dir={tmp_path / 'eval'}",
        "plot=false",
    ]
    with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
        cfg = compose("evaluate", overrides=overrides)
    result, paths = run_evaluation(cfg)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["metric"] == "lvis"
    assert result.map == pytest.approx(1.0)
    assert metrics["train_images_from"].startswith("annotation index of")
    per_class = pd.read_csv(paths["per_class"])
    assert set(per_class["bucket"].dropna()) == {"rare", "common", "frequent"}


# ---------------------------------------------------------------------------- presets
PAPER_SETTINGS = {
    # preset: (loss, sampler, epochs, lr milestones)
    "lvis_r50_fpn_1x_softmax": ("softmax", "repeat_factor", 12, [8, 11]),
    "lvis_r50_fpn_1x_cs": ("concurrent_softmax", "repeat_factor", 12, [8, 11]),
    "lvis_r50_fpn_1x_seesaw": ("seesaw", "repeat_factor", 12, [8, 11]),
    "lvis_r50_fpn_2x_seesaw": ("seesaw", "repeat_factor", 24, [16, 22]),
    "lvis_r50_fpn_1x_eqlv2": ("eqlv2", "sequential", 12, [8, 11]),
    "lvis_r50_fpn_1x_federated": ("federated", "repeat_factor", 12, [8, 11]),
}


@pytest.mark.parametrize("preset", sorted(PAPER_SETTINGS))
def test_lvis_presets_compose_with_the_papers_settings(preset):
    loss, sampler, epochs, milestones = PAPER_SETTINGS[preset]
    cfg = compose_train([f"+experiment={preset}"])
    assert cfg.name == f"{preset}_s0"
    assert (cfg.data.name, cfg.data.metric) == ("lvis", "lvis")
    assert cfg.model.name == "resnet50_fpn" and cfg.model.backbone.name == "resnet50"
    assert cfg.model.backbone.pretrained and cfg.model.backbone.norm == "frozen_bn"
    assert cfg.model.roi.score_thresh == pytest.approx(1e-4)
    assert cfg.model.roi.detections_per_img == 300
    assert cfg.loss.name == loss
    assert cfg.sampler.name == sampler
    if sampler == "repeat_factor":
        assert cfg.sampler.repeat_threshold == pytest.approx(0.001)
    schedule = Schedule.from_config(cfg.schedule)
    assert schedule.total_epochs == epochs
    assert [phase.sampler["name"] for phase in schedule.phases] == [sampler]
    assert list(cfg.schedule.phases.main.lr.milestones) == milestones
    assert cfg.train.batch_size * 8 == 16 and cfg.optim.lr_per_image * 16 == pytest.approx(0.02)


def test_every_lvis_preset_is_covered():
    presets = {p.stem for p in (CONF_DIR / "experiment").glob("lvis_r50_*.yaml")}
    assert presets == set(PAPER_SETTINGS)
    for name in ("softmax", "cs", "seesaw", "eqlv2", "federated"):
        assert f"lvis_r50_fpn_1x_{name}" in presets
