"""Inference from a checkpoint: `lsdet.evaluate checkpoint=...` and `lsdet.predict` use the
checkpoint's input settings unless overridden; `lsdet.predict` takes every image file of a
folder (subfolders, any case of a suffix), reports what it skips, and draws detections."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from train_helpers import compose_evaluate, compose_predict, train_evaluated_run

import lsdet.inference as inference
import lsdet.inference.metric
import lsdet.predict
from lsdet.evaluate import evaluate_checkpoint
from lsdet.inference import (
    CORRUPT,
    EMPTY_FILE,
    UNIDENTIFIED,
    ImageFiles,
    list_image_folder,
    read_rgb_image,
)
from lsdet.predict import write_submission


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained on 64-px images (conf/data/synth.yaml says 128) and evaluated in
    memory by the trainer; returns (data root, checkpoint, the trainer's last mAP)."""
    tmp_path = tmp_path_factory.mktemp("inference")
    data_root = tmp_path / "synth"
    cfg, summary = train_evaluated_run(data_root, tmp_path / "run")
    assert cfg.data.image_size == 64
    return data_root, tmp_path / "run" / "checkpoints" / "last.pt", summary["history"][-1]["map"]


@pytest.fixture
def seen_inputs(monkeypatch):
    """What the detector is given: per predict_images call, the first image's shape and the
    detector's own resize (min_size, max_size)."""
    calls = []
    original = inference.predict_images

    def spy(model, images, device, **kwargs):
        first = next(i for i in range(len(images)) if "skipped" not in images[i][1])
        calls.append(
            {
                "shape": tuple(images[first][0].shape),
                "min_size": model.transform.min_size,
                "max_size": model.transform.max_size,
            }
        )
        return original(model, images, device, **kwargs)

    monkeypatch.setattr(lsdet.inference.metric, "predict_images", spy)
    monkeypatch.setattr(lsdet.predict, "predict_images", spy)
    return calls


def test_evaluate_checkpoint_uses_the_checkpoints_image_size(
    trained, tmp_path, seen_inputs, caplog
):
    data_root, checkpoint, trained_map = trained
    cfg = compose_evaluate(data_root, checkpoint, tmp_path / "eval")  # no data.image_size
    with caplog.at_level(logging.INFO, logger="lsdet.inference.detector"):
        result, paths = evaluate_checkpoint(cfg)
    assert seen_inputs[0] == {"shape": (3, 64, 64), "min_size": (64,), "max_size": 64}
    # the images the trainer's evaluation saw, so its mAP exactly
    assert result.map == pytest.approx(trained_map, abs=1e-9)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["input"]["image_size"] == 64
    assert metrics["input"]["sources"] == {
        "image_size": "checkpoint",
        "min_size": "checkpoint",
        "max_size": "checkpoint",
    }
    assert "image_size 64 (checkpoint)" in caplog.text


def test_an_overridden_image_size_wins_and_the_detector_follows(
    trained, tmp_path, seen_inputs, caplog
):
    data_root, checkpoint, _ = trained
    cfg = compose_evaluate(data_root, checkpoint, tmp_path / "a", "data.image_size=96")
    with caplog.at_level(logging.INFO, logger="lsdet.inference.detector"):
        _, paths = evaluate_checkpoint(cfg)
    # the training tied model.min_size/max_size to data.image_size: they follow the override
    assert seen_inputs[-1] == {"shape": (3, 96, 96), "min_size": (96,), "max_size": 96}
    sources = json.loads(paths["metrics"].read_text())["input"]["sources"]
    assert sources == {
        "image_size": "override",
        "min_size": "follows image_size",
        "max_size": "follows image_size",
    }
    assert "image_size 96 (override)" in caplog.text

    cfg = compose_evaluate(
        data_root, checkpoint, tmp_path / "b", "data.image_size=96", "min_size=80", "max_size=90"
    )
    evaluate_checkpoint(cfg)
    assert seen_inputs[-1] == {"shape": (3, 96, 96), "min_size": (80,), "max_size": 90}

    for override, key in (
        ("data.image_size=-3", "data.image_size=-3"),
        ("min_size=0", "min_size=0"),
    ):
        cfg = compose_evaluate(data_root, checkpoint, tmp_path / "c", override)
        with pytest.raises(ValueError, match=key):
            evaluate_checkpoint(cfg)


