"""Numeric training settings checked before anything is built, each error naming the key and
the value as typed (``optim.lr=-0.01: expected a number > 0``), never a message from deep
inside torch or a value the user never typed."""

from __future__ import annotations

import math
from typing import Any

from lsdet.engine.run_folder import parse_resume

EVAL_WHEN = ("epoch", "phase", "never")

# key -> (kind, lowest, highest, lowest allowed itself?, null allowed?)
NUMERIC_SETTINGS: dict[str, tuple[type, float, float, bool, bool]] = {
    "train.batch_size": (int, 1, math.inf, True, False),
    "train.eval_batch_size": (int, 1, math.inf, True, False),
    "train.num_workers": (int, 0, math.inf, True, False),
    "train.max_nonfinite": (int, 0, math.inf, True, False),
    "train.log_every": (int, 1, math.inf, True, False),
    "train.checkpoint_every": (int, 0, math.inf, True, False),
    "train.hflip_prob": (float, 0.0, 1.0, True, False),
    "train.threads": (int, 1, math.inf, True, True),
    "train.max_iters_per_epoch": (int, 1, math.inf, True, True),
    "train.stop_after_iters": (int, 1, math.inf, True, True),
    "train.eval_max_images": (int, 1, math.inf, True, True),
    "optim.lr": (float, 0.0, math.inf, False, True),
    "optim.lr_per_image": (float, 0.0, math.inf, False, True),
    "optim.optimizer.weight_decay": (float, 0.0, math.inf, True, False),
    "optim.optimizer.momentum": (float, 0.0, 1.0, True, True),
    "optim.clip_grad_norm": (float, 0.0, math.inf, False, True),
}


def _lookup(cfg: Any, dotted: str) -> tuple[bool, Any]:
    node = cfg
    for part in dotted.split("."):
        if node is None or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_number(key: str, value: Any, kind: type, low: float, high: float, low_ok: bool) -> None:
    """ValueError naming ``key`` unless ``value`` is a finite ``kind`` within the bounds."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and kind is int:
        ok = float(value) == int(value)
    if ok:
        ok = (value >= low if low_ok else value > low) and value <= high
    if not ok:
        noun = "an integer" if kind is int else "a number"
        low_text = f">= {low:g}" if low_ok else f"> {low:g}"
        bound = low_text if high == math.inf else f"{low_text} and <= {high:g}"
        raise ValueError(f"{key}={value!r}: expected {noun} {bound}")


def check_training_config(cfg: Any) -> None:
    """Check every numeric ``train.*`` / ``optim.*`` setting and the enumerated ones."""
    for key, (kind, low, high, low_ok, nullable) in NUMERIC_SETTINGS.items():
        present, value = _lookup(cfg, key)
        if not present or (value is None and nullable):
            continue
        check_number(key, value, kind, low, high, low_ok)
    optim = cfg.get("optim") or {}
    if "lr" in optim and optim.get("lr") is None and optim.get("lr_per_image") is None:
        raise ValueError("optim.lr=null needs optim.lr_per_image (the lr per image of a batch)")
    when = cfg.train.get("eval_every")
    if when not in EVAL_WHEN:
        raise ValueError(f"train.eval_every={when!r}; expected one of {EVAL_WHEN}")
    parse_resume(cfg.train.get("resume", False))
