"""Schemas of ``train.*`` (conf/trainer/default.yaml, whose comments say what each setting does)
and ``rates.*`` (conf/train.yaml): the concurrent rates r_ij of the paper's eq. 3 and 5
(section 3.1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lsdet.config_schema.settings import UNIT, integer, number, one_of, ranged

# train.device (lsdet.engine.builders.resolve_device imports this list).
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class DivergenceSettings:
    """``train.divergence``: a finite loss above ``factor`` x its running mean for ``steps``
    steps in a row is flagged (``steps`` = 0 turns it off)."""

    # A factor <= 1 would flag an ordinary loss.
    factor: float = ranged(10.0, number(1.0, low_ok=False))
    steps: int = ranged(20, integer(0))


@dataclass
class TrainSettings:
    """``train.*``: device, batch, loop, evaluation and checkpoint settings."""

    device: str = one_of("auto", DEVICES)
    dist_backend: str = one_of("auto", ("auto", "nccl", "gloo"))
    find_unused_parameters: bool = False
    batch_size: int = ranged(2, integer(1))
    eval_batch_size: int = ranged(8, integer(1))
    hflip_prob: float = ranged(0.5, UNIT)
    num_workers: int = ranged(2, integer(0))
    threads: int | None = ranged(None, integer(1, nullable=True))
    amp: bool = True
    max_iters_per_epoch: int | None = ranged(None, integer(1, nullable=True))
    stop_after_iters: int | None = ranged(None, integer(1, nullable=True))
    checkpoint_every: int = ranged(1000, integer(0))
    eval_every: str = one_of("epoch", ("epoch", "phase", "never"))
    # Null or a list of epochs of the schedule (lsdet.config_schema.checks, which knows the
    # schedule's length).
    eval_epochs: list[int] | None = None
    # Any: OmegaConf's bool would read ``yes`` as true; lsdet.config_schema.checks accepts true/false only.
    eval_image_records: Any = False
    eval_max_images: int | None = ranged(None, integer(1, nullable=True))
    max_nonfinite: int = ranged(50, integer(0))
    max_consecutive_nonfinite: int = ranged(10, integer(0))
    divergence: DivergenceSettings = field(default_factory=DivergenceSettings)
    log_every: int = ranged(20, integer(1))
    progress: bool = True
    # Any: true | false | auto (lsdet.engine.run_folder.parse_resume).
    resume: Any = False
    overwrite: bool = False
    resume_allow_changes: list[str] = field(default_factory=list)


@dataclass
class RatesSettings:
    """``rates.*``: the estimator of the concurrent rates (lsdet.data.rates)."""

    # Two boxes "coincide" at IoU >= iou_threshold; 0 would make every pair of an image coincide.
    iou_threshold: float = ranged(0.9, number(0.0, 1.0, low_ok=False))
    floor: float = ranged(0.01, UNIT)
    hierarchy_rate: float = ranged(1.0, UNIT)
    prior_count: float = ranged(8.0, number(0.0))


SCHEMAS = {"train/settings": TrainSettings, "rates/settings": RatesSettings}
