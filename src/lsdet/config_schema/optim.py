"""Schema of the optim group (conf/optim/*.yaml): the optimizer and its base lr.

``optimizer`` is the argument of ``hydra.utils.instantiate`` (``_target_``, ``_partial_`` and
the optimizer class's own keyword arguments): its keys depend on the class, so it is a free
mapping here; lsdet.config_schema.checks checks the ranges of its weight_decay and momentum.
That optim.lr=null needs optim.lr_per_image is checked there too (two settings at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from lsdet.config_schema.settings import number, ranged


@dataclass
class OptimSettings:
    """``optim.*``: one optimizer (conf/optim/<name>.yaml)."""

    name: str = MISSING
    # Null: lr_per_image x the total batch size.
    lr: float | None = ranged(MISSING, number(0.0, low_ok=False, nullable=True))
    lr_per_image: float | None = ranged(MISSING, number(0.0, low_ok=False, nullable=True))
    clip_grad_norm: float | None = ranged(MISSING, number(0.0, low_ok=False, nullable=True))
    # Any: a free mapping for hydra.utils.instantiate (the class's keyword arguments).
    optimizer: Any = MISSING


SCHEMAS = {"optim/settings": OptimSettings}
