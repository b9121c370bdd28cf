"""Image bootstrap of a run's final metric and of the paired difference of two runs evaluated
on the same validation images, from the per-image records of their evaluations
(`train.eval_image_records=true`: eval/<tag>/image_records.npz, lsdet.evaluation.image_records).

    python experiments/bootstrap.py <run results> <against results> [--replicates 1000]
    python experiments/bootstrap.py experiments/results/diagnosis/runs/d_concurrent_softmax_m0.4/val-as_train/seed0 \\
        experiments/results/diagnosis/runs/d_softmax_m0.4/val-as_train/seed0 \\
        --classes experiments/results/diagnosis/multi_labelled_classes.csv --benchmark m0.4

A run's final metric is the one the diagnosis sweep registered (sweeps.yaml
`diagnosis_sweep.final_metric`): per class the mean AP of its last two evaluations, averaged
over the classes with ground truth (or over a class list, e.g. the multi-labelled classes).
A bootstrap replicate draws the validation images with replacement (each image counted as
often as it is drawn), recomputes every per-class AP of both runs from their records on that
multiset, and takes the difference (all replicates at once, replicate_average_precisions);
the interval is the percentile interval of the replicates (Efron & Tibshirani, An
Introduction to the Bootstrap, 1993, ch. 13). It measures
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
from lsdet.evaluation.image_records import (
    GROUP_OF_ENTRY,
    IGNORED,
    TRUE_POSITIVE,
    ImageRecords,
)

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
    offsets = np.arange(replicates)[:, None] * num_images
    counts = np.bincount((draws + offsets).ravel(), minlength=replicates * num_images)
    return counts.reshape(replicates, num_images)


REPLICATE_CHUNK = 4_000_000  # entries x replicates computed at once (memory of one class)


def replicate_average_precisions(records: ImageRecords, counts: np.ndarray) -> np.ndarray:
    """``[R, C]``: row r is ``records.average_precisions(counts[r])`` (up to rounding), all
    replicates at once: per class the running true/false-positive sums of its entries
    (sorted by score, as the records are) weighted by each replicate's image counts, the
    precision envelope and the area under it, as ``core.average_precision`` computes them.
    An entry of an image drawn 0 times adds nothing; its point repeats the previous one and
    adds no area. NaN where a class has no instance in the replicate."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != records.num_images:
        raise ValueError(
            f"counts has shape {counts.shape}; expected (replicates, {records.num_images})"
        )
    num_replicates, num_classes = len(counts), len(records.mids)
    gt_per_entry = records.gt_boxes + records.group_of_weight * records.gt_group_of
    num_instances = np.zeros((num_replicates, num_classes))
    for k in np.unique(records.gt_class):
        rows = records.gt_class == k
        num_instances[:, k] = counts[:, records.gt_image[rows]] @ gt_per_entry[rows]
    entry = records.det_status != IGNORED
    classes = records.det_class[entry]
    scores = records.det_score[entry]
    images = records.det_image[entry]
    status = records.det_status[entry]
    tp_weight = np.where(status == TRUE_POSITIVE, 1.0, 0.0)
    tp_weight[status == GROUP_OF_ENTRY] = records.group_of_weight
    fp_weight = (tp_weight <= 0).astype(np.float64)
    bounds = np.searchsorted(classes, np.arange(num_classes + 1))
    ap = np.full((num_replicates, num_classes), np.nan)
    for k in np.flatnonzero((num_instances > 0).any(axis=0)):
        lo, hi = bounds[k], bounds[k + 1]
        last_of_tie = np.r_[scores[lo + 1 : hi] != scores[lo : hi - 1], True] if hi > lo else []
        step = max(1, REPLICATE_CHUNK // max(1, hi - lo))
        for start in range(0, num_replicates, step):
            part = slice(start, start + step)
            instances = num_instances[part, k]
            if hi == lo:  # no detection: AP 0
                ap[part, k] = 0.0
                continue
            weight = counts[part][:, images[lo:hi]]
            cum_tp = np.cumsum(weight * tp_weight[lo:hi], axis=1)[:, last_of_tie]
            cum_fp = np.cumsum(weight * fp_weight[lo:hi], axis=1)[:, last_of_tie]
            taken = cum_tp + cum_fp
            with np.errstate(invalid="ignore", divide="ignore"):
                precision = np.where(taken > 0, cum_tp / np.where(taken > 0, taken, 1), 0.0)
                recall = cum_tp / instances[:, None]
            zeros, ones = np.zeros((len(instances), 1)), np.ones((len(instances), 1))
            precision = np.hstack([zeros, precision, zeros])
            recall = np.hstack([zeros, recall, ones])
            envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            area = (np.diff(recall, axis=1) * envelope[:, 1:]).sum(axis=1)
            ap[part, k] = np.where(instances > 0, area, np.nan)
    return ap


def replicate_class_aps(evaluations: list[ImageRecords], counts: np.ndarray) -> np.ndarray:
    """``[R, C]``: per replicate and class the mean AP over ``evaluations`` (the final
    metric's per-class values) with the images counted as in ``counts``."""
    check_same_images(evaluations)
    return np.mean([replicate_average_precisions(e, counts) for e in evaluations], axis=0)


def class_mean(aps: np.ndarray, mids: list[str], classes: list[str] | None = None) -> np.ndarray:
    """Per row of ``aps`` (``[R, C]``) the mean over the classes with a value (only
    ``classes`` when given): the final metric of each replicate; NaN for a row without any."""
    if classes is not None:
        unknown = sorted(set(classes) - set(mids))
        if unknown:
            raise ValueError(f"classes {unknown[:5]} are not classes of the evaluation")
        aps = aps[:, [mids.index(c) for c in classes]]
    present = np.isfinite(aps)
    total = np.where(present, aps, 0.0).sum(axis=1)
    number = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(number > 0, total / np.maximum(number, 1), np.nan)


def interval(estimate: float, values: np.ndarray, level: float) -> BootstrapInterval:
    """The percentile interval of the replicate values at ``level``."""
    tail = (1 - level) / 2
    low, high = np.nanquantile(values, [tail, 1 - tail])
    return BootstrapInterval(estimate, float(low), float(high), level, values)


def paired_difference(
    run: list[ImageRecords],
    against: list[ImageRecords],
    *,
    replicates: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    classes: list[str] | None = None,
) -> BootstrapInterval:
    """The final metric of ``run`` minus that of ``against`` (two runs on the same images)
    and its image-bootstrap percentile interval: both runs scored on the same resamples."""
    return paired_differences(
        run, against, {"": classes}, replicates=replicates, seed=seed, level=level
    )[""]


def paired_differences(
    run: list[ImageRecords],
    against: list[ImageRecords],
    class_sets: dict[str, list[str] | None],
    *,
    replicates: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, BootstrapInterval]:
    """:func:`paired_difference` for several class sets (name -> classes, None: all
    classes) from one computation of the per-class APs on the same resamples."""
    if replicates < 1 or not 0 < level < 1:
        raise ValueError(f"replicates={replicates}, level={level}: expected >= 1 and in (0, 1)")
    check_same_images([*run, *against])
    counts = resample_counts(run[0].num_images, replicates, seed)
    run_aps = replicate_class_aps(run, counts)
    against_aps = replicate_class_aps(against, counts)
    mids = run[0].mids
    results = {}
    for name, classes in class_sets.items():
        estimate = final_metric(run, classes=classes) - final_metric(against, classes=classes)
        values = class_mean(run_aps, mids, classes) - class_mean(against_aps, mids, classes)
        results[name] = interval(estimate, values, level)
    return results


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
    parser.add_argument("--replicates", type=int, default=1000)
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
