"""Training, top to bottom: ``run_training`` takes the run folder's lock and the stop signals,
``setup`` reads the data, estimates the concurrent rates, builds the detector (and its loss) and
continues a checkpoint, and the ``Trainer`` runs the phases of the schedule: for each phase a
sampler and a fresh optimizer (``start_phase``), then epoch after epoch, step after step
(``train_step``). Everything else a run does is a hook (``hooks``): the checkpoints, the
validation, the progress and logging, the stop signals and the sampler histogram. ``Run``
(``run_state``) is what the run holds; the trainer alone changes it.

The lr is a pure function of (phase, iteration) (``Schedule.lr_at``), so resuming needs no
scheduler object; a checkpoint holds the model, optimizer, sampler position, random state, loop
position and the hooks' states, and ``train.resume=true`` continues with exactly the data,
weights and random draws an uninterrupted run would have had. See README "Reliability".

A step with a non-finite loss is skipped and logged, and more than
``train.max_consecutive_nonfinite`` in a row (or ``train.max_nonfinite`` in the run) stop the
run naming its last checkpoint. A run that fails says so in its progress file (status "failed",
the error). A run whose loss or scoring uses the concurrent rates writes them to its folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lsdet.atomic_files import write_text_atomic
from lsdet.config_schema.checks import check_training_config
from lsdet.engine.builders import (
    build_model,
    build_optimizer,
    resolve_device,
    training_loss,
    unwrap,
    wrap_distributed,
)
from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.distributed import (
    DistInfo,
    all_reduce_flag,
    barrier,
    cleanup,
    gather_objects,
    init_distributed,
)
from lsdet.engine.hooks import (
    CheckpointHook,
    DivergenceHook,
    EvalHook,
    Hook,
    LoggingHook,
    SamplerHistogramHook,
    StepOutcome,
    StopHook,
)
from lsdet.engine.loaders import SeededDataset, SeededSampler, make_loader, open_batches
from lsdet.engine.random_state import rng_state, seed_everything, set_rng_state
from lsdet.engine.resume import load_resume_state, resume_allowed_changes
from lsdet.engine.run_folder import RunFolder, write_hydra_record
from lsdet.engine.run_logger import RunLogger
from lsdet.engine.run_state import NonFiniteGuard, NonFiniteLossError, Position, Run
from lsdet.engine.signals import StopRequested
from lsdet.engine.training_data import build_training_data, training_rates
from lsdet.engine.training_log import write_concurrent_rates_csv
from lsdet.losses import loss_class
from lsdet.sampling import build_sampler
from lsdet.sampling.schedule import Phase, Schedule

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train as the config says; the run's files go to ``run_dir``. Returns the run summary
    (status finished | stopped (train.stop_after_iters) | interrupted (a signal))."""
    check_training_config(cfg)
    resume_allowed_changes(cfg)  # train.resume_allow_changes, checked before anything runs
    folder = RunFolder(run_dir, resume=cfg.train.resume, overwrite=cfg.train.get("overwrite"))
    device = resolve_device(cfg.train.device)
    dist = init_distributed(cfg.train.dist_backend, device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    threads_before = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    lock = folder if dist.is_main else contextlib.nullcontext()
    try:
        with lock, StopRequested() as stop:
            resuming = folder.should_resume()
            return setup(cfg, folder, device, dist, stop, resuming).train()
    finally:
        torch.set_num_threads(threads_before)
        cleanup(dist)


def setup(
    cfg: DictConfig,
    folder: RunFolder,
    device: torch.device,
    dist: DistInfo,
    stop: StopRequested,
    resuming: bool,
) -> Trainer:
    """The run's data, detector and hooks, continued from the folder's checkpoint when
    ``resuming``; the run's config and data report written to its folder."""
    start = time.perf_counter()
    seed_everything(int(cfg.seed) + dist.rank)
    schedule = Schedule.from_config(cfg.schedule)

    # Data -> rates -> detector. Rank 0 generates / indexes the data first.
    if not dist.is_main:
        barrier(dist)
    data = build_training_data(
        cfg.data,
        hflip_prob=float(cfg.train.hflip_prob),
        same_object_iou=float(cfg.rates.iou_threshold),
    )
    if dist.is_main:
        barrier(dist)
    rates = (
        training_rates(cfg.rates, data.train_set.index, data.hierarchy)
        if loss_class(cfg.loss.name).needs_rates(cfg.model.scoring)
        else None
    )
    loss_fn = training_loss(cfg, data, rates)
    model = build_model(cfg, data, loss_fn, rates, device)

    resume_state = load_resume_state(folder, cfg, dist, data) if resuming else None
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
    if dist.enabled:
        model = wrap_distributed(model, device, dist.local_rank, cfg)
    # The resolved config, built once: the record of the run's settings that every checkpoint
    # and the wandb run keep.
    config_record = OmegaConf.to_container(cfg, resolve=True)
    logger = RunLogger(
        mode=cfg.logger.mode,
        project=cfg.logger.project,
        run_dir=folder.run_dir,
        name=cfg.name,
        config=config_record,
        run_id=resume_state["wandb_run_id"] if resume_state else None,
        enabled=dist.is_main,
        tags=list(cfg.logger.tags),
        group=cfg.logger.get("group"),
        job_type=cfg.logger.get("job_type") or "train",
    )
    run = Run(
        folder=folder,
        device=device,
        dist=dist,
        data=data,
        schedule=schedule,
        model=model,
        logger=logger,
        guard=NonFiniteGuard(
            int(cfg.train.max_nonfinite), int(cfg.train.max_consecutive_nonfinite)
        ),
        seed=int(cfg.seed),
        batch_size=int(cfg.train.batch_size),
        amp=bool(cfg.train.amp) and device.type == "cuda",
        clip_grad_norm=float(cfg.optim.clip_grad_norm) if cfg.optim.clip_grad_norm else None,
        rates=rates,
    )
    train = cfg.train
    checkpointer = CheckpointHook(
        every=int(train.checkpoint_every or 0),
        resumed_from=(
            (Path(resume_state["loaded_from"]), resume_state["position"]["global_step"])
            if resume_state is not None
            else None
        ),
    )
    hooks = [
        DivergenceHook(float(train.divergence.factor), int(train.divergence.steps)),
        SamplerHistogramHook(),
        LoggingHook(log_every=int(train.log_every), show_progress=bool(train.progress)),
        StopHook(
            stop,
            None if train.stop_after_iters is None else int(train.stop_after_iters),
            name_as_written(cfg),
        ),
        checkpointer,
        EvalHook(
            when=train.eval_every,
            epochs=None if train.get("eval_epochs") is None else list(train.eval_epochs),
            run_name=cfg.name,
            batch_size=int(train.eval_batch_size),
            num_workers=int(train.num_workers),
            max_images=train.eval_max_images,
            show_progress=bool(train.progress),
            image_records=bool(train.get("eval_image_records", False)),
        ),
    ]
    trainer = Trainer(cfg, config_record, run, hooks, checkpointer, resume_state, start)
    if dist.is_main:
        write_text_atomic(folder.config, OmegaConf.to_yaml(cfg, resolve=True))
        # only now: a refused start leaves no trace
        write_hydra_record(folder.run_dir, OmegaConf.to_yaml(cfg))
        data.write_read_reports(folder.data_report)
        rates_csv = folder.concurrent_rates
        if rates is not None and not (resume_state is not None and rates_csv.is_file()):
            write_concurrent_rates_csv(rates_csv, rates, data.hierarchy, data.class_names)
    return trainer


def name_as_written(cfg: DictConfig) -> str:
    """The run's ``name`` as the config writes it, interpolations unresolved (a ``${now:...}``
    in it puts a time stamp into the run folder's name: what continuing the run must repeat)."""
    return str(OmegaConf.to_container(cfg, resolve=False).get("name", ""))


class Trainer:
    """Runs the phases of the schedule from where ``run`` stands and calls the hooks (in their
    order) around each epoch and step; the only code that changes ``run``. ``cfg`` is the
    run's config (what a phase builds: its optimizer, a fresh model); ``config_record`` its
    resolved copy, kept in every checkpoint."""

    def __init__(
        self,
        cfg: DictConfig,
        config_record: dict[str, Any],
        run: Run,
        hooks: list[Hook],
        checkpointer: CheckpointHook,
        resume_state: dict[str, Any] | None,
        start: float,
    ) -> None:
        self.cfg = cfg
        self.config_record = config_record
        self.run = run
        self.hooks = hooks
        self.checkpointer = checkpointer  # also one of the hooks
        self.resume_state = resume_state  # what is left to restore: dropped once restored
        self.start = start  # perf_counter at the start: the summary's wall time
        self.stop_status: str | None = None  # set by a hook: "stopped" or "interrupted"
        if resume_state is not None:
            run.position = Position(**resume_state["position"])
            run.guard.load_state_dict(
                resume_state.get("nonfinite_guard", {"count": int(resume_state["nonfinite_count"])})
            )
            for hook in hooks:
                if hook.state_key is not None:
                    hook.load_state_dict(resume_state.get(hook.state_key, {}))

    # ----------------------------------------------------------------- called by hooks
    def request_stop(self, status: str) -> None:
        """End the loop after this step with ``status`` (stopped | interrupted)."""
        self.stop_status = status

    def add_evaluation(self, figures: dict[str, Any]) -> None:
        """The evaluation of the epoch just ended joins its history record, and the checkpoint
        is written again so that it holds it."""
        self.run.position.history[-1].update(figures)
        self.checkpointer.save(self)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (collective: gathers every rank's RNG
        state)."""
        run = self.run
        rng_states = gather_objects(rng_state(), run.dist)
        sampler_state = run.sampler.state_dict()
        sampler_state["epoch"] = run.global_epoch()
        # consumed by finished steps (the last batch of an epoch may be short)
        consumed = run.position.iteration * run.batch_size
        sampler_state["num_yielded"] = min(consumed, len(run.sampler))
        p = run.position
        state = {
            "model": unwrap(run.model).state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "grad_scaler": run.scaler.state_dict(),
            "sampler": sampler_state,
            "position": {
                "phase": p.phase,
                "epoch": p.epoch,
                "iteration": p.iteration,
                "global_step": p.global_step,
                "history": p.history,
            },
            "phase_name": run.schedule.phases[p.phase].name,
            "rng": rng_states,
            "nonfinite_count": run.guard.count,
            "nonfinite_guard": run.guard.state_dict(),
            "wandb_run_id": run.logger.run_id,
            "world_size": run.dist.world_size,
            "train_data_fingerprint": run.data.train_fingerprint,
            "class_mids": list(run.data.hierarchy.mids),
            "config": self.config_record,
        }
        for hook in self.hooks:
            if hook.state_key is not None:
                state[hook.state_key] = hook.state_dict()
        return state

    def phase_weights(self, phase: Phase) -> dict[str, Any]:
        """What the checkpoint of a finished phase holds: its weights and the run's config."""
        return {
            "model": unwrap(self.run.model).state_dict(),
            "config": self.config_record,
            "phase_name": phase.name,
        }

    # ----------------------------------------------------------------- the run
    def train(self) -> dict[str, Any]:
        """The phases from where the run stands; returns the run summary."""
        try:
            return self._train_phases()
        except Exception as error:
            for hook in self.hooks:
                hook.on_failure(self, error)
            raise
        finally:
            self.run.logger.finish()

    def _train_phases(self) -> dict[str, Any]:
        run = self.run
        status = "finished"
        for phase_index, phase in enumerate(run.schedule.phases):
            if phase_index < run.position.phase:
                continue
            if self.resume_state is None:
                begin_phase_weights(self.cfg, run, phase_index, phase)
            start_phase(run, phase, self.cfg.optim)
            if self.resume_state is not None:  # continue the phase the checkpoint was taken in
                self._restore_loop_state(self.resume_state)
                self.resume_state = None
            while run.position.epoch < phase.epochs:
                if not self.train_one_epoch(phase):
                    status = self.stop_status
                    break
                self.end_epoch(phase)
            if status != "finished":
                break
            run.position.phase += 1
            run.position.epoch = 0
        summary = {
            "status": status,
            "global_step": run.position.global_step,
            "nonfinite_steps": run.guard.count,
            "nonfinite_first_step": run.guard.first_step,
        }
        for hook in self.hooks:
            summary.update(hook.summary())
        summary.update(
            seconds=round(time.perf_counter() - self.start, 1),  # this process's wall time
            history=run.position.history,
            run_dir=str(run.run_dir),
        )
        if run.dist.is_main:
            write_text_atomic(run.folder.summary, json.dumps(summary, indent=1) + "\n")
            run.data.write_read_reports(run.folder.data_report)  # + images skipped in training
        for hook in self.hooks:
            hook.after_train(self, status)
        return summary

    def _restore_loop_state(self, state: dict[str, Any]) -> None:
        # The optimizer's saved lr is replaced at the next step by the schedule's lr over this
        # config's base lr, so an lr changed with train.resume_allow_changes takes effect.
        run = self.run
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["grad_scaler"])
        run.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"][run.dist.rank])

    def train_one_epoch(self, phase: Phase) -> bool:
        """Trains the rest of the current epoch; False when a hook stopped the loop."""
        run, position = self.run, self.run.position
        run.sampler.set_epoch(run.global_epoch())
        run.iters_this_epoch = iters = iters_per_epoch(run, self.cfg.train.max_iters_per_epoch)
        for hook in self.hooks:
            hook.before_epoch(self, phase)
        loader = make_loader(
            SeededDataset(run.data.train_set),
            SeededSampler(
                run.sampler,
                seed=run.seed,
                rank=run.dist.rank,
                epoch=run.global_epoch(),
                start=position.iteration * run.batch_size,
            ),
            batch_size=run.batch_size,
            num_workers=int(self.cfg.train.num_workers),
            collate_fn=run.data.collate_fn,
            seed=run.seed * 100_003 + run.global_epoch(),
        )
        run.model.train()
        with open_batches(loader) as batches:
            while position.iteration < iters:
                images, targets = next(batches)
                lr = run.schedule.lr_at(
                    position.phase,
                    position.epoch * iters + position.iteration,
                    base_lr=run.base_lr,
                    iters_per_epoch=iters,
                )
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                try:
                    losses = train_step(run, images, targets)
                except NonFiniteLossError as error:
                    raise NonFiniteLossError(f"{error} {self.checkpointer.resume_hint()}") from None
                position.iteration += 1
                position.global_step += 1
                step = StepOutcome(losses=losses, lr=lr, images=len(images))
                for hook in self.hooks:
                    hook.after_step(self, step)
                if self.stop_status is not None:
                    return False
        return True

    def end_epoch(self, phase: Phase) -> None:
        """Count the epoch, append its history record; then the hooks (checkpoint first, so
        the epoch's steps are safe, then validation)."""
        position = self.run.position
        position.epoch += 1
        position.iteration = 0
        position.history.append(
            {"phase": phase.name, "epoch": position.epoch, "global_step": position.global_step}
        )
        for hook in self.hooks:
            hook.after_epoch(self, phase)


