"""Run every sweep of experiments/sweeps.yaml and aggregate the tables and figures.

    python experiments/run_all.py --size small            # what `make experiments` runs
    python experiments/run_all.py --size full --jobs 2 --threads 1
    python experiments/run_all.py --size small --dry-run  # print the commands only

Each training run goes to <out>/<run id>_s<seed>/ (out = runs/experiments/<size> unless
--out says otherwise) and is skipped when its summary.json says "finished", so the command can
be re-run to complete a sweep that was cut short. Seed 0 of every run comes first, then seed 1,
and so on. The Table 2 re-scorings run once their training run has finished. At the end
`experiments/aggregate.py` writes the tables and figures (to experiments/results/<size>/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SWEEPS = HERE / "sweeps.yaml"


@dataclass
class Task:
    """One command of the sweep: a training run or an evaluation-only re-scoring."""

    name: str  # <run id>_s<seed>, also the folder name under the output folder
    command: list[str]
    run_dir: Path
    depends_on: list[str] = field(default_factory=list)

    def is_done(self) -> bool:
        return run_is_finished(self.run_dir)


def run_is_finished(run_dir: Path) -> bool:
    """A training run finished (summary.json status) or a re-scoring wrote its metrics."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text()).get("status") == "finished"
    return (run_dir / "metrics.json").is_file()


