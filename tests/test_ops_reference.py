"""The PyTorch reference of lsdet.ops against eq. 3/5 written out literally, float64 autograd,
and the paper's identities (eq. 3 with R = 0 is softmax cross-entropy; the exact gradient of
eq. 3); soft_balance_weights against hand-worked values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsdet import ops


def random_problem(n, c, seed=0, dtype=torch.float64, density=0.3, rate_density=0.3):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen, dtype=dtype) * 2
    targets = torch.rand(n, c, generator=gen) < density
    targets[:, 0] |= ~targets.any(dim=1)  # at least one positive per row
    rates = torch.rand(c, c, generator=gen, dtype=dtype)
    rates = rates * (torch.rand(c, c, generator=gen) < rate_density)
    weights = torch.rand(c, generator=gen, dtype=dtype) + 0.5
    return logits, targets, rates, weights


def literal_loss(logits, targets, rates, weights):
    """Eq. 3 written out with Python loops, float64, differentiable by autograd."""
    z = logits.double()
    rows = []
    for n in range(z.shape[0]):
        row = z.new_zeros(())
        for i in range(z.shape[1]):
            if not targets[n, i]:
                continue
            denom = torch.exp(z[n, i])
            for j in range(z.shape[1]):
                if not targets[n, j]:
                    denom = denom + (1 - rates[i, j]) * torch.exp(z[n, j])
            row = row - weights[i] * torch.log(torch.exp(z[n, i]) / denom)
        rows.append(row)
    return torch.stack(rows)


def literal_loss_with_choices(logits, targets, rates, weights, ignore, positive_reduction):
    """Eq. 3 with ignored columns (in no denominator) and the positives' mean, by loops."""
    z = logits.double()
    rows = []
    for n in range(z.shape[0]):
        row = z.new_zeros(())
        positives = [i for i in range(z.shape[1]) if targets[n, i]]
        negatives = [j for j in range(z.shape[1]) if not targets[n, j] and not ignore[n, j]]
        for i in positives:
            denom = torch.exp(z[n, i])
            for j in negatives:
                denom = denom + (1 - rates[i, j]) * torch.exp(z[n, j])
            row = row - weights[i] * torch.log(torch.exp(z[n, i]) / denom)
        if positive_reduction == "mean" and positives:
            row = row / len(positives)
        rows.append(row)
    return torch.stack(rows)


def literal_scores(logits, rates):
    """Eq. 5 written out: s+_i = e^{z_i} / sum_j (1 - r_ij) e^{z_j}, r_ii = 0."""
    z = logits.double()
    c = z.shape[1]
    r = rates.double() * (1 - torch.eye(c, dtype=torch.float64))
    e = torch.exp(z)
    out = torch.empty_like(z)
    for i in range(c):
        out[:, i] = e[:, i] / (e * (1 - r[i])[None, :]).sum(dim=1)
    return out


@pytest.mark.parametrize("c", [2, 7, 13])
def test_loss_matches_literal_formula_and_its_autograd(c):
    logits, targets, rates, weights = random_problem(6, c, seed=c)
    logits.requires_grad_(True)
    loss = ops.concurrent_softmax_loss(logits, targets, rates, weights, "none", impl="torch")
    expected = literal_loss(logits, targets, rates, weights)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-10)


def test_loss_gradcheck_float64():
    logits, targets, rates, weights = random_problem(4, 6, seed=3)
    logits.requires_grad_(True)

    def fn(z):
        return ops.concurrent_softmax_loss(z, targets, rates, weights, "none", impl="torch")

    assert torch.autograd.gradcheck(fn, (logits,))
    assert torch.autograd.gradcheck(lambda z: fn(z).mean(), (logits,))


def test_scores_gradcheck_and_literal_formula():
    logits, _, rates, _ = random_problem(4, 6, seed=4)
    rates.fill_diagonal_(0.7)  # the diagonal must be ignored
    logits.requires_grad_(True)
    scores = ops.concurrent_softmax(logits, rates, impl="torch")
    torch.testing.assert_close(scores, literal_scores(logits, rates), rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda z: ops.concurrent_softmax(z, rates, impl="torch"), (logits,)
    )


