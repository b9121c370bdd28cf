"""Training checkpoints: atomic writes that keep the previous one, readable errors, the
random-number-generator state, the settings a resumed run must share with its checkpoint, and
a training run's checkpoint (what it holds, saving it, checking and restoring it on resume).

A run folder holds ``checkpoints/last.pt`` and, once a second checkpoint was written,
``checkpoints/previous.pt``: a new checkpoint is written completely (to a temporary file,
fsynced) before ``last.pt`` becomes ``previous.pt`` and the new file becomes ``last.pt``. A
truncated or otherwise unreadable ``last.pt`` (a full disk, a copy cut short) is reported
and the resume falls back to ``previous.pt``.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lsdet.atomic_files import write_atomic
from lsdet.engine.builders import unwrap
from lsdet.engine.distributed import DistInfo, barrier, gather_objects

if TYPE_CHECKING:
    from lsdet.engine.run_state import Run
    from lsdet.engine.training_data import TrainingData

LAST_CHECKPOINT = "last.pt"
PREVIOUS_CHECKPOINT = "previous.pt"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    return write_atomic(path, lambda f: torch.save(state, f))


def save_keeping_previous(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path``; the file it replaces stays as ``previous.pt`` beside it,
    so that one complete checkpoint exists at every moment, even if ``path`` is damaged later."""
    path = Path(path)
    tmp = path.with_name(path.name + ".new")
    save_atomic(state, tmp)
    if path.exists():
        os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by lsdet (on CPU; the caller moves tensors).

    Raises FileNotFoundError when there is no file and CheckpointError, naming the file,
    when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); the file is "
            "truncated or not a checkpoint"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def load_latest_checkpoint(checkpoint_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint of a run: ``last.pt``, or ``previous.pt`` with a
    warning when ``last.pt`` cannot be read. Returns (state, path read)."""
    checkpoint_dir = Path(checkpoint_dir)
    last = checkpoint_dir / LAST_CHECKPOINT
    previous = checkpoint_dir / PREVIOUS_CHECKPOINT
    try:
        return load_checkpoint(last), last
    except (CheckpointError, FileNotFoundError) as error:
        if not previous.is_file():
            raise
        try:
            state = load_checkpoint(previous)
        except CheckpointError as previous_error:
            raise CheckpointError(f"{error}; the fallback {previous_error}") from previous_error
        log.warning("%s; resuming from the previous checkpoint %s instead", error, previous)
        return state, previous


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from: Python, numpy, torch CPU and CUDA."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# Settings a resumed run must share with its checkpoint; the others (evaluation, logging,
# progress, workers) may change on resume.
RESUME_MUST_MATCH = (
    "data",
    "model",
    "loss",
    "sampler",
    "schedule",
    "optim",
    "rates",
    "seed",
    "train.batch_size",
    "train.max_iters_per_epoch",
    "train.hflip_prob",
)
# Data settings that do not change what is trained: where the files are (the training data
# and the class list are compared by content instead, so data staged to another disk
# resumes), the cache, how bad rows are handled (the index records what it skipped), the
# validation split, and whether a benchmark made with other settings may be regenerated
# (the generator settings themselves must match).
RESUME_MAY_CHANGE = (
    "data.root",
    "data.hierarchy_json",
    "data.class_descriptions_csv",
    "data.cache_dir",
    "data.strict",
    "data.regenerate",
    "data.val",
    "data.train",
)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} for a nested dict/list config."""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_differences(saved: dict, current: dict, keys=RESUME_MUST_MATCH) -> list[str]:
    """Dotted keys under ``keys`` (and not in ``RESUME_MAY_CHANGE``) whose values differ
    between two resolved configs."""
    a, b = flatten(saved), flatten(current)
    return sorted(
        k
        for k in set(a) | set(b)
        if _under(k, keys) and not _under(k, RESUME_MAY_CHANGE) and a.get(k) != b.get(k)
    )


# ------------------------------------------------------------- a training run's checkpoint
def checkpoint_state(run: Run) -> dict[str, Any]:
    """Everything needed to continue exactly (collective: gathers every rank's RNG state)."""
    rng_states = gather_objects(rng_state(), run.dist)
    sampler_state = run.sampler.state_dict()
    sampler_state["epoch"] = run.global_epoch()
    # consumed by finished steps (the last batch of an epoch may be short)
    consumed = run.position.iteration * run.batch_size
    sampler_state["num_yielded"] = min(consumed, len(run.sampler))
    p = run.position
    return {
        "model": unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "grad_scaler": run.scaler.state_dict(),
        "sampler": sampler_state,
        "position": {
            "phase": p.phase,
            "epoch": p.epoch,
            "iteration": p.iteration,
            "global_step": p.global_step,
            "history": p.history,
        },
        "phase_name": run.schedule.phases[p.phase].name,
        "rng": rng_states,
        "nonfinite_count": run.guard.count,
        "wandb_run_id": run.logger.run_id,
        "world_size": run.dist.world_size,
        "train_data_fingerprint": run.data.train_fingerprint,
        "class_mids": list(run.data.hierarchy.mids),
        "config": OmegaConf.to_container(run.cfg, resolve=True),
    }


def save_checkpoint(run: Run) -> None:
    state = checkpoint_state(run)  # collective
    if run.dist.is_main:
        save_keeping_previous(state, run.checkpoint_dir / LAST_CHECKPOINT)
    barrier(run.dist)


def load_resume_state(
    checkpoint_dir: Path, cfg: DictConfig, dist: DistInfo, data: TrainingData
) -> dict[str, Any]:
    """The run folder's newest readable checkpoint, after checking that it can continue with
    this config and this training data."""
    state, path = load_latest_checkpoint(checkpoint_dir)
    if state["world_size"] != dist.world_size:
        raise ValueError(
            f"checkpoint {path} was written by {state['world_size']} processes, this run "
            f"has {dist.world_size}: the sampler shards would not continue"
        )
    changed = config_differences(state["config"], OmegaConf.to_container(cfg, resolve=True))
    if changed:
        raise ValueError(
            f"train.resume: the config differs from the checkpoint {path} in {changed}; "
            "resume with the run's settings (or start a new run name)"
        )
    if state["class_mids"] != list(data.hierarchy.mids):
        raise ValueError(
            f"train.resume: the classes of data.hierarchy_json / data.class_descriptions_csv "
            f"differ from those the checkpoint {path} was trained on"
        )
    if state["train_data_fingerprint"] != data.train_fingerprint:
        raise ValueError(
            f"train.resume: the training data differs from the data the checkpoint {path} was "
            f"trained on (files {data.train_files}); resume with the same files (a copy at "
            "another data.root is fine) or start a new run name"
        )
    return state


def restore_loop_state(run: Run, state: dict[str, Any]) -> None:
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["grad_scaler"])
    run.sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"][run.dist.rank])
