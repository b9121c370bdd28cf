"""The entry points: generate the benchmark, generate it only when out of date (for a data
config), and the command line ``python -m lsdet.data.synth``."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lsdet.data.synth.folder import (
    NotAGeneratedFolderError,
    _check_folder,
    _files_of_manifest,
    _move_into_place,
    _staging_folder,
    _write_manifest,
    has_lvis_files,
    read_own_manifest,
)
from lsdet.data.synth.lvis import LVIS_JSON, LvisImage, write_lvis_files
from lsdet.data.synth.scenes import _assign_leaves_to_images
from lsdet.data.synth.settings import (
    CLASS_DESCRIPTIONS_CSV,
    CONFUSED_PAIR,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    HIERARCHY_JSON,
    LABEL_PROBLEMS,
    SPLITS,
    SynthSettings,
    SynthSettingsError,
    split_files,
)
from lsdet.data.synth.splits import _write_split, layout_rng
from lsdet.data.synth.taxonomy import Taxonomy, build_taxonomy, target_image_counts

logger = logging.getLogger(__name__)


class GeneratedWithOtherSettingsError(ValueError):
    """``data.root`` holds a complete benchmark generated with other settings than the data
    config's; it is neither used nor replaced unless ``data.regenerate=true``."""


def validate_settings(settings: SynthSettings) -> tuple[Taxonomy, dict[str, np.ndarray]]:
    """Checks every setting the generator will need before anything is written: builds the
    class tree (with its confused pairs), the images per leaf, and places every split's leaves
    in its images. Raises :class:`SynthSettingsError` naming the key; returns the class tree
    and the images per leaf of each split."""
    taxonomy = build_taxonomy(settings)
    counts = target_image_counts(settings, taxonomy)
    sizes = {"train": settings.num_train_images, "validation": settings.num_val_images}
    for split in SPLITS:  # the same draws _write_split makes, only to find a split too small
        _assign_leaves_to_images(
            counts[split],
            sizes[split],
            settings.max_objects_per_image,
            layout_rng(settings, split),
            split,
        )
    return taxonomy, counts


def generate_synthetic_benchmark(
    root: str | Path,
    settings: SynthSettings | Mapping[str, Any] | None = None,
    *,
    write_lvis: bool = False,
) -> dict[str, Any]:
    """Writes the synthetic benchmark under ``root``; returns the manifest (paths, settings,
    settings hash, summary, every file written).

    ``write_lvis`` also writes the same annotations in LVIS v1 format (``lvis_train.json``,
    ``lvis_val.json``: :mod:`lsdet.data.synth.lvis`). They are extra outputs, not settings:
    the Open Images files, the settings and their hash are the same with or without them. A
    folder whose manifest lists them keeps them when it is regenerated.

    Every setting is checked first (:func:`validate_settings`, a :class:`SynthSettingsError`
    naming the key). ``root`` must be missing, empty, or a folder the generator wrote (its
    manifest.json): anything else raises :class:`NotAGeneratedFolderError`. The files are
    written into a sibling staging folder and moved into ``root`` only when all are written;
    then the files the old manifest lists are replaced or removed, and files of anyone else
    stay. On any error before that, ``root`` is left exactly as it was."""
    if settings is None:
        settings = SynthSettings()
    elif not isinstance(settings, SynthSettings):
        settings = SynthSettings.from_mapping(settings)
    root = Path(root)
    taxonomy, counts = validate_settings(settings)
    if root.is_dir() and has_lvis_files(read_own_manifest(root)):
        write_lvis = True
    planned, old_own = _check_folder(root, settings, write_lvis=write_lvis)
    start = time.perf_counter()
    staging = _staging_folder(root)
    try:
        manifest = _write_benchmark(
            staging, settings, taxonomy, counts, planned, write_lvis=write_lvis
        )
        _move_into_place(staging, root, planned, old_own, manifest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    manifest["seconds"] = round(time.perf_counter() - start, 2)
    return manifest


def _write_benchmark(
    folder: Path,
    settings: SynthSettings,
    taxonomy: Taxonomy,
    counts: dict[str, np.ndarray],
    planned: list[str],
    *,
    write_lvis: bool = False,
) -> dict[str, Any]:
    """Writes every file of the benchmark and its complete manifest into ``folder``."""
    (folder / HIERARCHY_JSON).write_text(json.dumps(taxonomy.hierarchy_json(), indent=1) + "\n")
    (folder / CLASS_DESCRIPTIONS_CSV).write_text(
        "".join(f"{mid},{taxonomy.names[mid]}\n" for mid in taxonomy.mids)
    )
    summary: dict[str, Any] = {
        "num_classes": len(taxonomy.mids),
        "num_leaves": len(taxonomy.leaves),
        "num_levels": 3,
        "confused_pairs": [
            {
                "mids": [taxonomy.leaves[a], taxonomy.leaves[int(taxonomy.sibling_partner[a])]],
                "target_rate": round(float(taxonomy.confused_rate[a]), 4),
                "both_labels_prob": round(float(taxonomy.confused_both_prob[a]), 4),
            }
            for a in np.argsort(-taxonomy.confused_rate, kind="stable")
            if taxonomy.confused_rate[a] > 0 and a < taxonomy.sibling_partner[a]
        ],
    }
    sizes = {"train": settings.num_train_images, "validation": settings.num_val_images}
    lvis_images: dict[str, list[LvisImage]] = {split: [] for split in SPLITS}
    for split in SPLITS:
        summary[split] = _write_split(
            folder,
            split,
            counts[split],
            sizes[split],
            settings,
            taxonomy,
            lvis_images[split] if write_lvis else None,
        )
    if write_lvis:  # absent otherwise: the manifest of a benchmark without them unchanged
        summary["lvis"] = write_lvis_files(folder, taxonomy, lvis_images, settings.image_size)
    if settings.multi_label_rate is not None:  # absent otherwise: v2's manifest unchanged
        rates = summary["train"]["label_problem_rates"]
        summary["multi_label"] = {
            "target_rate": settings.multi_label_rate,
            "scale": round(taxonomy.multi_label_scale, 6),
            "label_noise": {
                name: round(getattr(taxonomy.label_noise, name), 6) for name in LABEL_PROBLEMS
            },
            # realised: training objects boxed with two leaf labels
            "train_two_leaf_share": round(
                rates["two_leaves"] + rates["sibling_both"] + rates[CONFUSED_PAIR], 4
            ),
        }
    manifest = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "settings_hash": settings.content_hash(),
        "settings": settings.to_dict(),
        "files_written": planned,
        "complete": True,
        "files": {
            "hierarchy_json": HIERARCHY_JSON,
            "class_descriptions_csv": CLASS_DESCRIPTIONS_CSV,
            **{
                f"{split}.{key}": str(path.relative_to(folder))
                for split in SPLITS
                for key, path in split_files(folder, split).items()
            },
            **({f"{split}.lvis_json": LVIS_JSON[split] for split in SPLITS} if write_lvis else {}),
        },
        "summary": summary,
    }
    _write_manifest(folder, manifest)
    return manifest


