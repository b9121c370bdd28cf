"""Schemas of the data group (conf/data/*.yaml), one per data source: their keys differ by the
files each source reads (Open Images CSV files, or LVIS/COCO JSON annotation files). The keys
every source has are those of ``DataSettings``.

The yaml files give every value (the schema's defaults are ``???``); the paths are strings
(interpolations of ``root`` in the yaml files). ``data.metric`` is checked by lsdet.evaluate
(its METRICS) and the synthetic generator's settings (``generate``) by the generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class CsvSplit:
    """``data.train`` / ``data.val`` of an Open Images layout: the box and image-label CSVs."""

    bbox_csv: str = MISSING
    # Null: no verified image-level labels (boxes only).
    image_labels_csv: str | None = MISSING
    image_dir: str = MISSING


@dataclass
class JsonSplit:
    """``data.train`` / ``data.val`` of an LVIS or COCO layout: the annotation JSON."""

    annotation_json: str = MISSING
    image_dir: str = MISSING


@dataclass
class SynthJsonSplit:
    """``data.train`` / ``data.val`` of the synthetic benchmark read through its LVIS files:
    the CSV keys of conf/data/synth.yaml are null there (not read through this view)."""

    annotation_json: str = MISSING
    image_dir: str = MISSING
    bbox_csv: str | None = MISSING
    image_labels_csv: str | None = MISSING


@dataclass
class DataSettings:
    """The keys of every data source."""

    name: str = MISSING  # used in run names and reports
    root: str = MISSING
    # The Open Images hierarchy and class list; null for the flat LVIS and COCO categories.
    hierarchy_json: str | None = MISSING
    class_descriptions_csv: str | None = MISSING
    cache_dir: str = MISSING
    strict: bool = MISSING
    # Any: an integer side in pixels, or null (each image keeps its size); lsdet.evaluate and
    # lsdet.predict also take ``auto`` (the checkpoint's).
    image_size: Any = MISSING


@dataclass
class OpenImagesData(DataSettings):
    """``data=openimages``: the Open Images Challenge 2019 files."""

    train: CsvSplit = field(default_factory=CsvSplit)
    val: CsvSplit = field(default_factory=CsvSplit)


@dataclass
class SynthData(OpenImagesData):
    """``data=synth``: the synthetic benchmark (Open Images files, generated when missing)."""

    regenerate: bool = MISSING
    write_lvis: bool = MISSING
    # Any: the generator's settings, validated by the generator
    # (lsdet.data.synth.generate.settings_from_data_config, validate_settings), whose version they belong to.
    generate: Any = MISSING


@dataclass
class JsonData(DataSettings):
    """``data=lvis`` and ``data=coco``: LVIS v1 or COCO 2017 annotation JSON files (LVIS's
    layout is COCO's plus fields)."""

    metric: str = MISSING  # lvis | coco
    train: JsonSplit = field(default_factory=JsonSplit)
    val: JsonSplit = field(default_factory=JsonSplit)


@dataclass
class SynthLvisData(SynthData):
    """``data=synth_lvis``: the synthetic benchmark read through its LVIS files."""

    metric: str = MISSING
    train: SynthJsonSplit = field(default_factory=SynthJsonSplit)
    val: SynthJsonSplit = field(default_factory=SynthJsonSplit)


SCHEMAS = {
    "data/openimages": OpenImagesData,
    "data/synth": SynthData,
    "data/lvis": JsonData,
    "data/coco": JsonData,
    "data/synth_lvis": SynthLvisData,
}
