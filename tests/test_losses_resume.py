"""Training with each long-tail loss, stopped mid-epoch and resumed, ends exactly where the
uninterrupted run ends: the statistics the losses accumulate travel in the checkpoint (and
Federated's class draws follow the saved random state)."""

import pytest
import torch
from train_helpers import compose_train, tiny_overrides

from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.trainer import run_training

# The statistics each loss accumulates (state_dict keys under roi_heads.loss_fn.).
STATISTICS = {
    "seesaw": ["class_counts"],
    "eqlv2": ["pos_grad", "neg_grad", "pos_neg_ratio"],
    "federated": [],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synth") / "synth"


@pytest.mark.parametrize("loss", sorted(STATISTICS))
def test_stopped_and_resumed_equals_uninterrupted(loss, data_root, tmp_path):
    # 6 images, batch 2, 2 epochs: 6 iterations; stop after 4 (mid-epoch 2) and resume.
    base = tiny_overrides(data_root) + [f"loss={loss}"]
    if not any(o.startswith("data.generate.confused_pairs.") for o in base):
        base.append("data.generate.confused_pairs.num_pairs=1")  # 3 sibling pairs in all
    if loss == "federated":
        base.append("loss.num_classes_per_batch=3")  # fewer than the classes: classes are drawn
    full = run_training(compose_train(base), tmp_path / "full")
    assert full["status"] == "finished" and full["global_step"] == 6
    stopped = run_training(compose_train(base + ["train.stop_after_iters=4"]), tmp_path / "cut")
    assert stopped["status"] == "stopped" and stopped["global_step"] == 4
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    resumed = run_training(compose_train(base + ["train.resume=true"]), tmp_path / "cut")
    assert resumed["status"] == "finished" and resumed["global_step"] == 6

    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for name in STATISTICS[loss]:
        key = f"roi_heads.loss_fn.{name}"
        # accumulated over the 6 steps: more than at the stop, and saved at the stop
        assert key in cut and not torch.equal(cut[key], a[key]), key
    if loss == "seesaw":
        counts = a["roi_heads.loss_fn.class_counts"]
        # 6 steps x 2 images x 16 sampled RoIs per image
        assert counts.dtype == torch.float64 and counts.sum().item() == 6 * 2 * 16
        assert a["roi_heads.box_predictor.cls_score.temperature"].item() == 20.0
