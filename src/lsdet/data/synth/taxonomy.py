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
    LABEL_PROBLEMS,
    ROOT_MID,
    TEXTURES,
    TWO_LEAF_PROBLEMS,
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
    # the label problems' rates the scenes draw from: generate.label_noise, with two_leaves
    # and sibling_both scaled by multi_label_scale when generate.multi_label_rate is set
    label_noise: LabelNoise
    # the factor c of generate.multi_label_rate (1 when it is null): two_leaves and
    # sibling_both are multiplied by c, each confused pair's rate r becomes 1 - (1 - r)^c
    multi_label_scale: float

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

    # Strongly confused pairs, placed with the configured label problems (so that a
    # multi_label_rate does not move them); the images per leaf follow (rank + 1)^-alpha
    # (target_image_counts).
    alpha = math.log(s.imbalance) / math.log(num_leaves) if num_leaves > 1 else 0.0
    frequency = (leaf_rank + 1.0) ** -alpha
    pairs = sorted({(min(a, b), max(a, b)) for a, b in enumerate(sibling_partner) if b >= 0})
    placed = _place_confused_pairs(pairs, frequency, leaf_rank, s, rng)

    noise, scale = s.label_noise, 1.0
    if s.multi_label_rate is not None:
        counts = _train_counts(s, leaf_rank)
        scale = _scale_for_multi_label_rate(
            s, counts, pairs, placed, frequency, sibling_partner, other_family_partner
        )
        noise = scaled_label_noise(s.label_noise, scale)
    confused_rate, confused_both_prob = _confused_arrays(
        num_leaves, pairs, placed, frequency, noise, scale
    )

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
        label_noise=noise,
        multi_label_scale=scale,
    )


def _place_confused_pairs(
    pairs: list[tuple[int, int]],
    frequency: np.ndarray,
    leaf_rank: np.ndarray,
    settings: SynthSettings,
    rng: np.random.Generator,
) -> list[tuple[int, float]]:
    """(index into ``pairs``, target rate) of each confused pair, strongest rate first.

    ``random`` (benchmark v2): for each rate of the profile, strongest first, a random sibling
    pair not chosen yet whose rate without the confusion (from the sibling label problems
    alone) is below it, so that every pair can reach its rate. ``across_frequency``: the
    sibling pairs ordered by the frequency rank of their more frequent leaf, the pairs at
    evenly spaced positions of that order (the most and the least frequent pair included),
    the rates given to them in a random order (a pair's rate is not tied to its frequency)."""
    s = settings
    num = s.confused_pairs.num_pairs
    rates = s.confused_pairs.rates()
    baseline = [max(pair_rates(0.0, frequency[a], frequency[b], s.label_noise)) for a, b in pairs]
    if s.confused_pairs.placement == "random":
        placed = []
        free = list(range(len(pairs)))
        for rate in rates:
            eligible = [k for k in free if baseline[k] < rate]
            if not eligible:
                raise SynthSettingsError(
                    "generate.confused_pairs.num_pairs",
                    f"{num} pairs cannot be placed: no sibling pair left whose rate without the "
                    f"confusion is below {rate:.3f} ({len(pairs)} sibling pairs in all); lower "
                    "generate.confused_pairs.num_pairs or raise generate.confused_pairs.min_rate",
                )
            k = eligible[rng.integers(len(eligible))]
            free.remove(k)
            placed.append((k, float(rate)))
        return placed
    if num > len(pairs):
        raise SynthSettingsError(
            "generate.confused_pairs.num_pairs",
            f"{num} pairs cannot be placed: there are {len(pairs)} sibling pairs in all; lower "
            "generate.confused_pairs.num_pairs",
        )
    if num == 0:
        return []
    by_rank = sorted(range(len(pairs)), key=lambda k: min(leaf_rank[a] for a in pairs[k]))
    positions = np.round(np.linspace(0, len(pairs) - 1, num)).astype(int)
    chosen = [by_rank[p] for p in positions]
    order = rng.permutation(num)
    placed = sorted(
        ((chosen[i], float(rates[order[i]])) for i in range(num)), key=lambda kr: -kr[1]
    )
    for k, rate in placed:
        if baseline[k] >= rate:
            raise SynthSettingsError(
                ("generate.confused_pairs.placement", "generate.confused_pairs.min_rate"),
                f"the sibling pair {pairs[k]} placed across_frequency already has the rate "
                f"{baseline[k]:.3f} without the confusion, not below its target {rate:.3f}; "
                "raise generate.confused_pairs.min_rate or lower "
                "generate.label_noise.sibling_both",
            )
    return placed


