"""The embedded synthetic benchmark (version 2): Open-Images-shaped files with Open Images'
pathologies.

Open Images cannot be shipped, so the main job trains and evaluates on a generated set that
has the same files (hierarchy JSON, class descriptions, 13-column bbox CSV, image-level
labels CSV, ``<ImageID>.jpg`` images) and the problems the method is about. Each property
comes from what Open Images and the paper (Peng et al., CVPR 2020) describe, not from what
any method scores on it:

* a class hierarchy of three levels (shape family > shape > variant) whose sibling leaves
  look nearly alike (same shape, close hues, a subtle texture); parents have no appearance
  of their own, only through their leaves (Open Images' parents are unions of leaves too);
* a long tail (the paper's Figure 2): the number of training images per leaf falls by a
  power law ``n(rank) ~ rank^-alpha`` with ``alpha = ln(imbalance) / ln(num_leaves)``, so
  that the largest / smallest image count is ``imbalance``;
* the label problems of the paper's section 1 at configurable rates: an object boxed as its
  leaf and as an ancestor, boxed with a second leaf of another family (car and toy),
  labelled with its confusable sibling or with both, labelled with an ancestor only
  (Figure 3b); group-of boxes (several small instances in one box);
* strongly confused sibling pairs whose concurrent rates follow the profile of the paper's
  Figure 3a (:class:`ConfusedPairs`: top pairs about 0.5-0.65, a tail down to 0.1);
* validation labelled by the same processes as training (``val_label_noise: as_train``; the
  paper: torch and flashlight are annotated as each other "in both training and validation
  set"), holding every leaf at least ``val_min_images_per_class`` times; ``clean`` gives
  exact labels;
* verified image-level labels made as Open Images made them (Kuznetsova et al., IJCV 2020):
  candidate labels, mostly look-alikes of the leaves present plus a few random ones, each
  verified (present -> positive, absent -> verified negative); every boxed label is a
  positive. The metric thus judges a look-alike detection as a false positive;
* the rows of an image in random order: which label of a multi-labelled object is its true
  class cannot be read from the file order (version 1 wrote the true leaf first).

Everything is drawn from ``seed``; the same settings give the same bytes. Files under
``root``::

    hierarchy.json                                  Open Images format (LabelName/Subcategory)
    class-descriptions.csv                          MID,Name (no header)
    {train,validation}-annotations-bbox.csv         13-column V4-V6 layout
    {train,validation}-annotations-image-labels.csv ImageID,Source,LabelName,Confidence
    {train,validation}-objects.csv                  one row per drawn object: ImageID, its
                                                    true class (TrueLabelName), box, the
                                                    LabelProblem applied and its LabelNames
                                                    (in the order of its rows in the bbox CSV)
    {train,validation}/<ImageID>.jpg
    manifest.json                                   settings, their hash, a summary and
                                                    every file written

The generator writes only into a folder that is missing, empty, or that it wrote itself (its
``manifest.json``); anything else is refused with an error and left as it was. When it
regenerates its own folder (settings or generator version changed, a file missing) it removes
only the files its manifest lists: files anyone else put there stay.

Run ``python -m lsdet.data.synth [key=value ...]`` (keys of the ``generate`` block of
``conf/data/synth.yaml``, plus ``root`` and ``image_size``).
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from lsdet.atomic_files import write_text_atomic
from lsdet.boxes import box_iou

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


class NotAGeneratedFolderError(FileExistsError):
    """The folder holds files the generator did not write; it refuses to touch any of them."""


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
            raise ValueError(f"label_noise rates must be >= 0 and sum to <= 1, got {values}")


@dataclass(frozen=True)
class ConfusedPairs:
    """Strongly confused sibling pairs (torch and flashlight in Open Images, labelled as each
    other in training and validation): ``num_pairs`` pairs whose concurrent rates, the share
    of a class's boxes that coincide with a box of its partner (the paper's Figure 3a), fall
    linearly from ``top_rate`` to ``min_rate``; the rate is reached by the pair's less
    frequent class (the higher of its two directions), the other direction follows from the
    pair's class frequencies."""

    num_pairs: int = 10
    top_rate: float = 0.65
    min_rate: float = 0.10

    def __post_init__(self) -> None:
        if self.num_pairs < 0:
            raise ValueError(f"confused_pairs.num_pairs must be >= 0, got {self.num_pairs}")
        if not 0 < self.min_rate <= self.top_rate < 1:
            raise ValueError(
                "confused_pairs must satisfy 0 < min_rate <= top_rate < 1, got "
                f"min_rate={self.min_rate}, top_rate={self.top_rate}"
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
    val_label_noise: str = "as_train"
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.num_families <= len(FAMILIES):
            raise ValueError(f"num_families must be in 1..{len(FAMILIES)}, got {self.num_families}")
        if not 1 <= self.textures_per_shape <= len(TEXTURES):
            raise ValueError(
                f"textures_per_shape must be in 1..{len(TEXTURES)}, got {self.textures_per_shape}"
            )
        if self.imbalance < 1:
            raise ValueError(f"imbalance must be >= 1, got {self.imbalance}")
        low, high = self.object_size
        if not 0 < low <= high <= 1:
            raise ValueError(f"object_size must satisfy 0 < low <= high <= 1, got {low}, {high}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {self.image_size}")
        if self.val_label_noise not in VAL_LABEL_NOISE:
            raise ValueError(
                f"val_label_noise must be one of {VAL_LABEL_NOISE}, got {self.val_label_noise!r}"
            )
        if self.lookalike_candidates_per_image < 0 or self.random_candidates_per_image < 0:
            raise ValueError("lookalike/random_candidates_per_image must be >= 0")

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
            raise ValueError(
                f"unknown synthetic-benchmark settings {unknown}; known: {sorted(known)}"
            )
        if "label_noise" in values:
            noise = dict(values["label_noise"] or {})
            bad = sorted(set(noise) - set(LABEL_PROBLEMS))
            if bad:
                raise ValueError(f"unknown label_noise keys {bad}; known: {list(LABEL_PROBLEMS)}")
            values["label_noise"] = LabelNoise(**{k: float(v) for k, v in noise.items()})
        if "confused_pairs" in values:
            pairs = dict(values["confused_pairs"] or {})
            known_pairs = [f.name for f in fields(ConfusedPairs)]
            bad = sorted(set(pairs) - set(known_pairs))
            if bad:
                raise ValueError(f"unknown confused_pairs keys {bad}; known: {known_pairs}")
            values["confused_pairs"] = ConfusedPairs(
                **{k: (int(v) if k == "num_pairs" else float(v)) for k, v in pairs.items()}
            )
        for key in ("object_size", "group_of_instances", "clutter_per_image"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("object_size", "group_of_instances", "clutter_per_image"):
            data[key] = list(data[key])
        return data

    def content_hash(self) -> str:
        """Hash of everything that changes the bytes written (num_workers does not)."""
        data = self.to_dict()
        data.pop("num_workers")
        data["generator_version"] = GENERATOR_VERSION
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# The class hierarchy


@dataclass
class Taxonomy:
    """The class tree: families > shapes > leaves, with each leaf's look and noise partners."""

    mids: list[str]  # every class, root excluded, in depth-first order (as in the JSON)
    names: dict[str, str]
    children: dict[str, list[str]]  # parent MID -> child MIDs (ROOT_MID included as a key)
    parent: dict[str, str]  # class MID -> parent MID (ROOT_MID for families)
    leaves: list[str]
    leaf_family: np.ndarray  # [L] family index
    leaf_shape: np.ndarray  # [L] shape index within the family
    leaf_hue: np.ndarray  # [L] hue in degrees
    leaf_texture: np.ndarray  # [L] index into TEXTURES
    leaf_rank: np.ndarray  # [L] frequency rank, 0 = most frequent
    sibling_partner: np.ndarray  # [L] leaf index of the confusable sibling, -1 if none
    other_family_partner: np.ndarray  # [L] leaf index of the "two leaves" partner, -1 if none
    # [L] target concurrent rate of the leaf's confused pair (its sibling partner), 0 if none
    confused_rate: np.ndarray
    # [L] probability that an object of the leaf is labelled with its leaf and its partner
    confused_both_prob: np.ndarray

    def lookalikes(self, leaf: int) -> list[int]:
        """The leaves a classifier would propose for an object of ``leaf``: the other variants
        of its shape (its confusable sibling among them) and its "two leaves" partner."""
        per_shape = len(self.children[self.parent[self.leaves[leaf]]])
        first = leaf - leaf % per_shape
        out = [k for k in range(first, first + per_shape) if k != leaf]
        if self.other_family_partner[leaf] >= 0:
            out.append(int(self.other_family_partner[leaf]))
        return out

    def ancestors(self, mid: str) -> list[str]:
        out = []
        while (mid := self.parent[mid]) != ROOT_MID:
            out.append(mid)
        return out

    def hierarchy_json(self) -> dict[str, Any]:
        def node(mid: str) -> dict[str, Any]:
            kids = self.children.get(mid, [])
            out: dict[str, Any] = {"LabelName": mid}
            if kids:
                out["Subcategory"] = [node(k) for k in kids]
            return out

        return node(ROOT_MID)


def _shape_name(family: int, shape: int) -> str:
    kind = FAMILIES[family]
    polygon_names = {3: "Triangle", 4: "Square", 5: "Pentagon", 6: "Hexagon", 8: "Octagon"}
    if kind == "polygon":
        return polygon_names.get(3 + shape, f"{3 + shape}-gon")
    if kind == "star":
        return f"{4 + shape}-point star"
    if kind == "oval":
        return f"Oval {1 + 0.35 * shape:.2f}"
    if kind == "ring":
        return f"Ring {0.25 + 0.12 * shape:.2f}"
    if kind == "cross":
        return f"Cross {0.12 + 0.06 * shape:.2f}"
    return f"Crescent {0.2 + 0.12 * shape:.2f}"


def build_taxonomy(settings: SynthSettings) -> Taxonomy:
    """The class tree and each leaf's appearance, frequency rank and noise partners."""
    s = settings
    rng = np.random.default_rng([s.seed, 7])
    mids: list[str] = []
    names: dict[str, str] = {}
    children: dict[str, list[str]] = {ROOT_MID: []}
    parent: dict[str, str] = {}
    leaves: list[str] = []
    fam_idx, shape_idx, hues, textures = [], [], [], []
    num_shape_nodes = 0
    for f in range(s.num_families):
        fmid = f"/s/f{f}"
        mids.append(fmid)
        names[fmid] = FAMILIES[f].capitalize()
        children[ROOT_MID].append(fmid)
        children[fmid] = []
        parent[fmid] = ROOT_MID
        for j in range(s.shapes_per_family):
            smid = f"/s/f{f}s{j}"
            mids.append(smid)
            num_shape_nodes += 1
            names[smid] = _shape_name(f, j)
            children[fmid].append(smid)
            children[smid] = []
            parent[smid] = fmid
            # Shapes spread their base hues over the colour wheel; a shape's variants sit
            # hue_step_deg apart, so siblings differ by a small hue shift and a texture.
            base_hue = 360.0 * ((f * s.shapes_per_family + j) * 0.381966 % 1.0)
            for h in range(s.hues_per_shape):
                for t in range(s.textures_per_shape):
                    lmid = f"/s/f{f}s{j}v{h * s.textures_per_shape + t}"
                    leaves.append(lmid)
                    mids.append(lmid)
                    hue = (base_hue + h * s.hue_step_deg) % 360.0
                    names[lmid] = f"{names[smid]} hue{h} {TEXTURES[t]}"
                    children[smid].append(lmid)
                    parent[lmid] = smid
                    fam_idx.append(f)
                    shape_idx.append(j)
                    hues.append(hue)
                    textures.append(t)
    assert num_shape_nodes == s.num_families * s.shapes_per_family

    num_leaves = len(leaves)
    leaf_rank = np.empty(num_leaves, dtype=np.int64)
    leaf_rank[rng.permutation(num_leaves)] = np.arange(num_leaves)

    # Confusable siblings: within each shape, pair the variants of adjacent frequency rank,
    # so that swapping labels inside a pair never floods a tail class with a head class.
    sibling_partner = np.full(num_leaves, -1, dtype=np.int64)
    per_shape = s.hues_per_shape * s.textures_per_shape
    for first in range(0, num_leaves, per_shape):
        members = np.arange(first, first + per_shape)
        members = members[np.argsort(leaf_rank[members])]
        for a, b in zip(members[0::2], members[1::2], strict=False):
            sibling_partner[a], sibling_partner[b] = b, a

    # "Two leaves" partner (car and toy): a more frequent leaf of another family, close in
    # rank (the most frequent leaf takes the next ones); objects of the class are sometimes
    # also boxed as the partner, which never floods a tail class.
    other_family_partner = np.full(num_leaves, -1, dtype=np.int64)
    by_rank = np.argsort(leaf_rank)
    fam_arr = np.asarray(fam_idx)
    for pos in range(num_leaves):
        leaf = by_rank[pos]
        window = by_rank[max(0, pos - 6) : pos] if pos else by_rank[1:7]
        candidates = [c for c in window if fam_arr[c] != fam_arr[leaf]]
        if candidates:
            other_family_partner[leaf] = candidates[rng.integers(len(candidates))]

    # Strongly confused pairs: for each rate of the profile (strongest first), a random
    # sibling pair not chosen yet whose rate without the confusion (from the sibling label
    # problems alone) is below it, so that every pair can reach its rate.
    # The images per leaf follow (rank + 1)^-alpha (target_image_counts).
    alpha = math.log(s.imbalance) / math.log(num_leaves) if num_leaves > 1 else 0.0
    frequency = (leaf_rank + 1.0) ** -alpha
    pairs = sorted({(min(a, b), max(a, b)) for a, b in enumerate(sibling_partner) if b >= 0})
    baseline = [max(pair_rates(0.0, frequency[a], frequency[b], s.label_noise)) for a, b in pairs]
    confused_rate = np.zeros(num_leaves)
    confused_both_prob = np.zeros(num_leaves)
    free = list(range(len(pairs)))
    for rate in s.confused_pairs.rates():
        eligible = [k for k in free if baseline[k] < rate]
        if not eligible:
            raise ValueError(
                f"confused_pairs: no sibling pair left whose rate without the confusion is "
                f"below {rate:.3f}; lower confused_pairs.num_pairs or raise its min_rate"
            )
        k = eligible[rng.integers(len(eligible))]
        free.remove(k)
        a, b = pairs[k]
        prob = both_probability_for_rate(rate, frequency[a], frequency[b], s.label_noise)
        confused_rate[[a, b]] = rate
        confused_both_prob[[a, b]] = prob

    return Taxonomy(
        mids=mids,
        names=names,
        children=children,
        parent=parent,
        leaves=leaves,
        leaf_family=fam_arr,
        leaf_shape=np.asarray(shape_idx),
        leaf_hue=np.asarray(hues, dtype=np.float64),
        leaf_texture=np.asarray(textures),
        leaf_rank=leaf_rank,
        sibling_partner=sibling_partner,
        other_family_partner=other_family_partner,
        confused_rate=confused_rate,
        confused_both_prob=confused_both_prob,
    )


def pair_rates(
    both_prob: float, count_a: float, count_b: float, noise: LabelNoise
) -> tuple[float, float]:
    """Expected concurrent rates (a -> b, b -> a) of a confused sibling pair whose objects get
    both labels with probability ``both_prob`` and otherwise the label problems of
    ``noise``: the share of a's boxes that coincide with a box of b, and vice versa.

    For an object of either class, ``both`` is the probability of boxes of both classes
    (the pair's own rate plus ``sibling_both``), ``swap`` of the partner's box only, and
    ``keep`` of a box of its own class (everything but a swap or a parent-only label)."""
    rest = 1.0 - both_prob
    both = both_prob + rest * noise.sibling_both
    swap = rest * noise.sibling_swap
    keep = 1.0 - swap - rest * noise.parent_only
    coinciding = both * (count_a + count_b)
    boxes_a = count_a * keep + count_b * (both + swap)
    boxes_b = count_b * keep + count_a * (both + swap)
    return coinciding / boxes_a, coinciding / boxes_b


def both_probability_for_rate(
    rate: float, count_a: float, count_b: float, noise: LabelNoise
) -> float:
    """The probability of labelling an object of a confused pair with both classes that gives
    the pair's less frequent class the concurrent ``rate`` (bisection: the rate grows with the
    probability); 1 when even that falls short."""

    def higher_rate(prob: float) -> float:
        return max(pair_rates(prob, count_a, count_b, noise))

    if higher_rate(0.0) >= rate:
        return 0.0
    if higher_rate(1.0) <= rate:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if higher_rate(middle) < rate else (low, middle)
    return (low + high) / 2


def target_image_counts(settings: SynthSettings, taxonomy: Taxonomy) -> dict[str, np.ndarray]:
    """Images per leaf in each split: a power law over frequency ranks.

    Train: ``n(rank) = n_max * (rank + 1)^-alpha`` with ``alpha = ln(imbalance) / ln(L)``,
    so that the L-th leaf gets ``n_min = n_max / imbalance``; ``n_min`` is the integer that
    makes the counts sum to about ``num_train_images * mean_objects_per_image``, and
    ``n_max = n_min * imbalance`` (the imbalance is exact). Validation: the same shape scaled
    to the validation size, with at least ``val_min_images_per_class`` per leaf.
    """
    s = settings
    num_leaves = len(taxonomy.leaves)
    alpha = math.log(s.imbalance) / math.log(num_leaves) if num_leaves > 1 else 0.0
    shape = (taxonomy.leaf_rank + 1.0) ** -alpha
    total = s.num_train_images * s.mean_objects_per_image
    # Round the smallest count first and derive the largest from it, so that the
    # imbalance comes out exactly as configured.
    n_min = max(1, round(min(total / shape.sum(), s.num_train_images) / s.imbalance))
    n_max = n_min * s.imbalance
    if n_max > s.num_train_images:
        raise ValueError(
            f"imbalance {s.imbalance} needs {n_max:.0f} training images for the largest class "
            f"(smallest has {n_min}); raise num_train_images or lower imbalance"
        )
    train = np.maximum(n_min, np.round(n_max * shape)).astype(np.int64)
    scale = s.num_val_images / s.num_train_images
    val = np.maximum(s.val_min_images_per_class, np.round(train * scale)).astype(np.int64)
    val = np.minimum(val, s.num_val_images)
    return {"train": train, "validation": val}


# --------------------------------------------------------------------------------------------
# Scene layout: which leaves go in which image, where, and how they are labelled


@dataclass
class SceneObject:
    leaf: int  # true leaf index
    box: tuple[int, int, int, int]  # pixels (x0, y0, x1, y1), exclusive right/bottom
    group_of: bool
    instances: list[tuple[float, float, float, float]]  # (cx, cy, size, angle) per instance
    colour: tuple[int, int, int]
    stripe_angle: float
    labels: list[str] = field(default_factory=list)
    problem: str = "clean"


def _assign_leaves_to_images(
    counts: np.ndarray, num_images: int, capacity: int, rng: np.random.Generator, split: str
) -> list[list[int]]:
    """Each leaf k in ``counts[k]`` distinct images, at most ``capacity`` leaves per image."""
    load = np.zeros(num_images, dtype=np.int64)
    per_image: list[list[int]] = [[] for _ in range(num_images)]
    for leaf in np.argsort(-counts, kind="stable"):
        free = capacity - load
        available = int((free > 0).sum())
        if counts[leaf] > available:
            raise ValueError(
                f"{split}: leaf {leaf} needs {counts[leaf]} images but only {available} have "
                f"room; raise num_*_images or max_objects_per_image, or lower "
                f"mean_objects_per_image"
            )
        chosen = rng.choice(num_images, size=counts[leaf], replace=False, p=free / free.sum())
        load[chosen] += 1
        for image in chosen:
            per_image[image].append(int(leaf))
    return per_image


def _place_objects(
    leaves: list[int], settings: SynthSettings, taxonomy: Taxonomy, rng: np.random.Generator
) -> list[SceneObject]:
    s = settings
    size = s.image_size
    placed: list[SceneObject] = []
    boxes: list[tuple[int, int, int, int]] = []
    for leaf in rng.permutation(leaves):
        group_of = bool(rng.random() < s.group_of_rate)
        side = rng.uniform(*s.object_size) * size
        if group_of:
            side = max(side, s.object_size[1] * size)
        # A few tries to keep objects apart; crowded images keep their overlap.
        for _ in range(8):
            cx, cy = rng.uniform(side / 2, size - side / 2, size=2)
            box = (
                int(cx - side / 2),
                int(cy - side / 2),
                int(math.ceil(cx + side / 2)),
                int(math.ceil(cy + side / 2)),
            )
            if not boxes or box_iou(np.asarray([box]), np.asarray(boxes)).max() < 0.15:
                break
        if group_of:
            k = int(rng.integers(s.group_of_instances[0], s.group_of_instances[1] + 1))
            small = side * rng.uniform(0.3, 0.42, size=k)
            ix = rng.uniform(box[0] + small / 2, box[2] - small / 2)
            iy = rng.uniform(box[1] + small / 2, box[3] - small / 2)
            instances = [
                (float(x), float(y), float(w), float(a))
                for x, y, w, a in zip(
                    ix, iy, small, rng.uniform(-1, 1, size=k) * s.max_rotation_deg, strict=True
                )
            ]
        else:
            angle = float(rng.uniform(-1, 1) * s.max_rotation_deg)
            instances = [(float(cx), float(cy), float(side), angle)]
        hue = (taxonomy.leaf_hue[leaf] + rng.uniform(-1, 1) * s.hue_jitter_deg) % 360.0
        rgb = colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95))
        colour = tuple(int(round(255 * c)) for c in rgb)
        placed.append(
            SceneObject(
                leaf=int(leaf),
                box=box,
                group_of=group_of,
                instances=instances,
                colour=colour,  # type: ignore[arg-type]
                stripe_angle=float(rng.uniform(0, math.pi)),
            )
        )
        boxes.append(box)
    return placed


