"""Triton kernels against the PyTorch reference, forward and gradient.

On CPU they run under TRITON_INTERPRET=1 (set by conftest.py), about 1 ms per program and
per tile product, hence the small N. On a CUDA machine the same tests run compiled when
TRITON_INTERPRET=0 is set (as ``make gpu-check`` does); fp32, fp16 and bf16 logits.
"""

import os

import pytest
import torch

from lsdet import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
    reason="no GPU and TRITON_INTERPRET is not set",
)
# Per input dtype: tolerances on the loss / gradient relative to the fp32 reference run on the
# same (rounded) logits.
TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-4),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-3),
}


def make_problem(n, c, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=gen) * 3).to(dtype)
    targets = torch.rand(n, c, generator=gen) < 3.0 / c
    targets[:, 0] |= ~targets.any(dim=1)
    targets[0] = False
    targets[0, 0] = True  # a background row
    rates = torch.rand(c, c, generator=gen) * (torch.rand(c, c, generator=gen) < 0.2)
    rates[1, 2] = 1.0
    weights = torch.rand(c, generator=gen) + 0.5
    weights[3 % c] = 0.0
    return [t.to(DEVICE) for t in (logits, targets, rates, weights)]


def loss_and_grad(logits, targets, rates, weights, impl):
    logits = logits.clone().requires_grad_(True)
    loss = ops.concurrent_softmax_loss(logits, targets, rates, weights, "none", impl=impl)
    upstream = torch.linspace(0.5, 1.5, logits.shape[0], device=logits.device)
    (grad,) = torch.autograd.grad((loss * upstream).sum(), logits)
    return loss, grad


@pytest.mark.parametrize(
    "n, c, dtype",
    [
        (21, 7, torch.float32),  # two row blocks, the second one partial
        (9, 37, torch.float32),
        (9, 37, torch.float16),
        (9, 37, torch.bfloat16),
        (6, 501, torch.float32),
        (5, 501, torch.float16),
        (3, 1100, torch.float32),  # C > 1024: many column tiles
    ],
)
def test_loss_kernel_matches_reference(n, c, dtype):
    logits, targets, rates, weights = make_problem(n, c, seed=c, dtype=dtype)
    loss, grad = loss_and_grad(logits, targets, rates, weights, "triton")
    loss_ref, grad_ref = loss_and_grad(logits, targets, rates, weights, "torch")
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, loss_ref, **TOLERANCES[dtype])
    torch.testing.assert_close(grad.float(), grad_ref.float(), **TOLERANCES[dtype])


def test_loss_kernel_one_label_zero_rates_is_cross_entropy():
    n, c = 19, 30
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(n, c, generator=gen) * 4).to(DEVICE).requires_grad_(True)
    labels = torch.randint(0, c, (n,), generator=gen).to(DEVICE)
    targets = torch.nn.functional.one_hot(labels, c).bool()  # a single slot per row
    rates = torch.zeros(c, c, device=DEVICE)
    loss = ops.concurrent_softmax_loss(logits, targets, rates, impl="triton")
    (grad,) = torch.autograd.grad(loss, logits)
    expected = torch.nn.functional.cross_entropy(logits, labels)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected, **TOLERANCES[torch.float32])
    torch.testing.assert_close(grad, grad_expected, **TOLERANCES[torch.float32])


@pytest.mark.parametrize(
    "n, c, dtype",
    [
        (21, 7, torch.float32),
        (9, 37, torch.float16),
        (9, 37, torch.bfloat16),
        (4, 501, torch.float32),
        (3, 1100, torch.float16),
    ],
)
def test_scores_kernel_matches_reference(n, c, dtype):
    logits, _, rates, _ = make_problem(n, c, seed=c + 1, dtype=dtype)
    rates.fill_diagonal_(0.5)  # ignored
    probs = ops.concurrent_softmax(logits, rates, impl="triton")
    probs_ref = ops.concurrent_softmax(logits, rates, impl="torch")
    assert probs.dtype == dtype
    torch.testing.assert_close(probs.float(), probs_ref.float(), **TOLERANCES[dtype])
    upstream = torch.randn(n, c, device=logits.device, generator=None).to(dtype)
    grads = []
    for impl in ("triton", "torch"):
        z = logits.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(
            (ops.concurrent_softmax(z, rates, impl=impl) * upstream).sum(), z
        )
        grads.append(g.float())
    torch.testing.assert_close(grads[0], grads[1], **TOLERANCES[dtype])


