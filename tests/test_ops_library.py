"""The torch.library registration of lsdet.ops: opcheck and torch.compile without graph breaks."""

import pytest
import torch
import torch.nn.functional as F

from lsdet import ops


def small_problem(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen, dtype=dtype)
    targets = torch.zeros(6, 5, dtype=torch.bool)
    targets[torch.arange(6), torch.tensor([0, 1, 2, 3, 4, 1])] = True
    targets[1, 3] = True
    rates = torch.rand(5, 5, generator=gen, dtype=dtype) * 0.5
    q = ops._rates_complement(rates, dtype)
    weights = torch.rand(5, generator=gen, dtype=dtype) + 0.5
    return logits, targets, rates, q, weights


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_opcheck_loss(impl):
    logits, targets, _, q, weights = small_problem()
    logits.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.lsdet.concurrent_softmax_loss.default, (logits, targets, q, weights, impl)
    )


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_opcheck_scores(impl):
    logits, _, _, q, _ = small_problem()
    logits.requires_grad_(True)
    torch.library.opcheck(torch.ops.lsdet.concurrent_softmax.default, (logits, q, impl))


def test_torch_compile_fullgraph_matches_eager():
    logits, targets, rates, _, weights = small_problem()
    linear = torch.nn.Linear(5, 5)

    def model_loss(x):
        z = linear(x)
        loss = ops.concurrent_softmax_loss(z, targets, rates, weights, impl="torch")
        scores = ops.concurrent_softmax(z, rates, impl="torch")
        return loss + scores.sum() * 0.1 + F.cross_entropy(z, targets.float().argmax(1))

    # aot_eager traces through Dynamo and AOTAutograd like inductor does, without the ~20 s of
    # C++ code generation on CPU; a graph break would fail under fullgraph=True.
    compiled = torch.compile(model_loss, fullgraph=True, backend="aot_eager")
    eager_loss = model_loss(logits)
    (eager_grad,) = torch.autograd.grad(eager_loss, linear.weight)
    compiled_loss = compiled(logits)
    (compiled_grad,) = torch.autograd.grad(compiled_loss, linear.weight)
    torch.testing.assert_close(compiled_loss, eager_loss)
    torch.testing.assert_close(compiled_grad, eager_grad)