def _apply_label_problems(
    objects: list[SceneObject],
    settings: SynthSettings,
    taxonomy: Taxonomy,
    rng: np.random.Generator,
    noisy: bool,
) -> None:
    probs = [getattr(settings.label_noise, name) for name in LABEL_PROBLEMS]
    choices = [*LABEL_PROBLEMS, "clean"]
    probs = [*probs, 1.0 - sum(probs)]
    for obj in objects:
        leaf_mid = taxonomy.leaves[obj.leaf]
        sibling = taxonomy.sibling_partner[obj.leaf]
        # Both draws are made for every object, so the random stream does not depend on noisy.
        confused = rng.random() < taxonomy.confused_both_prob[obj.leaf]
        problem = str(rng.choice(choices, p=probs))
        if not noisy:
            confused, problem = False, "clean"
        if confused:
            obj.labels = [leaf_mid, taxonomy.leaves[sibling]]
            obj.problem = CONFUSED_PAIR
            continue
        partner = taxonomy.other_family_partner[obj.leaf]
        ancestors = taxonomy.ancestors(leaf_mid)
        if problem in ("sibling_swap", "sibling_both") and sibling < 0:
            problem = "clean"
        if problem == "two_leaves" and partner < 0:
            problem = "clean"
        if problem == "leaf_and_parent":
            labels = [leaf_mid, ancestors[rng.integers(len(ancestors))]]
        elif problem == "two_leaves":
            labels = [leaf_mid, taxonomy.leaves[partner]]
        elif problem == "sibling_swap":
            labels = [taxonomy.leaves[sibling]]
        elif problem == "sibling_both":
            labels = [leaf_mid, taxonomy.leaves[sibling]]
        elif problem == "parent_only":
            labels = [ancestors[rng.integers(len(ancestors))]]
        else:
            labels = [leaf_mid]
        obj.labels = labels
        obj.problem = problem


