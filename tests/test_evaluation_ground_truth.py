"""Ground truth for the metric: files the official tool expanded already, and the one path
from the annotation index the validation loader uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lsdet.data import AnnotationIndex, Hierarchy, load_hierarchy
from lsdet.evaluation import (
    EvaluationGroundTruth,
    evaluate,
    load_ground_truth,
    load_ground_truth_from_index,
    oid_challenge_map,
    write_predictions_csv,
)

# root > animal > (cat, dog); root > elephant; root > vehicle > car > taxi
TREE = {
    "LabelName": "/m/root",
    "Subcategory": [
        {
            "LabelName": "/m/animal",
            "Subcategory": [{"LabelName": "/m/cat"}, {"LabelName": "/m/dog"}],
        },
        {"LabelName": "/m/elephant"},
        {
            "LabelName": "/m/vehicle",
            "Subcategory": [
                {"LabelName": "/m/car", "Subcategory": [{"LabelName": "/m/taxi"}]},
            ],
        },
    ],
}
LONG_HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
    "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
)
SHORT_HEADER = "ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf"
# (image, mid, xmin, xmax, ymin, ymax, group_of); unexpanded, as annotated
BOXES = [
    ("img1", "/m/cat", 0.0, 0.1, 0.0, 0.1, 0),
    ("img1", "/m/animal", 0.0, 0.1, 0.0, 0.1, 0),  # the same object boxed as its parent too
    ("img1", "/m/elephant", 0.0, 0.2, 0.0, 0.2, 0),
    ("img1", "/m/cat", 0.0, 0.3, 0.0, 0.3, 1),
    ("img2", "/m/dog", 0.5, 0.6, 0.5, 0.6, 0),
    ("img2", "/m/cat", 0.5, 0.6, 0.5, 0.6, 0),  # one object, two leaves: animal twice
    ("img2", "/m/taxi", 0.1, 0.4, 0.1, 0.3, 0),
    ("img3", "/m/dog", 0.2, 0.5, 0.2, 0.5, 0),
    ("img3", "/m/dog", 0.2, 0.5, 0.2, 0.5, 0),  # annotated twice in the file: kept twice
]
# (image, mid, confidence)
LABELS = [
    ("img1", "/m/dog", 1),
    ("img2", "/m/elephant", 0),
    ("img3", "/m/vehicle", 0),
    ("img4", "/m/car", 1),
]


def official_expansion(hierarchy: Hierarchy, boxes=BOXES, labels=LABELS):
    """What oid_hierarchical_labels_expansion.py writes: each box row, then a copy per
    ancestor; each positive label row then a copy per ancestor, each negative then a copy
    per descendant."""
    expanded_boxes, expanded_labels = [], []
    for row in boxes:
        expanded_boxes.append(row)
        k = hierarchy.index(row[1])
        for j in np.flatnonzero(hierarchy.ancestors[k]):
            expanded_boxes.append((row[0], hierarchy.mids[j], *row[2:]))
    for image, mid, confidence in labels:
        expanded_labels.append((image, mid, confidence))
        k = hierarchy.index(mid)
        related = hierarchy.ancestors[k] if confidence == 1 else hierarchy.descendants[k]
        for j in np.flatnonzero(related):
            expanded_labels.append((image, hierarchy.mids[j], confidence))
    return expanded_boxes, expanded_labels


def write_boxes(path: Path, rows, layout: str) -> Path:
    lines = [LONG_HEADER if layout == "long" else SHORT_HEADER]
    for image, mid, x0, x1, y0, y1, group in rows:
        if layout == "long":
            lines.append(f"{image},xclick,{mid},1,{x0},{x1},{y0},{y1},0,0,{group},0,0")
        else:
            lines.append(f"{image},{mid},{x0},{x1},{y0},{y1},{group}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_labels(path: Path, rows) -> Path:
    lines = ["ImageID,Source,LabelName,Confidence"]
    lines += [f"{image},verification,{mid},{confidence}" for image, mid, confidence in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_same_ground_truth(a: EvaluationGroundTruth, b: EvaluationGroundTruth) -> None:
    assert a.mids == b.mids
    np.testing.assert_array_equal(a.image_ids, b.image_ids)
    np.testing.assert_array_equal(a.box_image, b.box_image)
    np.testing.assert_array_equal(a.box_class, b.box_class)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.box_is_group_of, b.box_is_group_of)
    np.testing.assert_array_equal(a.verified_keys, b.verified_keys)


@pytest.fixture
def hierarchy_json(tmp_path: Path) -> Path:
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps(TREE))
    return path


def predictions_for(gt_rows, tmp_path: Path, seed: int = 0) -> Path:
    """Detections near every GT box (some of them off), for every class of the tree."""
    rng = np.random.default_rng(seed)
    mids = [mid for mid in ("/m/animal", "/m/cat", "/m/dog", "/m/elephant", "/m/car")]
    images, labels, scores, boxes = [], [], [], []
    for image, _, x0, x1, y0, y1, _ in gt_rows:
        for mid in mids:
            shift = rng.uniform(-0.05, 0.05)
            images.append(image)
            labels.append(mid)
            scores.append(rng.uniform())
            boxes.append([x0, y0, min(x1 + shift, 1.0), min(y1 + shift, 1.0)])
    path = tmp_path / "predictions.csv"
    return write_predictions_csv(
        path, images, labels, np.array(scores), np.array(boxes), layout="tf"
    )


@pytest.mark.parametrize("layout", ["long", "short"])
def test_files_expanded_by_the_official_tool_are_not_counted_twice(
    tmp_path, hierarchy_json, layout
):
    hierarchy = load_hierarchy(hierarchy_json)
    expanded_boxes, expanded_labels = official_expansion(hierarchy)
    assert len(expanded_boxes) > len(BOXES) and len(expanded_labels) > len(LABELS)
    plain = load_ground_truth(
        hierarchy,
        write_boxes(tmp_path / "boxes.csv", BOXES, layout),
        write_labels(tmp_path / "labels.csv", LABELS),
    )
    already = load_ground_truth(
        hierarchy,
        write_boxes(tmp_path / "boxes_expanded.csv", expanded_boxes, layout),
        write_labels(tmp_path / "labels_expanded.csv", expanded_labels),
    )
    assert_same_ground_truth(plain, already)
    animal, cat, dog, elephant, vehicle, car, taxi = range(7)
    assert hierarchy.mids[animal] == "/m/animal" and hierarchy.mids[taxi] == "/m/taxi"
    # animal: img1's object boxed as cat and as animal once, the group-of cat's copy, img2's
    # cat+dog object once, img3's dog boxed twice in the file once. dog keeps the file's
    # repeat (2 + img2's); cat: img1's two boxes and img2's.
    np.testing.assert_array_equal(plain.num_instances(), [4, 3, 3, 1, 1, 1, 1])
    verified = {(plain.image_ids[k // 7], plain.mids[k % 7]) for k in plain.verified_keys}
    assert ("img3", "/m/taxi") in verified and ("img4", "/m/vehicle") in verified

    predictions = predictions_for(BOXES, tmp_path)
    results = [
        oid_challenge_map(hierarchy_json, tmp_path / f"boxes{suffix}.csv", labels, predictions)
        for suffix, labels in (
            ("", tmp_path / "labels.csv"),
            ("_expanded", tmp_path / "labels_expanded.csv"),
        )
    ]
    assert 0 < results[0].map < 1
    assert results[0].map == results[1].map
    assert results[0].per_class_ap == results[1].per_class_ap


def test_image_level_labels_already_expanded_give_the_same_verified_classes(
    tmp_path, hierarchy_json
):
    hierarchy = load_hierarchy(hierarchy_json)
    _, expanded_labels = official_expansion(hierarchy)
    boxes = write_boxes(tmp_path / "boxes.csv", BOXES, "short")
    plain = load_ground_truth(hierarchy, boxes, write_labels(tmp_path / "l.csv", LABELS))
    already = load_ground_truth(
        hierarchy, boxes, write_labels(tmp_path / "le.csv", expanded_labels)
    )
    np.testing.assert_array_equal(plain.verified_keys, already.verified_keys)


def test_expansion_still_adds_every_ancestor_box_once(tmp_path, hierarchy_json):
    hierarchy = load_hierarchy(hierarchy_json)
    rows = [("img", "/m/taxi", 0.1, 0.2, 0.1, 0.2, 0), ("img", "/m/taxi", 0.3, 0.4, 0.3, 0.4, 0)]
    gt = load_ground_truth(hierarchy, write_boxes(tmp_path / "b.csv", rows, "short"))
    # each taxi box: itself, car, vehicle; two distinct boxes -> two of each
    np.testing.assert_array_equal(gt.num_instances(), [0, 0, 0, 0, 2, 2, 2])
    unexpanded = load_ground_truth(
        hierarchy, write_boxes(tmp_path / "b.csv", rows, "short"), expand_gt=False
    )
    np.testing.assert_array_equal(unexpanded.num_instances(), [0, 0, 0, 0, 0, 0, 2])


# ------------------------------------------------------------------ from the index
def random_split(rng: np.random.Generator, hierarchy: Hierarchy, num_images: int = 60):
    """Boxes (some identical across classes, some group-of) and labels, rows shuffled."""
    boxes, labels = [], []
    for i in range(num_images):
        image = f"im{rng.integers(10**6):06d}_{i}"
        for _ in range(rng.integers(0, 5)):
            x0, y0 = rng.uniform(0, 0.5, 2).round(4)
            x1, y1 = (x0 + rng.uniform(0.05, 0.5)).round(4), (y0 + rng.uniform(0.05, 0.5)).round(4)
            mids = rng.choice(hierarchy.mids, size=rng.integers(1, 3), replace=False)
            group = int(rng.uniform() < 0.2)
            boxes += [(image, str(mid), x0, x1, y0, y1, group) for mid in mids]
        for mid in rng.choice(hierarchy.mids, size=rng.integers(0, 3), replace=False):
            labels.append((image, str(mid), int(rng.integers(0, 2))))
    boxes = [boxes[k] for k in rng.permutation(len(boxes))]
    labels = [labels[k] for k in rng.permutation(len(labels))]
    return boxes, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_ground_truth_from_the_index_equals_the_csv_path(tmp_path, hierarchy_json, seed):
    rng = np.random.default_rng(seed)
    hierarchy = load_hierarchy(hierarchy_json)
    boxes, labels = random_split(rng, hierarchy)
    bbox_csv = write_boxes(tmp_path / "val.csv", boxes, "long")
    labels_csv = write_labels(tmp_path / "val_labels.csv", labels)
    index = AnnotationIndex.build_or_open(
        bbox_csv, hierarchy, tmp_path / "cache", image_labels_csv=labels_csv
    )
    for expand_gt in (True, False):
        from_csv = load_ground_truth(hierarchy, bbox_csv, labels_csv, expand_gt=expand_gt)
        from_index = load_ground_truth_from_index(index, hierarchy, expand_gt=expand_gt)
        assert_same_ground_truth(from_csv, from_index)
    assert from_index.read_reports[1].rows_read == len(labels)

    from lsdet.evaluation import read_predictions_csv

    predictions = read_predictions_csv(predictions_for(boxes, tmp_path, seed), hierarchy.mids)
    gt_csv = load_ground_truth(hierarchy, bbox_csv, labels_csv)
    gt_index = load_ground_truth_from_index(index, hierarchy)
    results = [
        evaluate(
            gt,
            predictions.image_ids[predictions.image_index],
            predictions.class_indices,
            predictions.scores,
            predictions.boxes,
        )
        for gt in (gt_csv, gt_index)
    ]
    assert 0 < results[0].map < 1 and results[0].map == results[1].map


def test_index_of_other_classes_is_rejected(tmp_path, hierarchy_json):
    hierarchy = load_hierarchy(hierarchy_json)
    bbox_csv = write_boxes(tmp_path / "val.csv", BOXES, "short")
    index = AnnotationIndex.build_or_open(bbox_csv, hierarchy, tmp_path / "cache")
    other = Hierarchy.from_json(hierarchy_json, subset_mids=["/m/cat", "/m/animal"])
    with pytest.raises(ValueError, match="other classes"):
        load_ground_truth_from_index(index, other)


def test_ground_truth_from_the_index_on_real_open_images_rows(tmp_path, openimages_dir):
    """Real V4 rows (six human-part classes, 2,784 boxes) under the real 600-class tree."""
    bbox_csv = openimages_dir / "samples" / "v4-humanparts-test-annotations-bbox.csv"
    hierarchy = load_hierarchy(openimages_dir / "bbox_labels_600_hierarchy.json")
    index = AnnotationIndex.build_or_open(bbox_csv, hierarchy, tmp_path / "cache")
    from_csv = load_ground_truth(hierarchy, bbox_csv)
    from_index = load_ground_truth_from_index(index, hierarchy)
    assert len(from_csv.box_class) == 2784  # these six classes have no ancestor
    assert_same_ground_truth(from_csv, from_index)
    rng = np.random.default_rng(0)
    take = rng.choice(len(from_csv.box_class), 1500, replace=False)
    detections = {
        "image_ids": from_csv.box_image[take],
        "class_indices": from_csv.box_class[take],
        "scores": rng.uniform(size=1500),
        "boxes": from_csv.boxes[take] + rng.normal(0, 0.02, (1500, 4)),
    }
    maps = [evaluate(gt, **detections).map for gt in (from_csv, from_index)]
    assert 0 < maps[0] < 1 and maps[0] == maps[1]


def test_skipped_images_are_left_out_of_the_ground_truth_and_reported(tmp_path, hierarchy_json):
    hierarchy = load_hierarchy(hierarchy_json)
    gt = load_ground_truth(
        hierarchy,
        write_boxes(tmp_path / "b.csv", BOXES, "short"),
        write_labels(tmp_path / "l.csv", LABELS),
    )
    # Detections: perfect on img1 and img3; img2 unseen (its file was missing).
    seen = [row for row in BOXES if row[0] != "img2" and not row[6]]
    detections = {
        "image_ids": [row[0] for row in seen],
        "class_indices": hierarchy.indices([row[1] for row in seen]),
        "scores": np.linspace(0.9, 0.5, len(seen)),
        "boxes": [[row[2], row[4], row[3], row[5]] for row in seen],
    }
    counted_as_misses = evaluate(gt, **detections)
    without = gt.without_images(["img2"], ["file not found: img2.jpg"])
    result = evaluate(without, **detections)
    assert list(without.image_ids) == ["img1", "img3", "img4"]
    expected = load_ground_truth(
        hierarchy,
        write_boxes(tmp_path / "b2.csv", [r for r in BOXES if r[0] != "img2"], "short"),
        write_labels(tmp_path / "l2.csv", [r for r in LABELS if r[0] != "img2"]),
    )
    assert_same_ground_truth(without, expected)
    assert without.left_out_boxes == len(gt.box_class) - len(expected.box_class) == 6
    assert "/m/taxi" not in result.per_class_ap  # its only box was on img2
    assert counted_as_misses.per_class_ap["/m/taxi"] == 0.0
    assert result.per_class_ap["/m/dog"] > counted_as_misses.per_class_ap["/m/dog"]
    report = result.to_dict()["report"]
    assert report["skipped_images"] == 1 and report["ground_truth_boxes_left_out"] == 6
    assert report["skipped_image_examples"] == [
        {"image_id": "img2", "reason": "file not found: img2.jpg"}
    ]
    assert counted_as_misses.to_dict()["report"]["skipped_images"] == 0
