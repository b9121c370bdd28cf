"""Readers for the Open Images CSV files: class descriptions, boxes, image-level labels, and
the ground truth of a split (``read_split_annotations``). The readers share the row checks,
the bad-row report and the dictionary-encoded tables.

The big files (12M box rows) are parsed by pyarrow's multi-threaded CSV reader and checked with
vectorised numpy masks. String columns come back dictionary-encoded: per row an int32 code into
a small array of distinct values (``image_codes`` into ``image_id_values``, ``label_codes`` into
``label_values``), so no Python object is created per row; ``.image_ids`` and ``.mids`` give
the per-row strings when wanted.

Bad input: a malformed row (wrong number of fields, a value that is not a number, a missing
value), an unknown MID (when ``known_mids`` is given), a coordinate outside [0, 1] or
min > max, a Confidence or flag outside its values. With ``strict=True`` (default) the first
one raises :class:`DataFormatError` naming the file and line; with ``strict=False`` bad rows
are skipped, counted per reason in ``table.report`` (with a few example lines) and a warning
is logged.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

if TYPE_CHECKING:  # hierarchy.py imports this module's class-description reader
    from lsdet.data.hierarchy import Hierarchy

logger = logging.getLogger(__name__)

BOX_REQUIRED_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf")
BOX_FLAG_COLUMNS = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
COORDINATE_COLUMNS = ("XMin", "YMin", "XMax", "YMax")  # the order of BoxTable.boxes columns
IMAGE_LABEL_REQUIRED_COLUMNS = ("ImageID", "LabelName", "Confidence")
MAX_EXAMPLES = 5
# How a user asks for skipping, from Python and from the command line (Hydra key).
STRICT_HINT = (
    "to skip and count bad rows instead, pass strict=False (data.strict=false on the command line)"
)
_HEADER_WORDS = {"label", "labelname", "mid", "id", "name", "displayname", "display_name"}


class DataFormatError(ValueError):
    """An input file that does not follow the expected format (names the file and line)."""


@dataclass
class ReadReport:
    """What a reader read and what it skipped (``strict=False``), per reason."""

    path: Path
    rows_read: int = 0
    rows_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    excluded: int = 0  # rows of classes in ``ignore_mids``: dropped on request, not errors
    examples: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, text)
    # How summary() names what was read and where an example stands (a subclass for another
    # kind of file, e.g. the COCO reader's report, names its own).
    rows_noun: ClassVar[str] = "rows"
    example_place: ClassVar[str] = "line"

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.path}: read {self.rows_read} {self.rows_noun}, kept {self.rows_kept}"
        if self.excluded:
            text += f", excluded {self.excluded} of unselected classes"
        if self.skipped:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in self.skipped.items())
            text += f", skipped {self.rows_skipped} ({reasons})"
            for place, reason, row in self.examples:
                text += f"\n  {self.example_place} {place}: {reason}: {row}"
        return text

    @classmethod
    def from_dict(cls, data: dict) -> ReadReport:
        """The report :meth:`to_dict` wrote (e.g. kept in an annotation index's manifest)."""
        return cls(
            path=Path(data["path"]),
            rows_read=int(data["rows_read"]),
            rows_kept=int(data["rows_kept"]),
            skipped={str(reason): int(count) for reason, count in data["skipped"].items()},
            excluded=int(data.get("excluded", 0)),
            examples=[
                (int(line), str(reason), str(text)) for line, reason, text in data["examples"]
            ],
        )

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "skipped": dict(self.skipped),
            "excluded": self.excluded,
            "examples": [list(example) for example in self.examples],
        }


class _DictionaryCodedRows:
    """Per-row image ids and MIDs of a table that stores them as dictionary codes."""

    image_codes: np.ndarray
    image_id_values: np.ndarray
    label_codes: np.ndarray
    label_values: np.ndarray

    def __len__(self) -> int:
        return len(self.label_codes)

    @property
    def image_ids(self) -> np.ndarray:
        """Per-row image id (object array of str)."""
        return self.image_id_values[self.image_codes]

    @property
    def mids(self) -> np.ndarray:
        """Per-row MID (object array of str)."""
        return self.label_values[self.label_codes]


