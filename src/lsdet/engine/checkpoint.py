"""Checkpoint files: written atomically keeping the previous one, read with errors that name
the file, an unreadable one set aside. (What a training run's checkpoint holds is the trainer's
``Trainer.state_dict``; whether it may continue with a config is ``resume``.)

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
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lsdet.atomic_files import write_atomic
from lsdet.engine.run_folder import LAST_CHECKPOINT, PREVIOUS_CHECKPOINT

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


class CheckpointWriteError(OSError):
    """A checkpoint cannot be written (a full disk, a failed write); the old ones are intact."""

    def __init__(self, message: str, no_space: bool) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC if no_space else errno.EIO


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
