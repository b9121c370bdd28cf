"""Interrupted and resumed training ends exactly where an uninterrupted run ends."""

import json
import os
import signal

import pytest
import torch
from train_helpers import HYBRID, compose_train, tiny_overrides

from lsdet.engine import trainer as trainer_module
from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.run_state import NonFiniteLossError
from lsdet.engine.trainer import run_training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synth") / "synth"


def final_model(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stopped_mid_epoch_and_resumed_equals_uninterrupted(data_root, tmp_path):
    # Hybrid schedule: phase 1 sequential, phase 2 soft-balance from phase 1's weights.
    # 6 training images, batch 2: 3 iterations per epoch, 1 epoch each; stop after
    # iteration 4 = mid-epoch of phase 2, with its fresh optimizer and other sampler.
    base = [o for o in tiny_overrides(data_root) if not o.startswith("schedule.")] + HYBRID
    base += ["train.num_workers=1"]  # augmentation seeded per item: exact with workers too
    full = run_training(compose_train(base), tmp_path / "full")
    assert full["status"] == "finished" and full["global_step"] == 6
    assert [h["phase"] for h in full["history"]] == ["pretrain", "finetune"]
    for phase in ("pretrain", "finetune"):
        assert (tmp_path / "full" / "checkpoints" / f"phase_{phase}.pt").is_file()
    progress = json.loads((tmp_path / "full" / "progress.json").read_text())
    assert progress["status"] == "finished" and progress["fraction"] == 1.0

    stopped = run_training(compose_train(base + ["train.stop_after_iters=4"]), tmp_path / "cut")
    assert stopped["status"] == "stopped" and stopped["global_step"] == 4
    progress = json.loads((tmp_path / "cut" / "progress.json").read_text())
    assert progress["status"] == "stopped" and progress["fraction"] == pytest.approx(4 / 6)
    state = final_model(tmp_path / "cut")
    assert state["phase_name"] == "finetune"
    assert (state["position"]["phase"], state["position"]["iteration"]) == (1, 1)
    assert state["sampler"]["name"] == "soft_balance" and state["sampler"]["num_yielded"] == 2
    assert not (tmp_path / "cut" / "checkpoints" / "last.pt.tmp").exists()

    with pytest.raises(ValueError, match=r"\['optim.lr'\]"):  # a changed setting is refused
        run_training(compose_train(base + ["train.resume=true", "optim.lr=0.1"]), tmp_path / "cut")
    resumed = run_training(compose_train(base + ["train.resume=true"]), tmp_path / "cut")
    assert resumed["status"] == "finished" and resumed["global_step"] == 6

    a, b = final_model(tmp_path / "full"), final_model(tmp_path / "cut")
    assert_same_state(a["model"], b["model"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    # phase 2 has its own optimizer (3 steps), started on phase 1's weights
    assert all(int(v["step"]) == 3 for v in a["optimizer"]["state"].values())


def test_resume_without_checkpoint_is_a_clear_error(data_root, tmp_path):
    cfg = compose_train(tiny_overrides(data_root) + ["train.resume=true"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_training(cfg, tmp_path / "empty")


def test_sigterm_checkpoints_and_stops(data_root, tmp_path, monkeypatch):
    original = trainer_module.train_step

    def step_then_sigterm(run, images, targets):
        out = original(run, images, targets)
        if run.position.global_step == 1:  # the step in flight is iteration 2
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(trainer_module, "train_step", step_then_sigterm)
    summary = run_training(compose_train(tiny_overrides(data_root)), tmp_path / "run")
    assert summary["status"] == "interrupted" and summary["global_step"] == 2
    assert final_model(tmp_path / "run")["position"]["global_step"] == 2
    # the handler is removed afterwards
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_non_finite_losses_are_skipped_counted_and_stop_the_run(data_root, tmp_path, monkeypatch):
    original = trainer_module.build_model

    def model_with_a_nan_step(cfg, data, loss_fn, rates, device):
        model = original(cfg, data, loss_fn, rates, device)
        forward = model.forward
        calls = {"n": 0}

        def nan_on_second_call(images, targets=None):
            losses = forward(images, targets)
            calls["n"] += 1
            if calls["n"] == 2:
                losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
            return losses

        model.forward = nan_on_second_call
        return model

    monkeypatch.setattr(trainer_module, "build_model", model_with_a_nan_step)
    summary = run_training(compose_train(tiny_overrides(data_root)), tmp_path / "a")
    assert summary["status"] == "finished" and summary["nonfinite_steps"] == 1
    assert summary["nonfinite_first_step"] == 2
    with pytest.raises(NonFiniteLossError, match="max_nonfinite=0"):
        run_training(
            compose_train(tiny_overrides(data_root) + ["train.max_nonfinite=0"]), tmp_path / "b"
        )


def test_resume_after_a_stop_on_an_epochs_short_last_batch(data_root, tmp_path):
    # batch 4 over 6 images: 2 iterations per epoch, the second one of 2 images; stop there
    base = tiny_overrides(data_root) + ["train.batch_size=4"]
    stopped = run_training(compose_train(base + ["train.stop_after_iters=2"]), tmp_path / "r")
    assert stopped["status"] == "stopped"
    assert final_model(tmp_path / "r")["sampler"]["num_yielded"] == 6
    resumed = run_training(compose_train(base + ["train.resume=true"]), tmp_path / "r")
    assert resumed["status"] == "finished" and resumed["global_step"] == 4
