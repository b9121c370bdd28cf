"""Epoch samplers over training images: sequential, class-aware / soft-balance, repeat-factor.

Every sampler draws one *global stream* of image indices per epoch from a numpy Generator
seeded with (seed, epoch), so the stream is the same on every rank and in every run. In a
distributed run rank r of w takes ``padded[r::w]`` where ``padded`` is the global stream
extended, when its length is not a multiple of w, by repeating its first indices (as
torch's DistributedSampler does). So every rank yields the same number of indices, the
shards are disjoint slices of one stream, and their union is the single-process stream plus
at most w - 1 repeated indices at its end; with one process nothing is padded.

Resuming: ``state_dict()`` holds the epoch and how many indices of this rank's shard were
already yielded; ``load_state_dict`` makes the next iteration continue with exactly the
indices an uninterrupted run would have drawn. A DataLoader with workers fetches ahead of
the training step, so a training loop that saves mid-epoch should store the number of
samples it *consumed*: ``{"epoch": e, "num_yielded": batches_done * batch_size, ...}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch.utils.data
from numpy.typing import ArrayLike

from lsdet.sampling.probs import soft_balance_probs


class EpochSampler(torch.utils.data.Sampler[int]):
    """Base class: per-epoch global stream, rank sharding, resumable position.

    Subclasses implement ``global_stream(epoch)``. Call ``set_epoch(epoch)`` before each
    epoch (a DataLoader does not). Calling it with the epoch the sampler is already at keeps
    a resumed position, so the usual ``load_state_dict(...); set_epoch(saved_epoch)`` works.
    """

    name = "base"

    def __init__(self, num_images: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if num_images <= 0:
            raise ValueError(f"num_images must be > 0, got {num_images}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self._position = 0  # indices of this rank's shard already yielded in self.epoch
        self._cached_epoch: int | None = None
        self._cached_stream: np.ndarray | None = None

    def global_stream(self, epoch: int) -> np.ndarray:
        """All image indices (int64) of ``epoch`` in draw order, as a single process sees them."""
        raise NotImplementedError

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def _stream(self, epoch: int) -> np.ndarray:
        if self._cached_epoch != epoch:
            self._cached_stream = self.global_stream(epoch)
            self._cached_epoch = epoch
        return self._cached_stream

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's indices of ``epoch``: ``padded_global_stream[rank::world_size]``."""
        stream = self._stream(epoch)
        per_rank = -(-len(stream) // self.world_size)
        padded = np.resize(stream, per_rank * self.world_size)  # cyclic: repeats the head
        return padded[self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._position = 0

    def __len__(self) -> int:
        """Indices this rank yields in a full pass of the current epoch."""
        return -(-len(self._stream(self.epoch)) // self.world_size)

    def __iter__(self) -> Iterator[int]:
        shard = self.shard(self.epoch)
        if self._position > len(shard):
            raise ValueError(
                f"sampler position {self._position} is past the end of epoch {self.epoch} "
                f"({len(shard)} indices on this rank): a state_dict from another setup?"
            )
        if self._position == len(shard):  # a finished epoch iterated again: replay it
            self._position = 0
        for index in shard[self._position :].tolist():
            self._position += 1
            yield index

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "epoch": self.epoch,
            "num_yielded": self._position,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("name", "seed", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]!r} but this sampler has "
                    f"{key}={getattr(self, key)!r}; the stream would not continue"
                )
        self.epoch = int(state["epoch"])
        self._position = int(state["num_yielded"])
        if self._position < 0:
            raise ValueError(f"sampler state num_yielded must be >= 0, got {self._position}")


class SequentialSampler(EpochSampler):
    """Every image once per epoch, in a fresh random order (the paper's non-balance sampling)."""

    name = "sequential"

    def global_stream(self, epoch: int) -> np.ndarray:
        return self._rng(epoch).permutation(self.num_images)


def _check_csr(class_offsets: ArrayLike, class_images: ArrayLike, num_images: int):
    offsets = np.asarray(class_offsets, dtype=np.int64)
    images = np.asarray(class_images)
    if offsets.ndim != 1 or len(offsets) < 2:
        raise ValueError(f"class_offsets must be 1-D [C+1] with C >= 1, got shape {offsets.shape}")
    if images.ndim != 1 or not np.issubdtype(images.dtype, np.integer):
        raise ValueError(
            f"class_images must be a 1-D integer array, got {images.dtype} {images.shape}"
        )
    if offsets[0] != 0 or offsets[-1] != len(images) or np.any(np.diff(offsets) < 0):
        raise ValueError(
            "class_offsets must start at 0, never decrease and end at len(class_images) "
            f"({len(images)}); got first {offsets[0]}, last {offsets[-1]}"
        )
    if len(images) and (images.min() < 0 or images.max() >= num_images):
        raise ValueError(
            f"class_images must lie in [0, num_images={num_images}); "
            f"got range [{images.min()}, {images.max()}]"
        )
    return offsets, images


class SoftBalanceSampler(EpochSampler):
    """Draw a class from P_s* (eq. 6-8), then one of its images uniformly; ``num_samples`` draws.

    ``lam = 1`` is class-aware sampling, ``lam = 0`` reproduces the image-count distribution
    P_n. Classes without images have probability 0. Draws are with replacement and
    vectorised: all classes at once, then uniform offsets into the flat CSR image array.
    """

    name = "soft_balance"

    def __init__(
        self,
        class_offsets: ArrayLike,
        class_images: ArrayLike,
        num_images: int,
        *,
        lam: float,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(num_images, seed=seed, rank=rank, world_size=world_size)
        self.class_offsets, self.class_images = _check_csr(class_offsets, class_images, num_images)
        self.class_counts = np.diff(self.class_offsets)
        self.lam = float(lam)
        self.class_probs = soft_balance_probs(self.class_counts, self.lam)
        self._class_cdf = np.cumsum(self.class_probs)
        self._last_drawable_class = int(np.flatnonzero(self.class_probs > 0)[-1])
        self.num_samples = self.num_images if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be > 0, got {self.num_samples}")

    def draw(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The global stream of ``epoch`` with the class each image was drawn for.

        Returns (classes int64 [num_samples], images int64 [num_samples]).
        """
        rng = self._rng(epoch)
        # Inverse-CDF class draw; a class with probability 0 has an empty CDF interval.
        u = rng.random(self.num_samples) * self._class_cdf[-1]
        classes = np.searchsorted(self._class_cdf, u, side="right")
        # u rounded up to the total would land past the end: give it to the last drawable class.
        np.minimum(classes, self._last_drawable_class, out=classes)
        counts = self.class_counts[classes]
        offsets = (rng.random(self.num_samples) * counts).astype(np.int64)
        np.minimum(offsets, counts - 1, out=offsets)  # guards the float round-up to counts
        images = self.class_images[self.class_offsets[classes] + offsets].astype(np.int64)
        return classes.astype(np.int64), images

    def global_stream(self, epoch: int) -> np.ndarray:
        return self.draw(epoch)[1]


def repeat_factors(
    class_offsets: ArrayLike, class_images: ArrayLike, num_images: int, repeat_threshold: float
) -> np.ndarray:
    """Per-image repeat factors of detectron2's repeat-factor sampling (LVIS, Gupta et al.).

    f(c) = fraction of images containing class c, r(c) = max(1, sqrt(t / f(c))), and an
    image's factor is the max of r(c) over its classes (1 for an image without classes).
    Returns float64 [num_images].
    """
    offsets, images = _check_csr(class_offsets, class_images, num_images)
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


# Keys each sampler config may hold besides `name` (anything else is a typo: an error).
SAMPLER_KEYS: dict[str, tuple[str, ...]] = {
    "sequential": (),
    "class_aware": ("num_samples",),
    "soft_balance": ("lam", "num_samples"),
    "repeat_factor": ("repeat_threshold",),
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
        return SequentialSampler(num_images, **common)
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
