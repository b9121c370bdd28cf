"""Seesaw, EQLv2 and Federated loss against float64 transcriptions of the papers' formulas
and hand-worked cases; their accumulated statistics; agreement of those statistics across
two DDP processes (gloo)."""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lsdet.losses import build_loss


def one_hot_rows(labels, num_classes):
    return F.one_hot(torch.as_tensor(labels), num_classes).float()


# --- Seesaw (Wang et al. 2021) -------------------------------------------------------------


def seesaw_reference(logits, labels, counts, p, q, eps):
    """Float64, one RoI and one class pair at a time: objectness CE + the seesaw class term
    -log(e^{z_i} / (sum_{j != i} M_ij C_ij e^{z_j} + e^{z_i})) on foreground RoIs, averaged
    over the RoIs. counts: N over the foreground classes (this step's labels included)."""
    total = 0.0
    for r, label in enumerate(labels.tolist()):
        z = logits[r]
        pair = torch.stack([z[-1], z[0]])  # (foreground, background)
        total = total - torch.log_softmax(pair, 0)[1 if label == 0 else 0]
        if label == 0:
            continue
        classes = z[1:-1]
        i = label - 1
        s = torch.softmax(classes.detach(), 0).tolist()
        n = [max(v, 1.0) for v in counts]
        denominator = torch.exp(classes[i])
        for j in range(len(classes)):
            if j == i:
                continue
            mitigation = (n[j] / n[i]) ** p if n[j] < n[i] else 1.0
            ratio = s[j] / max(s[i], eps)
            compensation = ratio**q if ratio > 1.0 else 1.0
            denominator = denominator + mitigation * compensation * torch.exp(classes[j])
        total = total - (classes[i] - torch.log(denominator))
    return total / len(labels)


def test_seesaw_mitigation_by_hand():
    # Classes 1, 2 seen 9 and 1 times before; this RoI (label 1) makes N = (10, 1).
    loss_fn = build_loss("seesaw", num_classes=3, q=0.0)
    loss_fn.class_counts.copy_(torch.tensor([0.0, 9.0, 1.0], dtype=torch.float64))
    logits = torch.zeros(1, 4)
    value = loss_fn(logits, one_hot_rows([1], 3), torch.tensor([1])).item()
    # objectness log 2; class term -log(1 / (1 + (1/10)^0.8))
    assert value == pytest.approx(math.log(2) + math.log(1 + 0.1**0.8), rel=1e-6)
    assert loss_fn.class_counts.tolist() == [0.0, 10.0, 1.0]
    # the rare class's own RoI: no mitigation (N_j > N_i)
    value = loss_fn(logits, one_hot_rows([2], 3), torch.tensor([2])).item()
    assert value == pytest.approx(2 * math.log(2), rel=1e-6)


def test_seesaw_compensation_by_hand():
    # Label 1 scored 1/3, class 2 scored 2/3: C_12 = 2^2, sigma = 1 / (1 + 4 x 2).
    loss_fn = build_loss("seesaw", num_classes=3, p=0.0, q=2.0)
    logits = torch.tensor([[0.0, 0.0, math.log(2), 0.0]])
    value = loss_fn(logits, one_hot_rows([1], 3), torch.tensor([1])).item()
    assert value == pytest.approx(math.log(2) + math.log(9), rel=1e-6)
    # a background RoI has the objectness term only
    value = loss_fn(torch.tensor([[1.0, 5.0, -3.0, 0.0]]), one_hot_rows([0], 3), torch.tensor([0]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)


def test_seesaw_and_its_gradient_match_the_formula():
    gen = torch.Generator().manual_seed(0)
    num_classes = 6
    loss_fn = build_loss("seesaw", num_classes=num_classes)
    batches = [torch.randint(0, num_classes, (12,), generator=gen) for _ in range(3)]
    batches[0][:6] = torch.tensor([1, 1, 1, 1, 2, 3])  # unequal counts: mitigation acts
    seen = torch.zeros(num_classes, dtype=torch.float64)
    for labels in batches:
        logits = (3 * torch.randn(12, num_classes + 1, generator=gen)).requires_grad_()
        value = loss_fn(logits, one_hot_rows(labels, num_classes), labels)
        value.backward()
        seen += torch.bincount(labels, minlength=num_classes).double()
        reference_logits = logits.detach().double().requires_grad_()
        reference = seesaw_reference(reference_logits, labels, seen[1:].tolist(), 0.8, 2.0, 1e-2)
        reference.backward()
        assert value.item() == pytest.approx(reference.item(), rel=1e-5)
        torch.testing.assert_close(
            logits.grad.double(), reference_logits.grad, atol=1e-6, rtol=1e-5
        )
    # the accumulated counts are the primary labels of every RoI so far
    torch.testing.assert_close(loss_fn.class_counts, seen)


def test_seesaw_with_p_and_q_zero_is_softmax_plus_objectness():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 6, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 4, 2])
    loss_fn = build_loss("seesaw", num_classes=5, p=0.0, q=0.0)
    value = loss_fn(logits, one_hot_rows(labels, 5), labels)
    objectness = F.cross_entropy(logits[:, [5, 0]], (labels == 0).long(), reduction="sum")
    fg = labels > 0
    classes = F.cross_entropy(logits[fg, 1:5], labels[fg] - 1, reduction="sum")
    assert value.item() == pytest.approx(((objectness + classes) / 8).item(), rel=1e-6)


