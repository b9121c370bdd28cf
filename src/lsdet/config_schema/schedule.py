"""Schema of the schedule group (conf/schedule/*.yaml, under ``schedule.``;
lsdet.sampling.schedule): named phases, each with its epochs, lr plan and sampler."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from lsdet.config_schema.settings import (
    CHOICES,
    RANGE,
    check_choice,
    check_setting,
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
    # the phase's length by lsdet.engine.config_checks and Schedule.from_config).
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


def check_fields(values: Mapping[str, Any], schema: type, prefix: str) -> None:
    """Check the keys of ``values``, a mapping that is not a schema node (a phase's inline
    sampler, a schedule Hydra did not compose), against the ranges and choices of ``schema``'s
    fields; a ValueError names ``prefix`` + the key. Keys the schema lacks are not checked."""
    for setting in dataclasses.fields(schema):
        if setting.name not in values:
            continue
        value = values[setting.name]
        if RANGE in setting.metadata:
            check_setting(prefix + setting.name, value, setting.metadata[RANGE])
        if CHOICES in setting.metadata:
            check_choice(prefix + setting.name, value, setting.metadata[CHOICES])
