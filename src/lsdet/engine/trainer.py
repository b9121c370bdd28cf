"""Training, top to bottom: ``run_training`` reads the data, estimates the concurrent rates,
builds the loss and the detector, then for each phase of the schedule builds the sampler and a
fresh optimizer and trains epoch after epoch (``train_one_epoch``, ``train_step``).
What the run holds is ``run_state.Run``; checkpoints (``checkpoint``), validation
(``validation``), progress and logging (``training_log``, ``run_logger``), signals
(``signals``) and the run folder's lock (``run_folder``) are separate pieces it calls.

The lr is a pure function of (phase, iteration) (``Schedule.lr_at``), so resuming needs no
scheduler object; a checkpoint holds the model, optimizer, sampler position, random state and
loop position, and ``train.resume=true`` continues with exactly the data, weights and random
draws an uninterrupted run would have had. See README "Reliability".

Faults that would lose progress or hide a failure: a step with a non-finite loss is skipped and
logged, and more than ``train.max_consecutive_nonfinite`` in a row stop the run naming its last
checkpoint; a checkpoint is never written with NaN/inf weights or optimizer state, nor onto a
disk without room for it; a finite loss that stays above ``train.divergence.factor`` x its
running mean for ``train.divergence.steps`` steps is flagged in the log and in summary.json;
a run that fails says so in progress.json (status "failed", the error). A run whose loss or
scoring uses the concurrent rates writes them to ``concurrent_rates.csv``.
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
from tqdm import tqdm

from lsdet.atomic_files import write_text_atomic
from lsdet.engine import checkpoint as ckpt
from lsdet.engine.builders import (
    build_model,
    build_optimizer,
    resolve_device,
    training_loss,
    unwrap,
    wrap_distributed,
)
from lsdet.engine.config_checks import check_number, check_training_config
from lsdet.engine.distributed import (
    DistInfo,
    all_reduce_flag,
    barrier,
    cleanup,
    init_distributed,
)
from lsdet.engine.loaders import SeededDataset, SeededSampler, make_loader, open_batches
from lsdet.engine.run_folder import RunFolder, write_hydra_record
from lsdet.engine.run_logger import RunLogger
from lsdet.engine.run_state import (
    DivergenceMonitor,
    NonFiniteGuard,
    NonFiniteLossError,
    Position,
    Run,
)
from lsdet.engine.signals import StopRequested, resume_advice
from lsdet.engine.training_data import build_training_data, training_rates
from lsdet.engine.training_log import (
    Speed,
    after_step,
    log_sampler_histogram,
    report_progress,
    write_concurrent_rates_csv,
)
from lsdet.engine.validation import validate
from lsdet.losses import loss_class
from lsdet.sampling.schedule import Phase, Schedule

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train as the config says; the run's files go to ``run_dir``. Returns the run summary
    (status finished | stopped (train.stop_after_iters) | interrupted (a signal))."""
    check_training_config(cfg)
    check_reliability_settings(cfg)
    run_dir = Path(run_dir)
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
            return _train(cfg, folder, device, dist, stop, resuming)
    finally:
        torch.set_num_threads(threads_before)
        cleanup(dist)


def check_reliability_settings(cfg: DictConfig) -> None:
    """The non-finite, divergence and resume-change settings, checked before anything runs."""
    train = cfg.train
    check_number(
        "train.max_consecutive_nonfinite", train.max_consecutive_nonfinite, int, 0, math.inf, True
    )
    check_number("train.divergence.factor", train.divergence.factor, float, 1.0, math.inf, False)
    check_number("train.divergence.steps", train.divergence.steps, int, 0, math.inf, True)
    ckpt.resume_allowed_changes(cfg)


