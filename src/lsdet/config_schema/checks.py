"""The checks of a composed training config, run before anything is built: every ranged and
enumerated field of every schema node (``check_config_values``: the allowed values written in
the schemas, ``lsdet.config_schema.settings``) and what a field cannot state (the seed, a root
key; the free-form optimizer arguments; a phase's inline sampler; settings that depend on
others: the IoU thresholds, ``optim.lr=null``, ``train.eval_epochs`` against the schedule,
records against the metric). Each error names the full key, the value and what is allowed
(``optim.lr=-0.01: expected a number > 0``), never a message from deep inside torch(vision).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lsdet.config_schema.sampler import sampler_schema
from lsdet.config_schema.settings import (
    CHOICES,
    RANGE,
    Range,
    as_typed,
    check_fields,
    check_rule,
    check_setting,
    fits,
)
from lsdet.config_schema.settings import integer as _int
from lsdet.config_schema.settings import number as _float
from lsdet.engine.run_folder import parse_resume


def schema_rules(cfg: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any, Mapping]]:
    """(full key, value, field metadata) of every field of every schema node of ``cfg`` (a
    composed config) that has a range or choices, depth first in the config's order. An
    interpolated node (``sampler: ${sampler}``) is visited where it is defined. A key that a
    schema node's dataclass lacks (added by Hydra's ``+key=value``) is a ValueError naming it."""
    schema = OmegaConf.get_type(cfg)
    rules = {}
    if dataclasses.is_dataclass(schema):
        rules = {f.name: f.metadata for f in dataclasses.fields(schema)}
        # Hydra's `+key=value` adds a key even to a schema node; nothing would read it.
        unknown = [key for key in cfg if key not in rules]
        if unknown:
            raise ValueError(
                f"{prefix}{unknown[0]}: not a setting of {prefix.rstrip('.') or 'the config'} "
                f"({schema.__module__}.{schema.__qualname__}: {', '.join(rules)})"
            )
    for key in cfg:
        full_key = f"{prefix}{key}"
        value = cfg[key]
        rule = rules.get(key, {})
        if RANGE in rule or CHOICES in rule:
            yield full_key, value, rule
        if isinstance(value, DictConfig) and not OmegaConf.is_interpolation(cfg, key):
            yield from schema_rules(value, f"{full_key}.")


def check_config_values(cfg: DictConfig) -> None:
    """Check the value of every ranged and enumerated field of every schema node of ``cfg``
    (a composed config); the first that does not fit raises a ValueError naming its full key."""
    for full_key, value, rule in schema_rules(cfg):
        check_rule(full_key, value, rule)


NUMERIC_SETTINGS: dict[str, Range] = {
    # numpy's legacy seeding takes [0, 2^32); rank r of a DDP run uses seed + r.
    "seed": _int(0, 2**32 - 1),
    # optim.optimizer is a free mapping (its class's keyword arguments, for
    # hydra.utils.instantiate: lsdet.config_schema.optim), so the ranges of the two keys that
    # conf/optim/*.yaml set are checked here, when the class has them.
    "optim.optimizer.weight_decay": _float(0.0),
    "optim.optimizer.momentum": _float(0.0, 1.0, nullable=True),
}


def _lookup(cfg: Any, dotted: str) -> tuple[bool, Any]:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, (dict, DictConfig)) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_table(cfg: Any, prefix: str, table: dict[str, Range]) -> None:
    for key, allowed in table.items():
        present, value = _lookup(cfg, key)
        if present:
            check_setting(prefix + key, value, allowed)


def _check_schedule(cfg: Any) -> None:
    """What the schedule's schema (lsdet.config_schema.schedule) cannot state: each phase's
    milestones > 0, and the ranges of a phase's inline sampler (``{name: sequential}``, not a
    schema node: checked with the schema of the sampler it names). The milestones' order and
    the phases' structure are checked by ``Schedule.from_config``."""
    phases = cfg.get("schedule", {}).get("phases")
    if not isinstance(phases, DictConfig):
        return
    for name, phase in phases.items():
        where = f"schedule.phases.{name}."
        if not isinstance(phase, DictConfig):
            continue
        milestones = phase.get("lr", {}).get("milestones")
        if milestones is not None and not all(
            fits(m, _float(0.0, low_ok=False)) for m in milestones
        ):
            raise ValueError(
                f"{where}lr.milestones={as_typed(milestones)!r}: expected a list of "
                "numbers > 0 (epochs of the phase after which the lr is multiplied by gamma)"
            )
        sampler = phase.get("sampler")
        schema = sampler_schema(sampler.get("name")) if isinstance(sampler, DictConfig) else None
        if schema is not None and not OmegaConf.is_interpolation(phase, "sampler"):
            check_fields(sampler, schema, where + "sampler.")


def _check_eval_epochs(cfg: Any) -> None:
    """``train.eval_epochs``: null, or distinct epochs numbered over the whole schedule (1 to
    the sum of the phases' epochs), with ``train.eval_every=epoch``."""
    epochs = cfg.train.get("eval_epochs")
    if epochs is None:
        return
    phases = cfg.get("schedule", {}).get("phases") or {}
    total = sum(int(p.get("epochs", 0)) for p in phases.values() if isinstance(p, DictConfig))
    ok = (
        isinstance(epochs, ListConfig)
        and len(epochs) > 0
        and all(isinstance(e, int) and not isinstance(e, bool) and 1 <= e <= total for e in epochs)
        and len(set(epochs)) == len(epochs)
    )
    if not ok:
        raise ValueError(
            f"train.eval_epochs={as_typed(epochs)!r}: expected null or a non-empty list of "
            f"distinct epochs from 1 to {total} (the schedule's epochs, counted over its phases)"
        )
    if cfg.train.get("eval_every") != "epoch":
        raise ValueError(
            f"train.eval_epochs={as_typed(epochs)!r} needs train.eval_every=epoch "
            f"(it is {cfg.train.get('eval_every')!r}): the listed epochs are the ones evaluated"
        )


def check_training_config(cfg: Any) -> None:
    """Check every setting: the ranges and choices of the schemas
    (check_config_values), the table above, and the checks that
    need two settings at once."""
    check_config_values(cfg)
    _check_table(cfg, "", NUMERIC_SETTINGS)
    roi = cfg.get("model", {}).get("roi") or {}
    fg, bg = roi.get("fg_iou_thresh"), roi.get("bg_iou_thresh")
    if fg is not None and bg is not None and bg > fg:
        # torchvision's Matcher: IoU < bg is background, >= fg foreground, between ignored.
        raise ValueError(
            f"model.roi.bg_iou_thresh={bg!r} is above model.roi.fg_iou_thresh={fg!r}: expected "
            "bg_iou_thresh <= fg_iou_thresh (RoIs with an IoU between them are ignored)"
        )
    _check_schedule(cfg)
    optim = cfg.get("optim") or {}
    if "lr" in optim and optim.get("lr") is None and optim.get("lr_per_image") is None:
        raise ValueError("optim.lr=null needs optim.lr_per_image (the lr per image of a batch)")
    _check_eval_epochs(cfg)
    records = cfg.train.get("eval_image_records", False)
    if not isinstance(records, bool):
        raise ValueError(f"train.eval_image_records={records!r}: expected true or false")
    metric = (cfg.get("data") or {}).get("metric") or "oid_challenge"
    if records and metric != "oid_challenge":
        raise ValueError(
            "train.eval_image_records=true: per-image records are kept by the Open Images "
            f"Challenge metric only, not by data.metric={metric!r}"
        )
    parse_resume(cfg.train.get("resume", False))