def test_predict_uses_the_checkpoints_image_size_unless_overridden(trained, tmp_path, seen_inputs):
    _, checkpoint, _ = trained
    write_submission(compose_predict(checkpoint, tmp_path / "a" / "submission.csv"))
    assert seen_inputs[-1] == {"shape": (3, 64, 64), "min_size": (64,), "max_size": 64}
    report = json.loads((tmp_path / "a" / "submission_report.json").read_text())
    assert report["input"]["sources"]["image_size"] == "checkpoint"
    write_submission(compose_predict(checkpoint, tmp_path / "b" / "s.csv", "image_size=96"))
    assert seen_inputs[-1] == {"shape": (3, 96, 96), "min_size": (96,), "max_size": 96}


def test_evaluate_checkpoint_with_an_undecodable_image(trained, tmp_path):
    data_root, checkpoint, _ = trained
    copy = tmp_path / "synth"
    shutil.copytree(data_root, copy)
    broken = sorted((copy / "validation").glob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated JPEG
    with pytest.raises(inference.ImageDecodeError, match=broken.name):
        evaluate_checkpoint(compose_evaluate(copy, checkpoint, tmp_path / "strict"))
    _, paths = evaluate_checkpoint(
        compose_evaluate(copy, checkpoint, tmp_path / "e", "strict=false")
    )
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["undecodable_images"][CORRUPT]["count"] == 1
    assert metrics["undecodable_images"][CORRUPT]["examples"][0]["image_id"] == broken.stem


def make_image_folder(folder: Path, source_images: list[Path]) -> dict[str, tuple[int, int]]:
    """A folder of every kind of file lsdet.predict meets; returns the decodable images' ids
    and (width, height)."""
    sizes = {}
    layout = {
        "top.jpg": ("JPEG", None),
        "UPPER.JPG": ("JPEG", (100, 80)),
        "b.png": ("PNG", None),
        "sub/c.jpeg": ("JPEG", None),
        "sub/deeper/d.webp": ("WEBP", (90, 128)),
    }
    for (name, (fmt, size)), source in zip(layout.items(), source_images, strict=False):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as image:
            image = image.convert("RGB") if size is None else image.convert("RGB").resize(size)
            image.save(path, fmt)
            sizes[name.rsplit(".", 1)[0]] = image.size
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "sub" / "labels.csv").write_text("a,b\n")
    (folder / "garbage.jpg").write_bytes(b"this is no jpeg")
    (folder / "empty.png").write_bytes(b"")
    truncated = (folder / "top.jpg").read_bytes()[:300]
    (folder / "sub" / "truncated.jpg").write_bytes(truncated)
    return sizes


