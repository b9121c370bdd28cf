"""Config keys a reader can trace: shared keys written once, one meaning per key."""

import pytest
import yaml
from train_helpers import CONF_DIR, compose_train

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
