"""Benchmark: the concurrent softmax loss (forward, backward, both) against its baselines.
This module times them on CPU or GPU, prints the table of ratios and plots it.

Side by side, for each size N x C (rows x logit columns):
  lsdet                 ``lsdet.ops.concurrent_softmax_loss`` (Triton kernel on a GPU; on CPU
                        the PyTorch path, which is the reference run through the custom op)
  reference eager       the PyTorch reference (``concurrent_softmax_loss_reference``), eager
  reference compiled    the same under ``torch.compile``
  F.cross_entropy       plain softmax cross-entropy on the primary label: the floor
The ratios printed are reference/lsdet (speed-up over each reference) and lsdet/CE (cost over
the floor). Timing: ``triton.testing.do_bench`` on a GPU (median, 20% and 80% quantiles),
``torch.utils.benchmark`` on CPU (median, 20%/80% of the measured blocks). Peak memory is the
largest extra allocation during one forward+backward, beyond the inputs (CUDA allocator
statistics on a GPU, the profiler's allocation events on CPU). "lsdet GB/s" is the least
traffic of the step (``useful_bytes``) over lsdet's time; with --peak-gbs it is also given
as a share of the card's bandwidth ("lsdet % of peak"). On a GPU each fwd+bwd row is marked
against the goals (GPU_GOALS): >= 3x the eager reference, >= 1.5x the compiled one, <= 2x
``F.cross_entropy``, >= 60% of the bandwidth.

The problem: logits ~ 3 N(0, 1); one primary label per row (a quarter of the rows
background), a second positive on a fifth of the foreground rows; rates with 2% non-zero
entries in [0.01, 1] (row/col 0 = 0); weights in [0.5, 1.5].

    python -m lsdet.bench.kernels                    # N in {2048, 8192, 32768} x C in {501, 602, 1204}
    python -m lsdet.bench.kernels --small            # 2048 x 501 and 8192 x 501
    python -m lsdet.bench.kernels --sizes 8192x501 --out outputs/bench_kernels
"""

from __future__ import annotations

import argparse
import csv
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lsdet import ops

FULL_SIZES = list(itertools.product([2048, 8192, 32768], [501, 602, 1204]))
SMALL_SIZES = [(2048, 501), (8192, 501)]
MODES = ("fwd", "bwd", "fwd+bwd")
# CPU timing: rounds x (every method and mode for this many seconds).
CPU_ROUNDS = 5
CPU_ROUND_SECONDS = 0.2
METHODS = ("lsdet", "reference eager", "reference compiled", "F.cross_entropy")


def make_problem(n: int, c: int, device: str, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen) * 3
    labels = torch.randint(1, c, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.25] = 0
    targets = torch.zeros(n, c, dtype=torch.bool)
    targets[torch.arange(n), labels] = True
    second = torch.randint(1, c, (n,), generator=gen)
    extra = (torch.rand(n, generator=gen) < 0.2) & (labels > 0)
    targets[torch.arange(n)[extra], second[extra]] = True
    rates = torch.rand(c, c, generator=gen) * 0.99 + 0.01
    rates *= torch.rand(c, c, generator=gen) < 0.02
    rates[0] = 0
    rates[:, 0] = 0
    weights = torch.rand(c, generator=gen) + 0.5
    return (
        logits.to(device, dtype),
        targets.to(device),
        labels.to(device),
        rates.to(device),
        weights.to(device),
    )


class _PrecomputedGradient(torch.autograd.Function):
    """Autograd around a function returning (row losses, dL/dz), as the custom op has."""

    @staticmethod
    def forward(ctx, logits, loss_and_grad, targets, q, weights):
        rows, grad = loss_and_grad(logits, targets, q, weights)
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        (grad,) = ctx.saved_tensors
        return (grad * grad_rows[:, None]).to(ctx.logits_dtype), None, None, None, None


