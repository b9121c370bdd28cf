"""Training checkpoints: atomic writes that keep the previous one, readable errors, the
random-number-generator state, the settings a resumed run must share with its checkpoint, and
a training run's checkpoint (what it holds, saving it, checking and restoring it on resume).

A run folder holds ``checkpoints/last.pt`` and, once a second checkpoint was written,
``checkpoints/previous.pt``: a new checkpoint is written completely (to a temporary file,
fsynced) before ``last.pt`` becomes ``previous.pt`` and the new file becomes ``last.pt``. A
truncated or otherwise unreadable ``last.pt`` (a full disk, a copy cut short) is reported,
set aside as ``last.pt.corrupt-<time>`` (kept, never deleted) and the resume falls back to
``previous.pt``, which stays the fallback of the next save. A checkpoint is never written when
the disk lacks the space of the last one ("cannot write <path>: no space left"; the checkpoints
already there stay intact) nor when the weights or the optimizer state hold NaN/inf.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lsdet.atomic_files import write_atomic
from lsdet.engine.builders import unwrap
from lsdet.engine.distributed import DistInfo, all_reduce_flag, barrier, gather_objects
from lsdet.engine.run_folder import LAST_CHECKPOINT, PREVIOUS_CHECKPOINT

if TYPE_CHECKING:
    from lsdet.engine.run_state import Run
    from lsdet.engine.training_data import TrainingData

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


class CheckpointWriteError(OSError):
    """A checkpoint cannot be written (a full disk, a failed write); the old ones are intact."""

    def __init__(self, message: str, no_space: bool) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC if no_space else errno.EIO


# Settings that may differ from the checkpoint on resume only when the user lists them in
# ``train.resume_allow_changes`` (e.g. a lower lr after a divergence): the loop reads them at
# every step, so the resumed run uses the new values.
RESUME_MAY_CHANGE_WHEN_ASKED = ("optim.lr", "optim.lr_per_image", "optim.clip_grad_norm")


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    return write_atomic(path, lambda f: torch.save(state, f))


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: about its size on disk."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def _is_no_space(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def save_keeping_previous(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path``; the file it replaces stays as ``previous.pt`` beside it,
    so that one complete checkpoint exists at every moment, even if ``path`` is damaged later.

    Raises CheckpointWriteError "cannot write <path>: no space left ..." before writing when
    the disk has less free space than the checkpoint needs (the larger of the current
    ``path``'s size and the bytes of the state's tensors), and when the write fails; ``path`` and
    ``previous.pt`` are then as they were."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = max(path.stat().st_size if path.is_file() else 0, state_bytes(state))
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise CheckpointWriteError(
            f"cannot write {path}: no space left ({free} bytes free in {path.parent}, the "
            f"checkpoint needs about {needed}); the checkpoints already there are intact",
            no_space=True,
        )
    tmp = path.with_name(path.name + ".new")
    try:
        save_atomic(state, tmp)
    except Exception as exc:  # torch wraps a failed write in RuntimeError (inline_container.cc)
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        no_space = _is_no_space(exc) or free < needed
        if no_space:
            reason = f"no space left ({free} bytes free in {path.parent})"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        raise CheckpointWriteError(
            f"cannot write {path}: {reason}; the checkpoints already there are intact",
            no_space=no_space,
        ) from exc
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


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to ``<name>.corrupt-<time>`` (kept for inspection, and
    out of the way so that the next save keeps the good ``previous.pt``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target


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


def config_differences(
    saved: dict, current: dict, keys=RESUME_MUST_MATCH, allowed: tuple[str, ...] = ()
) -> list[str]:
    """Dotted keys under ``keys`` (and not in ``RESUME_MAY_CHANGE`` or ``allowed``) whose
    values differ between two resolved configs."""
    a, b = flatten(saved), flatten(current)
    may_change = RESUME_MAY_CHANGE + tuple(allowed)
    return sorted(
        k
        for k in set(a) | set(b)
        if _under(k, keys) and not _under(k, may_change) and a.get(k) != b.get(k)
    )


def resume_allowed_changes(cfg: Any) -> tuple[str, ...]:
    """``train.resume_allow_changes``, checked against ``RESUME_MAY_CHANGE_WHEN_ASKED``."""
    listed = cfg.train.get("resume_allow_changes") or []
    if isinstance(listed, str):
        listed = [listed]
    allowed = tuple(str(key) for key in listed)
    for key in allowed:
        if key not in RESUME_MAY_CHANGE_WHEN_ASKED:
            raise ValueError(
                f"train.resume_allow_changes: {key!r} cannot change on resume; the settings "
                f"that can are {list(RESUME_MAY_CHANGE_WHEN_ASKED)}"
            )
    return allowed


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors holding NaN/inf in a nested state."""
    if torch.is_tensor(state):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix] if bad else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    out: list[str] = []
    for key, value in items:
        out += non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def resume_hint(run: Run) -> str:
    """Where the run can continue from: its newest checkpoint (all written ones are finite)."""
    if run.last_checkpoint is None:
        return "No checkpoint was written yet: start again with a lower optim.lr."
    path, step = run.last_checkpoint
    return (
        f"The last finite checkpoint is {path} (step {step}): continue from it with "
        "train.resume=true optim.lr=<lower> train.resume_allow_changes=[optim.lr]."
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
        "nonfinite_guard": run.guard.state_dict(),
        "divergence": run.divergence.state_dict(),
        "wandb_run_id": run.logger.run_id,
        "world_size": run.dist.world_size,
        "train_data_fingerprint": run.data.train_fingerprint,
        "class_mids": list(run.data.hierarchy.mids),
        "config": OmegaConf.to_container(run.cfg, resolve=True),
    }


