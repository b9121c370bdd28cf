"""Config keys a reader can trace: shared keys written once, one meaning per key."""

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from train_helpers import CONF_DIR, compose_train

from lsdet.config_schema import check_overrides
from lsdet.config_schema.checks import check_training_config, schema_rules
from lsdet.config_schema.train import RatesSettings, TrainSettings

REPO = Path(__file__).resolve().parents[1]

LOSS_FILES = sorted((CONF_DIR / "loss").glob("*.yaml"))
SHARED_LOSS_KEYS = ("weighting", "weight_lam", "beta")


def test_the_nine_losses_are_the_selectable_loss_files():
    names = [p.stem for p in LOSS_FILES]
    assert names == sorted(
        [
            "bce",
            "co_bce",
            "concurrent_softmax",
            "dist_ce",
            "eqlv2",
            "federated",
            "focal",
            "seesaw",
            "softmax",
        ]
    )


@pytest.mark.parametrize("path", LOSS_FILES, ids=lambda p: p.stem)
def test_loss_files_take_the_weighting_block_from_the_shared_base(path):
    own = yaml.safe_load(path.read_text())
    assert own["defaults"][:2] == [
        {"/schema/loss@_here_": path.stem},
        {"/loss_base@_here_": "default"},
    ]
    assert not set(SHARED_LOSS_KEYS) & set(own), f"{path.name} repeats the shared keys"
    base = yaml.safe_load((CONF_DIR / "loss_base" / "default.yaml").read_text())
    loss = compose_train([f"loss={path.stem}"]).loss
    assert loss.name == path.stem
    assert {key: loss[key] for key in SHARED_LOSS_KEYS} == base


def test_shared_weighting_keys_are_overridable_for_every_loss():
    loss = compose_train(["loss=focal", "loss.weighting=soft_balance", "loss.weight_lam=0.3"]).loss
    assert (loss.weighting, loss.weight_lam, loss.beta, loss.gamma) == (
        "soft_balance",
        0.3,
        0.999,
        2.0,
    )


# parent_scores: a setting of the detector (model.parent_scores), defaulting to the loss's.


def test_parent_scores_is_set_on_the_model_and_defaults_to_the_loss():
    assert compose_train(["loss=softmax"]).model.parent_scores == "subtree_sum"
    cfg = compose_train(["loss=softmax", "model.parent_scores=max_descendants"])
    assert (cfg.model.parent_scores, cfg.loss.parent_scores) == ("max_descendants", "subtree_sum")
    for path in (CONF_DIR / "model").glob("*.yaml"):
        model = yaml.safe_load(path.read_text())
        assert model.get("parent_scores", "${loss.parent_scores}") == "${loss.parent_scores}"


@pytest.mark.parametrize("override", ["loss.parent_scores=own", "+loss.parent_scores=own"])
def test_a_loss_parent_scores_override_is_refused_naming_the_model_key(override):
    with pytest.raises(ValueError, match=r"set model\.parent_scores=own instead"):
        check_overrides(["loss=softmax", override])
    check_overrides(["loss=softmax", "model.parent_scores=own", "loss.weight_lam=0.5"])


