"""Tests of lsdet.sampling: the soft-balance distribution and the samplers."""

import numpy as np
import pytest

from lsdet.sampling import soft_balance_probs


def test_soft_balance_probs_by_hand():
    counts = np.array([1, 4, 16])
    # lam = 0.5: weights n^0.5 = 1, 2, 4 -> / 7
    np.testing.assert_allclose(soft_balance_probs(counts, 0.5), [1 / 7, 2 / 7, 4 / 7])
    # lam = 1.5: weights n^-0.5 = 1, 1/2, 1/4 -> / 1.75
    np.testing.assert_allclose(soft_balance_probs(counts, 1.5), [4 / 7, 2 / 7, 1 / 7])


def test_soft_balance_probs_matches_paper_formula():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 10_000, size=50)
    p_n = counts / counts.sum()
    p_a = np.full(50, 1 / 50)
    for lam in (0.0, 0.3, 0.5, 0.7, 1.0, 1.5):
        p_s = p_a**lam * p_n ** (1 - lam)
        expected = p_s / p_s.sum()
        got = soft_balance_probs(counts, lam)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_soft_balance_probs_limits_and_empty_classes():
    counts = np.array([0, 3, 0, 9, 12])
    np.testing.assert_allclose(soft_balance_probs(counts, 0.0), counts / counts.sum())
    np.testing.assert_allclose(soft_balance_probs(counts, 1.0), [0, 1 / 3, 0, 1 / 3, 1 / 3])
    for lam in (0.0, 0.7, 1.5):
        p = soft_balance_probs(counts, lam)
        assert p[0] == 0 and p[2] == 0
        assert p.sum() == pytest.approx(1.0)


def test_soft_balance_probs_extreme_counts_do_not_overflow():
    p = soft_balance_probs(np.array([1, 10**12]), 5.0)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [1 / (1 + 1e-48), 1e-48 / (1 + 1e-48)])


@pytest.mark.parametrize(
    ("counts", "lam", "match"),
    [
        ([1, -2], 0.5, "class 1"),
        ([1, np.nan], 0.5, "class 1"),
        ([[1, 2]], 0.5, "1-D"),
        ([0, 0], 0.5, "all zero"),
        ([1, 2], -0.1, "lam"),
    ],
)
def test_soft_balance_probs_rejects_bad_input(counts, lam, match):
    with pytest.raises(ValueError, match=match):
        soft_balance_probs(counts, lam)


# ---------------------------------------------------------------- samplers

from lsdet.sampling import (  # noqa: E402
    RepeatFactorSampler,
    ShuffledEpochSampler,
    SoftBalanceSampler,
    build_sampler,
    repeat_factors,
)


def csr_from_lists(image_lists):
    """CSR (offsets [C+1], flat image indices) of per-class image lists."""
    counts = [len(images) for images in image_lists]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat = np.concatenate([np.asarray(images, dtype=np.int64) for images in image_lists])
    return offsets, flat


def disjoint_classes(counts):
    """Each image belongs to exactly one class, so a drawn image names its class."""
    image_lists, start = [], 0
    for count in counts:
        image_lists.append(list(range(start, start + count)))
        start += count
    offsets, flat = csr_from_lists(image_lists)
    image_class = np.repeat(np.arange(len(counts)), counts)
    return offsets, flat, start, image_class


# Power-law class sizes with empty classes at the start, in the middle and at the end.
COUNTS = [0, 400, 150, 60, 25, 0, 10, 4, 2, 1, 1, 0]


def chi_square(observed, expected_probs):
    total = observed.sum()
    mask = expected_probs > 0
    expected = total * expected_probs[mask]
    assert observed[~mask].sum() == 0
    return float(((observed[mask] - expected) ** 2 / expected).sum()), int(mask.sum() - 1)


def chi_square_bound(dof):
    # mean dof, sd sqrt(2 dof): 6 sd above the mean is far beyond any plausible fluctuation
    return dof + 6 * np.sqrt(2 * dof)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.7, 1.0, 1.5])
