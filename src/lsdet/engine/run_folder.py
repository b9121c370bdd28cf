"""The run folder: one training at a time, and never a silent start over a finished one.

``RunFolder(run_dir, resume=..., overwrite=...)`` takes an exclusive lock on
``<run_dir>/.lock`` (``fcntl.flock``: the kernel releases it when the holder dies, so the lock
of a killed run never blocks its resume) and records the holder's pid and host in it, so a
second training into the same folder is refused with a message naming the process. It also
decides what a start means for a folder that already holds a checkpoint:

- ``resume=true``: continue from it (an error if there is none);
- ``resume=auto``: continue if there is one, else start (what a requeued cluster job wants);
- ``resume=false``: start, only into a folder without a checkpoint unless ``overwrite=true``.

A refused start leaves the folder as it was: conf/train.yaml keeps Hydra from writing its record
``<run dir>/.hydra/`` before the task runs (``hydra.output_subdir: null``) and opens the log
file only when something is logged; ``write_hydra_record`` writes the record once the start is
accepted. An unwritable folder is an error naming it (``check_writable``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lsdet.atomic_files import write_text_atomic
from lsdet.engine.checkpoint import LAST_CHECKPOINT, PREVIOUS_CHECKPOINT

RESUME_MODES = (False, True, "auto")
HYDRA_RECORD = ".hydra"  # the folder name Hydra gives its record (hydra.output_subdir)


class RunFolderBusyError(RuntimeError):
    """Another process is training into the run folder."""


class RunFolderNotWritableError(PermissionError):
    """The run folder (or the folder it is to be made in) cannot be written."""


def check_writable(run_dir: str | Path) -> None:
    """RunFolderNotWritableError naming the folder unless this process may create files in
    ``run_dir`` (or, when it does not exist yet, create it in its nearest existing parent)."""
    run_dir = Path(run_dir)
    folder = run_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise RunFolderNotWritableError(
            f"run folder {run_dir}: {folder} is not a folder; train into another folder "
            "(name=, hydra.run.dir= or, for sweeps, hydra.sweep.dir=)"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        which = f"run folder {run_dir}"
        if folder != run_dir:
            which = f"folder {folder} (to hold run folder {run_dir})"
        raise RunFolderNotWritableError(
            f"{which} is not writable by this user: make it writable (chmod u+w) or train into "
            "another folder (name=, hydra.run.dir= or, for sweeps, hydra.sweep.dir=)"
        )


def write_hydra_record(run_dir: str | Path, cfg: DictConfig) -> None:
    """Hydra's record of this start (``.hydra/config.yaml``, ``hydra.yaml``,
    ``overrides.yaml``, as Hydra writes them), for an accepted start of a Hydra application
    whose ``hydra.output_subdir`` is null; nothing otherwise (Hydra wrote it, or there is no
    Hydra application)."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    if hydra_cfg.hydra.output_subdir is not None:
        return
    folder = Path(run_dir) / HYDRA_RECORD
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    write_text_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


def parse_resume(value: Any) -> bool | str:
    """``train.resume`` as False, True or "auto" (Hydra gives bools or strings)."""
    if isinstance(value, str) and value.lower() in ("true", "false", "auto"):
        value = {"true": True, "false": False, "auto": "auto"}[value.lower()]
    if value not in RESUME_MODES or (value in (0, 1) and not isinstance(value, bool)):
        raise ValueError(f"train.resume={value!r}: expected true, false or auto")
    return value


class RunFolder:
    """Context manager holding the run folder's lock (see the module docstring)."""

    def __init__(self, run_dir: str | Path, *, resume: Any, overwrite: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.resume_mode = parse_resume(resume)
        self.overwrite = bool(overwrite)
        self._lock_file = None

    def has_checkpoint(self) -> bool:
        return any(
            (self.checkpoint_dir / n).is_file() for n in (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT)
        )

    def should_resume(self) -> bool:
        """Whether this start continues from the folder's checkpoint; raises when the folder's
        state and ``train.resume`` / ``train.overwrite`` disagree."""
        found = self.has_checkpoint()
        if self.resume_mode is True and not found:
            raise FileNotFoundError(
                f"train.resume=true but there is no checkpoint at "
                f"{self.checkpoint_dir / LAST_CHECKPOINT}; start without train.resume, or point "
                "hydra.run.dir (or name=) at the run to continue"
            )
        if self.resume_mode is False and found and not self.overwrite:
            raise FileExistsError(
                f"run folder {self.run_dir} already holds a checkpoint "
                f"({self.checkpoint_dir / LAST_CHECKPOINT}). Continue it with "
                "train.resume=true, start it over with train.overwrite=true, or give the run "
                "another name= (or hydra.run.dir=)"
            )
        return found and self.resume_mode in (True, "auto")

    def __enter__(self) -> RunFolder:
        check_writable(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / ".lock"
        lock_file = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "an unknown process"
            lock_file.close()
            raise RunFolderBusyError(
                f"run folder {self.run_dir} is in use by {holder} (lock {path}); wait for it "
                "to finish, stop it, or train into another folder (name= or hydra.run.dir=)"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock_file.flush()
        self._lock_file = lock_file
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_file is not None:
            self._lock_file.seek(0)
            self._lock_file.truncate()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None
