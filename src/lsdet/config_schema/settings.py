"""How a schema field says what values it allows.

A field of a schema dataclass carries its allowed values in its metadata: ``ranged(default,
allowed)`` for a number (``Range``: int or float, bounds, null allowed or not), ``one_of(default,
choices)`` for a word from a fixed list. Hydra checks each field's type when it composes the
config; ``lsdet.config_schema.checks.check_config_values`` walks the composed config and checks
every ranged and enumerated field of every schema node it meets with ``check_setting`` and
``check_choice``, each error naming the full key, the value and what is allowed
(``optim.lr=-0.01: expected a number > 0``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

RANGE = "range"
CHOICES = "choices"


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


def integer(low: float = -math.inf, high: float = math.inf, *, nullable: bool = False) -> Range:
    """An integer in [low, high]."""
    return Range(int, low, high, nullable=nullable)


def number(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_ok: bool = True,
    high_ok: bool = True,
    nullable: bool = False,
) -> Range:
    """A finite number between low and high (each bound included unless ``*_ok`` is False)."""
    return Range(float, low, high, low_ok, high_ok, nullable)


# An IoU, a probability or a fraction: [0, 1].
UNIT = number(0.0, 1.0)


def ranged(default: Any, allowed: Range) -> Any:
    """A dataclass field whose value must fit ``allowed`` (checked by check_config_values)."""
    return dataclasses.field(default=default, metadata={RANGE: allowed})


def one_of(default: Any, choices: Sequence[Any]) -> Any:
    """A dataclass field whose value must be one of ``choices`` (checked by
    check_config_values; null only when listed)."""
    return dataclasses.field(default=default, metadata={CHOICES: tuple(choices)})


def as_typed(value: Any) -> Any:
    """The value as the user wrote it (a list, not a ListConfig)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def range_text(allowed: Range) -> str:
    """``an integer >= 1``, ``a number > 0 and <= 1``: what ``allowed`` accepts, in words."""
    noun = "an integer" if allowed.kind is int else "a number"
    bounds = []
    if allowed.low != -math.inf:
        bounds.append(f">= {_bound(allowed.low)}" if allowed.low_ok else f"> {_bound(allowed.low)}")
    if allowed.high != math.inf:
        bounds.append(
            f"<= {_bound(allowed.high)}" if allowed.high_ok else f"< {_bound(allowed.high)}"
        )
    text = " ".join([noun, " and ".join(bounds)]) if bounds else noun
    return text + " (or null)" if allowed.nullable else text


def fits(value: Any, allowed: Range) -> bool:
    """Whether ``value`` is allowed (a bool is not a number)."""
    if value is None:
        return allowed.nullable
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value) or (allowed.kind is int and float(value) != int(value)):
        return False
    above = value >= allowed.low if allowed.low_ok else value > allowed.low
    below = value <= allowed.high if allowed.high_ok else value < allowed.high
    return above and below


def check_setting(key: str, value: Any, allowed: Range) -> None:
    """ValueError naming ``key`` and the range unless ``value`` fits ``allowed``."""
    if not fits(value, allowed):
        raise ValueError(f"{key}={as_typed(value)!r}: expected {range_text(allowed)}")


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """ValueError naming ``key`` and the choices unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{key}={as_typed(value)!r}: expected one of {list(choices)}")


def check_rule(key: str, value: Any, rule: Mapping) -> None:
    """Check ``value`` against a field's metadata (its range, its choices)."""
    if RANGE in rule:
        check_setting(key, value, rule[RANGE])
    if CHOICES in rule:
        check_choice(key, value, rule[CHOICES])


def check_fields(values: Mapping[str, Any], schema: type, prefix: str) -> None:
    """Check the keys of ``values``, a mapping that is not a schema node (a phase's inline
    sampler, a schedule Hydra did not compose), against the ranges and choices of ``schema``'s
    fields; a ValueError names ``prefix`` + the key. Keys the schema lacks are not checked."""
    for setting in dataclasses.fields(schema):
        if setting.name in values:
            check_rule(prefix + setting.name, values[setting.name], setting.metadata)