@dataclass
class BoxTable(_DictionaryCodedRows):
    """Box annotations, one row per box, columnar.

    ``boxes`` is float32 ``[N, 4]`` (xmin, ymin, xmax, ymax), normalised. ``label_values``
    is ``known_mids`` in its order when it was given (so ``label_codes`` are class indices of
    that list), else the distinct MIDs of the file in order of first appearance. ``flags``
    holds the optional flag columns that were present (int8, -1 = unknown as in some Open
    Images releases); ``is_group_of`` is True where IsGroupOf == 1.
    """

    path: Path
    image_codes: np.ndarray
    image_id_values: np.ndarray
    label_codes: np.ndarray
    label_values: np.ndarray
    boxes: np.ndarray
    is_group_of: np.ndarray
    confidence: np.ndarray | None
    flags: dict[str, np.ndarray]
    report: ReadReport


@dataclass
class ImageLabelTable(_DictionaryCodedRows):
    """Image-level labels, one row per (image, class): ``confidence`` 1 = verified present,
    0 = verified absent (int8). Code conventions as in :class:`BoxTable`."""

    path: Path
    image_codes: np.ndarray
    image_id_values: np.ndarray
    label_codes: np.ndarray
    label_values: np.ndarray
    confidence: np.ndarray
    report: ReadReport


# ---------------------------------------------------------------------------- descriptions
def read_class_descriptions(path: str | Path) -> dict[str, str]:
    """Read ``MID,Name`` rows (header optional, names may be quoted) into an ordered dict.

    The keys of the result are a class subset for ``Hierarchy.from_json(..., subset_mids=)``.
    """
    path = Path(path)
    descriptions: dict[str, str] = {}
    with _open_text(path) as handle:
        for row_number, row in enumerate(csv.reader(handle)):
            line = row_number + 1
            if not row:
                continue
            if row_number == 0 and _looks_like_header(row):
                continue
            if len(row) != 2:
                raise DataFormatError(
                    f"{path}, line {line}: expected 2 fields (MID,Name), got {len(row)}: "
                    f"{','.join(row)!r} (quote names that contain commas)"
                )
            mid, name = row[0].strip(), row[1]
            if not mid:
                raise DataFormatError(f"{path}, line {line}: empty MID")
            if mid in descriptions:
                raise DataFormatError(f"{path}, line {line}: duplicate MID {mid!r}")
            descriptions[mid] = name
    if not descriptions:
        raise DataFormatError(f"{path}: no class descriptions found")
    return descriptions


def _looks_like_header(row: list[str]) -> bool:
    return any(value.strip().lower() in _HEADER_WORDS for value in row[:2])


# ---------------------------------------------------------------------------- boxes
def read_bbox_csv(
    path: str | Path,
    *,
    known_mids: Iterable[str] | None = None,
    ignore_mids: Iterable[str] | None = None,
    strict: bool = True,
) -> BoxTable:
    """Read a bbox CSV: the 13-column V4-V6 layout or the 7-column Challenge validation layout.

    The layout is recognised by the header; columns may come in any order and extra columns
    (e.g. the XClick columns of V5/V6) are ignored. Rows of a MID in ``ignore_mids`` (e.g.
    ``hierarchy.excluded_mids``: classes of the full hierarchy outside the selected subset) are
    dropped and counted in ``report.excluded``, not treated as unknown.
    """
    path = Path(path)
    header = _read_header(path, BOX_REQUIRED_COLUMNS)
    numeric = [name for name in ("Confidence", *COORDINATE_COLUMNS) if name in header]
    flag_columns = [name for name in BOX_FLAG_COLUMNS if name in header]
    raw = _read_table(path, header, ["ImageID", "LabelName"], numeric, flag_columns)

    problems = _Problems(len(raw.image_codes))
    label_codes, label_values = _check_labels(raw, known_mids, ignore_mids, problems)
    coordinates = {name: raw.numbers[name] for name in COORDINATE_COLUMNS}
    for name, values in coordinates.items():
        problems.add(np.isnan(values), f"missing or non-numeric {name}")
        problems.add((values < 0) | (values > 1), f"{name} outside [0, 1]")
    problems.add(coordinates["XMin"] > coordinates["XMax"], "XMin > XMax")
    problems.add(coordinates["YMin"] > coordinates["YMax"], "YMin > YMax")
    confidence = raw.numbers.get("Confidence")
    if confidence is not None:
        problems.add(np.isnan(confidence) | (confidence < 0) | (confidence > 1), "bad Confidence")
    for name in flag_columns:
        values = raw.numbers[name]
        problems.add(~((values == 0) | (values == 1) | (values == -1)), f"{name} not in -1/0/1")

    keep, report = problems.resolve(path, header, raw, strict)
    boxes = np.stack([coordinates[name][keep] for name in COORDINATE_COLUMNS], axis=1)
    flags = {name: raw.numbers[name][keep].astype(np.int8) for name in flag_columns}
    return BoxTable(
        path=path,
        image_codes=raw.image_codes[keep],
        image_id_values=raw.image_id_values,
        label_codes=label_codes[keep],
        label_values=label_values,
        boxes=np.ascontiguousarray(boxes, dtype=np.float32),
        is_group_of=flags["IsGroupOf"] == 1,
        confidence=None if confidence is None else confidence[keep],
        flags=flags,
        report=report,
    )


