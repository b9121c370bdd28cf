"""Image samplers (sequential, class-aware, soft-balance, repeat-factor) and training schedules."""

from lsdet.sampling.probs import soft_balance_probs

__all__ = ["soft_balance_probs"]
