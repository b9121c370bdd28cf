"""Ahead-of-time compilation of every Triton kernel variant for NVIDIA GPUs, without a GPU.

A variant is one (kernel, autotune config, logits dtype, number of positive slots) that
``lsdet.ops`` can launch. Each is compiled with ``triton.compile`` for a target compute
capability (the ptxas shipped with Triton does the last step, no GPU or CUDA driver needed) and
checked against the shared memory a block of that target may use: a config above it fails with
OutOfResources on the GPU, so the autotuner could never pick it. Registers per thread and the
stack frame (which holds register spills; the kernels declare no local arrays) are read from
the cubin with the cuobjdump shipped with Triton.

    python -m lsdet.kernels.aot --targets sm_80,sm_90          # table; exit 1 if any fails
    python -m lsdet.kernels.aot --jobs 2 --json aot.json

The Triton interpreter replaces the kernels by Python functions, so this module refuses to run
with TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

# Largest shared memory one block may opt in to, bytes, per compute capability (CUDA C++
# Programming Guide, "Technical Specifications per Compute Capability": 163 KB on sm_80,
# 227 KB on sm_90).
SHARED_MEMORY_LIMIT = {80: 166_912, 90: 232_448}
GPU_NAMES = {80: "A100", 90: "H100"}
# The logits dtypes the ops accept on the Triton path, as Triton pointer element types.
LOGITS_DTYPES = ("fp32", "fp16", "bf16")
# ops._loss_op pads each row's positive columns to a power of two >= the most positives of a
# row. Open Images boxes carry a leaf and its ancestors (5 levels) and merged co-labels.
SLOT_COUNTS = (1, 2, 4, 8, 16)

# Per kernel: each argument's Triton type; "{logits}" stands for the logits' element type.
KERNEL_SIGNATURES: dict[str, dict[str, str]] = {
    "_concurrent_softmax_loss_kernel": {
        "z_ptr": "*{logits}",
        "y_ptr": "*u8",
        "slot_ptr": "*i32",
        "q_ptr": "*fp32",
        "w_ptr": "*fp32",
        "loss_ptr": "*fp32",
        "grad_ptr": "*fp32",
        "N": "i32",
        "C": "i32",
        "NUM_SLOTS": "constexpr",
        "BLOCK_M": "constexpr",
        "BLOCK_C": "constexpr",
    },
    "_concurrent_softmax_kernel": {
        "z_ptr": "*{logits}",
        "qt_ptr": "*fp32",
        "out_ptr": "*{logits}",
        "N": "i32",
        "C": "i32",
        "DOT_PRECISION": "constexpr",
        "BLOCK_M": "constexpr",
        "BLOCK_C": "constexpr",
    },
}


@dataclass(frozen=True)
class KernelVariant:
    """One launchable specialisation of a kernel."""

    kernel: str
    block_sizes: tuple[tuple[str, int], ...]  # the autotune config's constexprs
    num_warps: int
    num_stages: int
    dtype: str  # the logits' element type, one of LOGITS_DTYPES
    num_slots: int | None = None  # the loss kernel's NUM_SLOTS

    def label(self) -> str:
        blocks = "x".join(str(v) for _, v in self.block_sizes)
        slots = f" K={self.num_slots}" if self.num_slots is not None else ""
        return f"{self.kernel} {blocks} w{self.num_warps} s{self.num_stages} {self.dtype}{slots}"


@dataclass
class CompileResult:
    variant: KernelVariant
    capability: int
    error: str | None = None
    shared_bytes: int | None = None
    registers: int | None = None
    stack_bytes: int | None = None
    seconds: float = 0.0
    shared_limit: int = field(init=False)

    def __post_init__(self) -> None:
        self.shared_limit = SHARED_MEMORY_LIMIT[self.capability]

    @property
    def ok(self) -> bool:
        """Compiled, and its shared memory fits the target."""
        return self.error is None and self.shared_bytes is not None and self.fits

    @property
    def fits(self) -> bool:
        return self.shared_bytes is not None and self.shared_bytes <= self.shared_limit

    def problem(self) -> str | None:
        """Why this variant cannot launch on its target, or None."""
        if self.error is not None:
            return f"compile error: {self.error}"
        if not self.fits:
            return (
                f"needs {self.shared_bytes:,} B of shared memory, sm_{self.capability} "
                f"allows {self.shared_limit:,} B per block"
            )
        return None

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "variant": {**asdict(self.variant), "label": self.variant.label()},
            "ok": self.ok,
        }


def _require_compiler() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError(
            "ahead-of-time compilation needs the Triton compiler: unset TRITON_INTERPRET "
            "(it is 1 here, which turns the kernels into interpreted Python functions)"
        )


def _kernel_module():
    _require_compiler()
    from lsdet.kernels import concurrent_softmax

    return concurrent_softmax


def autotuned_kernels() -> dict[str, object]:
    """The kernels (every @triton.autotune object) of lsdet.kernels.concurrent_softmax."""
    from triton.runtime.autotuner import Autotuner

    module = _kernel_module()
    return {name: obj for name, obj in vars(module).items() if isinstance(obj, Autotuner)}


def jit_function(kernel: object):
    """Unwraps autotune/heuristics decorators down to the JITFunction."""
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, JITFunction):
        if not hasattr(fn, "fn"):
            raise TypeError(f"{kernel!r} does not wrap a triton.jit function")
        fn = fn.fn
    return fn


def kernel_variants(
    dtypes: Sequence[str] = LOGITS_DTYPES, slot_counts: Sequence[int] = SLOT_COUNTS
) -> list[KernelVariant]:
    """Every (kernel, autotune config, dtype[, slots]) variant. A kernel without an entry in
    KERNEL_SIGNATURES, or whose arguments differ from it, is an error (so none is skipped)."""
    variants = []
    for name, kernel in sorted(autotuned_kernels().items()):
        if name not in KERNEL_SIGNATURES:
            raise KeyError(f"kernel {name} has no entry in lsdet.kernels.aot.KERNEL_SIGNATURES")
        arg_names = jit_function(kernel).arg_names
        if list(KERNEL_SIGNATURES[name]) != list(arg_names):
            raise ValueError(
                f"KERNEL_SIGNATURES[{name!r}] lists {list(KERNEL_SIGNATURES[name])}, "
                f"the kernel takes {arg_names}"
            )
        slots: Sequence[int | None] = slot_counts if "NUM_SLOTS" in arg_names else [None]
        for config in kernel.configs:
            for dtype in dtypes:
                for num_slots in slots:
                    variants.append(
                        KernelVariant(
                            kernel=name,
                            block_sizes=tuple(config.kwargs.items()),
                            num_warps=config.num_warps,
                            num_stages=config.num_stages,
                            dtype=dtype,
                            num_slots=num_slots,
                        )
                    )
    return variants


def _signature_and_constexprs(variant: KernelVariant) -> tuple[dict, dict, dict]:
    module = _kernel_module()
    signature = {
        arg: kind.format(logits=variant.dtype)
        for arg, kind in KERNEL_SIGNATURES[variant.kernel].items()
    }
    constexprs = dict(variant.block_sizes)
    if variant.num_slots is not None:
        constexprs["NUM_SLOTS"] = variant.num_slots
    if "DOT_PRECISION" in signature:
        constexprs["DOT_PRECISION"] = module.DOT_PRECISION
    missing = [a for a, kind in signature.items() if kind == "constexpr" and a not in constexprs]
    if missing:
        raise ValueError(f"{variant.label()}: no value for constexpr {missing}")
    # As the launcher specialises them at run time: torch allocations are 16-byte aligned
    # (tt.divisibility 16 on every pointer); N and C stay generic (C = 501 is not a multiple).
    attrs = {
        (index,): [["tt.divisibility", 16]]
        for index, kind in enumerate(signature.values())
        if kind.startswith("*")
    }
    return signature, constexprs, attrs


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack frame bytes) of the cubin's one function, from cuobjdump."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run(
            [knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if match is None:
        raise RuntimeError(f"no REG/STACK in cuobjdump's output:\n{out}")
    return int(match.group(1)), int(match.group(2))


def compile_variant(variant: KernelVariant, capability: int) -> CompileResult:
    """Compiles one variant for sm_<capability>; a compile error is recorded, not raised."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    result = CompileResult(variant=variant, capability=capability)
    start = time.perf_counter()
    try:
        fn = jit_function(autotuned_kernels()[variant.kernel])
        signature, constexprs, attrs = _signature_and_constexprs(variant)
        compiled = triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
            target=GPUTarget("cuda", capability, 32),
            options={"num_warps": variant.num_warps, "num_stages": variant.num_stages},
        )
        result.shared_bytes = int(compiled.metadata.shared)
        result.registers, result.stack_bytes = resource_usage(compiled.asm["cubin"])
    except Exception as error:  # noqa: BLE001 - every failure is reported per variant
        result.error = f"{type(error).__name__}: {str(error).strip()[:2000]}"
    result.seconds = time.perf_counter() - start
    return result


