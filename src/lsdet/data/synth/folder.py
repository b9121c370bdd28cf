"""Folder safety and the manifest: the generator writes only into a folder that is missing,
empty, or that it wrote itself (its manifest.json lists every file it wrote). A generation is
written into a sibling staging folder and moved into place only when complete; only then are
the files of the old manifest replaced or removed, so a failed run leaves the old files as
they were."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lsdet.atomic_files import write_text_atomic
from lsdet.data.synth.lvis import LVIS_JSON
from lsdet.data.synth.settings import (
    CLASS_DESCRIPTIONS_CSV,
    GENERATOR_NAME,
    HIERARCHY_JSON,
    MANIFEST_JSON,
    SPLITS,
    SynthSettings,
    image_ids,
    split_files,
)


class NotAGeneratedFolderError(FileExistsError):
    """The folder holds files the generator did not write; it refuses to touch any of them."""


def planned_files(settings: SynthSettings, *, write_lvis: bool = False) -> list[str]:
    """Every file the generator writes for ``settings`` except manifest.json, relative to the
    root (POSIX separators), in a fixed order; ``write_lvis`` adds the LVIS files."""
    files = [HIERARCHY_JSON, CLASS_DESCRIPTIONS_CSV]
    if write_lvis:
        files += [LVIS_JSON[split] for split in SPLITS]
    sizes = {"train": settings.num_train_images, "validation": settings.num_val_images}
    for split in SPLITS:
        paths = split_files(Path(), split)
        files += [paths[key].as_posix() for key in ("bbox_csv", "image_labels_csv", "objects_csv")]
        files += [f"{split}/{image_id}.jpg" for image_id in image_ids(split, sizes[split])]
    return files


def read_own_manifest(root: str | Path) -> dict[str, Any] | None:
    """``root/manifest.json`` if the generator wrote it (this version or an earlier one),
    else None (no manifest, unreadable, or another tool's)."""
    path = Path(root) / MANIFEST_JSON
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("generator") == GENERATOR_NAME and isinstance(
        manifest.get("files_written"), list
    ):
        return manifest
    # Version 1 wrote neither the generator's name nor its file list; its keys identify it.
    settings = manifest.get("settings")
    if (
        manifest.get("generator_version") == 1
        and {"settings_hash", "files", "summary"} <= manifest.keys()
        and isinstance(settings, dict)
        and {"num_train_images", "num_val_images"} <= settings.keys()
    ):
        return manifest
    return None


def has_lvis_files(manifest: Mapping[str, Any] | None) -> bool:
    """Whether an own manifest lists the LVIS files (a generation asked for them)."""
    if manifest is None or "files_written" not in manifest:
        return False
    written = {str(rel) for rel in manifest["files_written"]}
    return all(LVIS_JSON[split] in written for split in SPLITS)


def _files_of_manifest(manifest: Mapping[str, Any]) -> list[str]:
    """The files an own manifest says the generator wrote (relative to the root)."""
    if "files_written" in manifest:
        return [str(rel) for rel in manifest["files_written"]]
    # Version 1: its fixed file names and the images its settings numbered.
    settings = manifest["settings"]
    sizes = {"train": settings["num_train_images"], "validation": settings["num_val_images"]}
    files = [HIERARCHY_JSON, CLASS_DESCRIPTIONS_CSV]
    for split in SPLITS:
        files += [f"{split}-annotations-bbox.csv", f"{split}-annotations-image-labels.csv"]
        files += [f"{split}-objects.csv"]
        files += [f"{split}/{image_id}.jpg" for image_id in image_ids(split, int(sizes[split]))]
    return files


def _inside(root: Path, relative: str) -> bool:
    """Whether ``root/relative`` stays inside ``root`` (a manifest could name ``../x``)."""
    root_path = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(root_path, relative))
    return os.path.commonpath([root_path, path]) == root_path and path != root_path


def _refusal(root: Path, reason: str) -> NotAGeneratedFolderError:
    return NotAGeneratedFolderError(
        f"refusing to write the synthetic benchmark into {root}: {reason}. The generator "
        f"writes only into a folder that is missing, empty, or that it wrote itself (with its "
        f"own {MANIFEST_JSON}), and never deletes anything else; nothing in {root} was "
        f"changed. Generate it elsewhere with data.root=<a new or empty folder> (for "
        f"`python -m lsdet.data.synth`: root=<folder>), or, to use your own data in the Open "
        f"Images layout, pass data=openimages data.root={root}."
    )


def _check_folder(
    root: Path, settings: SynthSettings, *, write_lvis: bool = False
) -> tuple[list[str], set[str]]:
    """Whether the generator may write ``settings``' files into ``root``: raises
    :class:`NotAGeneratedFolderError` if not, and touches nothing either way. Returns the
    files to write and the files the folder's own manifest lists (to be replaced)."""
    if root.exists() and not root.is_dir():
        raise _refusal(root, "it is a file, not a folder")
    planned = planned_files(settings, write_lvis=write_lvis)
    manifest = read_own_manifest(root) if root.is_dir() else None
    if manifest is None:
        if root.is_dir() and any(root.iterdir()):
            raise _refusal(
                root, f"it is not empty and holds no {MANIFEST_JSON} written by the generator"
            )
        return planned, set()
    own = {rel for rel in _files_of_manifest(manifest) if _inside(root, rel)}
    foreign = [
        rel
        for rel in planned
        if rel not in own and ((root / rel).exists() or (root / rel).is_symlink())
    ]
    if foreign:
        raise _refusal(
            root,
            f"{len(foreign)} file(s) it would write exist but are not listed in its "
            f"{MANIFEST_JSON} (e.g. {root / foreign[0]})",
        )
    return planned, own


def _staging_folder(root: Path) -> Path:
    """A new, empty sibling of ``root`` to generate into (same file system, so that the
    finished files are moved into ``root`` by renaming). A run killed while generating leaves
    it behind; it holds only generated files and may be deleted."""
    root = Path(os.path.abspath(root))
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.generating-{os.getpid()}"
    if staging.exists():  # left by an earlier, killed run of a process with the same pid
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def _move_into_place(
    staging: Path,
    root: Path,
    planned: list[str],
    old_own: set[str],
    manifest: Mapping[str, Any],
) -> None:
    """Moves the complete generation from ``staging`` into ``root``: the generated files
    replace the files of the folder's old manifest, which are removed only now; files of
    anyone else in ``root`` stay. A missing ``root`` is the staging folder renamed."""
    if not root.exists():
        shutil.move(str(staging), str(root))
        return
    # Until the new manifest is written, the folder's manifest lists the old and the new
    # files, marked incomplete: a run killed during the moves leaves a folder that a later
    # run recognises as its own and regenerates.
    _write_manifest(
        root,
        {**manifest, "complete": False, "files_written": sorted(old_own | set(planned))},
    )
    for rel in planned:
        destination = root / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / rel), str(destination))
    for rel in sorted(old_own - set(planned)):
        path = root / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    _write_manifest(root, manifest)


def _write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    """Writes manifest.json atomically (a reader sees the old or the new one, never half)."""
    write_text_atomic(root / MANIFEST_JSON, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
