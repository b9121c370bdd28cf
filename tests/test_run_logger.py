"""The wandb run a training opens (lsdet.engine.run_logger.RunLogger): the runs of one Hydra
multirun share a group, the sweep; job_type says what the run does. wandb.init is replaced,
so nothing is written or sent."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from train_helpers import CONF_DIR, compose_train, tiny_overrides

from lsdet.engine.run_logger import RunLogger, hydra_sweep_group


class FakeRun:
    id = "fake-run-id"

    def log(self, *args, **kwargs) -> None:
        pass

    def finish(self) -> None:
        pass


@pytest.fixture()
def init_calls(monkeypatch):
    """The keyword arguments of every wandb.init call (the suite's WANDB_MODE=disabled
    removed, so that RunLogger calls it)."""
    import wandb

    calls: list[dict] = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        return FakeRun()

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "init", fake_init)
    return calls


@pytest.fixture()
def hydra_job(tmp_path):
    """Sets the Hydra config of the process as a job launched by ``mode`` (RUN/MULTIRUN),
    as Hydra sets it before calling the task function; cleared afterwards."""

    def set_mode(mode: str, sweep_dir: str) -> None:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=tiny_overrides(tmp_path / "synth"),
                return_hydra_config=True,
            )
        with open_dict(cfg):
            cfg.hydra.mode = mode
            cfg.hydra.sweep.dir = sweep_dir
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)

    yield set_mode
    HydraConfig.instance().cfg = None


def open_logger(tmp_path, **settings) -> RunLogger:
    return RunLogger(
        mode="offline", project="lsdet", run_dir=tmp_path, name="run", config={}, **settings
    )


def test_a_single_run_has_no_group_unless_one_is_set(tmp_path, init_calls, hydra_job):
    hydra_job("RUN", "multirun/2026-01-02_03-04-05")
    open_logger(tmp_path, job_type="train")
    open_logger(tmp_path, job_type="train", group="ablation-a")
    assert [(c["group"], c["job_type"]) for c in init_calls] == [
        (None, "train"),
        ("ablation-a", "train"),
    ]
    assert hydra_sweep_group() is None


def test_the_jobs_of_a_multirun_share_the_sweep_as_group(tmp_path, init_calls, hydra_job):
    hydra_job("MULTIRUN", "multirun/2026-01-02_03-04-05")
    assert hydra_sweep_group() == "2026-01-02_03-04-05"
    open_logger(tmp_path, job_type="train")
    open_logger(tmp_path, job_type="evaluate", group="named")  # logger.group wins
    assert [(c["group"], c["job_type"]) for c in init_calls] == [
        ("2026-01-02_03-04-05", "train"),
        ("named", "evaluate"),
    ]


def test_outside_hydra_there_is_no_sweep(tmp_path, init_calls):
    assert not HydraConfig.initialized()
    open_logger(tmp_path, job_type="train")
    assert init_calls[0]["group"] is None


def test_disabled_logger_does_not_open_wandb(tmp_path, init_calls):
    RunLogger(mode="disabled", project="lsdet", run_dir=tmp_path, name="run", config={}, group="g")
    assert init_calls == []


def test_training_passes_the_logger_settings_to_wandb(tmp_path, init_calls, hydra_job):
    """lsdet.train in a multirun job: logger=wandb's group (null: the sweep) and job_type
    reach wandb.init, with the run's name and the resolved config."""
    from lsdet.engine.trainer import run_training

    hydra_job("MULTIRUN", "multirun/2026-01-02_03-04-05")
    overrides = tiny_overrides(tmp_path / "synth") + [
        "logger=wandb",
        "logger.mode=offline",  # tiny_overrides disables it
        "schedule.phases.main.epochs=1",
        "schedule.phases.main.lr.milestones=[]",
        "train.max_iters_per_epoch=1",
    ]
    run_training(compose_train(overrides), tmp_path / "run")
    assert len(init_calls) == 1
    call = init_calls[0]
    assert (call["group"], call["job_type"], call["name"]) == (
        "2026-01-02_03-04-05",
        "train",
        "tiny",
    )
    assert call["config"]["logger"]["group"] is None
