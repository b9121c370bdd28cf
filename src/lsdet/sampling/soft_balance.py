"""Soft-balance, the paper's second idea (section 3.2, eq. 6-8), in one place: the class
distribution P_s*, the sampler that draws images from it (class-aware sampling is lam = 1),
and the per-class loss weights P_s*/P_n that give the same balance inside the loss.

With n_i the number of training images containing class i, P_n(i) = n_i / sum(n) and
P_a(i) = 1 / C:

    P_s(i) = P_a(i)^lam * P_n(i)^(1 - lam),    P_s*(i) = P_s(i) / sum_j P_s(j).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

from lsdet.sampling.base import EpochSampler, check_csr


def soft_balance_probs(image_counts: ArrayLike, lam: float) -> np.ndarray:
    """P_s* of the paper's eq. 6-8: the soft-balance class-sampling distribution.

    With n_i the number of training images containing class i, P_n(i) = n_i / sum(n) and
    P_a(i) = 1 / C:

        P_s(i) = P_a(i)^lam * P_n(i)^(1 - lam),    P_s*(i) = P_s(i) / sum_j P_s(j).

    lam = 0 gives P_n (non-balance), lam = 1 the uniform distribution over the classes that
    have images (class-aware sampling), lam > 1 over-samples rare classes further. Classes
    with n_i = 0 get probability 0 (they cannot be drawn: they have no image). Because P_a is
    a constant it cancels, so P_s*(i) is proportional to n_i^(1 - lam); that is how it is
    computed here, in log space so that extreme counts and lam do not overflow.

    Args:
        image_counts: [C] non-negative image counts per class.
        lam: the balance exponent lambda >= 0.

    Returns:
        float64 [C], summing to 1.
    """
    counts = np.asarray(image_counts, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(f"image_counts must be a 1-D array [C], got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        bad = int(np.flatnonzero(~np.isfinite(counts) | (counts < 0))[0])
        raise ValueError(f"image_counts must be finite and >= 0; class {bad} has {counts[bad]!r}")
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    present = counts > 0
    if not np.any(present):
        raise ValueError("image_counts are all zero: no class has an image to sample")
    log_weights = np.full(counts.shape, -np.inf)
    log_weights[present] = (1.0 - lam) * np.log(counts[present])
    log_weights -= log_weights[present].max()
    probs = np.exp(log_weights)
    return probs / probs.sum()


def soft_balance_weights(
    image_counts: ArrayLike | torch.Tensor,
    lam: float,
    box_counts: ArrayLike | torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-balance loss weights: w_i proportional to P_s*(i) / P_n(i), the loss-level form of
    the paper's soft-balance (eq. 6-8; section 3.2).

    P_n(i) = n_i / sum(n) with n = image_counts, and P_s* is
    ``soft_balance_probs(image_counts, lam)``. Normalised to mean 1 over the
    training boxes (sum_i b_i w_i = sum_i b_i) when box_counts b is given, else to mean 1
    over the classes that have images. A class with no image gets weight 1 (it has no box
    to weight; a neutral weight keeps it harmless should it appear through label expansion).

    Args:
        image_counts: [C] number of training images containing each class.
        lam: the soft-balance exponent lambda >= 0 (0 = all weights 1).
        box_counts: [C] number of training boxes of each class, or None.

    Returns:
        float32 [C], over the same classes as image_counts (no background column; the losses'
        ``class_weights`` prepends the background's weight of 1).
    """
    counts = np.asarray(_as_numpy(image_counts), dtype=np.float64)
    probs = soft_balance_probs(counts, lam)  # validates counts and lam
    present = counts > 0
    weights = np.ones_like(counts)
    natural = counts[present] / counts.sum()
    weights[present] = probs[present] / natural
    if box_counts is not None:
        boxes = np.asarray(_as_numpy(box_counts), dtype=np.float64)
        if boxes.shape != counts.shape:
            raise ValueError(
                f"box_counts must have image_counts' shape {counts.shape}, got {boxes.shape}"
            )
        if np.any(boxes < 0) or boxes[present].sum() <= 0:
            raise ValueError("box_counts must be >= 0 with at least one box in a class with images")
        weights[present] /= (boxes[present] * weights[present]).sum() / boxes[present].sum()
    else:
        weights[present] /= weights[present].mean()
    return torch.as_tensor(weights, dtype=torch.float32)


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
        self.class_offsets, self.class_images = check_csr(class_offsets, class_images, num_images)
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


def _as_numpy(values: ArrayLike | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
