"""The hybrid schedule's phase change: ``init_from_previous`` decides phase 2's first weights."""

import pytest
import torch
from train_helpers import HYBRID, compose_train, tiny_overrides

from lsdet.engine import trainer as trainer_module
from lsdet.engine.builders import unwrap
from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.trainer import run_training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synth") / "synth"


@pytest.mark.parametrize("init_from_previous", [True, False])
def test_phase_two_starts_from_phase_one_or_from_a_fresh_model(
    data_root, tmp_path, monkeypatch, init_from_previous
):
    starts = {}
    original = trainer_module.start_phase

    def record_start(run, phase, optim_cfg):
        starts[phase.name] = {k: v.clone() for k, v in unwrap(run.model).state_dict().items()}
        original(run, phase, optim_cfg)

    monkeypatch.setattr(trainer_module, "start_phase", record_start)
    base = [o for o in tiny_overrides(data_root) if not o.startswith("schedule.")] + HYBRID
    flag = f"schedule.phases.finetune.init_from_previous={str(init_from_previous).lower()}"
    summary = run_training(compose_train(base + [flag]), tmp_path / "run")
    assert summary["status"] == "finished"
    pretrained = load_checkpoint(tmp_path / "run" / "checkpoints" / "phase_pretrain.pt")["model"]
    weights = [k for k, v in pretrained.items() if v.is_floating_point() and "backbone" in k]
    same_as_pretrained = all(torch.equal(starts["finetune"][k], pretrained[k]) for k in weights)
    same_as_initial = all(
        torch.equal(starts["finetune"][k], starts["pretrain"][k]) for k in weights
    )
    assert same_as_pretrained is init_from_previous
    assert same_as_initial is not init_from_previous
