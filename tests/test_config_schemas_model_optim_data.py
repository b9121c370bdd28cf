"""Structured configs of the model, optim and data groups (lsdet.config_schema.model, .optim,
.data): each yaml has exactly its schema's keys, Hydra refuses a misspelt key or a value of the
wrong type naming the key, and check_training_config refuses a value outside its range or
choices naming the full key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from train_helpers import CONF_DIR, compose_config, compose_train

from lsdet.config_schema import data, model, optim
from lsdet.config_schema.checks import check_training_config

# Each yaml's schema: (group, file name) -> dataclass.
SCHEMA_OF_FILE = {
    **{("model", p.stem): model.ModelSettings for p in (CONF_DIR / "model").glob("*.yaml")},
    **{("optim", p.stem): optim.OptimSettings for p in (CONF_DIR / "optim").glob("*.yaml")},
    ("data", "synth"): data.SynthData,
    ("data", "synth_lvis"): data.SynthLvisData,
    ("data", "openimages"): data.OpenImagesData,
    ("data", "lvis"): data.JsonData,
    ("data", "coco"): data.JsonData,
}
FILES = sorted(SCHEMA_OF_FILE)
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_every_file_of_the_three_groups_has_a_schema():
    on_disk = {
        (g, p.stem) for g in ("model", "optim", "data") for p in (CONF_DIR / g).glob("*.yaml")
    }
    assert set(SCHEMA_OF_FILE) == on_disk


def _file_keys(group: str, name: str) -> dict:
    """The keys a yaml sets, its parent files' of the same group (``defaults: [resnet50_fpn]``)
    merged in first."""
    own = yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text())
    merged: dict = {}
    for entry in own.pop("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            merged = _deep_merge(merged, _file_keys(group, entry))
    return _deep_merge(merged, own)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both_maps else value
    return out


def _key_tree(schema: type) -> dict:
    """Field names of ``schema``, a nested schema's as a dict of its own."""
    hints = typing.get_type_hints(schema)
    return {
        f.name: _key_tree(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else None
        for f in dataclasses.fields(schema)
    }


def _yaml_tree(keys: dict, schema_tree: dict) -> dict:
    return {
        key: _yaml_tree(value, schema_tree[key])
        if isinstance(value, dict) and isinstance(schema_tree.get(key), dict)
        else None
        for key, value in keys.items()
    }


@pytest.mark.parametrize(("group", "name"), FILES, ids=lambda x: x)
def test_each_yaml_has_exactly_the_keys_of_its_schema(group, name):
    schema = SCHEMA_OF_FILE[(group, name)]
    tree = _key_tree(schema)
    assert _yaml_tree(_file_keys(group, name), tree) == tree
    node = compose_train([f"{group}={name}"])[group]
    assert OmegaConf.get_type(node) is schema
    assert OmegaConf.missing_keys(node) == set()


def test_the_composed_model_keeps_the_yaml_values_and_the_parent_scores_interpolation():
    cfg = compose_train(["model=resnet50_fpn", "loss=bce"])
    own = _file_keys("model", "resnet50_fpn")
    composed = OmegaConf.to_container(cfg.model)
    assert composed == own  # anchor_scale 8 is 8.0 (typed), equal as a number
    assert type(cfg.model.anchor_scale) is float
    assert composed["parent_scores"] == "${loss.parent_scores}"
    assert cfg.model.parent_scores == cfg.loss.parent_scores
    assert cfg.model.min_size == 800
    assert compose_train(["data.image_size=96"]).model.min_size == 96  # resnet18_fpn's ${...}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.fpn_channels=wide"], "full_key: model.fpn_channels"),
        (["model.backbone.pretrained=maybe"], "full_key: model.backbone.pretrained"),
        (["model.roi.nms_thresh=high"], "full_key: model.roi.nms_thresh"),
        (["model.anchor_sizes=[[a]]"], "full_key: model.anchor_sizes"),
        (["optim.lr=fast"], "full_key: optim.lr"),
        (["data.strict=maybe"], "full_key: data.strict"),
        (["data=lvis", "data.strict=maybe"], "full_key: data.strict"),
        (["data=synth_lvis", "data.write_lvis=maybe"], "full_key: data.write_lvis"),
        # A key of another data source: lvis has no Open Images CSV.
        (["data=lvis", "data.train.bbox_csv=a.csv"], "data.train.bbox_csv"),
        (["data=openimages", "data.generate.seed=1"], "data.generate.seed"),
    ],
)
def test_hydra_refuses_wrong_types_and_unknown_keys_naming_them(overrides, message):
    with pytest.raises(ConfigCompositionException) as caught:
        compose_train(overrides)
    assert message in f"{caught.value} {caught.value.__cause__}"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.fpn_channels=0"], r"^model\.fpn_channels=0: expected an integer >= 1$"),
        (["model.anchor_scale=0"], r"^model\.anchor_scale=0\.0: expected a number > 0 \(or null"),
        (["model.rpn.nms_thresh=1.5"], r"^model\.rpn\.nms_thresh=1\.5: expected a number >= 0"),
        (["model.roi.detections_per_img=0"], r"^model\.roi\.detections_per_img=0: expected an"),
        (["model.roi.score_thresh=1"], r"^model\.roi\.score_thresh=1\.0: expected a number >= 0"),
        (["model.min_size=0"], r"^model\.min_size=0: expected an integer >= 1$"),
        (["model.backbone.norm=gn"], r"^model\.backbone\.norm='gn': expected one of \['bn', "),
        (["model.scoring=max"], r"^model\.scoring='max': expected one of \['auto', 'softmax'"),
        (["model.parent_scores=max"], r"^model\.parent_scores='max': expected one of \['own'"),
        (["optim.lr=-0.01"], r"^optim\.lr=-0\.01: expected a number > 0 \(or null\)$"),
        (["optim.lr_per_image=0"], r"^optim\.lr_per_image=0\.0: expected a number > 0"),
        (["optim.clip_grad_norm=0"], r"^optim\.clip_grad_norm=0\.0: expected a number > 0"),
        # optim.optimizer is a free mapping: its two ranged keys are checked by key.
        (["optim.optimizer.weight_decay=-1"], r"^optim\.optimizer\.weight_decay=-1: expected"),
        (["optim.optimizer.momentum=2"], r"^optim\.optimizer\.momentum=2: expected a number >= 0"),
        (["optim=adamw", "optim.lr=null"], r"^optim\.lr=null needs optim\.lr_per_image"),
        (
            ["model.roi.bg_iou_thresh=0.6", "model.roi.fg_iou_thresh=0.4"],
            r"^model\.roi\.bg_iou_thresh=0\.6 is above model\.roi\.fg_iou_thresh=0\.4",
        ),
    ],
)
def test_a_value_outside_its_range_or_choices_names_the_full_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_training_config(compose_train(overrides))


