"""The demo behind `make demo`: ``python -m lsdet.apps.demo [--losses softmax ...]``.

1. generates the synthetic benchmark (data/synth) unless it is already there;
2. trains the `demo` experiment once per loss (default: the softmax baseline and the
   paper's concurrent softmax), each run in runs/demo_<loss>/ with its OID-metric evaluation;
   the runs go side by side, one per CPU core with one torch thread each (on a small CPU
   this beats one run after the other with two threads each, and a busy core slows one run
   instead of stalling both threads of each), their logs in runs/demo_<loss>.log and their
   progress shown as one bar per run; ``--sequential`` runs them one after the other;
3. checks the inference protocol on each run: re-scores its checkpoint with score threshold 0
   and ten times the detections per image; the mAP must not move by more than 0.005, or the
   defaults cut recall (printed on a line of its own per run);
4. prints the final table (mAP overall and by frequency bucket, difference to the baseline,
   minutes) and writes it with comparison plots to runs/demo/.
Runs start with ``train.resume=auto``: a run cut short continues, a finished one is reused.
Other arguments are Hydra overrides for every training run (e.g. ``train.max_iters_per_epoch=5``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from lsdet.apps.launch import evaluate_command, train_command
from lsdet.apps.report import comparison_table, plot_run_comparison
from lsdet.engine.run_folder import EVALUATIONS, RunFolder

# The demo's table, in its --out folder (read back by lsdet.bench.gpu_check).
SUMMARY_MD = "summary.md"


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


def run_side_by_side(
    commands: dict[str, list[str]], run_dirs: dict[str, Path], *, show_progress: bool = True
) -> None:
    """Start every command at once (output to <run_dir>.log) and show one progress bar per
    run from its progress file until all have ended; stop with the log's tail on a failure."""
    processes, logs = {}, {}
    # One thread per process: the processes share the cores (idle threads of one stall others).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        for name, command in commands.items():
            log_path = run_dirs[name].with_suffix(".log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            print(f"+ {' '.join(command)}  > {log_path}", flush=True)
            logs[name] = log_path
            with open(log_path, "w") as log:
                processes[name] = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env
                )
        bars = {
            name: tqdm(
                total=100,
                desc=f"{name:>20s}",
                position=i,
                unit="%",
                leave=True,
                disable=not show_progress,
            )
            for i, name in enumerate(commands)
        }
        while True:
            for name, bar in bars.items():
                progress = RunFolder(run_dirs[name]).read_progress()
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


RECALL_TOLERANCE = 0.005  # mAP change allowed when the inference filter is opened up
RECALL_CHECK = "recall_check"  # the evaluation tag of the re-scoring


def recall_check_command(run_dir: Path, overrides: list[str]) -> list[str]:
    """``lsdet.evaluate`` of the run's checkpoint at score threshold 0 and 10x the per-image
    cap of its config; outputs in the run's evaluation folder ``recall_check``."""
    folder = RunFolder(run_dir)
    roi = folder.read_config().model.roi
    out = folder.evaluation(RECALL_CHECK).path
    return evaluate_command(
        folder.last_checkpoint,
        [
            "score_thresh=0.0",
            f"detections_per_img={10 * int(roi.detections_per_img)}",
            "device=cpu",
            "num_workers=0",
            f"output_dir={out}",
            f"hydra.run.dir={out}",
            *[o for o in overrides if o.startswith("data.")],
        ],
    )


def recall_check_line(run_dir: Path) -> str:
    """One line: the run's mAP at its inference defaults, with the filter opened up, and
    whether the difference is within ``RECALL_TOLERANCE``."""
    folder = RunFolder(run_dir)
    roi = folder.read_config().model.roi
    at_defaults = folder.final_metrics()["map"]
    opened = folder.evaluation(RECALL_CHECK).read_metrics()["map"]
    difference = opened - at_defaults
    verdict = "ok" if abs(difference) < RECALL_TOLERANCE else "FAILS: the defaults cut recall"
    return (
        f"protocol check {run_dir.name}: mAP {at_defaults:.4f} at score_thresh "
        f"{roi.score_thresh:g} / {roi.detections_per_img} per image, {opened:.4f} at 0 / "
        f"{10 * int(roi.detections_per_img)}: difference {difference:+.4f} "
        f"(tolerance {RECALL_TOLERANCE}) {verdict}"
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m lsdet.apps.demo", description=__doc__)
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
        overrides = ["+experiment=demo", f"loss={loss}", f"hydra.run.dir={run_dir}"]
        overrides += ["train.resume=auto"]
        if not args.sequential:
            overrides += [f"train.threads={threads}", "train.num_workers=0", "train.progress=false"]
        commands[loss] = train_command(overrides + list(args.overrides), python=python)
        RunFolder(run_dir).progress.unlink(missing_ok=True)
    if args.sequential:
        for command in commands.values():
            run(command)
    else:
        run_side_by_side(commands, run_dirs)

    checks = {loss: recall_check_command(d, args.overrides) for loss, d in run_dirs.items()}
    if args.sequential:
        for command in checks.values():
            run(command)
    else:
        check_dirs = {
            loss: RunFolder(d).evaluation(RECALL_CHECK).path for loss, d in run_dirs.items()
        }
        run_side_by_side(checks, check_dirs, show_progress=False)
    protocol = "\n".join(recall_check_line(d) for d in run_dirs.values())

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = list(run_dirs.values())
    table = comparison_table(runs)
    plots = plot_run_comparison(runs, out)
    elapsed = time.perf_counter() - start
    text = (
        f"lsdet demo: {len(runs)} runs on the synthetic benchmark, "
        f"{elapsed / 60:.1f} min in all\n\n{table}\n\n{protocol}\n"
    )
    (out / SUMMARY_MD).write_text(text)
    print("\n" + text)
    print("plots: " + ", ".join(str(p) for p in plots))
    print("per-run files: " + ", ".join(f"{Path(d) / EVALUATIONS}/" for d in runs))
    return text


if __name__ == "__main__":
    main()
