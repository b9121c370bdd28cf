"""The detector: timm backbone + FPN + Faster R-CNN with a multi-label box head."""

from lsdet.models.backbone import TimmFPNBackbone, apply_norm_mode, create_timm_features
from lsdet.models.detector import build_detector
from lsdet.models.roi_heads import (
    MultiLabelBoxPredictor,
    MultiLabelRoIHeads,
    NormalizedLinear,
    best_after_nms,
    prior_bias,
)

__all__ = [
    "MultiLabelBoxPredictor",
    "MultiLabelRoIHeads",
    "NormalizedLinear",
    "TimmFPNBackbone",
    "apply_norm_mode",
    "best_after_nms",
    "build_detector",
    "create_timm_features",
    "prior_bias",
]