def _compile_job(job: tuple[KernelVariant, int]) -> CompileResult:
    return compile_variant(*job)


def compile_all(
    variants: Iterable[KernelVariant], capabilities: Sequence[int], jobs: int = 1
) -> list[CompileResult]:
    """Every variant for every capability, in ``jobs`` processes; results in input order."""
    work = [(variant, cap) for cap in capabilities for variant in variants]
    if jobs <= 1:
        return [_compile_job(job) for job in work]
    # spawn: a fresh interpreter per worker (forking a process that holds Triton's MLIR
    # context is not safe); chunks keep each worker on one kernel, whose AST it caches.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_compile_job, work, chunksize=max(1, len(work) // (4 * jobs))))


def format_table(results: Sequence[CompileResult]) -> str:
    """A fixed-width table: one line per variant and target."""
    header = (
        f"{'target':6s} {'kernel variant':58s} {'shared B':>9s} {'limit B':>9s} "
        f"{'regs':>4s} {'stack B':>7s} {'s':>5s}  status"
    )
    lines = [header, "-" * len(header)]
    for r in results:

        def number(value):
            return "-" if value is None else f"{value:,}"

        status = "ok" if r.ok else ("COMPILE ERROR" if r.error else "TOO MUCH SHARED MEMORY")
        lines.append(
            f"sm_{r.capability:<3d} {r.variant.label():58s} {number(r.shared_bytes):>9s} "
            f"{r.shared_limit:>9,} {number(r.registers):>4s} {number(r.stack_bytes):>7s} "
            f"{r.seconds:5.1f}  {status}"
        )
    failed = [r for r in results if not r.ok]
    spilling = [r for r in results if r.stack_bytes]
    lines.append(
        f"{len(results) - len(failed)}/{len(results)} variants fit their target; "
        f"{len(spilling)} spill registers to the stack"
    )
    for r in failed:
        lines.append(f"FAILED sm_{r.capability} {r.variant.label()}: {r.problem()}")
    return "\n".join(lines)


