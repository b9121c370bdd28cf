"""Structured configs of the settings lsdet reads, registered in Hydra's ConfigStore.

Every schema is a dataclass whose fields are the keys of one config node, greppable by their
full name, with their types, defaults and, in each field's metadata, the values allowed
(``lsdet.config_schema.settings``: a range for a number, a list of words). Each yaml of a
group lists its schema first in its defaults (``- /schema/<group>@_here_: <name>``, Hydra's
pattern for validating a yaml against a dataclass), so that:

- Hydra itself refuses, naming the key, a key the schema does not have (``train.bacth_size=4``
  on the command line, a preset's ``train: {bacth_size: 4}``) and a value of the wrong type
  (``train.amp=maybe``, ``train.batch_size=abc``) when it composes the config;
- ``checks.check_config_values`` checks the ranges and the choices of every schema node of
  the composed config (``train.batch_size=0: expected an integer >= 1``).

``checks.check_training_config`` runs it, with the checks that need two settings at once.

The schemas, one module per group (``SCHEMAS`` of each: ConfigStore name -> dataclass):
``train`` (``train.*``, ``rates.*``), ``data`` (one per data source), ``model``, ``loss`` (one
per loss, over the shared base of conf/loss_base/), ``sampler`` (one per sampler), ``schedule``
(phases with their lr plans) and ``optim``. A key that Hydra's ``+key=value`` adds to a schema
node is refused by ``checks.check_config_values``.

The registration runs when ``lsdet`` is imported (``lsdet/__init__.py``), so every composition
of conf/train.yaml (``python -m lsdet.train``, tests, benchmarks) finds the schemas.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.config_store import ConfigStore

from lsdet.config_schema import data, loss, model, optim, sampler, schedule, train

SCHEMA_MODULES = (train, data, model, loss, sampler, schedule, optim)


def register_config_schemas() -> None:
    """Register every module's SCHEMAS in Hydra's ConfigStore as ``schema/<name>``
    (idempotent)."""
    store = ConfigStore.instance()
    for module in SCHEMA_MODULES:
        for name, node in module.SCHEMAS.items():
            group, _, leaf = f"schema/{name}".rpartition("/")
            store.store(group=group, name=leaf, node=node)


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
