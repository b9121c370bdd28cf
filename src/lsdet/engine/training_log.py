"""What a training run reports while it trains, as the hooks call it: the speed, the progress
file (``report_progress``), the wandb scalars of a step, a flagged divergence, the sampler's
draws per class at an epoch start (plot and wandb), and the concurrent rates it trained with
(``write_concurrent_rates_csv``)."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lsdet.atomic_files import write_text_atomic  # noqa: E402
from lsdet.data import Hierarchy  # noqa: E402
from lsdet.engine.run_state import Run  # noqa: E402
from lsdet.sampling.schedule import Phase  # noqa: E402

log = logging.getLogger(__name__)

RATES_CSV_COLUMNS = (
    "class_i_mid",
    "class_i_name",
    "class_j_mid",
    "class_j_name",
    "rate",
    "hierarchy_pair",
)


class Speed:
    """Images per second since the epoch (re)started, over all ranks."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.start = time.perf_counter()
        self.images = 0

    def add(self, images: int) -> None:
        self.images += images * self.world_size

    @property
    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)


def warn_divergence(flag: dict[str, Any], step: int, is_main: bool) -> None:
    """The log line (and, on the main process, the console line) of a flagged divergence."""
    message = (
        f"the loss diverges: {flag['loss']:.4g} at step {step}, above "
        f"{flag['factor']:g} x its running mean {flag['running_mean']:.4g} for "
        f"{flag['steps']} steps in a row (since step {flag['since_step']}); lower "
        "optim.lr (train.divergence sets the test)"
    )
    log.warning("%s", message)
    if is_main:
        tqdm.write(f"WARNING: {message}")


def log_step(run: Run, loss_ema: dict[str, float], lr: float, images_per_s: float) -> None:
    """The step's scalars to wandb (main process)."""
    run.logger.log(
        {
            **{f"train/{k}": v for k, v in loss_ema.items()},
            "train/lr": lr,
            "train/images_per_s": images_per_s,
            "train/nonfinite_steps": run.guard.count,
            "train/phase": run.position.phase,
        },
        step=run.position.global_step,
    )


def report_progress(
    run: Run, status: str, images_per_s: float = 0.0, error: str | None = None
) -> None:
    """Where the run stands, to its progress file (main process): ``status`` (training,
    evaluating, finished, stopped, interrupted, failed), the phase, the step, the fraction of
    the schedule done (epochs done with the current one's share / all epochs) and the speed;
    ``error``: why a run failed."""
    if not run.dist.is_main:
        return
    iters = run.iters_this_epoch
    done = run.global_epoch() + (run.position.iteration / iters if iters else 0.0)
    phase = run.schedule.phases[min(run.position.phase, len(run.schedule.phases) - 1)]
    state = {
        "status": status,
        "phase": phase.name,
        "global_step": run.position.global_step,
        "fraction": min(max(done / run.schedule.total_epochs, 0.0), 1.0),
        "images_per_s": round(images_per_s, 2),
    }
    if error is not None:
        state["error"] = error
    write_text_atomic(run.folder.progress, json.dumps(state))


def log_sampler_histogram(run: Run, phase: Phase) -> None:
    """Per-class image draws of this epoch's global stream (plot + wandb)."""
    if not run.dist.is_main:
        return
    data = run.data
    stream = run.sampler.global_stream(run.global_epoch())
    counts = sampled_class_counts(
        stream, data.class_offsets, data.class_images, data.num_train_images
    )
    path = plot_sampler_histogram(
        counts,
        data.image_counts,
        run.folder.sampler_plot(phase.name, run.position.epoch + 1),
        title=f"{phase.name}: sampler {phase.sampler.get('name')} draws per class",
    )
    step = run.position.global_step
    run.logger.log_image("train/sampler_class_histogram", path, step)
    if run.logger.active:
        import wandb  # only when logging (see run_logger)

        histogram = wandb.Histogram(np_histogram=np.histogram(counts, bins=min(64, len(counts))))
        run.logger.log({"train/sampler_draws_per_class": histogram}, step)


def sampled_class_counts(
    stream: np.ndarray, class_offsets: np.ndarray, class_images: np.ndarray, num_images: int
) -> np.ndarray:
    """[C] number of drawn images that contain each class, for an epoch's stream of image
    indices (an image drawn twice counts twice)."""
    draws = np.bincount(np.asarray(stream, dtype=np.int64), minlength=num_images)
    per_pair = draws[np.asarray(class_images, dtype=np.int64)]
    cumulative = np.concatenate([[0], np.cumsum(per_pair)])
    offsets = np.asarray(class_offsets, dtype=np.int64)
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def plot_sampler_histogram(
    draws: np.ndarray, image_counts: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """Draws per class in one epoch beside the class's training images, classes sorted by
    frequency (log y)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = np.argsort(-np.asarray(image_counts), kind="stable")
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(x, np.maximum(np.asarray(image_counts)[order], 0.5), label="training images")
    ax.bar(x, np.maximum(np.asarray(draws)[order], 0.5), alpha=0.6, label="draws this epoch")
    ax.set_yscale("log")
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_concurrent_rates_csv(
    path: str | Path, rates: torch.Tensor, hierarchy: Hierarchy, class_names: list[str]
) -> Path:
    """The concurrent rates a run trained with (the matrix R of the paper's eq. 3 and 5): one
    row per nonzero off-diagonal pair (i, j), ``rate`` = r_ij, the background row and column
    left out. Ancestor/descendant pairs are included; they hold ``rates.hierarchy_rate``, set
    rather than estimated, and are marked ``hierarchy_pair=1`` (0: estimated from the training
    boxes). ``rates`` is [C+1, C+1] with index 0 the background, then ``hierarchy.mids``."""
    matrix = rates.detach().cpu().double().numpy()[1:, 1:]
    related = hierarchy.ancestors | hierarchy.descendants
    mids = hierarchy.mids
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RATES_CSV_COLUMNS)
    for i, j in zip(*np.nonzero(matrix), strict=True):
        if i == j:
            continue
        writer.writerow(
            [
                mids[i],
                class_names[i],
                mids[j],
                class_names[j],
                f"{matrix[i, j]:.6g}",
                int(related[i, j]),
            ]
        )
    return write_text_atomic(path, buffer.getvalue())
