"""SIGTERM / SIGINT / SIGUSR2: finish the step in flight, checkpoint, stop.

Slurm, systemd and Ctrl-C signal the whole process group, DataLoader workers included. A
worker that dies of the signal makes the loader raise in the main process before it can
checkpoint, so workers ignore these signals (``ignore_stop_signals``, the loaders'
``worker_init_fn``) and the main process alone decides when to stop; the workers end with
their loader. SIGUSR2 is what Slurm sends before a job's time limit (``--signal``) and what
the submitit launcher requeues on: after the checkpoint it is raised again, so that the
launcher's own handler (restored by then) requeues the job, which resumes with
``train.resume=auto``.

``resume_advice`` is the command the stopped run prints: for a single run the same command plus
``train.resume=true`` (and ``hydra.run.dir=`` when the run folder's name holds a time stamp);
for a sweep ``train.resume=auto`` (a sweep stopped by Ctrl-C has jobs that never started, and
``true`` refuses a folder without a checkpoint) with ``hydra.sweep.dir=`` (the default sweep
folder is named by the time of the start, so the same command alone would start a new sweep).
"""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class StopRequested:
    """Set by SIGTERM/SIGINT while installed; the loop checkpoints and stops after the step."""

    def __init__(self) -> None:
        self.flag = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True
        self.signal_name = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequested:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
        if self.signal_name == "SIGUSR2":  # hand it on to the launcher (requeue)
            signal.raise_signal(signal.SIGUSR2)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: this worker ignores the stop signals."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _override(key: str, value: str) -> str:
    return shlex.quote(f"{key}={value}")


def _raw(cfg: Any, key: str) -> str:
    """The text of ``key`` as written in the config, interpolations unresolved."""
    node = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else {}
    for part in key.split("."):
        node = node.get(part, "") if isinstance(node, dict) else ""
    return str(node)


def resume_advice(run_dir: str | Path, name_as_written: str = "") -> str:
    """What continues a stopped run, as printed after the checkpoint line: the overrides to add
    to the command that started it (see the module docstring). ``name_as_written``: the run's
    ``name`` with its interpolations unresolved (a ``${now:...}`` in it puts a time stamp into
    the run folder's name)."""
    if not HydraConfig.initialized():
        return f"continue with train.resume=true into the same run folder {run_dir}"
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sweep_dir = os.path.abspath(str(hydra_cfg.sweep.dir))
        return (
            "continue the sweep (its stopped jobs and those that never started) with the same "
            f"command plus: train.resume=auto {_override('hydra.sweep.dir', sweep_dir)}"
        )
    template = _raw(HydraConfig.instance().cfg, "hydra.run.dir")
    if "${name}" in template:
        template += name_as_written
    advice = "continue with the same command plus: train.resume=true"
    if "now:" in template:  # a new start resolves ${now:...} to another folder
        advice += " " + _override("hydra.run.dir", os.path.abspath(str(run_dir)))
    return advice
