"""Sweeps through the Hydra submitit launcher (conf/hydra/launcher/): a two-job sweep of a tiny
run on the local executor, then the same sweep again, as a requeued job is run again with the
same arguments: with train.resume=auto each job continues from its checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf
from train_helpers import compose_train, tiny_overrides

from lsdet.data.synth import ensure_synthetic_benchmark

REPO = Path(__file__).resolve().parents[1]


def sweep(sweep_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "lsdet.train",
        "-m",
        "hydra/launcher=local",
        "+experiment=demo",
        "loss=softmax,concurrent_softmax",
        "train.resume=auto",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_local_launcher_runs_a_sweep_and_requeued_jobs_resume(tmp_path):
    data_root = tmp_path / "synth"
    tiny = [o for o in tiny_overrides(data_root) if not o.startswith("name=")]
    if not any(o.startswith("data.generate.confused_pairs.") for o in tiny):
        # Six leaves have too few sibling pairs for the default confused pairs.
        tiny.append("data.generate.confused_pairs.num_pairs=0")
    # Both jobs start at once: the data is generated before, not by the two jobs in a race.
    ensure_synthetic_benchmark(compose_train(tiny).data)
    tiny += [
        "train.max_iters_per_epoch=1",
        "schedule.phases.main.epochs=2",
        "train.eval_every=never",
        "hydra.launcher.timeout_min=10",
    ]
    sweep_dir = tmp_path / "sweep"

    # First submission: each job stops (with its checkpoint) after one of its two iterations,
    # as a job does when its time runs out.
    first = sweep(sweep_dir, [*tiny, "train.stop_after_iters=1"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in first.stderr + first.stdout
    for job in ("0", "1"):
        summary = json.loads((sweep_dir / job / "summary.json").read_text())
        assert summary["status"] == "stopped" and summary["global_step"] == 1
        assert (sweep_dir / job / "checkpoints" / "last.pt").is_file()
    assert (sweep_dir / ".submitit").is_dir()  # the executor's job folders, logs and pickles
    # Written when an epoch starts: a resumed job does not start epoch 1 again.
    epoch1_plots = {job: (sweep_dir / job / "sampler" / "main_epoch1.png") for job in ("0", "1")}
    epoch1_written = {job: path.stat().st_mtime_ns for job, path in epoch1_plots.items()}

    # Second submission of the same jobs: they continue from step 1 and finish at step 2 (with
    # train.resume=false they would refuse the existing checkpoint).
    second = sweep(sweep_dir, tiny)
    assert second.returncode == 0, second.stderr[-3000:]
    losses = set()
    for job in ("0", "1"):
        summary = json.loads((sweep_dir / job / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["global_step"] == 2, summary
        config = OmegaConf.load(sweep_dir / job / "config.yaml")
        assert config.train.resume == "auto"
        assert epoch1_plots[job].stat().st_mtime_ns == epoch1_written[job], "started over"
        assert (sweep_dir / job / "sampler" / "main_epoch2.png").is_file()
        losses.add(config.loss.name)
    assert losses == {"softmax", "concurrent_softmax"}


def test_slurm_launcher_config_composes_with_the_documented_keys():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    for key in (
        "partition",
        "timeout_min",
        "nodes",
        "gpus_per_node",
        "tasks_per_node",
        "cpus_per_task",
        "mem_gb",
        "signal_delay_s",
        "max_num_timeout",
    ):
        assert key in launcher, key
    assert launcher.max_num_timeout > 0  # requeued on time-out / pre-emption
    assert launcher.signal_delay_s > 0
