"""Benchmark: the box head's post-processing, class-wise NMS cut to the per-image cap.

Side by side, on the same candidates of one image (``--proposals`` proposals x ``--classes``
classes; every (proposal, class) pair scoring above the threshold is a candidate):
  lsdet        ``lsdet.models.best_after_nms``: NMS over the best candidates only, grown until
               the cap survives
  torchvision  ``torchvision.ops.batched_nms`` over every candidate, then the first ``cap``
               (what torchvision's RoIHeads does)
Two settings: the inference defaults (score threshold 1e-4, 1,000 per image) and the
protocol check of ``make demo`` (threshold 0, 10,000 per image). Printed: ms per image (median,
timed by ``lsdet.bench.kernels.time_ms``, interleaved on CPU), the ratio torchvision / lsdet,
and whether both keep the same candidates with the same scores in the same order (candidates
of equal score may come in another order: neither sort is stable).

    python -m lsdet.bench.postprocess                  # Open Images: 1,000 proposals, 500 classes
    python -m lsdet.bench.postprocess --classes 144    # the synthetic benchmark's classes
"""

from __future__ import annotations

import argparse

import torch
from torchvision.ops import batched_nms

from lsdet.bench.kernels import time_ms
from lsdet.models import best_after_nms

SETTINGS = ((1e-4, 1_000), (0.0, 10_000))  # (score threshold, detections per image)
NMS_IOU = 0.5


def synthetic_candidates(
    num_proposals: int, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes [P*C, 4], scores [P*C], labels [P*C]) as the box head hands them to NMS:
    proposals jittered around a few dozen objects of a 800 x 800 image, each proposal's box
    repeated for every class, scores a softmax over the classes that favours its object's
    class. Scores are distinct (continuous)."""
    generator = torch.Generator().manual_seed(seed)
    num_objects = 40
    corners = torch.rand(num_objects, 2, generator=generator) * 700
    sizes = 20 + torch.rand(num_objects, 2, generator=generator) * 180
    objects = torch.cat([corners, corners + sizes], dim=1)
    owner = torch.randint(0, num_objects, (num_proposals,), generator=generator)
    jitter = torch.randn(num_proposals, 4, generator=generator) * sizes[owner].repeat(1, 2) * 0.15
    boxes = objects[owner] + jitter
    boxes = torch.stack(
        [boxes[:, :2].min(boxes[:, 2:]), boxes[:, :2].max(boxes[:, 2:]) + 1], dim=1
    ).reshape(-1, 4)
    logits = torch.randn(num_proposals, num_classes, generator=generator) * 2
    object_class = torch.randint(0, num_classes, (num_objects,), generator=generator)
    logits[torch.arange(num_proposals), object_class[owner]] += 8
    scores = logits.softmax(dim=1)
    labels = torch.arange(num_classes).repeat(num_proposals)
    return boxes.repeat_interleave(num_classes, dim=0), scores.reshape(-1), labels


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m lsdet.bench.postprocess", description=__doc__)
    parser.add_argument("--proposals", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    boxes, scores, labels = (
        t.to(args.device) for t in synthetic_candidates(args.proposals, args.classes)
    )
    print(
        f"one image: {args.proposals} proposals x {args.classes} classes, NMS IoU {NMS_IOU}, "
        f"{args.device}"
    )
    print(
        f"{'threshold':>9s} {'cap':>6s} {'candidates':>10s} {'torchvision ms':>14s} "
        f"{'lsdet ms':>9s} {'ratio':>6s}  same detections"
    )
    rows = []
    for threshold, cap in SETTINGS:
        keep = torch.where(scores > threshold)[0]
        b, s, lab = boxes[keep], scores[keep], labels[keep]
        methods = {
            "torchvision": lambda b=b, s=s, lab=lab, cap=cap: batched_nms(b, s, lab, NMS_IOU)[:cap],
            "lsdet": lambda b=b, s=s, lab=lab, cap=cap: best_after_nms(b, s, lab, NMS_IOU, cap),
        }
        timings = time_ms(methods, b.device.type, grad_to_none=[])
        baseline_ms, lsdet_ms = timings["torchvision"][0], timings["lsdet"][0]
        expected, kept = methods["torchvision"](), methods["lsdet"]()
        row = {
            "score_thresh": threshold,
            "cap": cap,
            "candidates": len(keep),
            "torchvision_ms": baseline_ms,
            "lsdet_ms": lsdet_ms,
            "ratio": baseline_ms / lsdet_ms,
            "same": bool(
                torch.equal(kept.sort().values, expected.sort().values)
                and torch.equal(s[kept], s[expected])
            ),
        }
        rows.append(row)
        print(
            f"{threshold:9g} {cap:6d} {row['candidates']:10d} {baseline_ms:14.1f} "
            f"{lsdet_ms:9.1f} {row['ratio']:5.1f}x  {row['same']}"
        )
    return rows


if __name__ == "__main__":
    main()