def scaled_pair_rate(rate: float, scale: float) -> float:
    """A confused pair's target rate under the multi-label scale c: 1 - (1 - r)^c, the
    chance that at least one of c confusions at rate r happens. It is r at c = 1, 0 at c = 0,
    grows with c and stays below 1, and keeps the order of the pairs' rates."""
    return 1.0 - (1.0 - rate) ** scale


def scaled_label_noise(noise: LabelNoise, scale: float) -> LabelNoise:
    """``noise`` with the label problems that give an object two leaf labels (two_leaves,
    sibling_both) multiplied by ``scale``, the others unchanged."""
    values = {name: getattr(noise, name) for name in LABEL_PROBLEMS}
    for name in TWO_LEAF_PROBLEMS:
        values[name] *= scale
    return LabelNoise(**values)


def _confused_arrays(
    num_leaves: int,
    pairs: list[tuple[int, int]],
    placed: list[tuple[int, float]],
    frequency: np.ndarray,
    noise: LabelNoise,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per leaf: the target concurrent rate of its confused pair and the probability that
    an object of it gets both labels (0 for leaves of no pair, and for every leaf at
    scale 0)."""
    confused_rate = np.zeros(num_leaves)
    confused_both_prob = np.zeros(num_leaves)
    if scale == 0:
        return confused_rate, confused_both_prob
    for k, rate in placed:
        a, b = pairs[k]
        target = rate if scale == 1 else scaled_pair_rate(rate, scale)
        confused_rate[[a, b]] = target
        confused_both_prob[[a, b]] = both_probability_for_rate(
            target, frequency[a], frequency[b], noise
        )
    return confused_rate, confused_both_prob


def two_leaf_share(
    counts: np.ndarray,
    confused_both_prob: np.ndarray,
    sibling_partner: np.ndarray,
    other_family_partner: np.ndarray,
    noise: LabelNoise,
) -> float:
    """The expected share of objects boxed with two leaf labels, for ``counts`` objects per
    leaf: an object of a confused pair gets both labels with its pair's probability, else
    (the label problems are drawn only then) two_leaves when it has an other-family partner
    and sibling_both when it has a sibling (scenes._apply_label_problems)."""
    single = noise.two_leaves * (other_family_partner >= 0) + noise.sibling_both * (
        sibling_partner >= 0
    )
    per_object = confused_both_prob + (1.0 - confused_both_prob) * single
    return float((counts * per_object).sum() / counts.sum())


def _scale_for_multi_label_rate(
    settings: SynthSettings,
    counts: np.ndarray,
    pairs: list[tuple[int, int]],
    placed: list[tuple[int, float]],
    frequency: np.ndarray,
    sibling_partner: np.ndarray,
    other_family_partner: np.ndarray,
) -> float:
    """The scale c at which the expected share of training objects with two leaf labels is
    ``generate.multi_label_rate`` (bisection: the share grows with c). c is at most the value
    at which the label problems' rates sum to 1."""
    s = settings
    target = s.multi_label_rate
    assert target is not None
    if target == 0:
        return 0.0
    num_leaves = len(frequency)

    def share(scale: float) -> float:
        noise = scaled_label_noise(s.label_noise, scale)
        _, both = _confused_arrays(num_leaves, pairs, placed, frequency, noise, scale)
        return two_leaf_share(counts, both, sibling_partner, other_family_partner, noise)

    scaled = sum(getattr(s.label_noise, name) for name in TWO_LEAF_PROBLEMS)
    others = sum(getattr(s.label_noise, n) for n in LABEL_PROBLEMS) - scaled
    high = (1.0 - others) / scaled if scaled > 0 else 1000.0
    if share(high) < target:
        raise SynthSettingsError(
            "generate.multi_label_rate",
            f"{target} cannot be reached: at most {share(high):.3f} of the training objects "
            "get two leaf labels with these label_noise and confused_pairs settings (the "
            "label problems' rates must sum to <= 1); lower it, or raise "
            "generate.label_noise.two_leaves / sibling_both",
        )
    low = 0.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if share(middle) < target else (low, middle)
    return (low + high) / 2


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
    train = _train_counts(s, taxonomy.leaf_rank)
    scale = s.num_val_images / s.num_train_images
    val = np.maximum(s.val_min_images_per_class, np.round(train * scale)).astype(np.int64)
    val = np.minimum(val, s.num_val_images)
    return {"train": train, "validation": val}


def _train_counts(settings: SynthSettings, leaf_rank: np.ndarray) -> np.ndarray:
    """Training images per leaf (target_image_counts)."""
    s = settings
    num_leaves = len(leaf_rank)
    alpha = math.log(s.imbalance) / math.log(num_leaves) if num_leaves > 1 else 0.0
    shape = (leaf_rank + 1.0) ** -alpha
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
    return np.maximum(n_min, np.round(n_max * shape)).astype(np.int64)
