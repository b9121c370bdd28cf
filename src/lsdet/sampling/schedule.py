"""Training schedules: a sequence of phases, each with its sampler, epochs and lr plan.

The paper's hybrid training scheduler is two phases: plain sequential sampling, then a
fine-tune from those weights with soft-balance sampling and its own learning-rate plan.
A single-phase schedule (the paper's 1x) is one phase. Built from the Hydra group
conf/schedule/ (see the comments there); the training loop asks ``lr_at`` for the lr.

Config layout (``phases`` is a mapping, so one phase is overridden by name, e.g.
``schedule.phases.finetune.epochs=3``; phases run in the order they are written)::

    name: hybrid
    phases:
      pretrain:
        sampler: {name: sequential}
        epochs: 20
        init_from_previous: false
        lr: {scale: 1.0, warmup_iters: 500, warmup_factor: 0.001, milestones: [12, 17],
             gamma: 0.1}
      finetune:
        sampler: ${sampler}
        ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lsdet.config_schema import schedule as schema
from lsdet.config_schema.settings import check_fields
from lsdet.sampling.samplers import check_sampler_config

# The keys and ranges of a phase and of its lr plan are those of the schedule's schema
# (lsdet.config_schema.schedule), checked here too for a schedule Hydra did not compose.
_LR_KEYS = {f.name for f in dataclasses.fields(schema.LrPlan)}
_PHASE_KEYS = {f.name for f in dataclasses.fields(schema.PhaseSettings)}


@dataclass(frozen=True)
class LrPlan:
    """Learning-rate multiplier of one phase: linear warm-up, then step decay.

    lr(it) = base_lr * scale * warmup(it) * gamma ** (number of milestones passed), where
    warmup rises linearly from ``warmup_factor`` at iteration 0 to 1 at ``warmup_iters``
    (detectron2's linear warm-up) and a milestone m (in epochs of the phase, may be
    fractional) is passed from iteration round(m * iters_per_epoch) on.
    """

    scale: float = 1.0
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1

    def factor(self, iteration: int, iters_per_epoch: int) -> float:
        """The multiplier of the base lr at ``iteration`` (0-based, counted within the phase)."""
        if iteration < 0 or iters_per_epoch <= 0:
            raise ValueError(
                f"need iteration >= 0 and iters_per_epoch > 0, got {iteration}, {iters_per_epoch}"
            )
        passed = sum(iteration >= round(m * iters_per_epoch) for m in self.milestones)
        factor = self.scale * self.gamma**passed
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


@dataclass(frozen=True)
class Phase:
    """One phase: train ``epochs`` epochs with ``sampler`` (a conf/sampler mapping).

    ``init_from_previous``: start from the previous phase's final weights (the optimizer and
    lr plan start afresh); otherwise the phase continues with whatever weights it is given.
    """

    name: str
    sampler: dict[str, Any]
    epochs: int
    lr: LrPlan
    init_from_previous: bool = False


@dataclass(frozen=True)
class Schedule:
    name: str
    phases: tuple[Phase, ...]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | DictConfig) -> Schedule:
        """Build from a schedule config (conf/schedule/*.yaml), interpolations resolved.

        Every problem raises ValueError naming the offending ``schedule.phases.<name>`` key.
        """
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        phases_cfg = cfg.get("phases")
        if not isinstance(phases_cfg, Mapping) or not phases_cfg:
            raise ValueError("schedule.phases must be a non-empty mapping of phase name -> phase")
        phases = []
        for index, (name, phase_cfg) in enumerate(phases_cfg.items()):
            where = f"schedule.phases.{name}"
            unknown = set(phase_cfg) - _PHASE_KEYS
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
            sampler = dict(phase_cfg.get("sampler") or {})
            check_sampler_config(sampler, where=f"{where}.sampler")
            if "epochs" not in phase_cfg:
                raise ValueError(f"{where}.epochs is required (the epochs of the phase)")
            check_fields(phase_cfg, schema.PhaseSettings, f"{where}.")
            epochs = phase_cfg["epochs"]
            lr = _lr_plan(dict(phase_cfg.get("lr") or {}), epochs, f"{where}.lr")
            init_from_previous = bool(phase_cfg.get("init_from_previous", False))
            if init_from_previous and index == 0:
                raise ValueError(f"{where}.init_from_previous: the first phase has no previous")
            phases.append(Phase(str(name), sampler, epochs, lr, init_from_previous))
        return cls(name=str(cfg.get("name", "schedule")), phases=tuple(phases))

    @property
    def total_epochs(self) -> int:
        return sum(phase.epochs for phase in self.phases)

    def phase(self, key: int | str) -> Phase:
        """A phase by position or by name."""
        if isinstance(key, str):
            for phase in self.phases:
                if phase.name == key:
                    return phase
            raise KeyError(f"schedule {self.name!r} has no phase {key!r}")
        return self.phases[key]

    def lr_at(
        self, phase: int | str, iteration: int, *, base_lr: float, iters_per_epoch: int
    ) -> float:
        """The lr at ``iteration`` (0-based, within ``phase``) for a base lr."""
        return base_lr * self.phase(phase).lr.factor(iteration, iters_per_epoch)


def _lr_plan(cfg: dict[str, Any], epochs: int, where: str) -> LrPlan:
    unknown = set(cfg) - _LR_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(_LR_KEYS)}")
    check_fields(cfg, schema.LrPlan, f"{where}.")
    milestones = tuple(float(m) for m in cfg.get("milestones") or ())
    if any(not 0 < m < epochs for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise ValueError(
            f"{where}.milestones must increase strictly and lie inside the phase's "
            f"(0, {epochs}) epochs, got {list(milestones)}"
        )
    return LrPlan(
        scale=float(cfg.get("scale", 1.0)),
        warmup_iters=int(cfg.get("warmup_iters", 0)),
        warmup_factor=float(cfg.get("warmup_factor", 0.001)),
        milestones=milestones,
        gamma=float(cfg.get("gamma", 0.1)),
    )
