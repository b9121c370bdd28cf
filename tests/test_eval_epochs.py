"""train.eval_epochs: the trainer evaluates only after the listed epochs (numbered over the
whole schedule), the setting is range-checked, and a resumed run evaluates the same epochs."""

import pytest
from hydra.errors import ConfigCompositionException
from train_helpers import HYBRID, compose_train, tiny_overrides

from lsdet.engine import hooks as hooks_module
from lsdet.engine.trainer import run_training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synth") / "synth"


@pytest.fixture
def evaluated_tags(monkeypatch):
    """The tags of the evaluations the trainer asks for (the validation itself replaced by a
    stand-in returning a figure, so that the test trains only)."""
    tags: list[str] = []

    def record(*args, tag: str, **kwargs):
        tags.append(tag)
        return {"map": 0.5, "eval_dir": f"eval/{tag}"}

    monkeypatch.setattr(hooks_module, "validate", record)
    return tags


def three_epochs(data_root):
    return [
        o for o in tiny_overrides(data_root) if not o.startswith(("schedule.", "train.eval_every"))
    ] + [
        "schedule.phases.main.epochs=3",
        "schedule.phases.main.lr.warmup_iters=1",
        "schedule.phases.main.lr.milestones=[2]",
        "train.max_iters_per_epoch=1",
        "train.eval_every=epoch",
    ]


def test_default_evaluates_after_every_epoch(data_root, tmp_path, evaluated_tags):
    summary = run_training(compose_train(three_epochs(data_root)), tmp_path / "run")
    assert summary["status"] == "finished"
    assert evaluated_tags == ["main_epoch1", "main_epoch2", "main_epoch3"]


def test_eval_epochs_evaluates_only_the_listed_epochs(data_root, tmp_path, evaluated_tags):
    cfg = compose_train(three_epochs(data_root) + ["train.eval_epochs=[2,3]"])
    summary = run_training(cfg, tmp_path / "run")
    assert evaluated_tags == ["main_epoch2", "main_epoch3"]
    assert ["map" in record for record in summary["history"]] == [False, True, True]


def test_eval_epochs_count_over_the_phases_of_a_hybrid_schedule(
    data_root, tmp_path, evaluated_tags
):
    overrides = [o for o in tiny_overrides(data_root) if not o.startswith("schedule.")]
    overrides += HYBRID + ["train.max_iters_per_epoch=1", "train.eval_epochs=[2]"]
    overrides = [o for o in overrides if o != "train.eval_every=never"]
    run_training(compose_train(overrides), tmp_path / "run")
    assert evaluated_tags == ["finetune_epoch1"]  # epoch 2 of the schedule


def test_a_resumed_run_evaluates_the_listed_epochs_once(data_root, tmp_path, evaluated_tags):
    base = three_epochs(data_root) + ["train.eval_epochs=[1,3]"]
    stopped = run_training(compose_train(base + ["train.stop_after_iters=2"]), tmp_path / "run")
    assert stopped["status"] == "stopped"
    summary = run_training(compose_train(base + ["train.resume=true"]), tmp_path / "run")
    assert summary["status"] == "finished"
    assert evaluated_tags == ["main_epoch1", "main_epoch3"]
    assert ["map" in record for record in summary["history"]] == [True, False, True]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[0]", r"train.eval_epochs=\[0\]: expected null or a non-empty list of distinct "
                r"epochs from 1 to 3"),
        ("[4]", r"train.eval_epochs=\[4\]"),
        ("[2,2]", r"train.eval_epochs=\[2, 2\]"),
        ("[]", r"train.eval_epochs=\[\]"),
    ],
)  # fmt: skip
def test_bad_eval_epochs_are_refused_naming_the_key(data_root, tmp_path, value, message):
    cfg = compose_train(three_epochs(data_root) + [f"train.eval_epochs={value}"])
    with pytest.raises(ValueError, match=message):
        run_training(cfg, tmp_path / "run")


@pytest.mark.parametrize("value", ["6", "[1.5]"])
def test_eval_epochs_of_the_wrong_type_are_refused_by_the_schema(data_root, value):
    # train.eval_epochs is a list of integers (lsdet.config_schema.train): Hydra names the key.
    with pytest.raises(ConfigCompositionException) as caught:
        compose_train(three_epochs(data_root) + [f"train.eval_epochs={value}"])
    assert "full_key: train.eval_epochs" in f"{caught.value} {caught.value.__cause__}"


def test_eval_epochs_need_eval_every_epoch(data_root, tmp_path):
    cfg = compose_train(
        three_epochs(data_root) + ["train.eval_epochs=[3]", "train.eval_every=phase"]
    )
    with pytest.raises(ValueError, match="train.eval_epochs=.*needs train.eval_every=epoch"):
        run_training(cfg, tmp_path / "run")
