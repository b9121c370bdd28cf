"""Samplers and class weights against float64 transcriptions of their public references:
detectron2's repeat factors, Cui et al.'s effective-number weights, mmdetection's
ClassAwareSampler, and the soft-balance distribution of the paper's eq. 6-8. Each reference
is restated in its own words with the repository and file it comes from; where lsdet
deliberately differs, the test pins the difference."""

import math

import numpy as np
import pytest

from lsdet.losses import class_weights, effective_number_weights
from lsdet.sampling import build_sampler, repeat_factors, soft_balance_probs, soft_balance_weights


def long_tail_dataset(num_images=300, num_classes=25, seed=0):
    """Per-image class sets with Zipf-like class frequencies; some images have no class and
    the last class has none (it must never be drawn nor weighted)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_classes + 1) ** 1.3
    popularity[-1] = 0.0
    images = []
    for _ in range(num_images):
        size = rng.integers(0, 4)
        picked = rng.choice(num_classes, size=size, replace=False, p=popularity / popularity.sum())
        images.append(sorted(set(picked.tolist())))
    return images


def to_csr(images, num_classes):
    """class_offsets [C+1], class_images: the images of each class (AnnotationIndex's CSR)."""
    per_class = [
        [i for i, classes in enumerate(images) if c in classes] for c in range(num_classes)
    ]
    offsets = np.concatenate([[0], np.cumsum([len(members) for members in per_class])])
    flat = np.array([i for members in per_class for i in members], dtype=np.int64)
    return offsets, flat


# --- detectron2 detectron2/data/samplers/distributed_sampler.py ----------------------------
# RepeatFactorTrainingSampler.repeat_factors_from_category_frequency (LVIS, Gupta et al.)


def detectron2_repeat_factors(images, repeat_thresh):
    """f(c) = share of the images containing c; r(c) = max(1, sqrt(t / f(c))); an image's
    factor is the max r(c) over its categories, 1 for an image without any."""
    frequency = {}
    for classes in images:
        for c in set(classes):
            frequency[c] = frequency.get(c, 0) + 1
    frequency = {c: n / len(images) for c, n in frequency.items()}
    category_repeat = {c: max(1.0, math.sqrt(repeat_thresh / f)) for c, f in frequency.items()}
    return np.array([max((category_repeat[c] for c in classes), default=1.0) for classes in images])


@pytest.mark.parametrize("threshold", [0.001, 0.03, 0.3, 1.0])
def test_repeat_factors_match_detectron2(threshold):
    num_classes = 25
    images = long_tail_dataset(num_classes=num_classes)
    offsets, flat = to_csr(images, num_classes)
    ours = repeat_factors(offsets, flat, len(images), threshold)
    reference = detectron2_repeat_factors(images, threshold)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=0)
    if threshold >= 0.03:
        assert ours.max() > 1.0  # the rare classes are repeated


def test_repeat_factor_sampler_rounds_like_detectron2():
    # detectron2's _get_epoch_indices: each image floor(r) times plus once more with
    # probability frac(r). lsdet draws the extra repeat from numpy's generator seeded with
    # (seed, epoch) (a convention: detectron2 uses a torch generator), so only the rule is
    # compared: counts in {floor(r), floor(r) + 1}, mean count r.
    num_classes = 25
    images = long_tail_dataset(num_classes=num_classes)
    offsets, flat = to_csr(images, num_classes)
    sampler = build_sampler(
        {"name": "repeat_factor", "repeat_threshold": 0.1},
        class_offsets=offsets,
        class_images=flat,
        num_images=len(images),
    )
    factors = detectron2_repeat_factors(images, 0.1)
    epochs = 400
    totals = np.zeros(len(images))
    for epoch in range(epochs):
        counts = np.bincount(sampler.global_stream(epoch), minlength=len(images))
        assert np.all((counts == np.floor(factors)) | (counts == np.floor(factors) + 1))
        totals += counts
    fraction = factors - np.floor(factors)
    spread = np.sqrt(fraction * (1 - fraction) / epochs)
    assert np.all(np.abs(totals / epochs - factors) <= 5 * spread + 1e-12)


# --- Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019 -----
# (richardaecn/class-balanced-loss: weights (1 - beta) / (1 - beta^n), normalised to sum to
# the number of classes)


