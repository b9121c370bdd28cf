"""Config keys a reader can trace: shared keys written once, one meaning per key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import CONF_DIR, compose_train

from lsdet.config_schema import check_overrides
from lsdet.engine.config_checks import check_training_config

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
    assert own["defaults"][0] == {"/loss_base@_here_": "default"}
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
