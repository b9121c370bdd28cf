"""A compact, memory-mapped columnar cache of box annotations (the annotation index): its
writer and its reader, one file format.

Built once from a bbox CSV (12M rows for the Open Images Challenge train set) into a folder of
numpy ``.npy`` files that are opened with ``mmap_mode="r"``: opening takes milliseconds, and
DataLoader workers share the pages through the OS page cache instead of each holding its own
copy (pickling an index sends only its folder path; the worker maps the files again).

Layout of ``<cache_dir>/annotation-index-<key>/`` (images sorted by image id, the boxes of
one image contiguous and in file order)::

    image_ids.npy       bytes  [I]      UTF-8 image ids, sorted
    image_offsets.npy   int64  [I + 1]  boxes of image i are rows offsets[i]:offsets[i+1]
    boxes.npy           float32 [N, 4]  xmin, ymin, xmax, ymax, normalised
    class_ids.npy       int16  [N]      class index in hierarchy.mids order
    flags.npy           uint8  [N]      bits FLAG_GROUP_OF | FLAG_OCCLUDED | ...
    class_offsets.npy   int64  [C + 1]  CSR: images of class k are
    class_images.npy    int32  [P]        class_images[class_offsets[k]:class_offsets[k+1]]
    class_box_counts.npy int64 [C]
    label_offsets.npy   int64  [I + 1]  image-level labels of image i (file order) are rows
    label_class_ids.npy int16  [L]        label_offsets[i]:label_offsets[i+1] of these two
    label_confidence.npy int8  [L]      1 = verified present, 0 = verified absent
    manifest.json       sources (path, size, mtime, sha256), classes, counts, read reports

The index holds everything the Open Images metric needs of a split (boxes, group-of flags,
verified image-level labels), so the evaluator's ground truth is built from the index the
loader uses (``lsdet.evaluation.load_ground_truth_from_index``) without a second read.

The key hashes the source paths, the class list and the reader settings; the index is rebuilt
when a source file's size or modification time differs from the manifest. The manifest also
keeps the readers' reports (rows skipped with ``strict=False``, per reason, with examples:
:attr:`AnnotationIndex.read_report`) and a SHA-256 of each source file's content
(:attr:`AnnotationIndex.source_sha256`, :attr:`AnnotationIndex.content_fingerprint`), so a
cached index still says what was skipped and what data it was built from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from lsdet.data.formats import read_split_annotations
from lsdet.data.hierarchy import Hierarchy

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 2  # 2: image-level labels, source hashes
FLAG_GROUP_OF = 1
FLAG_OCCLUDED = 2
FLAG_TRUNCATED = 4
FLAG_DEPICTION = 8
FLAG_INSIDE = 16
FLAG_BITS = {
    "IsGroupOf": FLAG_GROUP_OF,
    "IsOccluded": FLAG_OCCLUDED,
    "IsTruncated": FLAG_TRUNCATED,
    "IsDepiction": FLAG_DEPICTION,
    "IsInside": FLAG_INSIDE,
}
_ARRAYS = (
    "image_ids",
    "image_offsets",
    "boxes",
    "class_ids",
    "flags",
    "class_offsets",
    "class_images",
    "class_box_counts",
    "label_offsets",
    "label_class_ids",
    "label_confidence",
)
_HASH_CHUNK_BYTES = 1 << 24


@dataclass(frozen=True)
class ImageAnnotations:
    """The boxes of one image (views into the memory-mapped arrays)."""

    boxes: np.ndarray  # float32 [n, 4] normalised xmin, ymin, xmax, ymax
    class_ids: np.ndarray  # int16 [n] in hierarchy.mids order
    flags: np.ndarray  # uint8 [n]

    @property
    def is_group_of(self) -> np.ndarray:
        return (self.flags & FLAG_GROUP_OF) != 0


class AnnotationIndex:
    """Memory-mapped per-image box annotations; build with :meth:`build_or_open`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / "manifest.json"
        try:
            self.manifest: dict = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FileNotFoundError(f"{manifest_path}: no readable index manifest") from exc
        self.mids: list[str] = self.manifest["mids"]
        arrays = {name: np.load(self.directory / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        self.image_id_bytes: np.ndarray = arrays["image_ids"]
        self.image_offsets: np.ndarray = arrays["image_offsets"]
        self.boxes: np.ndarray = arrays["boxes"]
        self.class_ids: np.ndarray = arrays["class_ids"]
        self.flags: np.ndarray = arrays["flags"]
        self._class_offsets: np.ndarray = arrays["class_offsets"]
        self._class_images: np.ndarray = arrays["class_images"]
        self._class_box_counts: np.ndarray = arrays["class_box_counts"]
        self.label_offsets: np.ndarray = arrays["label_offsets"]
        self.label_class_ids: np.ndarray = arrays["label_class_ids"]
        self.label_confidence: np.ndarray = arrays["label_confidence"]
        self._image_ids: np.ndarray | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build_or_open(
        cls,
        bbox_csv: str | Path,
        hierarchy: Hierarchy,
        cache_dir: str | Path,
        *,
        image_labels_csv: str | Path | None = None,
        strict: bool = True,
    ) -> AnnotationIndex:
        """Open the cached index of ``bbox_csv``, (re)building it when missing or stale.

        ``image_labels_csv`` (optional) adds the verified image-level labels (and so the
        images that have labels but no box, with zero boxes). Rows of classes outside a
        subset hierarchy (``hierarchy.excluded_mids``) are dropped and counted in the report;
        MIDs the hierarchy does not know at all are errors naming the file and line, or with
        ``strict=False`` skipped and counted (:attr:`read_report`).
        """
        sources = [Path(bbox_csv)] + ([Path(image_labels_csv)] if image_labels_csv else [])
        key_text = json.dumps(
            {
                "version": INDEX_FORMAT_VERSION,
                "sources": [str(path.resolve()) for path in sources],
                "mids": hierarchy.mids,
                "excluded_mids": hierarchy.excluded_mids,
                "strict": strict,
            }
        )
        key = hashlib.sha1(key_text.encode()).hexdigest()[:16]
        directory = Path(cache_dir) / f"annotation-index-{key}"
        directory.parent.mkdir(parents=True, exist_ok=True)
        # Processes that start together (side-by-side runs, DataLoader set-up) must not build
        # the same index at once: one would replace the folder the other is opening.
        with FileLock(str(directory) + ".lock"):
            if directory.is_dir():
                try:
                    index = cls(directory)
                except (FileNotFoundError, OSError, ValueError, KeyError):
                    index = None
                current = _describe_sources(sources)
                if index is not None and _same_stats(index.manifest.get("sources"), current):
                    return index
                if index is None:
                    logger.warning("annotation index at %s is incomplete: rebuilding", directory)
                else:
                    changed = [
                        source["path"]
                        for source, old in zip(current, index.manifest["sources"], strict=False)
                        if not _same_stats([old], [source])
                    ]
                    logger.warning(
                        "annotation index at %s: %s changed (size or modification time): "
                        "rebuilding",
                        directory,
                        ", ".join(changed) or "a source file",
                    )
            return cls.build(
                bbox_csv, hierarchy, directory, image_labels_csv=image_labels_csv, strict=strict
            )

    @classmethod
    def build(
        cls,
        bbox_csv: str | Path,
        hierarchy: Hierarchy,
        directory: str | Path,
        *,
        image_labels_csv: str | Path | None = None,
        strict: bool = True,
    ) -> AnnotationIndex:
        """Read the CSV(s) and write the index into ``directory`` (replacing what is there)."""
        started = time.perf_counter()
        directory = Path(directory)
        sources = [Path(bbox_csv)] + ([Path(image_labels_csv)] if image_labels_csv else [])
        source_stats = _describe_sources(sources)  # before reading: a later edit => stale
        for described, path in zip(source_stats, sources, strict=True):
            described["sha256"] = _sha256_of_file(path)  # also warms the page cache for pyarrow
        num_classes = hierarchy.num_classes
        if num_classes > np.iinfo(np.int16).max:
            raise ValueError(f"{num_classes} classes do not fit the int16 class ids")

        table, labels = read_split_annotations(hierarchy, bbox_csv, image_labels_csv, strict=strict)
        reports = [table.report.to_dict()]
        used = np.bincount(table.image_codes, minlength=len(table.image_id_values)) > 0
        image_ids = table.image_id_values[used]
        if labels is not None:
            reports.append(labels.report.to_dict())
            labelled = np.bincount(labels.image_codes, minlength=len(labels.image_id_values)) > 0
            image_ids = np.union1d(image_ids, labels.image_id_values[labelled])

        image_id_bytes = np.array([image_id.encode() for image_id in image_ids])
        if len(image_id_bytes) == 0:
            image_id_bytes = np.zeros(0, dtype="S1")
        if np.all(image_id_bytes[1:] >= image_id_bytes[:-1]):
            image_order = np.arange(len(image_id_bytes))
        else:
            image_order = np.argsort(image_id_bytes, kind="stable")
        image_id_bytes = image_id_bytes[image_order]
        num_images = len(image_id_bytes)

        # Map the reader's image codes to positions in the sorted id list.
        used_codes = np.flatnonzero(used)
        position_of_code = np.full(len(table.image_id_values), -1, dtype=np.int64)
        if image_labels_csv is None:
            position_of_code[used_codes[image_order]] = np.arange(num_images)
        else:
            position_of_code[used_codes] = _positions(
                image_id_bytes, table.image_id_values[used_codes]
            )
        box_image = position_of_code[table.image_codes]
        del position_of_code

        # Image-level labels grouped by image, file order within an image.
        if image_labels_csv is None:
            label_offsets = np.zeros(num_images + 1, dtype=np.int64)
            label_class_ids = np.zeros(0, dtype=np.int16)
            label_confidence = np.zeros(0, dtype=np.int8)
        else:
            label_code_position = np.full(len(labels.image_id_values), -1, dtype=np.int64)
            labelled_codes = np.flatnonzero(labelled)
            label_code_position[labelled_codes] = _positions(
                image_id_bytes, labels.image_id_values[labelled_codes]
            )
            label_image = label_code_position[labels.image_codes]
            label_order = np.argsort(label_image, kind="stable")
            label_offsets = np.zeros(num_images + 1, dtype=np.int64)
            np.cumsum(np.bincount(label_image, minlength=num_images), out=label_offsets[1:])
            label_class_ids = labels.label_codes[label_order].astype(np.int16)
            label_confidence = labels.confidence[label_order].astype(np.int8)
            del labels, label_image, label_order, label_code_position

        # Group the boxes by image, keeping file order within an image. Open Images files are
        # sorted by ImageID already: then this is the identity and nothing is copied.
        if np.all(box_image[1:] >= box_image[:-1]):
            box_order = slice(None)
        else:
            box_order = np.argsort(box_image, kind="stable")
            box_image = box_image[box_order]
        image_offsets = np.zeros(num_images + 1, dtype=np.int64)
        np.cumsum(np.bincount(box_image, minlength=num_images), out=image_offsets[1:])
        class_ids = table.label_codes[box_order].astype(np.int16)
        flags = np.zeros(len(class_ids), dtype=np.uint8)
        for name, bit in FLAG_BITS.items():
            if name in table.flags:
                flags |= (table.flags[name][box_order] == 1).astype(np.uint8) * np.uint8(bit)
        boxes = table.boxes[box_order]
        del table, box_order

        # CSR of the images of each class. A stable sort of the int16 class ids (a radix sort
        # in numpy) keeps each class's images ascending, as the boxes are sorted by image;
        # then drop repeats of the same (class, image) pair.
        by_class = np.argsort(class_ids, kind="stable")
        pair_class = class_ids[by_class]
        pair_image = box_image[by_class].astype(np.int32)
        del by_class, box_image
        first_of_pair = np.ones(len(pair_class), dtype=bool)
        first_of_pair[1:] = (pair_class[1:] != pair_class[:-1]) | (
            pair_image[1:] != pair_image[:-1]
        )
        class_images = pair_image[first_of_pair]
        class_offsets = np.zeros(num_classes + 1, dtype=np.int64)
        np.cumsum(
            np.bincount(pair_class[first_of_pair], minlength=num_classes),
            out=class_offsets[1:],
        )
        del pair_class, pair_image, first_of_pair
        class_box_counts = np.bincount(class_ids, minlength=num_classes).astype(np.int64)

        arrays = {
            "image_ids": image_id_bytes,
            "image_offsets": image_offsets,
            "boxes": boxes,
            "class_ids": class_ids,
            "flags": flags,
            "class_offsets": class_offsets,
            "class_images": class_images,
            "class_box_counts": class_box_counts,
            "label_offsets": label_offsets,
            "label_class_ids": label_class_ids,
            "label_confidence": label_confidence,
        }
        manifest = {
            "version": INDEX_FORMAT_VERSION,
            "sources": source_stats,
            "mids": hierarchy.mids,
            "num_images": num_images,
            "num_boxes": len(class_ids),
            "strict": strict,
            "reports": reports,
            "build_seconds": round(time.perf_counter() - started, 3),
        }
        _write_atomically(directory, arrays, manifest)
        logger.info("built annotation index %s in %.1f s", directory, manifest["build_seconds"])
        return cls(directory)

    # ------------------------------------------------------------------ access
    @property
    def num_images(self) -> int:
        return len(self.image_id_bytes)

    @property
    def num_boxes(self) -> int:
        return len(self.class_ids)

    @property
    def num_classes(self) -> int:
        return len(self.mids)

    def __len__(self) -> int:
        return self.num_images

    @property
    def image_ids(self) -> np.ndarray:
        """All image ids as a str array (decoded on first use; prefer :meth:`image_id`)."""
        if self._image_ids is None:
            self._image_ids = np.char.decode(np.asarray(self.image_id_bytes), "utf-8")
        return self._image_ids

    def image_id(self, image_index: int) -> str:
        return bytes(self.image_id_bytes[image_index]).decode()

    def annotations(self, image_index: int) -> ImageAnnotations:
        start, stop = self.image_offsets[image_index], self.image_offsets[image_index + 1]
        return ImageAnnotations(
            self.boxes[start:stop], self.class_ids[start:stop], self.flags[start:stop]
        )

    def num_boxes_per_image(self) -> np.ndarray:
        return np.diff(self.image_offsets)

    def class_image_counts(self) -> np.ndarray:
        """Number of images with at least one box of each class (as annotated), int64 [C]."""
        return np.diff(self._class_offsets)

    def class_image_counts_with_descendants(self, descendants: np.ndarray) -> np.ndarray:
        """Images holding class k or any descendant of k, int64 [C] (``descendants[k, j]``:
        j is below k). This is a class's frequency in reports: a parent is as frequent as its
        leaves together, whereas parents are rarely boxed as such."""
        offsets = np.asarray(self._class_offsets, dtype=np.int64)
        counts = np.diff(offsets)
        for k in np.flatnonzero(np.asarray(descendants).any(axis=1)):
            members = np.concatenate([[k], np.flatnonzero(descendants[k])])
            images = np.concatenate(
                [self._class_images[offsets[m] : offsets[m + 1]] for m in members]
            )
            counts[k] = len(np.unique(images))
        return counts

    def class_box_counts(self) -> np.ndarray:
        """Number of boxes of each class (as annotated, not expanded), int64 [C]."""
        return np.asarray(self._class_box_counts)

    def class_to_images(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR ``(offsets [C + 1] int64, image_indices int32)``: sorted, unique per class."""
        return self._class_offsets, self._class_images

    @property
    def reports(self) -> list[dict]:
        """The readers' reports of the build, one per source file (rows read, kept, skipped
        per reason, examples); kept in the manifest, so a cached index returns them too."""
        return self.manifest["reports"]

    @property
    def read_report(self) -> dict:
        """JSON-ready summary of what the build read and skipped (``strict=False``), the same
        whether the index was just built or opened from the cache: ``rows_skipped`` (all
        files), ``strict`` and ``files`` (:attr:`reports`). Copy it into a run's records."""
        return {
            "index": str(self.directory),
            "strict": self.manifest.get("strict"),
            "rows_skipped": int(sum(sum(r["skipped"].values()) for r in self.reports)),
            "files": self.reports,
        }

    @property
    def source_sha256(self) -> dict[str, str]:
        """SHA-256 of each source file's content at build time, by role (``bbox_csv``,
        ``image_labels_csv``); independent of where the files are."""
        return {source["role"]: source["sha256"] for source in self.manifest["sources"]}

    @property
    def content_fingerprint(self) -> str:
        """One SHA-256 over :attr:`source_sha256`: equal for the same annotation content
        wherever the files lie (e.g. data staged to a node's local disk), different when a
        file changed. Compare it to refuse resuming a run on changed training data."""
        text = json.dumps(self.source_sha256, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        return {"directory": str(self.directory)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])

    def __repr__(self) -> str:
        return (
            f"AnnotationIndex({self.directory}, {self.num_images} images, "
            f"{self.num_boxes} boxes, {self.num_classes} classes)"
        )


def _describe_sources(paths: list[Path]) -> list[dict]:
    """Role, path, size and modification time of each source (the staleness check)."""
    described = []
    for role, path in zip(("bbox_csv", "image_labels_csv"), paths, strict=False):
        stat = path.stat()
        described.append(
            {
                "role": role,
                "path": str(path.resolve()),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
        )
    return described


def _same_stats(recorded: list[dict] | None, current: list[dict]) -> bool:
    """Whether the recorded sources have the current paths, sizes and modification times."""
    keys = ("path", "size", "mtime_ns")
    if recorded is None or len(recorded) != len(current):
        return False
    return all(
        all(old.get(key) == new[key] for key in keys)
        for old, new in zip(recorded, current, strict=True)
    )


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _positions(sorted_bytes: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    keys = np.array([image_id.encode() for image_id in image_ids], dtype=sorted_bytes.dtype)
    return np.searchsorted(sorted_bytes, keys)


def _write_atomically(directory: Path, arrays: dict[str, np.ndarray], manifest: dict) -> None:
    def write(staging: Path) -> None:
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", np.ascontiguousarray(array))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))

    write_folder_atomically(directory, write)


def write_folder_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """``write(staging)`` fills a fresh sibling folder, which then replaces ``directory``
    (concurrent readers never see a half-written folder; a failed write leaves the old
    folder as it was)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        write(staging)
        if directory.exists():
            old = directory.with_name(f".{directory.name}-old-{os.getpid()}")
            os.replace(directory, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