def test_soft_balance_class_distribution_matches_p_s_star(lam):
    offsets, flat, num_images, image_class = disjoint_classes(COUNTS)
    sampler = SoftBalanceSampler(offsets, flat, num_images, lam=lam, num_samples=200_000, seed=3)
    images = np.fromiter(iter(sampler), dtype=np.int64)
    assert len(images) == 200_000
    observed = np.bincount(image_class[images], minlength=len(COUNTS))
    counts = np.array(COUNTS, dtype=float)
    target = soft_balance_probs(counts, lam)
    if lam == 0.0:
        np.testing.assert_allclose(target, counts / counts.sum())  # P_n
    if lam == 1.0:
        np.testing.assert_allclose(target[counts > 0], 1 / np.count_nonzero(counts))  # uniform
    stat, dof = chi_square(observed, target)
    assert stat < chi_square_bound(dof)
    # the test has power: a neighbouring lambda is rejected
    wrong_stat, _ = chi_square(observed, soft_balance_probs(counts, lam + 0.1))
    assert wrong_stat > chi_square_bound(dof)
    # the sampler reports the class of each draw consistently with the image drawn
    classes, drawn_images = sampler.draw(0)
    np.testing.assert_array_equal(drawn_images, images)
    np.testing.assert_array_equal(classes, image_class[images])


def test_soft_balance_image_distribution_with_multi_label_images():
    # images belong to several classes: P(image) = sum over its classes of P_s*(c) / n_c
    image_lists = [[0, 1, 2, 3, 4, 5], [0, 6], [], [6, 7, 8], [9]]
    offsets, flat = csr_from_lists(image_lists)
    lam = 0.7
    p_class = soft_balance_probs(np.diff(offsets), lam)
    expected = np.zeros(10)
    for c, images in enumerate(image_lists):
        for i in images:
            expected[i] += p_class[c] / len(images)
    sampler = SoftBalanceSampler(offsets, flat, 10, lam=lam, num_samples=100_000, seed=1)
    observed = np.bincount(sampler.global_stream(0), minlength=10)
    stat, dof = chi_square(observed, expected)
    assert stat < chi_square_bound(dof)


def test_empty_class_is_never_drawn():
    # empty classes next to a huge one (lam 0) and as the only weight-heavy ones (lam 1.5)
    offsets, flat, num_images, _ = disjoint_classes(COUNTS)
    empty = [c for c, n in enumerate(COUNTS) if n == 0]
    for lam in (0.0, 1.0, 1.5):
        sampler = SoftBalanceSampler(offsets, flat, num_images, lam=lam, num_samples=50_000)
        classes, _ = sampler.draw(0)
        assert not np.isin(classes, empty).any()
        assert set(np.unique(classes)) == {c for c, n in enumerate(COUNTS) if n > 0}


def test_soft_balance_draws_uniformly_within_a_class():
    offsets, flat = csr_from_lists([[3, 5, 7, 9], [1]])
    sampler = SoftBalanceSampler(offsets, flat, 10, lam=1.0, num_samples=40_000, seed=5)
    images = sampler.global_stream(0)
    observed = np.bincount(images, minlength=10)
    expected = np.zeros(10)
    expected[[3, 5, 7, 9]] = 0.5 / 4
    expected[1] = 0.5
    stat, dof = chi_square(observed, expected)
    assert stat < chi_square_bound(dof)


def test_sequential_sampler_sees_every_image_once_per_epoch_in_new_order():
    sampler = ShuffledEpochSampler(1000, seed=0)
    first = list(sampler)
    assert sorted(first) == list(range(1000))
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(1000))
    assert first != second
    assert len(sampler) == 1000


def make_samplers(seed=0, rank=0, world_size=1):
    offsets, flat, num_images, _ = disjoint_classes(COUNTS)
    common = {
        "class_offsets": offsets,
        "class_images": flat,
        "num_images": num_images,
        "seed": seed,
        "rank": rank,
        "world_size": world_size,
    }
    configs = [
        {"name": "sequential"},
        {"name": "class_aware", "num_samples": 301},
        {"name": "soft_balance", "lam": 0.7, "num_samples": None},
        {"name": "repeat_factor", "repeat_threshold": 0.05},
    ]
    return [build_sampler(cfg, **common) for cfg in configs]