def save_checkpoint(run: Run) -> None:
    """Write ``last.pt`` (collective). Refused with NonFiniteStateError when the weights or the
    optimizer state hold NaN/inf: a checkpoint is always one a run can continue from."""
    from lsdet.engine.run_state import NonFiniteStateError

    state = checkpoint_state(run)  # collective
    bad = non_finite_tensors({"model": state["model"], "optimizer": state["optimizer"]})
    if bad:  # the same on every rank: DDP keeps the weights and optimizer states equal
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteStateError(
            f"step {run.position.global_step}: NaN/inf in {shown}; the checkpoint is not "
            f"written. {resume_hint(run)}"
        )
    path = run.folder.last_checkpoint
    write_error: CheckpointWriteError | None = None
    if run.dist.is_main:
        try:
            save_keeping_previous(state, path)
        except CheckpointWriteError as error:
            write_error = error
    if all_reduce_flag(write_error is not None, run.dist):  # every rank stops, not only rank 0
        raise write_error or CheckpointWriteError(
            f"cannot write {path}: rank 0 failed to write it (see its log)", no_space=False
        )
    run.last_checkpoint = (path, run.position.global_step)


def load_resume_state(
    checkpoint_dir: Path, cfg: DictConfig, dist: DistInfo, data: TrainingData
) -> dict[str, Any]:
    """The run folder's newest readable checkpoint, after checking that it can continue with
    this config and this training data (``state["loaded_from"]``: the file read). An unreadable
    ``last.pt`` is set aside (rank 0)."""
    state, path = load_latest_checkpoint(checkpoint_dir)
    barrier(dist)  # every rank has read before rank 0 renames an unreadable last.pt
    if dist.is_main and path.name != LAST_CHECKPOINT:
        last = checkpoint_dir / LAST_CHECKPOINT
        if last.is_file():
            log.warning("%s cannot be read: kept as %s", last, set_aside(last).name)
    if state["world_size"] != dist.world_size:
        raise ValueError(
            f"checkpoint {path} was written by {state['world_size']} processes, this run "
            f"has {dist.world_size}: the sampler shards would not continue"
        )
    allowed = resume_allowed_changes(cfg)
    current = OmegaConf.to_container(cfg, resolve=True)
    changed = config_differences(state["config"], current, allowed=allowed)
    if changed:
        askable = [k for k in changed if k in RESUME_MAY_CHANGE_WHEN_ASKED]
        hint = (
            f" ({askable} may change with train.resume_allow_changes={askable})" if askable else ""
        )
        raise ValueError(
            f"train.resume: the config differs from the checkpoint {path} in {changed}; "
            f"resume with the run's settings (or start a new run name){hint}"
        )
    for key in config_differences(state["config"], current, keys=allowed):
        log.warning(
            "train.resume: %s changes from %r to %r (train.resume_allow_changes)",
            key,
            flatten(state["config"]).get(key),
            flatten(current).get(key),
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
    state["loaded_from"] = str(path)
    return state


def restore_loop_state(run: Run, state: dict[str, Any]) -> None:
    # The optimizer's saved lr is replaced at the next step by the schedule's lr over this
    # config's base lr, so an lr changed with train.resume_allow_changes takes effect.
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["grad_scaler"])
    run.sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"][run.dist.rank])