def test_predict_takes_every_image_file_and_reports_what_it_skips(trained, tmp_path, caplog):
    data_root, checkpoint, _ = trained
    folder = tmp_path / "images"
    sizes = make_image_folder(folder, sorted((data_root / "validation").glob("*.jpg")) * 2)
    csv = tmp_path / "out" / "submission.csv"
    cfg = compose_predict(checkpoint, csv, f"image_dir={folder}")
    with caplog.at_level(logging.INFO, logger="lsdet.predict"):
        write_submission(cfg)
    rows = pd.read_csv(csv, keep_default_na=False)
    assert (
        sorted(rows["ImageId"]) == sorted(sizes) == ["UPPER", "b", "sub/c", "sub/deeper/d", "top"]
    )
    report = json.loads((tmp_path / "out" / "submission_report.json").read_text())
    assert report["image_files_found"] == 8 and report["images_predicted"] == 5
    assert report["image_files_in_subfolders"] == 3
    by_reason = report["undecodable_images"]["by_reason"]
    assert {reason: entry["count"] for reason, entry in by_reason.items()} == {
        UNIDENTIFIED: 1,
        EMPTY_FILE: 1,
        CORRUPT: 1,
    }
    example = by_reason[CORRUPT]["examples"][0]
    assert example["image_id"] == "sub/truncated"
    assert str(folder / "sub" / "truncated.jpg") in example["detail"]
    assert report["ignored_files"]["by_suffix"] == {".csv": 1, ".txt": 1}
    assert "3 image files cannot be decoded" in caplog.text
    assert "2 files in" in caplog.text and "1 .txt" in caplog.text
    assert "their ImageId is the path relative to" in caplog.text

    # nothing a user made is overwritten: a second run into the same CSV is refused
    before = csv.read_bytes()
    with pytest.raises(FileExistsError, match="submission.csv"):
        write_submission(cfg)
    assert csv.read_bytes() == before


def test_visualize_draws_the_detections_of_n_images(trained, tmp_path):
    data_root, checkpoint, _ = trained
    folder = tmp_path / "images"
    sizes = make_image_folder(folder, sorted((data_root / "validation").glob("*.jpg")) * 2)
    csv = tmp_path / "out" / "submission.csv"
    cfg = compose_predict(
        checkpoint,
        csv,
        f"image_dir={folder}",
        "visualize=2",
        "visualize_min_score=0",
        "score_thresh=0",
        "detections_per_img=3",
        "layout=tf",
    )
    write_submission(cfg)
    drawn = sorted((tmp_path / "out" / "visualize").rglob("*.png"))
    # the first two image ids in order: UPPER (100 x 80 px) and b
    assert [p.relative_to(tmp_path / "out" / "visualize").as_posix() for p in drawn] == [
        "UPPER.png",
        "b.png",
    ]
    detections = pd.read_csv(csv)
    for path, image_id, source in zip(
        drawn, ["UPPER", "b"], [folder / "UPPER.JPG", folder / "b.png"], strict=True
    ):
        with Image.open(path) as image:
            assert image.size == sizes[image_id]
            pixels = np.asarray(image.convert("RGB"))
        original = read_rgb_image(source).permute(1, 2, 0).numpy()
        assert pixels.shape == original.shape
        best = detections[detections["ImageID"] == image_id].sort_values("Score").iloc[-1]
        height, width = original.shape[:2]
        # the top edge of the best box, between its left and right edges
        y = min(int(round(best["YMin"] * height)), height - 1)
        x0, x1 = int(best["XMin"] * width), int(np.ceil(best["XMax"] * width))
        band = slice(max(y - 1, 0), y + 2)
        assert (pixels[band, x0:x1] != original[band, x0:x1]).any()
    assert json.loads((tmp_path / "out" / "submission_report.json").read_text())["visualized"] == [
        str(p) for p in drawn
    ]

    with pytest.raises(ValueError, match="visualize=-1"):
        write_submission(compose_predict(checkpoint, tmp_path / "x.csv", "visualize=-1"))
    # a visualize folder that holds files is not written into
    with pytest.raises(FileExistsError, match="visualize"):
        write_submission(
            compose_predict(
                checkpoint, tmp_path / "out" / "other.csv", f"image_dir={folder}", "visualize=1"
            )
        )


def test_image_folder_listing_ids_and_collisions(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.JPG", "sub/a.png", "z.Jpeg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name, "PNG")
    (tmp_path / "readme.md").write_text("not an image")
    listing = list_image_folder(tmp_path)
    assert listing.image_ids == ["a", "sub/a", "z"]
    assert listing.ignored_by_suffix() == {".md": 1}
    files = ImageFiles.from_folder(tmp_path, image_size=4, strict=False)
    assert files[1][1] == {"image_id": "sub/a"} and files[1][0].shape == (3, 4, 4)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="two image files have the image id 'a'"):
        list_image_folder(tmp_path)
