"""Engine pieces: checkpoints, guards, optimizer, sampler counts, reports, image folders."""

import csv
import errno
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lsdet.apps.report import comparison_table, plot_run_comparison
from lsdet.data import Hierarchy
from lsdet.engine.builders import build_optimizer
from lsdet.engine.checkpoint import (
    CheckpointWriteError,
    load_checkpoint,
    non_finite_tensors,
    save_atomic,
    save_keeping_previous,
)
from lsdet.engine.loaders import ShardedSequence
from lsdet.engine.random_state import rng_state, set_rng_state
from lsdet.engine.resume import config_differences, resume_allowed_changes
from lsdet.engine.run_state import DivergenceMonitor, NonFiniteGuard, NonFiniteLossError
from lsdet.engine.training_log import sampled_class_counts, write_concurrent_rates_csv
from lsdet.inference import Detections, ImageFiles


def test_save_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_atomic({"step": 1, "w": torch.ones(2)}, path)
    save_atomic({"step": 2, "w": torch.zeros(2)}, path)
    state = load_checkpoint(path)
    assert state["step"] == 2 and torch.equal(state["w"], torch.zeros(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"step": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled
        save_atomic({"step": 2, "bad": lambda: None}, path)
    assert load_checkpoint(path)["step"] == 1


def test_rng_state_round_trip():
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3))
    set_rng_state(state)
    second = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_non_finite_guard_counts_and_stops():
    guard = NonFiniteGuard(max_count=2)
    assert guard.step_ok(True, "it 0")
    assert not guard.step_ok(False, "it 1")
    assert not guard.step_ok(False, "it 2")
    with pytest.raises(NonFiniteLossError, match="it 3"):
        guard.step_ok(False, "it 3")
    assert guard.count == 3


def test_non_finite_guard_logs_each_skipped_step_and_stops_after_a_streak(caplog):
    guard = NonFiniteGuard(max_count=100, max_consecutive=2)
    caplog.set_level(logging.WARNING, logger="lsdet.engine.run_state")
    assert not guard.step_ok(False, "it 0", step=1)
    assert guard.step_ok(True, "it 1", step=2)  # a finite step ends the streak
    assert not guard.step_ok(False, "it 2", step=3)
    assert not guard.step_ok(False, "it 3", step=4)
    assert "non-finite loss at step 4" in caplog.text
    assert "2 in a row since step 3, 3 in the run, the first at step 1" in caplog.text
    with pytest.raises(NonFiniteLossError, match=r"3 iterations in a row .*steps 3\.\.5"):
        guard.step_ok(False, "it 4", step=5)
    restored = NonFiniteGuard(max_count=100, max_consecutive=2)
    restored.load_state_dict(guard.state_dict())
    assert (restored.count, restored.consecutive, restored.first_step) == (4, 3, 1)


def test_divergence_monitor_flags_a_loss_that_stays_far_above_its_running_mean():
    monitor = DivergenceMonitor(factor=10.0, steps=3)
    losses = [2.0, 1.8, 50.0, 1.7, 40.0, 1e3, 1e8, 1e12, 1e12]  # a spike, then divergence
    flagged = [step for step, loss in enumerate(losses, 1) if monitor.update(loss, step)]
    assert flagged == [7]  # steps 5, 6, 7 in a row; the spike at step 3 alone is no flag
    assert monitor.diverged_at["since_step"] == 5 and monitor.diverged_at["loss"] == 1e8
    assert monitor.running_mean < 2.0  # the diverging losses stay out of the running mean
    assert DivergenceMonitor(factor=10.0, steps=0).update(1e30, 1) is False  # off


def test_non_finite_tensors_names_weights_and_optimizer_state():
    state = {
        "model": {"w": torch.ones(2), "steps": torch.tensor([3])},
        "optimizer": {"state": {0: {"exp_avg_sq": torch.tensor([1.0, float("inf")])}}},
    }
    assert non_finite_tensors(state) == ["optimizer.state.0.exp_avg_sq"]
    state["model"]["w"][0] = float("nan")
    assert non_finite_tensors(state)[0] == "model.w"


