"""Running the detector over a dataset and scoring it with the Open Images Challenge metric."""

from __future__ import annotations

from dataclasses import dataclass
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

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        return cls(
            image_ids=np.concatenate([p.image_ids for p in parts]),
            class_indices=np.concatenate([p.class_indices for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            boxes=np.concatenate([p.boxes for p in parts]).reshape(-1, 4),
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
    """Detections of every image the loader yields (this process's shard only)."""
    was_training = model.training
    model.eval()
    parts: list[Detections] = []
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = [img.to(device, non_blocking=True) for img in images]
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
    if not parts:
        return Detections(
            np.empty(0, dtype=object), np.empty(0, np.int64), np.empty(0), np.empty((0, 4))
        )
    return Detections.concat(parts)


def gather_detections(detections: Detections, dist_info: DistInfo) -> Detections:
    """All ranks' detections (on every rank)."""
    return Detections.concat(gather_objects(detections, dist_info))


def evaluate_detections(val_gt: Any, detections: Detections, **options: Any) -> Any:
    """The Open Images Challenge result (``.map``, ``.ap`` [C], ``.per_class_ap``)."""
    from lsdet.evaluation import evaluate

    return evaluate(
        val_gt,
        detections.image_ids,
        detections.class_indices,
        detections.scores,
        detections.boxes,
        **options,
    )


class ImageFolder(torch.utils.data.Dataset):
    """Every ``*<suffix>`` image of a folder, sorted by name; the image id is the file stem.
    Items are ``(image float [3, H, W] in [0, 1], {"image_id": str})`` like the training set's."""

    def __init__(
        self, image_dir: str | Path, *, image_size: int | None = None, suffix: str = ".jpg"
    ) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.paths = sorted(self.image_dir.glob(f"*{suffix}"))
        if not self.paths:
            raise FileNotFoundError(f"no *{suffix} images in {self.image_dir}")
        self.image_size = image_size

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
    overrides: dict[str, Any] | None = None,
) -> tuple[nn.Module, Any, Any]:
    """The detector of a training checkpoint, ready for inference; returns
    (model, hierarchy, training config). ``scoring`` replaces the trained model's scoring
    (softmax | concurrent_softmax | sigmoid); ``overrides`` other ``model.roi`` settings
    (e.g. score_thresh, detections_per_img)."""
    from omegaconf import OmegaConf

    from lsdet.engine.checkpoint import load_checkpoint
    from lsdet.evaluation import load_hierarchy
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
        from lsdet.engine.data import concurrent_rates

        rates = concurrent_rates(cfg.data, cfg.rates, hierarchy)
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


def evaluate_checkpoint(cfg: Any) -> tuple[Any, dict[str, Path]]:
    """``python -m lsdet.evaluate checkpoint=PATH``: predict the evaluation images
    (``data.val.image_dir``) with a training checkpoint in memory and score them against the
    evaluate config's ground truth; writes the evaluator's files to ``cfg.output_dir``."""
    from lsdet.data import read_class_descriptions
    from lsdet.data.dataset import collate_fn
    from lsdet.engine.data import make_loader
    from lsdet.engine.trainer import resolve_device
    from lsdet.evaluate import train_image_counts, write_evaluation_outputs
    from lsdet.evaluation import evaluate, load_ground_truth, load_hierarchy

    device = resolve_device(cfg.device)
    model, trained_hierarchy, _ = load_detector(cfg.checkpoint, device, scoring=cfg.scoring)
    hierarchy = load_hierarchy(cfg.hierarchy_json, cfg.get("class_descriptions_csv"))
    if list(hierarchy.mids) != list(trained_hierarchy.mids):
        raise ValueError(
            f"checkpoint {cfg.checkpoint} was trained on other classes than {cfg.hierarchy_json} "
            "lists; pass the data config it was trained with (data=...)"
        )
    gt = load_ground_truth(
        hierarchy,
        cfg.gt_bbox_csv,
        cfg.get("image_labels_csv"),
        expand_gt=cfg.expand_gt,
        strict=cfg.strict,
    )
    dataset = ImageFolder(cfg.data.val.image_dir, image_size=cfg.data.get("image_size"))
    loader = make_loader(
        dataset,
        range(len(dataset)),
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.get("num_workers", 2)),
        collate_fn=collate_fn,
    )
    detections = predict(model, loader, device, desc="evaluate checkpoint")
    result = evaluate(
        gt,
        detections.image_ids,
        detections.class_indices,
        detections.scores,
        detections.boxes,
        group_of_weight=cfg.group_of_weight,
        iou_threshold=cfg.iou_threshold,
        expand_predictions=cfg.expand_predictions,
    )
    counts = train_image_counts(cfg, hierarchy)
    names = (
        read_class_descriptions(cfg.class_descriptions_csv)
        if cfg.get("class_descriptions_csv")
        else None
    )
    paths = write_evaluation_outputs(
        result,
        cfg.output_dir,
        names=names,
        train_image_counts=counts,
        plot=cfg.plot,
        extra={"checkpoint": str(cfg.checkpoint), "scoring": model.roi_heads.scoring},
    )
    print(f"mAP {result.map:.4f} ({model.roi_heads.scoring} scoring); outputs in {cfg.output_dir}")
    return result, paths
