"""Running a detector over images: flat detections of a dataset, the detector of a checkpoint,
and image files without annotations. Scoring the detections is ``lsdet.evaluation``'s job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lsdet.engine.distributed import DistInfo, gather_objects


@dataclass
class Detections:
    """Flat detections of many images: boxes normalised to [0, 1] (xmin, ymin, xmax, ymax),
    ``class_indices`` into the hierarchy's mids (detector label k + 1 -> k)."""

    image_ids: np.ndarray
    class_indices: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    skipped_images: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        return cls(
            image_ids=np.concatenate([p.image_ids for p in parts]),
            class_indices=np.concatenate([p.class_indices for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            boxes=np.concatenate([p.boxes for p in parts]).reshape(-1, 4),
            skipped_images=[entry for p in parts for entry in p.skipped_images],
        )

    def __len__(self) -> int:
        return len(self.scores)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    *,
    amp: bool = False,
    progress: bool = True,
    desc: str = "predict",
) -> Detections:
    """Detections of every image the loader yields (this process's shard only). An item whose
    target says ``skipped`` (an unreadable image under ``data.strict=false``) gets no
    detections and is listed in ``skipped_images`` with the reason."""
    was_training = model.training
    model.eval()
    parts: list[Detections] = []
    skipped: list[tuple[str, str]] = []
    for batch_images, batch_targets in tqdm(loader, desc=desc, disable=not progress, leave=False):
        skipped += [
            (str(t["image_id"]), str(t["skipped"])) for t in batch_targets if "skipped" in t
        ]
        kept = [i for i, t in enumerate(batch_targets) if "skipped" not in t]
        if not kept:
            continue
        targets = [batch_targets[i] for i in kept]
        images = [batch_images[i].to(device, non_blocking=True) for i in kept]
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            outputs = model(images)
        for image, target, out in zip(images, targets, outputs, strict=True):
            height, width = image.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            boxes = (out["boxes"].float().cpu() / scale).clamp_(0.0, 1.0).numpy()
            n = len(boxes)
            parts.append(
                Detections(
                    image_ids=np.full(n, str(target["image_id"]), dtype=object),
                    class_indices=(out["labels"].cpu().numpy() - 1).astype(np.int64),
                    scores=out["scores"].float().cpu().numpy().astype(np.float64),
                    boxes=boxes.astype(np.float64),
                )
            )
    model.train(was_training)
    empty = Detections(
        np.empty(0, dtype=object), np.empty(0, np.int64), np.empty(0), np.empty((0, 4)), skipped
    )
    return Detections.concat([empty, *parts])


def predict_images(
    model: nn.Module,
    images: ImageFiles,
    device: torch.device,
    *,
    batch_size: int,
    num_workers: int,
    desc: str = "predict",
) -> Detections:
    """Detections of every file of ``images``, in order (one process, no annotations)."""
    from lsdet.data.dataset import collate_fn
    from lsdet.engine.loaders import make_loader

    loader = make_loader(
        images,
        range(len(images)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
    return predict(model, loader, device, desc=desc)


def gather_detections(detections: Detections, dist_info: DistInfo) -> Detections:
    """All ranks' detections (on every rank)."""
    return Detections.concat(gather_objects(detections, dist_info))


class ImageFiles(torch.utils.data.Dataset):
    """Image files given by path (``from_folder``: every ``*<suffix>`` of a folder, sorted by
    name); the image id is the file stem. Items are ``(image float [3, H, W] in [0, 1],
    {"image_id": str})`` like the training set's. For prediction, where no annotation exists."""

    def __init__(self, paths: list[Path], *, image_size: int | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_size = image_size

    @classmethod
    def from_folder(
        cls, image_dir: str | Path, *, image_size: int | None = None, suffix: str = ".jpg"
    ) -> ImageFiles:
        image_dir = Path(image_dir)
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {image_dir}")
        paths = sorted(image_dir.glob(f"*{suffix}"))
        if not paths:
            raise FileNotFoundError(f"no *{suffix} images in {image_dir}")
        return cls(paths, image_size=image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        from torchvision.io import ImageReadMode, decode_image, read_file
        from torchvision.transforms.v2.functional import resize

        path = self.paths[i]
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as exc:
            raise RuntimeError(f"image {path.stem}: cannot decode {path}: {exc}") from exc
        if self.image_size is not None:
            image = resize(image, [int(self.image_size)] * 2, antialias=True)
        return image.float().div_(255.0), {"image_id": path.stem}


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
    from omegaconf import OmegaConf

    from lsdet.data import load_hierarchy
    from lsdet.engine.checkpoint import load_checkpoint
    from lsdet.models import build_detector

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
    model_cfg = cfg.model
    if parent_scores is not None:
        model_cfg.parent_scores = parent_scores
    for key, value in (overrides or {}).items():
        if value is not None:
            OmegaConf.update(model_cfg, f"roi.{key}", value)
    if model_cfg.backbone.norm == "sync_bn":
        model_cfg.backbone.norm = "bn"  # same weights; no process group at inference
    model_cfg.backbone.pretrained = False
    model_cfg.backbone.checkpoint_path = None
    rates = weights["roi_heads.rates"]
    if scoring == "concurrent_softmax" and not bool(rates.any()):
        # Trained without concurrent softmax: the trainer did not need the rates then, and
        # eq. 5 with R = 0 would be plain softmax. Estimate them as the trainer would.
        from lsdet.engine.training_data import open_split_index, training_rates

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
    )
    model.load_state_dict(weights)
    # The trained scoring is recorded in the config (auto -> the loss's), unless replaced.
    if scoring is not None:
        model.roi_heads.scoring = scoring
    else:
        from lsdet.losses import LOSSES
        from lsdet.models import resolve_scoring

        sigmoid = bool(LOSSES[cfg.loss.name].sigmoid_classifier)
        model.roi_heads.scoring = resolve_scoring(model_cfg.scoring, cfg.loss.name, sigmoid)
    return model.to(device).eval(), hierarchy, cfg


def load_detector_from_config(cfg: Any) -> tuple[nn.Module, Any, Any, torch.device]:
    """The detector that an inference config describes (the keys shared by conf/evaluate.yaml
    and conf/predict.yaml: checkpoint, device, scoring, parent_scores, score_thresh,
    detections_per_img; null = as trained). Returns (model, hierarchy, training config,
    device)."""
    from lsdet.engine.builders import resolve_device

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
    return model, hierarchy, train_cfg, device