def test_a_loss_parent_scores_override_is_refused_by_the_command_line(tmp_path):
    command = [
        sys.executable,
        "-m",
        "lsdet.train",
        "loss.parent_scores=max_descendants",
        f"hydra.run.dir={tmp_path}/run",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "set model.parent_scores=max_descendants instead" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unknown_parent_scoring_names_the_model_key():
    cfg = compose_train(["model.parent_scores=max"])
    with pytest.raises(ValueError, match=r"model\.parent_scores='max': expected one of"):
        check_training_config(cfg)


# Structured configs: train.* and rates.* validated by Hydra against lsdet.config_schema.


def _yaml_keys(path, drop=("defaults",)):
    return {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in drop}


def test_the_schemas_have_exactly_the_keys_of_their_yaml():
    train_yaml = _yaml_keys(CONF_DIR / "trainer" / "default.yaml")
    assert [f.name for f in fields(TrainSettings)] == list(train_yaml)
    assert [f.name for f in fields(RatesSettings)] == list(
        yaml.safe_load((CONF_DIR / "train.yaml").read_text())["rates"]
    )


def test_the_composed_config_is_validated_and_keeps_the_yaml_values():
    cfg = compose_train([])
    assert OmegaConf.get_type(cfg.train) is TrainSettings
    assert OmegaConf.get_type(cfg.rates) is RatesSettings
    assert OmegaConf.to_container(cfg.train) == _yaml_keys(CONF_DIR / "trainer" / "default.yaml")
    rates_yaml = yaml.safe_load((CONF_DIR / "train.yaml").read_text())["rates"]
    assert OmegaConf.to_container(cfg.rates) == rates_yaml
    assert type(cfg.rates.prior_count) is float  # typed: the yaml's 8 is 8.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # Typed settings without a range: Hydra refuses a value of another type.
        ("train.amp=maybe", "full_key: train.amp"),
        ("train.batch_size=abc", "full_key: train.batch_size"),
        ("train.threads=1.5", "full_key: train.threads"),
        ("rates.floor=low", "full_key: rates.floor"),
        ("train.resume_allow_changes=optim.lr", "full_key: train.resume_allow_changes"),
    ],
)
def test_hydra_refuses_unknown_keys_and_wrong_types_naming_them(override, message):
    with pytest.raises(ConfigCompositionException) as caught:
        compose_train([override])
    assert message in f"{caught.value} {caught.value.__cause__}"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("train:\n  bacth_size: 4\n", "Key 'bacth_size' not in 'TrainSettings'"),
        ("train:\n  divergence:\n    step: 3\n", "Key 'step' not in 'DivergenceSettings'"),
        ("rates:\n  flor: 0.1\n", "Key 'flor' not in 'RatesSettings'"),
        ("model:\n  roi:\n    fg_iou_thres: 0.6\n", "Key 'fg_iou_thres' not in 'RoiSettings'"),
        ("model:\n  backbone:\n    nrom: bn\n", "Key 'nrom' not in 'BackboneSettings'"),
        ("optim:\n  lr_per_imag: 0.01\n", "Key 'lr_per_imag' not in 'OptimSettings'"),
        ("data:\n  image_sise: 64\n", "Key 'image_sise' not in 'SynthData'"),
        ("data:\n  train:\n    bbox_cvs: a.csv\n", "Key 'bbox_cvs' not in 'CsvSplit'"),
    ],
)
def test_a_misspelt_key_in_a_preset_is_refused(tmp_path, block, message):
    # Before the schemas, a preset's misspelt key was merged silently and nothing read it
    # (every group's schema: train, rates, model, optim, data).
    preset = tmp_path / "experiment" / "typo.yaml"
    preset.parent.mkdir()
    preset.write_text("# @package _global_\n" + block)
    with pytest.raises(ConfigCompositionException, match=message):
        compose_train([f"hydra.searchpath=[file://{tmp_path}]", "+experiment=typo"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", r"train\.batch_size=0: expected an integer >= 1$"),
        ("train.threads=0", r"train\.threads=0: expected an integer >= 1 \(or null\)$"),
        ("train.divergence.factor=1", r"train\.divergence\.factor=1\.0: expected a number > 1$"),
        ("rates.floor=1.5", r"rates\.floor=1\.5: expected a number >= 0 and <= 1$"),
        ("rates.iou_threshold=0", r"rates\.iou_threshold=0\.0: expected a number > 0 and"),
        ("train.device=gpu", r"train\.device='gpu': expected one of \['auto', 'cpu', 'cuda'\]"),
        ("train.eval_every=step", r"train\.eval_every='step': expected one of"),
    ],
)
def test_a_value_outside_its_schema_range_or_choices_names_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        check_training_config(compose_train([override]))


def test_every_ranged_field_is_checked_where_the_composed_config_has_it():
    cfg = compose_train([])
    keys = [key for key, _, _ in schema_rules(cfg)]
    assert "train.divergence.steps" in keys and "rates.prior_count" in keys
    ranged_train = [f.name for f in fields(TrainSettings) if f.metadata]
    assert [k for k in keys if k.startswith("train.") and "." not in k[6:]] == [
        f"train.{name}" for name in ranged_train
    ]


# The two lambdas: sampler.lam (which images are drawn) and loss.weight_lam (how the loss terms
# weigh), the same exponent of eq. 6-8 used by two independent mechanisms.


def test_the_two_lambda_keys_are_independent_and_each_yaml_names_the_other():
    cfg = compose_train(["sampler=soft_balance", "sampler.lam=0.3", "loss.weight_lam=0.9"])
    assert (cfg.sampler.lam, cfg.loss.weight_lam) == (0.3, 0.9)
    assert "loss.weight_lam" in (CONF_DIR / "sampler" / "soft_balance.yaml").read_text()
    assert "sampler.lam" in (CONF_DIR / "loss_base" / "default.yaml").read_text()


@pytest.mark.parametrize(
    ("override", "key"), [("+train.foo=1", "train.foo"), ("+rates.x=2", "rates.x")]
)
def test_a_key_added_to_a_schema_node_with_plus_is_refused(override, key):
    # Hydra's `+key=value` adds a key even where the schema has none; nothing would read it.
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: not a setting of"):
        check_training_config(compose_train([override]))