def method_forwards(
    problem, compile_backend: str = "inductor"
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each method as logits -> scalar loss (differentiable)."""
    _, targets, labels, rates, weights = problem
    q = ops._rates_complement(rates, torch.float32)
    compiled_reference = torch.compile(
        ops.concurrent_softmax_loss_reference, backend=compile_backend
    )

    def reference(fn):
        return lambda z: _PrecomputedGradient.apply(z, fn, targets, q, weights).mean()

    return {
        "lsdet": lambda z: ops.concurrent_softmax_loss(z, targets, rates, weights),
        "reference eager": reference(ops.concurrent_softmax_loss_reference),
        "reference compiled": reference(compiled_reference),
        "F.cross_entropy": lambda z: F.cross_entropy(z, labels),
    }


def time_ms(
    fns: dict[str, Callable[[], object]], device: str, grad_to_none: list[torch.Tensor]
) -> dict[str, tuple[float, float, float]]:
    """Per name: (median, 20% quantile, 80% quantile) in milliseconds.

    On CPU the functions are timed in interleaved rounds, so that a change of load on a shared
    machine hits every method alike.
    """
    if device == "cuda":
        import triton.testing  # here, not at the top: Triton imports slowly, only GPU runs need it

        return {
            name: tuple(
                float(v)
                for v in triton.testing.do_bench(
                    fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none
                )
            )
            for name, fn in fns.items()
        }
    from torch.utils import benchmark

    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(CPU_ROUNDS):
        for name, fn in fns.items():

            def step(fn=fn):
                for tensor in grad_to_none:
                    tensor.grad = None
                fn()

            measurement = benchmark.Timer("step()", globals={"step": step}).blocked_autorange(
                min_run_time=CPU_ROUND_SECONDS
            )
            times[name].extend(t / measurement.number_per_run * 1e3 for t in measurement.raw_times)
    return {
        name: (float(np.median(t)), float(np.quantile(t, 0.2)), float(np.quantile(t, 0.8)))
        for name, t in times.items()
    }


def peak_memory_mb(fn: Callable[[], object], device: str) -> float:
    """Largest extra memory held while fn runs (beyond what was allocated before), MiB."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    if not events:
        return float("nan")
    return float(np.cumsum([nbytes for _, nbytes in events]).max()) / 2**20


def benchmark_size(
    n: int, c: int, device: str, dtype: torch.dtype, compile_backend: str = "inductor"
) -> list[dict]:
    problem = make_problem(n, c, device, dtype)
    logits = problem[0].clone().requires_grad_(True)
    forwards = method_forwards(problem, compile_backend)
    fns, losses, peaks = {}, {}, {}
    for method, forward in forwards.items():
        forward(logits).backward()  # warm-up: compilation, autotuning
        logits.grad = None

        def full(forward=forward):
            forward(logits).backward()

        peaks[method] = peak_memory_mb(full, device)
        logits.grad = None
        losses[method] = forward(logits)  # its graph is kept for the backward-only timing
        fns[(method, "fwd")] = lambda forward=forward: forward(logits)
        fns[(method, "bwd")] = lambda loss=losses[method]: loss.backward(retain_graph=True)
        fns[(method, "fwd+bwd")] = full
    timings = time_ms(fns, device, [logits])
    rows = []
    for (method, mode), (median, low, high) in timings.items():
        rows.append(
            dict(
                N=n,
                C=c,
                method=method,
                mode=mode,
                ms=median,
                ms_p20=low,
                ms_p80=high,
                peak_mb=peaks[method],
            )
        )
    return rows


def useful_bytes(n: int, c: int, mode: str, element_size: int) -> int:
    """The least memory traffic of a loss step: fwd reads the logits and targets (1 byte) and
    writes the row losses; bwd writes dL/dz (the logits' dtype); fwd+bwd does both."""
    forward = n * c * (element_size + 1) + n * 4
    backward = n * c * element_size
    return {"fwd": forward, "bwd": backward, "fwd+bwd": forward + backward}[mode]


# The goals of lsdet's loss on a GPU: (column, comparison, threshold).
GPU_GOALS = (
    ("eager/lsdet", ">=", 3.0),
    ("compiled/lsdet", ">=", 1.5),
    ("lsdet/CE", "<=", 2.0),
    ("lsdet % of peak", ">=", 60.0),
)


def goal_flags(row: dict) -> dict[str, bool | None]:
    """Per goal of GPU_GOALS, whether the ratio-table row meets it (None: not measured, e.g.
    the share of the bandwidth when the card's peak is unknown)."""
    flags: dict[str, bool | None] = {}
    for column, comparison, threshold in GPU_GOALS:
        value = row.get(column)
        if value is None or value != value:  # absent or NaN
            flags[f"{column} {comparison} {threshold:g}"] = None
        elif comparison == ">=":
            flags[f"{column} {comparison} {threshold:g}"] = bool(value >= threshold)
        else:
            flags[f"{column} {comparison} {threshold:g}"] = bool(value <= threshold)
    return flags


def ratio_table(
    rows: list[dict], element_size: int = 4, peak_gbs: float | None = None
) -> list[dict]:
    """Per size and mode: each method's ms (median, 20% and 80% quantiles), the ratios against
    lsdet, lsdet's effective bandwidth (``useful_bytes`` / time) and, given the card's peak
    bandwidth in GB/s, its share of it in percent."""
    table = []

    def key(row):
        return row["N"], row["C"], MODES.index(row["mode"])

    for (n, c, _), group in itertools.groupby(sorted(rows, key=key), key=key):
        group = list(group)
        mode = group[0]["mode"]
        by_method = {r["method"]: r for r in group}
        lsdet = by_method["lsdet"]["ms"]
        gbs = useful_bytes(n, c, mode, element_size) / lsdet / 1e6
        row = dict(
            N=n,
            C=c,
            mode=mode,
            **{f"{m} ms": by_method[m]["ms"] for m in METHODS},
            **{"lsdet ms p20": by_method["lsdet"]["ms_p20"]},
            **{"lsdet ms p80": by_method["lsdet"]["ms_p80"]},
            **{"eager/lsdet": by_method["reference eager"]["ms"] / lsdet},
            **{"compiled/lsdet": by_method["reference compiled"]["ms"] / lsdet},
            **{"lsdet/CE": lsdet / by_method["F.cross_entropy"]["ms"]},
            **{"lsdet GB/s": gbs},
            **{f"{m} peak MiB": by_method[m]["peak_mb"] for m in METHODS},
        )
        if peak_gbs:
            row["lsdet % of peak"] = 100.0 * gbs / peak_gbs
        table.append(row)
    return table


def run_benchmark(
    sizes: list[tuple[int, int]],
    device: str,
    dtype: torch.dtype,
    compile_backend: str = "inductor",
    peak_gbs: float | None = None,
    progress: bool = True,
) -> tuple[list[dict], list[dict]]:
    """(one row per size, method and mode; the ratio table) for the given sizes."""
    rows = []
    for n, c in tqdm(sizes, desc="sizes", unit="size", disable=not progress):
        rows.extend(benchmark_size(n, c, device, dtype, compile_backend))
    table = ratio_table(rows, element_size=torch.finfo(dtype).bits // 8, peak_gbs=peak_gbs)
    return rows, table


def print_table(table: list[dict]) -> None:
    columns = list(table[0])
    widths = [max(len(col), 9) for col in columns]
    print("  ".join(col.rjust(w) for col, w in zip(columns, widths, strict=True)))
    for row in table:
        cells = []
        for col, w in zip(columns, widths, strict=True):
            value = row[col]
            cells.append((f"{value:.2f}" if isinstance(value, float) else str(value)).rjust(w))
        print("  ".join(cells))


def plot(table: list[dict], path: Path, device: str, device_is_gpu: bool) -> None:
    import matplotlib  # here: the Agg backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [r for r in table if r["mode"] == "fwd+bwd"]
    labels = [f"{r['N']}x{r['C']}" for r in full]
    x = np.arange(len(full))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(full)), 4))
    for k, method in enumerate(METHODS):
        ratios = [r[f"{method} ms"] / r["F.cross_entropy ms"] for r in full]
        ax.bar(x + (k - 1.5) * 0.2, ratios, 0.2, label=method)
    goal = 2.0 if device_is_gpu else 3.0
    ax.axhline(
        goal, color="black", linestyle="--", linewidth=1, label=f"goal for lsdet ({goal:g}x)"
    )
    ax.set_xticks(x, labels)
    ax.set_ylabel("forward + backward time / F.cross_entropy")
    ax.set_title(f"concurrent softmax loss, N x C ({device})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            n, c = item.lower().split("x")
            sizes.append((int(n), int(c)))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not NxC (e.g. 8192x501)") from None
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, help="comma-separated NxC, e.g. 8192x501")
    parser.add_argument("--small", action="store_true", help="2048x501 and 8192x501 only")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/bench_kernels"),
        help="folder for results.csv, ratios.csv and fwd_bwd.png",
    )
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend of the reference"
    )
    parser.add_argument(
        "--peak-gbs",
        type=float,
        help="the card's memory bandwidth in GB/s (e.g. 3350 for an H100 SXM), to print the "
        "share lsdet reaches (the goal is 60%%)",
    )
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = args.sizes or (SMALL_SIZES if args.small else FULL_SIZES)
    dtype = getattr(torch, args.dtype)
    name = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {name}; dtype {args.dtype}; lsdet runs "
        f"{'the Triton kernel' if device == 'cuda' else 'the PyTorch path'}"
    )

    rows, table = run_benchmark(sizes, device, dtype, args.compile_backend, args.peak_gbs)
    print_table(table)
    if device == "cuda":
        print("goals (fwd+bwd): eager/lsdet >= 3, compiled/lsdet >= 1.5, lsdet/CE <= 2, ")
        print("                 >= 60% of the card's bandwidth (with --peak-gbs)")
        for row in table:
            if row["mode"] == "fwd+bwd":
                verdicts = ", ".join(
                    f"{goal}: {'met' if met else 'not met' if met is not None else 'n/a'}"
                    for goal, met in goal_flags(row).items()
                )
                print(f"{row['N']}x{row['C']} fwd+bwd: {verdicts}")
    else:
        print("goal (CPU, fwd+bwd, 8192x501): lsdet/CE <= 3")

    args.out.mkdir(parents=True, exist_ok=True)
    for filename, data in (("results.csv", rows), ("ratios.csv", table)):
        with open(args.out / filename, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    plot(table, args.out / "fwd_bwd.png", name, device == "cuda")
    print(
        f"wrote {args.out / 'results.csv'}, {args.out / 'ratios.csv'}, {args.out / 'fwd_bwd.png'}"
    )


if __name__ == "__main__":
    main()
