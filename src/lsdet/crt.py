"""Decoupled classifier re-training on cached RoI features: a cheap protocol with many seeds.

After Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition"
(ICLR 2020, "cRT"): the RoI features of one trained detector are cached once, then only the
box classifier is trained again, per loss (arm) and seed, in minutes.

``python -m lsdet.crt`` (conf/crt.yaml) runs three stages:

1. ``cache``: the frozen detector of a checkpoint (eval mode, no gradient) over the training
   images; per image the RPN's training-time proposals, the training RoI sampler (positives
   and negatives matched to the ground truth, the fg/bg fractions of training, the
   ground-truth boxes added as proposals), and per sampled RoI its box-head feature (the input
   of the class-score layer, float16) and its multi-hot target row, built by the RoI heads'
   own ``multilabel_targets`` as training builds it. One file, with the checkpoint's SHA-256
   and the settings; deterministic given ``cache.seed``.
2. ``train``: for the arm's loss (any of ``lsdet.losses`` through ``loss_from_config``, with
   the concurrent rates and class counts estimated as the trainer does) and a seed, a fresh
   class-score layer of the kind the loss needs (``MultiLabelBoxPredictor``: prior bias for
   sigmoid losses, the normalised classifier and objectness logit of Seesaw) trained on the
   cache; the box regression is the checkpoint's. RoIs are drawn class-balanced as in cRT by
   default (``train.roi_sampling``).
3. ``evaluate``: the checkpoint's detector with the new class-score layer, scored with the
   arm loss's scoring (eq. 5 of Peng et al. for concurrent softmax) and parent scoring on the
   validation split with the Open Images Challenge metric, as the trainer's validation does;
   metrics.json, per_class.csv and frequency_buckets.csv go to
   ``<output_dir>/runs/<arm>/val-<validation>/seed<k>/`` beside a ``run.json``, the layout
   ``experiments/aggregate.py`` reads as an evaluation result.

What it can show: the loss's effect on the classifier with the representation fixed, i.e.
the ranking between losses (and their settings, class weightings, scorings) for one given
detector's features, with 10+ seeds per arm cheaply, so that a difference of a point or less
can be told from seed noise (the seeds vary the classifier's initialisation and the order of
the RoIs, not the features).

What it cannot show: any effect of the loss on feature learning (the backbone, FPN and box
head are those the checkpoint's own loss trained), on the RPN's proposals or on box
regression; nor how the loss interacts with the image sampler or schedule over a full
training. A loss that helps mainly by shaping the features is invisible here, and the
ranking may depend on which loss trained the cached features. Confirm the best arms with
full training (8+ paired seeds).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from lsdet.data.dataset import collate_fn
from lsdet.engine.builders import loss_of_settings, resolve_device
from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.loaders import SeededDataset, SeededSampler, make_loader
from lsdet.engine.random_state import seed_everything
from lsdet.engine.run_folder import EvaluationFolder
from lsdet.engine.training_data import build_training_data, training_rates
from lsdet.inference import detect_and_evaluate, load_detector
from lsdet.inference.validation import record_evaluation
from lsdet.losses import ClassificationLoss, loss_class
from lsdet.losses.scoring import RATE_SCORINGS
from lsdet.models import MultiLabelBoxPredictor
from lsdet.models.roi_heads import check_scoring
from lsdet.sampling.samplers import build_sampler

logger = logging.getLogger(__name__)

CACHE_FORMAT = "lsdet-crt-roi-cache-v1"
ROI_SAMPLINGS = ("class_balanced", "uniform", "run_sampler")
OPTIMIZERS = ("sgd", "adamw")
# Parameters of the box predictor that stage 2 trains; every other one stays the checkpoint's.
CLASSIFIER_PREFIXES = ("cls_score.", "objectness_score.")


# --------------------------------------------------------------------------- common pieces
def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_config(train_cfg: Any, data_root: str | None) -> DictConfig:
    """The checkpoint's (resolved) data config; with ``data_root``, every path under the
    training's ``data.root`` is moved under ``data_root`` (the same files in another place)."""
    data_cfg = OmegaConf.create(OmegaConf.to_container(train_cfg.data, resolve=True))
    if data_root is None:
        return data_cfg
    old_root = str(data_cfg.root).rstrip("/")
    new_root = str(data_root).rstrip("/")

    def moved(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: moved(value) for key, value in node.items()}
        if isinstance(node, str) and (node == old_root or node.startswith(old_root + "/")):
            return new_root + node[len(old_root) :]
        return node

    return OmegaConf.create(moved(OmegaConf.to_container(data_cfg)))


