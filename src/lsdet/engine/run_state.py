"""What a training run holds while it trains (``Run``: everything a checkpoint is made of),
where it stands (``Position``), and the guard that skips steps with a non-finite loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from lsdet.engine.distributed import DistInfo
from lsdet.engine.run_logger import RunLogger
from lsdet.engine.signals import StopRequested
from lsdet.engine.training_data import TrainingData
from lsdet.sampling.schedule import Schedule


class NonFiniteLossError(RuntimeError):
    """Too many iterations with a NaN/inf loss: training stopped."""


@dataclass
class NonFiniteGuard:
    """Skips steps whose loss is not finite; raises after ``max_count`` of them in a run."""

    max_count: int
    count: int = 0

    def step_ok(self, finite: bool, where: str) -> bool:
        if finite:
            return True
        self.count += 1
        if self.count > self.max_count:
            raise NonFiniteLossError(
                f"{self.count} iterations with a non-finite loss (last at {where}); "
                f"train.max_nonfinite={self.max_count}. Lower optim.lr or check the data."
            )
        return False


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
    """What a training run holds while it trains; everything in a checkpoint comes from here."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    dist: DistInfo
    data: TrainingData
    schedule: Schedule
    model: nn.Module
    logger: RunLogger
    stop: StopRequested
    guard: NonFiniteGuard
    position: Position = field(default_factory=Position)
    optimizer: torch.optim.Optimizer | None = None
    base_lr: float = 0.0
    scaler: torch.amp.GradScaler | None = None
    sampler: Any = None
    rates: torch.Tensor | None = None
    iters_this_epoch: int = 0
    loss_ema: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def batch_size(self) -> int:
        return int(self.cfg.train.batch_size)

    @property
    def amp(self) -> bool:
        return bool(self.cfg.train.amp) and self.device.type == "cuda"

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def global_epoch(self) -> int:
        """Epochs of earlier phases + this phase's epoch: seeds the sampler's stream."""
        done = sum(p.epochs for p in self.schedule.phases[: self.position.phase])
        return done + self.position.epoch
