"""Whether a run may continue from its checkpoint: the settings it must share with it (and the
few the user may change on purpose, ``train.resume_allow_changes``), the same classes and the
same training data; ``load_resume_state`` reads the newest readable checkpoint and checks it."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lsdet.engine.checkpoint import load_latest_checkpoint, set_aside
from lsdet.engine.distributed import DistInfo, barrier
from lsdet.engine.run_folder import RunFolder
from lsdet.engine.training_data import TrainingData

log = logging.getLogger(__name__)

# Settings that may differ from the checkpoint on resume only when the user lists them in
# ``train.resume_allow_changes`` (e.g. a lower lr after a divergence): the loop reads them at
# every step, so the resumed run uses the new values.
RESUME_MAY_CHANGE_WHEN_ASKED = ("optim.lr", "optim.lr_per_image", "optim.clip_grad_norm")


# Settings a resumed run must share with its checkpoint; the others (evaluation, logging,
# progress, workers) may change on resume.
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
    "train.max_iters_per_epoch",
    "train.hflip_prob",
)
# Data settings that do not change what is trained: where the files are (the training data
# and the class list are compared by content instead, so data staged to another disk
# resumes), the cache, how bad rows are handled (the index records what it skipped), the
# validation split, and whether a benchmark made with other settings may be regenerated
# (the generator settings themselves must match).
RESUME_MAY_CHANGE = (
    "data.root",
    "data.hierarchy_json",
    "data.class_descriptions_csv",
    "data.cache_dir",
    "data.strict",
    "data.regenerate",
    "data.val",
    "data.train",
)


# Settings added after runs were made, with the value that keeps the code's behaviour from
# before them: a checkpoint whose config lacks one was trained with that value, so the key at
# that value in the current config is no change (older runs resume with the newer code).
ADDED_SETTINGS = {
    "loss.positive_targets": "expanded",
    "loss.positive_reduction": "sum",
}


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


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_differences(
    saved: dict, current: dict, keys=RESUME_MUST_MATCH, allowed: tuple[str, ...] = ()
) -> list[str]:
    """Dotted keys under ``keys`` (and not in ``RESUME_MAY_CHANGE`` or ``allowed``) whose
    values differ between two resolved configs; a key of ``ADDED_SETTINGS`` missing from the
    saved config counts as saved at its value there (so it differs only when the current
    config sets it to another value)."""
    a, b = flatten(saved), flatten(current)
    for key, value in ADDED_SETTINGS.items():
        if key not in a and key in b:
            a[key] = value
    may_change = RESUME_MAY_CHANGE + tuple(allowed)
    return sorted(
        k
        for k in set(a) | set(b)
        if _under(k, keys) and not _under(k, may_change) and a.get(k) != b.get(k)
    )


def resume_allowed_changes(cfg: Any) -> tuple[str, ...]:
    """``train.resume_allow_changes``, checked against ``RESUME_MAY_CHANGE_WHEN_ASKED``."""
    listed = cfg.train.get("resume_allow_changes") or []
    if isinstance(listed, str):
        listed = [listed]
    allowed = tuple(str(key) for key in listed)
    for key in allowed:
        if key not in RESUME_MAY_CHANGE_WHEN_ASKED:
            raise ValueError(
                f"train.resume_allow_changes: {key!r} cannot change on resume; the settings "
                f"that can are {list(RESUME_MAY_CHANGE_WHEN_ASKED)}"
            )
    return allowed


def load_resume_state(
    folder: RunFolder, cfg: DictConfig, dist: DistInfo, data: TrainingData
) -> dict[str, Any]:
    """The run folder's newest readable checkpoint, after checking that it can continue with
    this config and this training data (``state["loaded_from"]``: the file read). An unreadable
    ``last.pt`` is set aside (rank 0)."""
    state, path = load_latest_checkpoint(folder.checkpoint_dir)
    barrier(dist)  # every rank has read before rank 0 renames an unreadable last.pt
    last = folder.last_checkpoint
    if dist.is_main and path != last:
        if last.is_file():
            log.warning("%s cannot be read: kept as %s", last, set_aside(last).name)
    if state["world_size"] != dist.world_size:
        raise ValueError(
            f"checkpoint {path} was written by {state['world_size']} processes, this run "
            f"has {dist.world_size}: the sampler shards would not continue"
        )
    allowed = resume_allowed_changes(cfg)
    current = OmegaConf.to_container(cfg, resolve=True)
    changed = config_differences(state["config"], current, allowed=allowed)
    if changed:
        askable = [k for k in changed if k in RESUME_MAY_CHANGE_WHEN_ASKED]
        hint = (
            f" ({askable} may change with train.resume_allow_changes={askable})" if askable else ""
        )
        raise ValueError(
            f"train.resume: the config differs from the checkpoint {path} in {changed}; "
            f"resume with the run's settings (or start a new run name){hint}"
        )
    for key in config_differences(state["config"], current, keys=allowed):
        log.warning(
            "train.resume: %s changes from %r to %r (train.resume_allow_changes)",
            key,
            flatten(state["config"]).get(key),
            flatten(current).get(key),
        )
    if state["class_mids"] != list(data.hierarchy.mids):
        raise ValueError(
            f"train.resume: the classes of data.hierarchy_json / data.class_descriptions_csv "
            f"differ from those the checkpoint {path} was trained on"
        )
    if state["train_data_fingerprint"] != data.train_fingerprint:
        raise ValueError(
            f"train.resume: the training data differs from the data the checkpoint {path} was "
            f"trained on (files {data.train_files}); resume with the same files (a copy at "
            "another data.root is fine) or start a new run name"
        )
    state["loaded_from"] = str(path)
    return state
