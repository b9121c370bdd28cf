"""The structured configs of the loss, sampler and schedule groups (lsdet.config_schema.loss,
.sampler, .schedule): each yaml's keys are its schema's fields, Hydra refuses a misspelt key or
a value of the wrong type naming the key, and check_training_config refuses a value out of the
schema's range naming the full key."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from train_helpers import CONF_DIR, compose_train

import lsdet.losses
import lsdet.ops
from lsdet.config_schema.checks import check_training_config
from lsdet.config_schema.loss import LOSS_SCHEMAS, LossSettings
from lsdet.config_schema.sampler import SAMPLER_SCHEMAS, sampler_schema
from lsdet.config_schema.schedule import LrPlan, PhaseSettings, ScheduleSettings
from lsdet.losses import classification
from lsdet.sampling.samplers import SAMPLER_KEYS
from lsdet.sampling.schedule import Schedule

LOSSES = sorted(p.stem for p in (CONF_DIR / "loss").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONF_DIR / "sampler").glob("*.yaml"))
SCHEDULES = sorted(p.stem for p in (CONF_DIR / "schedule").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def yaml_keys(path: Path) -> dict:
    """The settings of a group's yaml (its defaults list left out)."""
    data = yaml.safe_load(path.read_text())
    data.pop("defaults", None)
    return data


def field_names(schema: type) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}


# (1) Each yaml of the group has exactly its schema's keys, and composes to that schema.


def test_every_loss_yaml_has_its_schemas_keys():
    assert sorted(LOSS_SCHEMAS) == LOSSES
    base = set(yaml_keys(CONF_DIR / "loss_base" / "default.yaml"))
    assert base | {"name", "parent_scores"} == field_names(LossSettings)
    for loss in LOSSES:
        keys = base | set(yaml_keys(CONF_DIR / "loss" / f"{loss}.yaml"))
        assert keys == field_names(LOSS_SCHEMAS[loss]), loss
        cfg = compose_train([f"loss={loss}"])
        assert OmegaConf.get_type(cfg.loss) is LOSS_SCHEMAS[loss]
        assert cfg.loss.name == loss


def test_every_sampler_yaml_has_its_schemas_keys():
    assert sorted(SAMPLER_SCHEMAS) == SAMPLERS
    for sampler in SAMPLERS:
        assert set(yaml_keys(CONF_DIR / "sampler" / f"{sampler}.yaml")) == field_names(
            SAMPLER_SCHEMAS[sampler]
        )
        assert set(SAMPLER_KEYS[sampler]) | {"name"} == field_names(SAMPLER_SCHEMAS[sampler])
        cfg = compose_train([f"sampler={sampler}"])
        assert OmegaConf.get_type(cfg.sampler) is sampler_schema(sampler)


def test_every_schedule_yaml_has_its_schemas_keys():
    for schedule in SCHEDULES:
        data = yaml_keys(CONF_DIR / "schedule" / f"{schedule}.yaml")
        assert set(data) == field_names(ScheduleSettings), schedule
        for name, phase in data["phases"].items():
            assert set(phase) == field_names(PhaseSettings), (schedule, name)
            assert set(phase["lr"]) == field_names(LrPlan), (schedule, name)
        cfg = compose_train([f"schedule={schedule}"])
        assert OmegaConf.get_type(cfg.schedule) is ScheduleSettings
        for phase in cfg.schedule.phases.values():
            assert OmegaConf.get_type(phase) is PhaseSettings
            assert OmegaConf.get_type(phase.lr) is LrPlan


def test_hybrid_keeps_its_sampler_override_and_sweeps_reach_the_finetune():
    cfg = compose_train(["schedule=hybrid"])
    assert OmegaConf.get_type(cfg.sampler) is SAMPLER_SCHEMAS["soft_balance"]
    for lam in (0.5, 0.7):
        cfg = compose_train(["schedule=hybrid", f"sampler.lam={lam}"])
        check_training_config(cfg)
        schedule = Schedule.from_config(cfg.schedule)
        assert schedule.phase("pretrain").sampler == {"name": "sequential"}
        assert schedule.phase("finetune").sampler == {
            "name": "soft_balance",
            "lam": lam,
            "num_samples": None,
        }


