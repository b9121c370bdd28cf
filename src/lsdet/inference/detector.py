"""The detector of a training checkpoint, built as trained (``lsdet.models.build_detector``
with the checkpoint's config and weights), and its input settings at inference."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from lsdet.data import load_hierarchy
from lsdet.engine.builders import resolve_device
from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.training_data import open_split_index, training_rates
from lsdet.losses.scoring import RATE_SCORINGS
from lsdet.models import build_detector

logger = logging.getLogger(__name__)


def load_detector(
    checkpoint_path: str | Path,
    device: torch.device,
    *,
    scoring: str | None = None,
    parent_scores: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[nn.Module, Any, Any]:
    """The detector of a training checkpoint, ready for inference; returns
    (model, hierarchy, training config). ``scoring`` replaces the trained model's scoring
    (softmax | concurrent_softmax | sigmoid | ...), ``parent_scores`` its parent scoring
    (own | max_descendants | subtree_sum: re-scoring with another scoring usually needs the
    parent scoring that fits it); ``overrides`` other ``model.roi`` settings (e.g.
    score_thresh, detections_per_img)."""
    state = load_checkpoint(checkpoint_path)
    if "config" not in state or "model" not in state:
        raise ValueError(f"{checkpoint_path} is not a checkpoint written by lsdet.train")
    cfg = OmegaConf.create(state["config"])
    hierarchy = load_hierarchy(cfg.data.hierarchy_json, cfg.data.class_descriptions_csv)
    weights = {k: v for k, v in state["model"].items() if not k.startswith("roi_heads.loss_fn.")}
    num_classes = hierarchy.num_classes + 1
    classifier = weights["roi_heads.box_predictor.cls_score.weight"]
    if classifier.shape[0] != num_classes:
        raise ValueError(
            f"{checkpoint_path}: the model has {classifier.shape[0] - 1} classes, the hierarchy "
            f"{cfg.data.hierarchy_json} has {hierarchy.num_classes}"
        )
    model_cfg = copy.deepcopy(cfg.model)  # the returned training config stays as trained
    if parent_scores is not None:
        model_cfg.parent_scores = parent_scores
    for key, value in (overrides or {}).items():
        if value is not None:
            OmegaConf.update(model_cfg, f"roi.{key}", value)
    rates = weights["roi_heads.rates"]
    if scoring is not None and scoring in RATE_SCORINGS and not bool(rates.any()):
        # Trained without concurrent softmax: the trainer did not need the rates then, and
        # eq. 5 with R = 0 would be plain softmax. Estimate them as the trainer would.
        train_index = open_split_index(cfg.data, "train", hierarchy)
        rates = training_rates(cfg.rates, train_index, hierarchy)
        weights["roi_heads.rates"] = rates
    model = build_detector(
        model_cfg,
        num_classes=num_classes,
        loss_fn=nn.Identity(),
        loss_name=cfg.loss.name,
        rates=rates,
        descendants=weights["roi_heads.descendants"],
        from_checkpoint=True,
    )
    model.load_state_dict(weights)
    if scoring is not None:  # another scorer than the trained one (model.scoring)
        model.roi_heads.scoring = scoring
    return model.to(device).eval(), hierarchy, cfg


FROM_CHECKPOINT = "auto"  # an inference config's image_size that means "as trained"


@dataclass
class InputSettings:
    """How images are prepared for a checkpoint's detector at inference: the square side
    images are resized to before the detector (``image_size``; None keeps each image's size),
    then the detector's own resize (``min_size``: short side, ``max_size``: long side at most)
    and normalisation. ``sources`` says per setting where its value came from: ``checkpoint``
    (the training's), ``override`` (the inference config or command line) or ``follows
    image_size``."""

    image_size: int | None
    min_size: int
    max_size: int
    image_mean: list[float]
    image_std: list[float]
    sources: dict[str, str]

    def describe(self) -> str:
        def value(name: str) -> str:
            return f"{name} {getattr(self, name)} ({self.sources[name]})"

        return ", ".join(
            [
                value("image_size"),
                f"detector {value('min_size')}",
                value("max_size"),
                f"image_mean {self.image_mean} / image_std {self.image_std} (checkpoint)",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "sources": dict(self.sources),
        }


def _pixels(key: str, value: Any, *, allow_null: bool) -> int | None:
    """``value`` as a side in pixels (> 0), or None where allowed; an error naming ``key``."""
    if value is None and allow_null:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        expected = (
            f"{FROM_CHECKPOINT} (as trained), null (each image's own size) or "
            if allow_null
            else ""
        )
        raise ValueError(f"{key}={value!r}: expected {expected}a whole number of pixels > 0")
    return value


def resolve_input_settings(
    model: nn.Module,
    train_cfg: Any,
    *,
    image_size: Any = FROM_CHECKPOINT,
    min_size: Any = None,
    max_size: Any = None,
    image_size_key: str = "image_size",
) -> InputSettings:
    """The input settings for inference with a checkpoint's detector (built as trained) and
    its training config: the checkpoint's unless overridden. ``image_size`` ``"auto"`` is the
    training's ``data.image_size``; ``min_size``/``max_size`` None are the training's
    ``model.min_size``/``max_size``, except where the training tied both to its image size
    (the model configs' ``${data.image_size}``) and ``image_size`` is overridden with a
    number: they then follow it, as they would have in training. ``image_size_key`` names the
    key in error messages. Call ``apply_input_settings`` to put them into effect."""
    transform = model.transform
    trained_image_size = train_cfg.data.get("image_size")
    trained_min, trained_max = int(transform.min_size[-1]), int(transform.max_size)
    sources = {}
    if image_size == FROM_CHECKPOINT:
        chosen_image_size, sources["image_size"] = trained_image_size, "checkpoint"
    else:
        chosen_image_size = _pixels(image_size_key, image_size, allow_null=True)
        sources["image_size"] = "override"
    tied = trained_image_size is not None and trained_min == trained_max == trained_image_size
    follows = tied and sources["image_size"] == "override" and chosen_image_size is not None
    sizes = {}
    for key, requested, trained in (
        ("min_size", min_size, trained_min),
        ("max_size", max_size, trained_max),
    ):
        if requested is not None:
            sizes[key], sources[key] = _pixels(key, requested, allow_null=False), "override"
        elif follows:
            sizes[key], sources[key] = chosen_image_size, "follows image_size"
        else:
            sizes[key], sources[key] = trained, "checkpoint"
    return InputSettings(
        image_size=chosen_image_size,
        min_size=sizes["min_size"],
        max_size=sizes["max_size"],
        image_mean=[float(x) for x in transform.image_mean],
        image_std=[float(x) for x in transform.image_std],
        sources=sources,
    )


def apply_input_settings(model: nn.Module, settings: InputSettings) -> None:
    """Set the detector's own resize (torchvision's ``GeneralizedRCNNTransform``) to
    ``settings``; the normalisation stays the trained one."""
    model.transform.min_size = (settings.min_size,)
    model.transform.max_size = settings.max_size


def load_detector_from_config(
    cfg: Any, *, image_size: Any = FROM_CHECKPOINT, image_size_key: str = "image_size"
) -> tuple[nn.Module, Any, Any, torch.device, InputSettings]:
    """The detector that an inference config describes (the keys shared by conf/evaluate.yaml
    and conf/predict.yaml: checkpoint, device, scoring, parent_scores, score_thresh,
    detections_per_img, min_size, max_size; null = as trained) and its input settings
    (``image_size``: the requested one, ``"auto"`` = as trained; ``resolve_input_settings``).
    Returns (model, hierarchy, training config, device, input settings); the settings are
    logged."""
    device = resolve_device(cfg.device)
    model, hierarchy, train_cfg = load_detector(
        cfg.checkpoint,
        device,
        scoring=cfg.scoring,
        parent_scores=cfg.parent_scores,
        overrides={
            "score_thresh": cfg.score_thresh,
            "detections_per_img": cfg.detections_per_img,
        },
    )
    settings = resolve_input_settings(
        model,
        train_cfg,
        image_size=image_size,
        min_size=cfg.get("min_size"),
        max_size=cfg.get("max_size"),
        image_size_key=image_size_key,
    )
    apply_input_settings(model, settings)
    logger.info("input settings of %s: %s", cfg.checkpoint, settings.describe())
    return model, hierarchy, train_cfg, device, settings
