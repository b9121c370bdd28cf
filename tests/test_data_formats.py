"""Tests of the Open Images CSV readers, including every kind of bad input."""

import logging

import numpy as np
import pytest

from lsdet.data.formats import (
    DataFormatError,
    read_bbox_csv,
    read_class_descriptions,
    read_image_labels_csv,
)

V6_HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
    "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
)
CHALLENGE_HEADER = "ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf"


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------- descriptions
def test_descriptions_without_and_with_header_and_quotes(tmp_path):
    plain = write(tmp_path, "plain.csv", ["/m/a,Apple", '/m/b,"Ball, red"', "/m/c,Cat"])
    assert read_class_descriptions(plain) == {"/m/a": "Apple", "/m/b": "Ball, red", "/m/c": "Cat"}
    assert list(read_class_descriptions(plain)) == ["/m/a", "/m/b", "/m/c"]
    headed = write(tmp_path, "headed.csv", ["LabelName,DisplayName", "/m/a,Apple"])
    assert read_class_descriptions(headed) == {"/m/a": "Apple"}


def test_descriptions_errors_name_file_and_line(tmp_path):
    extra = write(tmp_path, "extra.csv", ["/m/a,Apple", "/m/b,Ball,red"])
    with pytest.raises(DataFormatError, match=r"extra\.csv, line 2: expected 2 fields"):
        read_class_descriptions(extra)
    duplicate = write(tmp_path, "dup.csv", ["/m/a,Apple", "/m/b,Ball", "/m/a,Again"])
    with pytest.raises(DataFormatError, match=r"dup\.csv, line 3: duplicate MID '/m/a'"):
        read_class_descriptions(duplicate)
    with pytest.raises(DataFormatError, match="cannot open"):
        read_class_descriptions(tmp_path / "missing.csv")


def test_real_descriptions(openimages_dir):
    boxable = read_class_descriptions(openimages_dir / "class-descriptions-boxable.csv")
    assert len(boxable) == 601
    challenge = read_class_descriptions(
        openimages_dir / "challenge-2019-classes-description-500.derived.csv"
    )
    assert len(challenge) == 500
    assert list(challenge.items())[:2] == [("/m/061hd_", "Infant bed"), ("/m/06m11", "Rose")]
    parts = read_class_descriptions(
        openimages_dir / "samples" / "v4-humanparts-class-descriptions.csv"
    )
    assert len(parts) == 6 and "/m/031n1" in parts  # header "label,name" skipped


# ---------------------------------------------------------------------------- boxes
def test_v6_layout_columns_and_flags(tmp_path):
    path = write(
        tmp_path,
        "v6.csv",
        [
            V6_HEADER,
            "img1,xclick,/m/a,1,0.1,0.5,0.2,0.6,1,0,0,0,0",
            "img1,xclick,/m/b,1,0.0,1.0,0.0,1.0,0,1,1,-1,0",
            "img2,activemil,/m/a,1,0.25,0.75,0.3,0.4,0,0,0,1,1",
        ],
    )
    table = read_bbox_csv(path)
    assert len(table) == 3
    assert table.boxes.dtype == np.float32
    np.testing.assert_allclose(
        table.boxes, [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.25, 0.3, 0.75, 0.4]]
    )
    assert list(table.image_ids) == ["img1", "img1", "img2"]
    assert list(table.mids) == ["/m/a", "/m/b", "/m/a"]
    np.testing.assert_array_equal(table.is_group_of, [False, True, False])
    np.testing.assert_array_equal(table.flags["IsOccluded"], [1, 0, 0])
    np.testing.assert_array_equal(table.flags["IsDepiction"], [0, -1, 1])
    np.testing.assert_array_equal(table.confidence, [1, 1, 1])
    assert table.report.rows_read == 3 and table.report.rows_kept == 3
    assert table.report.skipped == {}


