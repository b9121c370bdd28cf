"""Reading and writing detection predictions in the two Open Images layouts; the readers and
the writer share the checks and the final table, so what is written is what is read back.

* TF Object Detection API layout: ``ImageID,LabelName,Score,XMin,XMax,YMin,YMax``
  (one detection per row; extra columns are ignored).
* Challenge submission layout: ``ImageId,PredictionString`` where the string holds groups
  of ``LabelName Score XMin YMin XMax YMax`` separated by spaces (empty for no detection).

The layout is recognised by the header. Coordinates are normalised to [0, 1]. Bad input
(unknown MID, a score that is NaN or outside [0, 1], a coordinate outside [0, 1] or
min > max, a malformed row or PredictionString, a detection repeated with the same image,
class, score and box) raises :class:`PredictionFormatError` naming the file and line; with
``strict=False`` the bad detection (or malformed row) is skipped, counted by reason and
reported with examples in the table's ``report`` (``metrics.json`` of ``lsdet.evaluate``).

Why repeats are errors: a detector emits each detection once, so an identical row is a
writing error (a file concatenated twice, a merge of shards that overlap), and the metric
would count every copy after the first as a false positive (a file with every row twice
about halves the mAP). With ``strict=False`` the copies are dropped and counted
(``duplicate_predictions`` in the report), so such a file scores as the original.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from lsdet.data import DataFormatError
from lsdet.data.formats import STRICT_HINT, dictionary_codes
from lsdet.evaluation.core import EvaluationReport, sorted_unique

TF_COLUMNS = ("ImageID", "LabelName", "Score", "XMin", "XMax", "YMin", "YMax")
SUBMISSION_COLUMNS = ("ImageId", "PredictionString")
_MAX_EXAMPLES = 20
DUPLICATE_REASON = "duplicate detection (same image, class, score and box as an earlier one)"
_ROWS_PER_SLICE = 5_000  # submission rows parsed at a time (about 500k detections)
_ROWS_PER_BLOCK = 1 << 16  # rows hashed at a time: the temporaries stay in the cache


class PredictionFormatError(DataFormatError):
    """A predictions file that breaks the format; the message names the file and line."""


@dataclass
class PredictionTable:
    """Detections as columns. ``image_index`` points into ``image_ids`` (unique ids)."""

    image_ids: np.ndarray
    image_index: np.ndarray
    class_indices: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    layout: str
    report: EvaluationReport = field(default_factory=EvaluationReport)

    def __len__(self) -> int:
        return len(self.scores)


def detect_layout(path: str | Path) -> str:
    """``"tf"`` or ``"submission"`` from the header line of ``path``."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            header = handle.readline().strip()
    except OSError as exc:
        raise PredictionFormatError(f"{path}: cannot read: {exc}") from exc
    columns = [name.strip() for name in header.split(",")]
    if set(TF_COLUMNS) <= set(columns):
        return "tf"
    if columns == list(SUBMISSION_COLUMNS):
        return "submission"
    raise PredictionFormatError(
        f"{path}, line 1: header {header!r} is neither the TF layout "
        f"({','.join(TF_COLUMNS)}) nor the submission layout ({','.join(SUBMISSION_COLUMNS)})"
    )


