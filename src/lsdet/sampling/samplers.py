"""Epoch samplers over training images: sequential (shuffled, every image once), class-aware /
soft-balance (``lsdet.sampling.soft_balance``), repeat-factor, and ``build_sampler``.

Every sampler draws one *global stream* of image indices per epoch, the same on every rank;
see ``lsdet.sampling.base`` for sharding and resuming.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lsdet.config_schema.sampler import SAMPLER_SCHEMAS
from lsdet.sampling.base import EpochSampler, check_csr
from lsdet.sampling.soft_balance import SoftBalanceSampler


class ShuffledEpochSampler(EpochSampler):
    """Every image once per epoch, in a fresh random order each epoch: the paper's
    "sequential" (non-balance) sampling, ``sampler=sequential``. (Unlike torch's
    SequentialSampler, the order is not the file order.)"""

    name = "sequential"

    def global_stream(self, epoch: int) -> np.ndarray:
        return self._rng(epoch).permutation(self.num_images)


def repeat_factors(
    class_offsets: ArrayLike, class_images: ArrayLike, num_images: int, repeat_threshold: float
) -> np.ndarray:
    """Per-image repeat factors of detectron2's repeat-factor sampling (LVIS, Gupta et al.).

    f(c) = fraction of images containing class c, r(c) = max(1, sqrt(t / f(c))), and an
    image's factor is the max of r(c) over its classes (1 for an image without classes).
    Returns float64 [num_images].
    """
    offsets, images = check_csr(class_offsets, class_images, num_images)
    if not repeat_threshold > 0:
        raise ValueError(f"repeat_threshold must be > 0, got {repeat_threshold}")
    counts = np.diff(offsets)
    class_factor = np.ones(len(counts))
    present = counts > 0
    frequency = counts[present] / num_images
    class_factor[present] = np.maximum(1.0, np.sqrt(repeat_threshold / frequency))
    image_factor = np.ones(num_images)
    np.maximum.at(image_factor, images, np.repeat(class_factor, counts))
    return image_factor


class RepeatFactorSampler(EpochSampler):
    """detectron2's RepeatFactorTrainingSampler as an epoch sampler.

    Each epoch, image i appears floor(r_i) times plus once more with probability
    frac(r_i) (stochastic rounding), in a random order. The epoch's length therefore varies
    a little from epoch to epoch (mean sum(r_i)); ``len()`` is the current epoch's.
    """

    name = "repeat_factor"

    def __init__(
        self,
        image_factors: ArrayLike,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        factors = np.asarray(image_factors, dtype=np.float64)
        if factors.ndim != 1 or not np.all(np.isfinite(factors)) or np.any(factors < 0):
            raise ValueError("repeat factors must be a 1-D array of finite values >= 0")
        super().__init__(len(factors), seed=seed, rank=rank, world_size=world_size)
        self.image_factors = factors
        self._whole = np.floor(factors).astype(np.int64)
        self._fraction = factors - self._whole
        if self._whole.sum() == 0 and not np.any(self._fraction > 0):
            raise ValueError("all repeat factors are 0: the sampler would draw nothing")

    def global_stream(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        repeats = self._whole + (rng.random(self.num_images) < self._fraction)
        indices = np.repeat(np.arange(self.num_images, dtype=np.int64), repeats)
        return indices[rng.permutation(len(indices))]


# Keys each sampler config may hold besides `name` (anything else is a typo: an error): the
# fields of its schema (lsdet.config_schema.sampler), also for a mapping Hydra did not compose.
SAMPLER_KEYS: dict[str, tuple[str, ...]] = {
    name: tuple(f.name for f in dataclasses.fields(schema) if f.name != "name")
    for name, schema in SAMPLER_SCHEMAS.items()
}


def check_sampler_config(cfg: Mapping[str, Any], where: str = "sampler") -> None:
    """Raise ValueError naming ``where`` if ``cfg`` is not a valid sampler config."""
    name = cfg.get("name")
    if name not in SAMPLER_KEYS:
        raise ValueError(f"{where}.name must be one of {sorted(SAMPLER_KEYS)}, got {name!r}")
    unknown = set(cfg.keys()) - {"name", *SAMPLER_KEYS[name]}
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {sorted(unknown)} for sampler {name!r}; "
            f"allowed: {list(SAMPLER_KEYS[name])}"
        )
    if name == "soft_balance" and cfg.get("lam") is None:
        raise ValueError(f"{where}.lam is required for the soft_balance sampler")
    if name == "repeat_factor" and cfg.get("repeat_threshold") is None:
        raise ValueError(f"{where}.repeat_threshold is required for the repeat_factor sampler")


def build_sampler(
    cfg: Mapping[str, Any],
    *,
    class_offsets: ArrayLike,
    class_images: ArrayLike,
    num_images: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    image_weights: ArrayLike | None = None,
) -> EpochSampler:
    """Build the sampler a config names (conf/sampler/*.yaml).

    Args:
        cfg: mapping with ``name`` in {sequential, class_aware, soft_balance, repeat_factor}
            and that sampler's keys (``lam``, ``num_samples``, ``repeat_threshold``).
        class_offsets, class_images: CSR of the image indices of each class
            (``AnnotationIndex.class_to_images()``); classes without images are never drawn.
        num_images: number of training images.
        seed: the same on every rank. rank, world_size: this process's shard.
        image_weights: for ``repeat_factor`` only: per-image repeat factors [num_images] to
            use instead of the ones computed from ``repeat_threshold``.
    """
    check_sampler_config(cfg)
    name = cfg["name"]
    common = {"seed": seed, "rank": rank, "world_size": world_size}
    if image_weights is not None and name != "repeat_factor":
        raise ValueError(f"image_weights is used by the repeat_factor sampler only, not {name!r}")
    if name == "sequential":
        return ShuffledEpochSampler(num_images, **common)
    if name in ("class_aware", "soft_balance"):
        lam = 1.0 if name == "class_aware" else cfg["lam"]
        sampler = SoftBalanceSampler(
            class_offsets,
            class_images,
            num_images,
            lam=lam,
            num_samples=cfg.get("num_samples"),
            **common,
        )
        sampler.name = name
        return sampler
    if image_weights is None:
        factors = repeat_factors(class_offsets, class_images, num_images, cfg["repeat_threshold"])
    else:
        factors = np.asarray(image_weights, dtype=np.float64)
        if factors.shape != (num_images,):
            raise ValueError(f"image_weights must have shape ({num_images},), got {factors.shape}")
    return RepeatFactorSampler(factors, **common)