def _train(
    cfg: DictConfig,
    folder: RunFolder,
    device: torch.device,
    dist: DistInfo,
    stop: StopRequested,
    resuming: bool,
) -> dict[str, Any]:
    start = time.perf_counter()
    run_dir = folder.run_dir
    ckpt.seed_everything(int(cfg.seed) + dist.rank)
    if cfg.model.backbone.norm == "sync_bn" and device.type != "cuda":
        # SyncBatchNorm synchronises over NCCL only; on CPU it is plain batch norm.
        log.warning("model.backbone.norm=sync_bn needs CUDA: using bn on %s", device)
        cfg.model.backbone.norm = "bn"
    schedule = Schedule.from_config(cfg.schedule)

    # Data -> rates -> loss -> detector. Rank 0 generates / indexes the data first.
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

    resume_state = (
        ckpt.load_resume_state(folder.checkpoint_dir, cfg, dist, data) if resuming else None
    )
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
    if dist.enabled:
        model = wrap_distributed(model, device, dist.local_rank, cfg)
    logger = RunLogger(
        mode=cfg.logger.mode,
        project=cfg.logger.project,
        run_dir=run_dir,
        name=cfg.name,
        config=OmegaConf.to_container(cfg, resolve=True),
        run_id=resume_state["wandb_run_id"] if resume_state else None,
        enabled=dist.is_main,
        tags=list(cfg.logger.tags),
    )
    run = Run(
        cfg=cfg,
        folder=folder,
        device=device,
        dist=dist,
        data=data,
        schedule=schedule,
        model=model,
        logger=logger,
        stop=stop,
        guard=NonFiniteGuard(
            int(cfg.train.max_nonfinite), int(cfg.train.max_consecutive_nonfinite)
        ),
        divergence=DivergenceMonitor(
            float(cfg.train.divergence.factor), int(cfg.train.divergence.steps)
        ),
        rates=rates,
    )
    if resume_state is not None:
        run.position = Position(**resume_state["position"])
        run.guard.load_state_dict(
            resume_state.get("nonfinite_guard", {"count": int(resume_state["nonfinite_count"])})
        )
        run.divergence.load_state_dict(resume_state.get("divergence", {}))
        run.last_checkpoint = (Path(resume_state["loaded_from"]), run.position.global_step)
    if dist.is_main:
        write_text_atomic(folder.config, OmegaConf.to_yaml(cfg, resolve=True))
        write_hydra_record(run_dir, cfg)  # only now: a refused start leaves no trace
        data.write_read_reports(folder.data_report)
        rates_csv = folder.concurrent_rates
        if rates is not None and not (resume_state is not None and rates_csv.is_file()):
            write_concurrent_rates_csv(rates_csv, rates, data.hierarchy, data.class_names)

    try:
        return _train_phases(run, resume_state, start)
    except Exception as error:
        if dist.is_main:
            try:
                report_progress(run, "failed", error=f"{type(error).__name__}: {error}")
            except OSError as progress_error:  # e.g. the full disk itself
                log.error("progress.json cannot record the failure: %s", progress_error)
        raise
    finally:
        logger.finish()


def _train_phases(run: Run, resume_state: dict[str, Any] | None, start: float) -> dict[str, Any]:
    """The phases of the schedule from where the run stands; returns the run summary."""
    schedule, stop, dist, run_dir = run.schedule, run.stop, run.dist, run.run_dir
    status = "finished"
    for phase_index, phase in enumerate(schedule.phases):
        if phase_index < run.position.phase:
            continue
        if resume_state is None:
            begin_phase_weights(run, phase_index, phase)
        start_phase(run, phase)
        if resume_state is not None:  # continue the phase the checkpoint was taken in
            ckpt.restore_loop_state(run, resume_state)
            resume_state = None
        while run.position.epoch < phase.epochs:
            if not train_one_epoch(run, phase):
                status = "interrupted" if stop.flag else "stopped"
                break
            end_epoch(run, phase)
        if status != "finished":
            break
        run.position.phase += 1
        run.position.epoch = 0
    summary = {
        "status": status,
        "global_step": run.position.global_step,
        "nonfinite_steps": run.guard.count,
        "nonfinite_first_step": run.guard.first_step,
        # the first flag of a diverging loss (step, loss, running mean) or null
        "diverged": run.divergence.diverged_at,
        "seconds": round(time.perf_counter() - start, 1),  # this process's wall time
        "history": run.position.history,
        "run_dir": str(run_dir),
    }
    if dist.is_main:
        write_text_atomic(run.folder.summary, json.dumps(summary, indent=1) + "\n")
        run.data.write_read_reports(run.folder.data_report)  # + images skipped in training
        report_progress(run, status)
        if status == "interrupted":
            print(
                f"Stopped by {stop.signal_name} after step {run.position.global_step}: "
                f"checkpoint {run.folder.last_checkpoint}; "
                f"{resume_advice(run.run_dir, run.cfg)}",
                flush=True,
            )
    return summary


# --------------------------------------------------------------------------- phases
def begin_phase_weights(run: Run, phase_index: int, phase: Phase) -> None:
    """The weights a phase starts from: phase 1 from the initial model; a later phase from the
    previous phase's final weights (``init_from_previous: true``) or from a fresh model built
    with the run's seed (``false``)."""
    if phase_index == 0:
        return
    model = unwrap(run.model)
    if phase.init_from_previous:
        previous = run.schedule.phases[phase_index - 1]
        state = ckpt.load_checkpoint(run.folder.phase_checkpoint(previous.name))
        model.load_state_dict(state["model"])
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)  # the same fresh weights on every rank
        loss_fn = training_loss(run.cfg, run.data, run.rates)
        fresh = build_model(run.cfg, run.data, loss_fn, run.rates, run.device)
    model.load_state_dict(fresh.state_dict())


