"""Image bootstrap of a run's final metric and of the paired difference of two runs evaluated
on the same validation images, from the per-image records of their evaluations
(`train.eval_image_records=true`: eval/<tag>/image_records.npz, lsdet.evaluation.image_records).

    python experiments/bootstrap.py <run results> <against results> [--replicates 2000]
    python experiments/bootstrap.py experiments/results/diagnosis/runs/d_concurrent_softmax_m0.4/val-as_train/seed0 \\
        experiments/results/diagnosis/runs/d_softmax_m0.4/val-as_train/seed0 \\
        --classes experiments/results/diagnosis/multi_labelled_classes.csv --benchmark m0.4

A run's final metric is the one the diagnosis sweep registered (sweeps.yaml
`diagnosis_sweep.final_metric`): per class the mean AP of its last two evaluations, averaged
over the classes with ground truth (or over a class list, e.g. the multi-labelled classes).
A bootstrap replicate draws the validation images with replacement (each image counted as
often as it is drawn), recomputes every per-class AP of both runs from their records on that
multiset, and takes the difference; the interval is the percentile interval of the
replicates (Efron & Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13). It measures
the evaluation-set noise of one pair of runs (which images happen to be in the validation
split), not the seed-to-seed noise the registered paired tests use.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lsdet.engine.run_folder import EvaluationFolder, RunFolder
from lsdet.evaluation.image_records import ImageRecords

FINAL_EVALUATIONS = 2  # the diagnosis sweep's final metric: the last two evaluations


@dataclass
class BootstrapInterval:
    """A statistic of the evaluation (``estimate``, on the validation images as they are) and
    its percentile interval over ``replicates`` image resamples, at ``level``."""

    estimate: float
    low: float
    high: float
    level: float
    replicates: np.ndarray  # the statistic of each replicate

    def describe(self, scale: float = 100.0) -> str:
        return (
            f"{self.estimate * scale:+.2f} [{self.low * scale:+.2f}, {self.high * scale:+.2f}] "
            f"({self.level:.0%} interval, {len(self.replicates)} image resamples)"
        )


def run_records(result_dir: Path, evaluations: int = FINAL_EVALUATIONS) -> list[ImageRecords]:
    """The image records of the last ``evaluations`` evaluations of a training run's folder
    (a run folder or its results copy: summary.json's history, eval/<tag>/image_records.npz).
    A run with fewer evaluations or without records is an error naming the folder or file."""
    history = RunFolder(result_dir).read_summary().get("history", [])
    evaluated = [h for h in history if "map" in h and "eval_dir" in h]
    if len(evaluated) < evaluations:
        raise ValueError(
            f"{result_dir}: {len(evaluated)} evaluations in summary.json; the final metric needs "
            f"the last {evaluations}"
        )
    records = []
    for h in evaluated[-evaluations:]:
        path = EvaluationFolder(Path(result_dir) / h["eval_dir"]).image_records
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no per-image records of this evaluation (the run was trained without "
                "train.eval_image_records=true)"
            )
        records.append(ImageRecords.load(path))
    return records


def final_metric(
    evaluations: list[ImageRecords],
    image_weights: np.ndarray | None = None,
    classes: list[str] | None = None,
) -> float:
    """Per class the mean AP over ``evaluations``, averaged over the classes with ground truth
    (only ``classes`` when given), with every image counted ``image_weights[i]`` times."""
    check_same_images(evaluations)
    ap = np.mean([e.average_precisions(image_weights) for e in evaluations], axis=0)
    if classes is not None:
        mids = evaluations[0].mids
        unknown = sorted(set(classes) - set(mids))
        if unknown:
            raise ValueError(f"classes {unknown[:5]} are not classes of the evaluation")
        ap = ap[[mids.index(c) for c in classes]]
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def check_same_images(evaluations: list[ImageRecords]) -> None:
    """Paired resampling needs one image list and one class list: else an error."""
    first = evaluations[0]
    for other in evaluations[1:]:
        if other.mids != first.mids:
            raise ValueError("the evaluations have different class lists")
        if len(other.image_ids) != len(first.image_ids) or not np.array_equal(
            other.image_ids, first.image_ids
        ):
            raise ValueError(
                "the evaluations are not on the same validation images "
                f"({len(first.image_ids)} and {len(other.image_ids)} images)"
            )


def resample_counts(num_images: int, replicates: int, seed: int) -> np.ndarray:
    """``[replicates, num_images]``: how often each image is drawn in each resample of
    ``num_images`` draws with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, size=(replicates, num_images))
    return np.stack([np.bincount(row, minlength=num_images) for row in draws])


def paired_difference(
    run: list[ImageRecords],
    against: list[ImageRecords],
    *,
    replicates: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    classes: list[str] | None = None,
) -> BootstrapInterval:
    """The final metric of ``run`` minus that of ``against`` (two runs on the same images)
    and its image-bootstrap percentile interval: both runs scored on the same resamples."""
    if replicates < 1 or not 0 < level < 1:
        raise ValueError(f"replicates={replicates}, level={level}: expected >= 1 and in (0, 1)")
    check_same_images([*run, *against])
    estimate = final_metric(run, classes=classes) - final_metric(against, classes=classes)
    counts = resample_counts(run[0].num_images, replicates, seed)
    values = np.array(
        [final_metric(run, w, classes) - final_metric(against, w, classes) for w in counts]
    )
    tail = (1 - level) / 2
    low, high = np.nanquantile(values, [tail, 1 - tail])
    return BootstrapInterval(estimate, float(low), float(high), level, values)


def benchmark_classes(classes_csv: Path, benchmark: str) -> list[str]:
    """The classes of one benchmark in a benchmark,mid table (multi_labelled_classes.csv)."""
    table = pd.read_csv(classes_csv)
    if not {"benchmark", "mid"} <= set(table.columns):
        raise ValueError(f"{classes_csv}: expected the columns benchmark, mid")
    chosen = table[table["benchmark"] == benchmark]["mid"].astype(str).tolist()
    if not chosen:
        raise ValueError(f"{classes_csv}: no class of benchmark {benchmark!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/bootstrap.py", description=__doc__)
    parser.add_argument("run", type=Path, help="results (or run) folder of the run")
    parser.add_argument("against", type=Path, help="results (or run) folder it is compared with")
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--evaluations", type=int, default=FINAL_EVALUATIONS)
    parser.add_argument("--classes", type=Path, default=None, help="a benchmark,mid table")
    parser.add_argument("--benchmark", default=None, help="the benchmark of --classes")
    args = parser.parse_args(argv)
    if (args.classes is None) != (args.benchmark is None):
        parser.error("--classes and --benchmark go together")
    try:
        classes = benchmark_classes(args.classes, args.benchmark) if args.classes else None
        result = paired_difference(
            run_records(args.run, args.evaluations),
            run_records(args.against, args.evaluations),
            replicates=args.replicates,
            seed=args.seed,
            level=args.level,
            classes=classes,
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"final metric difference (mAP points): {result.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