def settings_from_data_config(data_cfg: Any) -> SynthSettings:
    """The generator settings a data config (conf/data/synth.yaml) holds: its ``generate``
    block, with ``image_size`` taken from the config's top level."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data_cfg, DictConfig):
        generate = OmegaConf.to_container(data_cfg.generate, resolve=True)
        image_size = data_cfg.get("image_size")
    else:
        generate = dict(data_cfg["generate"])
        image_size = data_cfg.get("image_size")
    if image_size is not None:
        generate["image_size"] = int(image_size)
    return SynthSettings.from_mapping(generate)  # type: ignore[arg-type]


def _flat_settings(settings: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Settings as ``{full config key: value}`` (``image_size`` at the data config's top
    level, the rest under ``generate.``); ``num_workers`` does not change the files."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "num_workers":
            continue
        full = f"{prefix}image_size" if key == "image_size" else f"{prefix}generate.{key}"
        if isinstance(value, Mapping):
            flat.update({f"{full}.{k}": v for k, v in value.items()})
        else:
            flat[full] = value
    return flat


def _settings_differences(
    manifest: Mapping[str, Any], settings: SynthSettings, prefix: str
) -> list[str]:
    """``key: <folder's value> there, <config's value> in the config`` for each setting (and
    the generator version) that differs between a folder's manifest and ``settings``."""
    there = _flat_settings(manifest.get("settings") or {}, prefix)
    wanted = _flat_settings(settings.to_dict(), prefix)
    differences = [
        f"{key}: {there.get(key, 'not set')!r} there, {wanted.get(key, 'not set')!r} in the config"
        for key in sorted(set(there) | set(wanted))
        if there.get(key) != wanted.get(key)
    ]
    if manifest.get("generator_version") != GENERATOR_VERSION:
        differences.append(
            f"generator version: {manifest.get('generator_version')} there, {GENERATOR_VERSION} now"
        )
    return differences


