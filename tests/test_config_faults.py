"""Config and launch faults: out-of-range thresholds, IoUs and fractions, unparsable numbers,
a refused start that must leave its run folder as it was, a read-only run folder, and the
resume command printed after an interrupted run or sweep."""

from __future__ import annotations

import pytest
from train_helpers import CONF_DIR, compose_train

from lsdet.engine.config_checks import (
    LOSS_SETTINGS,
    NUMERIC_SETTINGS,
    PHASE_SETTINGS,
    SAMPLER_SETTINGS,
    check_training_config,
)

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # No detection is kept at a score threshold of 1 or more (scores are <= 1).
        (
            ["model.roi.score_thresh=2"],
            r"model\.roi\.score_thresh=2: expected a number >= 0 and < 1",
        ),
        (["model.roi.score_thresh=1"], r"model\.roi\.score_thresh=1: expected"),
        (["rates.iou_threshold=1.5"], r"rates\.iou_threshold=1\.5: expected a number > 0 and <= 1"),
        (
            ["model.roi.fg_iou_thresh=-0.5"],
            r"model\.roi\.fg_iou_thresh=-0\.5: expected a number >= 0",
        ),
        (
            ["model.roi.bg_iou_thresh=0.7"],
            r"model\.roi\.bg_iou_thresh=0\.7 is above model\.roi\.fg",
        ),
        (
            ["model.rpn.nms_thresh=1.2"],
            r"model\.rpn\.nms_thresh=1\.2: expected a number >= 0 and <= 1",
        ),
        (
            ["model.roi.positive_fraction=0"],
            r"model\.roi\.positive_fraction=0: expected a number > 0",
        ),
        (["model.prior_prob=1"], r"model\.prior_prob=1: expected a number > 0 and < 1"),
        (["rates.floor=-0.1"], r"rates\.floor=-0\.1: expected"),
        (["loss.beta=1"], r"loss\.beta=1: expected a number >= 0 and < 1"),
        (["loss=co_bce", "loss.cooccur_threshold=2"], r"loss\.cooccur_threshold=2: expected"),
        (["loss=focal", "loss.alpha=1.5"], r"loss\.alpha=1\.5: expected a number <= 1"),
        (["sampler=repeat_factor", "sampler.repeat_threshold=5"], r"sampler\.repeat_threshold=5"),
        (["sampler=soft_balance", "sampler.lam=-1"], r"sampler\.lam=-1: expected a number >= 0"),
        (
            ["schedule=hybrid", "schedule.phases.pretrain.lr.warmup_factor=2"],
            r"schedule\.phases\.pretrain\.lr\.warmup_factor=2: expected a number > 0 and <= 1",
        ),
    ],
)
def test_thresholds_ious_and_fractions_are_range_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_training_config(compose_train(overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["schedule.phases.main.lr.milestones=[a]"],
            r"schedule\.phases\.main\.lr\.milestones=\['a'\]: expected a list of numbers > 0",
        ),
        (["seed=abc"], r"seed='abc': expected an integer >= 0"),
        (["seed=-1"], r"seed=-1: expected an integer >= 0"),
        (["schedule.phases.main.epochs=two"], r"schedule\.phases\.main\.epochs='two'"),
    ],
)
def test_unparsable_numbers_name_their_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_training_config(compose_train(overrides))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_passes_the_checks(preset):
    check_training_config(compose_train([f"+experiment={preset}"]))


@pytest.mark.parametrize("loss", sorted(LOSS_SETTINGS))
def test_every_loss_passes_the_checks_with_its_defaults(loss):
    cfg = compose_train([f"loss={loss}"])
    check_training_config(cfg)
    assert set(LOSS_SETTINGS[loss]) <= set(cfg.loss), "a checked key that no config has"


def test_every_threshold_iou_and_fraction_key_of_conf_is_checked():
    cfg = compose_train(["sampler=repeat_factor", "schedule=hybrid"])
    words = ("thresh", "iou", "fraction", "prob", "rate", "floor", "lam", "beta")
    keys = []
    for group in ("model", "rates"):
        for key, _ in _leaves(cfg[group], group):
            if any(w in key.rsplit(".", 1)[-1] for w in words):
                keys.append(key)
    assert "model.roi.score_thresh" in keys and "rates.iou_threshold" in keys
    assert [k for k in keys if k not in NUMERIC_SETTINGS] == []
    assert "repeat_threshold" in SAMPLER_SETTINGS and "lam" in SAMPLER_SETTINGS
    assert {"epochs", "lr.gamma", "lr.warmup_factor"} <= set(PHASE_SETTINGS)


def _leaves(node, prefix):
    from omegaconf import DictConfig

    for key, value in node.items():
        if isinstance(value, DictConfig):
            yield from _leaves(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value
