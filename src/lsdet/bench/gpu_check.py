"""``make gpu-check``: everything lsdet must show on a CUDA GPU, in one command and one report:
one section per figure the report holds, each a short function, and the report writer they
share.

    python -m lsdet.bench.gpu_check                      # all sections, about 20-30 minutes
    python -m lsdet.bench.gpu_check --sections kernel_tests,kernel_bench

Sections (each records pass/fail and its figures; one failing does not stop the others):
  kernel_tests   tests/test_kernels.py compiled (no interpreter), fp32/fp16/bf16 against the
                 PyTorch reference
  kernel_bench   the loss forward, backward, forward+backward for N in {2048, 8192, 32768} x
                 C in {501, 602, 1204}: lsdet vs the eager and the torch.compile'd reference
                 vs F.cross_entropy; ms (median, 20%/80%), peak memory, GB/s and % of the
                 card's bandwidth; goals >= 3x eager, >= 1.5x compiled, <= 2x CE, >= 60%
  detector       training throughput at 800 px with AMP, lsdet's ResNet-50-FPN beside
                 torchvision's fasterrcnn_resnet50_fpn (goal >= 1.0x), peak memory
  model_compile  the same lsdet detector under torch.compile: does it train, how fast
  input_pipeline images/s the DataLoader delivers at 1024x768 per worker count, beside the
                 detector's consumption
  training       a short training on the synthetic benchmark with AMP, a 1-process NCCL DDP
                 run (torchrun) with SyncBN, and the evaluation CLI on its checkpoint: they
                 finish, no non-finite loss, mAP
  demo           the demo pair (softmax, concurrent softmax) on the GPU, timed

The report goes to ``benchmarks/gpu/<YYYY-MM-DD>-<gpu name>/report.md`` and ``report.json``.
On a machine without a CUDA GPU the command says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lsdet.apps.demo import SUMMARY_MD
from lsdet.apps.launch import evaluate_command, train_command
from lsdet.bench import detector, input_pipeline
from lsdet.bench import kernels as kbench
from lsdet.engine.run_folder import EvaluationFolder, RunFolder

REPO_ROOT = Path(__file__).resolve().parents[3]
# Peak memory bandwidth in GB/s by card name, where the CUDA properties do not give the
# memory clock (vendor data sheets).
KNOWN_PEAK_GBS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 80GB HBM3": 3350.0,
    "H100 NVL": 3900.0,
    "H100 PCIe": 2000.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100-SXM4-40GB": 1555.0,
    "A100-PCIE-40GB": 1555.0,
    "L40S": 864.0,
    "A10": 600.0,
    "V100": 900.0,
}


# The input-pipeline section: JPEGs written and read, their size, the worker counts (None: 0,
# 1, 2, 4, ... up to the cores).
INPUT_PIPELINE: dict[str, Any] = {"images": 256, "size": (1024, 768), "worker_counts": None}


@dataclass
class SectionResult:
    """What one section found: pass/fail, its figures (JSON-able), a markdown table, notes,
    and the error (a traceback) when it raised."""

    name: str
    title: str
    passed: bool
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    table: str = ""
    notes: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Context:
    """What every section may use: a scratch folder and the results so far."""

    scratch: Path
    device_name: str
    results: dict[str, SectionResult] = field(default_factory=dict)
    python: str = sys.executable
    peak_gbs: float | None = None  # the card's memory bandwidth when given (--peak-gbs)


SectionFn = Callable[[Context], SectionResult]


def run_section(name: str, title: str, fn: SectionFn, ctx: Context) -> SectionResult:
    """Runs one section; an exception becomes a failed result holding the traceback."""
    print(f"[gpu-check] {title} ...", flush=True)
    start = time.perf_counter()
    try:
        result = fn(ctx)
    except Exception:  # noqa: BLE001 - every section failure is reported, the others go on
        result = SectionResult(name, title, passed=False, error=traceback.format_exc())
    result.name, result.title = name, title
    result.seconds = round(time.perf_counter() - start, 1)
    ctx.results[name] = result
    verdict = "PASS" if result.passed else "FAIL"
    print(f"[gpu-check] {title}: {verdict} ({result.seconds:.0f} s)", flush=True)
    return result


# --------------------------------------------------------------------------- helpers
def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 2) -> str:
    """A GitHub markdown table of dict rows (floats with ``digits`` decimals)."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return {True: "met", False: "not met", None: "n/a"}[value]
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def peak_bandwidth_gbs(device: int = 0) -> tuple[float | None, str]:
    """The card's peak memory bandwidth in GB/s and where it came from (the CUDA properties:
    2 transfers per memory clock x bus width; else the data-sheet table; else None)."""
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0) or 0
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    if clock_khz > 0 and bus_bits > 0:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "CUDA device properties"
    for name, gbs in KNOWN_PEAK_GBS.items():
        if name.lower() in props.name.lower():
            return gbs, f"data sheet ({name})"
    return None, "unknown (pass --peak-gbs)"


