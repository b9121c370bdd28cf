"""Structured configs of the settings the trainer reads, registered in Hydra's ConfigStore.

Each yaml keeps its values and comments and lists its schema first in its defaults
(``defaults: [<schema>, _self_]``, Hydra's pattern for validating a yaml against a dataclass),
so Hydra itself refuses a key the schema does not have, from the command line or from a yaml
(``train.bacth_size=4``; a preset's ``train: {bacth_size: 4}``), and a value of the wrong type
for a typed field (``train.amp=maybe``), naming the key, when it composes the config.

Who checks what, once: Hydra checks the names, and the types of the settings that have no
range; a number with an allowed range (a count >= 1, a fraction in [0, 1]) is typed ``Any``
here and checked, type and range together, by ``lsdet.engine.config_checks`` (``NUMERIC_SETTINGS``
says ``int`` or ``float`` and the bounds), whose message names the key, the value as typed and
the range (``train.batch_size='abc': expected an integer >= 1``); so are the settings with an
own check (``train.eval_epochs``, ``train.eval_image_records``, which refuses ``yes`` where
OmegaConf's bool would read it as true, ``train.resume``). The composed config is the same as
without the schemas: ``Any`` keeps each value as written.

Schemas (the fields below are the keys, greppable by their full name):

- ``train.*`` (conf/trainer/default.yaml): ``TrainSettings``, registered as ``trainer/schema``;
- ``rates.*`` (conf/train.yaml): ``RatesSettings``, registered as ``rates_schema``: the
  concurrent rates r_ij of the paper's eq. 3 and 5 (section 3.1).

The registration runs when ``lsdet`` is imported (``lsdet/__init__.py``), so every composition
of conf/train.yaml (``python -m lsdet.train``, tests, benchmarks) finds the schemas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class DivergenceSettings:
    """``train.divergence``: a finite loss above ``factor`` x its running mean for ``steps``
    steps in a row is flagged (``steps`` = 0 turns it off); both range-checked by config_checks."""

    factor: Any = 10.0  # float > 1
    steps: Any = 20  # int >= 0


@dataclass
class TrainSettings:
    """``train.*``: device, batch, loop, evaluation and checkpoint settings (the comments of
    conf/trainer/default.yaml say what each does). ``Any``: checked by config_checks."""

    device: str = "auto"
    dist_backend: str = "auto"
    find_unused_parameters: bool = False
    batch_size: Any = 2  # int >= 1
    eval_batch_size: Any = 8  # int >= 1
    hflip_prob: Any = 0.5  # float in [0, 1]
    num_workers: Any = 2  # int >= 0
    threads: Any = None  # int >= 1 or null
    amp: bool = True
    max_iters_per_epoch: Any = None  # int >= 1 or null
    stop_after_iters: Any = None  # int >= 1 or null
    checkpoint_every: Any = 1000  # int >= 0
    eval_every: str = "epoch"
    eval_epochs: Any = None  # null or a list of epochs of the schedule
    eval_image_records: Any = False  # true | false, nothing else
    eval_max_images: Any = None  # int >= 1 or null
    max_nonfinite: Any = 50  # int >= 0
    max_consecutive_nonfinite: Any = 10  # int >= 0
    divergence: DivergenceSettings = field(default_factory=DivergenceSettings)
    log_every: Any = 20  # int >= 1
    progress: bool = True
    resume: Any = False  # true | false | auto (lsdet.engine.run_folder.parse_resume)
    overwrite: bool = False
    resume_allow_changes: list[str] = field(default_factory=list)


@dataclass
class RatesSettings:
    """``rates.*``: the estimator of the concurrent rates (lsdet.data.rates); every one is a
    float range-checked by config_checks."""

    iou_threshold: Any = 0.9  # (0, 1]
    floor: Any = 0.01  # [0, 1]
    hierarchy_rate: Any = 1.0  # [0, 1]
    prior_count: Any = 8  # >= 0


def register_config_schemas() -> None:
    """Register the schemas above in Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(group="trainer", name="schema", node=TrainSettings)
    store.store(name="rates_schema", node=RatesSettings, package="rates")


# Command-line keys that are not the key the trainer reads, with the key to set instead.
# loss.parent_scores is the loss's default parent scoring, which conf/model/*.yaml copies into
# model.parent_scores, the detector's setting (read by its RoI head, recorded in the checkpoint,
# replaced by parent_scores= of lsdet.evaluate / lsdet.predict).
REFUSED_OVERRIDES: dict[str, str] = {
    "loss.parent_scores": "model.parent_scores",
}


def check_overrides(overrides: Sequence[str]) -> None:
    """ValueError naming the key to use when a command-line override sets one of
    ``REFUSED_OVERRIDES`` (``loss.parent_scores=own`` -> ``model.parent_scores=own``)."""
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in REFUSED_OVERRIDES:
            new_key = REFUSED_OVERRIDES[key]
            raise ValueError(
                f"{override}: {key} is the loss's default of {new_key}, not a setting; "
                f"set {new_key}={value} instead"
            )
