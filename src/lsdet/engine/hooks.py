"""The parts of a training run that are not the loop itself, as hooks the ``Trainer`` calls at
fixed points (the pattern of detectron2's ``HookBase``): before each epoch, after each step,
after each epoch, after the training and when it fails. A hook reads the run (``trainer.run``)
and never changes it; what it keeps is its own, and goes into the checkpoint under its
``state_key`` (``state_dict`` / ``load_state_dict``) when it has to survive a resume.

The hooks, in the order the trainer calls them:

- ``DivergenceHook``: flags a finite loss that stays above ``train.divergence.factor`` x its
  running mean for ``train.divergence.steps`` steps (log and summary.json, once);
- ``SamplerHistogramHook``: the sampler's draws per class at each epoch start;
- ``LoggingHook``: the progress bar, the progress file and the wandb scalars;
- ``StopHook``: a stop signal (on any rank) or ``train.stop_after_iters`` ends the loop after the
  step in flight, and the stopped run prints how to continue it;
- ``CheckpointHook``: ``last.pt`` every ``train.checkpoint_every`` steps, at a stop and at each
  epoch end, the weights at each phase end; never NaN/inf weights, never onto a full disk;
- ``EvalHook``: validation after each epoch (or the epochs of ``train.eval_epochs``) or phase
  (``train.eval_every``); a failed evaluation is reported in the history and the log, and the
  training goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from lsdet.engine.builders import unwrap
from lsdet.engine.checkpoint import (
    CheckpointWriteError,
    non_finite_tensors,
    save_atomic,
    save_keeping_previous,
)
from lsdet.engine.distributed import all_reduce_flag, barrier
from lsdet.engine.run_state import DivergenceMonitor, NonFiniteStateError
from lsdet.engine.signals import StopRequested, resume_advice
from lsdet.engine.training_log import (
    Speed,
    log_sampler_histogram,
    log_step,
    report_progress,
    warn_divergence,
)
from lsdet.inference.validation import validate
from lsdet.sampling.schedule import Phase

if TYPE_CHECKING:  # the trainer builds the hooks: a run-time import would be a cycle
    from lsdet.engine.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class StepOutcome:
    """What the step just done gives the hooks: its losses (None: skipped, not finite), the lr
    it ran with and the images of its batch on this rank."""

    losses: dict[str, float] | None
    lr: float
    images: int


class Hook:
    """A part of a training run called by the trainer's loop; every method does nothing unless
    a hook overrides it."""

    state_key: str | None = None  # the checkpoint entry of the hook's state; None: no state

    def before_epoch(self, trainer: Trainer, phase: Phase) -> None:
        """The epoch's sampler stream is set; no step of the epoch has run yet (on resume, the
        steps done before the checkpoint have)."""

    def after_step(self, trainer: Trainer, step: StepOutcome) -> None:
        """The step is counted in ``trainer.run.position``."""

    def after_epoch(self, trainer: Trainer, phase: Phase) -> None:
        """The epoch is counted and its history record appended."""

    def after_train(self, trainer: Trainer, status: str) -> None:
        """The loop ended (status finished, stopped or interrupted) and summary.json is written."""

    def on_failure(self, trainer: Trainer, error: Exception) -> None:
        """The training raised ``error``, which is raised again after the hooks."""

    def summary(self) -> dict[str, Any]:
        """Entries the hook adds to the run summary."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from the state of a checkpoint."""


class DivergenceHook(Hook):
    """Watches the loss for a divergence (``DivergenceMonitor``), flags the first one."""

    state_key = "divergence"

    def __init__(self, factor: float, steps: int) -> None:
        self.monitor = DivergenceMonitor(factor, steps)

    def after_step(self, trainer: Trainer, step: StepOutcome) -> None:
        if step.losses is None:
            return
        global_step = trainer.run.position.global_step
        if self.monitor.update(step.losses["loss"], global_step):
            warn_divergence(self.monitor.diverged_at, global_step, trainer.run.dist.is_main)

    def summary(self) -> dict[str, Any]:
        # the first flag of a diverging loss (step, loss, running mean) or null
        return {"diverged": self.monitor.diverged_at}

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)


class SamplerHistogramHook(Hook):
    """The per-class draws of each epoch's sampler stream (plot in the run folder + wandb)."""

    def before_epoch(self, trainer: Trainer, phase: Phase) -> None:
        if trainer.run.position.iteration == 0:
            log_sampler_histogram(trainer.run, phase)


