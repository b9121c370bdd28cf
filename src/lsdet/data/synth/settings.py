"""The generator's settings (with their content hash, which names a generated folder's
version), the names of the classes' looks and label problems, and the names and layout of
the files it writes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

GENERATOR_NAME = "lsdet.data.synth"  # written into manifest.json: marks a folder as its own
GENERATOR_VERSION = 2  # part of the settings hash: bump it when the bytes written change
ROOT_MID = "/m/0bl9f"  # the root MID of the Open Images hierarchy ("Entity")
SPLITS = ("train", "validation")
TEXTURES = ("plain", "stripes", "dots", "checker")
FAMILIES = ("polygon", "star", "oval", "ring", "cross", "crescent")
LABEL_PROBLEMS = ("leaf_and_parent", "two_leaves", "sibling_swap", "sibling_both", "parent_only")
CONFUSED_PAIR = (
    "confused_pair"  # the LabelProblem of an object of a confused pair given both labels
)
VAL_LABEL_NOISE = ("as_train", "clean")
# Where the confused pairs go: `random` among the sibling pairs (benchmark v2), or
# `across_frequency`, spread evenly over the sibling pairs ordered by frequency rank.
CONFUSED_PAIR_PLACEMENTS = ("random", "across_frequency")
# The label problems that put two leaf labels on one object (with the confused pairs);
# `generate.multi_label_rate` scales them together.
TWO_LEAF_PROBLEMS = ("two_leaves", "sibling_both")

HIERARCHY_JSON = "hierarchy.json"
CLASS_DESCRIPTIONS_CSV = "class-descriptions.csv"
MANIFEST_JSON = "manifest.json"
BBOX_HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
    "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
)
IMAGE_LABELS_HEADER = "ImageID,Source,LabelName,Confidence"
OBJECTS_HEADER = (
    "ImageID,ObjectIndex,TrueLabelName,XMin,XMax,YMin,YMax,IsGroupOf,NumInstances,"
    "LabelProblem,LabelNames"
)


class SynthSettingsError(ValueError):
    """A generator setting that is invalid or cannot be met. The message names the setting's
    full key in the data config (``generate.confused_pairs.num_pairs``, ``image_size``);
    :meth:`with_prefix` puts the config group in front (``data.`` for a training run)."""

    def __init__(self, keys: str | tuple[str, ...], problem: str, prefix: str = "") -> None:
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.problem = problem
        self.prefix = prefix
        super().__init__(f"{', '.join(prefix + key for key in self.keys)}: {problem}")

    def with_prefix(self, prefix: str) -> SynthSettingsError:
        return SynthSettingsError(self.keys, self.problem, prefix + self.prefix)


def split_files(root: str | Path, split: str) -> dict[str, Path]:
    """Paths of one split's files under ``root`` (the names conf/data/synth.yaml uses)."""
    root = Path(root)
    return {
        "bbox_csv": root / f"{split}-annotations-bbox.csv",
        "image_labels_csv": root / f"{split}-annotations-image-labels.csv",
        "objects_csv": root / f"{split}-objects.csv",
        "image_dir": root / split,
    }


def image_ids(split: str, num_images: int) -> list[str]:
    """The ImageIDs (and ``<ImageID>.jpg`` file stems) of a split of ``num_images`` images."""
    prefix = "tr" if split == "train" else "va"
    return [f"{prefix}{i:07d}" for i in range(num_images)]