def test_a_key_added_with_plus_is_refused_but_the_optimizer_mapping_is_free():
    with pytest.raises(ValueError, match=r"^optim\.momentum: not a setting of optim "):
        check_training_config(compose_train(["+optim.momentum=0.9"]))
    # The optimizer class's own keyword arguments (hydra.utils.instantiate).
    cfg = compose_train(["+optim.optimizer.nesterov=true"])
    check_training_config(cfg)
    assert cfg.optim.optimizer.nesterov is True


def test_the_defaults_and_every_data_source_pass_the_checks():
    for name in ("synth", "synth_lvis", "openimages", "lvis", "coco"):
        check_training_config(compose_train([f"data={name}", "data.image_size=64"]))
    for name in ("adamw", "sgd"):
        check_training_config(compose_train([f"optim={name}"]))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_with_the_schemas_and_passes_the_checks(preset):
    cfg = compose_train([f"+experiment={preset}"])
    assert OmegaConf.get_type(cfg.model) is model.ModelSettings
    assert OmegaConf.get_type(cfg.optim) is optim.OptimSettings
    assert dataclasses.is_dataclass(OmegaConf.get_type(cfg.data))
    check_training_config(cfg)


@pytest.mark.parametrize("name", ["synth", "synth_lvis", "openimages", "lvis", "coco"])
def test_the_evaluation_and_analysis_configs_compose_with_every_data_source(name):
    evaluate = compose_config("evaluate", [f"data={name}"])
    assert evaluate.data.image_size == "auto"  # lsdet.evaluate's: the checkpoint's size
    assert OmegaConf.get_type(evaluate.data) is SCHEMA_OF_FILE[("data", name)]
    assert OmegaConf.to_container(evaluate.data, resolve=True)["name"] == name
    assert evaluate.cache_dir == evaluate.data.cache_dir
    analyze = compose_config("analyze", [f"data={name}"])
    assert OmegaConf.to_container(analyze.data, resolve=True)["name"] == name


def test_the_scoring_names_are_the_scorers():
    from lsdet.losses.scoring import SCORERS

    assert tuple(SCORERS) == model.SCORINGS


def test_the_schema_modules_do_not_import_torch():
    source = "\n".join(Path(module.__file__).read_text() for module in (model, optim, data))
    assert "import torch" not in source and "from lsdet.losses" not in source