def open_training_data(train_cfg: Any, data_root: str | None, hflip_prob: float = 0.0) -> Any:
    """The checkpoint's training data (``lsdet.engine.training_data.TrainingData``), never
    generated here: a missing benchmark is an error naming its files."""
    return build_training_data(
        data_config(train_cfg, data_root),
        hflip_prob=hflip_prob,
        same_object_iou=float(train_cfg.rates.iou_threshold),
        generate_if_missing=False,
    )


def _refuse_existing(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{what} {path} already exists; choose another output_dir/cache_file or pass "
            "overwrite=true to replace it"
        )


def _positive(key: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> Any:
    """``value`` checked as a number > 0 (>= 0 with ``allow_zero``); an error naming ``key``."""
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and not (value >= 0 if allow_zero else value > 0):
        ok = False
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        expected = f"a whole number {bound}" if integer else f"a number {bound}"
        raise ValueError(f"{key}={value!r}: expected {expected}")
    return value


# --------------------------------------------------------------------------- stage 1: cache
@torch.no_grad()
def sampled_roi_batch(
    model: nn.Module, images: list[torch.Tensor], targets: list[dict[str, Any]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """The RoIs that a training step would sample from these images, with the frozen
    detector's features: returns (box-head features [R, D], multi-hot targets [R, C+1],
    primary labels [R] (0 = background), RoIs per image).

    Uses the detector's public parts (torchvision's ``GeneralizedRCNN``: transform, backbone,
    rpn, roi_heads; ``RoIHeads.select_training_samples``, ``box_roi_pool``, ``box_head``) and
    ``MultiLabelRoIHeads.multilabel_targets``, so the targets are those the training loss
    receives. The model stays in eval mode; only the RPN runs in training mode for its
    training-time proposal counts (its loss is computed and dropped)."""
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    rpn_was_training = model.rpn.training
    model.rpn.train()
    try:
        proposals, _ = model.rpn(image_list, features, targets)
    finally:
        model.rpn.train(rpn_was_training)
    heads = model.roi_heads
    proposals, matched_idxs, labels, _ = heads.select_training_samples(proposals, targets)
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
    multilabels = heads.multilabel_targets(matched_idxs, labels, targets)
    return box_features, multilabels, torch.cat(labels), [len(lab) for lab in labels]


def cache_roi_features(
    checkpoint: str | Path,
    cache_file: str | Path,
    *,
    device: torch.device,
    seed: int = 0,
    passes: int = 1,
    max_images: int | None = None,
    hflip_prob: float = 0.0,
    batch_size: int = 8,
    num_workers: int = 0,
    data_root: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Stage 1: cache the sampled RoIs of the training images (see the module docstring);
    writes ``cache_file`` and returns what it holds."""
    cache_file = Path(cache_file)
    _refuse_existing(cache_file, overwrite, "cache file (cache_file)")
    _positive("cache.passes", passes, integer=True)
    _positive("cache.batch_size", batch_size, integer=True)
    _positive("cache.num_workers", num_workers, integer=True, allow_zero=True)
    if max_images is not None:
        _positive("cache.max_images", max_images, integer=True)
    if not 0.0 <= float(hflip_prob) <= 1.0:
        raise ValueError(f"cache.hflip_prob={hflip_prob!r}: expected a number in [0, 1]")
    start = time.perf_counter()
    checkpoint_hash = file_sha256(checkpoint)
    model, hierarchy, train_cfg = load_detector(checkpoint, device)
    data = open_training_data(train_cfg, data_root, hflip_prob=float(hflip_prob))
    if list(data.hierarchy.mids) != list(hierarchy.mids):
        raise ValueError(
            f"checkpoint {checkpoint} was trained on other classes than its data config's "
            f"{train_cfg.data.class_descriptions_csv} now lists"
        )
    num_images = len(data.train_set)
    rng = np.random.default_rng(int(seed))
    if max_images is not None and max_images < num_images:
        image_indices = np.sort(rng.choice(num_images, size=int(max_images), replace=False))
    else:
        image_indices = np.arange(num_images)
    seed_everything(int(seed))  # the RoI sampler draws from the global torch RNG
    parts: dict[str, list] = {"features": [], "targets": [], "labels": [], "image_index": []}
    setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for pass_index in range(int(passes)):
        loader = make_loader(
            SeededDataset(data.train_set),
            SeededSampler(
                image_indices.tolist(), seed=int(seed), rank=0, epoch=pass_index, start=0
            ),
            batch_size=int(batch_size),
            num_workers=int(num_workers),
            collate_fn=collate_fn,
            seed=int(seed),
        )
        positions = iter(image_indices.tolist())
        bar = tqdm(
            loader, desc=f"cache RoIs (pass {pass_index + 1}/{passes})", disable=not progress
        )
        for images, targets in bar:
            batch_images = [next(positions) for _ in images]
            images = [image.to(device) for image in images]
            targets = [
                {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
                for t in targets
            ]
            feats, multilabels, labels, per_image = sampled_roi_batch(model, images, targets)
            parts["features"].append(feats.to("cpu", torch.float16))
            parts["targets"].append(multilabels.to("cpu", torch.bool))
            parts["labels"].append(labels.to("cpu", torch.int64))
            parts["image_index"].append(
                torch.repeat_interleave(torch.tensor(batch_images), torch.tensor(per_image))
            )
    forward_seconds = time.perf_counter() - start
    labels = torch.cat(parts["labels"])
    cache = {
        "format": CACHE_FORMAT,
        "features": torch.cat(parts["features"]),
        "targets": torch.cat(parts["targets"]),
        "labels": labels,
        "image_index": torch.cat(parts["image_index"]).to(torch.int32),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": checkpoint_hash,
        "train_config": OmegaConf.to_container(train_cfg, resolve=True),
        "data_root": data_root,
        "class_mids": list(hierarchy.mids),
        "num_train_images": num_images,
        "settings": {
            "seed": int(seed),
            "passes": int(passes),
            "max_images": max_images,
            "hflip_prob": float(hflip_prob),
            "images": len(image_indices),
            "roi_batch_size_per_image": int(train_cfg.model.roi.batch_size_per_image),
            "positive_fraction": float(train_cfg.model.roi.positive_fraction),
            "fg_iou_thresh": float(train_cfg.model.roi.fg_iou_thresh),
            "bg_iou_thresh": float(train_cfg.model.roi.bg_iou_thresh),
            "rpn_post_nms_top_n_train": int(train_cfg.model.rpn.post_nms_top_n_train),
        },
        "seconds": {"setup": round(setup_seconds, 3), "forward": round(forward_seconds, 3)},
        "created_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_name(cache_file.name + ".partial")
    torch.save(cache, partial)
    partial.replace(cache_file)
    logger.info(
        "cached %d RoIs (%d foreground) of %d images x %d passes in %.1f s: %s",
        len(labels),
        int((labels > 0).sum()),
        len(image_indices),
        passes,
        forward_seconds,
        cache_file,
    )
    return cache


def load_cache(cache_file: str | Path) -> dict[str, Any]:
    """A cache written by ``cache_roi_features``; an error naming the file otherwise."""
    cache_file = Path(cache_file)
    if not cache_file.is_file():
        raise FileNotFoundError(f"no RoI cache at {cache_file} (cache_file); run stage=cache first")
    try:
        cache = torch.load(cache_file, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise ValueError(f"RoI cache {cache_file} cannot be read ({exc})") from exc
    if not isinstance(cache, dict) or cache.get("format") != CACHE_FORMAT:
        raise ValueError(f"{cache_file} is not an RoI cache written by lsdet.crt stage=cache")
    return cache


# --------------------------------------------------------------------------- stage 2: train
# The `rates` settings an arm may set for itself (conf/crt.yaml `rates:`), with their ranges:
# (low, high) inclusive.
RATES_OVERRIDES = {"floor": (0.0, 1.0), "hierarchy_rate": (0.0, 1.0), "prior_count": (0.0, None)}


def arm_rates_overrides(rates_cfg: Any) -> dict[str, float]:
    """The arm's ``rates`` settings that replace the checkpoint run's (the non-null entries of
    conf/crt.yaml's ``rates:``), range-checked; {} when the arm keeps the run's rates."""
    given = {} if rates_cfg is None else OmegaConf.to_container(OmegaConf.create(rates_cfg))
    out = {}
    for key, value in given.items():
        if value is None:
            continue
        if key not in RATES_OVERRIDES:
            raise ValueError(
                f"rates.{key}: an arm can set only {sorted(RATES_OVERRIDES)} (rates.iou_threshold "
                "is the checkpoint run's: it also decides which training boxes are one object)"
            )
        low, high = RATES_OVERRIDES[key]
        number = float(value) if isinstance(value, (int, float)) and value is not True else None
        if number is None or number < low or (high is not None and number > high):
            bounds = f"from {low:g} to {high:g}" if high is not None else f">= {low:g}"
            raise ValueError(f"rates.{key}={value!r}: expected a number {bounds}")
        out[key] = number
    return out


def arm_rates_settings(train_cfg: Any, overrides: dict[str, float] | None) -> DictConfig:
    """The ``rates`` settings of an arm: the checkpoint run's with ``overrides`` replacing
    some (``arm_rates_overrides``)."""
    return OmegaConf.merge(OmegaConf.create(train_cfg.rates), dict(overrides or {}))


def arm_rates(train_cfg: Any, data: Any, overrides: dict[str, float] | None = None) -> torch.Tensor:
    """The concurrent rates r_ij of an arm (Peng et al., eq. 3 and 5), estimated from the
    training split as the trainer does, with the arm's ``rates`` settings."""
    settings = arm_rates_settings(train_cfg, overrides)
    return training_rates(settings, data.train_set.index, data.hierarchy)


def build_arm_loss(
    loss_cfg: dict[str, Any],
    train_cfg: Any,
    data: Any,
    device: torch.device,
    rates_overrides: dict[str, float] | None = None,
    rates: torch.Tensor | None = None,
) -> nn.Module:
    """The arm's loss as the trainer builds it (``lsdet.engine.builders.build_model``): class
    counts of the training split, and the concurrent rates (``rates`` settings of the
    checkpoint's run, ``rates_overrides`` replacing some) when the loss takes them; ``rates``:
    those rates when already estimated (``arm_rates``)."""
    if rates is None and "rates" in loss_class(loss_cfg.get("name")).inputs:
        rates = arm_rates(train_cfg, data, rates_overrides)
    return loss_of_settings(loss_cfg, data, rates).to(device)


def new_box_predictor(
    loss_fn: ClassificationLoss,
    train_cfg: Any,
    checkpoint_weights: dict[str, torch.Tensor],
    seed: int,
) -> nn.Module:
    """A ``MultiLabelBoxPredictor`` whose class-score layer is new (initialised under
    ``seed``, of the kind ``loss_fn`` needs, as ``build_detector`` makes it) and whose box
    regression is the checkpoint's, frozen."""
    prefix = "roi_heads.box_predictor."
    bbox_weight = checkpoint_weights[prefix + "bbox_pred.weight"]
    num_classes = checkpoint_weights[prefix + "cls_score.weight"].shape[0]
    roi = train_cfg.model.roi
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        predictor = MultiLabelBoxPredictor(
            int(bbox_weight.shape[1]),
            int(num_classes),
            class_agnostic_box_reg=bool(roi.class_agnostic_box_reg),
            prior_prob=float(train_cfg.model.prior_prob) if loss_fn.sigmoid_classifier else None,
            temperature=loss_fn.classifier_temperature,
            objectness_logit=loss_fn.objectness_logit,
        )
    predictor.bbox_pred.load_state_dict(
        {
            "weight": checkpoint_weights[prefix + "bbox_pred.weight"],
            "bias": checkpoint_weights[prefix + "bbox_pred.bias"],
        }
    )
    predictor.bbox_pred.requires_grad_(False)
    return predictor


def classifier_logits(predictor: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The predictor's class logits only (its ``forward`` also runs the box regression)."""
    logits = predictor.cls_score(features)
    if predictor.objectness_score is not None:
        logits = torch.cat([logits, predictor.objectness_score(features)], dim=1)
    return logits


def roi_draw_probabilities(
    cache: dict[str, Any], roi_sampling: str, data: Any | None = None
) -> np.ndarray | None:
    """Per cached RoI, the probability of a draw (None: uniform, drawn as permutations).

    ``class_balanced``: background RoIs keep their cached share; the foreground share is
    split equally among the primary classes present, and within a class equally among its
    RoIs (cRT's class-balanced sampling, with detection's background kept at the training
    fraction). ``run_sampler``: proportional to how often the checkpoint run's image sampler
    (its config ``sampler``, seed 0) draws the RoI's image in one epoch, shared by the RoIs
    of that image."""
    if roi_sampling not in ROI_SAMPLINGS:
        raise ValueError(f"train.roi_sampling={roi_sampling!r}; expected one of {ROI_SAMPLINGS}")
    labels = cache["labels"].numpy()
    if roi_sampling == "uniform":
        return None
    if roi_sampling == "class_balanced":
        probs = np.zeros(len(labels), dtype=np.float64)
        foreground = labels > 0
        background_share = 1.0 - foreground.mean()
        if (~foreground).any():
            probs[~foreground] = background_share / (~foreground).sum()
        classes, inverse, counts = np.unique(
            labels[foreground], return_inverse=True, return_counts=True
        )
        if len(classes):
            probs[foreground] = (1.0 - background_share) / (len(classes) * counts[inverse])
        return probs / probs.sum()

    if data is None:
        raise ValueError("train.roi_sampling=run_sampler needs the training data")
    sampler_cfg = OmegaConf.to_container(OmegaConf.create(cache["train_config"]["sampler"]))
    sampler = build_sampler(
        sampler_cfg,
        class_offsets=data.class_offsets,
        class_images=data.class_images,
        num_images=len(data.train_set),
    )
    draws = np.bincount(sampler.global_stream(0), minlength=len(data.train_set))
    image_index = cache["image_index"].numpy().astype(np.int64)
    rois_per_image = np.bincount(image_index, minlength=len(data.train_set))
    probs = draws[image_index] / np.maximum(rois_per_image[image_index], 1)
    if probs.sum() <= 0:
        raise ValueError(
            f"train.roi_sampling=run_sampler: the run's sampler {sampler_cfg} never draws a "
            "cached image"
        )
    return probs / probs.sum()


def train_classifier(
    cache: dict[str, Any],
    loss_cfg: dict[str, Any],
    *,
    checkpoint_weights: dict[str, torch.Tensor],
    seed: int,
    device: torch.device,
    roi_sampling: str = "class_balanced",
    optimizer: str = "sgd",
    lr: float = 0.02,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    epochs: int = 10,
    batch_size: int = 1024,
    data: Any = None,
    progress: bool = True,
    rates_overrides: dict[str, float] | None = None,
    rates: torch.Tensor | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Stage 2: a new class-score layer trained with the arm's loss on the cached RoIs
    (``rates_overrides``: the arm's own ``rates`` settings, see ``arm_rates_overrides``;
    ``rates``: the arm's rates when already estimated, see ``build_arm_loss``).
    Returns (the box predictor: new classifier, the checkpoint's box regression; a record of
    the training: loss per epoch, seconds, settings)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"train.optimizer={optimizer!r}; expected one of {OPTIMIZERS}")
    _positive("train.lr", lr)
    _positive("train.weight_decay", weight_decay, allow_zero=True)
    _positive("train.momentum", momentum, allow_zero=True)
    _positive("train.epochs", epochs, integer=True)
    _positive("train.batch_size", batch_size, integer=True)
    train_cfg = OmegaConf.create(cache["train_config"])
    if data is None:
        data = open_training_data(train_cfg, cache.get("data_root"))
    if list(data.hierarchy.mids) != list(cache["class_mids"]):
        raise ValueError("the RoI cache was made for other classes than the training data lists")
    start = time.perf_counter()
    loss_fn = build_arm_loss(loss_cfg, train_cfg, data, device, rates_overrides, rates)
    predictor = new_box_predictor(loss_fn, train_cfg, checkpoint_weights, seed).to(device)
    params = [p for p in predictor.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    features = cache["features"].to(device)
    targets = cache["targets"].to(device)
    labels = cache["labels"].to(device)
    probs = roi_draw_probabilities(cache, roi_sampling, data)
    num_rois = len(labels)
    steps_per_epoch = math.ceil(num_rois / batch_size)
    total_steps = steps_per_epoch * epochs
    rng = np.random.default_rng(int(seed))
    history = []
    step = 0
    predictor.train()
    for epoch in tqdm(range(epochs), desc="train classifier", disable=not progress, leave=False):
        if probs is None:
            order = rng.permutation(num_rois)
        else:
            order = rng.choice(num_rois, size=num_rois, replace=True, p=probs)
        order = torch.from_numpy(order).to(device)
        loss_sum = 0.0
        for first in range(0, num_rois, batch_size):
            rows = order[first : first + batch_size]
            for group in opt.param_groups:  # cosine decay to 0 over all steps
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            logits = classifier_logits(predictor, features[rows].float())
            loss = loss_fn(logits, targets[rows].float(), labels[rows])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss {loss_cfg.get('name')} is {float(loss)} at epoch {epoch} step {step} "
                    f"(seed {seed}); lower train.lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(rows)
            step += 1
        history.append({"epoch": epoch + 1, "loss": loss_sum / num_rois})
    predictor.eval()
    record = {
        "loss": dict(loss_cfg),
        "rates_overrides": dict(rates_overrides or {}),
        "seed": int(seed),
        "roi_sampling": roi_sampling,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "epochs": epochs,
        "batch_size": batch_size,
        "num_rois": num_rois,
        "steps": total_steps,
        "history": history,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return predictor.cpu(), record


def classifier_state(predictor: nn.Module) -> dict[str, torch.Tensor]:
    """The trained part of a box predictor (class-score layer and objectness logit)."""
    return {
        k: v.detach().cpu().clone()
        for k, v in predictor.state_dict().items()
        if k.startswith(CLASSIFIER_PREFIXES)
    }


# --------------------------------------------------------------------------- stage 3: evaluate
def arm_scoring(loss_cfg: dict[str, Any], scoring: str = "auto") -> str:
    """The inference scoring of an arm: ``auto`` = its loss's (``scoring_for``)."""
    return loss_class(loss_cfg["name"]).scoring_for(scoring)


def detector_with_predictor(
    checkpoint: str | Path,
    predictor: nn.Module,
    *,
    scoring: str,
    parent_scores: str,
    device: torch.device,
    score_thresh: float | None = None,
    detections_per_img: int | None = None,
    rates: torch.Tensor | None = None,
) -> tuple[nn.Module, Any]:
    """The checkpoint's detector (``load_detector``: concurrent rates estimated when the
    scoring needs them and the checkpoint has none) with ``predictor`` as its box predictor,
    in eval mode; ``rates`` (an arm's own, ``arm_rates``) replace the rates its scoring uses.
    Returns (model, training config)."""
    model, _, train_cfg = load_detector(
        checkpoint,
        device,
        scoring=scoring,
        parent_scores=parent_scores,
        overrides={"score_thresh": score_thresh, "detections_per_img": detections_per_img},
    )
    check_scoring(scoring, predictor)
    model.roi_heads.box_predictor = predictor.to(device).eval()
    if rates is not None:
        model.roi_heads.rates.copy_(rates.to(model.roi_heads.rates.device))
    return model, train_cfg


def evaluate_predictor(
    checkpoint: str | Path,
    predictor: nn.Module,
    out_dir: str | Path,
    *,
    scoring: str,
    parent_scores: str,
    device: torch.device,
    data_root: str | None = None,
    score_thresh: float | None = None,
    detections_per_img: int | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    extra: dict[str, Any] | None = None,
    data: Any = None,
    progress: bool = True,
    rates: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Stage 3: the checkpoint's detector with ``predictor`` as its box predictor (and the
    arm's ``rates`` for its scoring, when given), scored on
    the validation split with the Open Images Challenge metric as the trainer's validation
    does; writes metrics.json, per_class.csv, frequency_buckets.csv into ``out_dir`` and
    returns the mAP and the frequency-bucket mAPs."""
    start = time.perf_counter()
    model, train_cfg = detector_with_predictor(
        checkpoint,
        predictor,
        scoring=scoring,
        parent_scores=parent_scores,
        device=device,
        score_thresh=score_thresh,
        detections_per_img=detections_per_img,
        rates=rates,
    )
    if data is None:
        data = open_training_data(train_cfg, data_root)
    _, result = detect_and_evaluate(
        model,
        data.val_set,
        data.val_gt,
        device=device,
        batch_size=int(batch_size),
        num_workers=int(num_workers),
        progress=progress,
        desc="crt evaluate",
    )
    seconds = time.perf_counter() - start
    metrics = record_evaluation(
        result,
        data,
        Path(out_dir),
        extra={
            "checkpoint": str(checkpoint),
            "scoring": scoring,
            "parent_scores": parent_scores,
            "score_thresh": model.roi_heads.score_thresh,
            "detections_per_img": model.roi_heads.detections_per_img,
            "eval_seconds": round(seconds, 2),
            **(extra or {}),
        },
    )
    return {**metrics, "seconds": seconds}


# --------------------------------------------------------------------------- the CLI
def seed_dir(cfg: DictConfig, seed: int) -> Path:
    """Where arm ``cfg.arm``'s seed ``seed`` goes (experiments/aggregate.py's layout)."""
    return Path(cfg.output_dir) / "runs" / str(cfg.arm) / f"val-{cfg.validation}" / f"seed{seed}"


def _loss_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.loss, resolve=True)


def run_cache(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    c = cfg.cache
    return cache_roi_features(
        cfg.checkpoint,
        cfg.cache_file,
        device=device,
        seed=int(c.seed),
        passes=c.passes,
        max_images=c.max_images,
        hflip_prob=float(c.hflip_prob),
        batch_size=c.batch_size,
        num_workers=c.num_workers,
        data_root=cfg.data_root,
        overwrite=bool(cfg.overwrite),
        progress=bool(cfg.progress),
    )


def load_classifier(
    classifier_file: Path,
    loss_cfg: dict[str, Any],
    cache: dict[str, Any],
    checkpoint_weights: dict[str, torch.Tensor],
    data: Any,
    device: torch.device,
    rates_overrides: dict[str, float] | None = None,
    rates: torch.Tensor | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The box predictor of a classifier file written by stage ``train`` (its class-score
    layer, the checkpoint's box regression) and its training record."""
    if not classifier_file.is_file():
        raise FileNotFoundError(f"no classifier at {classifier_file}; run stage=train first")
    saved = torch.load(classifier_file, map_location="cpu", weights_only=False)
    if saved["checkpoint_sha256"] != cache["checkpoint_sha256"]:
        raise ValueError(
            f"{classifier_file} was trained on the features of another checkpoint than the "
            f"RoI cache's ({cache['checkpoint']})"
        )
    recorded = saved["record"].get("rates_overrides", {})
    if recorded != dict(rates_overrides or {}):
        raise ValueError(
            f"{classifier_file} was trained with the rates overrides {recorded}, this arm asks "
            f"for {dict(rates_overrides or {})}: train it again (stage=train overwrite=true) or "
            "give the same rates.* settings"
        )
    train_cfg = OmegaConf.create(cache["train_config"])
    loss_fn = build_arm_loss(loss_cfg, train_cfg, data, device, rates_overrides, rates)
    predictor = new_box_predictor(loss_fn, train_cfg, checkpoint_weights, seed=0)
    try:
        predictor.load_state_dict({**predictor.state_dict(), **saved["classifier"]})
    except RuntimeError as exc:
        raise ValueError(
            f"{classifier_file}: its classifier does not fit loss {loss_cfg['name']} ({exc})"
        ) from exc
    if set(saved["classifier"]) != set(classifier_state(predictor)):
        raise ValueError(
            f"{classifier_file}: its classifier ({sorted(saved['classifier'])}) is not of the "
            f"kind loss {loss_cfg['name']} needs"
        )
    return predictor.eval(), saved["record"]


def run_seed(
    cfg: DictConfig,
    seed: int,
    device: torch.device,
    cache: dict[str, Any],
    checkpoint_weights: dict[str, torch.Tensor],
    data: Any,
    *,
    train: bool,
    evaluate: bool,
    rates: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Train (``train``) and/or evaluate (``evaluate``) the classifier of one (arm, seed);
    ``rates``: the arm's concurrent rates (``arm_rates_of_run``), estimated once for all its
    seeds."""
    out_dir = seed_dir(cfg, seed)
    classifier_file = out_dir / "classifier.pt"
    loss_cfg = _loss_config(cfg)
    overrides = arm_rates_overrides(cfg.get("rates"))
    scoring = arm_scoring(loss_cfg, str(cfg.eval.scoring))
    parent_scores = cfg.eval.parent_scores or loss_cfg.get("parent_scores") or "own"
    started = datetime.datetime.now().isoformat(timespec="seconds")
    if train:
        _refuse_existing(classifier_file, bool(cfg.overwrite), f"arm {cfg.arm} seed {seed}:")
        t = cfg.train
        predictor, record = train_classifier(
            cache,
            loss_cfg,
            checkpoint_weights=checkpoint_weights,
            seed=seed,
            device=device,
            roi_sampling=str(t.roi_sampling),
            optimizer=str(t.optimizer),
            lr=t.lr,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
            epochs=t.epochs,
            batch_size=t.batch_size,
            data=data,
            progress=bool(cfg.progress),
            rates_overrides=overrides,
            rates=rates,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "classifier": classifier_state(predictor),
                "kind": {
                    "temperature": getattr(predictor.cls_score, "temperature", None),
                    "objectness_logit": predictor.objectness_logit,
                },
                "record": record,
                "arm": str(cfg.arm),
                "checkpoint_sha256": cache["checkpoint_sha256"],
                "cache_settings": cache["settings"],
            },
            classifier_file,
        )
        print(
            f"arm {cfg.arm} seed {seed}: classifier trained in {record['seconds']:.1f} s on "
            f"{record['num_rois']} RoIs (final loss {record['history'][-1]['loss']:.4f})"
        )
    if not evaluate:
        return {}
    _refuse_existing(
        EvaluationFolder(out_dir).metrics, bool(cfg.overwrite), f"arm {cfg.arm} seed {seed}:"
    )
    if not train:
        predictor, record = load_classifier(
            classifier_file, loss_cfg, cache, checkpoint_weights, data, device, overrides, rates
        )
    # An arm with its own rates scores with them too (eq. 5 uses the R the classifier was
    # trained with, as a fully trained run's scoring does); otherwise as load_detector gives.
    scoring_rates = None
    if overrides and scoring in RATE_SCORINGS:
        scoring_rates = rates
        if scoring_rates is None:
            scoring_rates = arm_rates(OmegaConf.create(cache["train_config"]), data, overrides)
    metrics = evaluate_predictor(
        cfg.checkpoint,
        predictor,
        out_dir,
        scoring=scoring,
        parent_scores=parent_scores,
        device=device,
        data_root=cfg.data_root,
        score_thresh=cfg.eval.score_thresh,
        detections_per_img=cfg.eval.detections_per_img,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.eval.num_workers,
        data=data,
        progress=bool(cfg.progress),
        rates=scoring_rates,
        extra={
            "crt": {
                "arm": str(cfg.arm),
                "seed": seed,
                "loss": loss_cfg,
                "rates_overrides": overrides,
                "train": record,
                "cache": cache["settings"],
                "checkpoint_sha256": cache["checkpoint_sha256"],
            }
        },
    )
    (out_dir / "run.json").write_text(
        json.dumps(
            {
                "task": f"crt_{cfg.arm}_s{seed}",
                "kind": "evaluation",
                "row": str(cfg.arm),
                "seed": seed,
                "validation": str(cfg.validation),
                "started_at": started,
                "protocol": "crt",
                "checkpoint": str(cfg.checkpoint),
            },
            indent=1,
        )
        + "\n"
    )
    print(
        f"arm {cfg.arm} seed {seed}: mAP {metrics['map']:.4f} ({scoring} scoring, parents "
        f"{parent_scores}); evaluated in {metrics['seconds']:.1f} s; outputs in {out_dir}"
    )
    return metrics


def arm_rates_of_run(cfg: DictConfig, cache: dict[str, Any], data: Any) -> torch.Tensor | None:
    """The concurrent rates of arm ``cfg`` (``arm_rates``), estimated once for all its seeds;
    None when neither its loss takes them nor its scoring uses its own (with no ``rates``
    override the scoring uses the checkpoint's, as ``load_detector`` gives them)."""
    loss_cfg = _loss_config(cfg)
    overrides = arm_rates_overrides(cfg.get("rates"))
    own_scoring_rates = bool(overrides) and (
        arm_scoring(loss_cfg, str(cfg.eval.scoring)) in RATE_SCORINGS
    )
    if "rates" not in loss_class(loss_cfg.get("name")).inputs and not own_scoring_rates:
        return None
    return arm_rates(OmegaConf.create(cache["train_config"]), data, overrides)


def run(cfg: DictConfig) -> dict[int, dict[str, Any]]:
    """The stages ``cfg.stage`` names (conf/crt.yaml); returns the metrics per seed."""
    stages = ("cache", "train", "evaluate", "all")
    if cfg.stage not in stages:
        raise ValueError(f"stage={cfg.stage!r}; expected one of {stages}")
    device = resolve_device(str(cfg.device))
    seeds = list(cfg.seeds)
    for seed in seeds:
        _positive("seeds", seed, integer=True, allow_zero=True)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds}: a seed is listed twice")
    if cfg.stage == "cache":
        run_cache(cfg, device)
        return {}
    if cfg.stage == "all" and not Path(cfg.cache_file).exists():
        run_cache(cfg, device)
    cache = load_cache(cfg.cache_file)
    checkpoint_hash = file_sha256(cfg.checkpoint)
    if checkpoint_hash != cache["checkpoint_sha256"]:
        raise ValueError(
            f"the RoI cache {cfg.cache_file} holds the features of another checkpoint "
            f"({cache['checkpoint']}, SHA-256 {cache['checkpoint_sha256'][:12]}) than "
            f"checkpoint={cfg.checkpoint} (SHA-256 {checkpoint_hash[:12]})"
        )
    checkpoint_weights = load_checkpoint(cfg.checkpoint)["model"]
    data = open_training_data(OmegaConf.create(cache["train_config"]), cfg.data_root)
    train = cfg.stage in ("train", "all")
    evaluate = cfg.stage in ("evaluate", "all")
    rates = arm_rates_of_run(cfg, cache, data)
    return {
        seed: run_seed(
            cfg,
            seed,
            device,
            cache,
            checkpoint_weights,
            data,
            train=train,
            evaluate=evaluate,
            rates=rates,
        )
        for seed in seeds
    }


@hydra.main(version_base="1.3", config_path="../../conf", config_name="crt")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
