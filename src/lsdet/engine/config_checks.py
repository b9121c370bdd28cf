"""Numeric training settings checked before anything is built, each error naming the full key,
the value as typed and the allowed range (``optim.lr=-0.01: expected a number > 0``), never a
message from deep inside torch(vision) or a value the user never typed.

The ranges are tables (``NUMERIC_SETTINGS`` by full key; ``SAMPLER_SETTINGS``,
``PHASE_SETTINGS`` and ``LOSS_SETTINGS`` under a prefix that depends on the config): every
threshold, IoU, fraction and count of conf/ is listed once, with the reason for its bounds where
they are not obvious.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lsdet.engine.run_folder import parse_resume
from lsdet.losses.scoring import PARENT_SCORES

EVAL_WHEN = ("epoch", "phase", "never")


@dataclass(frozen=True)
class Range:
    """Allowed values of one setting: a finite ``kind`` (int or float) between ``low`` and
    ``high``, each bound itself allowed or not; ``nullable``: null is allowed too."""

    kind: type
    low: float = -math.inf
    high: float = math.inf
    low_ok: bool = True
    high_ok: bool = True
    nullable: bool = False


def _int(low: float = -math.inf, high: float = math.inf, *, nullable: bool = False) -> Range:
    return Range(int, low, high, nullable=nullable)


def _float(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_ok: bool = True,
    high_ok: bool = True,
    nullable: bool = False,
) -> Range:
    return Range(float, low, high, low_ok, high_ok, nullable)


# An IoU, a probability or a fraction: [0, 1].
UNIT = _float(0.0, 1.0)

NUMERIC_SETTINGS: dict[str, Range] = {
    # numpy's legacy seeding takes [0, 2^32); rank r of a DDP run uses seed + r.
    "seed": _int(0, 2**32 - 1),
    "train.batch_size": _int(1),
    "train.eval_batch_size": _int(1),
    "train.num_workers": _int(0),
    "train.max_nonfinite": _int(0),
    "train.max_consecutive_nonfinite": _int(0),
    # A loss above factor x its running mean is flagged: a factor <= 1 flags an ordinary loss.
    "train.divergence.factor": _float(1.0, low_ok=False),
    "train.divergence.steps": _int(0),
    "train.log_every": _int(1),
    "train.checkpoint_every": _int(0),
    "train.hflip_prob": UNIT,
    "train.threads": _int(1, nullable=True),
    "train.max_iters_per_epoch": _int(1, nullable=True),
    "train.stop_after_iters": _int(1, nullable=True),
    "train.eval_max_images": _int(1, nullable=True),
    "optim.lr": _float(0.0, low_ok=False, nullable=True),
    "optim.lr_per_image": _float(0.0, low_ok=False, nullable=True),
    "optim.optimizer.weight_decay": _float(0.0),
    "optim.optimizer.momentum": _float(0.0, 1.0, nullable=True),
    "optim.clip_grad_norm": _float(0.0, low_ok=False, nullable=True),
    "model.min_size": _int(1),
    "model.max_size": _int(1),
    "model.fpn_channels": _int(1),
    "model.anchor_scale": _float(0.0, low_ok=False, nullable=True),
    # The sigmoid losses' classifier bias is -log((1 - p) / p): finite only inside (0, 1).
    "model.prior_prob": _float(0.0, 1.0, low_ok=False, high_ok=False),
    "model.rpn.pre_nms_top_n_train": _int(1),
    "model.rpn.post_nms_top_n_train": _int(1),
    "model.rpn.pre_nms_top_n_test": _int(1),
    "model.rpn.post_nms_top_n_test": _int(1),
    "model.rpn.nms_thresh": UNIT,
    "model.rpn.batch_size_per_image": _int(1),
    "model.roi.output_size": _int(1),
    "model.roi.representation_size": _int(1),
    "model.roi.batch_size_per_image": _int(1),
    # A share of the sampled RoIs; 0 would train the classifier on background only.
    "model.roi.positive_fraction": _float(0.0, 1.0, low_ok=False),
    "model.roi.fg_iou_thresh": UNIT,
    "model.roi.bg_iou_thresh": UNIT,
    # A detection is kept when its score is > score_thresh, and scores are <= 1: from 1 on
    # no detection is possible.
    "model.roi.score_thresh": _float(0.0, 1.0, high_ok=False),
    "model.roi.nms_thresh": UNIT,
    "model.roi.detections_per_img": _int(1),
    # Two boxes "coincide" at IoU >= iou_threshold; 0 would make every pair of an image coincide.
    "rates.iou_threshold": _float(0.0, 1.0, low_ok=False),
    "rates.floor": UNIT,
    "rates.hierarchy_rate": UNIT,
    "rates.prior_count": _float(0.0),
    "loss.weight_lam": _float(0.0),
    # Effective number (1 - beta) / (1 - beta^n): beta = 1 divides by zero.
    "loss.beta": _float(0.0, 1.0, high_ok=False),
}

# A sampler's settings, under ``sampler.`` and under ``schedule.phases.<phase>.sampler.``.
SAMPLER_SETTINGS: dict[str, Range] = {
    "lam": _float(0.0),  # 0 = image-count distribution, 1 = class-aware, > 1 favours rare ones
    "num_samples": _int(1, nullable=True),
    # A fraction of the training images (detectron2's REPEAT_THRESHOLD).
    "repeat_threshold": _float(0.0, 1.0, low_ok=False),
}

# A phase's settings, under ``schedule.phases.<phase>.`` (lsdet.sampling.schedule.LrPlan);
# the milestones are checked as a list below.
PHASE_SETTINGS: dict[str, Range] = {
    "epochs": _int(1),
    "lr.scale": _float(0.0, low_ok=False),
    "lr.warmup_iters": _int(0),
    "lr.warmup_factor": _float(0.0, 1.0, low_ok=False),
    "lr.gamma": _float(0.0, 1.0, low_ok=False),
}

# The settings of one loss (``loss.name``), under ``loss.``; the same key may mean another
# thing in another loss (focal's alpha weighs positives, eqlv2's scales them).
LOSS_SETTINGS: dict[str, dict[str, Range]] = {
    # A negative alpha turns focal's positive weighting off (as torchvision's sigmoid_focal_loss).
    "focal": {"gamma": _float(0.0), "alpha": _float(high=1.0)},
    "co_bce": {"cooccur_threshold": _float(0.0, 1.0, nullable=True)},
    "eqlv2": {"gamma": _float(0.0), "mu": _float(0.0), "alpha": _float(0.0)},
    "federated": {"num_classes_per_batch": _int(1), "power": _float(0.0)},
    "seesaw": {
        "p": _float(0.0),
        "q": _float(0.0),
        "temperature": _float(0.0, low_ok=False),
        "eps": _float(0.0, 1.0, low_ok=False),
    },
}


def _lookup(cfg: Any, dotted: str) -> tuple[bool, Any]:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, (dict, DictConfig)) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _as_typed(value: Any) -> Any:
    """The value as the user wrote it (a list, not a ListConfig)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _range_text(kind: type, low: float, high: float, low_ok: bool, high_ok: bool) -> str:
    noun = "an integer" if kind is int else "a number"
    bounds = []
    if low != -math.inf:
        bounds.append(f">= {_bound(low)}" if low_ok else f"> {_bound(low)}")
    if high != math.inf:
        bounds.append(f"<= {_bound(high)}" if high_ok else f"< {_bound(high)}")
    return " ".join([noun, " and ".join(bounds)]) if bounds else noun