def load_sweeps(path: Path = SWEEPS) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def dotted(mapping: dict, prefix: str = "") -> list[str]:
    """key=value overrides of a nested mapping ({"a": {"b": [1, 2]}} -> ["a.b=[1,2]"])."""
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            out += dotted(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            out.append(f"{prefix}{key}=[{','.join(str(v) for v in value)}]")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def data_overrides(size_cfg: dict) -> list[str]:
    """Hydra overrides (data.*) of a size."""
    return dotted(size_cfg["data"], "data.")


def build_tasks(
    sweeps: dict,
    size: str,
    out: Path,
    seeds: list[int],
    *,
    python: str = sys.executable,
    threads: int | None = None,
    only: list[str] | None = None,
    extra: list[str] | None = None,
) -> list[Task]:
    """The sweep's commands in run order: seed by seed, runs in the order of sweeps.yaml,
    each re-scoring right after its training run."""
    if size not in sweeps["sizes"]:
        raise ValueError(f"{SWEEPS}: no size {size!r} (sizes: {', '.join(sweeps['sizes'])})")
    size_data = data_overrides(sweeps["sizes"][size])
    common = list(sweeps.get("common_overrides", [])) + list(extra or [])
    if threads:
        common.append(f"train.threads={threads}")
    rescoring_of: dict[str, list[tuple[str, dict]]] = {}
    for rescore_id, spec in (sweeps.get("rescoring") or {}).items():
        rescoring_of.setdefault(spec["from"], []).append((rescore_id, spec))
    tasks = []
    for seed in seeds:
        for run_id, spec in sweeps["runs"].items():
            if only and run_id not in only:
                continue
            name = f"{run_id}_s{seed}"
            run_dir = out / name
            command = [python, "-m", "lsdet.train", f"+experiment={spec['experiment']}"]
            command += list(spec.get("overrides", [])) + size_data + common
            command += [f"seed={seed}", f"name={name}", f"hydra.run.dir={run_dir}"]
            tasks.append(Task(name, command, run_dir))
            for rescore_id, rescore in rescoring_of.get(run_id, []):
                rescore_dir = out / f"{rescore_id}_s{seed}"
                # lsdet.evaluate estimates the concurrent rates of a checkpoint trained
                # without them (eq. 5 with R = 0 would be plain softmax).
                command = [
                    python,
                    "-m",
                    "lsdet.evaluate",
                    f"checkpoint={run_dir / 'checkpoints' / rescore['checkpoint']}",
                    f"scoring={rescore['scoring']}",
                    *size_data,
                    f"output_dir={rescore_dir}",
                    f"hydra.run.dir={rescore_dir}",
                ]
                tasks.append(Task(f"{rescore_id}_s{seed}", command, rescore_dir, [name]))
    return tasks


def run_tasks(
    tasks: list[Task],
    log_dir: Path,
    *,
    jobs: int,
    threads: int | None,
    jobs_file: Path | None = None,
) -> list[str]:
    """Runs the tasks that are not done yet, at most `jobs` at a time (or the number written
    in `jobs_file`, read again before every start, to change it while the sweep runs),
    dependencies first; returns the names of the tasks that failed (their dependants are
    skipped)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "disabled")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    pending = [t for t in tasks if not t.is_done()]
    done = {t.name for t in tasks if t.is_done()}
    failed: list[str] = []
    running: dict[str, tuple[subprocess.Popen, float, Task]] = {}
    total = len(pending)
    print(f"{len(tasks)} tasks, {len(done)} already done, {total} to run, {jobs} at a time")
    finished = 0
    while pending or running:
        for name, (proc, start, task) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            finished += 1
            minutes = (time.time() - start) / 60
            ok = proc.returncode == 0 and task.is_done()
            (done.add if ok else failed.append)(name)
            status = "ok" if ok else f"FAILED (exit {proc.returncode}, log {log_dir / name}.log)"
            print(f"[{finished}/{total}] {name}: {status} in {minutes:.1f} min", flush=True)
        if jobs_file is not None and jobs_file.is_file():
            jobs = max(1, int(jobs_file.read_text().strip() or jobs))
        for task in list(pending):
            if len(running) >= jobs:
                break
            if any(dep in failed for dep in task.depends_on):
                pending.remove(task)
                failed.append(task.name)
                print(f"{task.name}: skipped, {task.depends_on} failed", flush=True)
                continue
            if not all(dep in done for dep in task.depends_on):
                continue
            pending.remove(task)
            log = open(log_dir / f"{task.name}.log", "w")  # noqa: SIM115 (closed by the child)
            log.write("+ " + " ".join(task.command) + "\n")
            log.flush()
            proc = subprocess.Popen(task.command, stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            running[task.name] = (proc, time.time(), task)
            print(f"started {task.name} ({time.strftime('%H:%M:%S')})", flush=True)
        time.sleep(2)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/run_all.py", description=__doc__)
    parser.add_argument("--size", default="small", help="a size of sweeps.yaml (small, full)")
    parser.add_argument("--out", default=None, help="run folders (runs/experiments/<size>)")
    parser.add_argument(
        "--results", default=None, help="tables/figures (experiments/results/<size>)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: sweeps.yaml")
    parser.add_argument("--runs", nargs="+", default=None, help="only these run ids")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    parser.add_argument(
        "--jobs-file", default=None, help="a file holding the number of runs at the same time"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--no-aggregate", action="store_true", help="skip the tables/figures")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of every training run")
    args = parser.parse_args(argv)

    sweeps = load_sweeps()
    out = Path(args.out or f"runs/experiments/{args.size}")
    seeds = args.seeds if args.seeds is not None else list(sweeps["seeds"])
    tasks = build_tasks(
        sweeps, args.size, out, seeds, threads=args.threads, only=args.runs, extra=args.overrides
    )
    if args.dry_run:
        for task in tasks:
            print(("(done) " if task.is_done() else "") + " ".join(task.command))
        return 0
    # Generate the benchmark once up front, so that parallel runs do not race to write it.
    size_data = sweeps["sizes"][args.size]["data"]
    generate = [sys.executable, "-m", "lsdet.data.synth"]
    subprocess.run(generate + dotted(size_data), check=True)
    start = time.time()
    jobs_file = Path(args.jobs_file) if args.jobs_file else None
    failed = run_tasks(
        tasks, out / "logs", jobs=args.jobs, threads=args.threads, jobs_file=jobs_file
    )
    print(f"sweep: {(time.time() - start) / 60:.1f} min, {len(failed)} failed: {failed}")
    if not args.no_aggregate:
        from aggregate import main as aggregate_main  # experiments/aggregate.py

        aggregate_main(
            ["--runs", str(out), "--out", args.results or f"experiments/results/{args.size}"]
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
