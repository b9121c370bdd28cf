"""The base of lsdet's epoch samplers over training images.

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


def check_csr(class_offsets: ArrayLike, class_images: ArrayLike, num_images: int):
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
