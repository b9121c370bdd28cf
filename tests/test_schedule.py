"""Tests of lsdet.sampling.schedule and of the conf/sampler + conf/schedule Hydra groups."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lsdet.sampling import build_sampler
from lsdet.sampling.schedule import LrPlan, Schedule

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def test_lr_plan_by_hand():
    plan = LrPlan(scale=0.5, warmup_iters=10, warmup_factor=0.1, milestones=(2, 3.5), gamma=0.1)
    ipe = 100  # iterations per epoch
    # warm-up: 0.1 at it 0, linear to 1 at it 10: it 5 -> 0.1 * 0.5 + 0.5 = 0.55
    assert plan.factor(0, ipe) == pytest.approx(0.5 * 0.1)
    assert plan.factor(5, ipe) == pytest.approx(0.5 * 0.55)
    assert plan.factor(10, ipe) == pytest.approx(0.5)
    assert plan.factor(199, ipe) == pytest.approx(0.5)
    assert plan.factor(200, ipe) == pytest.approx(0.05)  # milestone epoch 2 = iteration 200
    assert plan.factor(349, ipe) == pytest.approx(0.05)
    assert plan.factor(350, ipe) == pytest.approx(0.005)  # epoch 3.5 = iteration 350
    with pytest.raises(ValueError):
        plan.factor(-1, ipe)


def hybrid_config(**finetune_overrides):
    finetune = {
        "sampler": {"name": "soft_balance", "lam": 0.7, "num_samples": None},
        "epochs": 3,
        "init_from_previous": True,
        "lr": {"scale": 0.1, "warmup_iters": 0, "milestones": [2], "gamma": 0.5},
    }
    finetune.update(finetune_overrides)
    return {
        "name": "hybrid",
        "phases": {
            "pretrain": {
                "sampler": {"name": "sequential"},
                "epochs": 4,
                "lr": {"scale": 1.0, "warmup_iters": 4, "warmup_factor": 0.5, "milestones": [3]},
            },
            "finetune": finetune,
        },
    }


def test_schedule_phases_lr_and_locate():
    schedule = Schedule.from_config(OmegaConf.create(hybrid_config()))
    assert [p.name for p in schedule.phases] == ["pretrain", "finetune"]
    assert schedule.total_epochs == 7
    pretrain, finetune = schedule.phases
    assert pretrain.sampler == {"name": "sequential"} and not pretrain.init_from_previous
    assert finetune.sampler["lam"] == 0.7 and finetune.init_from_previous
    assert schedule.phase("finetune") is finetune and schedule.phase(0) is pretrain
    base = 0.02
    # pretrain: warm-up 0.5 -> 1 over 4 its; x0.1 (default gamma) from epoch 3 = it 30
    assert schedule.lr_at(0, 0, base_lr=base, iters_per_epoch=10) == pytest.approx(0.01)
    assert schedule.lr_at(0, 2, base_lr=base, iters_per_epoch=10) == pytest.approx(0.015)
    assert schedule.lr_at(0, 29, base_lr=base, iters_per_epoch=10) == pytest.approx(0.02)
    assert schedule.lr_at(0, 30, base_lr=base, iters_per_epoch=10) == pytest.approx(0.002)
    # finetune: 0.1 x base, x0.5 from epoch 2 = it 20; iterations restart at 0 in each phase
    assert schedule.lr_at("finetune", 0, base_lr=base, iters_per_epoch=10) == pytest.approx(0.002)
    assert schedule.lr_at("finetune", 20, base_lr=base, iters_per_epoch=10) == pytest.approx(0.001)
    with pytest.raises(KeyError, match="nope"):
        schedule.phase("nope")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"epochs": 0}, r"finetune\.epochs"),
        ({"lr": {"milestones": [3]}}, r"finetune\.lr\.milestones"),
        ({"lr": {"milestones": [2, 1]}}, r"finetune\.lr\.milestones"),
        ({"lr": {"gama": 0.1}}, r"finetune\.lr: unknown key"),
        ({"lr": {"gamma": 0}}, r"finetune\.lr\.gamma"),
        ({"sampler": {"name": "soft_balance"}}, r"finetune\.sampler\.lam is required"),
        ({"sampler": {"name": "weird"}}, r"finetune\.sampler\.name"),
        ({"epoch": 3}, r"finetune: unknown key"),
    ],
)
def test_schedule_config_errors_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        Schedule.from_config(hybrid_config(**override))


def test_first_phase_cannot_init_from_previous():
    cfg = hybrid_config()
    cfg["phases"]["pretrain"]["init_from_previous"] = True
    with pytest.raises(ValueError, match="pretrain.init_from_previous"):
        Schedule.from_config(cfg)


@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory):
    """The project's sampler and schedule groups under a minimal root config."""
    root = tmp_path_factory.mktemp("conf")
    for group in ("sampler", "schedule"):
        shutil.copytree(CONF_DIR / group, root / group)
    (root / "root.yaml").write_text(
        "defaults:\n  - sampler: sequential\n  - schedule: 1x\n  - _self_\n"
    )
    return root