def cui_weights(counts, beta):
    effective_number = 1.0 - np.power(beta, counts)
    weights = (1.0 - beta) / effective_number
    return weights / weights.sum() * len(counts)


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_effective_number_weights_are_cui_up_to_the_box_normalisation(beta):
    counts = np.array([5000.0, 1200.0, 300.0, 40.0, 7.0, 1.0])
    ours = effective_number_weights(counts, beta).double().numpy()
    reference = cui_weights(counts, beta)
    # the same relative weights: lsdet = Cui x one constant ...
    scale = ours / reference
    np.testing.assert_allclose(scale, np.full_like(scale, scale[0]), rtol=1e-6)
    # ... chosen so that the mean weight over the samples is 1 (sum n w = sum n; the
    # normalisation lsdet documents: the foreground keeps its share against the background's
    # weight 1), where Cui et al. make the mean over the classes 1
    np.testing.assert_allclose((counts * ours).sum(), counts.sum(), rtol=1e-6)
    np.testing.assert_allclose(reference.mean(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(scale[0], counts.sum() / (counts * reference).sum(), rtol=1e-6)


def test_effective_number_conventions_are_pinned():
    # A class without samples: Cui's weight is (1 - beta) / 0 (infinite); lsdet gives it 1
    # and leaves it out of the normalisation.
    counts = np.array([100.0, 0.0, 10.0])
    ours = effective_number_weights(counts, 0.99).double().numpy()
    assert ours[1] == 1.0
    present = np.array([100.0, 10.0])
    np.testing.assert_allclose(
        ours[[0, 2]], effective_number_weights(present, 0.99).double().numpy(), rtol=1e-7
    )
    # the loss's class weights use the boxes when given, the images otherwise; background 1
    images = np.array([50.0, 20.0, 5.0])
    boxes = np.array([400.0, 60.0, 5.0])
    by_boxes = class_weights("effective_number", image_counts=images, box_counts=boxes).numpy()
    assert by_boxes[0] == 1.0
    np.testing.assert_allclose(
        by_boxes[1:], effective_number_weights(boxes, 0.999).numpy(), rtol=1e-7
    )


# --- mmdetection mmdet/datasets/samplers/class_aware_sampler.py (ClassAwareSampler) --------


def mmdetection_class_aware_marginals(offsets, flat, num_images):
    """Classes are visited in reshuffled cycles over the classes that have images, and each
    visit takes the next image of that class's reshuffled cycle: in the long run every such
    class is drawn with probability 1 / (classes with images) and each of its images with
    1 / (its images). Returns (class probabilities [C], image probabilities [num_images])."""
    counts = np.diff(offsets)
    drawable = counts > 0
    class_probs = np.where(drawable, 1.0 / drawable.sum(), 0.0)
    image_probs = np.zeros(num_images)
    for c in np.flatnonzero(drawable):
        for image in flat[offsets[c] : offsets[c + 1]]:
            image_probs[image] += class_probs[c] / counts[c]
    return class_probs, image_probs


def test_class_aware_sampler_matches_mmdetection_marginals():
    num_classes = 25
    images = long_tail_dataset(num_classes=num_classes)
    offsets, flat = to_csr(images, num_classes)
    samples = 60000
    sampler = build_sampler(
        {"name": "class_aware", "num_samples": samples},
        class_offsets=offsets,
        class_images=flat,
        num_images=len(images),
    )
    class_probs, image_probs = mmdetection_class_aware_marginals(offsets, flat, len(images))
    np.testing.assert_allclose(sampler.class_probs, class_probs, rtol=1e-12, atol=0)
    # lsdet's per-image probability: its class probability over the class's images
    counts = np.diff(offsets)
    ours = np.zeros(len(images))
    for c in np.flatnonzero(counts):
        np.add.at(ours, flat[offsets[c] : offsets[c + 1]], sampler.class_probs[c] / counts[c])
    np.testing.assert_allclose(ours, image_probs, rtol=1e-12, atol=1e-15)
    # and what it draws follows them
    classes, drawn = sampler.draw(0)
    assert not np.any(classes == num_classes - 1)  # the class without images
    frequency = np.bincount(drawn, minlength=len(images)) / samples
    spread = np.sqrt(image_probs * (1 - image_probs) / samples)
    assert np.all(np.abs(frequency - image_probs) <= 5 * spread + 1e-12)


def test_class_aware_draws_are_independent_not_cycles():
    # Convention: lsdet draws classes independently (with replacement); mmdetection visits
    # the classes in reshuffled cycles, so each window of (classes with images) consecutive
    # draws holds every class once. The marginals agree (above); the sequences do not.
    num_classes = 25
    images = long_tail_dataset(num_classes=num_classes)
    offsets, flat = to_csr(images, num_classes)
    drawable = int((np.diff(offsets) > 0).sum())
    sampler = build_sampler(
        {"name": "class_aware", "num_samples": 20 * drawable},
        class_offsets=offsets,
        class_images=flat,
        num_images=len(images),
    )
    classes, _ = sampler.draw(0)
    windows = classes.reshape(20, drawable)
    assert any(len(set(window.tolist())) < drawable for window in windows)


# --- The paper's soft-balance, eq. 6-8 (Peng et al., CVPR 2020, section 3.2) ---------------


def paper_soft_balance(image_counts, lam):
    """P_n(i) = n_i / sum n, P_a(i) = 1 / C (C = classes with images), P_s(i) =
    P_a(i)^lam P_n(i)^(1 - lam), P_s* = P_s / sum P_s; classes without images get 0."""
    counts = np.asarray(image_counts, dtype=np.float64)
    present = counts > 0
    natural = counts / counts.sum()
    uniform = 1.0 / present.sum()
    balanced = np.zeros_like(counts)
    balanced[present] = uniform**lam * natural[present] ** (1.0 - lam)
    return balanced / balanced.sum(), natural


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0, 1.5])
def test_soft_balance_matches_the_papers_equations(lam):
    counts = np.array([9000.0, 2500.0, 400.0, 35.0, 3.0, 0.0, 1.0])
    reference, natural = paper_soft_balance(counts, lam)
    np.testing.assert_allclose(soft_balance_probs(counts, lam), reference, rtol=1e-12, atol=0)
    # the loss weights P_s* / P_n, normalised to mean 1 over the classes with images (no box
    # counts) or over the boxes; a class without images gets 1
    present = counts > 0
    ratio = np.ones_like(counts)
    ratio[present] = reference[present] / natural[present]
    by_classes = ratio.copy()
    by_classes[present] /= ratio[present].mean()
    np.testing.assert_allclose(
        soft_balance_weights(counts, lam).double().numpy(), by_classes, rtol=1e-6
    )
    boxes = counts * 3 + 1
    by_boxes = ratio.copy()
    by_boxes[present] /= (boxes[present] * ratio[present]).sum() / boxes[present].sum()
    np.testing.assert_allclose(
        soft_balance_weights(counts, lam, box_counts=boxes).double().numpy(), by_boxes, rtol=1e-6
    )