def test_zero_rates_one_label_equals_cross_entropy():
    n, c = 9, 11
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, c, (n,), generator=gen)
    labels[0] = 0  # a background row: its only positive is column 0
    targets = F.one_hot(labels, c).bool()
    rates = torch.zeros(c, c, dtype=torch.float64)
    for reduction in ("none", "sum", "mean"):
        loss = ops.concurrent_softmax_loss(
            logits, targets, rates, reduction=reduction, impl="torch"
        )
        expected = F.cross_entropy(logits, labels, reduction=reduction)
        torch.testing.assert_close(loss, expected)
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
        torch.testing.assert_close(grad, grad_expected)
    # Softmax at inference too.
    scores = ops.concurrent_softmax(logits, rates, impl="torch")
    torch.testing.assert_close(scores, torch.softmax(logits, dim=1))


def test_positive_loss_does_not_depend_on_other_positives():
    c = 8
    logits, _, rates, _ = random_problem(1, c, seed=6)
    targets = torch.zeros(1, c, dtype=torch.bool)
    targets[0, [2, 5]] = True
    only_class_2 = torch.zeros(c, dtype=torch.float64)
    only_class_2[2] = 1.0
    base = ops.concurrent_softmax_loss(logits, targets, rates, only_class_2, impl="torch")
    moved = logits.clone()
    moved[0, 5] += 30.0
    again = ops.concurrent_softmax_loss(moved, targets, rates, only_class_2, impl="torch")
    torch.testing.assert_close(again, base, rtol=0, atol=1e-12)
    # ... whereas a negative's logit does change it.
    moved[0, 3] += 3.0
    assert ops.concurrent_softmax_loss(moved, targets, rates, only_class_2, impl="torch") > base


def test_rate_one_removes_class_from_denominator():
    c = 6
    logits, _, rates, _ = random_problem(1, c, seed=7)
    targets = torch.zeros(1, c, dtype=torch.bool)
    targets[0, 1] = True
    rates[1, 4] = 1.0
    logits.requires_grad_(True)
    loss = ops.concurrent_softmax_loss(logits, targets, rates, impl="torch")
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[0, 4] == 0.0
    moved = logits.detach().clone()
    moved[0, 4] += 50.0
    torch.testing.assert_close(
        ops.concurrent_softmax_loss(moved, targets, rates, impl="torch"), loss
    )
    # At inference, class 4 does not enter class 1's denominator either.
    scores = ops.concurrent_softmax(logits.detach(), rates, impl="torch")
    scores_moved = ops.concurrent_softmax(moved, rates, impl="torch")
    torch.testing.assert_close(scores_moved[0, 1], scores[0, 1])


def test_partial_rate_by_hand():
    # Two negatives (logit 0), one positive (logit 0), r = 0.5 towards the first negative:
    # D = 0.5 + 1 + 1, s* = 1 / 2.5.
    logits = torch.zeros(1, 3, dtype=torch.float64)
    targets = torch.tensor([[True, False, False]])
    rates = torch.zeros(3, 3, dtype=torch.float64)
    rates[0, 1] = 0.5
    loss = ops.concurrent_softmax_loss(logits, targets, rates, impl="torch")
    assert loss.item() == pytest.approx(math.log(2.5))


def test_extreme_logits():
    c = 5
    rates = torch.zeros(c, c)
    targets = torch.zeros(3, c, dtype=torch.bool)
    targets[0, 1] = True  # a confident positive
    targets[1, 2] = True  # a hopeless positive
    targets[2, [1, 2]] = True  # two positives 2e4 apart
    logits = torch.zeros(3, c)
    logits[0, 1] = 1e4
    logits[1, 2] = -1e4
    logits[2, 1], logits[2, 2] = 1e4, -1e4
    logits.requires_grad_(True)
    loss = ops.concurrent_softmax_loss(logits, targets, rates, reduction="none", impl="torch")
    expected = torch.tensor([0.0, 1e4 + math.log(c - 1), 1e4 + math.log(c - 2)])
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[1, 2], torch.tensor(-1.0))
    torch.testing.assert_close(grad[1, [0, 1, 3, 4]], torch.full((4,), 1 / (c - 1)))
    scores = ops.concurrent_softmax(logits.detach(), rates, impl="torch")
    assert torch.isfinite(scores).all()
    assert scores[0, 1] == 1.0 and scores[1, 2] == 0.0