def compose_schedule(conf_dir, overrides):
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        cfg = compose("root", overrides=overrides)
    return cfg, Schedule.from_config(cfg.schedule)


def test_1x_schedule_composes_and_follows_the_top_level_sampler(conf_dir):
    cfg, schedule = compose_schedule(conf_dir, [])
    assert schedule.name == "1x" and len(schedule.phases) == 1
    (phase,) = schedule.phases
    assert phase.epochs == 7 and phase.lr.milestones == (4.0, 6.0) and phase.lr.gamma == 0.1
    assert phase.sampler == {"name": "sequential"}
    for lam in (0.3, 1.5):
        cfg, schedule = compose_schedule(conf_dir, ["sampler=soft_balance", f"sampler.lam={lam}"])
        assert schedule.phases[0].sampler == {
            "name": "soft_balance",
            "lam": lam,
            "num_samples": None,
        }


def test_hybrid_schedule_composes_and_sweeps_reach_the_finetune_sampler(conf_dir):
    cfg, schedule = compose_schedule(conf_dir, ["schedule=hybrid"])
    pretrain, finetune = schedule.phases
    assert (pretrain.epochs, finetune.epochs) == (20, 7)
    assert pretrain.sampler == {"name": "sequential"} and not pretrain.init_from_previous
    assert finetune.sampler == {"name": "soft_balance", "lam": 0.7, "num_samples": None}
    assert finetune.init_from_previous
    cfg, schedule = compose_schedule(
        conf_dir,
        [
            "schedule=hybrid",
            "sampler.lam=0.5",
            "schedule.phases.pretrain.epochs=2",
            "schedule.phases.pretrain.lr.milestones=[1]",
        ],
    )
    assert schedule.phase("finetune").sampler["lam"] == 0.5
    assert schedule.phase("pretrain").epochs == 2
    cfg, schedule = compose_schedule(conf_dir, ["schedule=hybrid", "sampler=class_aware"])
    assert schedule.phase("finetune").sampler["name"] == "class_aware"


@pytest.mark.parametrize("name", ["sequential", "class_aware", "soft_balance", "repeat_factor"])
def test_every_sampler_config_builds(conf_dir, name):
    cfg, _ = compose_schedule(conf_dir, [f"sampler={name}"])
    offsets = np.array([0, 2, 2, 5])
    images = np.array([0, 1, 1, 2, 3])
    sampler = build_sampler(cfg.sampler, class_offsets=offsets, class_images=images, num_images=4)
    assert sampler.name == name
    assert set(sampler) <= {0, 1, 2, 3}


def test_project_root_config_if_present_routes_sampler_sweeps():
    """The training root config (when it exists) must list `sampler` before `schedule`."""
    if not (CONF_DIR / "train.yaml").is_file():
        pytest.skip("conf/train.yaml not written yet")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["schedule=hybrid", "sampler.lam=0.5"])
    schedule = Schedule.from_config(cfg.schedule)
    assert schedule.phases[-1].sampler["lam"] == 0.5
