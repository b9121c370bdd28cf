"""Scene layout and labels: which leaves go in which image, where, how each object is
labelled (the label problems of the paper's section 1 and the confused pairs), and the
image's verified image-level labels (candidates, as Open Images made them)."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np

from lsdet.boxes import box_iou
from lsdet.data.synth.settings import (
    CONFUSED_PAIR,
    LABEL_PROBLEMS,
    SynthSettings,
    SynthSettingsError,
)
from lsdet.data.synth.taxonomy import Taxonomy


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
            size_key = "num_train_images" if split == "train" else "num_val_images"
            raise SynthSettingsError(
                (f"generate.{size_key}", "generate.max_objects_per_image"),
                f"{split}: leaf {leaf} needs {counts[leaf]} images but only {available} have "
                f"room; raise generate.{size_key} or generate.max_objects_per_image, or lower "
                "generate.mean_objects_per_image",
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
    # taxonomy.label_noise: generate.label_noise, scaled when multi_label_rate is set
    probs = [getattr(taxonomy.label_noise, name) for name in LABEL_PROBLEMS]
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