def read_image_labels_csv(
    path: str | Path,
    *,
    known_mids: Iterable[str] | None = None,
    ignore_mids: Iterable[str] | None = None,
    strict: bool = True,
) -> ImageLabelTable:
    """Read an image-level labels CSV (``ImageID,Source,LabelName,Confidence``).

    Confidence must be 0 (verified absent) or 1 (verified present). ``known_mids`` and
    ``ignore_mids`` as in :func:`read_bbox_csv`.
    """
    path = Path(path)
    header = _read_header(path, IMAGE_LABEL_REQUIRED_COLUMNS)
    raw = _read_table(path, header, ["ImageID", "LabelName"], ["Confidence"], [])
    problems = _Problems(len(raw.image_codes))
    label_codes, label_values = _check_labels(raw, known_mids, ignore_mids, problems)
    confidence = raw.numbers["Confidence"]
    problems.add(~((confidence == 0) | (confidence == 1)), "Confidence not 0 or 1")
    keep, report = problems.resolve(path, header, raw, strict)
    return ImageLabelTable(
        path=path,
        image_codes=raw.image_codes[keep],
        image_id_values=raw.image_id_values,
        label_codes=label_codes[keep],
        label_values=label_values,
        confidence=confidence[keep].astype(np.int8),
        report=report,
    )


def read_split_annotations(
    hierarchy: Hierarchy,
    bbox_csv: str | Path,
    image_labels_csv: str | Path | None = None,
    *,
    strict: bool = True,
) -> tuple[BoxTable, ImageLabelTable | None]:
    """The ground truth of one split as read from its files: the boxes and (when
    ``image_labels_csv`` is given) the verified image-level labels, checked against the
    classes of ``hierarchy``: an unknown MID is an error naming the file and line
    (``strict=False``: skipped and counted), rows of classes left out of a subset hierarchy
    (``hierarchy.excluded_mids``) are dropped and counted as excluded. The annotation index
    and the evaluator's ground truth both read a split through this function."""
    boxes = read_bbox_csv(
        bbox_csv, known_mids=hierarchy.mids, ignore_mids=hierarchy.excluded_mids, strict=strict
    )
    if image_labels_csv is None:
        return boxes, None
    labels = read_image_labels_csv(
        image_labels_csv,
        known_mids=hierarchy.mids,
        ignore_mids=hierarchy.excluded_mids,
        strict=strict,
    )
    return boxes, labels


# ---------------------------------------------------------------------------- internals
@dataclass
class _RawTable:
    image_codes: np.ndarray
    image_id_values: np.ndarray
    label_codes: np.ndarray
    label_values: np.ndarray
    numbers: dict[str, np.ndarray]
    malformed: list[tuple[int | None, str]]  # rows with a wrong number of fields


