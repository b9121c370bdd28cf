"""DataLoaders of training and evaluation: items seeded by their position in the epoch (so a
run resumed mid-epoch sees the data an uninterrupted run would have seen), evaluation shards,
and workers that leave SIGTERM/SIGINT to the main process."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lsdet.engine.signals import STOP_SIGNALS, ignore_stop_signals


class SeededSampler(Sampler[tuple[int, int]]):
    """Wraps an epoch sampler: yields (image index, seed), the seed a function of (seed, rank,
    epoch, position in the epoch). With :class:`SeededDataset` every item's augmentation draws
    from its own seed, so the data of a run resumed mid-epoch is the uninterrupted run's,
    whatever the number of DataLoader workers. ``start`` = items already consumed."""

    def __init__(self, sampler: Sampler[int], *, seed: int, rank: int, epoch: int, start: int):
        self.sampler = sampler
        self.base = ((int(seed) * 1_000_003 + int(rank)) * 1_000_033 + int(epoch)) * 10_000_019
        self.start = int(start)

    def __iter__(self):
        for position, index in enumerate(self.sampler, start=self.start):
            yield int(index), (self.base + position) % 2**63

    def __len__(self) -> int:
        return len(self.sampler)


class SeededDataset(Dataset):
    """Items ``(index, seed)``: the wrapped dataset's item drawn under ``torch.manual_seed(seed)``
    in a forked RNG (the caller's torch RNG is left as it was)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class ShardedSequence(Sampler[int]):
    """Indices rank, rank + world_size, ... of range(n): evaluation shards, in order."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    *,
    batch_size: int,
    num_workers: int,
    collate_fn: Any,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader with its own generator, so that creating an iterator never draws from the
    global torch RNG (a run resumed mid-epoch then sees the same random stream)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=ignore_stop_signals,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back while DataLoader workers are forked: a worker inherits the
    blocked mask, so a signal sent to the process group before its ``worker_init_fn`` runs
    cannot kill it; the main process receives the pending signal when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def open_batches(loader: DataLoader) -> Iterator[Iterator]:
    """``iter(loader)`` whose workers are started with the stop signals held back (see
    ``stop_signals_blocked``) and shut down when the block ends, also when the loop leaves
    the epoch early: an unfinished iterator would keep its workers until garbage collection,
    and workers that ignore SIGTERM could then not be terminated at exit."""
    with stop_signals_blocked():
        batches = iter(loader)
    try:
        yield batches
    finally:
        # DataLoader has no public call for this; a single-process iterator has nothing to stop.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
