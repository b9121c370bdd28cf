"""A checkpoint saved before a setting existed resumes with the newer code when the setting is
at the value that keeps the older behaviour (engine/resume.py ADDED_SETTINGS)."""

import torch
from train_helpers import compose_train, tiny_overrides

from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.resume import config_differences
from lsdet.engine.trainer import run_training

OLD_LOSS = {"name": "concurrent_softmax", "weighting": "none", "impl": "auto"}


def test_added_loss_settings_at_their_old_behaviour_are_no_change():
    saved = {"loss": dict(OLD_LOSS), "seed": 0}
    current = {
        "loss": {**OLD_LOSS, "positive_targets": "expanded", "positive_reduction": "sum"},
        "seed": 0,
    }
    assert config_differences(saved, current) == []


def test_added_loss_settings_at_another_value_are_a_change():
    saved = {"loss": dict(OLD_LOSS)}
    current = {"loss": {**OLD_LOSS, "positive_targets": "annotated", "positive_reduction": "mean"}}
    assert config_differences(saved, current) == [
        "loss.positive_reduction",
        "loss.positive_targets",
    ]


def test_a_loss_without_the_settings_stays_unchanged():
    saved = {"loss": {"name": "softmax"}}
    assert config_differences(saved, {"loss": {"name": "softmax"}}) == []


def test_a_run_saved_without_the_new_loss_keys_resumes(tmp_path):
    base = tiny_overrides(tmp_path / "synth") + [
        "loss=concurrent_softmax",
        "loss.impl=torch",
        "train.max_iters_per_epoch=1",
    ]
    stopped = run_training(compose_train(base + ["train.stop_after_iters=1"]), tmp_path / "run")
    assert stopped["status"] == "stopped"
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["config"]["loss"]["positive_targets"]  # as written before the keys existed
    del state["config"]["loss"]["positive_reduction"]
    torch.save(state, last)
    summary = run_training(compose_train(base + ["train.resume=true"]), tmp_path / "run")
    assert summary["status"] == "finished"
