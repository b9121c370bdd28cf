"""The entry points: generate the benchmark, generate it only when out of date (for a data
config), and the command line ``python -m lsdet.data.synth``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lsdet.data.synth.folder import (
    NotAGeneratedFolderError,
    _claim_folder,
    _files_of_manifest,
    _write_manifest,
    read_own_manifest,
)
from lsdet.data.synth.settings import (
    CLASS_DESCRIPTIONS_CSV,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    HIERARCHY_JSON,
    SPLITS,
    SynthSettings,
    split_files,
)
from lsdet.data.synth.splits import _write_split
from lsdet.data.synth.taxonomy import build_taxonomy, target_image_counts


def generate_synthetic_benchmark(
    root: str | Path, settings: SynthSettings | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Writes the synthetic benchmark under ``root``; returns the manifest (paths, settings,
    settings hash, summary, every file written).

    ``root`` must be missing, empty, or a folder the generator wrote (its manifest.json):
    anything else raises :class:`NotAGeneratedFolderError` and nothing is changed. In its own
    folder it removes only the files its manifest lists; files of anyone else stay. Before
    writing it records, in the manifest, the files it is about to write (marked incomplete),
    so an interrupted run leaves a folder that a later run recognises and regenerates."""
    if settings is None:
        settings = SynthSettings()
    elif not isinstance(settings, SynthSettings):
        settings = SynthSettings.from_mapping(settings)
    root = Path(root)
    files_written = _claim_folder(root, settings)
    header = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "settings_hash": settings.content_hash(),
        "settings": settings.to_dict(),
        "files_written": files_written,
    }
    _write_manifest(root, {**header, "complete": False})
    start = time.perf_counter()
    taxonomy = build_taxonomy(settings)
    (root / HIERARCHY_JSON).write_text(json.dumps(taxonomy.hierarchy_json(), indent=1) + "\n")
    (root / CLASS_DESCRIPTIONS_CSV).write_text(
        "".join(f"{mid},{taxonomy.names[mid]}\n" for mid in taxonomy.mids)
    )
    counts = target_image_counts(settings, taxonomy)
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
    for split in SPLITS:
        summary[split] = _write_split(root, split, counts[split], sizes[split], settings, taxonomy)
    manifest = {
        **header,
        "complete": True,
        "files": {
            "hierarchy_json": HIERARCHY_JSON,
            "class_descriptions_csv": CLASS_DESCRIPTIONS_CSV,
            **{
                f"{split}.{key}": str(path.relative_to(root))
                for split in SPLITS
                for key, path in split_files(root, split).items()
            },
        },
        "summary": summary,
    }
    _write_manifest(root, manifest)
    manifest["seconds"] = round(time.perf_counter() - start, 2)
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


def ensure_synthetic_benchmark(data_cfg: Any, *, force: bool = False) -> dict[str, Any]:
    """Generates the benchmark under ``data_cfg.root`` unless the generator's complete
    manifest there has the same settings hash (settings and generator version) and every file
    it lists and the config names exists; returns the manifest with ``generated`` telling
    whether it wrote anything. A folder the generator did not write raises
    :class:`NotAGeneratedFolderError` (see :func:`generate_synthetic_benchmark`)."""
    settings = settings_from_data_config(data_cfg)
    root = Path(str(data_cfg["root"]))
    configured = [
        data_cfg["hierarchy_json"],
        data_cfg["class_descriptions_csv"],
        *(
            data_cfg[split][key]
            for split in ("train", "val")
            for key in ("bbox_csv", "image_labels_csv", "image_dir")
        ),
    ]
    manifest = read_own_manifest(root)
    if (
        not force
        and manifest is not None
        and manifest.get("complete") is True
        and manifest.get("settings_hash") == settings.content_hash()
        and all((root / rel).is_file() for rel in _files_of_manifest(manifest))
        and all(Path(str(p)).exists() for p in configured)
    ):
        manifest["generated"] = False
        return manifest
    manifest = generate_synthetic_benchmark(root, settings)
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
    args = parser.parse_args(argv)
    config_path = Path(args.config) if args.config else _default_config_path()
    if not config_path.is_file():
        parser.error(f"data config not found: {config_path}")
    cfg = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_dotlist(args.overrides))
    try:
        manifest = ensure_synthetic_benchmark(cfg, force=args.force)
    except NotAGeneratedFolderError as error:
        raise SystemExit(f"error: {error}") from None
    if manifest["generated"]:
        print(f"wrote the synthetic benchmark to {cfg.root} in {manifest['seconds']} s")
    else:
        print(f"{cfg.root} is up to date (settings hash {manifest['settings_hash']})")
    print(json.dumps(manifest["summary"], indent=1))
    return manifest
