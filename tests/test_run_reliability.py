"""A run's progress is never lost and a user's run is never overwritten: run-folder locks,
refused overwrites, checkpoints that survive a damaged last.pt, signals to the process group,
failed evaluations, settings checked up front, resume refusing changed training inputs,
non-finite or diverging training, a full disk, the concurrent rates a run used."""

import csv
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from train_helpers import compose_train, tiny_overrides

from lsdet.engine import hooks as hooks_module
from lsdet.engine import trainer as trainer_module
from lsdet.engine.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    load_checkpoint,
    load_latest_checkpoint,
    non_finite_tensors,
    save_keeping_previous,
)
from lsdet.engine.run_folder import RunFolder, RunFolderBusyError
from lsdet.engine.run_state import NonFiniteLossError, NonFiniteStateError
from lsdet.engine.trainer import run_training
from lsdet.sampling.schedule import Schedule

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synth") / "synth"


def test_second_run_into_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    with RunFolder(tmp_path / "run", resume=False):
        with pytest.raises(RunFolderBusyError, match=rf"pid {os.getpid()}"):
            with RunFolder(tmp_path / "run", resume=False):
                pass
    with RunFolder(tmp_path / "run", resume=False):  # released at exit
        pass


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    code = (
        "import os, sys, time; from lsdet.engine.run_folder import RunFolder\n"
        f"f = RunFolder({str(run_dir)!r}, resume=False).__enter__()\n"
        "print('locked', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderBusyError, match=f"pid {holder.pid}"):
        RunFolder(run_dir, resume=False).__enter__()
    holder.kill()
    holder.wait()
    with RunFolder(run_dir, resume=True) as folder:  # the stale lock file is no obstacle
        assert not folder.has_checkpoint()


def test_start_over_an_existing_checkpoint_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"x": 1}, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(FileExistsError, match=r"train.resume=true.*train.overwrite=true"):
        RunFolder(tmp_path, resume=False).should_resume()
    assert RunFolder(tmp_path, resume=False, overwrite=True).should_resume() is False
    assert RunFolder(tmp_path, resume="auto").should_resume() is True
    assert RunFolder(tmp_path / "new", resume="auto").should_resume() is False
    with pytest.raises(FileNotFoundError, match="train.resume=true but there is no checkpoint"):
        RunFolder(tmp_path / "new", resume=True).should_resume()
    with pytest.raises(ValueError, match="train.resume='sometimes'"):
        RunFolder(tmp_path, resume="sometimes")