# --------------------------------------------------------------------------------------------
# Rendering


def _unit_polygons(family: int, shape: int) -> list[tuple[np.ndarray, int]]:
    """The shape as filled (255) and cut-out (0) polygons in unit coordinates (radius 1)."""
    kind = FAMILIES[family]
    circle = np.linspace(0, 2 * np.pi, 33)[:-1]
    unit_circle = np.stack([np.cos(circle), np.sin(circle)], axis=1)
    if kind == "polygon":
        n = 3 + shape
        t = np.linspace(0, 2 * np.pi, n + 1)[:-1] - np.pi / 2
        return [(np.stack([np.cos(t), np.sin(t)], axis=1), 255)]
    if kind == "star":
        n = 4 + shape
        t = np.linspace(0, 2 * np.pi, 2 * n + 1)[:-1] - np.pi / 2
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, 0.45)
        return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 255)]
    if kind == "oval":
        aspect = 1 + 0.35 * shape
        return [(unit_circle * np.array([1.0, 1.0 / aspect]), 255)]
    if kind == "ring":
        hole = 0.25 + 0.12 * shape
        return [(unit_circle, 255), (unit_circle * hole, 0)]
    if kind == "cross":
        w = 0.12 + 0.06 * shape
        plus = np.array(
            [[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w],
             [-1, w], [-1, -w], [-w, -w]]
        )  # fmt: skip
        return [(plus, 255)]
    offset = 0.2 + 0.12 * shape
    return [(unit_circle, 255), (unit_circle * 0.85 + np.array([offset + 0.3, -0.1]), 0)]


