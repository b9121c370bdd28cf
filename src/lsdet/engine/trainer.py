"""The training loop: phases of the schedule, epochs, iterations, evaluation, checkpoints.

Read top to bottom like torchvision's references/detection/train.py:
``run_training(cfg)`` builds the data, the loss, the detector and the schedule, then for each
phase builds the sampler and a fresh optimizer and trains epoch after epoch; the lr is a pure
function of (phase, iteration) (``Schedule.lr_at``), so resuming needs no scheduler object.

Reliability: checkpoints are written atomically every ``train.checkpoint_every`` iterations,
at the end of each epoch and when SIGTERM/SIGINT arrives (the step in flight finishes first);
``train.resume=true`` continues from ``<run_dir>/checkpoints/last.pt`` with the same weights,
optimizer state, sampler position and random state an uninterrupted run would have had.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from lsdet.engine import checkpoint as ckpt
from lsdet.engine.data import (
    SeededDataset,
    SeededSampler,
    ShardedSequence,
    TrainingData,
    build_training_data,
    concurrent_rates,
    make_loader,
)
from lsdet.engine.distributed import (
    DistInfo,
    all_reduce_flag,
    barrier,
    broadcast_object,
    cleanup,
    gather_objects,
    init_distributed,
)
from lsdet.engine.inference import evaluate_detections, gather_detections, predict
from lsdet.engine.report import plot_sampler_histogram, sampled_class_counts
from lsdet.engine.run_logger import RunLogger
from lsdet.models import build_detector

OPTIMIZERS = ("sgd", "adamw")
EVAL_WHEN = ("epoch", "phase", "never")

log = logging.getLogger(__name__)


# Settings a resumed run must share with the checkpoint (the others, e.g. evaluation or
# logging settings, may change on resume).
RESUME_MUST_MATCH = (
    "data",
    "model",
    "loss",
    "sampler",
    "schedule",
    "optim",
    "rates",
    "seed",
    "train.batch_size",
)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} for a nested dict/list config."""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(saved: dict, current: dict, keys=RESUME_MUST_MATCH) -> list[str]:
    """Dotted keys under ``keys`` whose values differ between two resolved configs."""
    a, b = flatten(saved), flatten(current)
    return sorted(
        k
        for k in set(a) | set(b)
        if any(k == p or k.startswith(p + ".") for p in keys) and a.get(k) != b.get(k)
    )


class NonFiniteLossError(RuntimeError):
    """Too many iterations with a NaN/inf loss: training stopped."""


@dataclass
class NonFiniteGuard:
    """Skips steps whose loss is not finite; raises after ``max_count`` of them in a run."""

    max_count: int
    count: int = 0

    def step_ok(self, finite: bool, where: str) -> bool:
        if finite:
            return True
        self.count += 1
        if self.count > self.max_count:
            raise NonFiniteLossError(
                f"{self.count} iterations with a non-finite loss (last at {where}); "
                f"train.max_nonfinite={self.max_count}. Lower optim.lr or check the data."
            )
        return False


