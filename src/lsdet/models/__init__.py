"""The detector: timm backbone + FPN + Faster R-CNN with a multi-label box head."""

from lsdet.models.backbone import TimmFPNBackbone, apply_norm_mode, create_timm_features
from lsdet.models.detector import build_detector, is_sigmoid_loss, resolve_scoring
from lsdet.models.roi_heads import (
    PARENT_SCORES,
    SCORINGS,
    MultiLabelBoxPredictor,
    MultiLabelRoIHeads,
    NormalizedLinear,
    best_after_nms,
    prior_bias,
    raise_parents_to_descendants,
    score_logits,
    sum_subtrees,
)

__all__ = [
    "PARENT_SCORES",
    "SCORINGS",
    "MultiLabelBoxPredictor",
    "MultiLabelRoIHeads",
    "NormalizedLinear",
    "TimmFPNBackbone",
    "apply_norm_mode",
    "best_after_nms",
    "build_detector",
    "create_timm_features",
    "is_sigmoid_loss",
    "prior_bias",
    "raise_parents_to_descendants",
    "resolve_scoring",
    "score_logits",
    "sum_subtrees",
]