def measured_copy_gbs(megabytes: int = 1024) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), GB/s."""
    import triton.testing  # here, not at the top: Triton imports slowly, only GPU runs need it

    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), quantiles=[0.5])[0]
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def run_command(
    command: list[str], *, timeout: float, cwd: Path = REPO_ROOT, env: dict | None = None
) -> subprocess.CompletedProcess:
    """A subprocess with its output captured; a time-out is reported as return code 124."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    try:
        return subprocess.run(
            command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as expired:

        def text(value: Any) -> str:
            return value.decode(errors="replace") if isinstance(value, bytes) else value or ""

        return subprocess.CompletedProcess(
            command,
            124,
            text(expired.stdout),
            text(expired.stderr) + f"\ntimed out after {timeout:.0f} s",
        )


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- sections
def section_kernel_tests(ctx: Context) -> SectionResult:
    """tests/test_kernels.py on the GPU, compiled: TRITON_INTERPRET=0 in its environment
    (conftest.py sets the interpreter only where the variable is unset)."""
    junit = ctx.scratch / "kernel_tests.xml"
    tests = REPO_ROOT / "tests" / "test_kernels.py"
    if not tests.is_file():
        raise FileNotFoundError(f"{tests} not found: run gpu-check from a source checkout")
    env = {"TRITON_INTERPRET": "0"}
    command = [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)]
    proc = run_command([*command, f"--junitxml={junit}"], timeout=900, env=env)
    counts = junit_counts(junit) if junit.is_file() else {}
    passed = proc.returncode == 0 and counts.get("tests", 0) > 0 and counts.get("skipped") == 0
    result = SectionResult(
        "kernel_tests", "", passed, figures={**counts, "returncode": proc.returncode}
    )
    if counts.get("skipped"):
        result.notes.append("tests were skipped: they did not run on the GPU")
    if not passed:
        result.notes.append("pytest output:\n" + tail(proc.stdout + proc.stderr, 60))
    return result


