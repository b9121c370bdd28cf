"""The run folder: the name of every file a training run writes, the results read back, one
training at a time, and never a silent start over a finished one.

A run folder holds::

    config.yaml            the resolved config of the run
    .hydra/                Hydra's record of the start (``write_hydra_record``)
    train.log              the log (Hydra's job logging, conf/train.yaml)
    checkpoints/last.pt    the newest checkpoint; previous.pt the one before it
    checkpoints/phase_<name>.pt   the weights at the end of each phase of the schedule
    summary.json           how the run ended, with every evaluation (``history``)
    progress.json          where a running run stands (for a watcher such as the demo)
    data_report.json       the rows and images the data readers skipped
    concurrent_rates.csv   the concurrent rates the run trained with (when it uses them)
    eval/<tag>/            one evaluation: metrics.json, per_class.csv, ... (``EvaluationFolder``)
    sampler/               the sampler's draws per class at each epoch start
    .lock                  held while a process trains into the folder

``EvaluationFolder`` names the files of one evaluation (``eval/<tag>/`` of a run, or the
``output_dir`` of ``lsdet.evaluate``).

``RunFolder(run_dir, resume=..., overwrite=...)`` used as a context manager takes an exclusive
lock on ``<run_dir>/.lock`` (``fcntl.flock``: the kernel releases it when the holder dies, so
the lock of a killed run never blocks its resume) and records the holder's pid and host in it,
so a second training into the same folder is refused with a message naming the process. It
also decides what a start means for a folder that already holds a checkpoint:

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
import json
import os
import socket
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lsdet.atomic_files import write_text_atomic
from lsdet.evaluation.outputs import (
    AP_VS_FREQUENCY_PNG,
    FREQUENCY_BUCKETS_CSV,
    IMAGE_RECORDS_NPZ,
    METRICS_JSON,
    PER_CLASS_CSV,
    PREDICTIONS_CSV,
)

RESUME_MODES = (False, True, "auto")
HYDRA_RECORD = ".hydra"  # the folder name Hydra gives its record (hydra.output_subdir)
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.pt"
PREVIOUS_CHECKPOINT = "previous.pt"
EVALUATIONS = "eval"


class EvaluationFolder:
    """The files of one evaluation, as ``lsdet.evaluation.outputs.write_evaluation_outputs``
    writes them: ``metrics.json`` (mAP, per-class AP, report), ``per_class.csv``,
    ``frequency_buckets.csv`` and ``ap_vs_frequency.png``; ``image_records.npz`` when the
    evaluation kept per-image records (``lsdet.evaluation.image_records``); ``predictions.csv``,
    the detections an LVIS/COCO validation scores (``lsdet.inference.validation``)."""

    METRICS = METRICS_JSON
    PER_CLASS = PER_CLASS_CSV
    FREQUENCY_BUCKETS = FREQUENCY_BUCKETS_CSV
    AP_VS_FREQUENCY = AP_VS_FREQUENCY_PNG
    IMAGE_RECORDS = IMAGE_RECORDS_NPZ
    PREDICTIONS = PREDICTIONS_CSV

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def per_class(self) -> Path:
        return self.path / self.PER_CLASS

    @property
    def frequency_buckets(self) -> Path:
        return self.path / self.FREQUENCY_BUCKETS

    @property
    def ap_vs_frequency(self) -> Path:
        return self.path / self.AP_VS_FREQUENCY

    @property
    def image_records(self) -> Path:
        return self.path / self.IMAGE_RECORDS

    @property
    def predictions(self) -> Path:
        return self.path / self.PREDICTIONS

    def read_metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics.read_text())


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


def write_hydra_record(run_dir: str | Path, config_yaml: str) -> None:
    """Hydra's record of this start (``.hydra/config.yaml``, ``hydra.yaml``,
    ``overrides.yaml``, as Hydra writes them), for an accepted start of a Hydra application
    whose ``hydra.output_subdir`` is null; nothing otherwise (Hydra wrote it, or there is no
    Hydra application). ``config_yaml``: the job's config as YAML, interpolations unresolved
    (``OmegaConf.to_yaml(cfg)``, what Hydra writes as config.yaml)."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    if hydra_cfg.hydra.output_subdir is not None:
        return
    folder = Path(run_dir) / HYDRA_RECORD
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "config.yaml", config_yaml)
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
    """The paths of a run folder and its results; as a context manager, the lock of a
    training into it (see the module docstring)."""

    CONFIG = "config.yaml"
    SUMMARY = "summary.json"
    PROGRESS = "progress.json"
    DATA_REPORT = "data_report.json"
    CONCURRENT_RATES = "concurrent_rates.csv"
    SAMPLER_PLOTS = "sampler"
    LOCK = ".lock"

    def __init__(
        self, run_dir: str | Path, *, resume: Any = False, overwrite: bool = False
    ) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / CHECKPOINTS
        self.resume_mode = parse_resume(resume)
        self.overwrite = bool(overwrite)
        self._lock_file = None

    # ----------------------------------------------------------------- paths
    @property
    def config(self) -> Path:
        return self.run_dir / self.CONFIG

    @property
    def summary(self) -> Path:
        return self.run_dir / self.SUMMARY

    @property
    def progress(self) -> Path:
        return self.run_dir / self.PROGRESS

    @property
    def data_report(self) -> Path:
        return self.run_dir / self.DATA_REPORT

    @property
    def concurrent_rates(self) -> Path:
        return self.run_dir / self.CONCURRENT_RATES

    @property
    def lock(self) -> Path:
        return self.run_dir / self.LOCK

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / LAST_CHECKPOINT

    @property
    def previous_checkpoint(self) -> Path:
        return self.checkpoint_dir / PREVIOUS_CHECKPOINT

    def phase_checkpoint(self, phase_name: str) -> Path:
        """The weights at the end of the phase ``phase_name`` of the schedule."""
        return self.checkpoint_dir / f"phase_{phase_name}.pt"

    def sampler_plot(self, phase_name: str, epoch: int) -> Path:
        """The sampler's draws per class at the start of ``epoch`` (1-based) of a phase."""
        return self.run_dir / self.SAMPLER_PLOTS / f"{phase_name}_epoch{epoch}.png"

    @staticmethod
    def evaluation_name(tag: str) -> str:
        """The folder of the evaluation ``tag`` relative to the run folder (the ``eval_dir``
        of the run's history)."""
        return f"{EVALUATIONS}/{tag}"

    def evaluation(self, tag: str) -> EvaluationFolder:
        return EvaluationFolder(self.run_dir / self.evaluation_name(tag))

    # ----------------------------------------------------------------- results
    def read_config(self) -> DictConfig:
        return OmegaConf.load(self.config)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text())

    def read_progress(self) -> dict[str, Any] | None:
        """progress.json, or None while it is absent or being replaced."""
        try:
            return json.loads(self.progress.read_text())
        except (OSError, ValueError):
            return None

    def finished(self) -> bool:
        """The run ended with status "finished" (its summary.json says so)."""
        return self.summary.is_file() and self.read_summary().get("status") == "finished"

    def final_metrics(self) -> dict[str, Any]:
        """The last evaluation of a finished run (its summary's history), with the run's
        status and wall time."""
        summary = self.read_summary()
        evaluated = [h for h in summary["history"] if "map" in h]
        if not evaluated:
            raise ValueError(f"{self.run_dir}: the run has no evaluation (train.eval_every=never?)")
        return {**evaluated[-1], "status": summary["status"], "seconds": summary.get("seconds")}

    def final_evaluation(self) -> EvaluationFolder:
        """The folder of the run's last evaluation."""
        return EvaluationFolder(self.run_dir / self.final_metrics()["eval_dir"])

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file() or self.previous_checkpoint.is_file()

    def should_resume(self) -> bool:
        """Whether this start continues from the folder's checkpoint; raises when the folder's
        state and ``train.resume`` / ``train.overwrite`` disagree."""
        found = self.has_checkpoint()
        if self.resume_mode is True and not found:
            raise FileNotFoundError(
                f"train.resume=true but there is no checkpoint at "
                f"{self.last_checkpoint}; start without train.resume, or point "
                "hydra.run.dir (or name=) at the run to continue"
            )
        if self.resume_mode is False and found and not self.overwrite:
            raise FileExistsError(
                f"run folder {self.run_dir} already holds a checkpoint "
                f"({self.last_checkpoint}). Continue it with "
                "train.resume=true, start it over with train.overwrite=true, or give the run "
                "another name= (or hydra.run.dir=)"
            )
        return found and self.resume_mode in (True, "auto")

    def __enter__(self) -> RunFolder:
        check_writable(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.lock
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