def test_zero_weights_and_rows_without_positive():
    logits, targets, rates, weights = random_problem(5, 7, seed=8)
    logits.requires_grad_(True)
    zeros = torch.zeros_like(weights)
    loss = ops.concurrent_softmax_loss(logits, targets, rates, zeros, "none", impl="torch")
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.all(loss == 0) and torch.all(grad == 0)
    # Zero weight on one class drops exactly that class's terms.
    weights[3] = 0.0
    loss = ops.concurrent_softmax_loss(logits, targets, rates, weights, "none", impl="torch")
    expected = literal_loss(logits, targets, rates, weights)
    torch.testing.assert_close(loss, expected)
    empty = torch.zeros_like(targets)
    loss = ops.concurrent_softmax_loss(logits, empty, rates, reduction="none", impl="torch")
    assert torch.all(loss == 0)


def test_float_and_uint8_targets_and_low_precision_logits():
    logits, targets, rates, weights = random_problem(4, 9, seed=9, dtype=torch.float32)
    expected = ops.concurrent_softmax_loss(logits, targets, rates, weights, "none", impl="torch")
    for as_dtype in (torch.uint8, torch.float32):
        got = ops.concurrent_softmax_loss(
            logits, targets.to(as_dtype), rates, weights, "none", impl="torch"
        )
        torch.testing.assert_close(got, expected)
    half = logits.to(torch.bfloat16).requires_grad_(True)
    loss = ops.concurrent_softmax_loss(half, targets, rates, weights, impl="torch")
    assert loss.dtype == torch.float32
    loss.backward()
    assert half.grad.dtype == torch.bfloat16


def test_bad_input_gets_clear_errors():
    logits, targets, rates, weights = random_problem(3, 4, seed=10)
    with pytest.raises(ValueError, match="rates must be"):
        ops.concurrent_softmax_loss(logits, targets, rates[:3, :3])
    with pytest.raises(ValueError, match="targets must"):
        ops.concurrent_softmax_loss(logits, targets[:2], rates)
    with pytest.raises(ValueError, match="weights must"):
        ops.concurrent_softmax_loss(logits, targets, rates, weights[:2])
    with pytest.raises(ValueError, match="reduction"):
        ops.concurrent_softmax_loss(logits, targets, rates, reduction="avg")
    with pytest.raises(ValueError, match="impl"):
        ops.concurrent_softmax(logits, rates, impl="cuda")
    with pytest.raises(ValueError, match="logits must be"):
        ops.concurrent_softmax(logits[0], rates)
    with pytest.raises(ValueError, match="weights on meta"):
        ops.concurrent_softmax_loss(logits, targets, rates, weights.to("meta"))


def test_soft_balance_weights_by_hand():
    counts = [1, 4, 16]
    # P_s*/P_n is proportional to n^-lam = [1, 1/2, 1/4] for lam = 0.5.
    by_class = ops.soft_balance_weights(counts, 0.5)
    np.testing.assert_allclose(by_class.numpy(), np.array([12, 6, 3]) / 7, rtol=1e-6)
    boxes = [2, 1, 1]  # mean over boxes: (2*1 + 1/2 + 1/4) / 4 = 11/16
    by_box = ops.soft_balance_weights(counts, 0.5, box_counts=boxes)
    np.testing.assert_allclose(by_box.numpy(), np.array([16, 8, 4]) / 11, rtol=1e-6)
    assert float((by_box * torch.tensor(boxes)).sum()) == pytest.approx(sum(boxes))
    np.testing.assert_allclose(ops.soft_balance_weights(counts, 0.0).numpy(), 1.0, rtol=1e-6)
    # lam = 1: weights proportional to 1 / n.
    np.testing.assert_allclose(
        ops.soft_balance_weights(torch.tensor([2, 8]), 1.0).numpy(), [1.6, 0.4], rtol=1e-6
    )
    # A class without images keeps weight 1 and is left out of the normalisation.
    with_unseen = ops.soft_balance_weights([1, 0, 4, 16], 0.5)
    np.testing.assert_allclose(with_unseen.numpy(), [12 / 7, 1.0, 6 / 7, 3 / 7], rtol=1e-6)
    with pytest.raises(ValueError, match="box_counts"):
        ops.soft_balance_weights(counts, 0.5, box_counts=[1, 2])