@dataclass
class Position:
    """Where training stands: phase index, epoch within the phase, iterations done in the
    epoch, and the global iteration count over the whole run."""

    phase: int = 0
    epoch: int = 0
    iteration: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class StopRequested:
    """Set by SIGTERM/SIGINT; the loop checkpoints and stops after the current step."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# train.* values checked before anything is built: key -> (type, lowest allowed value)
TRAIN_NUMBERS = {
    "batch_size": (int, 1),
    "eval_batch_size": (int, 1),
    "num_workers": (int, 0),
    "max_nonfinite": (int, 0),
    "log_every": (int, 1),
    "checkpoint_every": (int, 0),
    "hflip_prob": (float, 0.0),
}


def check_train_config(train_cfg: Any) -> None:
    """ValueError naming the ``train.`` key whose value has the wrong type or range."""
    for key, (kind, lowest) in TRAIN_NUMBERS.items():
        value = train_cfg.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok = ok and float(value) == int(value)
        if not ok or value < lowest or (key == "hflip_prob" and value > 1):
            bound = "in [0, 1]" if key == "hflip_prob" else f">= {lowest}"
            raise ValueError(
                f"train.{key}={value!r}: expected a{'n integer' if kind is int else ' number'} {bound}"
            )
    when = train_cfg.get("eval_every")
    if when not in EVAL_WHEN:
        raise ValueError(f"train.eval_every={when!r}; expected one of {EVAL_WHEN}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device={name!r}; expected auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def build_optimizer(optim_cfg: Any, model: nn.Module, total_batch_size: int):
    """SGD (momentum) or AdamW over all trainable parameters; returns (optimizer, base_lr).

    ``optim.lr: null`` means ``optim.lr_per_image x total batch size`` (the paper's linear
    scaling: 0.00125 x batch for SGD)."""
    name = optim_cfg.name
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r}; expected one of {OPTIMIZERS}")
    base_lr = optim_cfg.lr
    if base_lr is None:
        base_lr = float(optim_cfg.lr_per_image) * total_batch_size
    base_lr = float(base_lr)
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        optimizer = torch.optim.SGD(
            params,
            lr=base_lr,
            momentum=float(optim_cfg.momentum),
            weight_decay=float(optim_cfg.weight_decay),
        )
    else:
        optimizer = torch.optim.AdamW(
            params,
            lr=base_lr,
            betas=tuple(optim_cfg.betas),
            weight_decay=float(optim_cfg.weight_decay),
        )
    return optimizer, base_lr


def build_model(cfg: DictConfig, data: TrainingData, device: torch.device) -> nn.Module:
    """Loss (by name, with class weights and rates when it needs them) + detector."""
    from lsdet.losses import LOSSES, loss_from_config

    num_classes = data.num_classes + 1
    loss_name = cfg.loss.name
    if loss_name not in LOSSES:
        raise ValueError(f"loss.name={loss_name!r}; registered losses: {sorted(LOSSES)}")
    loss_takes_rates = "rates" in inspect.signature(LOSSES[loss_name].__init__).parameters
    needs_rates = loss_takes_rates or cfg.model.scoring == "concurrent_softmax"
    rates = concurrent_rates(cfg.data, cfg.rates, data.hierarchy) if needs_rates else None
    ancestors = torch.as_tensor(data.hierarchy.ancestors, dtype=torch.bool)
    loss_fn = loss_from_config(
        OmegaConf.to_container(cfg.loss, resolve=True),
        num_classes=num_classes,
        image_counts=data.image_counts,
        box_counts=data.box_counts,
        rates=rates,
        ancestors=ancestors,
    )
    model = build_detector(
        cfg.model,
        num_classes=num_classes,
        loss_fn=loss_fn,
        loss_name=loss_name,
        rates=rates,
        descendants=ancestors.T.contiguous(),
    )
    return model.to(device)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        from lsdet.sampling.schedule import Schedule

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        check_train_config(cfg.train)
        self.device = resolve_device(cfg.train.device)
        self.dist: DistInfo = init_distributed(cfg.train.dist_backend, self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp = bool(cfg.train.amp) and self.device.type == "cuda"
        self.seed = int(cfg.seed)
        ckpt.seed_everything(self.seed + self.dist.rank)
        self.previous_threads = torch.get_num_threads()
        if cfg.train.threads:
            torch.set_num_threads(int(cfg.train.threads))

        if cfg.model.backbone.norm == "sync_bn" and self.device.type != "cuda":
            # SyncBatchNorm synchronises over NCCL only; on CPU it is plain batch norm.
            log.warning("model.backbone.norm=sync_bn needs CUDA: using bn on %s", self.device)
            cfg.model.backbone.norm = "bn"
        self.schedule = Schedule.from_config(cfg.schedule)
        # Rank 0 generates the synthetic data / builds the index caches; the others wait.
        if not self.dist.is_main:
            barrier(self.dist)
        self.data = build_training_data(cfg.data, hflip_prob=float(cfg.train.hflip_prob))
        if self.dist.is_main:
            barrier(self.dist)
        self.model = build_model(cfg, self.data, self.device)
        if self.dist.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(cfg.train.find_unused_parameters),
            )
        self.batch_size = int(cfg.train.batch_size)
        self.total_batch_size = self.batch_size * self.dist.world_size
        self.guard = NonFiniteGuard(int(cfg.train.max_nonfinite))
        self.position = Position()
        self.stop = StopRequested()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.optimizer = None
        self.base_lr = 0.0
        self.sampler = None
        self.resume_state: dict[str, Any] | None = None
        self.logger: RunLogger | None = None
        self.loss_ema: dict[str, float] = {}
        self.current_iters = 0  # iterations of the epoch in progress

    # ----------------------------------------------------------------- set-up per phase
    def start_phase(self, phase_index: int) -> None:
        from lsdet.sampling import build_sampler

        phase = self.schedule.phases[phase_index]
        self.sampler = build_sampler(
            phase.sampler,
            class_offsets=self.data.class_offsets,
            class_images=self.data.class_images,
            num_images=self.data.num_train_images,
            seed=self.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.optimizer, self.base_lr = build_optimizer(
            self.cfg.optim, self.model, self.total_batch_size
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def iters_per_epoch(self) -> int:
        n = math.ceil(len(self.sampler) / self.batch_size)
        cap = self.cfg.train.max_iters_per_epoch
        return min(n, int(cap)) if cap else n

    def global_epoch(self) -> int:
        """Epochs of earlier phases + this phase's epoch: seeds the sampler's stream."""
        done = sum(p.epochs for p in self.schedule.phases[: self.position.phase])
        return done + self.position.epoch

    # ----------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        rng_states = gather_objects(ckpt.rng_state(), self.dist)
        sampler_state = self.sampler.state_dict()
        sampler_state["epoch"] = self.global_epoch()
        # consumed by finished steps (the last batch of an epoch may be short)
        consumed = self.position.iteration * self.batch_size
        sampler_state["num_yielded"] = min(consumed, len(self.sampler))
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "sampler": sampler_state,
            "position": {
                "phase": self.position.phase,
                "epoch": self.position.epoch,
                "iteration": self.position.iteration,
                "global_step": self.position.global_step,
                "history": self.position.history,
            },
            "phase_name": self.schedule.phases[self.position.phase].name,
            "rng": rng_states,
            "nonfinite_count": self.guard.count,
            "wandb_run_id": self.logger.run_id if self.logger else None,
            "world_size": self.dist.world_size,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save_checkpoint(self, name: str = ckpt.LAST_CHECKPOINT) -> None:
        state = self.checkpoint_state()  # collective (RNG states of all ranks)
        if self.dist.is_main:
            ckpt.save_atomic(state, self.checkpoint_dir / name)
        barrier(self.dist)

    def load_resume_state(self) -> None:
        path = self.checkpoint_dir / ckpt.LAST_CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(
                f"train.resume=true but there is no checkpoint at {path}; "
                "run without train.resume (or with the run's hydra.run.dir)"
            )
        state = ckpt.load_checkpoint(path)
        if state["world_size"] != self.dist.world_size:
            raise ValueError(
                f"checkpoint {path} was written by {state['world_size']} processes, this run "
                f"has {self.dist.world_size}: the sampler shards would not continue"
            )
        changed = config_differences(
            state["config"], OmegaConf.to_container(self.cfg, resolve=True)
        )
        if changed:
            raise ValueError(
                f"train.resume=true: the config differs from the checkpoint {path} in "
                f"{changed}; resume with the run's settings (or start a new run name)"
            )
        unwrap(self.model).load_state_dict(state["model"])
        pos = state["position"]
        self.position = Position(
            phase=pos["phase"],
            epoch=pos["epoch"],
            iteration=pos["iteration"],
            global_step=pos["global_step"],
            history=list(pos["history"]),
        )
        self.guard.count = int(state["nonfinite_count"])
        self.resume_state = state

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train the whole schedule (or until a stop); returns the run summary."""
        self.stop.install()
        try:
            return self._fit()
        finally:
            self.stop.restore()
            torch.set_num_threads(self.previous_threads)
            if self.logger:
                self.logger.finish()
            cleanup(self.dist)

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        start = time.perf_counter()
        if cfg.train.resume:
            self.load_resume_state()
        run_id = self.resume_state["wandb_run_id"] if self.resume_state else None
        self.logger = RunLogger(
            mode=cfg.logger.mode,
            project=cfg.logger.project,
            run_dir=self.run_dir,
            name=cfg.name,
            config=OmegaConf.to_container(cfg, resolve=True),
            run_id=run_id,
            enabled=self.dist.is_main,
            tags=list(cfg.logger.tags),
        )
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

        status = "finished"  # or "stopped" (train.stop_after_iters) / "interrupted" (a signal)
        while self.position.phase < len(self.schedule.phases):
            self.start_phase(self.position.phase)
            if self.resume_state is not None:
                self.optimizer.load_state_dict(self.resume_state["optimizer"])
                self.scaler.load_state_dict(self.resume_state["grad_scaler"])
                self.sampler.load_state_dict(self.resume_state["sampler"])
                ckpt.set_rng_state(self.resume_state["rng"][self.dist.rank])
                self.resume_state = None
            phase = self.schedule.phases[self.position.phase]
            while self.position.epoch < phase.epochs:
                if not self.train_one_epoch():
                    status = "interrupted" if self.stop.flag else "stopped"
                    break
                self.end_of_epoch(phase)
            if status != "finished":
                break
            self.position.phase += 1
            self.position.epoch = 0
        summary = {
            "status": status,
            "global_step": self.position.global_step,
            "nonfinite_steps": self.guard.count,
            "seconds": round(time.perf_counter() - start, 1),  # this process's wall time
            "history": self.position.history,
            "run_dir": str(self.run_dir),
        }
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        self.write_progress(status)
        return summary

    def train_one_epoch(self) -> bool:
        """Trains the rest of the current epoch; False when a stop was requested."""
        cfg = self.cfg
        phase = self.schedule.phases[self.position.phase]
        self.sampler.set_epoch(self.global_epoch())
        if self.position.iteration == 0:
            self.log_sampler_histogram()
        iters = self.iters_per_epoch()
        self.current_iters = iters
        loader = make_loader(
            SeededDataset(self.data.train_set),
            SeededSampler(
                self.sampler,
                seed=self.seed,
                rank=self.dist.rank,
                epoch=self.global_epoch(),
                start=self.position.iteration * self.batch_size,
            ),
            batch_size=self.batch_size,
            num_workers=int(cfg.train.num_workers),
            collate_fn=self.data.collate_fn,
            seed=self.seed * 100_003 + self.global_epoch(),
        )
        model = self.model
        model.train()
        bar = tqdm(
            total=iters,
            initial=self.position.iteration,
            desc=f"{phase.name} epoch {self.position.epoch + 1}/{phase.epochs}",
            disable=not (self.dist.is_main and cfg.train.progress),
            unit="it",
            dynamic_ncols=True,
        )
        stop_after = cfg.train.stop_after_iters
        start = time.perf_counter()
        images_seen = 0
        data_iter = iter(loader) if self.position.iteration < iters else None
        while self.position.iteration < iters:
            images, targets = next(data_iter)
            lr = self.schedule.lr_at(
                self.position.phase,
                self.position.epoch * iters + self.position.iteration,
                base_lr=self.base_lr,
                iters_per_epoch=iters,
            )
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses = self.train_step(images, targets)
            self.position.iteration += 1
            self.position.global_step += 1
            images_seen += len(images) * self.dist.world_size
            bar.update(1)
            if losses is not None:
                self.update_loss_ema(losses)
                bar.set_postfix(
                    loss=f"{self.loss_ema['loss']:.3f}",
                    lr=f"{lr:.2e}",
                    img_s=f"{images_seen / (time.perf_counter() - start):.1f}",
                )
            step = self.position.global_step
            if step % int(cfg.train.log_every) == 0 or self.position.iteration == iters:
                self.write_progress("training", iters, images_seen / (time.perf_counter() - start))
            if self.dist.is_main and step % int(cfg.train.log_every) == 0 and self.loss_ema:
                self.logger.log(
                    {
                        **{f"train/{k}": v for k, v in self.loss_ema.items()},
                        "train/lr": lr,
                        "train/images_per_s": images_seen / (time.perf_counter() - start),
                        "train/nonfinite_steps": self.guard.count,
                        "train/phase": self.position.phase,
                    },
                    step=step,
                )
            stop_now = all_reduce_flag(
                self.stop.flag or (stop_after is not None and step >= int(stop_after)), self.dist
            )
            every = int(cfg.train.checkpoint_every or 0)
            if stop_now or (every and step % every == 0):
                self.save_checkpoint()
            if stop_now:
                bar.close()
                return False
        bar.close()
        return True

    def train_step(self, images, targets) -> dict[str, float] | None:
        """One optimizer step; None when the loss was not finite (step skipped)."""
        device = self.device
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [
            {
                k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
                for k, v in t.items()
            }
            for t in targets
        ]
        with torch.autocast(device.type, enabled=self.amp):
            loss_dict = self.model(images, targets)
        loss = sum(loss_dict.values())
        finite = not all_reduce_flag(not bool(torch.isfinite(loss)), self.dist)
        where = (
            f"phase {self.position.phase} epoch {self.position.epoch} it {self.position.iteration}"
        )
        self.optimizer.zero_grad(set_to_none=True)
        if not self.guard.step_ok(finite, where):
            return None
        self.scaler.scale(loss).backward()
        clip = self.cfg.optim.clip_grad_norm
        if clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        out = {k: float(v.detach()) for k, v in loss_dict.items()}
        out["loss"] = float(loss.detach())
        return out

    def update_loss_ema(self, losses: dict[str, float], decay: float = 0.9) -> None:
        for key, value in losses.items():
            prev = self.loss_ema.get(key)
            self.loss_ema[key] = value if prev is None else decay * prev + (1 - decay) * value

    def write_progress(self, status: str, iters: int = 0, images_per_s: float = 0.0) -> None:
        """<run_dir>/progress.json (atomically): where the run stands, for a watcher such as
        the demo driver. ``fraction`` = epochs done (with the current one's share) / total."""
        if not self.dist.is_main:
            return
        iters = iters or self.current_iters
        done = self.global_epoch() + (self.position.iteration / iters if iters else 0.0)
        state = {
            "status": status,
            "phase": self.schedule.phases[
                min(self.position.phase, len(self.schedule.phases) - 1)
            ].name,
            "global_step": self.position.global_step,
            "fraction": min(done / self.schedule.total_epochs, 1.0),
            "images_per_s": round(images_per_s, 2),
        }
        path = self.run_dir / "progress.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    # ----------------------------------------------------------------- epoch ends
    def end_of_epoch(self, phase) -> None:
        self.position.epoch += 1
        self.position.iteration = 0
        when = self.cfg.train.eval_every
        last_of_phase = self.position.epoch == phase.epochs
        record = {
            "phase": phase.name,
            "epoch": self.position.epoch,
            "global_step": self.position.global_step,
        }
        if when == "epoch" or (when == "phase" and last_of_phase):
            self.write_progress("evaluating")
            record.update(self.evaluate(tag=f"{phase.name}_epoch{self.position.epoch}"))
        self.position.history.append(record)
        self.save_checkpoint()
        if last_of_phase and self.dist.is_main:
            ckpt.save_atomic(
                {
                    "model": unwrap(self.model).state_dict(),
                    "config": OmegaConf.to_container(self.cfg, resolve=True),
                    "phase_name": phase.name,
                },
                self.checkpoint_dir / f"phase_{phase.name}.pt",
            )
        barrier(self.dist)

    def evaluate(self, tag: str) -> dict[str, Any]:
        """OID-metric evaluation of the validation split (sharded over ranks)."""
        cfg = self.cfg
        n = len(self.data.val_set)
        if cfg.train.eval_max_images:
            n = min(n, int(cfg.train.eval_max_images))
        loader = make_loader(
            self.data.val_set,
            ShardedSequence(n, self.dist.rank, self.dist.world_size),
            batch_size=int(cfg.train.eval_batch_size),
            num_workers=int(cfg.train.num_workers),
            collate_fn=self.data.collate_fn,
        )
        start = time.perf_counter()
        detections = predict(
            unwrap(self.model),
            loader,
            self.device,
            amp=self.amp,
            progress=self.dist.is_main and bool(cfg.train.progress),
            desc=f"eval {tag}",
        )
        detections = gather_detections(detections, self.dist)
        metrics: dict[str, Any] = {}
        if self.dist.is_main:
            result = evaluate_detections(self.data.val_gt, detections)
            metrics = self.record_evaluation(result, tag, time.perf_counter() - start)
        return broadcast_object(metrics, self.dist)

    def record_evaluation(self, result: Any, tag: str, seconds: float) -> dict[str, Any]:
        """Writes the evaluator's files (metrics.json, per_class.csv, frequency_buckets.csv,
        ap_vs_frequency.png) under <run_dir>/eval/<tag>/ and logs them."""
        from lsdet.evaluate import bucket_summary, per_class_table, write_evaluation_outputs

        names = dict(zip(self.data.hierarchy.mids, self.data.class_names, strict=True))
        counts = self.data.expanded_image_counts
        paths = write_evaluation_outputs(
            result,
            self.run_dir / "eval" / tag,
            names=names,
            train_image_counts=counts,
            extra={"run": self.cfg.name, "tag": tag, "eval_seconds": round(seconds, 2)},
        )
        table = per_class_table(result, names=names, train_image_counts=counts)
        buckets = {row["bucket"]: row["mean_ap"] for _, row in bucket_summary(table).iterrows()}
        metrics = {"map": result.map, **{f"map_{k}": v for k, v in buckets.items()}}
        metrics["eval_seconds"] = round(seconds, 2)
        metrics["eval_dir"] = str(Path("eval") / tag)  # relative to the run folder
        step = self.position.global_step
        self.logger.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
        columns = ["mid", "name", "train_images", "bucket", "ap"]
        self.logger.log_table("val/per_class_ap", columns, table[columns].values.tolist(), step)
        if "plot" in paths:
            self.logger.log_image("val/ap_vs_frequency", paths["plot"], step)
        tqdm.write(
            f"[{tag}] mAP {result.map:.4f} | "
            + " | ".join(f"{k} {v:.4f}" for k, v in buckets.items())
        )
        return metrics

    def log_sampler_histogram(self) -> None:
        """Per-class image draws of this epoch's global stream (plot + wandb)."""
        if not self.dist.is_main:
            return
        stream = self.sampler.global_stream(self.global_epoch())
        counts = sampled_class_counts(
            stream, self.data.class_offsets, self.data.class_images, self.data.num_train_images
        )
        phase = self.schedule.phases[self.position.phase]
        path = plot_sampler_histogram(
            counts,
            self.data.image_counts,
            self.run_dir / "sampler" / f"{phase.name}_epoch{self.position.epoch + 1}.png",
            title=f"{phase.name}: sampler {phase.sampler.get('name')} draws per class",
        )
        self.logger.log_image("train/sampler_class_histogram", path, self.position.global_step)
        self.logger.log(
            {"train/sampler_draws_per_class": self.logger_histogram(counts)},
            self.position.global_step,
        )

    def logger_histogram(self, counts: np.ndarray) -> Any:
        if not self.logger.active:
            return None
        import wandb

        return wandb.Histogram(np_histogram=np.histogram(counts, bins=min(64, len(counts))))


def run_training(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train as the config says; the run's files go to ``run_dir``."""
    return Trainer(cfg, run_dir).fit()