def test_seesaw_errors():
    with pytest.raises(ValueError, match="temperature"):
        build_loss("seesaw", num_classes=3, temperature=0.0)
    with pytest.raises(ValueError, match="p >= 0"):
        build_loss("seesaw", num_classes=3, p=-1.0)
    with pytest.raises(ValueError, match=r"logits must be \[R, 4\]"):
        build_loss("seesaw", num_classes=3)(
            torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1).long()
        )


# --- EQLv2 (Tan et al. 2021) ---------------------------------------------------------------


def eqlv2_reference(steps, gamma=12.0, mu=0.8, alpha=4.0):
    """Float64 loop over steps of (logits, multilabels, labels): BCE on every column with
    weights q_j (positives) / r_j (negatives) from the accumulated gradient ratio g_j (100 at
    the start, as the authors' code: first-step weights 1), column 0 the background target
    with weight 1; returns per-step (loss, grad) and the final (pos, neg) sums."""
    num_fg = steps[0][0].shape[1] - 1
    pos, neg, ratio = np.zeros(num_fg), np.zeros(num_fg), np.full(num_fg, 100.0)
    results = []
    for logits, multilabels, labels in steps:
        z = logits.detach().double().numpy()
        y = multilabels.double().numpy().copy()
        y[:, 0] = (labels == 0).double().numpy()
        r = 1.0 / (1.0 + np.exp(-gamma * (ratio - mu)))
        q = 1.0 + alpha * (1.0 - r)
        prob = 1.0 / (1.0 + np.exp(-z))
        w = np.ones_like(z)
        w[:, 1:] = np.where(y[:, 1:] > 0, q, r)
        bce = -(y * np.log(prob) + (1 - y) * np.log(1 - prob))
        rows = z.shape[0]
        results.append(((w * bce).sum() / rows, w * (prob - y) / rows))
        magnitude = np.abs(prob - y) * w
        pos += (magnitude * y)[:, 1:].sum(0)
        neg += (magnitude * (1 - y))[:, 1:].sum(0)
        ratio = pos / (neg + 1e-10)
    return results, pos, neg