def test_choices_are_defined_once():
    """The loss choices the schema checks are the ones the losses and ops accept."""
    from lsdet.config_schema import loss, model

    assert lsdet.losses.WEIGHTINGS is loss.WEIGHTINGS
    assert classification.POSITIVE_TARGETS is loss.POSITIVE_TARGETS
    assert lsdet.ops.POSITIVE_REDUCTIONS is loss.POSITIVE_REDUCTIONS
    assert lsdet.losses.PARENT_SCORES is model.PARENT_SCORES


# (2) Hydra refuses a misspelt key and a value of the wrong type, naming the key.


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["loss=focal", "loss.gama=1.0"], "gama"),
        (["loss=focal", "loss.gamma=abc"], "gamma"),
        (["loss=co_bce", "loss.ignore_descendants=maybe"], "ignore_descendants"),
        (["loss.weight_lamda=0.5"], "weight_lamda"),
        (["sampler=soft_balance", "sampler.lamda=0.5"], "lamda"),
        (["sampler=soft_balance", "sampler.lam=abc"], "lam"),
        (["sampler=class_aware", "sampler.num_samples=1.5"], "num_samples"),
        (["schedule.phases.main.lr.gama=0.2"], "gama"),
        (["schedule.phases.main.epoch=3"], "epoch"),
        (["schedule.phases.main.epochs=two"], "epochs"),
        (["schedule.phases.main.lr.milestones=[a]"], "milestones"),
        (["schedule.phases.main.init_from_previous=maybe"], "init_from_previous"),
    ],
)
def test_a_misspelt_key_or_a_wrong_type_on_the_command_line_is_refused(overrides, key):
    with pytest.raises(ConfigCompositionException) as error:
        compose_train(overrides)
    assert key in f"{error.value} {error.value.__cause__}"


@pytest.fixture(scope="module")
def conf_with_typo_presets(tmp_path_factory):
    """A copy of conf/ with presets that misspell a loss, a sampler and a schedule key."""
    root = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(CONF_DIR, root)
    presets = {
        "typo_loss": "defaults:\n  - override /loss: focal\nloss:\n  gama: 1.0\n",
        "typo_sampler": "defaults:\n  - override /sampler: soft_balance\nsampler:\n  lamda: 0.5\n",
        "typo_schedule": "schedule:\n  phases:\n    main:\n      lr:\n        milestone: [3]\n",
    }
    for name, text in presets.items():
        (root / "experiment" / f"{name}.yaml").write_text("# @package _global_\n" + text)
    return root


@pytest.mark.parametrize(
    ("preset", "key"),
    [("typo_loss", "gama"), ("typo_sampler", "lamda"), ("typo_schedule", "milestone")],
)
def test_a_misspelt_key_in_a_preset_is_refused(conf_with_typo_presets, preset, key):
    with initialize_config_dir(str(conf_with_typo_presets), version_base="1.3"):
        with pytest.raises(ConfigCompositionException) as error:
            compose("train", overrides=[f"+experiment={preset}"])
    assert key in f"{error.value} {error.value.__cause__}"