class _Problems:
    """Per-row masks of problems, in the order they were added (first reason wins)."""

    def __init__(self, num_rows: int):
        self.reason_of_row = np.full(num_rows, -1, dtype=np.int16)
        self.reasons: list[str] = []
        self.excluded: np.ndarray | None = None  # rows dropped on request (ignore_mids)

    def add(self, mask: np.ndarray, reason: str) -> None:
        new = mask & (self.reason_of_row < 0)
        if new.any():
            self.reason_of_row[new] = len(self.reasons)
            self.reasons.append(reason)

    def resolve(
        self, path: Path, header: list[str], raw: _RawTable, strict: bool
    ) -> tuple[np.ndarray | slice, ReadReport]:
        """The rows to keep (a plain slice when all are good: no copies) and the report;
        raises on the first bad line when ``strict``."""
        num_rows = len(self.reason_of_row)
        report = ReadReport(path, rows_read=num_rows + len(raw.malformed), rows_kept=num_rows)
        excluded = self.excluded if self.excluded is not None else np.zeros(num_rows, bool)
        if not self.reasons and not raw.malformed and not excluded.any():
            return slice(None), report
        good = self.reason_of_row < 0
        keep = good & ~excluded
        report.rows_kept = int(keep.sum())
        report.excluded = int((good & excluded).sum())
        if not self.reasons and not raw.malformed:
            return keep, report
        bad_rows = np.flatnonzero(~good)

        counts = np.bincount(self.reason_of_row[bad_rows], minlength=len(self.reasons))
        if raw.malformed:
            report.skipped["wrong number of fields"] = len(raw.malformed)
        for reason, count in zip(self.reasons, counts, strict=True):
            if count:
                report.skipped[reason] = int(count)
        limit = 1 if strict else MAX_EXAMPLES
        located = _locate_rows(path, len(header), bad_rows[:limit], min(limit, len(raw.malformed)))
        examples = []
        for kind, position, line, text in located:
            reason = "wrong number of fields" if kind == "malformed" else None
            if reason is None:
                reason = self.reasons[self.reason_of_row[position]]
            examples.append((line, reason, text))
        examples.sort()
        report.examples = examples[:MAX_EXAMPLES]
        if strict and not examples:  # the csv module and pyarrow disagree on the rows
            raise DataFormatError(f"{report.summary()}; {STRICT_HINT}")
        if strict:
            line, reason, text = examples[0]
            more = report.rows_skipped - 1
            raise DataFormatError(
                f"{path}, line {line}: {reason}: {text!r}"
                + (f" ({more} more bad rows)" if more else "")
                + f"; {STRICT_HINT}"
            )
        logger.warning("%s", report.summary())
        return keep, report


def _open_text(path: Path):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot open: {exc}") from exc


def _read_header(path: Path, required: tuple[str, ...]) -> list[str]:
    with _open_text(path) as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataFormatError(f"{path}: empty file (expected a header line)")
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise DataFormatError(
            f"{path}, line 1: header {','.join(header)!r} lacks columns {missing} "
            f"(expected at least {','.join(required)})"
        )
    return header


def _read_table(
    path: Path, header: list[str], string_columns: list, numeric_columns: list, int_columns: list
) -> _RawTable:
    malformed: list[tuple[int | None, str]] = []

    def on_invalid_row(row) -> str:
        malformed.append((row.number, row.text))
        return "skip"

    dictionary = pa.dictionary(pa.int32(), pa.string())
    column_types = {name: dictionary for name in string_columns}
    column_types.update({name: pa.float32() for name in numeric_columns})
    column_types.update({name: pa.int8() for name in int_columns})
    wanted = [*string_columns, *numeric_columns, *int_columns]
    read_options = pa_csv.ReadOptions(use_threads=True, block_size=1 << 24)
    parse_options = pa_csv.ParseOptions(invalid_row_handler=on_invalid_row)
    try:
        table = pa_csv.read_csv(
            path,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=pa_csv.ConvertOptions(
                column_types=column_types, include_columns=wanted
            ),
        )
        numbers = {name: _to_numpy(table.column(name)) for name in numeric_columns + int_columns}
    except pa.ArrowInvalid:
        # A value that is not a number: read those columns as text, mark bad values as NaN.
        malformed.clear()
        column_types.update({name: pa.string() for name in numeric_columns + int_columns})
        table = pa_csv.read_csv(
            path,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=pa_csv.ConvertOptions(
                column_types=column_types, include_columns=wanted
            ),
        )
        numbers = {
            name: pd.to_numeric(table.column(name).to_pandas(), errors="coerce").to_numpy(
                dtype=np.float32, na_value=np.nan
            )
            for name in numeric_columns + int_columns
        }
    image_codes, image_id_values = dictionary_codes(table.column("ImageID"))
    label_codes, label_values = dictionary_codes(table.column("LabelName"))
    return _RawTable(image_codes, image_id_values, label_codes, label_values, numbers, malformed)


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """Numeric column to numpy; nulls (empty fields) become NaN."""
    values = column.to_numpy()
    if column.null_count and values.dtype.kind != "f":
        values = column.cast(pa.float32()).to_numpy()
    return values.astype(np.float32, copy=False) if values.dtype.kind == "f" else values


