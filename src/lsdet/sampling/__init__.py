"""Image samplers (sequential, class-aware, soft-balance, repeat-factor) and training schedules.

Soft-balance (the paper's eq. 6-8) lives in ``lsdet.sampling.soft_balance``: P_s*, its sampler
and its loss weights."""

from lsdet.sampling.base import EpochSampler
from lsdet.sampling.samplers import (
    SAMPLER_KEYS,
    RepeatFactorSampler,
    ShuffledEpochSampler,
    build_sampler,
    check_sampler_config,
    repeat_factors,
)
from lsdet.sampling.soft_balance import (
    SoftBalanceSampler,
    soft_balance_probs,
    soft_balance_weights,
)

__all__ = [
    "SAMPLER_KEYS",
    "EpochSampler",
    "RepeatFactorSampler",
    "ShuffledEpochSampler",
    "SoftBalanceSampler",
    "build_sampler",
    "check_sampler_config",
    "repeat_factors",
    "soft_balance_probs",
    "soft_balance_weights",
]