def parse_targets(text: str) -> list[int]:
    """'sm_80,sm_90' (or '80,90') -> [80, 90]; only the capabilities with a known limit."""
    capabilities = []
    for item in text.split(","):
        digits = item.strip().lower().removeprefix("sm_").removeprefix("sm")
        if not digits.isdigit() or int(digits) not in SHARED_MEMORY_LIMIT:
            known = ", ".join(f"sm_{c}" for c in SHARED_MEMORY_LIMIT)
            raise ValueError(f"--targets: {item.strip()!r} is not one of {known}")
        capabilities.append(int(digits))
    return capabilities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lsdet.kernels.aot", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--targets", default="sm_80,sm_90", help="e.g. sm_80,sm_90")
    parser.add_argument("--dtypes", default=",".join(LOGITS_DTYPES), help="e.g. fp32,bf16")
    parser.add_argument(
        "--slots",
        default=",".join(map(str, SLOT_COUNTS)),
        help="the loss kernel's NUM_SLOTS values, e.g. 1,2,4,8",
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", type=Path, help="also write every result to this JSON file")
    args = parser.parse_args(argv)
    try:
        capabilities = parse_targets(args.targets)
    except ValueError as error:
        parser.error(str(error))
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    unknown = sorted(set(dtypes) - set(LOGITS_DTYPES))
    if unknown:
        parser.error(f"--dtypes: {unknown} not in {list(LOGITS_DTYPES)}")
    try:
        slot_counts = [int(k) for k in args.slots.split(",")]
    except ValueError:
        parser.error(f"--slots: {args.slots!r} is not a comma-separated list of integers")
    if any(k < 1 or k & (k - 1) for k in slot_counts):
        parser.error(f"--slots: {args.slots!r}: each must be a power of two (as ops pads rows)")
    try:
        variants = kernel_variants(dtypes, slot_counts)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = compile_all(variants, capabilities, jobs=args.jobs)
    print(format_table(results))
    print(
        f"compiled {len(results)} variants in {time.perf_counter() - start:.0f} s "
        f"with {args.jobs} process(es)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
