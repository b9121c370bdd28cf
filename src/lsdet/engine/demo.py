"""The demo behind `make demo`: ``python -m lsdet.engine.demo [--losses softmax ...]``.

1. generates the synthetic benchmark (data/synth) unless it is already there;
2. trains the `demo` experiment once per loss (default: the softmax baseline and the
   paper's concurrent softmax), each run in runs/demo_<loss>/ with its OID-metric evaluation;
   the runs go side by side, one per CPU core with one torch thread each (on a small CPU
   this beats one run after the other with two threads each, and a busy core slows one run
   instead of stalling both threads of each), their logs in runs/demo_<loss>.log and their
   progress shown as one bar per run; ``--sequential`` runs them one after the other;
3. prints the final table (mAP overall and by frequency bucket, difference to the baseline,
   minutes) and writes it with comparison plots to runs/demo/.
Other arguments are Hydra overrides for every training run (e.g. ``train.max_iters_per_epoch=5``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from lsdet.engine.report import comparison_table, plot_run_comparison


def run(command: list[str]) -> None:
    """Run a step in the foreground; Ctrl-C reaches the step (a training run checkpoints
    and exits 130), and this driver then stops with a message instead of a traceback."""
    print("+ " + " ".join(command), flush=True)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        result = subprocess.run(command)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.returncode != 0:
        raise SystemExit(f"demo stopped: `{' '.join(command)}` exited with {result.returncode}")


def run_side_by_side(commands: dict[str, list[str]], run_dirs: dict[str, Path]) -> None:
    """Start every command at once (output to <run_dir>.log) and show one progress bar per
    run from its progress.json until all have ended; stop with the log's tail on a failure."""
    processes, logs = {}, {}
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        for name, command in commands.items():
            log_path = run_dirs[name].with_suffix(".log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            print(f"+ {' '.join(command)}  > {log_path}", flush=True)
            logs[name] = log_path
            with open(log_path, "w") as log:
                processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        bars = {
            name: tqdm(total=100, desc=f"{name:>20s}", position=i, unit="%", leave=True)
            for i, name in enumerate(commands)
        }
        while True:
            for name, bar in bars.items():
                progress = read_progress(run_dirs[name] / "progress.json")
                if progress:
                    bar.n = round(100 * progress["fraction"])
                    bar.set_postfix_str(
                        f"{progress['status']}, {progress['images_per_s']:.1f} img/s", refresh=False
                    )
                    bar.refresh()
            if all(p.poll() is not None for p in processes.values()):
                break
            time.sleep(2)
        for bar in bars.values():
            bar.close()
    finally:
        signal.signal(signal.SIGINT, previous)
    for name, process in processes.items():
        if process.returncode != 0:
            tail = "".join(logs[name].read_text().splitlines(keepends=True)[-25:])
            raise SystemExit(
                f"{tail}\ndemo stopped: run {name} exited with {process.returncode} "
                f"(log: {logs[name]})"
            )


def read_progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m lsdet.engine.demo", description=__doc__)
    parser.add_argument(
        "--losses",
        nargs="+",
        default=["softmax", "concurrent_softmax"],
        help="losses to train, the first is the baseline",
    )
    parser.add_argument("--out", default="runs/demo", help="folder for the table and plots")
    parser.add_argument("--runs", default="runs", help="folder of the training runs")
    parser.add_argument(
        "--sequential", action="store_true", help="one run after the other, all cores each"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every training run")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    python = sys.executable
    # data.* overrides (e.g. data.root=...) reach the generator too, without the prefix
    run(
        [python, "-m", "lsdet.data.synth"]
        + [o[5:] for o in args.overrides if o.startswith("data.")]
    )
    run_dirs = {loss: Path(args.runs) / f"demo_{loss}" for loss in args.losses}
    commands = {}
    threads = max(1, (os.cpu_count() or 1) // len(args.losses))
    for loss, run_dir in run_dirs.items():
        command = [python, "-m", "lsdet.train", "+experiment=demo", f"loss={loss}"]
        command += [f"hydra.run.dir={run_dir}"]
        if not args.sequential:
            command += [f"train.threads={threads}", "train.num_workers=0", "train.progress=false"]
        commands[loss] = command + list(args.overrides)
        (run_dir / "progress.json").unlink(missing_ok=True)
    if args.sequential:
        for command in commands.values():
            run(command)
    else:
        run_side_by_side(commands, run_dirs)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = list(run_dirs.values())
    table = comparison_table(runs)
    plots = plot_run_comparison(runs, out)
    elapsed = time.perf_counter() - start
    text = (
        f"lsdet demo: {len(runs)} runs on the synthetic benchmark, "
        f"{elapsed / 60:.1f} min in all\n\n{table}\n"
    )
    (out / "summary.md").write_text(text)
    print("\n" + text)
    print("plots: " + ", ".join(str(p) for p in plots))
    print("per-run files: " + ", ".join(f"{d}/eval/" for d in runs))
    return text


if __name__ == "__main__":
    main()