def _texture_factor(texture: int, size: int, period: float, angle: float) -> np.ndarray:
    """Per-pixel brightness factor in [0, 1] (1 = full colour) for one texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = TEXTURES[texture]
    if kind == "plain":
        return np.ones((size, size), dtype=np.float32)
    if kind == "stripes":
        u = xx * math.cos(angle) + yy * math.sin(angle)
        return ((u / period) % 2.0 < 1.0).astype(np.float32)
    if kind == "dots":
        dx = (xx % period) - period / 2
        dy = (yy % period) - period / 2
        return (dx * dx + dy * dy > (period / 3.2) ** 2).astype(np.float32)
    return (((xx // period) + (yy // period)) % 2 == 0).astype(np.float32)


def _background(rng: np.random.Generator, settings: SynthSettings) -> Image.Image:
    size = settings.image_size
    c0, c1 = (
        np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.25, 0.9)))
        for _ in range(2)
    )
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (xx * math.cos(angle) + yy * math.sin(angle) + 1.5) / 3.0
    pixels = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]) * 255
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    low = settings.object_size[0] * size
    for _ in range(
        int(rng.integers(settings.clutter_per_image[0], settings.clutter_per_image[1] + 1))
    ):
        colour = tuple(
            int(255 * c)
            for c in colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.2, 1))
        )
        x0, y0 = rng.uniform(0, size, size=2)
        if rng.random() < 0.6:  # a line or a thin arc
            x1, y1 = rng.uniform(0, size, size=2)
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
        else:  # a small blob, well below the smallest object
            r = rng.uniform(1.5, max(2.0, low / 4))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
    return image


def _render(
    objects: list[SceneObject], settings: SynthSettings, taxonomy: Taxonomy, seed_key: list[int]
) -> tuple[Image.Image, list[tuple[int, int, int, int] | None]]:
    """Draws the scene; returns the image and each object's tight pixel box (None if the
    object ended up invisible)."""
    rng = np.random.default_rng(seed_key)
    size = settings.image_size
    image = _background(rng, settings)
    tight: list[tuple[int, int, int, int] | None] = []
    for obj in objects:
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        polygons = _unit_polygons(
            int(taxonomy.leaf_family[obj.leaf]), int(taxonomy.leaf_shape[obj.leaf])
        )
        for cx, cy, side, angle in obj.instances:
            rad = math.radians(angle)
            rot = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
            for vertices, fill in polygons:
                points = vertices @ rot.T * (side / 2) + np.array([cx, cy])
                draw.polygon([tuple(p) for p in points.tolist()], fill=fill)
        tight.append(mask.getbbox())
        period = max(2.0, size / 32)
        factor = _texture_factor(
            int(taxonomy.leaf_texture[obj.leaf]), size, period, obj.stripe_angle
        )
        shade = 1.0 - settings.texture_contrast * (1.0 - factor)
        fill = (np.asarray(obj.colour, dtype=np.float32)[None, None] * shade[..., None]).astype(
            np.uint8
        )
        image.paste(Image.fromarray(fill, "RGB"), (0, 0), mask)
    if settings.noise_std > 0:
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0, settings.noise_std, size=pixels.shape)
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")
    return image, tight


# --------------------------------------------------------------------------------------------
# Writing one split


@dataclass
class _ImageJob:
    path: str
    objects: list[SceneObject]
    settings: SynthSettings
    taxonomy: Taxonomy
    seed_key: list[int]


def _render_job(job: _ImageJob) -> list[tuple[int, int, int, int] | None]:
    image, tight = _render(job.objects, job.settings, job.taxonomy, job.seed_key)
    image.save(job.path, format="JPEG", quality=job.settings.jpeg_quality)
    return tight


def _fmt(value: float) -> str:
    return f"{value:.6f}"


def _verify_candidates(
    boxed: set[str],
    true_leaves: list[int],
    settings: SynthSettings,
    taxonomy: Taxonomy,
    rng: np.random.Generator,
) -> tuple[set[str], set[str], dict[str, int]]:
    """An image's verified image-level labels, made as Open Images made them: candidate
    labels proposed by a classifier, then verified by a person looking at the image.

    Every boxed label is a positive (boxes are drawn for positive labels). Candidates are
    ``lookalike_candidates_per_image`` leaves drawn from the look-alikes of the leaves
    present (their shape's other variants and their "two leaves" partners: what a
    classifier confuses them with) and ``random_candidates_per_image`` leaves drawn from the
    rest; a candidate is a positive when an object of it is in the image (its true leaf),
    otherwise a verified negative. Returns (positives, negatives, counts of what was drawn)."""
    present = {taxonomy.leaves[leaf] for leaf in true_leaves}
    known = boxed  # already positive; a candidate of them adds nothing
    num_leaves = len(taxonomy.leaves)
    pool = sorted(
        {k for leaf in true_leaves for k in taxonomy.lookalikes(leaf)}
        - {k for k in range(num_leaves) if taxonomy.leaves[k] in known}
    )
    num_lookalike = min(settings.lookalike_candidates_per_image, len(pool))
    lookalike = (
        [int(k) for k in rng.choice(pool, size=num_lookalike, replace=False)] if pool else []
    )
    rest = [k for k in range(num_leaves) if taxonomy.leaves[k] not in known and k not in lookalike]
    num_random = min(settings.random_candidates_per_image, len(rest))
    random = [int(k) for k in rng.choice(rest, size=num_random, replace=False)] if rest else []
    candidates = {taxonomy.leaves[k] for k in lookalike + random}
    negatives = candidates - present
    drawn = {
        "lookalike": len(lookalike),
        "random": len(random),
        "negatives": len(negatives),
        "lookalike_negatives": len({taxonomy.leaves[k] for k in lookalike} - present),
    }
    return boxed | (candidates & present), negatives, drawn


def _write_split(
    root: Path,
    split: str,
    counts: np.ndarray,
    num_images: int,
    settings: SynthSettings,
    taxonomy: Taxonomy,
) -> dict[str, Any]:
    s = settings
    split_code = SPLITS.index(split)
    files = split_files(root, split)
    files["image_dir"].mkdir(parents=True, exist_ok=True)
    layout_rng = np.random.default_rng([s.seed, split_code, 1])
    per_image = _assign_leaves_to_images(
        counts, num_images, s.max_objects_per_image, layout_rng, split
    )
    ids = image_ids(split, num_images)
    scenes: list[list[SceneObject]] = []
    for i, leaves in enumerate(per_image):
        rng = np.random.default_rng([s.seed, split_code, 2, i])
        objects = _place_objects(leaves, s, taxonomy, rng)
        noisy = split == "train" or s.val_label_noise == "as_train"
        _apply_label_problems(objects, s, taxonomy, rng, noisy=noisy)
        scenes.append(objects)

    jobs = [
        _ImageJob(
            path=str(files["image_dir"] / f"{image_id}.jpg"),
            objects=objects,
            settings=s,
            taxonomy=taxonomy,
            seed_key=[s.seed, split_code, 3, i],
        )
        for i, (image_id, objects) in enumerate(zip(ids, scenes, strict=True))
    ]
    progress = dict(total=len(jobs), desc=f"synth {split}", unit="img", mininterval=1.0)
    if s.num_workers > 1:
        with Pool(s.num_workers) as pool:
            tight_boxes = list(tqdm(pool.imap(_render_job, jobs, chunksize=32), **progress))
    else:
        tight_boxes = [_render_job(job) for job in tqdm(jobs, **progress)]

    size = float(s.image_size)
    bbox_lines = [BBOX_HEADER]
    label_lines = [IMAGE_LABELS_HEADER]
    object_lines = [OBJECTS_HEADER]
    problem_counts = dict.fromkeys([*LABEL_PROBLEMS, CONFUSED_PAIR, "clean"], 0)
    dropped = 0
    candidate_counts = {"lookalike": 0, "random": 0, "negatives": 0, "lookalike_negatives": 0}
    for i, (image_id, objects, tight) in enumerate(zip(ids, scenes, tight_boxes, strict=True)):
        visible = [(o, b) for o, b in zip(objects, tight, strict=True) if b is not None]
        dropped += len(objects) - len(visible)
        pixel_boxes = np.asarray([b for _, b in visible], dtype=np.float64).reshape(-1, 4)
        rows: list[tuple[int, str, str]] = []  # (object, label, bbox line)
        for k, (obj, (x0, y0, x1, y1)) in enumerate(visible):
            others = np.delete(pixel_boxes, k, axis=0)
            inter_w = np.clip(np.minimum(others[:, 2], x1) - np.maximum(others[:, 0], x0), 0, None)
            inter_h = np.clip(np.minimum(others[:, 3], y1) - np.maximum(others[:, 1], y0), 0, None)
            # Objects are drawn in order: a later one that overlaps this box occludes it.
            later = np.arange(len(visible) - 1) >= k
            occluded = int(bool(((inter_w * inter_h > 0) & later).any()))
            coords = ",".join(_fmt(v) for v in (x0 / size, x1 / size, y0 / size, y1 / size))
            for mid in obj.labels:
                line = f"{image_id},xclick,{mid},1,{coords},{occluded},0,{int(obj.group_of)},0,0"
                rows.append((k, mid, line))
            problem_counts[obj.problem] += 1
        # The rows of an image in random order: file order tells nothing about which label
        # of an object is its true class (Open Images' files carry no such order either).
        rng = np.random.default_rng([s.seed, split_code, 5, i])
        rows = [rows[j] for j in rng.permutation(len(rows))]
        bbox_lines += [line for _, _, line in rows]
        for k, (obj, (x0, y0, x1, y1)) in enumerate(visible):
            coords = ",".join(_fmt(v) for v in (x0 / size, x1 / size, y0 / size, y1 / size))
            in_file_order = [mid for row_object, mid, _ in rows if row_object == k]
            object_lines.append(
                f"{image_id},{k},{taxonomy.leaves[obj.leaf]},{coords},{int(obj.group_of)},"
                f"{len(obj.instances)},{obj.problem},{';'.join(in_file_order)}"
            )
        boxed = {mid for _, mid, _ in rows}
        true_leaves = sorted({o.leaf for o, _ in visible})
        positives, negatives, drawn = _verify_candidates(
            boxed, true_leaves, s, taxonomy, np.random.default_rng([s.seed, split_code, 4, i])
        )
        for key, value in drawn.items():
            candidate_counts[key] += value
        label_lines += [f"{image_id},verification,{mid},1" for mid in sorted(positives)]
        label_lines += [f"{image_id},verification,{mid},0" for mid in sorted(negatives)]

    files["bbox_csv"].write_text("\n".join(bbox_lines) + "\n")
    files["image_labels_csv"].write_text("\n".join(label_lines) + "\n")
    files["objects_csv"].write_text("\n".join(object_lines) + "\n")
    num_objects = sum(problem_counts.values())
    return {
        "num_images": num_images,
        "num_objects": num_objects,
        "num_boxes": len(bbox_lines) - 1,
        "objects_not_visible": dropped,
        "label_problem_rates": {
            k: round(v / max(num_objects, 1), 4) for k, v in problem_counts.items()
        },
        "image_level_candidates": candidate_counts,
        "images_per_leaf_max": int(counts.max()),
        "images_per_leaf_min": int(counts.min()),
        "imbalance": round(float(counts.max() / counts.min()), 2),
    }


# --------------------------------------------------------------------------------------------
# Public entry points


def planned_files(settings: SynthSettings) -> list[str]:
    """Every file the generator writes for ``settings`` except manifest.json, relative to the
    root (POSIX separators), in a fixed order."""
    files = [HIERARCHY_JSON, CLASS_DESCRIPTIONS_CSV]
    sizes = {"train": settings.num_train_images, "validation": settings.num_val_images}
    for split in SPLITS:
        paths = split_files(Path(), split)
        files += [paths[key].as_posix() for key in ("bbox_csv", "image_labels_csv", "objects_csv")]
        files += [f"{split}/{image_id}.jpg" for image_id in image_ids(split, sizes[split])]
    return files


def read_own_manifest(root: str | Path) -> dict[str, Any] | None:
    """``root/manifest.json`` if the generator wrote it (this version or an earlier one),
    else None (no manifest, unreadable, or another tool's)."""
    path = Path(root) / MANIFEST_JSON
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("generator") == GENERATOR_NAME and isinstance(
        manifest.get("files_written"), list
    ):
        return manifest
    # Version 1 wrote neither the generator's name nor its file list; its keys identify it.
    settings = manifest.get("settings")
    if (
        manifest.get("generator_version") == 1
        and {"settings_hash", "files", "summary"} <= manifest.keys()
        and isinstance(settings, dict)
        and {"num_train_images", "num_val_images"} <= settings.keys()
    ):
        return manifest
    return None


def _files_of_manifest(manifest: Mapping[str, Any]) -> list[str]:
    """The files an own manifest says the generator wrote (relative to the root)."""
    if "files_written" in manifest:
        return [str(rel) for rel in manifest["files_written"]]
    # Version 1: its fixed file names and the images its settings numbered.
    settings = manifest["settings"]
    sizes = {"train": settings["num_train_images"], "validation": settings["num_val_images"]}
    files = [HIERARCHY_JSON, CLASS_DESCRIPTIONS_CSV]
    for split in SPLITS:
        files += [f"{split}-annotations-bbox.csv", f"{split}-annotations-image-labels.csv"]
        files += [f"{split}-objects.csv"]
        files += [f"{split}/{image_id}.jpg" for image_id in image_ids(split, int(sizes[split]))]
    return files


def _inside(root: Path, relative: str) -> bool:
    """Whether ``root/relative`` stays inside ``root`` (a manifest could name ``../x``)."""
    root_path = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(root_path, relative))
    return os.path.commonpath([root_path, path]) == root_path and path != root_path