def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    path = tmp_path / "last.pt"
    save_keeping_previous({"step": 1}, path)
    save_keeping_previous({"step": 2}, path)
    assert load_checkpoint(tmp_path / "previous.pt")["step"] == 1
    assert load_latest_checkpoint(tmp_path)[0]["step"] == 2
    path.write_bytes(path.read_bytes()[:20])  # truncated, e.g. a full disk
    with pytest.raises(CheckpointError, match=f"checkpoint {path} cannot be read"):
        load_checkpoint(path)
    state, used = load_latest_checkpoint(tmp_path)
    assert state["step"] == 1 and used.name == "previous.pt"
    assert "resuming from the previous checkpoint" in caplog.text
    (tmp_path / "previous.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="previous.pt"):
        load_latest_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-0.01", r"optim.lr=-0.01: expected a number > 0"),
        ("optim.lr=nan", r"optim.lr=nan"),
        ("optim.lr_per_image=-0.001", r"optim.lr_per_image=-0.001"),
        ("train.threads=0", r"train.threads=0: expected an integer >= 1"),
        ("train.max_iters_per_epoch=-1", r"train.max_iters_per_epoch=-1"),
        ("train.stop_after_iters=0", r"train.stop_after_iters=0"),
        ("train.resume=maybe", r"train.resume='maybe'"),
        ("train.max_consecutive_nonfinite=-1", r"train.max_consecutive_nonfinite=-1"),
        ("train.divergence.factor=0.5", r"train.divergence.factor=0.5: expected a number > 1"),
        ("train.divergence.steps=-1", r"train.divergence.steps=-1"),
        ("train.resume_allow_changes=[model.name]", r"'model.name' cannot change on resume"),
    ],
)
def test_bad_numbers_are_errors_naming_the_key_and_the_typed_value(
    data_root, tmp_path, override, message
):
    base = tiny_overrides(data_root)
    if override.startswith("optim.lr_per_image"):
        base += ["optim=sgd", "optim.lr=null"]
    with pytest.raises(ValueError, match=message):
        run_training(compose_train(base + [override]), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was built or written


@pytest.mark.parametrize(
    ("override", "full_key"),
    [
        ("train.threads=abc", "train.threads"),
        ("train.divergence.steps=1.5", "train.divergence.steps"),
    ],
)
def test_a_number_of_the_wrong_type_is_refused_when_the_config_is_composed(
    data_root, override, full_key
):
    # The schema's type (lsdet.config_schema.train): Hydra refuses it, naming the key.
    with pytest.raises(ConfigCompositionException) as caught:
        compose_train(tiny_overrides(data_root) + [override])
    assert f"full_key: {full_key}" in f"{caught.value} {caught.value.__cause__}"


def test_rerun_refuses_to_overwrite_and_resume_refuses_changed_training_settings(
    data_root, tmp_path
):
    base = tiny_overrides(data_root)
    run_training(compose_train(base), tmp_path / "run")
    with pytest.raises(FileExistsError, match="train.resume=true"):
        run_training(compose_train(base), tmp_path / "run")
    for change in ("train.max_iters_per_epoch=1", "train.hflip_prob=0.0"):
        key = change.split("=")[0]
        with pytest.raises(ValueError, match=rf"\['{key}'\]"):
            run_training(compose_train(base + ["train.resume=true", change]), tmp_path / "run")
    summary = run_training(compose_train(base + ["train.overwrite=true"]), tmp_path / "run")
    assert summary["status"] == "finished" and summary["global_step"] == 6


def test_resume_accepts_moved_data_and_refuses_changed_data(data_root, tmp_path):
    base = tiny_overrides(data_root) + ["train.stop_after_iters=2"]
    run_training(compose_train(base), tmp_path / "run")
    staged = tmp_path / "staged" / "synth"
    shutil.copytree(data_root, staged)  # the same files on "a node's local disk"
    moved = [o for o in tiny_overrides(staged) if "stop_after" not in o]
    summary = run_training(compose_train(moved + ["train.resume=true"]), tmp_path / "run")
    assert summary["status"] == "finished"

    run_training(compose_train(moved + ["train.stop_after_iters=2"]), tmp_path / "run2")
    train_csv = staged / "train-annotations-bbox.csv"
    lines = train_csv.read_text().splitlines()
    train_csv.write_text("\n".join(lines[:-1]) + "\n")  # one box fewer
    with pytest.raises(ValueError, match="training data differs"):
        run_training(compose_train(moved + ["train.resume=true"]), tmp_path / "run2")


def test_failed_evaluation_is_reported_after_the_checkpoint_and_training_goes_on(
    data_root, tmp_path, monkeypatch
):
    def broken_validation(*args, **kwargs):
        raise OSError("validation image 0042.jpg cannot be read")

    monkeypatch.setattr(hooks_module, "validate", broken_validation)
    cfg = compose_train(tiny_overrides(data_root) + ["train.eval_every=epoch"])
    summary = run_training(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["global_step"] == 6
    assert [h["eval_error"] for h in summary["history"]] == [
        "OSError: validation image 0042.jpg cannot be read"
    ] * 2
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["position"]["global_step"] == 6


def test_run_folder_holds_the_data_read_report(data_root, tmp_path):
    run_training(compose_train(tiny_overrides(data_root)), tmp_path / "run")
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert {"train", "val"} <= set(report)
    assert report["train"]["rows_skipped"] == 0


def test_sigterm_to_the_process_group_with_workers_checkpoints_and_says_how_to_resume(
    data_root, tmp_path
):
    # Build the tiny benchmark first (in this process), then train in a new session.
    run_training(compose_train(tiny_overrides(data_root, "warmup")), tmp_path / "warmup")
    overrides = [
        o for o in tiny_overrides(data_root) if not o.startswith(("schedule.", "train.num_workers"))
    ] + [
        "schedule.phases.main.epochs=200",
        "schedule.phases.main.lr.warmup_iters=2",
        "train.num_workers=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lsdet.train", *overrides],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # setsid: its own process group, like a Slurm job step
    )
    progress = tmp_path / "run" / "progress.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["global_step"] >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[0]
    os.killpg(process.pid, signal.SIGTERM)  # kill -TERM -- -PGID: workers included
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "DataLoader worker" not in output
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["position"]["global_step"] >= 3
    assert "Stopped by SIGTERM" in output and "train.resume=true" in output


def checkpoint_files(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_huge_lr_never_checkpoints_non_finite_weights_and_says_so_in_progress(
    data_root, tmp_path, caplog
):
    run_dir = tmp_path / "run"
    base = tiny_overrides(data_root)
    caplog.set_level(logging.WARNING, logger="lsdet.engine.run_state")
    # optim.lr=1e38: step 1 makes the weights inf, steps 2 and 3 are skipped; the epoch's
    # checkpoint (step 3) is refused
    with pytest.raises(NonFiniteStateError, match=r"step 3: NaN/inf in .*No checkpoint"):
        run_training(compose_train(base + ["optim.lr=1e38"]), run_dir)
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert "non-finite loss at step 2" in caplog.text and "the first at step 2" in caplog.text
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "failed" and "NaN/inf" in progress["error"]


def test_non_finite_streak_names_the_last_finite_checkpoint_and_a_lower_lr_resumes(
    data_root, tmp_path
):
    run_dir = tmp_path / "run"
    base = tiny_overrides(data_root)
    run_training(compose_train(base + ["train.stop_after_iters=3"]), run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    with pytest.raises(ValueError, match=r"train.resume_allow_changes=\['optim.lr'\]"):
        run_training(compose_train(base + ["train.resume=true", "optim.lr=1e30"]), run_dir)
    allow = ["train.resume=true", "train.resume_allow_changes=[optim.lr]"]
    # optim.lr=1e30: step 4 makes the weights huge, the losses of steps 5 and 6 are not
    # finite; a streak of 2 > 1 stops the run before the epoch's checkpoint
    with pytest.raises(
        NonFiniteLossError,
        match=rf"2 iterations in a row .*last finite checkpoint is {last} \(step 3\)",
    ):
        run_training(
            compose_train(base + allow + ["optim.lr=1e30", "train.max_consecutive_nonfinite=1"]),
            run_dir,
        )
    state = load_checkpoint(last)
    assert state["position"]["global_step"] == 3
    assert not non_finite_tensors({"model": state["model"], "optimizer": state["optimizer"]})
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "failed" and "NonFiniteLossError" in progress["error"]

    lrs = {}
    original = trainer_module.train_step

    def record_lr(run, images, targets):
        lrs[run.position.global_step + 1] = run.optimizer.param_groups[0]["lr"]
        return original(run, images, targets)

    trainer_module.train_step = record_lr
    try:
        summary = run_training(compose_train(base + allow + ["optim.lr=0.0001"]), run_dir)
    finally:
        trainer_module.train_step = original
    assert summary["status"] == "finished" and summary["global_step"] == 6
    # steps 4..6 ran with the schedule's lr over the new base lr
    schedule = Schedule.from_config(compose_train(base).schedule)
    for step in (4, 5, 6):
        expected = schedule.lr_at(0, step - 1, base_lr=0.0001, iters_per_epoch=3)
        assert lrs[step] == pytest.approx(expected), step
    assert load_checkpoint(last)["config"]["optim"]["lr"] == 0.0001


def test_corrupt_last_checkpoint_is_set_aside_and_the_good_one_stays_previous(data_root, tmp_path):
    run_dir = tmp_path / "run"
    base = tiny_overrides(data_root)
    # checkpoints at the end of epoch 1 (step 3) and at the stop (step 4)
    run_training(compose_train(base + ["train.stop_after_iters=4"]), run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    damaged = last.read_bytes()[:100]
    last.write_bytes(damaged)  # e.g. a copy cut short
    summary = run_training(
        compose_train(base + ["train.resume=true", "train.stop_after_iters=5"]), run_dir
    )
    assert summary["status"] == "stopped" and summary["global_step"] == 5
    names = checkpoint_files(run_dir)
    corrupt = [n for n in names if n.startswith("last.pt.corrupt-")]
    assert len(corrupt) == 1 and (run_dir / "checkpoints" / corrupt[0]).read_bytes() == damaged
    assert load_checkpoint(run_dir / "checkpoints" / "previous.pt")["position"]["global_step"] == 3
    assert load_checkpoint(last)["position"]["global_step"] == 5


@pytest.mark.parametrize("fault", ["free_space", "write_error"])
def test_full_disk_fails_naming_the_file_keeps_the_checkpoint_and_records_it(
    data_root, tmp_path, monkeypatch, fault
):
    run_dir = tmp_path / "run"
    base = tiny_overrides(data_root)
    run_training(compose_train(base + ["train.stop_after_iters=2"]), run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if fault == "free_space":
        real_usage = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=4096))
    else:
        real_save = torch.save

        def save_fails_on_checkpoints(obj, f, *args, **kwargs):
            if str(getattr(f, "name", "")).startswith(str(last)):
                raise RuntimeError("enforce fail at inline_container.cc:672") from OSError(
                    errno.ENOSPC, "No space left on device"
                )
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save_fails_on_checkpoints)
    with pytest.raises(CheckpointWriteError, match=f"cannot write {last}: no space left"):
        run_training(compose_train(base + ["train.resume=true"]), run_dir)
    monkeypatch.undo()
    assert load_checkpoint(last)["position"]["global_step"] == 2
    assert checkpoint_files(run_dir) == ["last.pt"]
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "failed" and "no space left" in progress["error"]


def test_diverging_finite_loss_is_flagged_in_the_log_and_the_summary(
    data_root, tmp_path, monkeypatch, caplog
):
    original = trainer_module.build_model

    def model_whose_loss_jumps_from_step_3(cfg, data, loss_fn, rates, device):
        model = original(cfg, data, loss_fn, rates, device)
        forward = model.forward
        calls = {"n": 0}

        def growing(images, targets=None):
            losses = forward(images, targets)
            calls["n"] += 1
            if calls["n"] >= 3:
                losses["loss_classifier"] = losses["loss_classifier"] * 1e4
            return losses

        model.forward = growing
        return model

    monkeypatch.setattr(trainer_module, "build_model", model_whose_loss_jumps_from_step_3)
    caplog.set_level(logging.WARNING, logger="lsdet.engine.training_log")
    cfg = compose_train(
        tiny_overrides(data_root) + ["train.divergence.steps=2", "train.divergence.factor=10"]
    )
    summary = run_training(cfg, tmp_path / "run")
    assert summary["status"] == "finished"
    assert summary["diverged"]["step"] == 4 and summary["diverged"]["since_step"] == 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["diverged"]["step"] == 4
    assert "the loss diverges" in caplog.text and "at step 4" in caplog.text

    calm = run_training(compose_train(tiny_overrides(data_root)), tmp_path / "calm")
    assert calm["diverged"] is None


def test_concurrent_rates_of_the_run_are_written_to_its_folder(data_root, tmp_path, monkeypatch):
    used = {}
    original = trainer_module.training_rates

    def record_rates(*args, **kwargs):
        used["rates"] = original(*args, **kwargs)
        return used["rates"]

    monkeypatch.setattr(trainer_module, "training_rates", record_rates)
    base = tiny_overrides(data_root) + ["rates.floor=0.0", "rates.prior_count=0"]
    run_training(compose_train(base + ["loss=concurrent_softmax"]), tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "concurrent_rates.csv").open()))
    assert list(rows[0])[:5] == [
        "class_i_mid",
        "class_i_name",
        "class_j_mid",
        "class_j_name",
        "rate",
    ]
    matrix = used["rates"][1:, 1:].clone()
    matrix.fill_diagonal_(0)
    assert len(rows) == int((matrix != 0).sum())  # every nonzero off-diagonal pair, once
    hierarchy_rows = [r for r in rows if r["hierarchy_pair"] == "1"]
    assert hierarchy_rows and all(float(r["rate"]) == 1.0 for r in hierarchy_rows)
    assert all(float(r["rate"]) > 0 for r in rows)

    run_training(compose_train(tiny_overrides(data_root)), tmp_path / "softmax")
    assert not (tmp_path / "softmax" / "concurrent_rates.csv").exists()  # no rates used