class LoggingHook(Hook):
    """The epoch's progress bar (loss, lr, images/s), the progress file every ``log_every``
    steps and at each epoch end, the wandb scalars every ``log_every`` steps, and the progress
    file's last status (finished, stopped, interrupted, failed)."""

    def __init__(self, log_every: int, show_progress: bool) -> None:
        self.log_every = log_every
        self.show_progress = show_progress
        self.loss_ema: dict[str, float] = {}  # running mean of each loss, for the bar and wandb
        self.bar: tqdm | None = None
        self.speed: Speed | None = None

    def before_epoch(self, trainer: Trainer, phase: Phase) -> None:
        run = trainer.run
        self.bar = tqdm(
            total=run.iters_this_epoch,
            initial=run.position.iteration,
            desc=f"{phase.name} epoch {run.position.epoch + 1}/{phase.epochs}",
            disable=not (run.dist.is_main and self.show_progress),
            unit="it",
            dynamic_ncols=True,
        )
        self.speed = Speed(run.dist.world_size)

    def after_step(self, trainer: Trainer, step: StepOutcome) -> None:
        run = trainer.run
        self.speed.add(step.images)
        self.bar.update(1)
        if step.losses is not None:
            for key, value in step.losses.items():
                previous = self.loss_ema.get(key)
                self.loss_ema[key] = value if previous is None else 0.9 * previous + 0.1 * value
            self.bar.set_postfix(
                loss=f"{self.loss_ema['loss']:.3f}",
                lr=f"{step.lr:.2e}",
                img_s=f"{self.speed.images_per_s:.1f}",
            )
        global_step = run.position.global_step
        if global_step % self.log_every == 0 or run.position.iteration == run.iters_this_epoch:
            report_progress(run, "training", self.speed.images_per_s)
        if run.dist.is_main and global_step % self.log_every == 0 and self.loss_ema:
            log_step(run, self.loss_ema, step.lr, self.speed.images_per_s)
        if run.position.iteration == run.iters_this_epoch:
            self._close_bar()

    def after_train(self, trainer: Trainer, status: str) -> None:
        self._close_bar()
        report_progress(trainer.run, status)

    def on_failure(self, trainer: Trainer, error: Exception) -> None:
        try:
            report_progress(trainer.run, "failed", error=f"{type(error).__name__}: {error}")
        except OSError as progress_error:  # e.g. the full disk itself
            log.error(
                "%s cannot record the failure: %s", trainer.run.folder.progress, progress_error
            )

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopHook(Hook):
    """Ends the loop after the step in flight when a stop signal arrived on any rank
    (``StopRequested``, installed for the whole run by ``run_training``) or the run reached
    ``train.stop_after_iters``; a run stopped by a signal prints how to continue it."""

    def __init__(
        self, stop: StopRequested, stop_after_iters: int | None, name_as_written: str
    ) -> None:
        self.stop = stop
        self.stop_after_iters = stop_after_iters
        # the run's name, interpolations unresolved: for the command that continues the run
        self.name_as_written = name_as_written

    def after_step(self, trainer: Trainer, step: StepOutcome) -> None:
        run = trainer.run
        planned = (
            self.stop_after_iters is not None and run.position.global_step >= self.stop_after_iters
        )
        if all_reduce_flag(self.stop.flag or planned, run.dist):  # every rank stops together
            trainer.request_stop("interrupted" if self.stop.flag else "stopped")

    def after_train(self, trainer: Trainer, status: str) -> None:
        run = trainer.run
        if status == "interrupted" and run.dist.is_main:
            print(
                f"Stopped by {self.stop.signal_name} after step {run.position.global_step}: "
                f"checkpoint {run.folder.last_checkpoint}; "
                f"{resume_advice(run.run_dir, self.name_as_written)}",
                flush=True,
            )


