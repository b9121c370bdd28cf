"""RoI classification losses selected by name (Hydra group conf/loss/), and class weighting.

loss_fn = build_loss("concurrent_softmax", num_classes=C + 1, rates=rates,
                     class_weights=class_weights("soft_balance", image_counts=n, lam=0.7))
loss = loss_fn(logits [R, C+1], multilabels [R, C+1], labels [R])

The registry is a plain dict from the config's ``loss.name`` to the class (``loss_class``):
each class holds its head contract (``ClassificationLoss``: the training statistics it takes,
the classifier it needs, ``num_logits``, and ``scores`` with the scorers of
``lsdet.losses.scoring``), so that the trainer, ``lsdet.models.build_detector`` and the
inference code all read one place.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from numpy.typing import ArrayLike

from lsdet.losses.classification import (
    BinaryCrossEntropy,
    ClassificationLoss,
    ConcurrentSoftmaxLoss,
    CoOccurrenceBCE,
    DistributedCrossEntropy,
    FocalLoss,
    SoftmaxCrossEntropy,
)
from lsdet.losses.longtail import EQLv2Loss, FederatedLoss, SeesawLoss, sum_over_ranks
from lsdet.losses.scoring import PARENT_SCORES, SCORERS, SCORINGS
from lsdet.losses.weighting import WEIGHTINGS, class_weights, effective_number_weights

__all__ = [
    "LOSSES",
    "PARENT_SCORES",
    "SCORERS",
    "SCORINGS",
    "WEIGHTINGS",
    "BinaryCrossEntropy",
    "ClassificationLoss",
    "CoOccurrenceBCE",
    "ConcurrentSoftmaxLoss",
    "DistributedCrossEntropy",
    "EQLv2Loss",
    "FederatedLoss",
    "FocalLoss",
    "SeesawLoss",
    "SoftmaxCrossEntropy",
    "build_loss",
    "class_weights",
    "effective_number_weights",
    "loss_class",
    "loss_from_config",
    "sum_over_ranks",
]

LOSSES: dict[str, type[ClassificationLoss]] = {
    "softmax": SoftmaxCrossEntropy,
    "concurrent_softmax": ConcurrentSoftmaxLoss,
    "bce": BinaryCrossEntropy,
    "focal": FocalLoss,
    "co_bce": CoOccurrenceBCE,
    "dist_ce": DistributedCrossEntropy,
    "seesaw": SeesawLoss,
    "eqlv2": EQLv2Loss,
    "federated": FederatedLoss,
}

# Inputs build_loss can pass, by name (a loss takes those listed in its ``inputs``).
_INPUTS = ("rates", "ancestors", "image_counts")
# Keys of conf/loss/*.yaml that are not options of the loss module itself.
_CONFIG_KEYS = ("name", "weighting", "weight_lam", "beta", "parent_scores")


def loss_class(name: str) -> type[ClassificationLoss]:
    """The class registered as ``loss.name`` = ``name``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss loss.name={name!r}; registered: {sorted(LOSSES)}")
    return LOSSES[name]


def build_loss(
    name: str,
    *,
    num_classes: int,
    rates: ArrayLike | torch.Tensor | None = None,
    ancestors: ArrayLike | torch.Tensor | None = None,
    image_counts: ArrayLike | torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    **options: Any,
) -> ClassificationLoss:
    """The loss registered as ``name`` in ``LOSSES``.

    Args:
        name: one of ``LOSSES``.
        num_classes: C + 1, counting the background.
        rates: [C+1, C+1] concurrent rates (row/col 0 = background); used by
            concurrent_softmax and co_bce, ignored by the others.
        ancestors: [C, C] bool, ancestors[k, j] = j is a strict ancestor of k; used by co_bce
            and by concurrent_softmax with ``positive_targets="annotated"``.
        image_counts: [C] training images per class (mids order); used by federated.
        class_weights: [C+1] per-column weights (see ``class_weights``), or None for 1.
        options: the loss's own settings (e.g. gamma/alpha for focal, cooccur_threshold,
            positive_targets/positive_reduction for concurrent_softmax).
    """
    loss_cls = loss_class(name)
    own_options = [
        p
        for p in inspect.signature(loss_cls.__init__).parameters
        if p not in ("self", "num_classes", "class_weights", *_INPUTS)
    ]
    unknown = sorted(set(options) - set(own_options))
    if unknown:
        raise ValueError(f"loss {name!r} has no option(s) {unknown}; its options: {own_options}")
    available = {"rates": rates, "ancestors": ancestors, "image_counts": image_counts}
    inputs = {key: available[key] for key in loss_cls.inputs}
    return loss_cls(num_classes, class_weights, **inputs, **options)


def loss_from_config(
    cfg: Mapping[str, Any],
    *,
    num_classes: int,
    image_counts: ArrayLike | None = None,
    box_counts: ArrayLike | None = None,
    rates: ArrayLike | torch.Tensor | None = None,
    ancestors: ArrayLike | torch.Tensor | None = None,
) -> ClassificationLoss:
    """Build the loss of a conf/loss/*.yaml node: its class weighting and its options.

    ``image_counts`` / ``box_counts`` ([C], mids order) are needed when ``cfg.weighting`` is
    not "none" (and image_counts by the federated loss).
    """
    weighting = cfg.get("weighting", "none")
    weights = None
    if weighting != "none":
        if image_counts is None:
            raise ValueError(f"loss.weighting={weighting!r} needs the training image counts")
        weights = class_weights(
            weighting,
            image_counts=image_counts,
            box_counts=box_counts,
            lam=float(cfg.get("weight_lam", 0.7)),
            beta=float(cfg.get("beta", 0.999)),
        )
    options = {k: v for k, v in cfg.items() if k not in _CONFIG_KEYS}
    return build_loss(
        cfg["name"],
        num_classes=num_classes,
        rates=rates,
        ancestors=ancestors,
        image_counts=image_counts,
        class_weights=weights,
        **options,
    )