def test_non_contiguous_logits_and_a_row_without_positive():
    logits, targets, rates, weights = random_problem(6, 5, seed=11)
    logits = logits.t().contiguous().t().requires_grad_(True)  # column-major
    assert not logits.is_contiguous()
    targets[2] = False  # slot 0 no longer covers every row
    loss = ops.concurrent_softmax_loss(logits, targets, rates, weights, "none", impl="torch")
    expected = literal_loss(logits, targets, rates, weights)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, grad_expected)
    assert loss[2] == 0 and torch.all(grad[2] == 0)


@pytest.mark.parametrize("positive_reduction", ["sum", "mean"])
@pytest.mark.parametrize("with_ignore", [False, True])
def test_ignored_columns_and_positive_reduction_match_literal_formula(
    positive_reduction, with_ignore
):
    logits, targets, rates, weights = random_problem(7, 9, seed=21)
    gen = torch.Generator().manual_seed(22)
    ignore = torch.rand(7, 9, generator=gen) < (0.3 if with_ignore else 0.0)
    ignore[0, targets[0].nonzero()[0, 0]] = True  # a positive also marked: it stays positive
    ignore[1] = ~targets[1]  # every non-positive ignored: loss 0 for that row
    logits.requires_grad_(True)

    def loss_of(z):
        return ops.concurrent_softmax_loss(
            z,
            targets,
            rates,
            weights,
            "none",
            impl="torch",
            ignore=ignore,
            positive_reduction=positive_reduction,
        )

    loss = loss_of(logits)
    expected = literal_loss_with_choices(
        logits, targets, rates, weights, ignore & ~targets, positive_reduction
    )
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-10)
    assert torch.all(grad[ignore & ~targets] == 0)
    assert loss[1] == 0
    assert torch.autograd.gradcheck(loss_of, (logits,))


def test_mean_positive_reduction_divides_each_row_by_its_positives():
    logits, targets, rates, weights = random_problem(6, 8, seed=23)
    summed = ops.concurrent_softmax_loss(logits, targets, rates, weights, "none", impl="torch")
    mean = ops.concurrent_softmax_loss(
        logits, targets, rates, weights, "none", impl="torch", positive_reduction="mean"
    )
    torch.testing.assert_close(mean, summed / targets.sum(dim=1).double())
    assert (targets.sum(dim=1) > 1).any()  # the rows where the two differ are there


def test_bad_choices_get_clear_errors():
    logits, targets, rates, _ = random_problem(2, 4, seed=24)
    with pytest.raises(ValueError, match="positive_reduction must be one of"):
        ops.concurrent_softmax_loss(logits, targets, rates, positive_reduction="max")
    with pytest.raises(ValueError, match="ignore must have the logits' shape"):
        ops.concurrent_softmax_loss(logits, targets, rates, ignore=torch.zeros(2, 3, dtype=bool))
    with pytest.raises(ValueError, match="ignore must be a bool mask"):
        ops.concurrent_softmax_loss(logits, targets, rates, ignore=torch.zeros(2, 4))


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_opcheck_loss_with_ignored_columns(impl):
    logits, targets, rates, weights = random_problem(6, 5, seed=25, dtype=torch.float32)
    ignore = torch.zeros(6, 5, dtype=torch.bool)
    ignore[:, 4] = True
    q = ops._rates_complement(rates, torch.float32)
    logits.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.lsdet.concurrent_softmax_loss.default,
        (logits, targets, q, weights, impl, ignore),
    )
