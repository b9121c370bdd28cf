"""Image files for inference where no annotation exists: decoding an image as the training
set does, the image files of a folder, and why a file was skipped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import resize

from lsdet.data.dataset import decode_image_rgb

# Suffixes (lower case) of the image files an image folder is taken from: the formats photos
# and detection data sets come in, kept where this Pillow build can open them.
_PHOTO_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".bmp",
    ".dib",
    ".webp",
    ".gif",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".avif",
)


def image_suffixes() -> frozenset[str]:
    """The suffixes (lower case, with the dot) that ``ImageFiles.from_folder`` takes."""
    Image.init()
    readable = {s for s, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(s for s in _PHOTO_SUFFIXES if s in readable)


# Why an image file could not be decoded; the first part of an item's ``skipped`` reason
# ("<reason>: <detail>"), which the reports count per reason.
UNIDENTIFIED = "not an image format Pillow can identify"
EMPTY_FILE = "empty file"
TOO_LARGE = "more pixels than Pillow's decompression-bomb limit"
CORRUPT = "corrupt or truncated image data"
UNREADABLE = "file cannot be read"


class ImageDecodeError(RuntimeError):
    """An image file that cannot be decoded: ``reason`` (one of this module's reasons) and
    the decoder's ``detail``; the message names the file. (``ImageDecodeError(message)``
    alone also works, as DataLoader workers re-raise with the message only.)"""

    def __init__(
        self, message: str, *, path: Path | None = None, reason: str = "", detail: str = ""
    ) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason
        self.detail = detail

    @classmethod
    def of(cls, path: Path, reason: str, detail: str) -> ImageDecodeError:
        return cls(
            f"cannot decode image {path}: {reason} ({detail})",
            path=path,
            reason=reason,
            detail=detail,
        )


def read_rgb_image(path: str | Path) -> torch.Tensor:
    """Decode an image file as uint8 RGB ``[3, H, W]``, as the training set decodes its images
    (Pillow, EXIF orientation applied, converted to RGB). Raises ``ImageDecodeError`` whose
    ``reason`` says why not."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError.of(path, EMPTY_FILE, "0 bytes")
        return decode_image_rgb(path)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError.of(path, UNIDENTIFIED, str(exc)) from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError.of(path, TOO_LARGE, str(exc)) from exc
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise ImageDecodeError.of(path, UNREADABLE, str(exc)) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's plugins raise all three
        raise ImageDecodeError.of(path, CORRUPT, str(exc)) from exc


@dataclass
class FolderListing:
    """What ``ImageFiles.from_folder`` found: the image files taken (sorted by relative path)
    with their image ids, and the other files, ignored but counted per suffix."""

    image_dir: Path
    paths: list[Path]
    image_ids: list[str]
    ignored_files: list[Path]

    @property
    def in_subfolders(self) -> int:
        return sum("/" in image_id for image_id in self.image_ids)

    def ignored_by_suffix(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for path in self.ignored_files:
            suffix = path.suffix.lower() or "(no suffix)"
            counts[suffix] = counts.get(suffix, 0) + 1
        return dict(sorted(counts.items()))


def list_image_folder(image_dir: str | Path) -> FolderListing:
    """Every image file under ``image_dir``, subfolders included, whose suffix (any case) is
    one of ``image_suffixes()``; the image id is the path relative to ``image_dir`` without
    the suffix, with ``/`` between folders (``a.jpg`` -> ``a``, ``sub/b.PNG`` -> ``sub/b``).
    Two files with one id (``a.jpg`` and ``a.png``) are an error naming both: a submission
    row could not say which image it is about."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir} (image_dir)")
    suffixes = image_suffixes()
    taken: dict[str, Path] = {}
    ignored: list[Path] = []
    for path in sorted(p for p in image_dir.rglob("*") if not p.is_dir()):
        if path.suffix.lower() not in suffixes:
            ignored.append(path)
            continue
        image_id = path.relative_to(image_dir).with_suffix("").as_posix()
        if image_id in taken:
            raise ValueError(
                f"two image files have the image id {image_id!r}: {taken[image_id]} and {path}; "
                "rename or move one of them"
            )
        taken[image_id] = path
    if not taken:
        raise FileNotFoundError(
            f"no image files in {image_dir} or its subfolders (looked for "
            f"{', '.join(sorted(suffixes))} in any case; {len(ignored)} other files)"
        )
    image_ids = sorted(taken)
    return FolderListing(image_dir, [taken[i] for i in image_ids], image_ids, ignored)


class ImageFiles(torch.utils.data.Dataset):
    """Image files given by path, for prediction where no annotation exists (``from_folder``:
    every image file of a folder and its subfolders). Items are ``(image float [3, H, W] in
    [0, 1], {"image_id": str})`` like the training set's; the image id is the file stem unless
    ``image_ids`` are given. ``image_size`` resizes every image to that square side (None keeps
    each image's size). A file that cannot be decoded raises ``ImageDecodeError`` naming it
    (``strict=True``) or gives a blank item whose target has ``skipped``:
    ``"<reason>: <file> (<detail>)"`` (``strict=False``; ``predict`` lists it in
    ``skipped_images``)."""

    def __init__(
        self,
        paths: list[Path],
        *,
        image_size: int | None = None,
        image_ids: list[str] | None = None,
        strict: bool = True,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_ids = list(image_ids) if image_ids is not None else [p.stem for p in self.paths]
        if len(self.image_ids) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.image_ids)} image ids")
        self.image_size = image_size
        self.strict = strict
        self.listing: FolderListing | None = None

    @classmethod
    def from_folder(
        cls, image_dir: str | Path, *, image_size: int | None = None, strict: bool = True
    ) -> ImageFiles:
        listing = list_image_folder(image_dir)
        files = cls(
            listing.paths, image_size=image_size, image_ids=listing.image_ids, strict=strict
        )
        files.listing = listing
        return files

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        image_id = self.image_ids[i]
        try:
            image = read_rgb_image(self.paths[i])
        except ImageDecodeError as exc:
            if self.strict:
                raise
            side = int(self.image_size) if self.image_size is not None else 32
            skipped = f"{exc.reason}: {exc.path} ({exc.detail})"
            return torch.zeros(3, side, side), {"image_id": image_id, "skipped": skipped}
        if self.image_size is not None:
            image = resize(image, [int(self.image_size)] * 2, antialias=True)
        return image.float().div_(255.0), {"image_id": image_id}


def skipped_by_reason(
    skipped: list[tuple[str, str]], examples: int = 5
) -> dict[str, dict[str, Any]]:
    """``(image id, "<reason>: <detail>")`` pairs counted per reason, with a few examples
    (``{"image_id": ..., "detail": ...}``) each; JSON-ready."""
    report: dict[str, dict[str, Any]] = {}
    for image_id, text in skipped:
        reason, _, detail = text.partition(": ")
        entry = report.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < examples:
            entry["examples"].append({"image_id": image_id, "detail": detail})
    return report
