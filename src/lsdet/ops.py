"""Concurrent softmax (paper eq. 3-5), the public ops: the training loss with its exact gradient
and the inference scores. (``soft_balance_weights`` is re-exported from
``lsdet.sampling.soft_balance``, the home of soft-balance.)

Conventions: ``logits`` [N, C] with column 0 = background (the ops themselves treat every
column alike); ``targets`` [N, C] multi-hot (bool, uint8 or float; non-zero = positive);
``rates`` [C, C] with rates[i, j] = r_ij, the probability that an object of class i is also
labelled j (its diagonal is ignored); ``weights`` [C] per-column loss weights; ``ignore``
[N, C] bool (optional): columns of a row that are neither positive nor negative in eq. 3 (left
out of every denominator, gradient 0; a positive column stays positive).

Two implementations compute the same thing: Triton kernels (``lsdet.kernels``) and a PyTorch
reference. Both compute the loss (eq. 3) and its exact gradient in one forward pass (eq. 4 prints the
negatives' case loosely; the derivative of eq. 3 is dL/dz_k = w_k (s*_k - 1) for a positive k
and e^{z_k} sum_{i in K} w_i (1 - r_ik) / D_i otherwise); the
backward only scales that gradient. The loss's denominators D_i are only needed at a row's
positives, so both work over each row's positive columns (O(N K C) for at most K positives a
row, not the O(N C^2) of the dense products); finding them costs one device sync per call. Both are wrapped in ``torch.library`` custom ops
(``lsdet::concurrent_softmax_loss``, ``lsdet::concurrent_softmax``) with fake implementations
and autograd formulas, so ``torch.compile(fullgraph=True)`` traces through them.

Numerics: everything is accumulated in fp32 (fp64 for fp64 input). The loss shifts a row by
its largest *negative* logit, so a positive far below another positive still has a finite
loss. What remains inexact: when every competitor of a positive that is not fully excluded
(r_ij < 1) is more than ~87 below the row's largest negative logit *and* the positive is too,
its denominator underflows to 0 and its loss reads 0 (fp32); likewise an inference score whose
denominator underflows reads 0.
"""

from __future__ import annotations

import os

import torch

from lsdet.config_schema.loss import IMPLS, POSITIVE_REDUCTIONS
from lsdet.sampling.soft_balance import soft_balance_weights

__all__ = [
    "POSITIVE_REDUCTIONS",
    "concurrent_softmax",
    "concurrent_softmax_loss",
    "concurrent_softmax_loss_reference",
    "concurrent_softmax_reference",
    "soft_balance_weights",
]

_REDUCTIONS = ("none", "sum", "mean")


# ----------------------------------------------------------------------------------------
# PyTorch reference (the CPU path)
# ----------------------------------------------------------------------------------------


def _rates_complement(rates: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Q = 1 - R with a diagonal of 1 (r_ii = 0), as a contiguous [C, C] tensor."""
    q = 1.0 - rates.to(dtype)
    return q.fill_diagonal_(1.0).contiguous()


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _positive_slots(positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The positive pairs (rows, cols), sorted by row, each with its slot (0 for a row's first
    positive, 1 for its second, ...), and the number of slots (the most positives in a row)."""
    rows, cols = positive.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=positive.shape[0])
    starts = counts.cumsum(0) - counts
    slot = torch.arange(rows.numel(), device=rows.device) - starts.index_select(0, rows)
    num_slots = int(counts.max()) if rows.numel() else 0
    return rows, cols, slot, num_slots


