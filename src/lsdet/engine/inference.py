"""Running a detector over images: flat detections of a dataset, the detector of a checkpoint,
and image files without annotations. Scoring the detections is ``lsdet.evaluation``'s job."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from lsdet.data import load_hierarchy
from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.distributed import DistInfo, gather_objects
from lsdet.engine.training_data import open_split_index, training_rates
from lsdet.losses.scoring import RATE_SCORINGS
from lsdet.models import build_detector

logger = logging.getLogger(__name__)


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


# Suffixes (lower case) of the image files an image folder is taken from: the formats photos
# and detection data sets come in, kept where this Pillow build can open them.
_PHOTO_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".bmp",
    ".dib",
    ".webp",
    ".gif",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".avif",
)


def image_suffixes() -> frozenset[str]:
    """The suffixes (lower case, with the dot) that ``ImageFiles.from_folder`` takes."""
    from PIL import Image

    Image.init()
    readable = {s for s, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(s for s in _PHOTO_SUFFIXES if s in readable)


# Why an image file could not be decoded; the first part of an item's ``skipped`` reason
# ("<reason>: <detail>"), which the reports count per reason.
UNIDENTIFIED = "not an image format Pillow can identify"
EMPTY_FILE = "empty file"
TOO_LARGE = "more pixels than Pillow's decompression-bomb limit"
CORRUPT = "corrupt or truncated image data"
UNREADABLE = "file cannot be read"


class ImageDecodeError(RuntimeError):
    """An image file that cannot be decoded: ``reason`` (one of this module's reasons) and
    the decoder's ``detail``; the message names the file. (``ImageDecodeError(message)``
    alone also works, as DataLoader workers re-raise with the message only.)"""

    def __init__(
        self, message: str, *, path: Path | None = None, reason: str = "", detail: str = ""
    ) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason
        self.detail = detail

    @classmethod
    def of(cls, path: Path, reason: str, detail: str) -> ImageDecodeError:
        return cls(
            f"cannot decode image {path}: {reason} ({detail})",
            path=path,
            reason=reason,
            detail=detail,
        )


def read_rgb_image(path: str | Path) -> torch.Tensor:
    """Decode an image file as uint8 RGB ``[3, H, W]``, as the training set decodes its images
    (Pillow, EXIF orientation applied, converted to RGB). Raises ``ImageDecodeError`` whose
    ``reason`` says why not."""
    from PIL import Image, UnidentifiedImageError

    from lsdet.data.dataset import as_displayed

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError.of(path, EMPTY_FILE, "0 bytes")
        with Image.open(path) as image:
            pixels = np.array(as_displayed(image).convert("RGB"))  # writable copy for torch
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError.of(path, UNIDENTIFIED, str(exc)) from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError.of(path, TOO_LARGE, str(exc)) from exc
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise ImageDecodeError.of(path, UNREADABLE, str(exc)) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's plugins raise all three
        raise ImageDecodeError.of(path, CORRUPT, str(exc)) from exc
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


@dataclass
class FolderListing:
    """What ``ImageFiles.from_folder`` found: the image files taken (sorted by relative path)
    with their image ids, and the other files, ignored but counted per suffix."""

    image_dir: Path
    paths: list[Path]
    image_ids: list[str]
    ignored_files: list[Path]

    @property
    def in_subfolders(self) -> int:
        return sum("/" in image_id for image_id in self.image_ids)

    def ignored_by_suffix(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for path in self.ignored_files:
            suffix = path.suffix.lower() or "(no suffix)"
            counts[suffix] = counts.get(suffix, 0) + 1
        return dict(sorted(counts.items()))


def list_image_folder(image_dir: str | Path) -> FolderListing:
    """Every image file under ``image_dir``, subfolders included, whose suffix (any case) is
    one of ``image_suffixes()``; the image id is the path relative to ``image_dir`` without
    the suffix, with ``/`` between folders (``a.jpg`` -> ``a``, ``sub/b.PNG`` -> ``sub/b``).
    Two files with one id (``a.jpg`` and ``a.png``) are an error naming both: a submission
    row could not say which image it is about."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir} (image_dir)")
    suffixes = image_suffixes()
    taken: dict[str, Path] = {}
    ignored: list[Path] = []
    for path in sorted(p for p in image_dir.rglob("*") if not p.is_dir()):
        if path.suffix.lower() not in suffixes:
            ignored.append(path)
            continue
        image_id = path.relative_to(image_dir).with_suffix("").as_posix()
        if image_id in taken:
            raise ValueError(
                f"two image files have the image id {image_id!r}: {taken[image_id]} and {path}; "
                "rename or move one of them"
            )
        taken[image_id] = path
    if not taken:
        raise FileNotFoundError(
            f"no image files in {image_dir} or its subfolders (looked for "
            f"{', '.join(sorted(suffixes))} in any case; {len(ignored)} other files)"
        )
    image_ids = sorted(taken)
    return FolderListing(image_dir, [taken[i] for i in image_ids], image_ids, ignored)


class ImageFiles(torch.utils.data.Dataset):
    """Image files given by path, for prediction where no annotation exists (``from_folder``:
    every image file of a folder and its subfolders). Items are ``(image float [3, H, W] in
    [0, 1], {"image_id": str})`` like the training set's; the image id is the file stem unless
    ``image_ids`` are given. ``image_size`` resizes every image to that square side (None keeps
    each image's size). A file that cannot be decoded raises ``ImageDecodeError`` naming it
    (``strict=True``) or gives a blank item whose target has ``skipped``:
    ``"<reason>: <file> (<detail>)"`` (``strict=False``; ``predict`` lists it in
    ``skipped_images``)."""

    def __init__(
        self,
        paths: list[Path],
        *,
        image_size: int | None = None,
        image_ids: list[str] | None = None,
        strict: bool = True,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_ids = list(image_ids) if image_ids is not None else [p.stem for p in self.paths]
        if len(self.image_ids) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.image_ids)} image ids")
        self.image_size = image_size
        self.strict = strict
        self.listing: FolderListing | None = None

    @classmethod
    def from_folder(
        cls, image_dir: str | Path, *, image_size: int | None = None, strict: bool = True
    ) -> ImageFiles:
        listing = list_image_folder(image_dir)
        files = cls(
            listing.paths, image_size=image_size, image_ids=listing.image_ids, strict=strict
        )
        files.listing = listing
        return files

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        from torchvision.transforms.v2.functional import resize

        image_id = self.image_ids[i]
        try:
            image = read_rgb_image(self.paths[i])
        except ImageDecodeError as exc:
            if self.strict:
                raise
            side = int(self.image_size) if self.image_size is not None else 32
            skipped = f"{exc.reason}: {exc.path} ({exc.detail})"
            return torch.zeros(3, side, side), {"image_id": image_id, "skipped": skipped}
        if self.image_size is not None:
            image = resize(image, [int(self.image_size)] * 2, antialias=True)
        return image.float().div_(255.0), {"image_id": image_id}


def skipped_by_reason(
    skipped: list[tuple[str, str]], examples: int = 5
) -> dict[str, dict[str, Any]]:
    """``(image id, "<reason>: <detail>")`` pairs counted per reason, with a few examples
    (``{"image_id": ..., "detail": ...}``) each; JSON-ready."""
    report: dict[str, dict[str, Any]] = {}
    for image_id, text in skipped:
        reason, _, detail = text.partition(": ")
        entry = report.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < examples:
            entry["examples"].append({"image_id": image_id, "detail": detail})
    return report


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
