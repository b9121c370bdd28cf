"""The synthetic benchmark generator: files, long tail, label problems, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image
from train_helpers import mini_generator_settings

from lsdet.data.formats import read_bbox_csv, read_class_descriptions, read_image_labels_csv
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import AnnotationIndex
from lsdet.data.synth import (
    LABEL_PROBLEMS,
    GeneratedWithOtherSettingsError,
    LabelNoise,
    NotAGeneratedFolderError,
    SceneObject,
    SynthSettings,
    both_probability_for_rate,
    build_taxonomy,
    ensure_synthetic_benchmark,
    generate_synthetic_benchmark,
    main,
    pair_rates,
    split_files,
    target_image_counts,
)
from lsdet.data.synth.scenes import _apply_label_problems

REPO_ROOT = Path(__file__).resolve().parents[1]

# Small and fast, but with every feature on and label problems frequent enough to measure.
TINY = {
    "seed": 3,
    "image_size": 32,
    "num_train_images": 400,
    "num_val_images": 60,
    "num_families": 3,
    "shapes_per_family": 2,
    "hues_per_shape": 2,
    "textures_per_shape": 2,
    "imbalance": 40.0,
    "mean_objects_per_image": 2.5,
    "object_size": [0.3, 0.5],
    "group_of_rate": 0.1,
    "val_min_images_per_class": 3,
    "label_noise": {
        "leaf_and_parent": 0.1,
        "two_leaves": 0.1,
        "sibling_swap": 0.1,
        "sibling_both": 0.1,
        "parent_only": 0.1,
    },
    "confused_pairs": {"num_pairs": 3, "top_rate": 0.7, "min_rate": 0.4},
}


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth_tiny")
    manifest = generate_synthetic_benchmark(root, TINY)
    return root, manifest


def test_files_and_hierarchy(tiny):
    root, manifest = tiny
    hierarchy = Hierarchy.from_json(root / "hierarchy.json")
    assert hierarchy.num_levels == 3
    assert hierarchy.num_classes == 3 + 3 * 2 + 3 * 2 * 4
    assert int(hierarchy.leaf_mask.sum()) == 24 == manifest["summary"]["num_leaves"]
    descriptions = pd.read_csv(root / "class-descriptions.csv", header=None, names=["mid", "name"])
    assert descriptions["mid"].tolist() == hierarchy.mids
    assert descriptions["name"].is_unique
    for split, num_images in (("train", 400), ("validation", 60)):
        files = split_files(root, split)
        boxes = pd.read_csv(files["bbox_csv"])
        assert len(boxes.columns) == 13
        assert set(boxes["LabelName"]) <= set(hierarchy.mids)
        assert ((boxes["XMin"] < boxes["XMax"]) & (boxes["YMin"] < boxes["YMax"])).all()
        assert boxes[["XMin", "XMax", "YMin", "YMax"]].stack().between(0, 1).all()
        images = sorted(files["image_dir"].glob("*.jpg"))
        assert len(images) == num_images
        with Image.open(images[0]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
        labels = pd.read_csv(files["image_labels_csv"])
        assert set(labels["Confidence"]) == {0, 1}
        # Every boxed label is a verified positive; a verified negative is neither boxed nor
        # the true class of an object in the image.
        boxed = set(zip(boxes["ImageID"], boxes["LabelName"], strict=True))
        positives = labels[labels["Confidence"] == 1]
        rejected = labels[labels["Confidence"] == 0]
        negatives = set(zip(rejected["ImageID"], rejected["LabelName"], strict=True))
        assert boxed <= set(zip(positives["ImageID"], positives["LabelName"], strict=True))
        objects = pd.read_csv(files["objects_csv"])
        present = set(zip(objects["ImageID"], objects["TrueLabelName"], strict=True))
        assert negatives and not (boxed | present) & negatives


def test_files_parse_with_the_readers(tiny, tmp_path):
    root, manifest = tiny
    descriptions = read_class_descriptions(root / "class-descriptions.csv")
    hierarchy = Hierarchy.from_json(root / "hierarchy.json", subset_mids=list(descriptions))
    for split in ("train", "validation"):
        files = split_files(root, split)
        boxes = read_bbox_csv(files["bbox_csv"], known_mids=hierarchy.mids, strict=True)
        labels = read_image_labels_csv(
            files["image_labels_csv"], known_mids=hierarchy.mids, strict=True
        )
        assert boxes.report.rows_skipped == 0 and labels.report.rows_skipped == 0
        assert len(boxes) == manifest["summary"][split]["num_boxes"]
        objects = pd.read_csv(files["objects_csv"])
        assert int(boxes.is_group_of.sum()) == int(
            (objects["IsGroupOf"] * objects["LabelNames"].str.count(";").add(1)).sum()
        )
    index = AnnotationIndex.build_or_open(
        split_files(root, "train")["bbox_csv"], hierarchy, tmp_path / "cache"
    )
    objects = pd.read_csv(split_files(root, "train")["objects_csv"])
    assert index.num_boxes == manifest["summary"]["train"]["num_boxes"]
    assert index.num_images == objects["ImageID"].nunique()


def test_long_tail_imbalance_as_configured(tiny):
    root, _ = tiny
    objects = pd.read_csv(split_files(root, "train")["objects_csv"])
    images_per_leaf = objects.groupby("TrueLabelName")["ImageID"].nunique()
    assert len(images_per_leaf) == 24
    assert images_per_leaf.max() / images_per_leaf.min() == pytest.approx(40.0, rel=0.02)
    # A power law over ranks: log count falls linearly in log rank with slope -ln(I)/ln(L).
    counts = np.sort(images_per_leaf.to_numpy())[::-1]
    slope = np.polyfit(np.log(np.arange(1, 25)), np.log(counts), 1)[0]
    assert slope == pytest.approx(-np.log(40) / np.log(24), abs=0.1)


def test_validation_holds_every_leaf_and_is_labelled_like_training(tiny, tmp_path):
    root, _ = tiny
    objects = pd.read_csv(split_files(root, "validation")["objects_csv"])
    assert objects.groupby("TrueLabelName")["ImageID"].nunique().min() >= 3
    assert objects["TrueLabelName"].nunique() == 24
    # By default (val_label_noise: as_train) validation carries every label problem,
    # parent-only and leaf+parent boxes included, at the training rates (about 150 objects).
    rates = objects["LabelProblem"].value_counts(normalize=True)
    for problem in (*LABEL_PROBLEMS, "confused_pair"):
        assert rates.get(problem, 0) > 0.02, problem
    assert rates["clean"] < 0.7
    # val_label_noise=clean: the same images and boxes, every object labelled with its truth;
    # training is unchanged.
    clean_root = tmp_path / "clean"
    generate_synthetic_benchmark(clean_root, {**TINY, "val_label_noise": "clean"})
    clean = pd.read_csv(split_files(clean_root, "validation")["objects_csv"])
    assert (clean["LabelProblem"] == "clean").all()
    assert (clean["LabelNames"] == clean["TrueLabelName"]).all()
    key = ["ImageID", "TrueLabelName", "XMin", "XMax", "YMin", "YMax"]
    pd.testing.assert_frame_equal(clean[key], objects[key])
    digests, clean_digests = file_digests(root), file_digests(clean_root)
    for name in digests:
        if name.startswith(("train", "validation/")):
            assert clean_digests[name] == digests[name], name
    with pytest.raises(ValueError, match="val_label_noise"):
        SynthSettings.from_mapping({"val_label_noise": "noisy"})


def test_label_problem_rates_and_meaning(tiny):
    root, manifest = tiny
    hierarchy = Hierarchy.from_json(root / "hierarchy.json")
    objects = pd.read_csv(split_files(root, "train")["objects_csv"])
    confused = {mid for pair in manifest["summary"]["confused_pairs"] for mid in pair["mids"]}
    assert len(confused) == 6
    rates = objects[~objects["TrueLabelName"].isin(confused)]["LabelProblem"].value_counts(
        normalize=True
    )
    for problem in LABEL_PROBLEMS:  # about 750 objects: 4 standard deviations is 0.044
        assert rates[problem] == pytest.approx(0.1, abs=0.045), problem
    assert "confused_pair" not in rates
    assert manifest["summary"]["train"]["label_problem_rates"]["clean"] == pytest.approx(
        (objects["LabelProblem"] == "clean").mean(), abs=1e-4
    )

    def parent(mid: str) -> int:
        return int(np.flatnonzero(hierarchy.parents[hierarchy.index(mid)])[0])

    partner_of = {
        a: b
        for pair in manifest["summary"]["confused_pairs"]
        for a, b in [pair["mids"], pair["mids"][::-1]]
    }
    for row in objects.itertuples():
        true, labels = row.TrueLabelName, row.LabelNames.split(";")
        ancestors = {
            hierarchy.mids[k] for k in np.flatnonzero(hierarchy.ancestors[hierarchy.index(true)])
        }
        others = set(labels) - {true}
        kind = row.LabelProblem
        assert len(set(labels)) == len(labels)
        if kind == "clean":
            assert labels == [true]
        elif kind == "leaf_and_parent":
            assert len(labels) == 2 and true in labels and others <= ancestors
        elif kind == "parent_only":
            assert len(labels) == 1 and labels[0] in ancestors
        elif kind == "confused_pair":
            assert sorted(labels) == sorted([true, partner_of[true]])
        elif kind in ("sibling_swap", "sibling_both"):
            (sibling,) = others
            assert hierarchy.is_leaf(sibling) and parent(sibling) == parent(true)
            assert len(labels) == (1 if kind == "sibling_swap" else 2)
            if true in partner_of:  # a confused pair's sibling problems use the partner
                assert sibling == partner_of[true]
        else:  # two_leaves: a leaf of another family
            (other,) = others
            assert kind == "two_leaves" and true in labels and hierarchy.is_leaf(other)
            assert not ancestors & {
                hierarchy.mids[k]
                for k in np.flatnonzero(hierarchy.ancestors[hierarchy.index(other)])
            }

    # The bbox CSV holds exactly one identical box per label of each object.
    boxes = pd.read_csv(split_files(root, "train")["bbox_csv"])
    expected = objects.assign(LabelName=objects["LabelNames"].str.split(";")).explode("LabelName")
    key = ["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf"]
    pd.testing.assert_frame_equal(
        boxes[key].sort_values(key).reset_index(drop=True),
        expected[key].sort_values(key).reset_index(drop=True),
    )
    groups = objects[objects["IsGroupOf"] == 1]
    assert len(groups) / len(objects) == pytest.approx(0.1, abs=0.04)
    assert (groups["NumInstances"] >= 3).all()


def test_same_seed_same_bytes(tiny, tmp_path):
    root, _ = tiny
    again = generate_synthetic_benchmark(tmp_path / "again", {**TINY, "num_workers": 2})
    digests = file_digests(tmp_path / "again")
    expected = file_digests(root)
    # The manifest records num_workers; everything it describes is the same.
    assert digests.pop("manifest.json") != expected.pop("manifest.json")
    assert digests == expected
    assert again["settings_hash"] == tiny[1]["settings_hash"]
    generate_synthetic_benchmark(tmp_path / "other", {**TINY, "seed": 4})
    other = file_digests(tmp_path / "other")
    assert other["train-annotations-bbox.csv"] != file_digests(root)["train-annotations-bbox.csv"]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="num_train_image"):
        SynthSettings.from_mapping({"num_train_image": 10})
    with pytest.raises(ValueError, match="label_noise"):
        SynthSettings.from_mapping({"label_noise": {"parent_only": 0.7, "sibling_swap": 0.7}})
    settings = SynthSettings.from_mapping({"num_train_images": 20, "imbalance": 300})
    with pytest.raises(ValueError, match="raise generate.num_train_images"):
        target_image_counts(settings, build_taxonomy(settings))
    with pytest.raises(ValueError, match=r"^generate\.confused_pairs\.pairs: unknown"):
        SynthSettings.from_mapping({"confused_pairs": {"pairs": 3}})
    with pytest.raises(ValueError, match="min_rate"):
        SynthSettings.from_mapping({"confused_pairs": {"min_rate": 0.7, "top_rate": 0.5}})
    # MINI has two sibling pairs: a third confused pair cannot be placed.
    with pytest.raises(
        ValueError, match=r"^generate\.confused_pairs\.num_pairs: 3 pairs cannot be placed"
    ):
        build_taxonomy(SynthSettings.from_mapping({**MINI, "confused_pairs": {"num_pairs": 3}}))


def test_config_drives_ensure_and_cli(tmp_path, capsys):
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "data" / "synth.yaml")
    small = {k: v for k, v in TINY.items() if k != "image_size"}
    small.update(num_train_images=60, num_val_images=20, imbalance=10.0)
    cfg = OmegaConf.merge(cfg, {"root": str(tmp_path / "s"), "image_size": 24, "generate": small})
    first = ensure_synthetic_benchmark(cfg)
    assert first["generated"] and first["settings"]["image_size"] == 24
    for key in ("hierarchy_json", "class_descriptions_csv", "train.bbox_csv", "val.image_dir"):
        assert Path(OmegaConf.select(cfg, key)).exists(), key
    assert not ensure_synthetic_benchmark(cfg)["generated"]
    cfg.generate.noise_std = 1.0  # a changed setting regenerates only when asked
    with pytest.raises(GeneratedWithOtherSettingsError, match="data.generate.noise_std"):
        ensure_synthetic_benchmark(cfg)
    cfg.regenerate = True
    assert ensure_synthetic_benchmark(cfg)["generated"]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["settings"]["noise_std"] == 1.0

    # The command line reads the same config; it regenerates only when asked or changed.
    args = [f"root={tmp_path / 's'}", "image_size=24", "generate.noise_std=1.0"]
    args += [
        f"generate.{k}={v}"
        for k, v in small.items()
        if k not in ("noise_std", "label_noise", "object_size")
    ]
    args += ["generate.object_size=[0.3,0.5]"]
    args += [f"generate.label_noise.{k}={v}" for k, v in small["label_noise"].items()]
    assert not main(args)["generated"]
    assert "up to date" in capsys.readouterr().out


def test_generator_defaults_equal_the_shipped_data_config():
    """The dataclass defaults and conf/data/synth.yaml describe one benchmark, not two."""
    from omegaconf import OmegaConf

    from lsdet.data.synth import SynthSettings, settings_from_data_config

    data_cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "synth.yaml")
    assert settings_from_data_config(data_cfg) == SynthSettings()


# --------------------------------------------------------------------------------------------
# The generator never deletes or overwrites what it did not write.

MINI = mini_generator_settings(image_size=16)


def mini_config(root: Path, **generate):
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "data" / "synth.yaml")
    small = {k: v for k, v in MINI.items() if k != "image_size"}
    return OmegaConf.merge(
        cfg, {"root": str(root), "image_size": 16, "generate": {**small, **generate}}
    )


def test_refuses_a_user_folder_without_a_manifest(tmp_path):
    root = tmp_path / "mydata"
    (root / "train").mkdir(parents=True)
    (root / "train" / "photo.jpg").write_bytes(b"mine")
    (root / "train-annotations-bbox.csv").write_text("my annotations\n")
    before = file_digests(root)
    with pytest.raises(NotAGeneratedFolderError, match=r"mydata.*data\.root=") as error:
        ensure_synthetic_benchmark(mini_config(root))
    assert "nothing in" in str(error.value) and "was changed" in str(error.value)
    assert file_digests(root) == before
    # Another tool's manifest.json does not make the folder the generator's.
    (root / "manifest.json").write_text(json.dumps({"files_written": ["train/photo.jpg"]}))
    with pytest.raises(NotAGeneratedFolderError):
        generate_synthetic_benchmark(root, MINI)
    assert (root / "train" / "photo.jpg").read_bytes() == b"mine"


def test_writes_into_a_missing_or_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "missing" / "deeper"):
        manifest = generate_synthetic_benchmark(root, MINI)
        assert manifest["complete"] and manifest["generator"] == "lsdet.data.synth"
        written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        assert written == {*manifest["files_written"], "manifest.json"}


def test_regeneration_removes_only_its_own_files(tmp_path):
    root = tmp_path / "synth"
    cfg = mini_config(root)
    first = ensure_synthetic_benchmark(cfg)
    assert first["generated"]
    # A user's files inside the generated folder, and one listed file gone missing.
    (root / "train" / "notes.txt").write_text("mine")
    (root / "mine").mkdir()
    (root / "mine" / "a.csv").write_text("x\n")
    (root / "validation" / "va0000001.jpg").unlink()
    second = ensure_synthetic_benchmark(cfg)
    assert second["generated"]
    assert (root / "validation" / "va0000001.jpg").is_file()
    assert (root / "train" / "notes.txt").read_text() == "mine"
    assert (root / "mine" / "a.csv").read_text() == "x\n"
    # Fewer images: the surplus images it wrote go, the user's files stay.
    third = ensure_synthetic_benchmark(mini_config(root, num_train_images=20), regenerate=True)
    assert third["generated"]
    assert not (root / "train" / "tr0000023.jpg").exists()
    assert len(list((root / "train").glob("*.jpg"))) == 20
    assert (root / "train" / "notes.txt").read_text() == "mine"
    # A file of the user's where a new image would go: refuse, touch nothing.
    (root / "train" / "tr0000021.jpg").write_bytes(b"mine")
    before = file_digests(root)
    with pytest.raises(NotAGeneratedFolderError, match="tr0000021.jpg"):
        ensure_synthetic_benchmark(mini_config(root, num_train_images=24), regenerate=True)
    assert file_digests(root) == before


def test_an_interrupted_or_older_generation_is_regenerated(tmp_path):
    root = tmp_path / "synth"
    manifest = generate_synthetic_benchmark(root, MINI)
    # Interrupted: the manifest written before the files still says "incomplete".
    manifest_path = root / "manifest.json"
    saved = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**saved, "complete": False}))
    again = ensure_synthetic_benchmark(mini_config(root))
    assert again["generated"] and again["settings_hash"] == manifest["settings_hash"]
    # A folder written by generator version 1 (no file list: its settings number the
    # images) is recognised, and only its files are replaced.
    (root / "train" / "tr0000030.jpg").write_bytes(b"user")  # beyond v1's 24 images
    manifest_path.write_text(
        json.dumps(
            {
                "generator_version": 1,
                "settings_hash": "0" * 16,
                "settings": {"num_train_images": 24, "num_val_images": 8},
                "files": {},
                "summary": {},
            }
        )
    )
    assert ensure_synthetic_benchmark(mini_config(root))["generated"]
    assert (root / "train" / "tr0000030.jpg").read_bytes() == b"user"


def test_a_manifest_naming_files_outside_its_folder_deletes_nothing_there(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    root = tmp_path / "synth"
    generate_synthetic_benchmark(root, MINI)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files_written"].append("../precious.txt")
    (root / "manifest.json").write_text(json.dumps(manifest))
    generate_synthetic_benchmark(root, {**MINI, "seed": 2})
    assert outside.read_text() == "keep"


def test_cli_refusal_is_a_message_not_a_traceback(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "x.txt").write_text("x")
    with pytest.raises(SystemExit, match="refusing to write"):
        main([f"root={root}"])
    assert (root / "x.txt").read_text() == "x"


def test_rejected_settings_leave_an_existing_benchmark_as_it_was(tmp_path, capsys):
    """A run with settings the generator rejects (here: more confused pairs than MINI's two
    sibling pairs) changes nothing, and says so in one line naming the full key."""
    root = tmp_path / "synth"
    generate_synthetic_benchmark(root, MINI)
    (root / "cache").mkdir()
    (root / "cache" / "index.bin").write_bytes(b"a user's cache")
    before = file_digests(root)
    args = [f"root={root}", "image_size=16", "generate.confused_pairs.num_pairs=3"]
    args += [f"generate.{k}={v}" for k, v in MINI.items() if k not in ("image_size", "object_size")]
    args = [a for a in args if not a.startswith("generate.confused_pairs={")]
    args += ["generate.object_size=[0.4,0.6]"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value.code)
    assert message.startswith("error: generate.confused_pairs.num_pairs: 3 pairs cannot be placed")
    assert "\n" not in message
    assert file_digests(root) == before
    assert not list(tmp_path.glob(".synth.generating-*"))  # no staging folder left


def test_a_failure_while_writing_leaves_the_old_benchmark(tmp_path, monkeypatch):
    """The new generation is written beside the old one and moved in only when complete."""
    import lsdet.data.synth.generate as generate_module

    root = tmp_path / "synth"
    generate_synthetic_benchmark(root, MINI)
    before = file_digests(root)
    real_write_split = generate_module._write_split

    def fail_on_validation(folder, split, *args, **kwargs):
        if split == "validation":
            raise OSError("disk full")
        return real_write_split(folder, split, *args, **kwargs)

    monkeypatch.setattr(generate_module, "_write_split", fail_on_validation)
    with pytest.raises(OSError, match="disk full"):
        generate_synthetic_benchmark(root, {**MINI, "seed": 2})
    assert file_digests(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_a_folder_generated_with_other_settings_is_an_error_not_replaced(tmp_path, caplog):
    root = tmp_path / "synth"
    ensure_synthetic_benchmark(mini_config(root))
    before = file_digests(root)
    bigger = mini_config(root, num_train_images=30)
    bigger.image_size = 20
    with pytest.raises(GeneratedWithOtherSettingsError) as error:
        ensure_synthetic_benchmark(bigger)
    message = str(error.value)
    assert "data.generate.num_train_images: 24 there, 30 in the config" in message
    assert "data.image_size: 16 there, 20 in the config" in message
    assert "data.regenerate=true" in message and "noise_std" not in message
    assert file_digests(root) == before
    bigger.regenerate = True
    with caplog.at_level("WARNING", logger="lsdet.data.synth.generate"):
        assert ensure_synthetic_benchmark(bigger)["generated"]
    assert "data.generate.num_train_images: 24 there, 30 in the config" in caplog.text
    assert len(list((root / "train").glob("*.jpg"))) == 30


def test_settings_errors_name_the_full_key(tmp_path):
    from lsdet.data.synth import SynthSettingsError

    with pytest.raises(SynthSettingsError, match=r"^data\.generate\.confused_pairs\.num_pairs: "):
        ensure_synthetic_benchmark(mini_config(tmp_path / "s", confused_pairs={"num_pairs": 3}))
    with pytest.raises(SynthSettingsError, match=r"^data\.generate\.num_families: must be in"):
        ensure_synthetic_benchmark(mini_config(tmp_path / "s", num_families=9))
    with pytest.raises(SynthSettingsError, match=r"^data\.generate\.noise_std: expected a number"):
        ensure_synthetic_benchmark(mini_config(tmp_path / "s", noise_std="loud"))
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------------------------
# Benchmark v2: no label-order leak, Open-Images-like verified labels, confused pairs.


def test_objects_csv_columns_and_file_order(tiny):
    root, _ = tiny
    for split in ("train", "validation"):
        files = split_files(root, split)
        objects = pd.read_csv(files["objects_csv"])
        assert {"ImageID", "TrueLabelName", "LabelProblem", "LabelNames"} <= set(objects.columns)
        # LabelNames lists an object's labels in the order of their rows in the bbox CSV.
        boxes = pd.read_csv(files["bbox_csv"])
        coords = ["XMin", "XMax", "YMin", "YMax"]
        in_file = boxes.groupby(["ImageID", *coords], sort=False)["LabelName"].agg(list)
        for row in objects.itertuples():
            key = (row.ImageID, row.XMin, row.XMax, row.YMin, row.YMax)
            assert in_file[key] == row.LabelNames.split(";")


def test_row_order_does_not_reveal_the_true_class(tiny):
    """Of the objects boxed with their true leaf and another label, the true leaf's row comes
    first about half the time (version 1: always), also within the whole image."""
    root, _ = tiny
    objects = pd.read_csv(split_files(root, "train")["objects_csv"])
    labels = objects["LabelNames"].str.split(";")
    with_truth = np.array([t in ls for t, ls in zip(objects["TrueLabelName"], labels, strict=True)])
    two = objects[(labels.str.len() == 2).to_numpy() & with_truth]
    first = (two["LabelNames"].str.split(";").str[0] == two["TrueLabelName"]).mean()
    assert len(two) > 150
    assert 0.35 < first < 0.65
    # The image's first row is not the first object's first label either: rows of different
    # objects interleave.
    boxes = pd.read_csv(split_files(root, "train")["bbox_csv"])
    first_rows = boxes.groupby("ImageID", sort=False)["LabelName"].first()
    first_objects = objects.groupby("ImageID", sort=False)["TrueLabelName"].first()
    multi = objects.groupby("ImageID").size() > 1
    share = (first_rows[multi[multi].index] == first_objects[multi[multi].index]).mean()
    assert share < 0.8


def test_verified_negatives_are_mostly_lookalikes(tiny):
    root, manifest = tiny
    taxonomy = build_taxonomy(SynthSettings.from_mapping(TINY))
    leaf_index = {mid: k for k, mid in enumerate(taxonomy.leaves)}
    for split in ("train", "validation"):
        files = split_files(root, split)
        labels = pd.read_csv(files["image_labels_csv"])
        negatives = labels[labels["Confidence"] == 0]
        objects = pd.read_csv(files["objects_csv"])
        present = objects.groupby("ImageID")["TrueLabelName"].agg(set)
        lookalike = [
            any(
                leaf_index[mid] in taxonomy.lookalikes(leaf_index[true])
                for true in present.get(image, set())
            )
            for image, mid in zip(negatives["ImageID"], negatives["LabelName"], strict=True)
        ]
        share = float(np.mean(lookalike))
        # 3 look-alike and 1 random candidate per image (a random one may be a look-alike).
        assert 0.7 < share < 1.0, (split, share)
        assert len(negatives) / labels["ImageID"].nunique() > 3
        drawn = manifest["summary"][split]["image_level_candidates"]
        assert drawn["negatives"] == len(negatives)
        assert drawn["lookalike"] > 2 * drawn["random"]


def test_lookalikes_are_siblings_and_the_two_leaves_partner():
    taxonomy = build_taxonomy(SynthSettings.from_mapping(TINY))
    for leaf in range(len(taxonomy.leaves)):
        got = taxonomy.lookalikes(leaf)
        siblings = [
            k
            for k in range(len(taxonomy.leaves))
            if k != leaf
            and taxonomy.leaf_family[k] == taxonomy.leaf_family[leaf]
            and taxonomy.leaf_shape[k] == taxonomy.leaf_shape[leaf]
        ]
        assert got == [*siblings, int(taxonomy.other_family_partner[leaf])]
        assert taxonomy.sibling_partner[leaf] in got


def test_pair_rates_by_hand():
    no_noise = LabelNoise(0.0, 0.0, 0.0, 0.0, 0.0)
    # Equal counts, no other problem: both rates are 2p / (1 + p).
    assert pair_rates(0.5, 10, 10, no_noise) == pytest.approx((2 / 3, 2 / 3))
    # 30 objects of a, 10 of b, p = 0.2: 8 coinciding pairs; a has 30 + 2 boxes, b 10 + 6.
    assert pair_rates(0.2, 30, 10, no_noise) == pytest.approx((8 / 32, 8 / 16))
    # Swaps and parent-only labels: a's objects keep their box with 1 - swap - parent_only.
    noise = LabelNoise(0.0, 0.0, 0.1, 0.1, 0.2)
    both, swap, keep = 0.5 + 0.5 * 0.1, 0.5 * 0.1, 1 - 0.05 - 0.1
    expected = both * 20 / (10 * keep + 10 * (both + swap))
    assert pair_rates(0.5, 10, 10, noise) == pytest.approx((expected, expected))
    prob = both_probability_for_rate(0.65, 30, 10, noise)
    assert max(pair_rates(prob, 30, 10, noise)) == pytest.approx(0.65, abs=1e-6)
    assert both_probability_for_rate(0.65, 10, 10, no_noise) == pytest.approx(0.65 / 1.35)
    assert both_probability_for_rate(0.01, 10, 10, LabelNoise(0, 0, 0, 0.5, 0)) == 0.0


def test_confused_pairs_follow_the_figure_3a_profile():
    """On many drawn objects (labels only, nothing rendered), each confused pair's measured
    rate of its less frequent class is its target; the targets fall linearly 0.65 -> 0.1."""
    settings = SynthSettings()
    taxonomy = build_taxonomy(settings)
    counts = target_image_counts(settings, taxonomy)["train"]
    rng = np.random.default_rng(0)
    pairs = [
        (a, int(taxonomy.sibling_partner[a]))
        for a in range(len(taxonomy.leaves))
        if taxonomy.confused_rate[a] > 0 and a < taxonomy.sibling_partner[a]
    ]
    assert len(pairs) == 10
    targets = sorted((float(taxonomy.confused_rate[a]) for a, _ in pairs), reverse=True)
    np.testing.assert_allclose(targets, np.linspace(0.65, 0.1, 10))
    for a, b in pairs:
        # At least 4,000 objects per pair and 300 of the rarer class, in the classes' ratio.
        scale = max(4000 / (counts[a] + counts[b]), 300 / min(counts[a], counts[b]))
        objects = [
            SceneObject(leaf, (0, 0, 1, 1), False, [], (0, 0, 0), 0.0)
            for leaf, n in ((a, counts[a]), (b, counts[b]))
            for _ in range(round(n * scale))
        ]
        _apply_label_problems(objects, settings, taxonomy, rng, noisy=True)
        mids = (taxonomy.leaves[a], taxonomy.leaves[b])
        boxes = {m: sum(m in o.labels for o in objects) for m in mids}
        coinciding = sum(set(mids) <= set(o.labels) for o in objects)
        measured = max(coinciding / boxes[m] for m in mids)
        assert measured == pytest.approx(taxonomy.confused_rate[a], abs=0.04), mids


# --------------------------------------------------------------------------------------------
# Dose-response variants: the share of objects with two leaf labels (generate.multi_label_rate)
# and the placement of the confused pairs (generate.confused_pairs.placement).

# A small benchmark whose settings and bytes are fixed: the values below were written by the
# generator before multi_label_rate and placement existed; at their defaults it must write
# the same bytes with the same settings hash.
FIXED = {
    "seed": 5,
    "image_size": 24,
    "num_train_images": 80,
    "num_val_images": 20,
    "num_families": 2,
    "shapes_per_family": 2,
    "hues_per_shape": 2,
    "textures_per_shape": 2,
    "imbalance": 8.0,
    "val_min_images_per_class": 2,
    "confused_pairs": {"num_pairs": 2, "top_rate": 0.6, "min_rate": 0.3},
}
FIXED_DIGESTS = {
    "train-annotations-bbox.csv": "ee49768d8ee6ddfdf0157a3cffd5f130a14c226cc3235e1a0f0afed2e7546c72",
    "validation-annotations-bbox.csv": (
        "eca25af506b6abbe8183db764e43a48432a30aa3f39ca0d19ab58ab6939b416d"
    ),
    "train-annotations-image-labels.csv": (
        "d7161ed0fecac4e2c75c5496532d6d7f921dfa9ae61569f5f2954d92368c533a"
    ),
    "manifest.json": "f86a4a82103b22aab95e997fe7e323ffb47e0543a75f6898c0737b1640c66c19",
    "train/tr0000003.jpg": "6b195ab58b37b6e8aeaf11987906b8d12e8c1f1023d1665252a053d201bbe749",
}


def leaf_label_counts(root: Path, split: str = "train") -> pd.Series:
    """Per drawn object, how many of its labels are leaves."""
    hierarchy = Hierarchy.from_json(root / "hierarchy.json")
    objects = pd.read_csv(split_files(root, split)["objects_csv"])
    return objects["LabelNames"].map(
        lambda names: sum(hierarchy.is_leaf(mid) for mid in names.split(";"))
    )


def test_defaults_keep_the_v2_settings_hash_and_bytes(tmp_path):
    assert SynthSettings().content_hash() == "5e2473c572bc3a18"  # benchmark v2's
    explicit = SynthSettings.from_mapping(
        {"multi_label_rate": None, "confused_pairs": {"placement": "random"}}
    )
    assert explicit == SynthSettings() and explicit.content_hash() == "5e2473c572bc3a18"
    assert "multi_label_rate" not in explicit.to_dict()
    assert "placement" not in explicit.to_dict()["confused_pairs"]
    manifest = generate_synthetic_benchmark(tmp_path / "fixed", FIXED)
    assert manifest["settings_hash"] == "6da77b14a7d867e6"
    assert "multi_label" not in manifest["summary"]
    digests = file_digests(tmp_path / "fixed")
    assert {name: digests[name] for name in FIXED_DIGESTS} == FIXED_DIGESTS
    # a set multi_label_rate or another placement is another benchmark
    hashes = {
        SynthSettings.from_mapping(values).content_hash()
        for values in (
            {},
            {"multi_label_rate": 0.0},
            {"multi_label_rate": 0.1},
            {"confused_pairs": {"placement": "across_frequency"}},
        )
    }
    assert len(hashes) == 4


def test_multi_label_rate_zero_gives_no_object_with_two_leaf_labels(tmp_path):
    root = tmp_path / "m0"
    manifest = generate_synthetic_benchmark(root, {**TINY, "multi_label_rate": 0})
    for split in ("train", "validation"):  # validation is labelled as training (as_train)
        assert leaf_label_counts(root, split).max() == 1, split
    summary = manifest["summary"]
    assert summary["confused_pairs"] == []
    assert summary["multi_label"]["scale"] == 0 and summary["multi_label"]["target_rate"] == 0
    assert summary["multi_label"]["train_two_leaf_share"] == 0
    rates = summary["train"]["label_problem_rates"]
    assert rates["two_leaves"] == rates["sibling_both"] == rates["confused_pair"] == 0
    # the other label problems are unchanged (TINY: 0.1 each, about 1,000 objects)
    for problem in ("leaf_and_parent", "sibling_swap", "parent_only"):
        assert summary["multi_label"]["label_noise"][problem] == 0.1
        assert rates[problem] == pytest.approx(0.1, abs=0.045), problem


def test_multi_label_rate_sets_the_share_of_objects_with_two_leaf_labels(tmp_path):
    # A small benchmark: about 1,000 training objects, sd of the share about 0.013.
    root = tmp_path / "m0.2"
    manifest = generate_synthetic_benchmark(root, {**TINY, "multi_label_rate": 0.2})
    measured = (leaf_label_counts(root) == 2).mean()
    assert measured == pytest.approx(0.2, abs=0.04)
    assert manifest["summary"]["multi_label"]["train_two_leaf_share"] == pytest.approx(
        measured, abs=1e-4
    )
    # The full-size benchmark (labels only, nothing rendered): the share of every m, placed
    # either way, on 3 x the training objects; sibling_both and two_leaves scale together.
    rng = np.random.default_rng(0)
    for placement in ("random", "across_frequency"):
        for m in (0.1, 0.2, 0.4):
            settings = SynthSettings.from_mapping(
                {"multi_label_rate": m, "confused_pairs": {"placement": placement}}
            )
            taxonomy = build_taxonomy(settings)
            counts = target_image_counts(settings, taxonomy)["train"]
            objects = [
                SceneObject(leaf, (0, 0, 1, 1), False, [], (0, 0, 0), 0.0)
                for leaf, n in enumerate(counts)
                for _ in range(3 * n)
            ]
            _apply_label_problems(objects, settings, taxonomy, rng, noisy=True)
            leaves = set(taxonomy.leaves)
            two = np.mean([len(leaves.intersection(o.labels)) == 2 for o in objects])
            assert two == pytest.approx(m, abs=0.01), (placement, m)
            noise = taxonomy.label_noise
            scale = taxonomy.multi_label_scale
            assert noise.two_leaves == pytest.approx(0.04 * scale)
            assert noise.sibling_both == pytest.approx(0.04 * scale)
            assert (noise.leaf_and_parent, noise.sibling_swap, noise.parent_only) == (
                0.08,
                0.08,
                0.08,
            )
            base = build_taxonomy(
                SynthSettings.from_mapping({"confused_pairs": {"placement": placement}})
            )
            on_pair = base.confused_rate > 0  # the pairs stay where they were placed
            np.testing.assert_array_equal(taxonomy.confused_rate > 0, on_pair)
            np.testing.assert_allclose(
                taxonomy.confused_rate[on_pair], 1 - (1 - base.confused_rate[on_pair]) ** scale
            )


def test_scaled_pair_rate_and_label_noise():
    from lsdet.data.synth import scaled_label_noise, scaled_pair_rate

    assert scaled_pair_rate(0.65, 1.0) == pytest.approx(0.65)
    assert scaled_pair_rate(0.65, 0.0) == 0.0
    assert scaled_pair_rate(0.1, 2.0) == pytest.approx(1 - 0.9**2)
    assert 0.99 < scaled_pair_rate(0.65, 5.0) < 1
    noise = scaled_label_noise(LabelNoise(0.1, 0.2, 0.3, 0.05, 0.1), 2.0)
    assert noise == LabelNoise(0.1, 0.4, 0.3, 0.1, 0.1)


def test_across_frequency_puts_confused_pairs_in_each_third_of_the_ranks():
    def pair_ranks(settings: SynthSettings) -> list[int]:
        taxonomy = build_taxonomy(settings)
        return sorted(
            int(min(taxonomy.leaf_rank[a], taxonomy.leaf_rank[taxonomy.sibling_partner[a]]))
            for a in range(len(taxonomy.leaves))
            if taxonomy.confused_rate[a] > 0 and a < taxonomy.sibling_partner[a]
        )

    spread = SynthSettings.from_mapping({"confused_pairs": {"placement": "across_frequency"}})
    ranks = pair_ranks(spread)
    assert len(ranks) == 10
    thirds = np.bincount(np.asarray(ranks) * 3 // 120, minlength=3)
    assert (thirds >= 3).all(), ranks
    assert ranks[0] == 0  # the most frequent leaf's pair is one of them
    # the rates keep the Figure 3a profile, in an order not tied to frequency
    taxonomy = build_taxonomy(spread)
    rates = sorted(set(taxonomy.confused_rate[taxonomy.confused_rate > 0]), reverse=True)
    np.testing.assert_allclose(rates, np.linspace(0.65, 0.1, 10))


def test_multi_label_and_placement_errors_name_the_full_key(tmp_path):
    from lsdet.data.synth import SynthSettingsError

    with pytest.raises(SynthSettingsError, match=r"^generate\.multi_label_rate: must be null or"):
        SynthSettings.from_mapping({"multi_label_rate": 1.5})
    with pytest.raises(SynthSettingsError, match=r"^generate\.multi_label_rate: expected a number"):
        SynthSettings.from_mapping({"multi_label_rate": "high"})
    with pytest.raises(
        SynthSettingsError, match=r"^generate\.confused_pairs\.placement: must be one of"
    ):
        SynthSettings.from_mapping({"confused_pairs": {"placement": "middle"}})
    with pytest.raises(SynthSettingsError, match=r"^generate\.multi_label_rate: 0\.9 cannot be"):
        build_taxonomy(SynthSettings.from_mapping({"multi_label_rate": 0.9}))
    with pytest.raises(
        SynthSettingsError, match=r"^generate\.confused_pairs\.num_pairs: 3 pairs cannot be placed"
    ):
        build_taxonomy(
            SynthSettings.from_mapping(
                {**MINI, "confused_pairs": {"num_pairs": 3, "placement": "across_frequency"}}
            )
        )
    with pytest.raises(SynthSettingsError, match=r"^data\.generate\.multi_label_rate: "):
        ensure_synthetic_benchmark(mini_config(tmp_path / "s", multi_label_rate=-0.1))
    assert not (tmp_path / "s").exists()


def test_variants_of_m_share_the_training_images(tmp_path):
    """A benchmark variant changes labels only: the images (and the objects' true classes
    and boxes) are those of the other variants."""
    first = generate_synthetic_benchmark(tmp_path / "a", {**FIXED, "multi_label_rate": 0.0})
    second = generate_synthetic_benchmark(
        tmp_path / "b",
        {**FIXED, "multi_label_rate": 0.3, "confused_pairs": {**FIXED["confused_pairs"],
                                                             "placement": "across_frequency"}},
    )  # fmt: skip
    assert first["settings_hash"] != second["settings_hash"]
    a, b = file_digests(tmp_path / "a"), file_digests(tmp_path / "b")
    images = [name for name in a if name.endswith(".jpg")]
    assert images and all(a[name] == b[name] for name in images)
    assert a["train-annotations-bbox.csv"] != b["train-annotations-bbox.csv"]
    columns = ["ImageID", "ObjectIndex", "TrueLabelName", "XMin", "XMax", "YMin", "YMax"]
    objects = [pd.read_csv(split_files(tmp_path / x, "train")["objects_csv"]) for x in "ab"]
    pd.testing.assert_frame_equal(objects[0][columns], objects[1][columns])