def read_predictions_csv(
    path: str | Path, mids: Sequence[str], *, strict: bool = True
) -> PredictionTable:
    """Read a predictions CSV in either layout; classes are indices into ``mids``."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "tf":
        return _read_tf_layout(path, mids, strict)
    return _read_submission_layout(path, mids, strict)


class _BadRows:
    """Collects bad detections; raises on the first in strict mode."""

    def __init__(self, path: Path, strict: bool, report: EvaluationReport):
        self.path, self.strict, self.report = path, strict, report

    def add(self, reason: str, lines: np.ndarray, details: list[str]) -> None:
        """``lines`` and ``details`` describe the bad rows in file order (any length)."""
        if len(lines) == 0:
            return
        if self.strict:
            raise PredictionFormatError(
                f"{self.path}, line {lines[0]}: {reason}: {details[0]}; {STRICT_HINT}"
            )
        self.report.skipped_bad_rows[reason] = self.report.skipped_bad_rows.get(reason, 0) + len(
            lines
        )
        room = _MAX_EXAMPLES - len(self.report.bad_row_examples)
        for line, detail in list(zip(lines, details, strict=True))[: max(room, 0)]:
            self.report.bad_row_examples.append(f"line {line}: {reason}: {detail}")


def _read_csv(path: Path, column_types: dict, bad: _BadRows) -> tuple[pa.Table, np.ndarray]:
    """Read with pyarrow; rows with a wrong number of fields go to ``bad``.

    Returns the table and the sorted line numbers of those rows (to number the others).
    """
    invalid: list[tuple[int | None, str]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text))
        return "skip"

    def read(use_threads: bool) -> pa.Table:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=use_threads, encoding="utf-8"),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types,
                include_columns=list(column_types),
                null_values=[""],
                strings_can_be_null=True,
            ),
        )

    try:
        table = read(use_threads=True)
        if invalid:  # only a single-threaded read knows the line numbers
            invalid.clear()
            table = read(use_threads=False)
    except pa.ArrowInvalid as exc:
        raise PredictionFormatError(f"{path}: cannot parse as CSV: {exc}") from exc
    invalid_lines = np.array([number or 0 for number, _ in invalid], dtype=np.int64)
    bad.add(
        f"wrong number of fields (expected {len(column_types)})",
        invalid_lines,
        [repr(text[:80]) for _, text in invalid],
    )
    return table, np.sort(invalid_lines)


def _line_numbers(rows: np.ndarray, invalid_lines: np.ndarray) -> np.ndarray:
    """File line of table rows (header = line 1), skipping the lines of invalid rows."""
    valid_before = invalid_lines - 2 - np.arange(len(invalid_lines))
    return rows + 2 + np.searchsorted(valid_before, rows, side="right")


def _take_float_columns(table: pa.Table, names: Sequence[str]) -> tuple[np.ndarray, pa.Table]:
    """``[N, len(names)]`` float64 of float64 columns (nulls -> NaN), and the table without
    them. Each column is copied chunk by chunk straight into place, then dropped, so that
    its Arrow buffers are freed before the next is copied (a lower peak of memory).
    Column-major: each column contiguous, filled and checked without strided passes."""
    values = np.empty((len(names), table.num_rows), dtype=np.float64)
    for k, name in enumerate(names):
        start = 0
        for chunk in table.column(name).chunks:
            values[k, start : start + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
            start += len(chunk)
        table = table.drop_columns([name])
    return values.T, table


def _read_tf_layout(path: Path, mids: Sequence[str], strict: bool) -> PredictionTable:
    report = EvaluationReport()
    bad = _BadRows(path, strict, report)
    text_type = pa.dictionary(pa.int32(), pa.string())
    types = {"ImageID": text_type, "LabelName": text_type}
    numeric = {name: pa.float64() for name in TF_COLUMNS[2:]}
    try:
        table, invalid_lines = _read_csv(path, {**types, **numeric}, bad)
        not_numbers = None
    except PredictionFormatError as exc:
        if "conversion error" not in str(exc):
            raise
        # A value that is not a number: read the numbers as text to find the rows.
        report.skipped_bad_rows.clear()
        report.bad_row_examples.clear()
        table, invalid_lines = _read_csv(
            path, {**types, **{name: pa.string() for name in numeric}}, bad
        )
        table, not_numbers = _coerce_numbers(table, list(numeric))

    image_codes, image_ids = dictionary_codes(table.column("ImageID"))
    label_codes, labels = dictionary_codes(table.column("LabelName"))
    table = table.drop_columns(["ImageID", "LabelName"])  # coded: free their buffers
    numbers, table = _take_float_columns(table, ["Score", "XMin", "YMin", "XMax", "YMax"])
    scores, boxes = numbers[:, 0], numbers[:, 1:]
    rows = np.arange(len(scores))
    keep = _validate(
        bad,
        lines=lambda r: _line_numbers(rows[r], invalid_lines),
        image_codes=image_codes,
        label_codes=label_codes,
        labels=labels,
        mids=mids,
        scores=scores,
        boxes=boxes,
        not_numbers=not_numbers,
    )
    return _kept_predictions(
        keep, image_ids, image_codes, label_codes, labels, mids, scores, boxes, "tf", report
    )


def _coerce_numbers(table: pa.Table, names: list[str]) -> tuple[pa.Table, np.ndarray]:
    """Parse text columns as float64; returns the table and a mask of unparsable values."""
    not_numbers = np.zeros(table.num_rows, dtype=bool)
    for name in names:
        text = table.column(name).to_pandas()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        not_numbers |= np.isnan(values) & text.notna().to_numpy()
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    return table, not_numbers


def _validate(
    bad: _BadRows,
    *,
    lines,
    image_codes: np.ndarray,
    label_codes: np.ndarray,
    labels: np.ndarray,
    mids: Sequence[str],
    scores: np.ndarray,
    boxes: np.ndarray,
    not_numbers: np.ndarray | None,
    group_numbers: np.ndarray | None = None,
) -> np.ndarray:
    """Mask of the good detections; the bad ones go to ``bad`` by their first fault."""
    known_label = pd.Index(list(mids)).get_indexer(labels) >= 0
    label_ok = label_codes >= 0
    label_ok[label_ok] = known_label[label_codes[label_ok]]
    with np.errstate(invalid="ignore"):
        checks = [
            ("missing image id", image_codes < 0),
            ("unknown MID", ~label_ok),
            ("value is not a number", not_numbers if not_numbers is not None else None),
            ("score is NaN or missing", np.isnan(scores)),
            ("score outside [0, 1]", (scores < 0) | (scores > 1)),
            ("coordinate missing or outside [0, 1]", ~((boxes >= 0) & (boxes <= 1)).all(1)),
            (
                "min > max",
                (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3]),
            ),
        ]
    keep = np.ones(len(scores), dtype=bool)
    faults: list[tuple[str, np.ndarray]] = []
    for reason, failed in checks:
        if failed is None:
            continue
        rows = np.flatnonzero(failed & keep)
        keep[rows] = False
        faults.append((reason, rows))
    repeats, first_rows = _repeated_detections(keep, image_codes, label_codes, scores, boxes)
    keep[repeats] = False
    faults.append((DUPLICATE_REASON, repeats))
    first_line_of_repeat = dict(zip(repeats.tolist(), lines(first_rows).tolist(), strict=True))
    # In strict mode, report the first bad line of the file whatever its fault.
    if bad.strict:
        faults.sort(key=lambda fault: fault[1][0] if len(fault[1]) else np.iinfo(np.int64).max)
    for reason, rows in faults:
        if len(rows) == 0:
            continue
        shown = rows[:_MAX_EXAMPLES]
        details = []
        for row in shown:
            code = label_codes[row]
            label = labels[code] if code >= 0 else None
            where = f"detection {group_numbers[row] + 1}, " if group_numbers is not None else ""
            detail = (
                f"{where}LabelName={label!r} Score={float(scores[row])!r} "
                f"box(xmin,ymin,xmax,ymax)={tuple(float(v) for v in boxes[row])}"
            )
            if reason == DUPLICATE_REASON:
                detail += f" (first on line {first_line_of_repeat[int(row)]})"
            details.append(detail)
        details += [""] * (len(rows) - len(shown))
        bad.add(reason, lines(rows), details)
    return keep


def _repeated_detections(
    keep: np.ndarray,
    image_codes: np.ndarray,
    label_codes: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (among ``keep``) equal to an earlier kept row in image, class, score and box, in
    file order, and for each the row of its first occurrence.

    One sort over packed 64-bit keys (:func:`repeated_rows`), the score and the four
    coordinates compared as numbers.
    """
    everything = bool(keep.all())
    candidates = None if everything else np.flatnonzero(keep)

    def kept(values: np.ndarray) -> np.ndarray:
        return values if candidates is None else values[candidates]

    rows, first_rows = repeated_rows(
        [kept(image_codes), kept(label_codes), kept(scores), *(kept(boxes[:, k]) for k in range(4))]
    )
    if candidates is None:
        return rows, first_rows
    return candidates[rows], candidates[first_rows]


