"""Detections of a detector over a dataset, as flat arrays (``Detections``), on one process
or sharded over the ranks of a distributed run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from lsdet.data.dataset import collate_fn
from lsdet.engine.distributed import DistInfo, gather_objects
from lsdet.engine.loaders import make_loader


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
    images: Dataset,
    device: torch.device,
    *,
    batch_size: int,
    num_workers: int,
    indices: Sequence[int] | None = None,
    amp: bool = False,
    progress: bool = True,
    desc: str = "predict",
) -> Detections:
    """Detections of the items ``indices`` (default: all, in order) of ``images``, a dataset
    of ``(image, target with "image_id")`` items (``ImageFiles`` or a training data set)."""
    loader = make_loader(
        images,
        range(len(images)) if indices is None else indices,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
    return predict(model, loader, device, amp=amp, progress=progress, desc=desc)


def gather_detections(detections: Detections, dist_info: DistInfo) -> Detections:
    """All ranks' detections (on every rank)."""
    return Detections.concat(gather_objects(detections, dist_info))
