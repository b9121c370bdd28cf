"""Class scores at inference from the RoI classifier's logits, selected by key.

A loss class names the scorer that matches it (``ClassificationLoss.default_scoring``);
``model.scoring`` (and the ``scoring=`` override of ``lsdet.evaluate`` / ``lsdet.predict``)
selects another one by its key in ``SCORERS``. Every scorer maps logits [R, C+1] (column 0 =
background; [R, C+2] for ``softmax_objectness``) to scores [R, C+1].

Parent classes are then scored as ``parent_scores`` says (``PARENT_SCORES``): ``own`` (the
parent's own output: losses that train parents as positives), ``max_descendants`` (at least
its best descendant) or ``subtree_sum`` (its own score plus its descendants', capped at 1: the
probability of the subtree when the scores are those of one softmax, whose classes are
mutually exclusive).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lsdet import ops
from lsdet.config_schema.model import PARENT_SCORES, SCORINGS


def softmax_scores(logits: torch.Tensor, rates: torch.Tensor | None) -> torch.Tensor:
    return F.softmax(logits, dim=-1)


def sigmoid_scores(logits: torch.Tensor, rates: torch.Tensor | None) -> torch.Tensor:
    return torch.sigmoid(logits)


def concurrent_softmax_scores(logits: torch.Tensor, rates: torch.Tensor | None) -> torch.Tensor:
    """The paper's eq. 5 (Peng et al., CVPR 2020): the concurrent softmax with no positive."""
    if rates is None:
        raise ValueError("scoring=concurrent_softmax needs the concurrent rates matrix")
    return ops.concurrent_softmax(logits, rates.float())


def softmax_objectness_scores(logits: torch.Tensor, rates: torch.Tensor | None) -> torch.Tensor:
    """Seesaw's (mmdetection ``SeesawLoss.get_activation``): softmax over the classes times
    the foreground probability of the objectness pair (column 0 = background objectness,
    the last column = foreground objectness)."""
    objectness = F.softmax(torch.stack([logits[:, 0], logits[:, -1]], dim=1), dim=1)
    classes = F.softmax(logits[:, 1:-1], dim=1) * objectness[:, 1:]
    return torch.cat([objectness[:, :1], classes], dim=1)


def sigmoid_objectness_scores(logits: torch.Tensor, rates: torch.Tensor | None) -> torch.Tensor:
    """EQLv2's ``test_with_obj``: sigmoid(z_j) x (1 - sigmoid(z_0))."""
    probs = torch.sigmoid(logits)
    return torch.cat([probs[:, :1], probs[:, 1:] * (1.0 - probs[:, :1])], dim=1)


SCORERS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "softmax": softmax_scores,
    "concurrent_softmax": concurrent_softmax_scores,
    "sigmoid": sigmoid_scores,
    "softmax_objectness": softmax_objectness_scores,
    "sigmoid_objectness": sigmoid_objectness_scores,
}
# The scorers that read the concurrent rates.
RATE_SCORINGS = ("concurrent_softmax",)


def check_scoring_key(scoring: str) -> None:
    if scoring not in SCORERS:
        raise ValueError(f"model.scoring={scoring!r}; expected one of {SCORINGS}")


def check_parent_scores(parent_scores: str) -> None:
    if parent_scores not in PARENT_SCORES:
        raise ValueError(f"model.parent_scores={parent_scores!r}; expected {PARENT_SCORES}")


def score_logits(
    logits: torch.Tensor, scoring: str, rates: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-class scores [R, C+1] (column 0 = background) of the scorer ``scoring``."""
    check_scoring_key(scoring)
    return SCORERS[scoring](logits.float(), rates)


def raise_parents_to_descendants(scores: torch.Tensor, descendants: torch.Tensor) -> torch.Tensor:
    """scores [R, C+1]; descendants [C, C] bool (descendants[i, j]: j is below i).

    Returns scores where each parent column is max(own score, best descendant's score)."""
    out = scores.clone()
    for parent in torch.nonzero(descendants.any(dim=1)).flatten().tolist():
        below = torch.nonzero(descendants[parent]).flatten() + 1
        out[:, parent + 1] = torch.maximum(scores[:, parent + 1], scores[:, below].amax(dim=1))
    return out


def sum_subtrees(scores: torch.Tensor, descendants: torch.Tensor) -> torch.Tensor:
    """scores [R, C+1]; descendants [C, C] bool (descendants[i, j]: j is below i).

    Returns scores where each class column is min(1, own score + the sum of its descendants'
    scores), each descendant counted once (also when the hierarchy reaches it by two paths)."""
    foreground = scores[:, 1:]
    below = foreground @ descendants.to(foreground.dtype).T
    return torch.cat([scores[:, :1], (foreground + below).clamp(max=1.0)], dim=1)


def class_scores(
    logits: torch.Tensor,
    scoring: str,
    *,
    rates: torch.Tensor | None = None,
    descendants: torch.Tensor | None = None,
    parent_scores: str = "own",
) -> torch.Tensor:
    """Scores [R, C+1] of the scorer ``scoring``, parents as ``parent_scores`` says
    (``descendants`` [C, C] bool; None or all False: no parent)."""
    check_parent_scores(parent_scores)
    scores = score_logits(logits, scoring, rates)
    if descendants is not None and bool(descendants.any()):
        if parent_scores == "max_descendants":
            scores = raise_parents_to_descendants(scores, descendants)
        elif parent_scores == "subtree_sum":
            scores = sum_subtrees(scores, descendants)
    return scores