def test_challenge_layout_and_known_mids(tmp_path):
    path = write(
        tmp_path,
        "val.csv",
        [CHALLENGE_HEADER, "i1,/m/b,0.1,0.2,0.3,0.4,1", 'i2,"/m/a",0.5,0.6,0.7,0.8,0'],
    )
    table = read_bbox_csv(path, known_mids=["/m/a", "/m/b", "/m/c"])
    np.testing.assert_array_equal(table.label_codes, [1, 0])  # indices into known_mids
    assert list(table.label_values) == ["/m/a", "/m/b", "/m/c"]
    np.testing.assert_allclose(table.boxes, [[0.1, 0.3, 0.2, 0.4], [0.5, 0.7, 0.6, 0.8]])
    np.testing.assert_array_equal(table.is_group_of, [True, False])
    assert table.confidence is None
    assert set(table.flags) == {"IsGroupOf"}


def test_missing_columns_in_header(tmp_path):
    path = write(tmp_path, "nohead.csv", ["i1,/m/b,0.1,0.2,0.3,0.4,1"])
    with pytest.raises(DataFormatError, match=r"nohead\.csv, line 1: header .* lacks columns"):
        read_bbox_csv(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="empty file"):
        read_bbox_csv(empty)


BAD_ROWS = [
    ("i2,/m/a,0.1,0.2,0.3", "wrong number of fields"),
    ("i3,/m/zzz,0.1,0.2,0.3,0.4,0", "unknown MID"),
    ("i4,/m/a,0.1,1.2,0.3,0.4,0", "XMax outside [0, 1]"),
    ("i5,/m/a,-0.1,0.2,0.3,0.4,0", "XMin outside [0, 1]"),
    ("i6,/m/a,0.5,0.2,0.3,0.4,0", "XMin > XMax"),
    ("i7,/m/a,0.1,0.2,0.5,0.4,0", "YMin > YMax"),
    ("i8,/m/a,0.1,0.2,,0.4,0", "missing or non-numeric YMin"),
    ("i9,/m/a,0.1,0.2,0.3,0.4,2", "IsGroupOf not in -1/0/1"),
    ("i10,/m/a,abc,0.2,0.3,0.4,0", "missing or non-numeric XMin"),
    (",/m/a,0.1,0.2,0.3,0.4,0", "missing ImageID"),
    ("i12,,0.1,0.2,0.3,0.4,0", "missing LabelName"),
    ("i13,/m/a,0.1,0.2,0.3,0.4,", "IsGroupOf not in -1/0/1"),
]


@pytest.mark.parametrize("bad_row, reason", BAD_ROWS)
def test_each_bad_row_raises_with_file_and_line(tmp_path, bad_row, reason):
    good = "i1,/m/a,0.1,0.2,0.3,0.4,0"
    # a blank line before the bad row: line numbers must still be those of the file
    path = write(tmp_path, "boxes.csv", [CHALLENGE_HEADER, good, "", bad_row, good])
    with pytest.raises(DataFormatError) as error:
        read_bbox_csv(path, known_mids=["/m/a"])
    message = str(error.value)
    assert message.startswith(f"{path}, line 4: {reason}")
    assert bad_row in message
    table = read_bbox_csv(path, known_mids=["/m/a"], strict=False)
    assert len(table) == 2
    assert table.report.rows_read == 3 and table.report.rows_kept == 2
    assert table.report.skipped == {reason: 1}
    assert table.report.examples[0][:2] == (4, reason)


def test_non_strict_counts_all_reasons_and_logs(tmp_path, caplog):
    lines = [CHALLENGE_HEADER, "ok,/m/a,0.1,0.2,0.3,0.4,0"] + [row for row, _ in BAD_ROWS]
    path = write(tmp_path, "many.csv", lines)
    with caplog.at_level(logging.WARNING):
        table = read_bbox_csv(path, known_mids=["/m/a"], strict=False)
    assert list(table.image_ids) == ["ok"]
    expected = {}
    for _, reason in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    assert table.report.skipped == expected
    assert table.report.rows_skipped == len(BAD_ROWS)
    assert [line for line, _, _ in table.report.examples] == [3, 4, 5, 6, 7]
    assert "many.csv" in caplog.text and f"skipped {len(BAD_ROWS)}" in caplog.text


def test_real_v4_sample(openimages_dir):
    samples = openimages_dir / "samples"
    mids = read_class_descriptions(samples / "v4-humanparts-class-descriptions.csv")
    table = read_bbox_csv(samples / "v4-humanparts-train-annotations-bbox.csv", known_mids=mids)
    assert len(table) == 13134
    assert len(np.unique(table.image_codes)) == 10079
    assert table.report.rows_skipped == 0
    one = read_bbox_csv(samples / "oidv6-train-annotations-bbox.onerow.csv")
    assert one.image_ids[0] == "0001eeaf4aed83f9" and one.mids[0] == "/m/0cmf2"
    np.testing.assert_allclose(one.boxes[0], [0.022673031, 0.07103825, 0.9642005, 0.80054647])


