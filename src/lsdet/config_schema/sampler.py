"""Schemas of the sampler group (conf/sampler/*.yaml, under ``sampler.``; lsdet.sampling):
one per sampler, each with only the keys that sampler reads. The same schema's ranges check a
phase's inline sampler (``schedule.phases.<phase>.sampler: {name: sequential}``), found by its
name with ``sampler_schema``."""

from __future__ import annotations

from dataclasses import dataclass

from lsdet.config_schema.settings import integer, number, ranged

# Draws per epoch; null = the number of training images.
NUM_SAMPLES = integer(1, nullable=True)


@dataclass
class SequentialSampler:
    """``sampler=sequential``: every training image once per epoch (the paper's P_o)."""

    name: str = "sequential"


@dataclass
class ClassAwareSampler:
    """``sampler=class_aware``: a class uniformly, then one of its images."""

    name: str = "class_aware"
    num_samples: int | None = ranged(None, NUM_SAMPLES)


@dataclass
class SoftBalanceSampler:
    """``sampler=soft_balance``: the paper's soft-balance sampling (eq. 6-8)."""

    name: str = "soft_balance"
    # 0 = the image-count distribution, 1 = class-aware, > 1 favours rare classes further.
    lam: float = ranged(0.7, number(0.0))
    num_samples: int | None = ranged(None, NUM_SAMPLES)


@dataclass
class RepeatFactorSampler:
    """``sampler=repeat_factor``: repeat-factor sampling (detectron2 / LVIS)."""

    name: str = "repeat_factor"
    # A fraction of the training images (detectron2's REPEAT_THRESHOLD).
    repeat_threshold: float = ranged(0.001, number(0.0, 1.0, low_ok=False))


SAMPLER_SCHEMAS: dict[str, type] = {
    "sequential": SequentialSampler,
    "class_aware": ClassAwareSampler,
    "soft_balance": SoftBalanceSampler,
    "repeat_factor": RepeatFactorSampler,
}


def sampler_schema(name: object) -> type | None:
    """The schema of the sampler called ``name`` (``sampler.name``), None for an unknown name."""
    return SAMPLER_SCHEMAS.get(name) if isinstance(name, str) else None


SCHEMAS = {f"sampler/{name}": schema for name, schema in SAMPLER_SCHEMAS.items()}