# (3) A value out of the schema's range is refused by check_training_config, naming the key.


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.weight_lam=-0.5"], r"^loss\.weight_lam=-0\.5: expected a number >= 0$"),
        (["loss.beta=1"], r"^loss\.beta=1\.0: expected a number >= 0 and < 1$"),
        (["loss.weighting=soft"], r"^loss\.weighting='soft': expected one of \['none'"),
        (["loss=focal", "loss.alpha=1.5"], r"^loss\.alpha=1\.5: expected a number <= 1$"),
        (["loss=focal", "loss.gamma=-1"], r"^loss\.gamma=-1\.0: expected a number >= 0$"),
        (["loss=co_bce", "loss.cooccur_threshold=2"], r"^loss\.cooccur_threshold=2\.0: "),
        (["loss=eqlv2", "loss.mu=-0.1"], r"^loss\.mu=-0\.1: expected a number >= 0$"),
        (["loss=federated", "loss.num_classes_per_batch=0"], r"^loss\.num_classes_per_batch=0"),
        (["loss=seesaw", "loss.temperature=0"], r"^loss\.temperature=0\.0: expected a number > 0"),
        (["loss=seesaw", "loss.eps=0"], r"^loss\.eps=0\.0: expected a number > 0 and <= 1$"),
        (
            ["loss=concurrent_softmax", "loss.positive_targets=all"],
            r"^loss\.positive_targets='all': expected one of \['expanded', 'annotated'\]$",
        ),
        (["loss=concurrent_softmax", "loss.impl=cuda"], r"^loss\.impl='cuda': expected one of"),
        (
            ["sampler=soft_balance", "sampler.lam=-1"],
            r"^sampler\.lam=-1\.0: expected a number >= 0",
        ),
        (["sampler=class_aware", "sampler.num_samples=0"], r"^sampler\.num_samples=0: expected"),
        (
            ["sampler=repeat_factor", "sampler.repeat_threshold=0"],
            r"^sampler\.repeat_threshold=0\.0: expected a number > 0 and <= 1$",
        ),
        (["schedule.phases.main.epochs=0"], r"^schedule\.phases\.main\.epochs=0: expected an"),
        (["schedule.phases.main.lr.scale=0"], r"^schedule\.phases\.main\.lr\.scale=0\.0: "),
        (["schedule.phases.main.lr.warmup_iters=-1"], r"^schedule\.phases\.main\.lr\.warmup_"),
        (
            ["schedule.phases.main.lr.gamma=1.5"],
            r"^schedule\.phases\.main\.lr\.gamma=1\.5: expected a number > 0 and <= 1$",
        ),
        (
            ["schedule=hybrid", "schedule.phases.pretrain.lr.warmup_factor=2"],
            r"^schedule\.phases\.pretrain\.lr\.warmup_factor=2\.0: expected a number > 0 and <= 1",
        ),
        (
            ["schedule.phases.main.lr.milestones=[0,6]"],
            r"^schedule\.phases\.main\.lr\.milestones=\[0\.0, 6\.0\]: expected a list of numbers",
        ),
        # The hybrid pretrain's inline sampler is checked with the schema of the sampler it names.
        (
            [
                "schedule=hybrid",
                "schedule.phases.pretrain.sampler.name=soft_balance",
                "+schedule.phases.pretrain.sampler.lam=-1",
            ],
            r"^schedule\.phases\.pretrain\.sampler\.lam=-1: expected a number >= 0$",
        ),
        (
            [
                "schedule=hybrid",
                "schedule.phases.pretrain.sampler.name=repeat_factor",
                "+schedule.phases.pretrain.sampler.repeat_threshold=abc",
            ],
            r"^schedule\.phases\.pretrain\.sampler\.repeat_threshold='abc': expected a number > 0",
        ),
    ],
)
def test_a_value_out_of_range_names_its_full_key(overrides, message):
    cfg = compose_train(overrides)
    with pytest.raises(ValueError, match=message):
        check_training_config(cfg)


def test_an_inline_sampler_in_range_passes():
    cfg = compose_train(
        [
            "schedule=hybrid",
            "schedule.phases.pretrain.sampler.name=soft_balance",
            "+schedule.phases.pretrain.sampler.lam=1.5",
        ]
    )
    check_training_config(cfg)
    assert Schedule.from_config(cfg.schedule).phase("pretrain").sampler["lam"] == 1.5


# (4) Every preset still composes and passes the checks.


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_passes_the_checks(preset):
    cfg = compose_train([f"+experiment={preset}"])
    check_training_config(cfg)
    Schedule.from_config(cfg.schedule)
    assert OmegaConf.get_type(cfg.loss) is LOSS_SCHEMAS[cfg.loss.name]


@pytest.mark.parametrize(
    ("lr", "message"),
    [
        (
            {"warmup_factor": 0},
            r"^schedule\.phases\.main\.lr\.warmup_factor=0: expected a number > 0",
        ),
        ({"scale": -1.0}, r"^schedule\.phases\.main\.lr\.scale=-1\.0: expected a number > 0$"),
        ({"warmup_iters": 2.5}, r"^schedule\.phases\.main\.lr\.warmup_iters=2\.5: expected an"),
    ],
)
def test_a_schedule_hydra_did_not_compose_is_checked_with_the_schemas_ranges(lr, message):
    """Schedule.from_config also takes a plain mapping: the same ranges, from the schema."""
    phase = {"sampler": {"name": "sequential"}, "epochs": 2, "lr": lr}
    with pytest.raises(ValueError, match=message):
        Schedule.from_config({"name": "plain", "phases": {"main": phase}})
    with pytest.raises(ValueError, match=r"^schedule\.phases\.main\.epochs=0: expected an integer"):
        Schedule.from_config({"phases": {"main": {**phase, "lr": {}, "epochs": 0}}})
