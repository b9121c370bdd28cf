"""Faster R-CNN FPN on a timm backbone with the multi-label box head.

``build_detector(model_cfg, num_classes=C + 1, loss_fn=...)`` reads the keys documented in
conf/model/*.yaml. Anchors and the RoI pooler follow the backbone's levels: one anchor size
per level (``anchor_sizes`` or ``anchor_scale`` x the level's stride) and RoIAlign over the
FPN levels (not the extra max-pool level, as in torchvision).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from lsdet.losses import ClassificationLoss, loss_class
from lsdet.models.backbone import TimmFPNBackbone
from lsdet.models.roi_heads import MultiLabelBoxPredictor, MultiLabelRoIHeads

log = logging.getLogger(__name__)


def head_contract(loss_fn: nn.Module, loss_name: str) -> type[ClassificationLoss]:
    """The loss class whose head contract the detector follows: the loss module's own class,
    else (inference builds the detector with a placeholder loss) the one registered as
    ``loss_name``."""
    if isinstance(loss_fn, ClassificationLoss):
        return type(loss_fn)
    return loss_class(loss_name)


def backbone_norm(norm: str, *, device: torch.device | None, from_checkpoint: bool) -> str:
    """``model.backbone.norm`` as the backbone is built: ``sync_bn`` becomes ``bn`` (the same
    weights) where no process group synchronises it: at inference, and in training off
    CUDA (SyncBatchNorm synchronises over NCCL only)."""
    if norm != "sync_bn":
        return norm
    if from_checkpoint:
        return "bn"
    if device is not None and device.type != "cuda":
        log.warning("model.backbone.norm=sync_bn needs CUDA: using bn on %s", device)
        return "bn"
    return norm


def anchor_sizes_for(model_cfg: Mapping[str, Any], strides: list[int], num_levels: int) -> list:
    sizes = model_cfg.get("anchor_sizes")
    if sizes is None:
        level_strides = list(strides) + [strides[-1] * 2] * (num_levels - len(strides))
        return [(int(model_cfg["anchor_scale"] * s),) for s in level_strides]
    sizes = [tuple(int(v) for v in (s if isinstance(s, Sequence) else [s])) for s in sizes]
    if len(sizes) != num_levels:
        raise ValueError(
            f"model.anchor_sizes has {len(sizes)} levels but the backbone+FPN gives "
            f"{num_levels} (out_indices plus the extra pool level when on)"
        )
    return sizes


def build_detector(
    model_cfg: Mapping[str, Any],
    *,
    num_classes: int,
    loss_fn: nn.Module,
    loss_name: str = "softmax",
    rates: torch.Tensor | None = None,
    descendants: torch.Tensor | None = None,
    device: torch.device | None = None,
    from_checkpoint: bool = False,
) -> FasterRCNN:
    """The detector, for training and for loading a checkpoint. ``num_classes`` counts the
    background (C + 1). ``rates`` [C+1, C+1] for concurrent-softmax scoring; ``descendants``
    [C, C] bool for parent scoring.

    The classifier and the scoring follow the loss's head contract (``loss_fn``'s class, or
    the one registered as ``loss_name`` when ``loss_fn`` is a placeholder, as at inference):
    prior bias for sigmoid losses, a normalised classifier and an objectness logit for Seesaw,
    ``model.scoring=auto`` -> the loss's scorer. ``loss_fn`` is a submodule
    (``roi_heads.loss_fn``): statistics it accumulates are saved with the model.

    ``device``: where training runs (``sync_bn`` is plain batch norm off CUDA);
    ``from_checkpoint``: the weights come from a checkpoint, so no pretrained backbone is
    loaded and ``sync_bn`` is plain batch norm. ``model_cfg`` is not changed."""
    bb = model_cfg["backbone"]
    backbone = TimmFPNBackbone(
        bb["name"],
        out_indices=tuple(bb["out_indices"]),
        fpn_channels=int(model_cfg["fpn_channels"]),
        extra_pool_level=bool(model_cfg["extra_pool_level"]),
        pretrained=bool(bb["pretrained"]) and not from_checkpoint,
        checkpoint_path=None if from_checkpoint else bb.get("checkpoint_path"),
        norm=backbone_norm(bb["norm"], device=device, from_checkpoint=from_checkpoint),
    )
    sizes = anchor_sizes_for(model_cfg, backbone.strides, backbone.num_levels)
    ratios = tuple(float(r) for r in model_cfg["aspect_ratios"])
    anchor_generator = AnchorGenerator(sizes=tuple(sizes), aspect_ratios=(ratios,) * len(sizes))

    roi = model_cfg["roi"]
    output_size = int(roi["output_size"])
    box_roi_pool = MultiScaleRoIAlign(
        featmap_names=backbone.level_names,
        output_size=output_size,
        sampling_ratio=int(roi["sampling_ratio"]),
    )
    box_head = TwoMLPHead(backbone.out_channels * output_size**2, int(roi["representation_size"]))
    contract = head_contract(loss_fn, loss_name)
    # The loss module's settings, else its class's defaults (inference: the checkpoint's
    # weights, the normalised classifier's temperature buffer included, replace them).
    settings = loss_fn if contract is type(loss_fn) else contract
    prior = float(model_cfg["prior_prob"]) if contract.sigmoid_classifier else None
    box_predictor = MultiLabelBoxPredictor(
        int(roi["representation_size"]),
        num_classes,
        class_agnostic_box_reg=bool(roi["class_agnostic_box_reg"]),
        prior_prob=prior,
        temperature=settings.classifier_temperature,
        objectness_logit=contract.objectness_logit,
    )
    rpn = model_cfg["rpn"]
    mean = model_cfg.get("image_mean")
    std = model_cfg.get("image_std")
    model = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=int(model_cfg["min_size"]),
        max_size=int(model_cfg["max_size"]),
        image_mean=list(mean) if mean is not None else None,
        image_std=list(std) if std is not None else None,
        rpn_anchor_generator=anchor_generator,
        rpn_pre_nms_top_n_train=int(rpn["pre_nms_top_n_train"]),
        rpn_pre_nms_top_n_test=int(rpn["pre_nms_top_n_test"]),
        rpn_post_nms_top_n_train=int(rpn["post_nms_top_n_train"]),
        rpn_post_nms_top_n_test=int(rpn["post_nms_top_n_test"]),
        rpn_nms_thresh=float(rpn["nms_thresh"]),
        rpn_batch_size_per_image=int(rpn["batch_size_per_image"]),
        box_roi_pool=box_roi_pool,
        box_head=box_head,
        box_predictor=box_predictor,
    )
    model.roi_heads = MultiLabelRoIHeads(
        box_roi_pool,
        box_head,
        box_predictor,
        fg_iou_thresh=float(roi["fg_iou_thresh"]),
        bg_iou_thresh=float(roi["bg_iou_thresh"]),
        batch_size_per_image=int(roi["batch_size_per_image"]),
        positive_fraction=float(roi["positive_fraction"]),
        bbox_reg_weights=None,
        score_thresh=float(roi["score_thresh"]),
        nms_thresh=float(roi["nms_thresh"]),
        detections_per_img=int(roi["detections_per_img"]),
        loss_fn=loss_fn,
        num_classes=num_classes,
        head_contract=contract,
        scoring=contract.scoring_for(model_cfg["scoring"]),
        parent_scores=model_cfg["parent_scores"],
        rates=rates,
        descendants=descendants,
    )
    return model