def test_full_disk_refuses_the_checkpoint_and_keeps_the_last_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_keeping_previous({"step": 1, "w": torch.ones(1000)}, path)
    real_usage = shutil.disk_usage

    def nearly_full(where):
        return real_usage(where)._replace(free=100)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    with pytest.raises(CheckpointWriteError, match=f"cannot write {path}: no space left"):
        save_keeping_previous({"step": 2, "w": torch.ones(1000)}, path)
    monkeypatch.setattr(shutil, "disk_usage", real_usage)

    def write_fails(*args, **kwargs):  # the disk fills up while the file is written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", write_fails)
    with pytest.raises(CheckpointWriteError, match=f"cannot write {path}: no space left"):
        save_keeping_previous({"step": 2, "w": torch.ones(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no leftovers


def test_resume_allow_changes_accepts_only_the_lr_settings():
    cfg = OmegaConf.create({"train": {"resume_allow_changes": ["optim.lr"]}})
    assert resume_allowed_changes(cfg) == ("optim.lr",)
    cfg.train.resume_allow_changes = ["model.fpn_channels"]
    with pytest.raises(ValueError, match=r"'model.fpn_channels' cannot change on resume"):
        resume_allowed_changes(cfg)
    saved, current = {"optim": {"lr": 0.1}}, {"optim": {"lr": 0.01}}
    assert config_differences(saved, current) == ["optim.lr"]
    assert config_differences(saved, current, allowed=("optim.lr",)) == []


def test_concurrent_rates_csv_lists_the_nonzero_pairs_by_hand(tmp_path):
    # animal > {cat, dog}, car: rates [C+1, C+1] with row/column 0 the background
    hierarchy = Hierarchy(
        ["/animal", "/cat", "/dog", "/car"],
        {"/r": ["/animal", "/car"], "/animal": ["/cat", "/dog"]},
        root="/r",
    )
    rates = torch.zeros(5, 5)
    rates[1:, 1:] = torch.eye(4)
    rates[1, 2] = rates[2, 1] = rates[1, 3] = rates[3, 1] = 1.0  # hierarchy pairs
    rates[2, 3] = 0.25  # cat boxes that are also dog boxes
    rates[0, 2] = 0.5  # background: left out
    path = write_concurrent_rates_csv(
        tmp_path / "concurrent_rates.csv", rates, hierarchy, ["Animal", "Cat", "Dog", "Car"]
    )
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == [
        "class_i_mid",
        "class_i_name",
        "class_j_mid",
        "class_j_name",
        "rate",
        "hierarchy_pair",
    ]
    pairs = {
        (r["class_i_mid"], r["class_j_mid"]): (float(r["rate"]), r["hierarchy_pair"]) for r in rows
    }
    assert pairs == {
        ("/animal", "/cat"): (1.0, "1"),
        ("/cat", "/animal"): (1.0, "1"),
        ("/animal", "/dog"): (1.0, "1"),
        ("/dog", "/animal"): (1.0, "1"),
        ("/cat", "/dog"): (0.25, "0"),
    }
    estimated = next(r for r in rows if r["hierarchy_pair"] == "0")
    assert (estimated["class_i_name"], estimated["class_j_name"]) == ("Cat", "Dog")


def test_build_optimizer_scales_lr_with_total_batch():
    model = torch.nn.Linear(3, 2)
    sgd = OmegaConf.load("conf/optim/sgd.yaml")
    optimizer, lr = build_optimizer(sgd, model, total_batch_size=16)
    assert lr == pytest.approx(0.02)  # the paper: 0.00125 x 16
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4
    adamw = OmegaConf.load("conf/optim/adamw.yaml")
    optimizer, lr = build_optimizer(adamw, model, total_batch_size=16)
    assert lr == 1e-3 and isinstance(optimizer, torch.optim.AdamW)
    sgd.optimizer._target_ = "torch.optim.Lamb"
    with pytest.raises(ValueError, match="optim.optimizer"):
        build_optimizer(sgd, model, 16)


def test_sampled_class_counts_by_hand():
    # classes: 0 -> images {0, 1}, 1 -> {}, 2 -> {1, 2}
    offsets = np.array([0, 2, 2, 4])
    images = np.array([0, 1, 1, 2])
    stream = np.array([1, 1, 2, 0, 1])  # image 1 drawn three times
    assert sampled_class_counts(stream, offsets, images, 3).tolist() == [4, 0, 4]


def test_sharded_sequence_splits_in_order():
    assert list(ShardedSequence(5, 0, 2)) == [0, 2, 4]
    assert list(ShardedSequence(5, 1, 2)) == [1, 3] and len(ShardedSequence(5, 1, 2)) == 2


def test_detections_concat():
    a = Detections(np.array(["x"], object), np.array([1]), np.array([0.5]), np.zeros((1, 4)))
    b = Detections(np.array(["y", "y"], object), np.array([0, 2]), np.ones(2), np.ones((2, 4)))
    both = Detections.concat([a, b])
    assert len(both) == 3 and both.image_ids.tolist() == ["x", "y", "y"]
    assert both.boxes.shape == (3, 4)


def test_image_folder_reads_sorted_jpegs_with_ids(tmp_path):
    for name in ("b", "a"):
        Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / f"{name}.jpg")
    folder = ImageFiles.from_folder(tmp_path, image_size=16)
    assert len(folder) == 2
    image, target = folder[0]
    assert target == {"image_id": "a"} and image.shape == (3, 16, 16)
    assert 0.9 < float(image[0].mean()) <= 1.0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no image files in"):
        ImageFiles.from_folder(empty)


def write_run(run_dir, map_value, rare, aps):
    (run_dir / "eval" / "final").mkdir(parents=True)
    history = [
        {"epoch": 1},
        {
            "epoch": 2,
            "map": map_value,
            "map_rare": rare,
            "map_common": 0.5,
            "map_frequent": 0.9,
            "eval_dir": "eval/final",
        },
    ]
    summary = {"status": "finished", "seconds": 90.0, "history": history}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lines = ["mid,ap"] + [f"/m/{i},{ap}" for i, ap in enumerate(aps)]
    (run_dir / "eval" / "final" / "per_class.csv").write_text("\n".join(lines) + "\n")


def test_comparison_table_and_plots(tmp_path):
    write_run(tmp_path / "base", 0.5, 0.1, [0.2, 0.8])
    write_run(tmp_path / "ours", 0.55, 0.2, [0.3, 0.8])
    table = comparison_table([tmp_path / "base", tmp_path / "ours"])
    lines = table.splitlines()
    assert lines[2].startswith("| base | 0.5000 | 0.1000 |")
    assert lines[3].endswith("| +0.0500 | 1.5 |")
    paths = plot_run_comparison([tmp_path / "base", tmp_path / "ours"], tmp_path / "plots")
    assert [p.name for p in paths] == ["map_by_bucket.png", "per_class_ap_vs_base.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_config_differences_only_in_the_settings_that_must_match():
    saved = {
        "optim": {"lr": 0.1, "betas": [0.9, 0.99]},
        "train": {"batch_size": 2, "eval_every": "epoch"},
    }
    current = {
        "optim": {"lr": 0.1, "betas": [0.9, 0.999]},
        "train": {"batch_size": 4, "eval_every": "never"},
    }
    assert config_differences(saved, current) == ["optim.betas.1", "train.batch_size"]
    assert config_differences(saved, saved) == []


def test_demo_driver_trains_both_losses_and_prints_the_table(tmp_path):
    from train_helpers import tiny_overrides

    from lsdet.apps.demo import main

    overrides = [o for o in tiny_overrides(tmp_path / "synth") if not o.startswith("name=")]
    overrides += ["train.max_iters_per_epoch=1", "train.eval_every=phase"]
    text = main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "demo"), *overrides])
    assert "| demo_softmax |" in text and "| demo_concurrent_softmax |" in text
    for run in ("demo_softmax", "demo_concurrent_softmax"):
        assert f"protocol check {run}: mAP" in text
        assert (tmp_path / "runs" / run / "eval" / "recall_check" / "metrics.json").is_file()
    assert (tmp_path / "demo" / "summary.md").read_text() == text
    assert (tmp_path / "demo" / "map_by_bucket.png").is_file()


def test_seeded_items_do_not_depend_on_order_or_the_global_rng():
    from lsdet.engine.loaders import SeededDataset, SeededSampler

    class RandomItems(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, index):
            return index, float(torch.rand(()))

    data = SeededDataset(RandomItems())
    pairs = list(SeededSampler([4, 7, 4], seed=1, rank=0, epoch=2, start=0))
    assert [i for i, _ in pairs] == [4, 7, 4] and len({s for _, s in pairs}) == 3
    resumed = list(SeededSampler([7, 4], seed=1, rank=0, epoch=2, start=1))
    assert resumed == pairs[1:]  # position-based: a resumed epoch continues the same seeds
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = [data[p] for p in pairs]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    assert [data[p] for p in pairs] == first
    assert first[0][1] != first[2][1]  # same image, other position: other draw
    other_rank = list(SeededSampler([4], seed=1, rank=1, epoch=2, start=0))
    assert other_rank[0][1] != pairs[0][1]