def test_eqlv2_first_step_by_hand():
    loss_fn = build_loss("eqlv2", num_classes=3)
    logits = torch.zeros(1, 3, requires_grad=True)
    value = loss_fn(logits, one_hot_rows([1], 3), torch.tensor([1]))
    # g = 100 before any step (the authors' start): r = f(100) = 1, q = 1 + 4 (1 - 1) = 1.
    # every term is log 2: background column, class 1 positive, class 2 negative, weights 1
    assert value.item() == pytest.approx(3 * math.log(2), rel=1e-6)
    value.backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.5, -0.5, 0.5]]))
    pos = torch.tensor([0.5, 0.0], dtype=torch.float64)
    neg = torch.tensor([0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(loss_fn.pos_grad, pos)
    torch.testing.assert_close(loss_fn.neg_grad, neg)
    torch.testing.assert_close(loss_fn.pos_neg_ratio, pos / (neg + 1e-10))
    # the second step is re-weighted: class 1 (ratio 5e9) r = 1, q = 1; class 2 (ratio 0)
    # r = f(0) = sigmoid(-9.6), q = 1 + 4 (1 - r)
    q, r = loss_fn.class_term_weights()
    r2 = 1 / (1 + math.exp(12 * 0.8))
    torch.testing.assert_close(r, torch.tensor([1.0, r2], dtype=torch.float64))
    torch.testing.assert_close(q, torch.tensor([1.0, 1 + 4 * (1 - r2)], dtype=torch.float64))


def test_eqlv2_first_step_weights_are_one_before_any_statistics():
    # A fresh loss (and one whose statistics are reset to the initial state) weights every
    # term 1, as the authors' code does; the start of 1 used before re-weighted the first
    # step with r = sigmoid(12 (1 - 0.8)), q = 1 + 4 (1 - r).
    loss_fn = build_loss("eqlv2", num_classes=6)
    q, r = loss_fn.class_term_weights()
    assert torch.equal(q, torch.ones(5, dtype=torch.float64))
    assert torch.equal(r, torch.ones(5, dtype=torch.float64))
    assert torch.equal(loss_fn.pos_neg_ratio, torch.full((5,), 100.0, dtype=torch.float64))


def test_eqlv2_and_its_gradient_match_the_formula_over_steps():
    gen = torch.Generator().manual_seed(2)
    num_classes = 5
    steps = []
    for _ in range(4):
        labels = torch.randint(0, num_classes, (10,), generator=gen)
        multi = one_hot_rows(labels, num_classes)
        multi[labels == 2, 1] = 1.0  # class 1 is the parent of class 2
        logits = torch.randn(10, num_classes, generator=gen) * 2 - 1
        steps.append((logits, multi, labels))
    expected, pos, neg = eqlv2_reference(steps)
    loss_fn = build_loss("eqlv2", num_classes=num_classes)
    for (logits, multi, labels), (ref_loss, ref_grad) in zip(steps, expected, strict=True):
        logits = logits.clone().requires_grad_()
        value = loss_fn(logits, multi, labels)
        value.backward()
        assert value.item() == pytest.approx(ref_loss, rel=1e-5)
        np.testing.assert_allclose(logits.grad.numpy(), ref_grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(loss_fn.pos_grad.numpy(), pos, rtol=1e-5)
    np.testing.assert_allclose(loss_fn.neg_grad.numpy(), neg, rtol=1e-5)
    # the next step's weights
    q, r = loss_fn.class_term_weights()
    expected_r = 1 / (1 + np.exp(-12 * (pos / (neg + 1e-10) - 0.8)))
    np.testing.assert_allclose(r.numpy(), expected_r, rtol=1e-6)
    np.testing.assert_allclose(q.numpy(), 1 + 4 * (1 - expected_r), rtol=1e-6)


# --- Federated loss (Zhou et al. 2021) -----------------------------------------------------


def test_federated_loss_keeps_only_the_batch_classes():
    counts = [100, 50, 20, 10, 5]
    loss_fn = build_loss("federated", num_classes=6, image_counts=counts, num_classes_per_batch=1)
    logits = torch.tensor([[0.0, 2.0, 0.0, -1.0, 0.0, 3.0], [1.0, -2.0, 1.0, 0.0, 0.0, 0.0]])
    logits.requires_grad_()
    multi = torch.tensor([[0.0, 1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]])
    labels = torch.tensor([1, 0])
    # one present class (1) fills the set: only column 1 has terms
    value = loss_fn(logits, multi, labels)
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-2.0))) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert bool((logits.grad[:, [0, 2, 3, 4, 5]] == 0).all()) and bool(
        logits.grad[:, 1].ne(0).all()
    )
    # a set as large as the classes (5 foreground + the background of row 2) is plain BCE
    everything = build_loss(
        "federated", num_classes=6, image_counts=counts, num_classes_per_batch=6
    )
    bce = build_loss("bce", num_classes=6)
    torch.testing.assert_close(everything(logits, multi, labels), bce(logits, multi, labels))


