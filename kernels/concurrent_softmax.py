"""Triton kernels of the concurrent softmax (Peng et al., CVPR 2020: loss eq. 3, scores eq. 5).

Both kernels take Q = 1 - R with its diagonal set to 1 (r_ii = 0), as fp32 [C, C]. Every sum
is accumulated in fp32 whatever the logits' dtype; no [N, C, C] intermediate exists.

Training (one program per block of BLOCK_M rows, column tiles of BLOCK_C, so any C works).
A row's positives are given as "slots": slot_cols [N, K] holds each row's positive columns,
padded with -1 (K = a power of two >= the most positives of any row); the uint8 column roles
say 0 = negative (y_j = 0), 1 = positive, 2 = ignored (in no sum, gradient 0). Then
    m   = max over the row's negative columns (the row max when it has none)
    S_i = sum_j (1 - y_j) q_ij e^{z_j - m}          for each positive i (a gathered row of Q)
    x_i = log S_i + m - z_i,   loss_i = w_i softplus(x_i) = -w_i log s*_i
    dL/dz_i = -w_i sigmoid(x_i)                                          (i positive)
    dL/dz_k = e^{z_k - m} sum_i A_i q_ik,  A_i = w_i / (S_i + e^{z_i - m})   (k negative)
D_i = e^m S_i + e^{z_i} is only needed at the positives, and A is zero elsewhere, so the work
is O(N K C) (the dense products E (1 - R)^T and A (1 - R) would be O(N C^2)). Three passes
over the row block's logits: the shift, S (and the positives' loss and gradient), the
negatives' gradient. Shifting by the largest *negative* logit rather than the row max keeps a
positive far below another positive finite.

The gradient goes to a fresh fp32 buffer: nothing autograd saved is ever written.

Inference: s+_i = e^{z_i - m} / sum_j q_ij e^{z_j - m} (m = row max) for every class, a dense
[N, C] x [C, C] product: tiled ``tl.dot`` with fp32 accumulation, one program per (row block,
column tile); a denominator that underflows to 0 gives 0, not NaN.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The inference kernel's products on tensor cores: "tf32x3" keeps close to fp32 accuracy
# (all summands are non-negative, so there is no cancellation) at a fraction of the cost of
# plain fp32 FMA. ROCm offers only "ieee" (and "tf32" on CDNA3).
DOT_PRECISION = "tf32x3" if torch.version.hip is None else "ieee"

# The configurations autotuned on a GPU. Every one of them compiles for sm_80 and sm_90 within
# the shared memory a block may use there (checked ahead of time without a GPU by
# tests/test_kernels_aot.py, ``python -m lsdet.kernels.aot``).
TRAIN_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_C": bc}, num_warps=w)
    for bm, bc, w in [(4, 256, 4), (8, 128, 4), (8, 256, 8), (16, 128, 8), (32, 64, 8)]
]
# Shared memory of the inference kernel grows with the tiles and the pipeline stages (fp32,
# sm_80 / sm_90): 32x64 3 stages 80 / 80 KB, 64x64 3 stages 112 / 128 KB, 64x128 1 stage
# 64 / 192 KB, 128x64 2 stages 128 / 144 KB; the limits are 163 / 227 KB per block.
# 64x128 with 2-3 stages (224-384 KB) and 128x128 with any (>= 256 KB on sm_90) cannot launch.
INFER_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_C": bc}, num_warps=w, num_stages=s)
    for bm, bc, w, s in [
        (32, 64, 4, 3),
        (64, 64, 4, 3),
        (64, 128, 8, 1),
        (128, 64, 8, 2),
    ]
]
# Under the interpreter, @triton.autotune with several configs fails (and each config would
# cost seconds of interpretation): one config there.
_INTERPRETER_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_C": 64}, num_warps=4)]


@triton.jit
def _softplus(x):
    # log(1 + e^x) without overflow; softplus(-inf) = 0.
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _negative_row_max(
    z_ptr, y_ptr, rows, row_mask, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr
):
    neg_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols[None, :] < C)
        offs = rows[:, None] * C + cols[None, :]
        z = tl.load(z_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask, other=1)
        row_max = tl.maximum(row_max, tl.max(z, axis=1))
        neg_max = tl.maximum(neg_max, tl.max(tl.where(y == 0, z, float("-inf")), axis=1))
    shift = tl.where(neg_max == float("-inf"), row_max, neg_max)
    # Rows past N (masked) would give -inf - -inf = NaN below; any finite value will do.
    return tl.where(shift == float("-inf"), 0.0, shift)


@triton.autotune(
    configs=_INTERPRETER_CONFIGS if _INTERPRET else TRAIN_CONFIGS, key=["C", "NUM_SLOTS"]
)
@triton.jit
def _concurrent_softmax_loss_kernel(
    z_ptr,  # [N, C] logits, any float dtype
    y_ptr,  # [N, C] uint8 column roles: 0 = negative, 1 = positive, 2 = ignored
    slot_ptr,  # [N, NUM_SLOTS] int32: each row's positive columns, -1 = padding
    q_ptr,  # [C, C] fp32, q_ij = 1 - r_ij
    w_ptr,  # [C] fp32 per-class weights
    loss_ptr,  # [N] fp32 out: per-row loss
    grad_ptr,  # [N, C] fp32 out: dL/dz
    N,
    C,
    NUM_SLOTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    # int64 row indices: rows * C overflows int32 past 2^31 logits.
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    shift = _negative_row_max(z_ptr, y_ptr, rows, row_mask, C, BLOCK_M, BLOCK_C)

    slots = tl.arange(0, NUM_SLOTS)
    slot_cols = tl.load(
        slot_ptr + rows[:, None] * NUM_SLOTS + slots[None, :], mask=row_mask[:, None], other=-1
    )
    valid = slot_cols >= 0  # [BLOCK_M, NUM_SLOTS]
    slot_cols = tl.where(valid, slot_cols, 0)
    q_rows = q_ptr + slot_cols.to(tl.int64) * C  # start of each positive's row of Q

    # Pass 2: S at every slot, [BLOCK_M, NUM_SLOTS].
    competitors = tl.zeros([BLOCK_M, NUM_SLOTS], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols[None, :] < C)
        offs = rows[:, None] * C + cols[None, :]
        z = tl.load(z_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask, other=1)
        exp_negative = tl.where(y == 0, tl.exp(z - shift[:, None]), 0.0)  # [BM, BC]
        q_mask = valid[:, :, None] & (cols[None, None, :] < C)
        q = tl.load(q_rows[:, :, None] + cols[None, None, :], mask=q_mask, other=0.0)
        competitors += tl.sum(exp_negative[:, None, :] * q, axis=2)

    z_pos = tl.load(
        z_ptr + rows[:, None] * C + slot_cols, mask=valid & row_mask[:, None], other=0.0
    ).to(tl.float32)
    w_pos = tl.load(w_ptr + slot_cols, mask=valid, other=0.0)
    x = tl.log(tl.where(valid, competitors, 1.0)) + shift[:, None] - z_pos
    loss = tl.sum(tl.where(valid, w_pos * _softplus(x), 0.0), axis=1)
    tl.store(loss_ptr + rows, loss, mask=row_mask)
    tl.store(
        grad_ptr + rows[:, None] * C + slot_cols,
        -w_pos / (1.0 + tl.exp(-x)),
        mask=valid & row_mask[:, None],
    )
    denom = competitors + tl.exp(z_pos - shift[:, None])
    usable = valid & (denom > 0)
    a = tl.where(usable, w_pos / tl.where(usable, denom, 1.0), 0.0)  # [BM, NUM_SLOTS]

    # Pass 3: the negatives' gradient e^{z_k - m} sum_i A_i q_ik.
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols[None, :] < C)
        offs = rows[:, None] * C + cols[None, :]
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask, other=1)
        q_mask = valid[:, :, None] & (cols[None, None, :] < C)
        q = tl.load(q_rows[:, :, None] + cols[None, None, :], mask=q_mask, other=0.0)
        a_q = tl.sum(a[:, :, None] * q, axis=1)  # [BM, BC]
        negative = mask & (y == 0)
        grad = tl.exp(tl.where(negative, z - shift[:, None], float("-inf"))) * a_q
        # Negatives get their gradient, ignored columns 0 (positives were written above).
        tl.store(grad_ptr + offs, grad, mask=mask & (y != 1))


@triton.autotune(configs=_INTERPRETER_CONFIGS if _INTERPRET else INFER_CONFIGS, key=["C"])
@triton.jit
def _concurrent_softmax_kernel(
    z_ptr,  # [N, C] logits
    qt_ptr,  # [C, C] fp32, (1 - R)^T with a diagonal of 1
    out_ptr,  # [N, C] out, the logits' dtype
    N,
    C,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_i = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols[None, :] < C)
        z = tl.load(z_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=float("-inf"))
        row_max = tl.maximum(row_max, tl.max(z.to(tl.float32), axis=1))
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)

    cols_i = pid_i * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    for j0 in range(0, C, BLOCK_C):
        cols_j = j0 + tl.arange(0, BLOCK_C)
        mask_j = row_mask[:, None] & (cols_j[None, :] < C)
        z_j = tl.load(z_ptr + rows[:, None] * C + cols_j[None, :], mask=mask_j, other=float("-inf"))
        e_j = tl.exp(z_j.to(tl.float32) - row_max[:, None])
        qt_mask = (cols_j[:, None] < C) & (cols_i[None, :] < C)
        qt = tl.load(qt_ptr + cols_j[:, None] * C + cols_i[None, :], mask=qt_mask, other=0.0)
        acc += tl.dot(e_j, qt, input_precision=DOT_PRECISION)
    mask_i = row_mask[:, None] & (cols_i[None, :] < C)
    offs_i = rows[:, None] * C + cols_i[None, :]
    z_i = tl.load(z_ptr + offs_i, mask=mask_i, other=float("-inf")).to(tl.float32)
    e_i = tl.exp(z_i - row_max[:, None])
    probs = tl.where(acc > 0, e_i / tl.where(acc > 0, acc, 1.0), 0.0)
    tl.store(out_ptr + offs_i, probs.to(out_ptr.dtype.element_ty), mask=mask_i)


def concurrent_softmax_loss_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    slot_cols: torch.Tensor,
    q: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row losses [N] fp32 and dL/dz [N, C] fp32 (for unit upstream gradient), in one launch.

    logits [N, C] (fp32/fp16/bf16), targets [N, C] uint8 column roles (0 = negative,
    1 = positive, 2 = ignored: in no denominator, gradient 0), slot_cols [N, K] int32
    (each row's positive columns, -1 padding, K a power of two), q = 1 - R [C, C] fp32 with a
    diagonal of 1, weights [C] fp32. All on the same device, contiguous.
    """
    n, c = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    grad = torch.empty(n, c, dtype=torch.float32, device=logits.device)
    if n == 0:
        return loss, grad

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]),)

    _concurrent_softmax_loss_kernel[grid](
        logits, targets, slot_cols, q, weights, loss, grad, n, c, NUM_SLOTS=slot_cols.shape[1]
    )
    return loss, grad


def concurrent_softmax_triton(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Inference scores s+ [N, C] in the logits' dtype; q = 1 - R with a diagonal of 1."""
    n, c = logits.shape
    out = torch.empty_like(logits)
    if n == 0:
        return out
    qt = q.t().contiguous()

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"]))

    _concurrent_softmax_kernel[grid](logits, qt, out, n, c, DOT_PRECISION=DOT_PRECISION)
    return out
