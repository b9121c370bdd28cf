"""What a training run holds while it trains (``Run``, owned and changed by the ``Trainer``),
where it stands (``Position``), the guard that skips steps with a non-finite loss and the
monitor that flags a diverging one (kept by the divergence hook)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lsdet.engine.distributed import DistInfo
from lsdet.engine.run_folder import RunFolder
from lsdet.engine.run_logger import RunLogger
from lsdet.engine.training_data import TrainingData
from lsdet.sampling.schedule import Schedule

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many iterations with a NaN/inf loss: training stopped."""


class NonFiniteStateError(RuntimeError):
    """The model's parameters or the optimizer's state hold NaN/inf: not checkpointed."""


@dataclass
class NonFiniteGuard:
    """Skips steps whose loss is not finite and logs each one; raises after ``max_count`` of
    them in a run or ``max_consecutive`` in a row (weights that turned inf/NaN make every
    later loss non-finite, so a long streak means the run cannot recover by itself)."""

    max_count: int
    max_consecutive: int | None = None
    count: int = 0
    consecutive: int = 0
    first_step: int | None = None  # global step of the run's first skipped step
    streak_start: int | None = None  # global step where the current streak began

    def step_ok(self, finite: bool, where: str, step: int | None = None) -> bool:
        """``step``: the global step (1-based) of the step in flight, for the log."""
        if finite:
            self.consecutive = 0
            self.streak_start = None
            return True
        self.count += 1
        self.consecutive += 1
        if self.first_step is None:
            self.first_step = step
        if self.streak_start is None:
            self.streak_start = step
        log.warning(
            "non-finite loss at step %s (%s): step skipped; %d in a row since step %s, %d in "
            "the run, the first at step %s",
            step,
            where,
            self.consecutive,
            self.streak_start,
            self.count,
            self.first_step,
        )
        if self.max_consecutive is not None and self.consecutive > self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} iterations in a row with a non-finite loss (steps "
                f"{self.streak_start}..{step}, last at {where}); "
                f"train.max_consecutive_nonfinite={self.max_consecutive}. Lower optim.lr or "
                "check the data."
            )
        if self.count > self.max_count:
            raise NonFiniteLossError(
                f"{self.count} iterations with a non-finite loss (the first at step "
                f"{self.first_step}, last at {where}); train.max_nonfinite={self.max_count}. "
                "Lower optim.lr or check the data."
            )
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "consecutive": self.consecutive,
            "first_step": self.first_step,
            "streak_start": self.streak_start,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("count", "consecutive", "first_step", "streak_start"):
            setattr(self, key, state.get(key, getattr(self, key)))


@dataclass
class DivergenceMonitor:
    """Flags a diverging but finite loss: above ``factor`` x its running mean for ``steps``
    steps in a row (``steps=0``: off). The running mean (an exponential moving average) takes
    in only the losses that are not above the threshold, so that a loss that keeps growing
    stays measured against the level it had before it took off."""

    factor: float
    steps: int
    momentum: float = 0.9
    running_mean: float | None = None
    streak: int = 0
    streak_start: int | None = None
    diverged_at: dict[str, Any] | None = None  # the first flag: step, loss, running mean

    def update(self, loss: float, step: int) -> bool:
        """Record the loss of global step ``step``; True on the step divergence is flagged."""
        if self.steps <= 0:
            return False
        if self.running_mean is None:
            self.running_mean = loss
            return False
        if loss > self.factor * self.running_mean:
            self.streak += 1
            if self.streak_start is None:
                self.streak_start = step
            if self.streak == self.steps and self.diverged_at is None:
                self.diverged_at = {
                    "step": step,
                    "since_step": self.streak_start,
                    "loss": loss,
                    "running_mean": self.running_mean,
                    "factor": self.factor,
                    "steps": self.steps,
                }
                return True
            return False
        self.streak = 0
        self.streak_start = None
        self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * loss
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "running_mean": self.running_mean,
            "streak": self.streak,
            "streak_start": self.streak_start,
            "diverged_at": self.diverged_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("running_mean", "streak", "streak_start", "diverged_at"):
            setattr(self, key, state.get(key, getattr(self, key)))


@dataclass
class Position:
    """Where training stands: phase index, epoch within the phase, iterations done in the
    epoch, the global iteration count over the whole run, and the evaluations so far."""

    phase: int = 0
    epoch: int = 0
    iteration: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Run:
    """What a training run holds while it trains: the model, optimizer, sampler and where the
    loop stands. The trainer builds it and is the only one to change it; the hooks read it."""

    folder: RunFolder
    device: torch.device
    dist: DistInfo
    data: TrainingData
    schedule: Schedule
    model: nn.Module
    logger: RunLogger
    guard: NonFiniteGuard
    seed: int
    batch_size: int  # per process
    amp: bool  # mixed precision: train.amp on a CUDA device
    clip_grad_norm: float | None = None  # optim.clip_grad_norm; None: no clipping
    position: Position = field(default_factory=Position)
    optimizer: torch.optim.Optimizer | None = None
    base_lr: float = 0.0
    scaler: torch.amp.GradScaler | None = None
    sampler: Any = None
    rates: torch.Tensor | None = None
    iters_this_epoch: int = 0

    @property
    def run_dir(self) -> Path:
        return self.folder.run_dir

    def global_epoch(self) -> int:
        """Epochs of earlier phases + this phase's epoch: seeds the sampler's stream."""
        done = sum(p.epochs for p in self.schedule.phases[: self.position.phase])
        return done + self.position.epoch
