"""The pieces a training run builds from its config: device, loss, detector, optimizer, the
DistributedDataParallel wrapper."""

from __future__ import annotations

import logging
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lsdet.config_schema.train import DEVICES
from lsdet.engine.training_data import TrainingData
from lsdet.losses import loss_from_config
from lsdet.models import build_detector

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``train.device`` (auto | cpu | cuda) as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise ValueError(f"train.device={name!r}; expected one of {DEVICES}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def base_learning_rate(optim_cfg: Any, total_batch_size: int) -> float:
    """``optim.lr``, or ``optim.lr_per_image x total batch size`` when it is null (the paper's
    linear scaling: 0.00125 x batch for SGD)."""
    if optim_cfg.lr is not None:
        return float(optim_cfg.lr)
    return float(optim_cfg.lr_per_image) * total_batch_size


def build_optimizer(
    optim_cfg: Any, model: nn.Module, total_batch_size: int
) -> tuple[torch.optim.Optimizer, float]:
    """The optimizer of ``optim.optimizer`` (a Hydra ``_target_``) over the trainable
    parameters; returns (optimizer, base lr)."""
    base_lr = base_learning_rate(optim_cfg, total_batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        make = instantiate(optim_cfg.optimizer)
    except Exception as exc:  # Hydra's InstantiationException wraps import/argument errors
        raise ValueError(f"optim.optimizer cannot be built: {exc}") from exc
    return make(params, lr=base_lr), base_lr


def training_loss(cfg: DictConfig, data: TrainingData, rates: torch.Tensor | None) -> nn.Module:
    """The loss of ``cfg.loss`` (``lsdet.losses.loss_from_config``) with the class counts of
    the training split and the statistics it takes (``rates``, the hierarchy's ancestors)."""
    return loss_of_settings(OmegaConf.to_container(cfg.loss, resolve=True), data, rates)


def loss_of_settings(
    loss_cfg: dict[str, Any], data: TrainingData, rates: torch.Tensor | None
) -> nn.Module:
    """The loss of the settings ``loss_cfg`` (a ``loss:`` mapping) for ``data``: what
    :func:`training_loss` builds, also for a cRT arm's loss (``lsdet.crt.build_arm_loss``)."""
    return loss_from_config(
        loss_cfg,
        num_classes=data.num_classes + 1,
        image_counts=data.image_counts,
        box_counts=data.box_counts,
        rates=rates,
        ancestors=torch.as_tensor(data.hierarchy.ancestors, dtype=torch.bool),
    )


def build_model(
    cfg: DictConfig,
    data: TrainingData,
    loss_fn: nn.Module,
    rates: torch.Tensor | None,
    device: torch.device,
) -> nn.Module:
    """The detector of ``cfg.model`` (``lsdet.models.build_detector``) around the loss, on
    ``device``."""
    ancestors = torch.as_tensor(data.hierarchy.ancestors, dtype=torch.bool)
    model = build_detector(
        cfg.model,
        num_classes=data.num_classes + 1,
        loss_fn=loss_fn,
        loss_name=cfg.loss.name,
        rates=rates,
        descendants=ancestors.T.contiguous(),
        device=device,
    )
    return model.to(device)


def wrap_distributed(
    model: nn.Module, device: torch.device, local_rank: int, cfg: Any
) -> nn.Module:
    """DistributedDataParallel around the model (one device per process)."""
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[local_rank] if device.type == "cuda" else None,
        find_unused_parameters=bool(cfg.train.find_unused_parameters),
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