def _number(key: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (int or float), or a :class:`SynthSettingsError` naming ``key``."""
    if isinstance(value, bool) or (
        kind is int and isinstance(value, float) and not value.is_integer()
    ):
        raise SynthSettingsError(
            key, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
        )
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise SynthSettingsError(
            key, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None


@dataclass(frozen=True)
class LabelNoise:
    """Per-object probabilities of the label problems (they are exclusive).

    leaf_and_parent: boxed as its leaf and, with an identical box, as one of its ancestors.
    two_leaves:      boxed as its leaf and as a fixed partner leaf of another family.
    sibling_swap:    labelled with its confusable sibling instead of its own leaf.
    sibling_both:    boxed as its leaf and as its confusable sibling.
    parent_only:     labelled with one of its ancestors only (no leaf label).

    An object whose leaf has no partner (``two_leaves`` with a single family; the sibling
    problems for the unpaired variant of a shape with an odd number of variants) stays
    clean, so the realised rate is then lower; the manifest's summary reports it.
    """

    leaf_and_parent: float = 0.08
    two_leaves: float = 0.04
    sibling_swap: float = 0.08
    sibling_both: float = 0.04
    parent_only: float = 0.08

    def __post_init__(self) -> None:
        values = [getattr(self, name) for name in LABEL_PROBLEMS]
        if any(v < 0 for v in values) or sum(values) > 1:
            raise SynthSettingsError(
                tuple(f"generate.label_noise.{name}" for name in LABEL_PROBLEMS),
                f"the rates must be >= 0 and sum to <= 1, got {values}",
            )


@dataclass(frozen=True)
class ConfusedPairs:
    """Strongly confused sibling pairs (torch and flashlight in Open Images, labelled as each
    other in training and validation): ``num_pairs`` pairs whose concurrent rates, the share
    of a class's boxes that coincide with a box of its partner (the paper's Figure 3a), fall
    linearly from ``top_rate`` to ``min_rate``; the rate is reached by the pair's less
    frequent class (the higher of its two directions), the other direction follows from the
    pair's class frequencies. ``placement``: which sibling pairs are confused (see
    :data:`CONFUSED_PAIR_PLACEMENTS`)."""

    num_pairs: int = 10
    top_rate: float = 0.65
    min_rate: float = 0.10
    placement: str = "random"

    def __post_init__(self) -> None:
        if self.placement not in CONFUSED_PAIR_PLACEMENTS:
            raise SynthSettingsError(
                "generate.confused_pairs.placement",
                f"must be one of {CONFUSED_PAIR_PLACEMENTS}, got {self.placement!r}",
            )
        if self.num_pairs < 0:
            raise SynthSettingsError(
                "generate.confused_pairs.num_pairs", f"must be >= 0, got {self.num_pairs}"
            )
        if not 0 < self.min_rate <= self.top_rate < 1:
            raise SynthSettingsError(
                ("generate.confused_pairs.min_rate", "generate.confused_pairs.top_rate"),
                "must satisfy 0 < min_rate <= top_rate < 1, got "
                f"min_rate={self.min_rate}, top_rate={self.top_rate}",
            )

    def rates(self) -> np.ndarray:
        """The target rate of each pair, strongest first."""
        return np.linspace(self.top_rate, self.min_rate, self.num_pairs)


@dataclass(frozen=True)
class SynthSettings:
    """Generator settings; the ``generate`` block of conf/data/synth.yaml documents each."""

    seed: int = 0
    image_size: int = 128
    num_train_images: int = 3000
    num_val_images: int = 800
    num_families: int = 4
    shapes_per_family: int = 5
    hues_per_shape: int = 3
    textures_per_shape: int = 2
    hue_step_deg: float = 12.0
    hue_jitter_deg: float = 5.0
    texture_contrast: float = 0.2
    imbalance: float = 500.0
    mean_objects_per_image: float = 2.5
    max_objects_per_image: int = 6
    object_size: tuple[float, float] = (0.18, 0.45)
    max_rotation_deg: float = 30.0
    group_of_rate: float = 0.05
    group_of_instances: tuple[int, int] = (3, 6)
    clutter_per_image: tuple[int, int] = (2, 6)
    noise_std: float = 6.0
    jpeg_quality: int = 90
    val_min_images_per_class: int = 5
    lookalike_candidates_per_image: int = 3
    random_candidates_per_image: int = 1
    label_noise: LabelNoise = field(default_factory=LabelNoise)
    confused_pairs: ConfusedPairs = field(default_factory=ConfusedPairs)
    # The share m of training objects with two leaf labels: None keeps label_noise and
    # confused_pairs as they are; a number scales two_leaves, sibling_both and the confused
    # pairs' rates together to reach it (taxonomy.multi_label_scale).
    multi_label_rate: float | None = None
    val_label_noise: str = "as_train"
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.num_families <= len(FAMILIES):
            raise SynthSettingsError(
                "generate.num_families", f"must be in 1..{len(FAMILIES)}, got {self.num_families}"
            )
        if not 1 <= self.textures_per_shape <= len(TEXTURES):
            raise SynthSettingsError(
                "generate.textures_per_shape",
                f"must be in 1..{len(TEXTURES)}, got {self.textures_per_shape}",
            )
        for key in ("shapes_per_family", "hues_per_shape", "num_train_images", "num_val_images"):
            if getattr(self, key) < 1:
                raise SynthSettingsError(
                    f"generate.{key}", f"must be >= 1, got {getattr(self, key)}"
                )
        if self.imbalance < 1:
            raise SynthSettingsError("generate.imbalance", f"must be >= 1, got {self.imbalance}")
        low, high = self.object_size
        if not 0 < low <= high <= 1:
            raise SynthSettingsError(
                "generate.object_size", f"must satisfy 0 < low <= high <= 1, got [{low}, {high}]"
            )
        if self.image_size < 16:
            raise SynthSettingsError("image_size", f"must be >= 16 pixels, got {self.image_size}")
        if self.val_label_noise not in VAL_LABEL_NOISE:
            raise SynthSettingsError(
                "generate.val_label_noise",
                f"must be one of {VAL_LABEL_NOISE}, got {self.val_label_noise!r}",
            )
        for key in ("lookalike_candidates_per_image", "random_candidates_per_image"):
            if getattr(self, key) < 0:
                raise SynthSettingsError(
                    f"generate.{key}", f"must be >= 0, got {getattr(self, key)}"
                )
        if self.multi_label_rate is not None and not 0 <= self.multi_label_rate < 1:
            raise SynthSettingsError(
                "generate.multi_label_rate",
                f"must be null or in [0, 1), got {self.multi_label_rate}",
            )

    @property
    def num_leaves(self) -> int:
        return (
            self.num_families
            * self.shapes_per_family
            * self.hues_per_shape
            * self.textures_per_shape
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SynthSettings:
        """Settings from a plain mapping (e.g. the resolved ``generate`` block); unknown keys
        are an error naming them."""
        values = dict(values)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SynthSettingsError(
                tuple(f"generate.{key}" for key in unknown),
                f"unknown synthetic-benchmark setting; known: {sorted(known)}",
            )
        if "label_noise" in values:
            noise = dict(values["label_noise"] or {})
            bad = sorted(set(noise) - set(LABEL_PROBLEMS))
            if bad:
                raise SynthSettingsError(
                    tuple(f"generate.label_noise.{key}" for key in bad),
                    f"unknown label_noise key; known: {list(LABEL_PROBLEMS)}",
                )
            values["label_noise"] = LabelNoise(
                **{k: _number(f"generate.label_noise.{k}", v, float) for k, v in noise.items()}
            )
        if "confused_pairs" in values:
            pairs = dict(values["confused_pairs"] or {})
            known_pairs = [f.name for f in fields(ConfusedPairs)]
            bad = sorted(set(pairs) - set(known_pairs))
            if bad:
                raise SynthSettingsError(
                    tuple(f"generate.confused_pairs.{key}" for key in bad),
                    f"unknown confused_pairs key; known: {known_pairs}",
                )
            values["confused_pairs"] = ConfusedPairs(
                **{
                    k: v
                    if k == "placement"
                    else _number(
                        f"generate.confused_pairs.{k}", v, int if k == "num_pairs" else float
                    )
                    for k, v in pairs.items()
                }
            )
        if values.get("multi_label_rate") is not None:
            values["multi_label_rate"] = _number(
                "generate.multi_label_rate", values["multi_label_rate"], float
            )
        for key in ("object_size", "group_of_instances", "clutter_per_image"):
            if key in values:
                pair = values[key]
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise SynthSettingsError(
                        f"generate.{key}", f"expected [min, max], got {pair!r}"
                    )
                values[key] = tuple(pair)
        for f in fields(cls):
            if f.name in values and f.type in ("int", "float"):
                key = "image_size" if f.name == "image_size" else f"generate.{f.name}"
                values[f.name] = _number(key, values[f.name], int if f.type == "int" else float)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data. The settings added after benchmark v2 are left out
        at their defaults (multi_label_rate null, confused-pair placement random), which
        write the same bytes as before they existed: the manifest and the settings hash of
        such a benchmark stay those of v2, so existing folders and sweeps stay valid."""
        data = asdict(self)
        for key in ("object_size", "group_of_instances", "clutter_per_image"):
            data[key] = list(data[key])
        if data["multi_label_rate"] is None:
            del data["multi_label_rate"]
        if data["confused_pairs"]["placement"] == "random":
            del data["confused_pairs"]["placement"]
        return data

    def content_hash(self) -> str:
        """Hash of everything that changes the bytes written (num_workers does not)."""
        data = self.to_dict()
        data.pop("num_workers")
        data["generator_version"] = GENERATOR_VERSION
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