def ensure_synthetic_benchmark(
    data_cfg: Any,
    *,
    force: bool = False,
    regenerate: bool | None = None,
    key_prefix: str = "data.",
) -> dict[str, Any]:
    """Generates the benchmark under ``data_cfg.root`` when it is missing, incomplete (an
    interrupted run) or lacks a file; returns the manifest with ``generated`` telling whether
    it wrote anything.

    A complete benchmark there generated with other settings (or by another generator
    version) is a :class:`GeneratedWithOtherSettingsError` naming every differing setting,
    and nothing is changed, unless ``regenerate`` (default: the config's ``regenerate``
    key, false) or ``force`` is true. ``force`` regenerates even an up-to-date folder. A
    folder the generator did not write raises :class:`NotAGeneratedFolderError` (see
    :func:`generate_synthetic_benchmark`). Settings errors name the full key, starting
    with ``key_prefix`` (``data.`` in a training or analysis config).

    The config's ``write_lvis`` (default false; conf/data/synth_lvis.yaml sets it) asks for
    the LVIS files too: a folder with the same settings but without them is regenerated
    with them (the Open Images files come out byte for byte the same)."""
    try:
        settings = settings_from_data_config(data_cfg)
    except SynthSettingsError as error:
        raise error.with_prefix(key_prefix) from None
    if regenerate is None:
        regenerate = bool(data_cfg.get("regenerate", False))
    root = Path(str(data_cfg["root"]))
    write_lvis = bool(data_cfg.get("write_lvis", False))
    # The files the config reads (null where it reads none: the LVIS view nulls the Open
    # Images files, the Open Images view names no annotation_json).
    configured = [
        path
        for path in (
            data_cfg.get("hierarchy_json"),
            data_cfg.get("class_descriptions_csv"),
            *(
                data_cfg[split].get(key)
                for split in ("train", "val")
                for key in ("bbox_csv", "image_labels_csv", "image_dir", "annotation_json")
            ),
        )
        if path is not None
    ]
    manifest = read_own_manifest(root)
    complete = manifest is not None and manifest.get("complete") is True
    same_settings = complete and manifest.get("settings_hash") == settings.content_hash()
    lvis_missing = write_lvis and not has_lvis_files(manifest)
    if (
        not force
        and same_settings
        and not lvis_missing
        and all((root / rel).is_file() for rel in _files_of_manifest(manifest))
        and all(Path(str(p)).exists() for p in configured)
    ):
        manifest["generated"] = False
        return manifest
    if complete and not same_settings and not (regenerate or force):
        differences = _settings_differences(manifest, settings, key_prefix)
        raise GeneratedWithOtherSettingsError(
            f"{root} holds a synthetic benchmark generated with other settings than the data "
            f"config's ({'; '.join(differences)}); nothing was changed. Use it with its "
            f"settings, choose another {key_prefix}root, or replace it with "
            f"{key_prefix}regenerate=true"
        )
    if manifest is None:
        reason = "no benchmark there yet"
    elif not complete:
        reason = "the benchmark there is incomplete (an interrupted generation)"
    elif not same_settings:
        reason = "replacing a benchmark generated with other settings: " + "; ".join(
            _settings_differences(manifest, settings, key_prefix)
        )
    elif force:
        reason = "regeneration forced"
    elif lvis_missing:
        reason = f"the LVIS files ({key_prefix}write_lvis=true) are not there yet"
    else:
        reason = "a file of the benchmark is missing"
    try:
        validate_settings(settings)  # before saying that it generates
        logger.warning("generating the synthetic benchmark in %s (%s)", root, reason)
        manifest = generate_synthetic_benchmark(root, settings, write_lvis=write_lvis)
    except SynthSettingsError as error:
        raise error.with_prefix(key_prefix) from None
    missing = [str(p) for p in configured if not Path(str(p)).exists()]
    if missing:
        raise FileNotFoundError(
            f"the data config names files the generator does not write under {root}: {missing}"
        )
    manifest["generated"] = True
    return manifest


def _default_config_path() -> Path:
    return Path(__file__).resolve().parents[4] / "conf" / "data" / "synth.yaml"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(
        prog="python -m lsdet.data.synth",
        description="Write the synthetic benchmark. Overrides are key=value pairs of the data "
        "config, e.g. root=data/synth_small generate.num_train_images=200 image_size=64.",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the data config")
    parser.add_argument(
        "--config",
        default=None,
        help="data config YAML (default: conf/data/synth.yaml of this repository)",
    )
    parser.add_argument(
        "--force", action="store_true", help="regenerate even when the files are up to date"
    )
    # Running the generator is asking for its files: a folder it generated with other
    # settings is regenerated (after every setting is checked; the old files stay until the
    # new ones are complete).
    args = parser.parse_args(argv)
    config_path = Path(args.config) if args.config else _default_config_path()
    if not config_path.is_file():
        parser.error(f"data config not found: {config_path}")
    cfg = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_dotlist(args.overrides))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = ensure_synthetic_benchmark(cfg, force=args.force, regenerate=True, key_prefix="")
    except (SynthSettingsError, NotAGeneratedFolderError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    if manifest["generated"]:
        print(f"wrote the synthetic benchmark to {cfg.root} in {manifest['seconds']} s")
    else:
        print(f"{cfg.root} is up to date (settings hash {manifest['settings_hash']})")
    print(json.dumps(manifest["summary"], indent=1))
    return manifest
