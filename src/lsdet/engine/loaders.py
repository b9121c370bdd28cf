"""Everything the training loop needs from a data config (conf/data/*.yaml), built once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lsdet.data import Hierarchy


@dataclass
class TrainingData:
    """The class hierarchy, the training and validation datasets and the training statistics.

    ``class_offsets``/``class_images`` are the CSR lists of training images per class (the
    samplers' input); ``image_counts``/``box_counts`` are per class [C] on the training split,
    as annotated (the samplers' and loss weightings' n_i); ``expanded_image_counts`` counts
    an image for a class when it holds the class or a descendant (what reports call the
    class's frequency: a parent is as frequent as its leaves together).
    ``val_gt`` is the evaluator's ground truth of the validation split (expanded to the
    hierarchy as the Open Images metric does).
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

    @property
    def num_classes(self) -> int:
        """C, the number of classes (background excluded)."""
        return self.hierarchy.num_classes

    @property
    def num_train_images(self) -> int:
        return len(self.train_set)


def build_training_data(
    data_cfg: Any, *, hflip_prob: float = 0.5, generate_if_missing: bool = True
) -> TrainingData:
    """Open (and for the synthetic benchmark, generate when missing) the data a config names.
    ``hflip_prob`` is the training split's horizontal-flip probability."""
    from lsdet.data import AnnotationIndex
    from lsdet.data.dataset import OpenImagesDetection, collate_fn
    from lsdet.data.formats import read_class_descriptions
    from lsdet.evaluation import load_ground_truth, load_hierarchy

    if data_cfg.get("generate") is not None and generate_if_missing:
        from lsdet.data.synth import ensure_synthetic_benchmark

        ensure_synthetic_benchmark(data_cfg)
    for key in ("hierarchy_json", "class_descriptions_csv"):
        if not Path(str(data_cfg[key])).is_file():
            raise FileNotFoundError(f"data.{key}: no file at {data_cfg[key]}")
    # The descriptions file selects the classes (e.g. the 500 Challenge classes).
    hierarchy = load_hierarchy(data_cfg.hierarchy_json, data_cfg.class_descriptions_csv)
    descriptions = read_class_descriptions(data_cfg.class_descriptions_csv)
    class_names = [descriptions.get(mid, mid) for mid in hierarchy.mids]
    strict = bool(data_cfg.get("strict", True))
    cache_dir = Path(str(data_cfg.cache_dir))

    def split(name: str, train: bool) -> Dataset:
        files = data_cfg[name]
        index = AnnotationIndex.build_or_open(
            files.bbox_csv,
            hierarchy,
            cache_dir / name,
            image_labels_csv=files.image_labels_csv,
            strict=strict,
        )
        return OpenImagesDetection(
            index,
            hierarchy,
            files.image_dir,
            image_size=data_cfg.get("image_size"),
            hflip_prob=hflip_prob if train else 0.0,
            strict=strict,
        )

    train_set = split("train", True)
    val_set = split("val", False)
    index = train_set.index
    class_offsets, class_images = index.class_to_images()
    class_offsets = np.asarray(class_offsets)
    class_images = np.asarray(class_images)
    val_gt = load_ground_truth(
        hierarchy,
        data_cfg.val.bbox_csv,
        data_cfg.val.image_labels_csv,
        strict=strict,
    )
    return TrainingData(
        hierarchy=hierarchy,
        class_names=class_names,
        train_set=train_set,
        val_set=val_set,
        class_offsets=class_offsets,
        class_images=class_images,
        image_counts=np.asarray(index.class_image_counts()),
        box_counts=np.asarray(index.class_box_counts()),
        expanded_image_counts=index.class_image_counts_with_descendants(hierarchy.descendants),
        val_gt=val_gt,
        collate_fn=collate_fn,
    )


def concurrent_rates(data_cfg: Any, rates_cfg: Any, hierarchy: Hierarchy) -> torch.Tensor:
    """The [C+1, C+1] concurrent-rate matrix of the training boxes (row/col 0 background),
    columns in ``hierarchy.mids`` order."""
    from lsdet.data.rates import estimate_concurrent_rates

    rates, mids = estimate_concurrent_rates(
        data_cfg.train.bbox_csv,
        data_cfg.hierarchy_json,
        iou_threshold=float(rates_cfg.iou_threshold),
        floor=float(rates_cfg.floor),
        hierarchy_rate=float(rates_cfg.hierarchy_rate),
        subset_mids=list(hierarchy.mids),
        strict=bool(data_cfg.get("strict", True)),
        progress=False,
    )
    if list(mids) != list(hierarchy.mids):
        raise ValueError("concurrent rates came back in a different class order")
    return torch.as_tensor(np.asarray(rates), dtype=torch.float32)


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
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