def _refusal(root: Path, reason: str) -> NotAGeneratedFolderError:
    return NotAGeneratedFolderError(
        f"refusing to write the synthetic benchmark into {root}: {reason}. The generator "
        f"writes only into a folder that is missing, empty, or that it wrote itself (with its "
        f"own {MANIFEST_JSON}), and never deletes anything else; nothing in {root} was "
        f"changed. Generate it elsewhere with data.root=<a new or empty folder> (for "
        f"`python -m lsdet.data.synth`: root=<folder>), or, to use your own data in the Open "
        f"Images layout, pass data=openimages data.root={root}."
    )


def _claim_folder(root: Path, settings: SynthSettings) -> list[str]:
    """Makes ``root`` ready for writing ``settings``' files, or raises
    :class:`NotAGeneratedFolderError` without touching anything. In a folder the generator
    wrote, only the files its manifest lists are removed; returns the files to write."""
    if root.exists() and not root.is_dir():
        raise _refusal(root, "it is a file, not a folder")
    planned = planned_files(settings)
    manifest = read_own_manifest(root) if root.is_dir() else None
    if manifest is None:
        if root.is_dir() and any(root.iterdir()):
            raise _refusal(
                root, f"it is not empty and holds no {MANIFEST_JSON} written by the generator"
            )
        root.mkdir(parents=True, exist_ok=True)
        return planned
    own = {rel for rel in _files_of_manifest(manifest) if _inside(root, rel)}
    foreign = [
        rel
        for rel in planned
        if rel not in own and ((root / rel).exists() or (root / rel).is_symlink())
    ]
    if foreign:
        raise _refusal(
            root,
            f"{len(foreign)} file(s) it would write exist but are not listed in its "
            f"{MANIFEST_JSON} (e.g. {root / foreign[0]})",
        )
    for rel in sorted(own):
        path = root / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    return planned