def _in_range(value: Any, kind: type, low: float, high: float, low_ok: bool, high_ok: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value) or (kind is int and float(value) != int(value)):
        return False
    above = value >= low if low_ok else value > low
    below = value <= high if high_ok else value < high
    return above and below


def check_number(
    key: str,
    value: Any,
    kind: type,
    low: float,
    high: float,
    low_ok: bool,
    high_ok: bool = True,
) -> None:
    """ValueError naming ``key`` unless ``value`` is a finite ``kind`` within the bounds."""
    if not _in_range(value, kind, low, high, low_ok, high_ok):
        expected = _range_text(kind, low, high, low_ok, high_ok)
        raise ValueError(f"{key}={_as_typed(value)!r}: expected {expected}")


def check_setting(key: str, value: Any, allowed: Range) -> None:
    """ValueError naming ``key`` and ``allowed`` unless ``value`` fits it."""
    if value is None and allowed.nullable:
        return
    check_number(
        key, value, allowed.kind, allowed.low, allowed.high, allowed.low_ok, allowed.high_ok
    )


def _check_table(cfg: Any, prefix: str, table: dict[str, Range]) -> None:
    for key, allowed in table.items():
        present, value = _lookup(cfg, key)
        if present:
            check_setting(prefix + key, value, allowed)


