"""Benchmark: training throughput of lsdet's detector against torchvision's reference detector.

Side by side, on the same random batches (``--batch`` images of ``--size`` px, 3 boxes each):
  lsdet        ``lsdet.models.build_detector`` with conf/model/<--model>.yaml (default the
               paper's ResNet-50-FPN: timm resnet50 + FPN + the multi-label RoI head) and the
               softmax loss of ``lsdet.losses`` over ``--num-classes`` classes
  torchvision  ``torchvision.models.detection.fasterrcnn_resnet50_fpn`` (random weights), the
               detector of torchvision's references/detection
Both run min_size = max_size = --size, SGD (lr 0.02, momentum 0.9), AMP on CUDA with --amp.
Printed: images/s of full training steps (forward, backward, optimizer step; median over
--iters after --warmup), peak memory on CUDA, and the ratio lsdet / torchvision.

    python -m lsdet.bench.detector                         # GPU: 800 px, batch 2, 30 iterations
    python -m lsdet.bench.detector --size 256 --iters 3    # a CPU-sized check
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchvision
from hydra import compose, initialize_config_dir

from lsdet.losses import build_loss
from lsdet.models import build_detector

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def random_batch(batch: int, size: int, num_fg: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=generator).to(device))
        corner = torch.rand(3, 2, generator=generator) * size * 0.6
        extent = size * (0.1 + 0.3 * torch.rand(3, 2, generator=generator))
        boxes = torch.cat([corner, corner + extent], dim=1).clamp(max=size - 1)
        labels = torch.randint(1, num_fg + 1, (3,), generator=generator)
        multilabels = torch.zeros(3, num_fg)
        multilabels[torch.arange(3), labels - 1] = 1
        targets.append(
            {
                "boxes": boxes.to(device),
                "labels": labels.to(device),
                "multilabels": multilabels.to(device),
            }
        )
    return images, targets


def lsdet_detector(model_name: str, size: int, num_classes: int) -> torch.nn.Module:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}"]).model
    cfg.min_size = cfg.max_size = size
    if cfg.backbone.norm == "sync_bn":
        cfg.backbone.norm = "bn"  # one process
    loss = build_loss("softmax", num_classes=num_classes)
    return build_detector(cfg, num_classes=num_classes, loss_fn=loss)


def torchvision_detector(size: int, num_classes: int) -> torch.nn.Module:
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=size, max_size=size
    )


def time_training(
    model: torch.nn.Module, batch, device: torch.device, *, iters: int, warmup: int, amp: bool
) -> tuple[float, float]:
    """(median seconds per step, peak CUDA memory in GiB or NaN)."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    images, targets = batch
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m lsdet.bench.detector", description=__doc__)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--model", default="resnet50_fpn", help="a conf/model/*.yaml name")
    parser.add_argument("--size", type=int, default=None, help="image side (800 on GPU)")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (30 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (5 GPU, 1 CPU)")
    parser.add_argument("--num-classes", type=int, default=501, help="classes incl. background")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    args = parser.parse_args(argv)

    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    on_gpu = device.type == "cuda"
    size = args.size or (800 if on_gpu else 256)
    iters = args.iters or (30 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    batch = random_batch(args.batch, size, args.num_classes - 1, device)
    where = (
        torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"training steps, {args.batch} x {size} px, {args.num_classes} classes, "
        f"{iters} timed after {warmup} warm-up, amp={args.amp and on_gpu}, on {where}"
    )
    rows = []
    for name, build in (
        (f"lsdet {args.model}", lambda: lsdet_detector(args.model, size, args.num_classes)),
        (
            "torchvision fasterrcnn_resnet50_fpn",
            lambda: torchvision_detector(size, args.num_classes),
        ),
    ):
        torch.manual_seed(0)
        seconds, peak = time_training(
            build(), batch, device, iters=iters, warmup=warmup, amp=args.amp
        )
        rows.append({"model": name, "images_per_s": args.batch / seconds, "peak_gib": peak})
        if on_gpu:
            torch.cuda.empty_cache()
    print(f"{'model':40s} {'images/s':>10s} {'peak GiB':>9s}")
    for row in rows:
        print(f"{row['model']:40s} {row['images_per_s']:10.2f} {row['peak_gib']:9.2f}")
    ratio = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    print(f"lsdet / torchvision throughput: {ratio:.2f}x")
    return rows


if __name__ == "__main__":
    main()