def concurrent_softmax_loss_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    q: torch.Tensor,
    weights: torch.Tensor,
    ignore: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row losses [N] and dL/dz [N, C] of eq. 3 in plain PyTorch (fp32, or fp64 for fp64).

    ``q`` is 1 - R (see ``_rates_complement``); ``targets`` any dtype, non-zero = positive;
    ``ignore`` None or [N, C] bool: non-positive columns that are not negatives either (E = 0
    there, so they enter no S and get gradient 0).
    With the shift m = the row's largest negative logit and E = exp(z - m):
        S = (E * (1 - Y)) Q^T,   x = log S + m - z,   loss_i = w_i softplus(x_i)  (i positive)
        dL/dz_k = -w_k sigmoid(x_k)  (k positive),   E_k (A Q)_k  (k negative),
        A_i = y_i w_i / (S_i + e^{z_i - m}).
    S is only needed at the positive columns and A is zero elsewhere, so both products run
    over the positive (row, class) pairs, one "slot" at a time (slot s = every row's s-th
    positive): O(P C) work for P positives instead of the O(N C^2) of the dense products,
    and exact (no cancellation). The Triton kernel works the same way, row block by row block.
    """
    dtype = _compute_dtype(logits)
    z = logits.to(dtype)
    n = z.shape[0]
    positive = targets if targets.dtype == torch.bool else targets != 0
    q = q.to(dtype)
    w = weights.to(dtype)
    not_negative = positive if ignore is None else positive | ignore.to(torch.bool)
    negative_logits = torch.where(not_negative, float("-inf"), z)
    shift = negative_logits.amax(dim=1)
    if bool(torch.isinf(shift).any()):  # rows without a negative (or empty rows)
        shift = torch.where(torch.isinf(shift), z.amax(dim=1), shift)
        shift = torch.nan_to_num(shift, neginf=0.0)
    # E at the negatives, 0 at the positives and ignored columns (exp(-inf)); in place, to
    # spare [N, C] passes.
    exp_negative = negative_logits.sub_(shift[:, None]).exp_()

    rows, cols, slot, num_slots = _positive_slots(positive)
    row_loss = z.new_zeros(n)
    grad = None
    grad_positive = torch.empty_like(rows, dtype=dtype)
    flat_z = z.reshape(-1)
    # index_select / index_copy_ throughout: advanced indexing (t[idx]) is ~1000x slower on
    # CPU for these sizes (milliseconds per call).
    for s in range(num_slots):
        in_slot = (slot == s).nonzero()[:, 0]
        rows_s, cols_s = rows.index_select(0, in_slot), cols.index_select(0, in_slot)
        every_row = rows_s.numel() == n  # then rows_s == arange(n)
        # P = E * q_i for each pair (row, i): S_i = sum(P) and the pair's share of the
        # negatives' gradient is a_i P.
        products = q.index_select(0, cols_s)
        products.mul_(exp_negative if every_row else exp_negative.index_select(0, rows_s))
        competitors = products.sum(dim=1)  # S at the slot's pairs
        z_s = flat_z.index_select(0, rows_s * z.shape[1] + cols_s)
        shift_s, w_s = shift.index_select(0, rows_s), w.index_select(0, cols_s)
        x = torch.log(competitors) + shift_s - z_s
        # rows_s holds each row at most once: gather, add, scatter back.
        slot_loss = w_s * torch.nn.functional.softplus(x)
        row_loss.index_copy_(0, rows_s, row_loss.index_select(0, rows_s) + slot_loss)
        grad_positive.index_copy_(0, in_slot, -w_s * torch.sigmoid(x))
        denom = competitors + torch.exp(z_s - shift_s)
        a = torch.where(denom > 0, w_s / denom, 0.0)
        contribution = products.mul_(a[:, None])
        if grad is None and every_row:
            grad = contribution
        else:
            grad = z.new_zeros(z.shape) if grad is None else grad
            grad.index_copy_(0, rows_s, grad.index_select(0, rows_s) + contribution)
    if grad is None:
        grad = z.new_zeros(z.shape)  # contiguous, whatever the logits' strides
    # E = 0 at the positives (and ignored columns), so grad holds 0 there before this.
    grad.view(-1).index_copy_(0, rows * z.shape[1] + cols, grad_positive)
    return row_loss, grad


def _scores_parts(logits: torch.Tensor, q: torch.Tensor):
    """Eq. 5's pieces in the compute dtype: E = e^{z - rowmax}, T = E Q^T and s+ = E / T."""
    dtype = _compute_dtype(logits)
    z = logits.to(dtype)
    exp_shifted = torch.exp(z - z.amax(dim=1, keepdim=True))
    denom = exp_shifted @ q.to(dtype).t()
    probs = torch.where(denom > 0, exp_shifted / denom, 0.0)
    return exp_shifted, denom, probs


