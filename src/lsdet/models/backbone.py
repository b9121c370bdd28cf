"""A timm ``features_only`` backbone followed by torchvision's FeaturePyramidNetwork.

The result has the interface torchvision's detectors expect: ``out_channels`` and a forward
that returns an ordered dict of feature maps, named "0", "1", ... from the finest level up,
plus "pool" when the extra max-pool level is on.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from lsdet.config_schema.model import BACKBONE_NORMS


def create_timm_features(
    name: str,
    *,
    out_indices: tuple[int, ...],
    pretrained: bool = False,
    checkpoint_path: str | None = None,
) -> nn.Module:
    """A timm model in ``features_only`` mode.

    ``pretrained=True`` downloads timm's weights (needs the model hub); ``checkpoint_path``
    loads a local timm state dict instead (a file saved from ``timm.create_model(name)``).
    """
    if not timm.is_model(name):
        raise ValueError(f"model.backbone.name={name!r} is not a timm model")
    kwargs: dict = {}
    if checkpoint_path is not None:
        path = Path(checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(f"model.backbone.checkpoint_path: no file at {path}")
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    return timm.create_model(
        name, features_only=True, out_indices=tuple(out_indices), pretrained=pretrained, **kwargs
    )


def apply_norm_mode(module: nn.Module, norm: str) -> nn.Module:
    """Batch-norm handling: "bn" (train as usual), "frozen_bn" (fixed affine statistics, for
    fine-tuning pretrained weights with small batches) or "sync_bn" (statistics synchronised
    across DDP processes; the conversion is done here, the process group by the trainer)."""
    if norm not in BACKBONE_NORMS:
        raise ValueError(f"model.backbone.norm={norm!r}; expected one of {BACKBONE_NORMS}")
    if norm == "frozen_bn":
        return freeze_batch_norm_2d(module)
    if norm == "sync_bn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


class TimmFPNBackbone(nn.Module):
    """timm feature extractor -> FPN with ``fpn_channels`` channels on every level."""

    def __init__(
        self,
        name: str,
        *,
        out_indices: tuple[int, ...] = (2, 3, 4),
        fpn_channels: int = 256,
        extra_pool_level: bool = True,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        body = create_timm_features(
            name, out_indices=out_indices, pretrained=pretrained, checkpoint_path=checkpoint_path
        )
        self.body = apply_norm_mode(body, norm)
        in_channels = list(body.feature_info.channels())
        self.strides = list(body.feature_info.reduction())
        self.fpn = FeaturePyramidNetwork(
            in_channels,
            fpn_channels,
            extra_blocks=LastLevelMaxPool() if extra_pool_level else None,
        )
        self.out_channels = fpn_channels
        self.level_names = [str(i) for i in range(len(in_channels))]
        self.num_levels = len(in_channels) + (1 if extra_pool_level else 0)

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict(zip(self.level_names, features, strict=True)))
