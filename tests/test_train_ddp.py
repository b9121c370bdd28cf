"""A 2-process gloo DistributedDataParallel run of a tiny config through the real CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from train_helpers import tiny_overrides

from lsdet.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_two_process_gloo_run_completes_checkpoints_and_evaluates(tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tmp_path / "synth", run_name="ddp") + [
        "train.batch_size=1",
        "train.eval_every=phase",
        f"hydra.run.dir={run_dir}",
    ]
    # Data first (one process), so that the two ranks do not both generate it.
    subprocess.run(
        [sys.executable, "-m", "lsdet.data.synth", f"root={tmp_path / 'synth'}"]
        + [o.removeprefix("data.") for o in overrides if o.startswith("data.")],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["-m", "lsdet.train"]
        + overrides,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    # 6 images over 2 ranks with 1 image each: 3 iterations per epoch, 2 epochs
    assert summary["global_step"] == 6
    assert 0.0 <= summary["history"][-1]["map"] <= 1.0
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    # the two ranks' random states differ (seed + rank) and both were saved
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert (run_dir / "eval" / "main_epoch2" / "per_class.csv").is_file()