def dictionary_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """int32 codes per row and the distinct values (object array), for a dictionary column."""
    chunks = pa.table({"column": column}).unify_dictionaries().column(0).chunks
    if not chunks:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=object)
    values = chunks[0].dictionary.to_numpy(zero_copy_only=False).astype(object)
    codes = np.concatenate([chunk.indices.fill_null(-1).to_numpy() for chunk in chunks])
    return codes.astype(np.int32, copy=False), values


def _check_labels(
    raw: _RawTable,
    known_mids: Iterable[str] | None,
    ignore_mids: Iterable[str] | None,
    problems: _Problems,
) -> tuple[np.ndarray, np.ndarray]:
    problems.add(_missing(raw.image_codes, raw.image_id_values), "missing ImageID")
    problems.add(_missing(raw.label_codes, raw.label_values), "missing LabelName")
    ignored = np.zeros(len(raw.label_codes), dtype=bool)
    if ignore_mids is not None:
        ignore = set(ignore_mids)
        ignored_value = np.array([mid in ignore for mid in raw.label_values] + [False])
        ignored = ignored_value[raw.label_codes]
        problems.excluded = ignored
    if known_mids is None:
        return raw.label_codes, raw.label_values
    known = list(dict.fromkeys(known_mids))
    position = {mid: k for k, mid in enumerate(known)}
    # Map the file's few distinct MIDs to positions in known_mids; -1 = unknown.
    lookup = np.array([position.get(mid, -1) for mid in raw.label_values] + [-1], dtype=np.int32)
    label_codes = lookup[raw.label_codes]  # code -1 (missing) maps to the trailing -1
    problems.add((label_codes < 0) & ~ignored, "unknown MID")
    return label_codes, np.array(known, dtype=object)


def _missing(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rows whose dictionary value is empty or null (code -1)."""
    empty = np.append(values.astype(str) == "", True)  # index -1 -> the trailing True
    return empty[codes]


def _locate_rows(
    path: Path, num_columns: int, data_rows: np.ndarray, num_malformed: int
) -> list[tuple[str, int, int, str]]:
    """Find the file lines of some parsed data rows and of the first malformed rows.

    Walks the file with the csv module (quoted newlines and blank lines as pyarrow treats
    them) only as far as needed; only called when something is wrong.
    Returns (kind, data row index or -1, line number, text) tuples.
    """
    wanted = set(int(row) for row in data_rows)
    last_wanted = max(wanted, default=-1)
    found: list[tuple[str, int, int, str]] = []
    malformed_found = 0
    data_row = -1
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        next(reader, None)  # header
        start_line = reader.line_num + 1
        for record in reader:
            line = start_line
            start_line = reader.line_num + 1
            if not record:
                continue
            if len(record) != num_columns:
                if malformed_found < num_malformed:
                    found.append(("malformed", -1, line, ",".join(record)))
                malformed_found += 1
                continue
            data_row += 1
            if data_row in wanted:
                found.append(("value", data_row, line, ",".join(record)))
            if data_row >= last_wanted and malformed_found >= num_malformed:
                break
    return found