# --------------------------------------------------------------------------- phases and steps
def begin_phase_weights(cfg: DictConfig, run: Run, phase_index: int, phase: Phase) -> None:
    """The weights a phase starts from: phase 1 from the initial model; a later phase from the
    previous phase's final weights (``init_from_previous: true``) or from a fresh model built
    with the run's seed (``false``) as ``cfg`` says."""
    if phase_index == 0:
        return
    model = unwrap(run.model)
    if phase.init_from_previous:
        previous = run.schedule.phases[phase_index - 1]
        state = load_checkpoint(run.folder.phase_checkpoint(previous.name))
        model.load_state_dict(state["model"])
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)  # the same fresh weights on every rank
        loss_fn = training_loss(cfg, run.data, run.rates)
        fresh = build_model(cfg, run.data, loss_fn, run.rates, run.device)
    model.load_state_dict(fresh.state_dict())


def start_phase(run: Run, phase: Phase, optim_cfg: DictConfig) -> None:
    """This phase's sampler, a fresh optimizer (``optim.*``) and grad scaler."""
    run.sampler = build_sampler(
        phase.sampler,
        class_offsets=run.data.class_offsets,
        class_images=run.data.class_images,
        num_images=run.data.num_train_images,
        seed=run.seed,
        rank=run.dist.rank,
        world_size=run.dist.world_size,
    )
    total_batch = run.batch_size * run.dist.world_size
    run.optimizer, run.base_lr = build_optimizer(optim_cfg, run.model, total_batch)
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.amp)


def iters_per_epoch(run: Run, cap: int | None) -> int:
    """The phase sampler's batches per epoch, at most ``cap`` (train.max_iters_per_epoch)."""
    n = math.ceil(len(run.sampler) / run.batch_size)
    return min(n, int(cap)) if cap else n


def train_step(run: Run, images: list, targets: list) -> dict[str, float] | None:
    """One optimizer step; None when the loss was not finite (step skipped)."""
    device = run.device
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]
    with torch.autocast(device.type, enabled=run.amp):
        loss_dict = run.model(images, targets)
    loss = sum(loss_dict.values())
    finite = not all_reduce_flag(not bool(torch.isfinite(loss)), run.dist)
    p = run.position
    run.optimizer.zero_grad(set_to_none=True)
    where = f"phase {p.phase} epoch {p.epoch} it {p.iteration}"
    if not run.guard.step_ok(finite, where, step=p.global_step + 1):
        return None
    run.scaler.scale(loss).backward()
    if run.clip_grad_norm:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    out = {k: float(v.detach()) for k, v in loss_dict.items()}
    out["loss"] = float(loss.detach())
    return out