def concurrent_softmax_reference(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Eq. 5 in plain PyTorch: s+_i = e^{z_i} / sum_j q_ij e^{z_j}, in the logits' dtype."""
    return _scores_parts(logits, q)[2].to(logits.dtype)


# ----------------------------------------------------------------------------------------
# torch.library custom ops
# ----------------------------------------------------------------------------------------


def _triton_kernels():
    # Imported on the first Triton call only: Triton's import is slow, and the CPU path
    # never needs it.
    from lsdet.kernels import concurrent_softmax as kernels

    return kernels


@torch.library.custom_op("lsdet::concurrent_softmax_loss", mutates_args=())
def _loss_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    q: torch.Tensor,
    weights: torch.Tensor,
    impl: str,
    ignore: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "triton":
        positive = targets != 0
        rows, cols, slot, num_slots = _positive_slots(positive)
        width = 1 << max(num_slots - 1, 0).bit_length()  # a power of two >= num_slots
        slot_cols = torch.full((logits.shape[0], width), -1, dtype=torch.int32, device=rows.device)
        slot_cols.view(-1).index_copy_(0, rows * width + slot, cols.to(torch.int32))
        # The kernel's column roles: 0 = negative, 1 = positive, 2 = ignored.
        roles = positive.to(torch.uint8)
        if ignore is not None:
            roles = torch.where(positive, roles, ignore.to(torch.uint8) * 2)
        return _triton_kernels().concurrent_softmax_loss_triton(
            logits.contiguous(),
            roles.contiguous(),
            slot_cols,
            q.float().contiguous(),
            weights.float().contiguous(),
        )
    return concurrent_softmax_loss_reference(logits, targets, q, weights, ignore)


@_loss_op.register_fake
def _(logits, targets, q, weights, impl, ignore=None):
    dtype = _compute_dtype(logits)
    n, c = logits.shape
    return logits.new_empty(n, dtype=dtype), logits.new_empty(n, c, dtype=dtype)


def _loss_setup_context(ctx, inputs, output):
    logits = inputs[0]
    ctx.logits_dtype = logits.dtype
    ctx.save_for_backward(output[1])
    # The gradient output is not differentiated: no [N, C] zeros for its incoming gradient.
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _loss_backward(ctx, grad_loss, grad_of_grad_output):
    (grad_unit,) = ctx.saved_tensors
    if grad_loss is None:  # only the (non-differentiable) gradient output was used
        return None, None, None, None, None, None
    # Out of place: the saved gradient stays intact (backward may run again, retain_graph).
    grad_logits = (grad_unit * grad_loss.to(grad_unit.dtype)[:, None]).to(ctx.logits_dtype)
    return grad_logits, None, None, None, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup_context)


@torch.library.custom_op("lsdet::concurrent_softmax", mutates_args=())
def _scores_op(logits: torch.Tensor, q: torch.Tensor, impl: str) -> torch.Tensor:
    if impl == "triton":
        return _triton_kernels().concurrent_softmax_triton(logits.contiguous(), q.float())
    return concurrent_softmax_reference(logits, q)


@_scores_op.register_fake
def _(logits, q, impl):
    return torch.empty_like(logits)


def _scores_setup_context(ctx, inputs, output):
    logits, q, _ = inputs
    ctx.save_for_backward(logits, q)


def _scores_backward(ctx, grad_probs):
    # s_i = E_i / T_i, T = E Q^T:  dL/dz_k = g_k s_k - E_k ((g * s / T) Q)_k  (E = e^{z - max}).
    logits, q = ctx.saved_tensors
    exp_shifted, denom, probs = _scores_parts(logits, q)
    q = q.to(denom.dtype)
    g = grad_probs.to(denom.dtype)
    ratio = torch.where(denom > 0, g * probs / denom, 0.0)
    grad = g * probs - exp_shifted * (ratio @ q)
    return grad.to(logits.dtype), None, None


_scores_op.register_autograd(_scores_backward, setup_context=_scores_setup_context)


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


def _resolve_impl(impl: str, logits: torch.Tensor) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if logits.is_cuda else "torch"
    if impl == "triton" and not logits.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before lsdet.kernels is "
            "imported; use impl='torch' or CUDA tensors"
        )
    if impl == "triton" and logits.dtype == torch.float64:
        raise ValueError("impl='triton' takes float32/float16/bfloat16 logits, not float64")
    return impl