def test_samplers_are_deterministic_given_seed_and_epoch():
    for a, b, other_seed in zip(make_samplers(7), make_samplers(7), make_samplers(8), strict=True):
        for epoch in (0, 3):
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            other_seed.set_epoch(epoch)
            assert list(a) == list(b)
            assert list(a) != list(other_seed)
        a.set_epoch(0)
        b.set_epoch(1)
        assert list(a) != list(b)


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_rank_shards_are_disjoint_slices_of_the_global_stream(world_size):
    single = make_samplers()
    shards = [make_samplers(rank=r, world_size=world_size) for r in range(world_size)]
    for i, reference in enumerate(single):
        for epoch in (0, 1):
            reference.set_epoch(epoch)
            stream = list(reference)
            per_rank = []
            for r in range(world_size):
                shards[r][i].set_epoch(epoch)
                per_rank.append(list(shards[r][i]))
            lengths = {len(s) for s in per_rank}
            assert lengths == {-(-len(stream) // world_size)} == {len(shards[0][i])}
            # interleaving the shards rebuilds the stream; padding repeats its head
            interleaved = [
                per_rank[p % world_size][p // world_size]
                for p in range(world_size * len(per_rank[0]))
            ]
            assert interleaved[: len(stream)] == stream
            pad = len(interleaved) - len(stream)
            assert 0 <= pad < world_size
            assert interleaved[len(stream) :] == stream[:pad]


@pytest.mark.parametrize("world_size", [1, 3])
def test_resume_mid_epoch_continues_with_the_same_indices(world_size):
    for i in range(4):
        reference = make_samplers(seed=11, rank=world_size - 1, world_size=world_size)[i]
        reference.set_epoch(2)
        expected = list(reference)
        reference.set_epoch(3)
        expected_next = list(reference)

        interrupted = make_samplers(seed=11, rank=world_size - 1, world_size=world_size)[i]
        interrupted.set_epoch(2)
        iterator = iter(interrupted)
        consumed = [next(iterator) for _ in range(17)]
        state = interrupted.state_dict()
        assert state["epoch"] == 2 and state["num_yielded"] == 17

        resumed = make_samplers(seed=11, rank=world_size - 1, world_size=world_size)[i]
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # a training loop's usual call keeps the resumed position
        assert consumed + list(resumed) == expected
        resumed.set_epoch(3)
        assert list(resumed) == expected_next


def test_load_state_dict_refuses_a_different_stream():
    sampler = make_samplers(seed=1)[0]
    state = make_samplers(seed=2)[0].state_dict()
    with pytest.raises(ValueError, match="seed"):
        sampler.load_state_dict(state)
    state = make_samplers(seed=1, world_size=2)[0].state_dict()
    with pytest.raises(ValueError, match="world_size"):
        sampler.load_state_dict(state)


def test_repeat_factors_by_hand():
    # 10 images; class 0 in 1 image (f = 0.1), class 1 in all (f = 1), class 2 in 4 (f = 0.4),
    # class 3 empty; image 9 has no class.
    offsets, flat = csr_from_lists([[0], list(range(9)), [0, 1, 2, 3], []])
    # t = 0.4: r = [sqrt(0.4/0.1) = 2, 1, 1, -]
    expected = [2.0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    np.testing.assert_allclose(repeat_factors(offsets, flat, 10, 0.4), expected)
    # t = 0.9: r = [3, 1, sqrt(0.9/0.4) = 1.5, -]; image 0 takes the max over its classes
    expected = [3.0, 1.5, 1.5, 1.5, 1, 1, 1, 1, 1, 1]
    np.testing.assert_allclose(repeat_factors(offsets, flat, 10, 0.9), expected)


def test_repeat_factor_sampler_rounds_stochastically():
    factors = np.array([1.0, 2.5, 0.2, 3.0])
    sampler = RepeatFactorSampler(factors, seed=0)
    totals = np.zeros(4)
    epochs = 400
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        indices = np.array(list(sampler))
        assert len(sampler) == len(indices)
        per_image = np.bincount(indices, minlength=4)
        assert np.all((per_image == np.floor(factors)) | (per_image == np.floor(factors) + 1))
        totals += per_image
    # mean repeats per epoch match the factors (binomial sd of the mean <= 0.025)
    np.testing.assert_allclose(totals / epochs, factors, atol=0.1)


def test_build_sampler_kinds_and_config_errors():
    offsets, flat, num_images, _ = disjoint_classes(COUNTS)
    csr = {"class_offsets": offsets, "class_images": flat, "num_images": num_images}
    aware = build_sampler({"name": "class_aware", "num_samples": None}, **csr)
    assert isinstance(aware, SoftBalanceSampler) and aware.lam == 1.0
    assert len(aware) == num_images
    assert aware.state_dict()["name"] == "class_aware"
    rfs = build_sampler(
        {"name": "repeat_factor", "repeat_threshold": 0.1},
        image_weights=np.full(num_images, 2.0),
        **csr,
    )
    assert len(rfs) == 2 * num_images
    with pytest.raises(ValueError, match="unknown key"):
        build_sampler({"name": "soft_balance", "lam": 0.7, "lamda": 0.5}, **csr)
    with pytest.raises(ValueError, match="name must be one of"):
        build_sampler({"name": "balanced"}, **csr)
    with pytest.raises(ValueError, match="lam is required"):
        build_sampler({"name": "soft_balance"}, **csr)
    with pytest.raises(ValueError, match="repeat_factor sampler only"):
        build_sampler({"name": "sequential"}, image_weights=np.ones(num_images), **csr)
    with pytest.raises(ValueError, match="class_images must lie"):
        build_sampler({"name": "class_aware"}, **{**csr, "num_images": 5})
    with pytest.raises(ValueError, match="class_offsets"):
        build_sampler({"name": "class_aware"}, **{**csr, "class_offsets": offsets + 1})
    with pytest.raises(ValueError, match="rank"):
        build_sampler({"name": "sequential"}, rank=2, world_size=2, **csr)


def test_benchmark_index_has_the_requested_shape_and_runs(capsys):
    from lsdet.bench import sampling as bench

    sizes = bench.class_sizes(500, 12_000_000, 1_743_042)
    assert len(sizes) == 500 and abs(sizes.sum() - 12_000_000) < 1_000
    assert sizes.max() == 1_743_042 // 2 and sizes.min() >= 1
    ranked = np.sort(sizes)[::-1]
    assert ranked[9] / ranked[249] > 100  # heavy tail: rank 10 vs rank 250
    offsets, images = bench.synthetic_class_index(1_000, 20, 5_000)
    assert offsets[-1] == len(images) and images.max() < 1_000
    for c in range(20):  # sorted, unique images per class
        assert np.all(np.diff(images[offsets[c] : offsets[c + 1]]) > 0)
    bench.main(
        [
            "--num-images",
            "2000",
            "--num-classes",
            "20",
            "--num-pairs",
            "8000",
            "--repeats",
            "1",
            "--world-size",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert "soft_balance lam=0.7" in out and "numpy.random.permutation(2,000)" in out


def test_sampler_drives_a_dataloader_and_resumes_from_consumed_batches():
    import torch.utils.data

    dataset = torch.utils.data.TensorDataset(torch.arange(1000))
    batch_size, epoch = 8, 4

    def loader(sampler):
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler)

    def new_sampler():
        return make_samplers(seed=2)[2]  # soft_balance over COUNTS' 653 images

    reference = new_sampler()
    reference.set_epoch(epoch)
    expected = [batch[0].tolist() for batch in loader(reference)]
    assert len(expected) == -(-len(reference) // batch_size)

    interrupted = new_sampler()
    interrupted.set_epoch(epoch)
    got = []
    for batch in loader(interrupted):
        got.append(batch[0].tolist())
        if len(got) == 5:
            break
    # the training loop records what it consumed (a loader with workers runs ahead)
    state = {**interrupted.state_dict(), "num_yielded": len(got) * batch_size}
    resumed = new_sampler()
    resumed.load_state_dict(state)
    resumed.set_epoch(epoch)
    got += [batch[0].tolist() for batch in loader(resumed)]
    assert got == expected


def test_bad_seed_and_epoch_are_refused():
    with pytest.raises(ValueError, match="seed"):
        ShuffledEpochSampler(10, seed=-1)
    with pytest.raises(ValueError, match="epoch"):
        ShuffledEpochSampler(10).set_epoch(-1)


def test_position_past_the_epoch_end_is_an_error():
    sampler = ShuffledEpochSampler(10)
    sampler.load_state_dict({"epoch": 0, "num_yielded": 11})
    with pytest.raises(ValueError, match="past the end"):
        list(sampler)
    sampler.load_state_dict({"epoch": 0, "num_yielded": 10})  # a completed epoch replays
    assert sorted(sampler) == list(range(10))