def test_federated_draws_present_classes_then_frequency_power():
    counts = torch.tensor([100.0, 25.0, 4.0, 0.0, 1.0])
    loss_fn = build_loss("federated", num_classes=6, image_counts=counts, num_classes_per_batch=3)
    multi = one_hot_rows([3, 0], 6)
    torch.manual_seed(0)
    for _ in range(20):
        chosen = loss_fn.batch_classes(multi)
        # the background RoI takes one of the 3 places (detectron2): class 3 + one drawn
        assert int(chosen.sum()) == 2 and bool(chosen[2])  # class 3 (index 2) is present
        assert not bool(chosen[3])  # no training image: never drawn
    # one class drawn per batch of background RoIs (2 places, one is the background):
    # probabilities ~ counts^0.5 = 10 : 5 : 2 : 0 : 1
    single = build_loss("federated", num_classes=6, image_counts=counts, num_classes_per_batch=2)
    background_only = one_hot_rows([0], 6)
    torch.manual_seed(1)
    draws = torch.stack([single.batch_classes(background_only) for _ in range(3000)])
    assert bool((draws.sum(dim=1) == 1).all())
    frequency = draws.float().mean(dim=0).numpy()
    np.testing.assert_allclose(frequency, np.array([10, 5, 2, 0, 1]) / 18, atol=0.03)
    with pytest.raises(ValueError, match="image_counts must be"):
        build_loss("federated", num_classes=6, image_counts=[1, 2])


# --- Statistics across two DDP processes ---------------------------------------------------


class TinyHead(torch.nn.Module):
    """A linear classifier with the loss as a submodule, as the detector holds it."""

    def __init__(self, loss_fn, num_logits):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, num_logits)
        self.loss_fn = loss_fn

    def forward(self, features, multilabels, labels):
        return self.loss_fn(self.linear(features), multilabels, labels)


def rank_batches(rank, num_classes, steps=3):
    gen = torch.Generator().manual_seed(100 + rank)
    batches = []
    for _ in range(steps):
        labels = torch.randint(0, num_classes, (8,), generator=gen)
        batches.append(
            (torch.randn(8, 4, generator=gen), one_hot_rows(labels, num_classes), labels)
        )
    return batches


def ddp_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        for name in ("seesaw", "eqlv2"):
            loss_fn = build_loss(name, num_classes=5)
            model = torch.nn.parallel.DistributedDataParallel(TinyHead(loss_fn, loss_fn.num_logits))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            first = None
            for features, multi, labels in rank_batches(rank, 5):
                optimizer.zero_grad()
                model(features, multi, labels).backward()
                optimizer.step()
                if first is None:
                    first = {k: v.clone() for k, v in loss_fn.state_dict().items()}
            torch.save(
                {"first": first, "last": loss_fn.state_dict()}, f"{out_dir}/{name}_{rank}.pt"
            )
    finally:
        dist.destroy_process_group()


def test_statistics_agree_across_ddp_ranks(tmp_path):
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for name in ("seesaw", "eqlv2"):
        ranks = [torch.load(tmp_path / f"{name}_{r}.pt") for r in (0, 1)]
        for when in ("first", "last"):
            assert ranks[0][when].keys() == ranks[1][when].keys()
            for key, value in ranks[0][when].items():
                assert torch.equal(value, ranks[1][when][key]), (name, when, key)
        # after the first step: the statistics of both ranks' RoIs together
        single = build_loss(name, num_classes=5)
        head = TinyHead(single, single.num_logits)
        both = [rank_batches(r, 5)[0] for r in (0, 1)]
        head(*(torch.cat(parts) for parts in zip(*both, strict=True)))
        for key, value in single.state_dict().items():
            torch.testing.assert_close(ranks[0]["first"][key], value, rtol=1e-5, atol=1e-7)
    seesaw = torch.load(tmp_path / "seesaw_0.pt")["last"]["class_counts"]
    labels = torch.cat([b[2] for r in (0, 1) for b in rank_batches(r, 5)])
    assert torch.equal(seesaw, torch.bincount(labels, minlength=5).double())


def test_eqlv2_statistics_skip_a_non_finite_step():
    loss_fn = build_loss("eqlv2", num_classes=3)
    loss_fn(torch.zeros(2, 3), one_hot_rows([1, 2], 3), torch.tensor([1, 2]))
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    logits = torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert not torch.isfinite(loss_fn(logits, one_hot_rows([1, 2], 3), torch.tensor([1, 2])))
    for key, value in loss_fn.state_dict().items():
        assert torch.equal(value, before[key]), key