def start_phase(run: Run, phase: Phase) -> None:
    """This phase's sampler, a fresh optimizer and grad scaler."""
    from lsdet.sampling import build_sampler

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
    run.optimizer, run.base_lr = build_optimizer(run.cfg.optim, run.model, total_batch)
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.amp)


def iters_per_epoch(run: Run) -> int:
    n = math.ceil(len(run.sampler) / run.batch_size)
    cap = run.cfg.train.max_iters_per_epoch
    return min(n, int(cap)) if cap else n


# --------------------------------------------------------------------------- the loop
def train_one_epoch(run: Run, phase: Phase) -> bool:
    """Trains the rest of the current epoch; False when a stop was requested."""
    cfg, position = run.cfg, run.position
    run.sampler.set_epoch(run.global_epoch())
    if position.iteration == 0:
        log_sampler_histogram(run, phase)
    iters = run.iters_this_epoch = iters_per_epoch(run)
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
        num_workers=int(cfg.train.num_workers),
        collate_fn=run.data.collate_fn,
        seed=run.seed * 100_003 + run.global_epoch(),
    )
    run.model.train()
    bar = tqdm(
        total=iters,
        initial=position.iteration,
        desc=f"{phase.name} epoch {position.epoch + 1}/{phase.epochs}",
        disable=not (run.dist.is_main and cfg.train.progress),
        unit="it",
        dynamic_ncols=True,
    )
    speed = Speed(run.dist.world_size)
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
            losses = train_step(run, images, targets)
            position.iteration += 1
            position.global_step += 1
            speed.add(len(images))
            bar.update(1)
            after_step(run, losses, lr, speed, bar)
            if stop_requested(run):
                ckpt.save_checkpoint(run)
                bar.close()
                return False
            every = int(cfg.train.checkpoint_every or 0)
            if every and position.global_step % every == 0:
                ckpt.save_checkpoint(run)
    bar.close()
    return True


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
    try:
        if not run.guard.step_ok(finite, where, step=p.global_step + 1):
            return None
    except NonFiniteLossError as error:
        raise NonFiniteLossError(f"{error} {ckpt.resume_hint(run)}") from None
    run.scaler.scale(loss).backward()
    clip = run.cfg.optim.clip_grad_norm
    if clip:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), float(clip))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    out = {k: float(v.detach()) for k, v in loss_dict.items()}
    out["loss"] = float(loss.detach())
    return out


def stop_requested(run: Run) -> bool:
    """A signal arrived (on any rank) or ``train.stop_after_iters`` is reached."""
    stop_after = run.cfg.train.stop_after_iters
    planned = stop_after is not None and run.position.global_step >= int(stop_after)
    return all_reduce_flag(run.stop.flag or planned, run.dist)


def end_epoch(run: Run, phase: Phase) -> None:
    """Checkpoint first (the epoch's steps are safe), then validate: a failed validation is
    reported in the history and the log and does not stop the training."""
    position = run.position
    position.epoch += 1
    position.iteration = 0
    record: dict[str, Any] = {
        "phase": phase.name,
        "epoch": position.epoch,
        "global_step": position.global_step,
    }
    position.history.append(record)
    ckpt.save_checkpoint(run)
    last_of_phase = position.epoch == phase.epochs
    if last_of_phase and run.dist.is_main:
        ckpt.save_atomic(
            {
                "model": unwrap(run.model).state_dict(),
                "config": OmegaConf.to_container(run.cfg, resolve=True),
                "phase_name": phase.name,
            },
            run.folder.phase_checkpoint(phase.name),
        )
    barrier(run.dist)
    when = run.cfg.train.eval_every
    if when == "epoch" or (when == "phase" and last_of_phase):
        report_progress(run, "evaluating")
        record.update(run_validation(run, tag=f"{phase.name}_epoch{position.epoch}"))
        ckpt.save_checkpoint(run)  # the history now holds the evaluation


def run_validation(run: Run, tag: str) -> dict[str, Any]:
    """``validate`` with the run's settings; an exception becomes ``{"eval_error": ...}``."""
    cfg = run.cfg
    try:
        return validate(
            unwrap(run.model),
            run.data,
            tag=tag,
            run_dir=run.run_dir,
            run_name=cfg.name,
            device=run.device,
            dist=run.dist,
            logger=run.logger,
            step=run.position.global_step,
            batch_size=int(cfg.train.eval_batch_size),
            num_workers=int(cfg.train.num_workers),
            max_images=cfg.train.eval_max_images,
            amp=run.amp,
            progress=bool(cfg.train.progress),
        )
    except Exception as exc:  # reported, and the training goes on
        message = f"{type(exc).__name__}: {exc}"
        log.error("evaluation %s failed (training continues): %s", tag, message)
        tqdm.write(f"[{tag}] evaluation failed (training continues): {message}")
        return {"eval_error": message}