# A row without negatives has S = 0 and log(0) = -inf (its loss is 0 by softplus(-inf)).
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_loss_kernel_rows_with_many_or_all_positives():
    c = 40
    logits, targets, rates, weights = make_problem(5, c, seed=3, dtype=torch.float32)
    targets[:] = False
    targets[0, [1, 4, 9, 16, 25]] = True  # five positives: eight slots, three padding
    targets[1, 7] = True
    targets[2] = True  # no negative at all: loss 0, gradient 0
    targets[3, [0, 39]] = True
    targets[4, 20:23] = True
    loss, grad = loss_and_grad(logits, targets, rates, weights, "triton")
    loss_ref, grad_ref = loss_and_grad(logits, targets, rates, weights, "torch")
    torch.testing.assert_close(loss, loss_ref, **TOLERANCES[torch.float32])
    torch.testing.assert_close(grad, grad_ref, **TOLERANCES[torch.float32])
    assert loss[2] == 0 and torch.all(grad[2] == 0)


# exp overflows at masked-out columns inside the interpreted kernel (numpy warns; the values
# are discarded by the masks).
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_kernel_extreme_logits_and_zero_weights():
    c = 20
    rates = torch.zeros(c, c, device=DEVICE)
    rates[2, 5] = 1.0
    targets = torch.zeros(4, c, dtype=torch.bool, device=DEVICE)
    logits = torch.zeros(4, c, device=DEVICE)
    targets[0, 1], logits[0, 1] = True, 1e4  # confident: loss 0
    targets[1, 2], logits[1, 2] = True, -1e4  # hopeless: 1e4 + log(c - 2) (class 5 excluded)
    targets[2, [1, 2]] = True
    logits[2, 1], logits[2, 2] = 1e4, -1e4  # two positives 2e4 apart
    targets[3, 0] = True  # only the background, weight 0 below
    weights = torch.ones(c, device=DEVICE)
    weights[0] = 0.0
    loss, grad = loss_and_grad(logits, targets, rates, weights, "triton")
    loss_ref, grad_ref = loss_and_grad(logits, targets, rates, weights, "torch")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    expected = torch.tensor([0.0, 1e4 + torch.log(torch.tensor(c - 2.0)), 0.0, 0.0])
    expected[2] = 1e4 + torch.log(torch.tensor(c - 3.0))  # competitors: c - 2 negatives, -1
    torch.testing.assert_close(loss.cpu(), expected)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(grad, grad_ref)
    assert torch.all(grad[3] == 0)
    probs = ops.concurrent_softmax(logits, rates, impl="triton")
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs, ops.concurrent_softmax(logits, rates, impl="torch"))


def test_kernel_never_writes_into_saved_tensors():
    logits, targets, rates, weights = make_problem(8, 37, seed=11, dtype=torch.float32)
    logits.requires_grad_(True)
    saved = logits.detach().clone()
    loss = ops.concurrent_softmax_loss(logits, targets, rates, weights, impl="triton")
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (scaled,) = torch.autograd.grad(loss * 3.0, logits)
    assert torch.equal(logits.detach(), saved)
    assert torch.equal(first, second)
    torch.testing.assert_close(scaled, 3.0 * first)
    # The logits' storage is not reused as the gradient's.
    assert first.data_ptr() != logits.data_ptr()


# A row whose competitors are all ignored has S = 0: log(0) = -inf, softplus(-inf) = 0 (the
# interpreter's numpy warns).
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.parametrize("positive_reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_loss_kernel_ignored_columns_and_positive_mean_match_reference(positive_reduction, dtype):
    n, c = 21, 37
    logits, targets, rates, weights = make_problem(n, c, seed=11, dtype=dtype)
    gen = torch.Generator().manual_seed(12)
    ignore = (torch.rand(n, c, generator=gen) < 0.2).to(DEVICE)
    ignore[2] = ~targets[2]  # a row whose every non-positive is ignored
    upstream = torch.linspace(0.5, 1.5, n, device=DEVICE)
    results = {}
    for impl in ("triton", "torch"):
        z = logits.clone().requires_grad_(True)
        loss = ops.concurrent_softmax_loss(
            z,
            targets,
            rates,
            weights,
            "none",
            impl=impl,
            ignore=ignore,
            positive_reduction=positive_reduction,
        )
        (grad,) = torch.autograd.grad((loss * upstream).sum(), z)
        results[impl] = (loss, grad)
    (loss, grad), (loss_ref, grad_ref) = results["triton"], results["torch"]
    torch.testing.assert_close(loss, loss_ref, **TOLERANCES[dtype])
    torch.testing.assert_close(grad.float(), grad_ref.float(), **TOLERANCES[dtype])
    # Ignored columns get exactly 0 (never the fresh buffer's leftovers).
    assert torch.all(grad[ignore & ~targets] == 0)
    assert loss[2] == 0