# ---------------------------------------------------------------------------- image labels
def test_image_labels(tmp_path):
    path = write(
        tmp_path,
        "labels.csv",
        ["ImageID,Source,LabelName,Confidence", "i1,verification,/m/b,1", "i1,human,/m/a,0"],
    )
    table = read_image_labels_csv(path, known_mids=["/m/a", "/m/b"])
    np.testing.assert_array_equal(table.label_codes, [1, 0])
    np.testing.assert_array_equal(table.confidence, [1, 0])
    assert list(table.image_ids) == ["i1", "i1"]


def test_image_labels_bad_rows(tmp_path):
    path = write(
        tmp_path,
        "labels.csv",
        [
            "ImageID,Source,LabelName,Confidence",
            "i1,verification,/m/b,1",
            "i2,verification,/m/b,0.5",
            "i3,verification,/m/x,1",
        ],
    )
    with pytest.raises(DataFormatError, match=r"labels\.csv, line 3: Confidence not 0 or 1"):
        read_image_labels_csv(path)
    table = read_image_labels_csv(path, known_mids=["/m/b"], strict=False)
    assert table.report.skipped == {"Confidence not 0 or 1": 1, "unknown MID": 1}
    assert list(table.image_ids) == ["i1"]


def test_real_image_label_sample(openimages_dir):
    table = read_image_labels_csv(
        openimages_dir / "samples" / "annotations-human-imagelabels-boxable.onerow.csv"
    )
    assert table.mids[0] == "/m/0cmf2" and table.confidence[0] == 1


def test_bom_and_windows_line_endings(tmp_path):
    path = tmp_path / "crlf.csv"
    rows = [CHALLENGE_HEADER, "a,/m/1,0.1,0.2,0.1,0.2,0", "b,/m/1,0.1,0.2,0.3,0.2,0"]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    table = read_bbox_csv(path, strict=False)
    assert list(table.image_ids) == ["a"]
    assert table.report.examples[0][:2] == (3, "YMin > YMax")
    descriptions = tmp_path / "d.csv"
    descriptions.write_bytes(b'\xef\xbb\xbf/m/1,"One, two"\r\n/m/2,Two\r\n')
    assert read_class_descriptions(descriptions) == {"/m/1": "One, two", "/m/2": "Two"}


def test_ignore_mids_drops_and_counts_without_error(tmp_path):
    rows = [CHALLENGE_HEADER, "i1,/m/a,0.1,0.2,0.3,0.4,0", "i2,/m/x,0.1,0.2,0.3,0.4,0"]
    path = write(tmp_path, "subset.csv", rows)
    table = read_bbox_csv(path, known_mids=["/m/a"], ignore_mids=["/m/x"])
    assert list(table.image_ids) == ["i1"]
    assert table.report.excluded == 1 and table.report.skipped == {}
    assert "excluded 1" in table.report.summary()
    unknown = write(tmp_path, "unknown.csv", [*rows, "i3,/m/zzz,0.1,0.2,0.3,0.4,0"])
    with pytest.raises(DataFormatError, match=r"unknown\.csv, line 4: unknown MID"):
        read_bbox_csv(unknown, known_mids=["/m/a"], ignore_mids=["/m/x"])
    labels = write(tmp_path, "labels.csv", ["ImageID,LabelName,Confidence", "i1,/m/x,1"])
    table = read_image_labels_csv(labels, known_mids=["/m/a"], ignore_mids=["/m/x"])
    assert len(table) == 0 and table.report.excluded == 1


def test_strict_error_names_the_command_line_key(tmp_path):
    from lsdet.data.formats import read_image_labels_csv

    path = tmp_path / "labels.csv"
    path.write_text("ImageID,Source,LabelName,Confidence\nimg,h,/m/a,2\n")
    with pytest.raises(DataFormatError, match=r"line 2: .*data\.strict=false on the command line"):
        read_image_labels_csv(path)
