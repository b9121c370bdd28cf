"""Everything a training run needs from a data config (conf/data/*.yaml), read once: the class
hierarchy, the training and validation datasets over their annotation indexes, the training
statistics (the samplers' and loss weightings' n_i) and the metric's validation ground truth,
taken from the same validation index the loader reads.

Two kinds of data config: Open Images CSVs (``data.<split>.bbox_csv``, a class hierarchy) and
COCO/LVIS JSON files (``data.<split>.annotation_json``: ``data=lvis``, ``data=coco``,
``data=synth_lvis``), read by ``lsdet.data.coco_format`` into the same annotation index, with
a flat hierarchy (every category a leaf) and the categories' names."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lsdet.atomic_files import write_text_atomic
from lsdet.data import AnnotationIndex, Hierarchy, load_hierarchy, read_class_descriptions
from lsdet.data.coco_format import CocoIndex, build_or_open_coco_index
from lsdet.data.dataset import OpenImagesDetection, collate_fn
from lsdet.data.rates import concurrent_rates_from_index
from lsdet.data.synth import ensure_synthetic_benchmark
from lsdet.evaluation import load_ground_truth_from_index


@dataclass(frozen=True)
class ValidationMetric:
    """What validation scores with, from the data config: ``metric`` is ``data.metric`` as
    written (None: the Open Images Challenge metric, against ``TrainingData.val_gt``); an
    LVIS/COCO metric reads the splits' annotation files (``data.<split>.annotation_json``),
    the training split's annotation index cache (``data.cache_dir``/train, where
    ``build_training_data`` built it) and ``data.strict``."""

    metric: str | None = None
    val_annotation_json: str | None = None
    train_annotation_json: str | None = None
    train_cache_dir: str | None = None
    strict: bool = True


@dataclass
class TrainingData:
    """The class hierarchy, the training and validation datasets and the training statistics.

    ``class_offsets``/``class_images`` are the CSR lists of training images per class (the
    samplers' input); ``image_counts``/``box_counts`` are per class [C] on the training split,
    as annotated (the samplers' and loss weightings' n_i); ``expanded_image_counts`` counts
    an image for a class when it holds the class or a descendant (what reports call the
    class's frequency: a parent is as frequent as its leaves together).
    ``val_gt`` is the evaluator's ground truth of the validation split (expanded to the
    hierarchy as the Open Images metric does). ``validation`` is what validation scores
    with: the data config's metric and the files an LVIS/COCO metric reads.
    """

    hierarchy: Hierarchy
    class_names: list[str]
    train_set: Dataset
    val_set: Dataset
    class_offsets: np.ndarray
    class_images: np.ndarray
    image_counts: np.ndarray
    box_counts: np.ndarray
    expanded_image_counts: np.ndarray
    val_gt: Any
    collate_fn: Any
    validation: ValidationMetric = field(default_factory=ValidationMetric)

    @property
    def train_fingerprint(self) -> str:
        """Content hash of the training annotation files: a resume checks it instead of paths."""
        return self.train_set.index.content_fingerprint

    @property
    def train_files(self) -> list[str]:
        return [source["path"] for source in self.train_set.index.manifest["sources"]]

    def write_read_reports(self, path: str | Path) -> Path:
        """What the readers of each split read and skipped (``data.strict=false``), kept with
        the annotation indexes, copied into the run folder; the images skipped are counted
        per reason, with those found while training, when it is written again at the end."""
        reports = {
            "train": self.train_set.index.read_report,
            "val": self.val_set.index.read_report,
            # Training images found unreadable so far (also by DataLoader workers); each
            # draw of one is served by the next readable image (counted as stand_ins).
            "train_skipped_images": {
                **self.train_set.skipped_images.to_dict(),
                "handling": "the next readable image in index order stands in for it",
            },
            "val_skipped_images": self.val_set.skipped_images.to_dict(),
        }
        return write_text_atomic(path, json.dumps(reports, indent=1, default=str) + "\n")

    @property
    def num_classes(self) -> int:
        """C, the number of classes (background excluded)."""
        return self.hierarchy.num_classes

    @property
    def num_train_images(self) -> int:
        return len(self.train_set)


def open_split_index(data_cfg: Any, split: str, hierarchy: Hierarchy) -> Any:
    """The AnnotationIndex of ``data.<split>`` (built on first use, cached in data.cache_dir).
    A bbox CSV that gives no box (only a header, or every row skipped under
    ``data.strict=false``) is an error naming it: nothing could be trained or evaluated."""
    files = data_cfg[split]
    index = AnnotationIndex.build_or_open(
        files.bbox_csv,
        hierarchy,
        Path(str(data_cfg.cache_dir)) / split,
        image_labels_csv=files.image_labels_csv,
        strict=bool(data_cfg.get("strict", True)),
    )
    if index.num_boxes == 0:
        raise ValueError(
            f"data.{split}.bbox_csv: {_why_no_boxes(index, Path(str(files.bbox_csv)))}"
        )
    return index


def _why_no_boxes(index: Any, bbox_csv: Path) -> str:
    """Why an annotation index holds no box, naming the bbox CSV."""
    report = next((r for r in index.reports if Path(str(r["path"])).name == bbox_csv.name), None)
    if report is None or int(report["rows_read"]) == 0:
        return (
            f"{bbox_csv} holds no annotation rows (only a header?); nothing to train or evaluate on"
        )
    skipped = report.get("skipped") or {}
    if skipped:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped.items())
        return (
            f"every one of the {report['rows_read']} rows of {bbox_csv} was skipped "
            f"(data.strict=false; {reasons}); nothing to train or evaluate on"
        )
    return (
        f"none of the {report['rows_read']} rows of {bbox_csv} is of a class of "
        "data.class_descriptions_csv; nothing to train or evaluate on"
    )


def build_training_data(
    data_cfg: Any,
    *,
    hflip_prob: float = 0.5,
    same_object_iou: float = 0.9,
    generate_if_missing: bool = True,
) -> TrainingData:
    """Open (and for the synthetic benchmark, generate when missing) the data a config names.
    ``hflip_prob`` is the training split's horizontal-flip probability; ``same_object_iou``
    the IoU at which two boxes of an image are one object annotated twice (merged into one
    multi-label target), the same threshold the concurrent rates use (``rates.iou_threshold``).
    An unreadable validation image (``data.strict=false``) is skipped and its ground truth
    left out of the metric; an unreadable training image is replaced by the next one."""
    if data_cfg.get("generate") is not None and generate_if_missing:
        ensure_synthetic_benchmark(data_cfg)
    if data_cfg.train.get("annotation_json"):
        return _coco_training_data(data_cfg, hflip_prob, same_object_iou)
    for key in ("hierarchy_json", "class_descriptions_csv"):
        if not Path(str(data_cfg[key])).is_file():
            raise FileNotFoundError(f"data.{key}: no file at {data_cfg[key]}")
    # The descriptions file selects the classes (e.g. the 500 Challenge classes).
    hierarchy = load_hierarchy(data_cfg.hierarchy_json, data_cfg.class_descriptions_csv)
    descriptions = read_class_descriptions(data_cfg.class_descriptions_csv)
    class_names = [descriptions.get(mid, mid) for mid in hierarchy.mids]

    train_set, val_set = (
        _split_dataset(
            data_cfg,
            split,
            open_split_index(data_cfg, split, hierarchy),
            hierarchy,
            hflip_prob=hflip_prob,
            same_object_iou=same_object_iou,
        )
        for split in ("train", "val")
    )
    return _training_data(data_cfg, hierarchy, class_names, train_set, val_set)


def _split_dataset(
    data_cfg: Any,
    split: str,
    index: AnnotationIndex,
    hierarchy: Hierarchy,
    *,
    hflip_prob: float,
    same_object_iou: float,
    file_names: dict[str, str] | None = None,
) -> OpenImagesDetection:
    """The data set of ``split`` ("train" or "val") over its annotation index: the training
    split flips images and replaces an unreadable one by the next, the validation split
    neither (an unreadable validation image is skipped and reported)."""
    train = split == "train"
    return OpenImagesDetection(
        index,
        hierarchy,
        data_cfg[split].image_dir,
        image_size=data_cfg.get("image_size"),
        hflip_prob=hflip_prob if train else 0.0,
        strict=bool(data_cfg.get("strict", True)),
        merge_iou=same_object_iou,
        replace_unreadable=train,
        file_names=file_names,
    )


def _training_data(
    data_cfg: Any,
    hierarchy: Hierarchy,
    class_names: list[str],
    train_set: OpenImagesDetection,
    val_set: OpenImagesDetection,
) -> TrainingData:
    index = train_set.index
    class_offsets, class_images = index.class_to_images()
    return TrainingData(
        hierarchy=hierarchy,
        class_names=class_names,
        train_set=train_set,
        val_set=val_set,
        class_offsets=np.asarray(class_offsets),
        class_images=np.asarray(class_images),
        image_counts=np.asarray(index.class_image_counts()),
        box_counts=np.asarray(index.class_box_counts()),
        expanded_image_counts=index.class_image_counts_with_descendants(hierarchy.descendants),
        val_gt=load_ground_truth_from_index(val_set.index, hierarchy),
        collate_fn=collate_fn,
        validation=ValidationMetric(
            metric=data_cfg.get("metric"),
            val_annotation_json=data_cfg.val.get("annotation_json"),
            train_annotation_json=data_cfg.train.get("annotation_json"),
            train_cache_dir=str(Path(str(data_cfg.cache_dir)) / "train"),
            strict=bool(data_cfg.get("strict", True)),
        ),
    )


def open_coco_split(data_cfg: Any, split: str) -> CocoIndex:
    """The annotation index of ``data.<split>.annotation_json`` (a COCO or LVIS file, built on
    first use, cached in data.cache_dir). A file that gives no box is an error naming it."""
    path = data_cfg[split].get("annotation_json")
    if not path:
        raise ValueError(
            f"data.{split}.annotation_json is not set (data.train.annotation_json is: both "
            "splits of a COCO/LVIS data config are JSON files)"
        )
    built = build_or_open_coco_index(
        path, Path(str(data_cfg.cache_dir)) / split, strict=bool(data_cfg.get("strict", True))
    )
    if built.index.num_boxes == 0:
        skipped = built.read_report.get("skipped") or {}
        why = f" (data.strict=false skipped {skipped})" if skipped else ""
        raise ValueError(
            f"data.{split}.annotation_json: {path} holds no usable box{why}; nothing to train "
            "or evaluate on"
        )
    return built


def _coco_training_data(data_cfg: Any, hflip_prob: float, same_object_iou: float) -> TrainingData:
    """The COCO/LVIS branch of :func:`build_training_data`: flat hierarchy of the training
    file's categories (the validation file must list the same, in the same order), images at
    ``data.<split>.image_dir / file_name``."""
    train, val = open_coco_split(data_cfg, "train"), open_coco_split(data_cfg, "val")
    if train.categories.mids != val.categories.mids:
        raise ValueError(
            f"data.val.annotation_json {data_cfg.val.annotation_json} lists other categories "
            f"(ids or order) than data.train.annotation_json {data_cfg.train.annotation_json}"
        )
    hierarchy = train.hierarchy

    train_set, val_set = (
        _split_dataset(
            data_cfg,
            split,
            built.index,
            hierarchy,
            hflip_prob=hflip_prob,
            same_object_iou=same_object_iou,
            file_names=built.file_names,
        )
        for split, built in (("train", train), ("val", val))
    )
    return _training_data(data_cfg, hierarchy, list(train.categories.names), train_set, val_set)


def training_rates(rates_cfg: Any, train_index: Any, hierarchy: Hierarchy) -> torch.Tensor:
    """The [C+1, C+1] concurrent rates of the training boxes (row/col 0 background), columns
    in ``hierarchy.mids`` order, from the training annotation index (``rates.*`` settings;
    see ``lsdet.data.rates`` for the estimator)."""
    rates = concurrent_rates_from_index(
        train_index,
        hierarchy,
        iou_threshold=float(rates_cfg.iou_threshold),
        floor=float(rates_cfg.floor),
        hierarchy_rate=float(rates_cfg.hierarchy_rate),
        prior_count=float(rates_cfg.prior_count),
        progress=False,
    )
    return torch.as_tensor(np.asarray(rates), dtype=torch.float32)