def _write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    """Writes manifest.json atomically (a reader sees the old or the new one, never half)."""
    write_text_atomic(root / MANIFEST_JSON, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def generate_synthetic_benchmark(
    root: str | Path, settings: SynthSettings | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Writes the synthetic benchmark under ``root``; returns the manifest (paths, settings,
    settings hash, summary, every file written).

    ``root`` must be missing, empty, or a folder the generator wrote (its manifest.json):
    anything else raises :class:`NotAGeneratedFolderError` and nothing is changed. In its own
    folder it removes only the files its manifest lists; files of anyone else stay. Before
    writing it records, in the manifest, the files it is about to write (marked incomplete),
    so an interrupted run leaves a folder that a later run recognises and regenerates."""
    if settings is None:
        settings = SynthSettings()
    elif not isinstance(settings, SynthSettings):
        settings = SynthSettings.from_mapping(settings)
    root = Path(root)
    files_written = _claim_folder(root, settings)
    header = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "settings_hash": settings.content_hash(),
        "settings": settings.to_dict(),
        "files_written": files_written,
    }
    _write_manifest(root, {**header, "complete": False})
    start = time.perf_counter()
    taxonomy = build_taxonomy(settings)
    (root / HIERARCHY_JSON).write_text(json.dumps(taxonomy.hierarchy_json(), indent=1) + "\n")
    (root / CLASS_DESCRIPTIONS_CSV).write_text(
        "".join(f"{mid},{taxonomy.names[mid]}\n" for mid in taxonomy.mids)
    )
    counts = target_image_counts(settings, taxonomy)
    summary: dict[str, Any] = {
        "num_classes": len(taxonomy.mids),
        "num_leaves": len(taxonomy.leaves),
        "num_levels": 3,
        "confused_pairs": [
            {
                "mids": [taxonomy.leaves[a], taxonomy.leaves[int(taxonomy.sibling_partner[a])]],
                "target_rate": round(float(taxonomy.confused_rate[a]), 4),
                "both_labels_prob": round(float(taxonomy.confused_both_prob[a]), 4),
            }
            for a in np.argsort(-taxonomy.confused_rate, kind="stable")
            if taxonomy.confused_rate[a] > 0 and a < taxonomy.sibling_partner[a]
        ],
    }
    sizes = {"train": settings.num_train_images, "validation": settings.num_val_images}
    for split in SPLITS:
        summary[split] = _write_split(root, split, counts[split], sizes[split], settings, taxonomy)
    manifest = {
        **header,
        "complete": True,
        "files": {
            "hierarchy_json": HIERARCHY_JSON,
            "class_descriptions_csv": CLASS_DESCRIPTIONS_CSV,
            **{
                f"{split}.{key}": str(path.relative_to(root))
                for split in SPLITS
                for key, path in split_files(root, split).items()
            },
        },
        "summary": summary,
    }
    _write_manifest(root, manifest)
    manifest["seconds"] = round(time.perf_counter() - start, 2)
    return manifest


def settings_from_data_config(data_cfg: Any) -> SynthSettings:
    """The generator settings a data config (conf/data/synth.yaml) holds: its ``generate``
    block, with ``image_size`` taken from the config's top level."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data_cfg, DictConfig):
        generate = OmegaConf.to_container(data_cfg.generate, resolve=True)
        image_size = data_cfg.get("image_size")
    else:
        generate = dict(data_cfg["generate"])
        image_size = data_cfg.get("image_size")
    if image_size is not None:
        generate["image_size"] = int(image_size)
    return SynthSettings.from_mapping(generate)  # type: ignore[arg-type]


def ensure_synthetic_benchmark(data_cfg: Any, *, force: bool = False) -> dict[str, Any]:
    """Generates the benchmark under ``data_cfg.root`` unless the generator's complete
    manifest there has the same settings hash (settings and generator version) and every file
    it lists and the config names exists; returns the manifest with ``generated`` telling
    whether it wrote anything. A folder the generator did not write raises
    :class:`NotAGeneratedFolderError` (see :func:`generate_synthetic_benchmark`)."""
    settings = settings_from_data_config(data_cfg)
    root = Path(str(data_cfg["root"]))
    configured = [
        data_cfg["hierarchy_json"],
        data_cfg["class_descriptions_csv"],
        *(
            data_cfg[split][key]
            for split in ("train", "val")
            for key in ("bbox_csv", "image_labels_csv", "image_dir")
        ),
    ]
    manifest = read_own_manifest(root)
    if (
        not force
        and manifest is not None
        and manifest.get("complete") is True
        and manifest.get("settings_hash") == settings.content_hash()
        and all((root / rel).is_file() for rel in _files_of_manifest(manifest))
        and all(Path(str(p)).exists() for p in configured)
    ):
        manifest["generated"] = False
        return manifest
    manifest = generate_synthetic_benchmark(root, settings)
    missing = [str(p) for p in configured if not Path(str(p)).exists()]
    if missing:
        raise FileNotFoundError(
            f"the data config names files the generator does not write under {root}: {missing}"
        )
    manifest["generated"] = True
    return manifest


def _default_config_path() -> Path:
    return Path(__file__).resolve().parents[3] / "conf" / "data" / "synth.yaml"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(
        prog="python -m lsdet.data.synth",
        description="Write the synthetic benchmark. Overrides are key=value pairs of the data "
        "config, e.g. root=data/synth_small generate.num_train_images=200 image_size=64.",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the data config")
    parser.add_argument(
        "--config",
        default=None,
        help="data config YAML (default: conf/data/synth.yaml of this repository)",
    )
    parser.add_argument(
        "--force", action="store_true", help="regenerate even when the files are up to date"
    )
    args = parser.parse_args(argv)
    config_path = Path(args.config) if args.config else _default_config_path()
    if not config_path.is_file():
        parser.error(f"data config not found: {config_path}")
    cfg = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_dotlist(args.overrides))
    try:
        manifest = ensure_synthetic_benchmark(cfg, force=args.force)
    except NotAGeneratedFolderError as error:
        raise SystemExit(f"error: {error}") from None
    if manifest["generated"]:
        print(f"wrote the synthetic benchmark to {cfg.root} in {manifest['seconds']} s")
    else:
        print(f"{cfg.root} is up to date (settings hash {manifest['settings_hash']})")
    print(json.dumps(manifest["summary"], indent=1))
    return manifest


if __name__ == "__main__":
    main()
