"""The demo behind `make demo`: ``python -m lsdet.engine.demo [--losses softmax ...]``.

1. generates the synthetic benchmark (data/synth) unless it is already there;
2. trains the `demo` experiment once per loss (default: the softmax baseline, then the
   paper's concurrent softmax), each run in runs/demo_<loss>/ with its OID-metric evaluation;
3. prints the final table (mAP overall and by frequency bucket, difference to the baseline)
   and writes it with comparison plots to runs/demo/.
Extra arguments after ``--`` are passed to every training run as Hydra overrides.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from lsdet.engine.report import comparison_table, plot_run_comparison


def run(command: list[str]) -> None:
    """Run a step; Ctrl-C reaches the step (a training run checkpoints and exits 130), and
    this driver then stops with a message instead of a traceback."""
    print("+ " + " ".join(command), flush=True)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        result = subprocess.run(command)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.returncode != 0:
        raise SystemExit(f"demo stopped: `{' '.join(command)}` exited with {result.returncode}")


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
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every training run")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    python = sys.executable
    # data.* overrides (e.g. data.root=...) reach the generator too, without the prefix
    run(
        [python, "-m", "lsdet.data.synth"]
        + [o[5:] for o in args.overrides if o.startswith("data.")]
    )
    run_dirs = []
    for loss in args.losses:
        run_dir = Path(args.runs) / f"demo_{loss}"
        run(
            [python, "-m", "lsdet.train", "+experiment=demo", f"loss={loss}"]
            + [f"hydra.run.dir={run_dir}"]
            + list(args.overrides)
        )
        run_dirs.append(run_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(run_dirs)
    plots = plot_run_comparison(run_dirs, out)
    elapsed = time.perf_counter() - start
    text = (
        f"lsdet demo: {len(run_dirs)} runs on the synthetic benchmark, "
        f"{elapsed / 60:.1f} min in all\n\n{table}\n"
    )
    (out / "summary.md").write_text(text)
    print("\n" + text)
    print("plots: " + ", ".join(str(p) for p in plots))
    print("per-run files: " + ", ".join(f"{d}/eval/" for d in run_dirs))
    return text


if __name__ == "__main__":
    main()
