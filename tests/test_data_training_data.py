"""What a training reads from a data config: refusals of empty annotation files, and the
data report's count of the training images that could not be read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from train_helpers import mini_generator_settings

from lsdet.data.synth import generate_synthetic_benchmark
from lsdet.engine.training_data import build_training_data

REPO_ROOT = Path(__file__).resolve().parents[1]

MINI = mini_generator_settings(image_size=32)


@pytest.fixture()
def data_cfg(tmp_path):
    root = tmp_path / "synth"
    generate_synthetic_benchmark(root, MINI)
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "data" / "synth.yaml")
    # Files in the Open Images layout, read as a user's data (no generator settings).
    cfg = OmegaConf.merge(cfg, {"root": str(root), "image_size": 32})
    del cfg["generate"]
    return cfg


def test_a_header_only_training_bbox_csv_is_an_error_naming_it(data_cfg):
    train_csv = Path(data_cfg.train.bbox_csv)
    train_csv.write_text(train_csv.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"^data\.train\.bbox_csv: .*train-annotations-bbox\.csv "):
        build_training_data(data_cfg)


def test_a_training_bbox_csv_whose_rows_are_all_skipped_is_an_error_naming_it(data_cfg):
    train_csv = Path(data_cfg.train.bbox_csv)
    header, *rows = train_csv.read_text().splitlines()
    train_csv.write_text("\n".join([header, *(row + ",extra" for row in rows)]) + "\n")
    data_cfg.strict = False
    with pytest.raises(ValueError, match=rf"every one of the {len(rows)} rows of .*was skipped"):
        build_training_data(data_cfg)


def test_data_report_counts_training_images_skipped_in_workers(data_cfg, tmp_path):
    """data.strict=false with 5 of 24 training JPEGs truncated: after the images are drawn
    through DataLoader workers, data_report.json counts the 5 per reason, with the stand-ins
    served, not 0."""
    data_cfg.strict = False
    image_dir = Path(data_cfg.train.image_dir)
    truncated = sorted(image_dir.glob("*.jpg"))[3:8]
    for path in truncated:
        path.write_bytes(path.read_bytes()[:200])
    data = build_training_data(data_cfg, hflip_prob=0.0)
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_size=8, collate_fn=data.collate_fn, num_workers=2
    )
    seen = [t["image_id"] for _, targets in loader for t in targets]
    assert not {path.stem for path in truncated} & set(seen)
    data.write_read_reports(tmp_path / "data_report.json")
    report = json.loads((tmp_path / "data_report.json").read_text())["train_skipped_images"]
    assert report["count"] == 5
    assert report["by_reason"] == {"file_not_found": 0, "cannot_decode": 5}
    assert report["stand_ins"] == 5
    assert sorted(e["image_id"] for e in report["examples"]) == sorted(p.stem for p in truncated)
    assert "stands in" in report["handling"]


def test_training_refuses_a_benchmark_generated_with_other_settings(tmp_path):
    """build_training_data (what a training calls first) with a data config whose generator
    settings differ from the folder's: an error naming them, nothing regenerated."""
    from lsdet.data.synth import GeneratedWithOtherSettingsError

    root = tmp_path / "synth"
    generate_synthetic_benchmark(root, MINI)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "data" / "synth.yaml")
    generate = {k: v for k, v in MINI.items() if k != "image_size"}
    cfg = OmegaConf.merge(cfg, {"root": str(root), "image_size": 32, "generate": generate})
    assert build_training_data(cfg).num_train_images == 24  # the same settings: used
    cfg.generate.num_train_images = 3000
    with pytest.raises(GeneratedWithOtherSettingsError, match="num_train_images: 24 there, 3000"):
        build_training_data(cfg)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p in before}
    assert after == before
