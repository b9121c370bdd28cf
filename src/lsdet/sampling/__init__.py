"""Image samplers (sequential, class-aware, soft-balance, repeat-factor) and training schedules."""

from lsdet.sampling.probs import soft_balance_probs
from lsdet.sampling.samplers import (
    SAMPLER_KEYS,
    EpochSampler,
    RepeatFactorSampler,
    SequentialSampler,
    SoftBalanceSampler,
    build_sampler,
    check_sampler_config,
    repeat_factors,
)

__all__ = [
    "SAMPLER_KEYS",
    "EpochSampler",
    "RepeatFactorSampler",
    "SequentialSampler",
    "SoftBalanceSampler",
    "build_sampler",
    "check_sampler_config",
    "repeat_factors",
    "soft_balance_probs",
]
