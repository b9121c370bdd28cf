"""Schemas of the loss group (conf/loss/*.yaml, under ``loss.``; lsdet.losses.loss_from_config):
``LossSettings``, the settings every loss has (its name, its parent scoring and the class
weighting of conf/loss_base/default.yaml), and one subclass per loss with that loss's own
options. The same key may mean another thing in another loss (focal's alpha weighs the
positives, eqlv2's scales them), so each loss's ranges are its own."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from lsdet.config_schema.model import PARENT_SCORES
from lsdet.config_schema.settings import integer, number, one_of, ranged

# Class weighting of the loss terms (lsdet.losses.weighting.class_weights).
WEIGHTINGS = ("none", "soft_balance", "effective_number")
# concurrent_softmax: which classes are a RoI's positives K of eq. 3, how they combine, and the
# implementation (lsdet.ops.concurrent_softmax_loss).
POSITIVE_TARGETS = ("expanded", "annotated")
POSITIVE_REDUCTIONS = ("sum", "mean")
IMPLS = ("auto", "triton", "torch")


@dataclass
class LossSettings:
    """The settings of every loss: ``name`` and ``parent_scores`` (conf/loss/<loss>.yaml) and
    the class weighting (conf/loss_base/default.yaml)."""

    name: str = MISSING
    # The default of model.parent_scores (the detector's setting).
    parent_scores: str = one_of("own", PARENT_SCORES)
    weighting: str = one_of("none", WEIGHTINGS)
    # The exponent lambda of the soft_balance weighting (paper eq. 6-8).
    weight_lam: float = ranged(0.7, number(0.0))
    # Effective number (1 - beta) / (1 - beta^n): beta = 1 divides by zero.
    beta: float = ranged(0.999, number(0.0, 1.0, high_ok=False))


@dataclass
class BceLoss(LossSettings):
    name: str = "bce"


@dataclass
class CoBceLoss(LossSettings):
    name: str = "co_bce"
    ignore_descendants: bool = True
    # A concurrent rate in [0, 1]; null = no co-occurrence rule.
    cooccur_threshold: float | None = ranged(0.1, number(0.0, 1.0, nullable=True))


@dataclass
class ConcurrentSoftmaxLoss(LossSettings):
    name: str = "concurrent_softmax"
    positive_targets: str = one_of("expanded", POSITIVE_TARGETS)
    positive_reduction: str = one_of("sum", POSITIVE_REDUCTIONS)
    impl: str = one_of("auto", IMPLS)


@dataclass
class DistCeLoss(LossSettings):
    name: str = "dist_ce"
    parent_scores: str = one_of("subtree_sum", PARENT_SCORES)


@dataclass
class Eqlv2Loss(LossSettings):
    name: str = "eqlv2"
    gamma: float = ranged(12.0, number(0.0))
    mu: float = ranged(0.8, number(0.0))
    alpha: float = ranged(4.0, number(0.0))


@dataclass
class FederatedLoss(LossSettings):
    name: str = "federated"
    num_classes_per_batch: int = ranged(50, integer(1))
    power: float = ranged(0.5, number(0.0))


@dataclass
class FocalLoss(LossSettings):
    name: str = "focal"
    gamma: float = ranged(2.0, number(0.0))
    # A negative alpha turns the positive weighting off (as torchvision's sigmoid_focal_loss).
    alpha: float = ranged(0.25, number(high=1.0))


@dataclass
class SeesawLoss(LossSettings):
    name: str = "seesaw"
    parent_scores: str = one_of("subtree_sum", PARENT_SCORES)
    p: float = ranged(0.8, number(0.0))
    q: float = ranged(2.0, number(0.0))
    # logits = temperature x cos(feature, w) + b: 0 would make every logit the bias.
    temperature: float = ranged(20.0, number(0.0, low_ok=False))
    eps: float = ranged(0.01, number(0.0, 1.0, low_ok=False))


@dataclass
class SoftmaxLoss(LossSettings):
    name: str = "softmax"
    parent_scores: str = one_of("subtree_sum", PARENT_SCORES)


LOSS_SCHEMAS: dict[str, type] = {
    schema().name: schema
    for schema in (
        BceLoss,
        CoBceLoss,
        ConcurrentSoftmaxLoss,
        DistCeLoss,
        Eqlv2Loss,
        FederatedLoss,
        FocalLoss,
        SeesawLoss,
        SoftmaxLoss,
    )
}

SCHEMAS = {f"loss/{name}": schema for name, schema in LOSS_SCHEMAS.items()}