def _check_logits_rates(logits: torch.Tensor, rates: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    c = logits.shape[1]
    if tuple(rates.shape) != (c, c):
        raise ValueError(
            f"rates must be [C, C] = [{c}, {c}] for logits {tuple(logits.shape)}, "
            f"got {tuple(rates.shape)}"
        )
    if rates.device != logits.device:
        raise ValueError(f"rates on {rates.device}, logits on {logits.device}")


def concurrent_softmax_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rates: torch.Tensor,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
    impl: str = "auto",
    *,
    ignore: torch.Tensor | None = None,
    positive_reduction: str = "sum",
) -> torch.Tensor:
    """Concurrent softmax loss (paper eq. 3), differentiable with the exact gradient.

    For row n with positives K (targets != 0):
        s*_i = e^{z_i} / (sum_j (1 - y_j)(1 - r_ij) e^{z_j} + e^{z_i}),
        loss_n = -sum_{i in K} w_i log s*_i                       (positive_reduction="sum")
        loss_n = -(1 / |K|) sum_{i in K} w_i log s*_i              (positive_reduction="mean")
    With rates = 0 and one positive per row this is softmax cross-entropy, whatever the
    positive reduction. A row without any positive has loss 0 and gradient 0 (the op does not
    check, to avoid a device sync). Columns marked in ``ignore`` (and not positive) are
    neither positive nor negative: they leave the sum over j (as if y_j = 1 without a term of
    their own) and get gradient 0.

    Args:
        logits: [N, C] float32/bfloat16/float16 (float64 with impl="torch").
        targets: [N, C] multi-hot, bool/uint8/float; non-zero = positive.
        rates: [C, C], rates[i, j] = r_ij in [0, 1]; the diagonal is ignored.
        weights: [C] per-class weights w (None = 1).
        reduction: "none" (per-row [N]), "sum", or "mean" over rows.
        impl: "auto" (Triton for CUDA tensors, PyTorch otherwise), "triton", "torch".
        ignore: None, or [N, C] bool: the columns of each row left out of eq. 3.
        positive_reduction: how a row's positives combine: "sum" (eq. 3 as printed) or "mean"
            (the sum divided by the row's number of positives |K|; its gradient likewise).

    Returns:
        The loss in float32 (float64 for float64 logits): [N] for "none", else a scalar.
    """
    _check_logits_rates(logits, rates)
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(
            f"targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if positive_reduction not in POSITIVE_REDUCTIONS:
        raise ValueError(
            f"positive_reduction must be one of {POSITIVE_REDUCTIONS}, got {positive_reduction!r}"
        )
    c = logits.shape[1]
    if weights is None:
        weights = torch.ones(c, dtype=torch.float32, device=logits.device)
    elif tuple(weights.shape) != (c,):
        raise ValueError(f"weights must be [C] = [{c}], got shape {tuple(weights.shape)}")
    if ignore is not None:
        if tuple(ignore.shape) != tuple(logits.shape):
            raise ValueError(
                f"ignore must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(ignore.shape)}"
            )
        if ignore.dtype != torch.bool:
            raise ValueError(f"ignore must be a bool mask, got {ignore.dtype}")
    for name, tensor in (("targets", targets), ("weights", weights), ("ignore", ignore)):
        if tensor is not None and tensor.device != logits.device:
            raise ValueError(f"{name} on {tensor.device}, logits on {logits.device}")
    resolved = _resolve_impl(impl, logits)
    q = _rates_complement(rates, _compute_dtype(logits))
    row_loss, _ = _loss_op(logits, targets, q, weights, resolved, ignore)
    if positive_reduction == "mean":
        # Outside the op: autograd divides the row's gradient by |K| too.
        num_positive = (targets != 0).sum(dim=1).clamp(min=1)
        row_loss = row_loss / num_positive.to(row_loss.dtype)
    if reduction == "none":
        return row_loss
    if reduction == "sum":
        return row_loss.sum()
    return row_loss.mean()


def concurrent_softmax(
    logits: torch.Tensor, rates: torch.Tensor, impl: str = "auto"
) -> torch.Tensor:
    """Concurrent softmax scores at inference (paper eq. 5), differentiable.

        s+_i = e^{z_i} / sum_j (1 - r_ij) e^{z_j},   with r_ii = 0.

    Args:
        logits: [N, C] float32/bfloat16/float16 (float64 with impl="torch").
        rates: [C, C], rates[i, j] = r_ij; the diagonal is ignored.
        impl: "auto", "triton" or "torch" (see ``concurrent_softmax_loss``).

    Returns:
        [N, C] scores in the logits' dtype (each in [0, 1]; rows do not sum to 1 unless R = 0).
    """
    _check_logits_rates(logits, rates)
    resolved = _resolve_impl(impl, logits)
    q = _rates_complement(rates, _compute_dtype(logits))
    return _scores_op(logits, q, resolved)
