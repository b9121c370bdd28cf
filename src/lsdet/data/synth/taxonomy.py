"""The class hierarchy (families > shapes > variant leaves), each leaf's look, frequency rank
and label-noise partners, the strongly confused pairs and their concurrent rates (the
paper's Figure 3a), and the long-tailed number of images per leaf (its Figure 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsdet.data.synth.settings import (
    FAMILIES,
    ROOT_MID,
    TEXTURES,
    LabelNoise,
    SynthSettings,
    SynthSettingsError,
)


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
            raise SynthSettingsError(
                "generate.confused_pairs.num_pairs",
                f"{s.confused_pairs.num_pairs} pairs cannot be placed: no sibling pair left whose "
                f"rate without the confusion is below {rate:.3f} ({len(pairs)} sibling pairs in "
                "all); lower generate.confused_pairs.num_pairs or raise "
                "generate.confused_pairs.min_rate",
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
        raise SynthSettingsError(
            ("generate.imbalance", "generate.num_train_images"),
            f"imbalance {s.imbalance} needs {n_max:.0f} training images for the largest class "
            f"(smallest has {n_min}); raise generate.num_train_images or lower "
            "generate.imbalance",
        )
    train = np.maximum(n_min, np.round(n_max * shape)).astype(np.int64)
    scale = s.num_val_images / s.num_train_images
    val = np.maximum(s.val_min_images_per_class, np.round(train * scale)).astype(np.int64)
    val = np.minimum(val, s.num_val_images)
    return {"train": train, "validation": val}
