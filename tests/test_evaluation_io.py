"""The metric from CSV files: GT expansion, both prediction layouts, writer, bad input."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from lsdet.data import DataFormatError, load_hierarchy
from lsdet.evaluation import (
    PredictionFormatError,
    detect_layout,
    load_ground_truth,
    oid_challenge_map,
    read_predictions_csv,
    write_predictions_csv,
)

HIERARCHY = {
    "LabelName": "/m/root",
    "Subcategory": [
        {
            "LabelName": "/m/animal",
            "Subcategory": [{"LabelName": "/m/cat"}, {"LabelName": "/m/dog"}],
        },
        {"LabelName": "/m/elephant"},
    ],
}
GT_BOXES = """ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf
img1,/m/cat,0.0,0.1,0.0,0.1,0
img1,/m/elephant,0.0,0.2,0.0,0.2,0
img1,/m/cat,0.0,0.3,0.0,0.3,1
img2,/m/dog,0.5,0.6,0.5,0.6,0
"""
# img2: dog is boxed, animal is implied; cat verified absent. img3: only labels.
IMAGE_LABELS = """ImageID,Source,LabelName,Confidence
img1,verification,/m/dog,1
img2,verification,/m/cat,0
img3,verification,/m/animal,0
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "hierarchy": tmp_path / "hierarchy.json",
        "boxes": tmp_path / "boxes.csv",
        "labels": tmp_path / "labels.csv",
    }
    paths["hierarchy"].write_text(json.dumps(HIERARCHY))
    paths["boxes"].write_text(GT_BOXES)
    paths["labels"].write_text(IMAGE_LABELS)
    return paths


def tf_rows(rows: list[str]) -> str:
    return "ImageID,LabelName,Score,XMin,XMax,YMin,YMax\n" + "".join(row + "\n" for row in rows)


def evaluate_rows(files, tmp_path, rows, **options):
    predictions = tmp_path / "predictions.csv"
    predictions.write_text(tf_rows(rows))
    return oid_challenge_map(
        files["hierarchy"], files["boxes"], files["labels"], predictions, **options
    )


