"""Benchmark: training images per second the DataLoader delivers at Open Images size.

Writes ``--images`` JPEGs of ``--size`` (default 1024x768, the typical Open Images training
image; quality 90, smooth gradients with shapes and mild noise, about 100-200 KB each like a
photo) into a temporary folder, then reads them as lsdet's training set does
(``OpenImagesDetection.load_image``: PIL decode, RGB, uint8 [3, H, W] tensor; a horizontal
flip with probability 0.5), batched as lists like the detector's collate, with 0, 1, 2, 4 ...
DataLoader workers. Printed: images/s per worker count, beside a detector's consumption
(``--consumption`` images/s, e.g. from ``python -m lsdet.bench.detector``): the input pipeline
keeps up when it delivers at least that.

    python -m lsdet.bench.input_pipeline                       # 256 images, workers 0..cores
    python -m lsdet.bench.input_pipeline --workers 0,2,8 --consumption 25
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset


def write_jpegs(
    folder: Path, count: int, size: tuple[int, int] = (1024, 768), seed: int = 0
) -> list[Path]:
    """``count`` photo-like JPEGs of ``size`` (width, height) in ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for k in range(count):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.15, 0.15, (2, 3))
        pixels = base + xs[..., None] * slope[0] + ys[..., None] * slope[1]
        pixels += rng.normal(0, 6, (height, width, 3))  # sensor noise: JPEG sizes of photos
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.uniform(0, width * 0.8), rng.uniform(0, height * 0.8)
            x1 = x0 + rng.uniform(0.05, 0.4) * width
            y1 = y0 + rng.uniform(0.05, 0.4) * height
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            else:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
        path = folder / f"{k:06d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


class JpegFolder(Dataset):
    """The JPEGs of a folder, decoded as the training set decodes its images."""

    def __init__(self, paths: list[Path], hflip_prob: float = 0.5) -> None:
        if not paths:
            raise ValueError("JpegFolder: no image paths given")
        self.paths = list(paths)
        self.hflip_prob = hflip_prob

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            pixels = np.array(image.convert("RGB"))
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        if torch.rand(()) < self.hflip_prob:
            tensor = tensor.flip(-1)
        return tensor


def _as_list(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return batch


def loader_images_per_s(
    paths: list[Path], num_workers: int, batch_size: int = 2, epochs: int = 1
) -> float:
    """Images per second one DataLoader delivers over ``epochs`` passes over ``paths``
    (worker start-up included, as at the start of every training epoch)."""
    loader = DataLoader(
        JpegFolder(paths),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=_as_list,
        generator=torch.Generator().manual_seed(0),
    )
    delivered = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            delivered += len(batch)
    return delivered / (time.perf_counter() - start)


def default_worker_counts(cores: int | None = None) -> list[int]:
    """0, 1, 2, 4, ... up to the machine's cores (the cores themselves included)."""
    cores = cores or os.cpu_count() or 1
    counts = [0]
    k = 1
    while k < cores:
        counts.append(k)
        k *= 2
    counts.append(cores)
    return counts


def run(
    images: int = 256,
    size: tuple[int, int] = (1024, 768),
    worker_counts: list[int] | None = None,
    batch_size: int = 2,
    folder: Path | None = None,
) -> list[dict]:
    """One row per worker count: images/s, and the JPEGs' mean size in KB."""
    worker_counts = worker_counts if worker_counts is not None else default_worker_counts()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(folder or tmp), images, size)
        mean_kb = float(np.mean([p.stat().st_size for p in paths])) / 1e3
        loader_images_per_s(paths[: max(batch_size, 8)], 0, batch_size)  # warm the page cache
        return [
            {
                "workers": workers,
                "images_per_s": loader_images_per_s(paths, workers, batch_size),
                "image_size": f"{size[0]}x{size[1]}",
                "jpeg_kb": mean_kb,
            }
            for workers in worker_counts
        ]


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1024x768") from None
    return width, height


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m lsdet.bench.input_pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--images", type=int, default=256, help="JPEGs to write and read")
    parser.add_argument("--size", type=parse_size, default=(1024, 768), help="WIDTHxHEIGHT")
    parser.add_argument(
        "--workers",
        type=lambda t: [int(v) for v in t.split(",")],
        help="comma-separated DataLoader worker counts (default 0, 1, 2, 4, ... cores)",
    )
    parser.add_argument("--batch", type=int, default=2, help="images per batch")
    parser.add_argument(
        "--consumption", type=float, help="the detector's training images/s, for comparison"
    )
    args = parser.parse_args(argv)
    rows = run(args.images, args.size, args.workers, args.batch)
    print(
        f"DataLoader, {args.images} JPEGs of {rows[0]['image_size']} ({rows[0]['jpeg_kb']:.0f} KB)"
    )
    print(f"{'workers':>7s} {'images/s':>9s}" + ("  vs detector" if args.consumption else ""))
    for row in rows:
        line = f"{row['workers']:7d} {row['images_per_s']:9.1f}"
        if args.consumption:
            line += f"  {row['images_per_s'] / args.consumption:.2f}x"
        print(line)
    return rows


if __name__ == "__main__":
    main()
