"""Schema of the model group (conf/model/*.yaml; conf/model/resnet18_fpn.yaml describes every
key): the backbone, FPN, anchors, RPN and RoI head of the Faster R-CNN detector and its
inference scoring.

The yaml files give every value (the schema's defaults are ``???``): the schema gives each
key's type and allowed values. ``parent_scores`` defaults, in every yaml, to the loss's
(``${loss.parent_scores}``); its choices are checked on the resolved value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from lsdet.config_schema.settings import UNIT, integer, number, one_of, ranged

# The scorers of the RoI classifier's logits (keys of lsdet.losses.scoring.SCORERS, which
# imports this list), and how parent classes are scored (lsdet.losses.scoring).
SCORINGS = (
    "softmax",
    "concurrent_softmax",
    "sigmoid",
    "softmax_objectness",
    "sigmoid_objectness",
)
PARENT_SCORES = ("own", "max_descendants", "subtree_sum")
# auto: the loss's own scoring (lsdet.losses.ClassificationLoss.default_scoring).
MODEL_SCORINGS = ("auto", *SCORINGS)
# The backbone's batch-norm handling (lsdet.models.backbone.apply_norm_mode imports this list).
BACKBONE_NORMS = ("bn", "frozen_bn", "sync_bn")


@dataclass
class BackboneSettings:
    """``model.backbone``: a timm feature extractor."""

    name: str = MISSING  # any timm model with features_only support
    out_indices: list[int] = MISSING
    pretrained: bool = MISSING
    checkpoint_path: str | None = MISSING
    norm: str = one_of(MISSING, BACKBONE_NORMS)


@dataclass
class RpnSettings:
    """``model.rpn``: torchvision's RegionProposalNetwork settings."""

    pre_nms_top_n_train: int = ranged(MISSING, integer(1))
    post_nms_top_n_train: int = ranged(MISSING, integer(1))
    pre_nms_top_n_test: int = ranged(MISSING, integer(1))
    post_nms_top_n_test: int = ranged(MISSING, integer(1))
    nms_thresh: float = ranged(MISSING, UNIT)
    batch_size_per_image: int = ranged(MISSING, integer(1))


@dataclass
class RoiSettings:
    """``model.roi``: torchvision's RoIHeads settings (bg_iou_thresh <= fg_iou_thresh is
    checked by lsdet.config_schema.checks)."""

    output_size: int = ranged(MISSING, integer(1))
    sampling_ratio: int = MISSING
    representation_size: int = ranged(MISSING, integer(1))
    batch_size_per_image: int = ranged(MISSING, integer(1))
    # A share of the sampled RoIs; 0 would train the classifier on background only.
    positive_fraction: float = ranged(MISSING, number(0.0, 1.0, low_ok=False))
    fg_iou_thresh: float = ranged(MISSING, UNIT)
    bg_iou_thresh: float = ranged(MISSING, UNIT)
    class_agnostic_box_reg: bool = MISSING
    # A detection is kept when its score is > score_thresh, and scores are <= 1: from 1 on
    # no detection is possible.
    score_thresh: float = ranged(MISSING, number(0.0, 1.0, high_ok=False))
    nms_thresh: float = ranged(MISSING, UNIT)
    detections_per_img: int = ranged(MISSING, integer(1))


@dataclass
class ModelSettings:
    """``model.*``: one detector (conf/model/<name>.yaml)."""

    name: str = MISSING
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    fpn_channels: int = ranged(MISSING, integer(1))
    extra_pool_level: bool = MISSING
    # Null or one list of anchor sizes (pixels, whole: lsdet.models.detector.anchor_sizes_for)
    # per level.
    anchor_sizes: list[list[int]] | None = MISSING
    anchor_scale: float | None = ranged(MISSING, number(0.0, low_ok=False, nullable=True))
    aspect_ratios: list[float] = MISSING
    min_size: int = ranged(MISSING, integer(1))
    max_size: int = ranged(MISSING, integer(1))
    # Null (ImageNet's) or one value per channel.
    image_mean: list[float] | None = MISSING
    image_std: list[float] | None = MISSING
    rpn: RpnSettings = field(default_factory=RpnSettings)
    roi: RoiSettings = field(default_factory=RoiSettings)
    scoring: str = one_of(MISSING, MODEL_SCORINGS)
    parent_scores: str = one_of(MISSING, PARENT_SCORES)
    # The sigmoid losses' classifier bias is -log((1 - p) / p): finite only inside (0, 1).
    prior_prob: float = ranged(MISSING, number(0.0, 1.0, low_ok=False, high_ok=False))


SCHEMAS = {"model/settings": ModelSettings}