def test_ground_truth_is_expanded_like_the_open_images_tools(files):
    hierarchy = load_hierarchy(files["hierarchy"])
    gt = load_ground_truth(hierarchy, files["boxes"], files["labels"])
    animal, cat, dog, elephant = (hierarchy.index(m) for m in hierarchy.mids)
    assert hierarchy.mids == ["/m/animal", "/m/cat", "/m/dog", "/m/elephant"]
    # 4 boxes + one animal copy for each cat/dog box.
    np.testing.assert_array_equal(gt.num_instances(), [3, 2, 1, 1])
    assert gt.box_is_group_of.sum() == 2  # the group-of cat and its animal copy
    verified = {(gt.image_ids[key // 4], gt.mids[key % 4]) for key in gt.verified_keys}
    # img3's negative animal expands down to cat and dog; img2's negative cat stays.
    assert ("img3", "/m/cat") in verified and ("img3", "/m/dog") in verified
    assert ("img1", "/m/animal") in verified and ("img1", "/m/dog") in verified
    assert ("img2", "/m/cat") in verified and ("img2", "/m/elephant") not in verified
    assert len(verified) == 10
    assert dog == 2 and animal == 0 and cat == 1 and elephant == 3
    unexpanded = load_ground_truth(hierarchy, files["boxes"], files["labels"], expand_gt=False)
    np.testing.assert_array_equal(unexpanded.num_instances(), [0, 2, 1, 1])


def test_expanded_ground_truth_decides_verification_and_instances(files, tmp_path):
    rows = [
        "img1,/m/cat,0.9,0.0,0.1,0.0,0.1",  # TP on the plain cat box
        "img1,/m/cat,0.8,0.0,0.1,0.0,0.1",  # duplicate, absorbed by the group-of cat box
        "img2,/m/dog,0.7,0.5,0.6,0.5,0.6",  # TP
        "img3,/m/dog,0.95,0.1,0.2,0.1,0.2",  # dog verified absent via the animal negative: FP
        "img2,/m/elephant,0.9,0.5,0.6,0.5,0.6",  # elephant not verified in img2: ignored
    ]
    result = evaluate_rows(files, tmp_path, rows)
    # animal: 3 instances, no animal detections (predictions are not expanded) -> 0.
    # dog: FP 0.95 then TP 0.7 -> 1/2.
    assert result.per_class_ap == pytest.approx(
        {"/m/animal": 0.0, "/m/cat": 1.0, "/m/dog": 0.5, "/m/elephant": 0.0}
    )
    assert result.report.ignored_class_not_verified == 1
    assert result.report.ignored_in_group_of == 0  # the duplicate credited the group-of box
    expanded = evaluate_rows(files, tmp_path, rows, expand_predictions=True)
    # animal copies: 0.95 FP (img3 verifies animal by its negative label), 0.9 TP,
    # 0.8 credits the group-of animal box, 0.7 TP: precision 3/4 at recall 1.
    assert expanded.per_class_ap["/m/animal"] == pytest.approx(0.75)
    assert expanded.report.added_by_expansion == 4  # elephant has no ancestor


def test_predictions_for_images_without_any_ground_truth_are_ignored_and_counted(files, tmp_path):
    rows = [
        "img1,/m/cat,0.9,0.0,0.1,0.0,0.1",
        "imgX,/m/cat,0.99,0,1,0,1",
        "imgX,/m/dog,0.5,0,1,0,1",
    ]
    result = evaluate_rows(files, tmp_path, rows)
    assert result.per_class_ap["/m/cat"] == pytest.approx(0.5)  # 1 of 2 cat instances
    assert result.report.ignored_image_not_in_ground_truth == 2
    assert result.report.images_not_in_ground_truth == 1
    assert result.to_dict()["report"]["images_not_in_ground_truth"] == 1


def test_submission_and_tf_layouts_give_the_same_result(files, tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    images = rng.choice(["img1", "img2", "img3", "img9"], n)
    mids = rng.choice(["/m/animal", "/m/cat", "/m/dog", "/m/elephant"], n)
    corner = rng.uniform(0, 0.6, (n, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0.02, 0.4, (n, 2))], axis=1)
    scores = rng.random(n)
    tf_path = write_predictions_csv(tmp_path / "tf.csv", images, mids, scores, boxes, layout="tf")
    sub_path = write_predictions_csv(
        tmp_path / "sub.csv", images, mids, scores, boxes, all_image_ids=["img1", "img4"]
    )
    assert detect_layout(tf_path) == "tf" and detect_layout(sub_path) == "submission"
    results = [
        oid_challenge_map(files["hierarchy"], files["boxes"], files["labels"], path)
        for path in (tf_path, sub_path)
    ]
    np.testing.assert_array_equal(results[0].ap, results[1].ap)
    assert results[0].report.to_dict() == results[1].report.to_dict()
    assert results[0].report.num_predictions == n
    assert 0 < results[0].map < 1
    # The writer added an empty row for img4, which reads back as no detection.
    text = sub_path.read_text().splitlines()
    assert "img4," in text
    table = read_predictions_csv(sub_path, load_hierarchy(files["hierarchy"]).mids)
    assert len(table) == n
    np.testing.assert_allclose(np.sort(table.scores), np.sort(np.round(scores, 6)))


def test_submission_reader_parses_groups_by_hand(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text(
        "ImageId,PredictionString\n"
        "a,/m/cat 0.5 0.1 0.2 0.3 0.4  /m/dog 0.25 0 0 1 1\n"
        "b,\n"
        "c,/m/dog 1 0 0 0.5 0.5\n"
    )
    table = read_predictions_csv(path, ["/m/cat", "/m/dog"])
    assert table.layout == "submission"
    np.testing.assert_array_equal(table.image_ids[table.image_index], ["a", "a", "c"])
    np.testing.assert_array_equal(table.class_indices, [0, 1, 1])
    np.testing.assert_allclose(table.scores, [0.5, 0.25, 1.0])
    # LabelName Score XMin YMin XMax YMax -> (xmin, ymin, xmax, ymax)
    np.testing.assert_allclose(table.boxes[0], [0.1, 0.2, 0.3, 0.4])


MIDS = ["/m/cat", "/m/dog"]
BAD_TF_ROWS = [
    ("a,/m/zebra,0.5,0,1,0,1", "unknown MID"),
    ("a,/m/cat,nan,0,1,0,1", "score is NaN or missing"),
    ("a,/m/cat,,0,1,0,1", "score is NaN or missing"),
    ("a,/m/cat,-0.1,0,1,0,1", "score outside [0, 1]"),
    ("a,/m/cat,1.5,0,1,0,1", "score outside [0, 1]"),
    ("a,/m/cat,inf,0,1,0,1", "score outside [0, 1]"),
    ("a,/m/dog,0.5,0,1,0,1", "duplicate detection"),
    ("a,/m/cat,0.5,0,1.2,0,1", "outside [0, 1]"),
    ("a,/m/cat,0.5,0.6,0.5,0,1", "min > max"),
    ("a,/m/cat,0.5,0,1,0", "wrong number of fields"),
    ("a,/m/cat,high,0,1,0,1", "not a number"),
    (",/m/cat,0.5,0,1,0,1", "missing image id"),
]


@pytest.mark.parametrize(("row", "reason"), BAD_TF_ROWS)
def test_bad_tf_row_raises_naming_the_line_or_is_skipped_and_counted(tmp_path, row, reason):
    path = tmp_path / "predictions.csv"
    path.write_text(
        tf_rows(["a,/m/dog,0.5,0,1,0,1", "a,/m/dog,0.6,0,1,0,1", row, "a,/m/dog,0.7,0,1,0,1"])
    )
    with pytest.raises(
        PredictionFormatError, match=rf"predictions.csv, line 4: .*{re.escape(reason)}"
    ):
        read_predictions_csv(path, MIDS)
    table = read_predictions_csv(path, MIDS, strict=False)
    assert len(table) == 3
    report = table.report.to_dict()
    assert report["num_skipped_bad_rows"] == 1
    assert any(reason in key for key in report["skipped_bad_rows"])
    assert report["bad_row_examples"][0].startswith("line 4:")


def test_line_numbers_count_rows_skipped_as_malformed(tmp_path):
    path = tmp_path / "predictions.csv"
    rows = ["a,/m/dog,0.5,0,1,0,1", "a,b", "a,/m/dog,0.6,0,1,0,1", "a,/m/dog,-1,0,1,0,1"]
    path.write_text(tf_rows(rows))
    table = read_predictions_csv(path, MIDS, strict=False)
    assert len(table) == 2
    assert table.report.bad_row_examples[0].startswith("line 3: wrong number of fields")
    assert table.report.bad_row_examples[1].startswith("line 5: score outside [0, 1]")


BAD_SUBMISSION_ROWS = [
    ("b,/m/cat 0.5 0 0 1", "malformed PredictionString"),
    ("b,/m/dog 0.5 0 0 1 1 /m/zebra 0.5 0 0 1 1", "unknown MID"),
    ("b,/m/cat 0.5 0 0 1 x", "not a number"),
    ("b,/m/cat -1 0 0 1 1", "score outside [0, 1]"),
    ("b,/m/cat 1.01 0 0 1 1", "score outside [0, 1]"),
    ("b,/m/cat 0.5 0 0 1 1 /m/cat 0.5 0 0 1 1", "duplicate detection"),
    ("b,/m/cat 0.5 0.5 0 0.4 1", "min > max"),
]


@pytest.mark.parametrize(("row", "reason"), BAD_SUBMISSION_ROWS)
def test_bad_submission_row_raises_naming_the_line_or_is_skipped(tmp_path, row, reason):
    path = tmp_path / "submission.csv"
    path.write_text(f"ImageId,PredictionString\na,/m/dog 0.5 0 0 1 1\n{row}\nc,/m/cat 1 0 0 1 1\n")
    with pytest.raises(PredictionFormatError, match=rf"line 3: .*{re.escape(reason)}"):
        read_predictions_csv(path, MIDS)
    table = read_predictions_csv(path, MIDS, strict=False)
    assert sum(table.report.skipped_bad_rows.values()) == 1
    assert "line 3" in table.report.bad_row_examples[0]
    kept = set(table.image_ids[table.image_index])
    assert {"a", "c"} <= kept


def test_unrecognised_header_is_an_error_naming_line_one(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("image,label,score\na,/m/cat,0.5\n")
    with pytest.raises(PredictionFormatError, match="line 1: header"):
        read_predictions_csv(path, MIDS)


def test_bad_ground_truth_gets_the_data_layer_checks(files, tmp_path):
    files["boxes"].write_text(GT_BOXES + "img4,/m/zebra,0,1,0,1,0\n")
    predictions = tmp_path / "predictions.csv"
    predictions.write_text(tf_rows(["img1,/m/cat,0.9,0.0,0.1,0.0,0.1"]))
    args = (files["hierarchy"], files["boxes"], files["labels"], predictions)
    with pytest.raises(DataFormatError, match="line 6: unknown MID"):
        oid_challenge_map(*args)
    result = oid_challenge_map(*args, strict=False)
    hierarchy = load_hierarchy(files["hierarchy"])
    gt = load_ground_truth(hierarchy, files["boxes"], files["labels"], strict=False)
    assert gt.read_reports[0].skipped == {"unknown MID": 1}
    assert result.report.to_dict()["ground_truth_files"][0]["skipped"] == {"unknown MID": 1}
    assert result.per_class_ap["/m/cat"] == pytest.approx(0.5)


def test_class_descriptions_restrict_the_classes(files, tmp_path):
    descriptions = tmp_path / "classes.csv"
    descriptions.write_text("/m/cat,Cat\n/m/dog,Dog\n/m/elephant,Elephant\n")
    predictions = tmp_path / "predictions.csv"
    predictions.write_text(tf_rows(["img1,/m/cat,0.9,0.0,0.1,0.0,0.1"]))
    result = oid_challenge_map(
        files["hierarchy"],
        files["boxes"],
        files["labels"],
        predictions,
        class_descriptions_csv=descriptions,
        strict=False,  # img3's label is /m/animal, not one of the classes: skipped
    )
    assert result.mids == ["/m/cat", "/m/dog", "/m/elephant"]
    assert sorted(result.per_class_ap) == ["/m/cat", "/m/dog", "/m/elephant"]


def test_real_open_images_boxes_predicted_exactly_score_one(openimages_dir, tmp_path):
    from lsdet.data import read_bbox_csv

    gt_csv = openimages_dir / "samples" / "v4-humanparts-test-annotations-bbox.csv"
    hierarchy = load_hierarchy(openimages_dir / "bbox_labels_600_hierarchy.json")
    boxes = read_bbox_csv(gt_csv)
    scores = np.random.default_rng(0).random(len(boxes))
    kept = boxes.mids != "/m/0k65p"  # no Human hand detections at all
    predictions = write_predictions_csv(
        tmp_path / "submission.csv",
        boxes.image_ids[kept],
        boxes.mids[kept],
        scores[kept],
        boxes.boxes[kept],
    )
    result = oid_challenge_map(hierarchy, gt_csv, None, predictions)
    assert len(result.per_class_ap) == 6  # the six human-part classes of the sample
    assert result.per_class_ap["/m/0k65p"] == 0.0
    assert all(ap == 1.0 for mid, ap in result.per_class_ap.items() if mid != "/m/0k65p")
    assert result.map == pytest.approx(5 / 6)


def test_submission_rows_parsed_in_slices_keep_their_line_numbers(tmp_path, monkeypatch):
    from lsdet.evaluation import predictions as predictions_module

    monkeypatch.setattr(predictions_module, "_ROWS_PER_SLICE", 2)
    path = tmp_path / "submission.csv"
    rows = [f"i{k},/m/cat 0.{k + 1} 0 0 1 1 /m/dog 0.5 0 0 1 1" for k in range(5)]
    rows[3] = "i3,/m/cat 0.5 0 0 1 x"  # line 5, in the second slice
    path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    table = read_predictions_csv(path, MIDS, strict=False)
    assert len(table) == 8
    assert table.report.bad_row_examples == [
        "line 5: value is not a number: detection 1, LabelName='/m/cat' Score=0.5 "
        "box(xmin,ymin,xmax,ymax)=(0.0, 0.0, 1.0, nan)"
    ]
    np.testing.assert_allclose(table.scores[table.class_indices == 0], [0.1, 0.2, 0.3, 0.5])
    empty = tmp_path / "empty.csv"
    empty.write_text("ImageId,PredictionString\n")
    assert len(read_predictions_csv(empty, MIDS)) == 0


def test_a_file_with_every_row_twice_scores_as_the_original_with_the_copies_reported(
    files, tmp_path
):
    rows = [
        "img1,/m/cat,0.9,0.0,0.1,0.0,0.1",
        "img1,/m/cat,0.4,0.5,0.9,0.5,0.9",
        "img1,/m/elephant,0.8,0.0,0.2,0.0,0.2",
        "img2,/m/dog,0.7,0.5,0.6,0.5,0.6",
        "img2,/m/animal,0.3,0.5,0.6,0.5,0.6",
        "img2,/m/dog,0.2,0.0,0.3,0.0,0.3",
    ]
    original = evaluate_rows(files, tmp_path, rows, strict=False)
    doubled = tmp_path / "doubled.csv"
    doubled.write_text(tf_rows(rows + rows))
    args = (files["hierarchy"], files["boxes"], files["labels"], doubled)
    with pytest.raises(
        PredictionFormatError, match=r"doubled.csv, line 8: duplicate detection.*first on line 2"
    ):
        oid_challenge_map(*args)
    result = oid_challenge_map(*args, strict=False)
    assert 0 < original.map < 1
    assert result.map == original.map and result.per_class_ap == original.per_class_ap
    report = result.to_dict()["report"]
    assert report["duplicate_predictions"] == len(rows)
    assert report["num_predictions"] == len(rows)
    assert report["bad_row_examples"][0].startswith("line 8: duplicate detection")
    assert original.to_dict()["report"]["duplicate_predictions"] == 0


def test_the_same_box_with_another_score_or_class_is_not_a_duplicate(tmp_path):
    path = tmp_path / "predictions.csv"
    rows = ["a,/m/dog,0.5,0,1,0,1", "a,/m/dog,0.6,0,1,0,1", "a,/m/cat,0.5,0,1,0,1"]
    path.write_text(tf_rows([*rows, "b,/m/dog,0.5,0,1,0,1"]))
    table = read_predictions_csv(path, MIDS)
    assert len(table) == 4 and table.report.to_dict()["duplicate_predictions"] == 0


def test_strict_messages_name_the_command_line_key(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text(tf_rows(["a,/m/dog,2,0,1,0,1"]))
    with pytest.raises(PredictionFormatError, match=r"data\.strict=false"):
        read_predictions_csv(path, MIDS)


@pytest.mark.parametrize("collide", [False, True])
def test_duplicates_are_found_exactly_even_when_hashes_collide(tmp_path, monkeypatch, collide):
    from lsdet.evaluation import predictions as module

    if collide:  # every row gets one hash: the exact comparison must sort it out
        monkeypatch.setattr(module, "_row_hash", lambda columns: np.zeros(len(columns[0]), "u8"))
    path = tmp_path / "predictions.csv"
    rows = [
        "a,/m/dog,0.5,0,1,0,1",
        "a,/m/dog,0.5,0,1,0,0.9",
        "b,/m/dog,0.5,0,1,0,1",
        "a,/m/dog,0.5,0,1,0,1",  # line 5 = line 2
        "a,/m/cat,0.5,0,1,0,1",
        "b,/m/dog,0.5,0,1,0,1",  # line 7 = line 4
        "a,/m/dog,0.5,0,1,0,1",  # line 8 = line 2
    ]
    path.write_text(tf_rows(rows))
    table = read_predictions_csv(path, MIDS, strict=False)
    assert len(table) == 4 and table.report.to_dict()["duplicate_predictions"] == 3
    examples = table.report.bad_row_examples
    assert [example.split(":")[0] for example in examples] == ["line 5", "line 7", "line 8"]
    assert "first on line 2" in examples[0] and "first on line 4" in examples[1]
    assert "first on line 2" in examples[2]


def test_an_error_in_the_ground_truth_comes_before_one_in_the_predictions(files, tmp_path):
    # The ground truth loads in a second thread while the predictions are read; when both
    # are bad, the ground truth's error is the one raised, as when they are read in turn.
    files["boxes"].write_text(GT_BOXES + "img3,/m/unknown,0.0,0.1,0.0,0.1,0\n")
    predictions = tmp_path / "predictions.csv"
    predictions.write_text(tf_rows(["img1,/m/cat,2.0,0.0,0.1,0.0,0.1"]))
    with pytest.raises(DataFormatError, match=r"boxes\.csv, line 6") as error:
        oid_challenge_map(files["hierarchy"], files["boxes"], files["labels"], predictions)
    assert not isinstance(error.value, PredictionFormatError)