def first_equal_row(columns: list[np.ndarray]) -> np.ndarray:
    """For each row, the first row (lowest index) equal to it in every column, exactly
    (see :func:`repeated_rows`)."""
    first = np.arange(len(columns[0]), dtype=np.int64)
    rows, first_rows = repeated_rows(columns)
    first[rows] = first_rows
    return first


def repeated_rows(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The rows equal in every column to an earlier row, in order, and for each the first
    such row (lowest index). Exact: integers and floats compare as numbers (-0.0 equals
    0.0; a NaN equals nothing, not even itself).

    One sort over packed keys: a 32-bit hash of the row's values above its row index, so
    that equal rows come out adjacent, first row first, without an index sort. Each row is
    then compared with the first row of its hash; rows that differ from it (a hash
    collision) are grouped exactly by a ``lexsort`` of those few rows only.
    """
    num_rows = len(columns[0])
    none = np.zeros(0, dtype=np.int64)
    if num_rows < 2:
        return none, none
    if num_rows >= 1 << 32:
        raise ValueError("repeated_rows handles fewer than 2**32 rows")
    values = [np.asarray(column) for column in columns]
    packed = _row_hash(values)  # hash in the high half, row index in the low half
    for start in range(0, num_rows, _ROWS_PER_BLOCK):
        block = packed[start : start + _ROWS_PER_BLOCK]
        block &= np.uint64(0xFFFFFFFF00000000)
        block |= np.arange(start, start + len(block), dtype=np.uint64)
    packed.sort()
    halves = packed.view(np.uint32)  # views, no copies
    low, high = (0, 1) if sys.byteorder == "little" else (1, 0)
    hash_of, row_of = halves[high::2], halves[low::2]
    same_hash = hash_of[1:] == hash_of[:-1]
    if not same_hash.any():  # the usual case for detections: no two rows alike
        return none, none
    run_start = np.r_[True, ~same_hash]
    in_run = np.r_[same_hash, False] | ~run_start
    rows = row_of[in_run].astype(np.int64)  # run by run, in row order within a run
    run_hash = hash_of[in_run]
    run_start = run_start[in_run]
    run_first = rows[np.flatnonzero(run_start)[np.cumsum(run_start) - 1]]
    equal = np.ones(len(rows), dtype=bool)
    for column in values:
        equal &= column[rows] == column[run_first]
    first_rows = np.where(equal, run_first, rows)
    if not equal.all():  # a hash collision: the runs with a row unlike their first row
        collided_hash = sorted_unique(run_hash[~equal])
        position = np.minimum(np.searchsorted(collided_hash, run_hash), len(collided_hash) - 1)
        in_collided_run = np.flatnonzero(collided_hash[position] == run_hash)
        group = rows[in_collided_run]
        # Stable: equal rows share a run, where they are in row order already.
        order = np.lexsort([column[group] for column in values[::-1]])
        by_value = group[order]
        starts = np.zeros(len(by_value), dtype=bool)
        starts[0] = True
        for column in values:
            ordered = column[by_value]
            starts[1:] |= ordered[1:] != ordered[:-1]
        first_rows[in_collided_run[order]] = by_value[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
    repeated = first_rows != rows
    rows, first_rows = rows[repeated], first_rows[repeated]
    order = np.argsort(rows, kind="stable")
    return rows[order], first_rows[order]


def _row_hash(columns: list[np.ndarray]) -> np.ndarray:
    """A 64-bit hash per row: a sum of the columns' values (as 8-byte bit patterns) times
    constants, then a splitmix64 finaliser so that every input bit reaches the top bits.
    Computed in blocks, so that the temporaries stay in the cache.

    Float columns get even constants, which shift the sign bit out of the product, so that
    -0.0 and 0.0 hash alike (as do x and -x: a collision, which only costs time).
    """
    row_hash = np.empty(len(columns[0]), dtype=np.uint64)
    multipliers = []
    for k, column in enumerate(columns):
        multiplier = (0x9E3779B97F4A7C15 * (2 * k + 1)) % (1 << 64)  # odd, one per column
        if column.dtype.kind == "f":
            multiplier = (multiplier << 1) % (1 << 64)
        multipliers.append(np.uint64(multiplier))
    for start in range(0, len(row_hash), _ROWS_PER_BLOCK):
        block = row_hash[start : start + _ROWS_PER_BLOCK]
        block[:] = 0
        for column, multiplier in zip(columns, multipliers, strict=True):
            values = column[start : start + _ROWS_PER_BLOCK]
            wide = np.float64 if values.dtype.kind == "f" else np.int64
            block += values.astype(wide).view(np.uint64) * multiplier
        block ^= block >> np.uint64(30)
        block *= np.uint64(0xBF58476D1CE4E5B9)
        block ^= block >> np.uint64(27)
        block *= np.uint64(0x94D049BB133111EB)
        block ^= block >> np.uint64(31)
    return row_hash


def _read_submission_layout(path: Path, mids: Sequence[str], strict: bool) -> PredictionTable:
    report = EvaluationReport()
    bad = _BadRows(path, strict, report)
    table, invalid_lines = _read_csv(
        path,
        {"ImageId": pa.dictionary(pa.int32(), pa.string()), "PredictionString": pa.large_string()},
        bad,
    )
    image_codes_per_row, image_ids = dictionary_codes(table.column("ImageId"))
    # Parse the strings a slice of rows at a time: the split tokens of all rows at once
    # would take several times the file's size in memory.
    strings = table.column("PredictionString")
    parts = [
        _parse_prediction_strings(strings.slice(start, _ROWS_PER_SLICE))
        for start in range(0, max(len(strings), 1), _ROWS_PER_SLICE)
    ]
    num_tokens = np.concatenate([part[0] for part in parts])
    malformed = np.flatnonzero(num_tokens % 6 != 0)
    bad.add(
        "malformed PredictionString (token count not a multiple of 6)",
        _line_numbers(malformed, invalid_lines),
        [f"{num_tokens[row]} tokens" for row in malformed],
    )
    num_detections = np.where(num_tokens % 6 == 0, num_tokens // 6, 0)
    det_row = np.repeat(np.arange(len(num_tokens)), num_detections)
    labels_text = pa.chunked_array([part[1] for part in parts], type=pa.large_string())
    numbers = np.concatenate([part[2] for part in parts])
    not_numbers = np.concatenate([part[3] for part in parts])
    scores = numbers[:, 0].copy()
    boxes = numbers[:, 1:].copy()  # XMin YMin XMax YMax, already our order
    del numbers
    label_codes, labels = dictionary_codes(pc.dictionary_encode(labels_text))
    first_of_row = np.cumsum(num_detections) - num_detections
    group_numbers = np.arange(len(det_row)) - first_of_row[det_row]
    image_codes = image_codes_per_row[det_row]
    keep = _validate(
        bad,
        lines=lambda r: _line_numbers(det_row[r], invalid_lines),
        image_codes=image_codes,
        label_codes=label_codes,
        labels=labels,
        mids=mids,
        scores=scores,
        boxes=boxes,
        not_numbers=not_numbers,
        group_numbers=group_numbers,
    )
    return _kept_predictions(
        keep, image_ids, image_codes, label_codes, labels, mids, scores, boxes, "submission", report
    )


def _parse_prediction_strings(
    strings: pa.ChunkedArray,
) -> tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray]:
    """Split PredictionStrings into detections.

    Returns per row the token count, and for the rows whose count is a multiple of 6 the
    label tokens, the numbers ``[D, 5]`` (score, xmin, ymin, xmax, ymax; NaN where a token
    is not a number) and the mask of detections with such a token.
    """
    strings = pc.utf8_trim_whitespace(strings.combine_chunks())
    strings = pc.if_else(pc.equal(strings, ""), pa.scalar(None, strings.type), strings)
    tokens = pc.utf8_split_whitespace(strings)
    num_tokens = pc.list_value_length(tokens).fill_null(0).to_numpy().astype(np.int64)
    well_formed = (num_tokens % 6 == 0) & (num_tokens > 0)
    flat = pc.list_flatten(tokens.filter(pa.array(well_formed)))
    token_index = np.arange(len(flat)).reshape(-1, 6)
    labels_text = flat.take(pa.array(token_index[:, 0]))
    number_text = flat.take(pa.array(token_index[:, 1:].ravel()))
    try:
        numbers = pc.cast(number_text, pa.float64()).to_numpy(zero_copy_only=False)
        not_numbers = np.zeros(len(token_index), dtype=bool)
    except pa.ArrowInvalid:
        text = number_text.to_pandas()
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        spelled_nan = text.str.lower().eq("nan").to_numpy(dtype=bool, na_value=False)
        not_numbers = (np.isnan(numbers) & ~spelled_nan).reshape(-1, 5).any(1)
    return num_tokens, labels_text, numbers.reshape(-1, 5), not_numbers


def write_predictions_csv(
    path: str | Path,
    image_ids: Sequence[str] | np.ndarray,
    mids: Sequence[str] | np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray,
    *,
    layout: str = "submission",
    all_image_ids: Sequence[str] | None = None,
    decimals: int = 6,
) -> Path:
    """Write detections (one per entry; boxes ``xmin, ymin, xmax, ymax`` normalised).

    ``layout="submission"`` writes the Challenge file (one row per image; ``all_image_ids``
    adds an empty row for every listed image without detections, as the Challenge expects
    one row per test image); ``layout="tf"`` writes the TF evaluator's CSV.
    """
    path = Path(path)
    image_ids = np.asarray(image_ids, dtype=object)
    mids = np.asarray(mids, dtype=object)
    scores = np.round(np.asarray(scores, dtype=np.float64), decimals)
    boxes = np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), decimals)
    if not (len(image_ids) == len(mids) == len(scores) == len(boxes)):
        raise ValueError("image_ids, mids, scores and boxes must have the same length")
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "tf":
        frame = pd.DataFrame(
            {
                "ImageID": image_ids,
                "LabelName": mids,
                "Score": scores,
                "XMin": boxes[:, 0],
                "XMax": boxes[:, 2],
                "YMin": boxes[:, 1],
                "YMax": boxes[:, 3],
            }
        )
        frame.to_csv(path, index=False)
        return path
    if layout != "submission":
        raise ValueError(f"layout must be 'submission' or 'tf', got {layout!r}")
    parts = [pa.array(mids.astype(str))]
    parts += [pc.cast(pa.array(column), pa.string()) for column in (scores, *boxes.T)]
    detection_text = pc.binary_join_element_wise(*parts, " ")
    grouped = (
        pa.table({"ImageId": pa.array(image_ids.astype(str)), "text": detection_text})
        .group_by("ImageId", use_threads=False)
        .aggregate([("text", "list")])
    )
    frame = pd.DataFrame(
        {
            "ImageId": grouped.column("ImageId").to_pandas(),
            "PredictionString": pc.binary_join(grouped.column("text_list"), " ").to_pandas(),
        }
    )
    if all_image_ids is not None:
        missing = pd.Index(pd.unique(np.asarray(all_image_ids, dtype=object))).difference(
            frame["ImageId"]
        )
        frame = pd.concat(
            [frame, pd.DataFrame({"ImageId": missing, "PredictionString": ""})],
            ignore_index=True,
        )
    frame.to_csv(path, index=False)
    return path


def _kept_predictions(
    keep: np.ndarray,
    image_ids: np.ndarray,
    image_codes: np.ndarray,
    label_codes: np.ndarray,
    labels: np.ndarray,
    mids: Sequence[str],
    scores: np.ndarray,
    boxes: np.ndarray,
    layout: str,
    report: EvaluationReport,
) -> PredictionTable:
    """The table of the rows that passed validation, labels turned into class indices."""
    report.num_predictions = int(keep.sum())
    class_of_label = pd.Index(list(mids)).get_indexer(labels)
    if not keep.all():
        image_codes, label_codes = image_codes[keep], label_codes[keep]
        scores, boxes = scores[keep], boxes[keep]
    return PredictionTable(
        image_ids=image_ids,
        image_index=image_codes,
        class_indices=class_of_label.astype(np.int32)[label_codes],
        scores=scores,
        boxes=boxes,
        layout=layout,
        report=report,
    )
