"""Running the detector over a dataset and scoring it with the Open Images Challenge metric."""

from __future__ import annotations

from dataclasses import dataclass
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
