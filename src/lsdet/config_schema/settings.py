"""How a schema field says what values it allows, and the one check that reads it.

A field of a schema dataclass carries its allowed values in its metadata: ``ranged(default,
allowed)`` for a number (``Range``: int or float, bounds, null allowed or not), ``one_of(default,
choices)`` for a word from a fixed list. Hydra checks each field's type when it composes the
config; ``check_config_values`` walks the composed config and checks every ranged and enumerated
field of every schema node it meets, each error naming the full key, the value as typed and what
is allowed (``optim.lr=-0.01: expected a number > 0``), never a message from deep inside
torch(vision) or a value the user never typed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
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


def check_rule(key: str, value: Any, rule: Mapping) -> None:
    """Check ``value`` against a field's metadata (its range, its choices)."""
    if RANGE in rule:
        check_setting(key, value, rule[RANGE])
    if CHOICES in rule:
        check_choice(key, value, rule[CHOICES])


def check_config_values(cfg: DictConfig) -> None:
    """Check the value of every ranged and enumerated field of every schema node of ``cfg``
    (a composed config); the first that does not fit raises a ValueError naming its full key."""
    for full_key, value, rule in schema_rules(cfg):
        check_rule(full_key, value, rule)


def check_fields(values: Mapping[str, Any], schema: type, prefix: str) -> None:
    """Check the keys of ``values``, a mapping that is not a schema node (a phase's inline
    sampler, a schedule Hydra did not compose), against the ranges and choices of ``schema``'s
    fields; a ValueError names ``prefix`` + the key. Keys the schema lacks are not checked."""
    for setting in dataclasses.fields(schema):
        if setting.name in values:
            check_rule(prefix + setting.name, values[setting.name], setting.metadata)
