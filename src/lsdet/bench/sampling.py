"""Benchmark: draw one Open Images sized epoch with each sampler.

Open Images V4-V6 train: about 1.74M images, 500 detection classes and some 12M
image-class pairs (an image lists several classes), with class sizes spread over orders of
magnitude. The synthetic index here has those totals and class sizes on a curved power law
fitted to the real per-class counts (see ``class_sizes``). The figure is the time to draw one
epoch's global stream (``global_stream``), beside ``numpy.random.permutation`` of the same
length (the floor: a sampler cannot do much less than one random pass). Also timed: building
the sampler, and handing one rank's indices out as Python ints (what iterating it costs).

    python -m lsdet.bench.sampling                 # Open Images size
    python -m lsdet.bench.sampling --small         # 100k images, 50 classes, 600k pairs
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

from lsdet.sampling import build_sampler


def class_sizes(num_classes: int, num_pairs: int, num_images: int, seed: int = 0) -> np.ndarray:
    """Images per class, heavy-tailed like Open Images, summing to about ``num_pairs``.

    A curved power law in the class rank r (log n_r = -0.060 log r - 0.205 log^2 r + const,
    ranks rescaled to 1..500): the least-squares fit to the real Challenge 2019 training box
    counts per class (local log-log slope about 0.8 at the head, 2 in the tail; at 500 classes
    and 12M pairs it gives 1.08M, 317k, 37k, 10.6k, 1.5k images at ranks 1, 10, 50, 100, 250).
    Capped at half the images, at least 1. Returned in random class order.
    """
    log_rank = np.log(np.arange(1, num_classes + 1) * 500.0 / num_classes)
    shape = np.exp(-0.060 * log_rank - 0.205 * log_rank**2)
    cap = max(1, num_images // 2)
    scale = num_pairs / shape.sum()
    for _ in range(50):  # re-scale so the capped sizes still sum to num_pairs
        sizes = np.clip(np.round(scale * shape), 1, cap)
        if sizes.sum() >= num_pairs or np.all(sizes == cap):
            break
        scale *= num_pairs / sizes.sum()
    return np.random.default_rng(seed).permutation(sizes.astype(np.int64))


def synthetic_class_index(
    num_images: int, num_classes: int, num_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets [C+1], image indices int32) with power-law class sizes."""
    rng = np.random.default_rng(seed)
    sizes = class_sizes(num_classes, num_pairs, num_images, seed=seed)
    lists = []
    for size in tqdm(sizes, desc="building class index", unit="class", leave=False):
        lists.append(np.sort(rng.choice(num_images, size=size, replace=False)).astype(np.int32))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return offsets, np.concatenate(lists)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=1_743_042)
    parser.add_argument("--num-classes", type=int, default=500)
    parser.add_argument("--num-pairs", type=int, default=12_000_000)
    parser.add_argument("--small", action="store_true", help="100k images, 50 classes, 600k")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (best is shown)")
    parser.add_argument("--world-size", type=int, default=8, help="for the per-rank row")
    args = parser.parse_args(argv)
    if args.small:
        args.num_images, args.num_classes, args.num_pairs = 100_000, 50, 600_000

    start = time.perf_counter()
    offsets, images = synthetic_class_index(args.num_images, args.num_classes, args.num_pairs)
    sizes = np.diff(offsets)
    print(
        f"index: {args.num_images:,} images, {args.num_classes} classes, {len(images):,} "
        f"image-class pairs; class sizes {sizes.min():,} .. {sizes.max():,} "
        f"(median {int(np.median(sizes)):,}); built in {time.perf_counter() - start:.1f} s"
    )
    n = args.num_images
    rng = np.random.default_rng(0)
    floor = best_time(lambda: rng.permutation(n), args.repeats)
    csr = {"class_offsets": offsets, "class_images": images, "num_images": n}
    configs = {
        "sequential": {"name": "sequential"},
        "class_aware": {"name": "class_aware", "num_samples": None},
        "soft_balance lam=0.7": {"name": "soft_balance", "lam": 0.7, "num_samples": None},
        "repeat_factor t=0.001": {"name": "repeat_factor", "repeat_threshold": 0.001},
    }
    header = f"{'sampler':<24}{'build s':>9}{'draws':>12}{'epoch s':>9}{'/ perm':>8}"
    header += f"{'rank ints s':>13}"
    print(f"\nnumpy.random.permutation({n:,}): {floor:.3f} s (best of {args.repeats})\n")
    print(header)
    print("-" * len(header))
    for label, cfg in configs.items():
        start = time.perf_counter()
        sampler = build_sampler(cfg, **csr)
        build = time.perf_counter() - start
        epoch = iter(range(1_000_000))  # a new epoch each repeat: nothing is cached
        draw = best_time(lambda s=sampler, e=epoch: s.global_stream(next(e)), args.repeats)
        length = len(sampler.global_stream(0))
        ranked = build_sampler(cfg, **csr, rank=0, world_size=args.world_size)
        ints = best_time(lambda r=ranked: r.shard(0).tolist(), args.repeats)
        print(
            f"{label:<24}{build:>9.3f}{length:>12,}{draw:>9.3f}{draw / floor:>7.1f}x{ints:>13.3f}"
        )
    print(
        f"\n'epoch s': one epoch's global stream (best of {args.repeats}); '/ perm': over "
        f"numpy.random.permutation of {n:,}; 'rank ints s': one of {args.world_size} ranks' "
        "shard as Python ints (cached stream)."
    )


if __name__ == "__main__":
    main()
