"""RoI classification losses selected by name (Hydra group conf/loss/), and class weighting.

loss_fn = build_loss("concurrent_softmax", num_classes=C + 1, rates=rates,
                     class_weights=class_weights("soft_balance", image_counts=n, lam=0.7))
loss = loss_fn(logits [R, C+1], multilabels [R, C+1], labels [R])
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from numpy.typing import ArrayLike

from lsdet.losses.classification import (
    LOSSES,
    BinaryCrossEntropy,
    ClassificationLoss,
    ConcurrentSoftmaxLoss,
    CoOccurrenceBCE,
    DistributedCrossEntropy,
    FocalLoss,
    SoftmaxCrossEntropy,
)
from lsdet.losses.weighting import WEIGHTINGS, class_weights, effective_number_weights

__all__ = [
    "LOSSES",
    "WEIGHTINGS",
    "BinaryCrossEntropy",
    "ClassificationLoss",
    "CoOccurrenceBCE",
    "ConcurrentSoftmaxLoss",
    "DistributedCrossEntropy",
    "FocalLoss",
    "SoftmaxCrossEntropy",
    "build_loss",
    "class_weights",
    "effective_number_weights",
    "loss_from_config",
]

# Keys of conf/loss/*.yaml that are not options of the loss module itself.
_CONFIG_KEYS = ("name", "weighting", "weight_lam", "beta")


def build_loss(
    name: str,
    *,
    num_classes: int,
    rates: ArrayLike | torch.Tensor | None = None,
    ancestors: ArrayLike | torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    **options: Any,
) -> ClassificationLoss:
    """The loss registered as ``name`` in ``LOSSES``.

    Args:
        name: one of ``LOSSES`` (softmax, concurrent_softmax, bce, focal, co_bce, dist_ce).
        num_classes: C + 1, counting the background.
        rates: [C+1, C+1] concurrent rates (row/col 0 = background); used by
            concurrent_softmax and co_bce, ignored by the others.
        ancestors: [C, C] bool, ancestors[k, j] = j is a strict ancestor of k; used by co_bce.
        class_weights: [C+1] per-column weights (see ``class_weights``), or None for 1.
        options: the loss's own settings (e.g. gamma/alpha for focal, cooccur_threshold).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
    loss_cls = LOSSES[name]
    accepted = inspect.signature(loss_cls.__init__).parameters
    own_options = [p for p in accepted if p not in ("self", "num_classes", "class_weights")]
    unknown = sorted(set(options) - set(own_options) - {"rates", "ancestors"})
    if unknown:
        settable = [p for p in own_options if p not in ("rates", "ancestors")]
        raise ValueError(f"loss {name!r} has no option(s) {unknown}; its options: {settable}")
    kwargs = dict(options)
    if "rates" in accepted:
        kwargs["rates"] = rates
    if "ancestors" in accepted:
        kwargs["ancestors"] = ancestors
    return loss_cls(num_classes, class_weights, **kwargs)


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
    not "none".
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
        class_weights=weights,
        **options,
    )