class CheckpointHook(Hook):
    """Writes the run's checkpoint (``Trainer.state_dict``) to ``last.pt``, keeping the one
    before as ``previous.pt``: every ``every`` steps (0: never), when the loop stops, at each
    epoch end; and the weights at the end of each phase (``phase_<name>.pt``, what a later
    phase with ``init_from_previous`` and ``lsdet.evaluate`` read)."""

    def __init__(self, every: int, resumed_from: tuple[Path, int] | None = None) -> None:
        self.every = every
        # the newest checkpoint this run wrote or resumed from: (path, global step)
        self.last: tuple[Path, int] | None = resumed_from

    def after_step(self, trainer: Trainer, step: StepOutcome) -> None:
        global_step = trainer.run.position.global_step
        periodic = self.every and global_step % self.every == 0
        if trainer.stop_status is not None or periodic:
            self.save(trainer)

    def after_epoch(self, trainer: Trainer, phase: Phase) -> None:
        run = trainer.run
        self.save(trainer)
        if run.position.epoch == phase.epochs and run.dist.is_main:
            save_atomic(trainer.phase_weights(phase), run.folder.phase_checkpoint(phase.name))
        barrier(run.dist)

    def save(self, trainer: Trainer) -> None:
        """Write ``last.pt`` (collective). Refused with NonFiniteStateError when the weights or
        the optimizer state hold NaN/inf: a checkpoint is always one a run can continue from."""
        run = trainer.run
        state = trainer.state_dict()  # collective
        bad = non_finite_tensors({"model": state["model"], "optimizer": state["optimizer"]})
        if bad:  # the same on every rank: DDP keeps the weights and optimizer states equal
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteStateError(
                f"step {run.position.global_step}: NaN/inf in {shown}; the checkpoint is not "
                f"written. {self.resume_hint()}"
            )
        path = run.folder.last_checkpoint
        write_error: CheckpointWriteError | None = None
        if run.dist.is_main:
            try:
                save_keeping_previous(state, path)
            except CheckpointWriteError as error:
                write_error = error
        if all_reduce_flag(write_error is not None, run.dist):  # every rank stops, not rank 0 only
            raise write_error or CheckpointWriteError(
                f"cannot write {path}: rank 0 failed to write it (see its log)", no_space=False
            )
        self.last = (path, run.position.global_step)

    def resume_hint(self) -> str:
        """Where the run can continue from: its newest checkpoint (all written ones are
        finite)."""
        if self.last is None:
            return "No checkpoint was written yet: start again with a lower optim.lr."
        path, step = self.last
        return (
            f"The last finite checkpoint is {path} (step {step}): continue from it with "
            "train.resume=true optim.lr=<lower> train.resume_allow_changes=[optim.lr]."
        )


class EvalHook(Hook):
    """Validation after every epoch (``when="epoch"``; only the ``epochs`` listed, counted over
    the whole schedule, when given), after the last epoch of each phase
    (``"phase"``) or never; its figures join the epoch's history record
    (``Trainer.add_evaluation``). An exception becomes ``{"eval_error": ...}``."""

    def __init__(
        self,
        *,
        when: str,
        epochs: list[int] | None = None,
        run_name: str,
        batch_size: int,
        num_workers: int,
        max_images: int | None,
        show_progress: bool,
        image_records: bool = False,
    ) -> None:
        self.when = when
        self.image_records = image_records  # keep per-image records (train.eval_image_records)
        # with when="epoch": only after these epochs, numbered over the whole schedule
        # (train.eval_epochs); None: after every epoch
        self.epochs = None if epochs is None else {int(e) for e in epochs}
        self.run_name = run_name
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_images = max_images
        self.show_progress = show_progress

    def after_epoch(self, trainer: Trainer, phase: Phase) -> None:
        last_of_phase = trainer.run.position.epoch == phase.epochs
        # decided from the run's position alone, so a resumed run evaluates the same epochs
        listed = self.epochs is None or trainer.run.global_epoch() in self.epochs
        if (self.when == "epoch" and listed) or (self.when == "phase" and last_of_phase):
            report_progress(trainer.run, "evaluating")
            tag = f"{phase.name}_epoch{trainer.run.position.epoch}"
            trainer.add_evaluation(self.evaluate(trainer, tag))

    def evaluate(self, trainer: Trainer, tag: str) -> dict[str, Any]:
        run = trainer.run
        try:
            return validate(
                unwrap(run.model),
                run.data,
                tag=tag,
                run_dir=run.run_dir,
                run_name=self.run_name,
                device=run.device,
                dist=run.dist,
                logger=run.logger,
                step=run.position.global_step,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                max_images=self.max_images,
                amp=run.amp,
                progress=self.show_progress,
                image_records=self.image_records,
            )
        except Exception as exc:  # reported, and the training goes on
            message = f"{type(exc).__name__}: {exc}"
            log.error("evaluation %s failed (training continues): %s", tag, message)
            tqdm.write(f"[{tag}] evaluation failed (training continues): {message}")
            return {"eval_error": message}
