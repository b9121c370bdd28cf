"""Train a detector: ``python -m lsdet.train +experiment=NAME [key=value ...]``.

Hydra (version_base 1.3) composes conf/train.yaml with the groups data, model, loss,
sampler, schedule, optim, logger, trainer and an optional +experiment preset. Multirun
sweeps work as usual: ``python -m lsdet.train -m +experiment=t3_soft_balance
sampler.lam=0.3,0.5,0.7 loss=softmax,concurrent_softmax``. Distributed: launch with
``torchrun --nproc_per_node N -m lsdet.train ...`` (NCCL on GPUs, gloo on CPU).
The run's files (resolved config, checkpoints, evaluations, plots, wandb) go to the Hydra
run folder, ``runs/<name>`` by default; an unwritable run folder is an error naming it.
"""

from __future__ import annotations

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lsdet.config_schema import check_overrides
from lsdet.data.dataset import ImageLoadError
from lsdet.engine.checkpoint import CheckpointError
from lsdet.engine.run_folder import RunFolderBusyError, check_writable
from lsdet.engine.run_state import NonFiniteLossError, NonFiniteStateError
from lsdet.engine.trainer import run_training

# Errors about the user's settings, files or run folder. Their messages name the key, the
# file and line or the folder, so the command line prints them as one line; a traceback is
# for lsdet's own faults (and with HYDRA_FULL_ERROR=1 for these too).
USER_ERRORS = (
    ValueError,  # settings (config checks, generator settings), data formats, hierarchy
    OSError,  # missing, existing, unwritable or full files and folders
    RunFolderBusyError,
    CheckpointError,
    NonFiniteLossError,
    NonFiniteStateError,
    ImageLoadError,
)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if "SUBMITIT_EXECUTOR" in os.environ:  # a job of hydra/launcher=slurm: one task per GPU
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    try:
        check_overrides(hydra_cfg.overrides.task)  # before the run folder is touched
        check_writable(run_dir)  # before anything is logged to <run dir>/train.log
        summary = run_training(cfg, run_dir)
    except USER_ERRORS as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {exc}") from None
    if summary["status"] == "interrupted":  # SIGTERM/SIGINT: checkpointed, resume later
        raise SystemExit(130)
    evaluated = [h["map"] for h in summary["history"] if "map" in h]
    return evaluated[-1] if evaluated else None


if __name__ == "__main__":
    main()