def junit_counts(path: Path) -> dict[str, int]:
    """tests / failures / errors / skipped of a pytest --junitxml file."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return {
        key: sum(int(s.get(key, 0)) for s in suites)
        for key in ("tests", "failures", "errors", "skipped")
    }


def section_kernel_bench(
    ctx: Context, dtypes: tuple[str, ...] = ("float32", "float16")
) -> SectionResult:
    peak, source = (ctx.peak_gbs, "--peak-gbs") if ctx.peak_gbs else peak_bandwidth_gbs()
    copy_gbs = measured_copy_gbs()
    figures: dict[str, Any] = {
        "peak_gbs": peak,
        "peak_source": source,
        "copy_gbs_measured": copy_gbs,
        "tables": {},
    }
    tables = []
    for dtype_name in dtypes:
        _, table = kbench.run_benchmark(
            kbench.FULL_SIZES, "cuda", getattr(torch, dtype_name), peak_gbs=peak, progress=False
        )
        for row in table:
            row.update(kbench.goal_flags(row))
        figures["tables"][dtype_name] = table
        full = [r for r in table if r["mode"] == "fwd+bwd"]
        goals = list(kbench.goal_flags(full[0]))
        figures[f"{dtype_name} goals met (fwd+bwd sizes)"] = {
            goal: f"{sum(r[goal] is True for r in full)}/{len(full)}" for goal in goals
        }
        columns = ["N", "C", "mode", "lsdet ms", "lsdet ms p20", "lsdet ms p80"]
        columns += [f"{m} ms" for m in kbench.METHODS[1:]]
        columns += ["eager/lsdet", "compiled/lsdet", "lsdet/CE", "lsdet GB/s"]
        columns += ["lsdet % of peak"] if peak else []
        columns += ["lsdet peak MiB", "F.cross_entropy peak MiB", *goals]
        tables.append(f"**logits {dtype_name}**\n\n" + markdown_table(table, columns))
    result = SectionResult("kernel_bench", "", passed=True, figures=figures)
    result.table = "\n\n".join(tables)
    result.notes.append(
        f"peak bandwidth {peak or float('nan'):.0f} GB/s ({source}); a device-to-device copy "
        f"reaches {copy_gbs:.0f} GB/s here. Goals are findings: they do not fail the section."
    )
    return result


def section_detector(ctx: Context) -> SectionResult:
    rows = detector.main(["--amp", "--size", "800", "--batch", "2", "--iters", "30"])
    ratio = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    result = SectionResult("detector", "", passed=True, table=markdown_table(rows))
    result.figures = {
        "rows": rows,
        "lsdet/torchvision": ratio,
        "goal lsdet/torchvision >= 1.0": ratio >= 1.0,
        "lsdet images_per_s": rows[0]["images_per_s"],
    }
    return result


def section_model_compile(ctx: Context) -> SectionResult:
    device = torch.device("cuda")
    batch = detector.random_batch(2, 800, 500, device)
    figures: dict[str, Any] = {}
    for label, compiled in (("eager", False), ("torch.compile", True)):
        torch.manual_seed(0)
        model = detector.lsdet_detector("resnet50_fpn", 800, 501)
        if compiled:
            model = torch.compile(model)
        seconds, peak = detector.time_training(model, batch, device, iters=10, warmup=3, amp=True)
        figures[f"{label} images_per_s"] = 2 / seconds
        figures[f"{label} peak_gib"] = peak
        del model
        torch.cuda.empty_cache()
    figures["compiled/eager"] = (
        figures["torch.compile images_per_s"] / figures["eager images_per_s"]
    )
    return SectionResult("model_compile", "", passed=True, figures=figures)


def section_input_pipeline(ctx: Context) -> SectionResult:
    rows = input_pipeline.run(folder=ctx.scratch / "jpegs", **INPUT_PIPELINE)
    detector_result = ctx.results.get("detector")
    consumption = (
        detector_result.figures.get("lsdet images_per_s")
        if detector_result and detector_result.passed
        else None
    )
    for row in rows:
        row["x detector"] = row["images_per_s"] / consumption if consumption else None
    enough = [r["workers"] for r in rows if consumption and r["images_per_s"] >= consumption]
    figures = {"rows": rows, "detector images_per_s": consumption}
    figures["fewest workers that keep up"] = min(enough) if enough else None
    return SectionResult(
        "input_pipeline", "", passed=True, figures=figures, table=markdown_table(rows)
    )


def _training_overrides(data_root: Path, run_dir: Path) -> list[str]:
    return [
        "+experiment=demo",
        "loss=concurrent_softmax",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        "train.device=cuda",
        "train.amp=true",
        "train.max_iters_per_epoch=60",
        "train.eval_every=phase",
        "train.eval_max_images=200",
        "train.progress=false",
        "train.num_workers=4",
        "logger=disabled",
    ]


def _run_summary(run_dir: Path, proc: subprocess.CompletedProcess) -> dict[str, Any]:
    folder = RunFolder(run_dir)
    summary = folder.read_summary() if folder.summary.is_file() else {}
    maps = [h["map"] for h in summary.get("history", []) if "map" in h]
    return {
        "returncode": proc.returncode,
        "status": summary.get("status"),
        "global_step": summary.get("global_step"),
        "nonfinite_steps": summary.get("nonfinite_steps"),
        "map": maps[-1] if maps else None,
        "seconds": summary.get("seconds"),
    }


def _run_ok(run: dict[str, Any]) -> bool:
    return run["returncode"] == 0 and run["status"] == "finished" and run["nonfinite_steps"] == 0


def section_training(ctx: Context) -> SectionResult:
    data_root = ctx.scratch / "synth"
    runs = ctx.scratch / "runs"
    figures: dict[str, Any] = {}
    notes = []

    amp_dir = runs / "amp"
    proc = run_command(
        train_command(_training_overrides(data_root, amp_dir), python=ctx.python), timeout=900
    )
    figures["AMP training"] = _run_summary(amp_dir, proc)
    if not _run_ok(figures["AMP training"]):
        notes.append("AMP training output:\n" + tail(proc.stdout + proc.stderr))

    ddp_dir = runs / "ddp"
    ddp_overrides = _training_overrides(data_root, ddp_dir)
    ddp_overrides += ["train.dist_backend=nccl", "model.backbone.norm=sync_bn"]
    proc = run_command(train_command(ddp_overrides, python=ctx.python, processes=1), timeout=900)
    figures["DDP (NCCL, SyncBN, 1 process)"] = _run_summary(ddp_dir, proc)
    if not _run_ok(figures["DDP (NCCL, SyncBN, 1 process)"]):
        notes.append("DDP training output:\n" + tail(proc.stdout + proc.stderr))

    eval_dir = runs / "eval"
    checkpoint = RunFolder(amp_dir).last_checkpoint
    command = evaluate_command(
        checkpoint,
        [f"data.root={data_root}", "device=cuda", f"hydra.run.dir={eval_dir}"],
        python=ctx.python,
    )
    start = time.perf_counter()
    proc = run_command(command, timeout=600)
    evaluation = EvaluationFolder(eval_dir)
    metrics = evaluation.read_metrics() if evaluation.metrics.is_file() else {}
    figures["evaluation"] = {
        "returncode": proc.returncode,
        "map": metrics.get("map"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if proc.returncode != 0 or metrics.get("map") is None:
        notes.append("evaluation output:\n" + tail(proc.stdout + proc.stderr))

    passed = (
        _run_ok(figures["AMP training"])
        and _run_ok(figures["DDP (NCCL, SyncBN, 1 process)"])
        and figures["evaluation"]["returncode"] == 0
        and figures["evaluation"]["map"] is not None
    )
    rows = [{"run": name, **values} for name, values in figures.items()]
    for name, values in figures.items():
        if values.get("map") is not None:
            print(f"[gpu-check] {name}: mAP {values['map']:.4f}", flush=True)
    return SectionResult(
        "training", "", passed, figures=figures, table=markdown_table(rows, digits=4), notes=notes
    )


def section_demo(ctx: Context) -> SectionResult:
    out = ctx.scratch / "demo"
    command = [
        ctx.python,
        "-m",
        "lsdet.apps.demo",
        "--runs",
        str(ctx.scratch / "demo_runs"),
        "--out",
        str(out),
        "train.device=cuda",
        f"data.root={ctx.scratch / 'synth'}",
    ]
    start = time.perf_counter()
    proc = run_command(command, timeout=1200)
    minutes = (time.perf_counter() - start) / 60
    summary = out / SUMMARY_MD
    result = SectionResult(
        "demo",
        "",
        passed=proc.returncode == 0 and summary.is_file(),
        figures={"returncode": proc.returncode, "minutes": round(minutes, 2)},
    )
    if summary.is_file():
        result.table = summary.read_text().strip()
    else:
        result.notes.append("demo output:\n" + tail(proc.stdout + proc.stderr))
    return result


SECTIONS: dict[str, tuple[str, SectionFn]] = {
    "kernel_tests": (
        "Kernel tests, compiled (fp32/fp16/bf16 vs the reference)",
        section_kernel_tests,
    ),
    "kernel_bench": ("Kernel benchmark", section_kernel_bench),
    "detector": ("Detector training throughput, 800 px, AMP", section_detector),
    "model_compile": ("torch.compile of the detector", section_model_compile),
    "input_pipeline": ("Input pipeline at 1024x768", section_input_pipeline),
    "training": ("Training (AMP, NCCL DDP + SyncBN) and evaluation", section_training),
    "demo": ("Demo pair on the GPU", section_demo),
}


# --------------------------------------------------------------------------- report
def environment() -> dict[str, Any]:
    """What the report was measured on."""
    import triton  # here, not at the top: Triton imports slowly, only GPU runs need it

    meta: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cpu_cores": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        meta.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            capability=f"sm_{props.major}{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
        )
    try:
        meta["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        meta["commit"] = None
    return meta


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(results: list[SectionResult], meta: dict[str, Any], out_dir: Path) -> Path:
    """report.md and report.json in out_dir (created); returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "passed": all(r.passed for r in results),
        "sections": [asdict(r) for r in results],
    }
    (out_dir / "report.json").write_text(json.dumps(_json_safe(payload), indent=1) + "\n")

    lines = [f"# gpu-check: {meta.get('gpu', 'no GPU')}", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items()]
    lines += ["", "| section | result | seconds |", "|---|---|---|"]
    lines += [
        f"| {r.title} | {'pass' if r.passed else '**FAIL**'} | {r.seconds:.0f} |" for r in results
    ]
    for r in results:
        lines += ["", f"## {r.title}: {'pass' if r.passed else 'FAIL'}", ""]
        scalars = {k: v for k, v in r.figures.items() if not isinstance(v, (list, dict))}
        nested = {k: v for k, v in r.figures.items() if isinstance(v, dict) and k != "tables"}
        if scalars:
            lines += [markdown_table([scalars], digits=3), ""]
        for key, value in nested.items():
            lines += [f"{key}: " + ", ".join(f"{k} = {_short(v)}" for k, v in value.items()), ""]
        if r.table:
            lines += [r.table, ""]
        for note in r.notes:
            lines += ["```" if "\n" in note else "", note, "```" if "\n" in note else "", ""]
        if r.error:
            lines += ["```", r.error.strip(), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, bool) or value is None:
        return {True: "met", False: "not met", None: "n/a"}[value]
    return str(value)


def report_dir(root: Path, gpu_name: str, date: dt.date | None = None) -> Path:
    """root/<YYYY-MM-DD>-<gpu name slug>."""
    return root / f"{(date or dt.date.today()).isoformat()}-{slug(gpu_name)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lsdet.bench.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "gpu", help="reports folder"
    )
    parser.add_argument("--peak-gbs", type=float, help="the card's memory bandwidth, GB/s")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    if not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing checked"
        )
        return 0

    meta = environment()
    with tempfile.TemporaryDirectory(prefix="lsdet-gpu-check-") as scratch:
        ctx = Context(scratch=Path(scratch), device_name=meta["gpu"], peak_gbs=args.peak_gbs)
        results = [run_section(name, SECTIONS[name][0], SECTIONS[name][1], ctx) for name in names]
    out_dir = report_dir(args.out, meta["gpu"])
    path = write_report(results, meta, out_dir)
    failed = [r.title for r in results if not r.passed]
    print(f"[gpu-check] report: {path} and {path.with_suffix('.json')}")
    print(
        f"[gpu-check] {len(results) - len(failed)}/{len(results)} sections passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
