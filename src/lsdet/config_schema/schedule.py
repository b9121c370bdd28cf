"""Schema of the schedule group (conf/schedule/*.yaml, under ``schedule.``;
lsdet.sampling.schedule): named phases, each with its epochs, lr plan and sampler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from lsdet.config_schema.settings import (
    integer,
    number,
    ranged,
)


@dataclass
class LrPlan:
    """``schedule.phases.<phase>.lr``: linear warm-up, then step decay
    (lsdet.sampling.schedule.LrPlan)."""

    scale: float = ranged(1.0, number(0.0, low_ok=False))
    warmup_iters: int = ranged(0, integer(0))
    # The warm-up starts at warmup_factor x lr: 0 would start at lr 0.
    warmup_factor: float = ranged(0.001, number(0.0, 1.0, low_ok=False))
    # Epochs of the phase after which the lr is multiplied by gamma, each > 0 (checked with
    # the phase's length by lsdet.config_schema.checks and Schedule.from_config).
    milestones: list[float] | None = None
    gamma: float = ranged(0.1, number(0.0, 1.0, low_ok=False))


@dataclass
class PhaseSettings:
    """``schedule.phases.<phase>``: one phase of training."""

    # Any: either ``${sampler}`` (the top-level sampler, whose own schema checks it) or an
    # inline sampler mapping such as ``{name: sequential}``, whose keys depend on its name
    # (checked against lsdet.config_schema.sampler's schema of that name).
    sampler: Any = MISSING
    epochs: int = ranged(MISSING, integer(1))
    init_from_previous: bool = False
    lr: LrPlan = field(default_factory=LrPlan)


@dataclass
class ScheduleSettings:
    """``schedule.*``: the schedule's name and its phases, trained in order."""

    name: str = "schedule"
    phases: dict[str, PhaseSettings] = field(default_factory=dict)


SCHEMAS = {"schedule/settings": ScheduleSettings}
