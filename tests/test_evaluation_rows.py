"""Equal rows found by one sort over packed hash keys, and the duplicate-detection rules
of the predictions reader that rest on it."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lsdet.evaluation import PredictionFormatError, read_predictions_csv
from lsdet.evaluation import predictions as predictions_module
from lsdet.evaluation.predictions import first_equal_row

MIDS = ["/m/animal", "/m/cat", "/m/dog", "/m/elephant"]


def first_equal_row_by_group_by(columns: list[np.ndarray]) -> np.ndarray:
    frame = pd.DataFrame({str(k): column for k, column in enumerate(columns)})
    group = frame.groupby(list(frame.columns), sort=False, dropna=False).ngroup()
    return pd.Series(np.arange(len(frame))).groupby(group.to_numpy()).transform("min").to_numpy()


def small_random_columns(rng: np.random.Generator, num_rows: int) -> list[np.ndarray]:
    """Few distinct values per column, so that many rows are equal; -0.0 beside 0.0."""
    return [
        rng.integers(0, 3, num_rows),
        (rng.integers(0, 2, num_rows) * 0.5).astype(np.float32),
        rng.choice([0.0, -0.0, 1.0], num_rows),
        rng.integers(0, 2, num_rows).astype(bool),
    ]


@pytest.mark.parametrize("collide", [False, True])
def test_first_equal_row_agrees_with_a_group_by(monkeypatch, collide):
    if collide:  # two hash values for all rows: the exact comparison must sort them out
        monkeypatch.setattr(
            predictions_module,
            "_row_hash",
            lambda columns: (columns[0].view(np.uint64) % np.uint64(2)) << np.uint64(40),
        )
    rng = np.random.default_rng(0)
    for num_rows in [0, 1, 2, 7, 50, 300]:
        columns = small_random_columns(rng, num_rows)
        np.testing.assert_array_equal(
            first_equal_row(columns), first_equal_row_by_group_by(columns)
        )


def test_first_equal_row_never_equates_nan():
    scores = np.array([np.nan, np.nan, 0.5, 0.5])
    np.testing.assert_array_equal(first_equal_row([np.zeros(4, np.int64), scores]), [0, 1, 2, 2])


def write_tf(path: Path, rows: list[str]) -> Path:
    path.write_text("ImageID,LabelName,Score,XMin,XMax,YMin,YMax\n" + "\n".join(rows) + "\n")
    return path


def test_duplicate_semantics(tmp_path):
    """A duplicate is a row equal to an earlier good row in image, class, score and the four
    coordinates, compared as numbers (so 0.50 = 0.5 and -0.0 = 0); with strict=True the
    first one is an error naming both lines, with strict=False every copy after the first
    is dropped and counted. A bad row is counted as bad, never as a duplicate, and does not
    make a later equal row a duplicate of it."""
    rows = [
        "a,/m/dog,0.5,0,1,0,1",  # line 2
        "a,/m/dog,0.50,0.0,1.0,-0.0,1",  # line 3: line 2 written otherwise
        "b,/m/dog,0.5,0,1,0,1",  # another image
        "a,/m/cat,0.5,0,1,0,1",  # another class
        "a,/m/dog,0.5000001,0,1,0,1",  # another score
        "a,/m/dog,0.5,0,1,0,0.999",  # another box
        "a,/m/dog,2,0,1,0,1",  # line 8: bad score
        "a,/m/dog,2,0,1,0,1",  # line 9: the same bad row again
        "a,/m/dog,0.5,0,1,0,1",  # line 10: line 2 a third time
    ]
    path = write_tf(tmp_path / "predictions.csv", rows)
    with pytest.raises(
        PredictionFormatError,
        match=r"predictions\.csv, line 3: duplicate detection .* \(first on line 2\)",
    ):
        read_predictions_csv(path, MIDS)
    table = read_predictions_csv(path, MIDS, strict=False)
    report = table.report.to_dict()
    assert len(table) == 5
    assert report["duplicate_predictions"] == 2
    assert report["skipped_bad_rows"]["score outside [0, 1]"] == 2
    duplicates = [line for line in report["bad_row_examples"] if "duplicate" in line]
    assert [line.split(":")[0] for line in duplicates] == ["line 3", "line 10"]
    assert all("(first on line 2)" in line for line in duplicates)


def test_duplicates_in_the_submission_layout(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text(
        "ImageId,PredictionString\n"
        "a,/m/dog 0.5 0 0 1 1 /m/dog 0.5 0 0 1 1\n"  # twice in one string
        "b,/m/dog 0.5 0 0 1 1\n"
        "a,/m/dog 0.5 0 0 1 1 /m/cat 0.5 0 0 1 1\n"  # image a again, a third copy
    )
    table = read_predictions_csv(path, MIDS, strict=False)
    assert len(table) == 3 and table.report.to_dict()["duplicate_predictions"] == 2
    examples = table.report.bad_row_examples
    assert re.match(
        r"line 2: duplicate detection .*: detection 2, .*\(first on line 2\)$", examples[0]
    )
    assert re.match(
        r"line 4: duplicate detection .*: detection 1, .*\(first on line 2\)$", examples[1]
    )
