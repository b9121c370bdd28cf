"""The Triton kernels compile for A100 (sm_80) and H100 (sm_90) without a GPU.

Every autotune config of every kernel, for fp32/fp16/bf16 logits and 1-8 positive slots, is
compiled by ``python -m lsdet.kernels.aot`` in a subprocess: conftest.py sets TRITON_INTERPRET=1
for this process, which replaces the kernels by interpreted Python. A variant fails on a
compile error or on more shared memory than the target gives a block (it could never launch).
The table (shared memory, registers, stack/spills) is printed (``pytest -s``) and attached to
the test's report.
"""

import json
import os
import subprocess
import sys

import pytest
from lsdet.kernels import aot

# The loss kernel for 16 slots is as correct as for 8 (the same code, wider tiles) but doubles
# the compile time; `python -m lsdet.kernels.aot` checks it by default.
TEST_SLOTS = (1, 2, 4, 8)
TARGETS = (80, 90)


@pytest.mark.slow
def test_every_kernel_variant_compiles_and_fits_sm80_sm90(tmp_path, request):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "aot.json"
    command = [
        sys.executable,
        "-m",
        "lsdet.kernels.aot",
        "--targets",
        ",".join(f"sm_{c}" for c in TARGETS),
        "--slots",
        ",".join(map(str, TEST_SLOTS)),
        "--jobs",
        "2",
        "--json",
        str(out),
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    print(run.stdout)
    request.node.add_report_section("call", "kernel variants (sm_80, sm_90)", run.stdout)
    assert out.exists(), run.stderr[-3000:]
    results = json.loads(out.read_text())
    failed = [
        f"sm_{r['capability']} {r['variant']['label']}: {r['error'] or 'shared memory'}"
        for r in results
        if not r["ok"]
    ]
    assert not failed, "\n".join(failed)
    assert run.returncode == 0, run.stderr[-3000:]

    # Nothing skipped: each kernel config appears for every target, dtype (and slot count).
    by_kernel: dict[str, set] = {}
    for r in results:
        v = r["variant"]
        config = (tuple(map(tuple, v["block_sizes"])), v["num_warps"], v["num_stages"])
        by_kernel.setdefault(v["kernel"], set()).add(
            (config, r["capability"], v["dtype"], v["num_slots"])
        )
    assert set(by_kernel) == set(aot.KERNEL_SIGNATURES)
    for kernel, seen in by_kernel.items():
        configs = {s[0] for s in seen}
        slots = TEST_SLOTS if "NUM_SLOTS" in aot.KERNEL_SIGNATURES[kernel] else (None,)
        assert len(seen) == len(configs) * len(TARGETS) * len(aot.LOGITS_DTYPES) * len(slots)
        assert len(configs) >= 4, f"{kernel}: only {len(configs)} autotune configs compiled"
    for r in results:
        assert 0 < r["shared_bytes"] <= aot.SHARED_MEMORY_LIMIT[r["capability"]]
        assert 0 < r["registers"] <= 255 and r["stack_bytes"] >= 0


def test_aot_refuses_the_interpreter():
    assert os.environ.get("TRITON_INTERPRET") == "1"  # set by conftest.py
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        aot.kernel_variants()


def test_parse_targets():
    assert aot.parse_targets("sm_80,sm_90") == [80, 90]
    assert aot.parse_targets(" 90 ") == [90]
    with pytest.raises(ValueError, match="'sm_75' is not one of sm_80, sm_90"):
        aot.parse_targets("sm_80,sm_75")


def _variant(**kw):
    fields = dict(
        kernel="_k",
        block_sizes=(("BLOCK_M", 64), ("BLOCK_C", 128)),
        num_warps=8,
        num_stages=3,
        dtype="fp32",
    )
    return aot.KernelVariant(**{**fields, **kw})


def test_compile_result_verdicts_and_table():
    fits = aot.CompileResult(_variant(), 80, shared_bytes=166_912, registers=96, stack_bytes=0)
    too_big = aot.CompileResult(_variant(), 90, shared_bytes=232_449, registers=255, stack_bytes=8)
    broken = aot.CompileResult(_variant(num_slots=4), 80, error="PTXASError: boom")
    assert fits.ok and fits.problem() is None
    assert not too_big.ok and "232,449 B" in too_big.problem() and "232,448 B" in too_big.problem()
    assert not broken.ok and broken.problem() == "compile error: PTXASError: boom"
    assert broken.variant.label() == "_k 64x128 w8 s3 fp32 K=4"
    table = aot.format_table([fits, too_big, broken])
    lines = table.splitlines()
    assert "ok" in lines[2] and "TOO MUCH SHARED MEMORY" in lines[3]
    assert "COMPILE ERROR" in lines[4]
    assert "1/3 variants fit their target; 1 spill registers to the stack" in table
    assert table.count("FAILED") == 2
    assert fits.to_dict()["variant"]["label"] == "_k 64x128 w8 s3 fp32"
    assert fits.to_dict()["shared_limit"] == 166_912 and fits.to_dict()["ok"] is True