def _check_schedule(cfg: Any) -> None:
    """Each phase's epochs, lr plan and (an inline) sampler; the order of the milestones and
    the phases' structure are checked by ``Schedule.from_config``."""
    phases = cfg.get("schedule", {}).get("phases")
    if not isinstance(phases, DictConfig):
        return
    for name, phase in phases.items():
        where = f"schedule.phases.{name}."
        if not isinstance(phase, DictConfig):
            continue
        _check_table(phase, where, PHASE_SETTINGS)
        present, milestones = _lookup(phase, "lr.milestones")
        if present and milestones is not None:
            ok = isinstance(milestones, ListConfig) and all(
                _in_range(m, float, 0.0, math.inf, False, True) for m in milestones
            )
            if not ok:
                raise ValueError(
                    f"{where}lr.milestones={_as_typed(milestones)!r}: expected a list of "
                    "numbers > 0 (epochs of the phase after which the lr is multiplied by gamma)"
                )
        sampler = phase.get("sampler")
        if isinstance(sampler, DictConfig):
            _check_table(sampler, where + "sampler.", SAMPLER_SETTINGS)


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
            f"train.eval_epochs={_as_typed(epochs)!r}: expected null or a non-empty list of "
            f"distinct epochs from 1 to {total} (the schedule's epochs, counted over its phases)"
        )
    if cfg.train.get("eval_every") != "epoch":
        raise ValueError(
            f"train.eval_epochs={_as_typed(epochs)!r} needs train.eval_every=epoch "
            f"(it is {cfg.train.get('eval_every')!r}): the listed epochs are the ones evaluated"
        )


def check_training_config(cfg: Any) -> None:
    """Check every numeric setting of the tables above and the enumerated ones."""
    _check_table(cfg, "", NUMERIC_SETTINGS)
    roi = cfg.get("model", {}).get("roi") or {}
    fg, bg = roi.get("fg_iou_thresh"), roi.get("bg_iou_thresh")
    if fg is not None and bg is not None and bg > fg:
        # torchvision's Matcher: IoU < bg is background, >= fg foreground, between ignored.
        raise ValueError(
            f"model.roi.bg_iou_thresh={bg!r} is above model.roi.fg_iou_thresh={fg!r}: expected "
            "bg_iou_thresh <= fg_iou_thresh (RoIs with an IoU between them are ignored)"
        )
    if isinstance(cfg.get("sampler"), DictConfig):
        _check_table(cfg.sampler, "sampler.", SAMPLER_SETTINGS)
    loss = cfg.get("loss")
    if isinstance(loss, DictConfig):
        _check_table(loss, "loss.", LOSS_SETTINGS.get(loss.get("name"), {}))
    _check_schedule(cfg)
    optim = cfg.get("optim") or {}
    if "lr" in optim and optim.get("lr") is None and optim.get("lr_per_image") is None:
        raise ValueError("optim.lr=null needs optim.lr_per_image (the lr per image of a batch)")
    parent_scores = (cfg.get("model") or {}).get("parent_scores")
    if parent_scores is not None and parent_scores not in PARENT_SCORES:
        raise ValueError(
            f"model.parent_scores={parent_scores!r}: expected one of {PARENT_SCORES} (its "
            "default is the loss's parent_scores, conf/loss/<loss>.yaml)"
        )
    when = cfg.train.get("eval_every")
    if when not in EVAL_WHEN:
        raise ValueError(f"train.eval_every={when!r}; expected one of {EVAL_WHEN}")
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
