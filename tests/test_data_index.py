"""Tests of the memory-mapped annotation index."""

import json
import os
import pickle

import numpy as np
import pytest
from data_helpers import write_a_b_c_hierarchy

from lsdet.data.formats import DataFormatError
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import FLAG_GROUP_OF, FLAG_OCCLUDED, AnnotationIndex

HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
    "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
)
# classes: A (parent of B), B, C
ROWS = [
    "img_c,x,B,1,0.1,0.2,0.3,0.4,0,0,0,0,0",
    "img_a,x,C,1,0.5,0.6,0.5,0.6,1,0,1,0,0",
    "img_c,x,C,1,0.0,1.0,0.0,1.0,0,0,0,0,0",
    "img_a,x,C,1,0.1,0.2,0.1,0.2,0,0,0,0,0",
    "img_b,x,A,1,0.2,0.3,0.2,0.3,0,0,0,0,0",
]


@pytest.fixture()
def hierarchy(tmp_path):
    return Hierarchy.from_json(write_a_b_c_hierarchy(tmp_path / "h.json"))


@pytest.fixture()
def bbox_csv(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n")
    return path


def test_index_layout(tmp_path, hierarchy, bbox_csv):
    index = AnnotationIndex.build_or_open(bbox_csv, hierarchy, tmp_path / "cache")
    assert hierarchy.mids == ["A", "B", "C"]
    assert index.num_images == 3 and index.num_boxes == 5 and len(index) == 3
    assert list(index.image_ids) == ["img_a", "img_b", "img_c"]  # sorted
    assert index.image_id(2) == "img_c"
    np.testing.assert_array_equal(index.image_offsets, [0, 2, 3, 5])
    img_a = index.annotations(0)
    np.testing.assert_array_equal(img_a.class_ids, [2, 2])
    np.testing.assert_allclose(img_a.boxes, [[0.5, 0.5, 0.6, 0.6], [0.1, 0.1, 0.2, 0.2]])
    np.testing.assert_array_equal(img_a.flags, [FLAG_GROUP_OF | FLAG_OCCLUDED, 0])
    np.testing.assert_array_equal(img_a.is_group_of, [True, False])
    img_c = index.annotations(2)
    np.testing.assert_array_equal(img_c.class_ids, [1, 2])  # file order kept within an image
    assert index.boxes.dtype == np.float32 and index.class_ids.dtype == np.int16
    assert isinstance(index.boxes, np.memmap)
    np.testing.assert_array_equal(index.class_image_counts(), [1, 1, 2])
    np.testing.assert_array_equal(index.class_box_counts(), [1, 1, 3])
    offsets, images = index.class_to_images()
    np.testing.assert_array_equal(offsets, [0, 1, 2, 4])
    np.testing.assert_array_equal(images, [1, 2, 0, 2])
    np.testing.assert_array_equal(index.num_boxes_per_image(), [2, 1, 2])


def test_class_image_counts_with_descendants(tmp_path, hierarchy, bbox_csv):
    index = AnnotationIndex.build_or_open(bbox_csv, hierarchy, tmp_path / "cache")
    # A is boxed on img_b, its child B on img_c; C on img_a and img_c
    assert index.class_image_counts().tolist() == [1, 1, 2]
    assert index.class_image_counts_with_descendants(hierarchy.descendants).tolist() == [2, 1, 2]


def test_class_image_counts_with_descendants_counts_an_image_once(tmp_path, hierarchy):
    path = tmp_path / "boxes.csv"
    rows = ["img_a,x,A,1,0.1,0.2,0.1,0.2,0,0,0,0,0", "img_a,x,B,1,0.5,0.6,0.5,0.6,0,0,0,0,0"]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    index = AnnotationIndex.build_or_open(path, hierarchy, tmp_path / "cache")
    assert index.class_image_counts_with_descendants(hierarchy.descendants).tolist() == [1, 1, 0]


def test_pickle_sends_only_the_path(tmp_path, hierarchy, bbox_csv):
    index = AnnotationIndex.build_or_open(bbox_csv, hierarchy, tmp_path / "cache")
    payload = pickle.dumps(index)
    assert len(payload) < 1000
    copy = pickle.loads(payload)
    np.testing.assert_array_equal(copy.boxes, index.boxes)
    assert isinstance(copy.boxes, np.memmap)


def test_cache_reused_then_invalidated_when_source_changes(tmp_path, hierarchy, bbox_csv):
    cache = tmp_path / "cache"
    first = AnnotationIndex.build_or_open(bbox_csv, hierarchy, cache)
    stamp = (first.directory / "manifest.json").stat().st_mtime_ns
    again = AnnotationIndex.build_or_open(bbox_csv, hierarchy, cache)
    assert again.directory == first.directory
    assert (again.directory / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt

    bbox_csv.write_text("\n".join([HEADER, *ROWS, "img_d,x,B,1,0.1,0.2,0.1,0.2,0,0,0,0,0"]))
    os.utime(bbox_csv, ns=(stamp + 10**9, stamp + 10**9))
    rebuilt = AnnotationIndex.build_or_open(bbox_csv, hierarchy, cache)
    assert rebuilt.num_images == 4 and rebuilt.image_id(3) == "img_d"
    leftovers = [p.name for p in cache.iterdir() if p.suffix != ".lock"]  # the lock file stays
    assert leftovers == [first.directory.name]  # no temporary build folders


def test_images_without_boxes_from_image_labels(tmp_path, hierarchy, bbox_csv):
    labels = tmp_path / "labels.csv"
    labels.write_text("ImageID,Source,LabelName,Confidence\nimg_0,h,A,0\nimg_a,h,C,1\n")
    index = AnnotationIndex.build_or_open(
        bbox_csv, hierarchy, tmp_path / "cache", image_labels_csv=labels
    )
    assert list(index.image_ids) == ["img_0", "img_a", "img_b", "img_c"]
    assert len(index.annotations(0).class_ids) == 0
    np.testing.assert_array_equal(index.annotations(1).class_ids, [2, 2])
    offsets, images = index.class_to_images()
    np.testing.assert_array_equal(images[offsets[2] : offsets[3]], [1, 3])


def test_bad_rows_strict_and_reported(tmp_path, hierarchy, bbox_csv):
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([HEADER, *ROWS, "img_e,x,Q,1,0.1,0.2,0.1,0.2,0,0,0,0,0"]) + "\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv, line 7: unknown MID"):
        AnnotationIndex.build_or_open(bad, hierarchy, tmp_path / "cache")
    index = AnnotationIndex.build_or_open(bad, hierarchy, tmp_path / "cache", strict=False)
    assert index.num_boxes == 5 and "img_e" not in list(index.image_ids)
    assert index.reports[0]["skipped"] == {"unknown MID": 1}
    assert index.reports[0]["examples"][0][0] == 7


def test_real_sample_index(tmp_path, openimages_dir):
    samples = openimages_dir / "samples"
    descriptions = (samples / "v4-humanparts-class-descriptions.csv").read_text().splitlines()
    tree = {"LabelName": "root", "Subcategory": []}
    for line in descriptions[1:]:
        tree["Subcategory"].append({"LabelName": line.split(",")[0]})
    (tmp_path / "h.json").write_text(json.dumps(tree))
    hierarchy = Hierarchy.from_json(tmp_path / "h.json")
    index = AnnotationIndex.build_or_open(
        samples / "v4-humanparts-train-annotations-bbox.csv", hierarchy, tmp_path / "cache"
    )
    assert index.num_images == 10079 and index.num_boxes == 13134
    assert index.class_box_counts().sum() == 13134
    offsets, images = index.class_to_images()
    for k in range(hierarchy.num_classes):
        members = images[offsets[k] : offsets[k + 1]]
        assert np.all(np.diff(members) > 0)  # sorted, unique
        for i in members[:3]:
            assert k in index.annotations(i).class_ids


def test_data_layer_imports_without_torch():
    """Readers, index and hierarchy stay usable by tools that never train (no torch import)."""
    import subprocess
    import sys

    code = "import sys, lsdet.data; assert 'torch' not in sys.modules; lsdet.data.collate_fn"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rows_of_classes_outside_the_subset_are_excluded(tmp_path, bbox_csv):
    write_a_b_c_hierarchy(tmp_path / "h.json")
    subset = Hierarchy.from_json(tmp_path / "h.json", subset_mids=["C", "A"])
    index = AnnotationIndex.build_or_open(bbox_csv, subset, tmp_path / "cache")
    assert index.num_boxes == 4  # the B box is dropped (B is outside the subset), not an error
    assert index.reports[0]["excluded"] == 1
    np.testing.assert_array_equal(index.class_box_counts(), [3, 1])  # C, A


def _open_index_in_subprocess(args):
    bbox_csv, hierarchy_json, cache_dir = args
    hierarchy = Hierarchy.from_json(hierarchy_json)
    return AnnotationIndex.build_or_open(bbox_csv, hierarchy, cache_dir).num_boxes


def test_processes_building_the_same_index_at_once_all_get_it(tmp_path, bbox_csv):
    from concurrent.futures import ProcessPoolExecutor

    hierarchy_json = tmp_path / "h2.json"
    tree = {"LabelName": "root", "Subcategory": [{"LabelName": m} for m in ("A", "B", "C")]}
    hierarchy_json.write_text(json.dumps(tree))
    args = [(bbox_csv, hierarchy_json, tmp_path / "shared-cache")] * 4
    with ProcessPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(_open_index_in_subprocess, args)) == [5, 5, 5, 5]


def test_image_level_labels_are_kept_with_their_confidence(tmp_path, hierarchy, bbox_csv):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "ImageID,Source,LabelName,Confidence\nimg_c,h,C,1\nimg_0,h,A,0\nimg_c,h,A,0\nimg_a,h,B,1\n"
    )
    index = AnnotationIndex.build_or_open(
        bbox_csv, hierarchy, tmp_path / "cache", image_labels_csv=labels
    )
    assert list(index.image_ids) == ["img_0", "img_a", "img_b", "img_c"]
    # img_c's labels are rows 2:4 (file order kept), img_0's row 0, img_b has boxes only
    np.testing.assert_array_equal(index.label_offsets, [0, 1, 2, 2, 4])
    np.testing.assert_array_equal(index.label_class_ids, [0, 1, 2, 0])
    np.testing.assert_array_equal(index.label_confidence, [0, 1, 1, 0])
    no_labels = AnnotationIndex.build_or_open(bbox_csv, hierarchy, tmp_path / "cache")
    assert len(no_labels.label_class_ids) == 0
    np.testing.assert_array_equal(no_labels.label_offsets, [0, 0, 0, 0])


def test_unknown_mid_in_the_image_labels_is_an_error_or_a_counted_skip(
    tmp_path, hierarchy, bbox_csv
):
    labels = tmp_path / "labels.csv"
    labels.write_text("ImageID,Source,LabelName,Confidence\nimg_a,h,C,1\nimg_x,h,/m/nope,1\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv, line 3: unknown MID"):
        AnnotationIndex.build_or_open(
            bbox_csv, hierarchy, tmp_path / "cache", image_labels_csv=labels
        )
    index = AnnotationIndex.build_or_open(
        bbox_csv, hierarchy, tmp_path / "cache", image_labels_csv=labels, strict=False
    )
    assert "img_x" not in list(index.image_ids) and len(index.label_class_ids) == 1
    assert index.read_report["files"][1]["skipped"] == {"unknown MID": 1}


def test_read_report_survives_the_cache(tmp_path, hierarchy, bbox_csv):
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([HEADER, *ROWS, "img_e,x,Q,1,0.1,0.2,0.1,0.2,0,0,0,0,0"]) + "\n")
    built = AnnotationIndex.build_or_open(bad, hierarchy, tmp_path / "cache", strict=False)
    stamp = (built.directory / "manifest.json").stat().st_mtime_ns
    cached = AnnotationIndex.build_or_open(bad, hierarchy, tmp_path / "cache", strict=False)
    assert (cached.directory / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert cached.read_report == built.read_report
    report = cached.read_report
    assert report["rows_skipped"] == 1 and report["strict"] is False
    assert report["files"][0]["skipped"] == {"unknown MID": 1}
    assert report["files"][0]["examples"][0][:2] == [7, "unknown MID"]
    json.dumps(report)  # JSON-ready for a run's records


def test_content_fingerprint_follows_the_content_not_the_place(tmp_path, hierarchy, bbox_csv):
    import shutil

    index = AnnotationIndex.build_or_open(bbox_csv, hierarchy, tmp_path / "cache")
    assert set(index.source_sha256) == {"bbox_csv"}
    moved = tmp_path / "staged" / "boxes.csv"
    moved.parent.mkdir()
    shutil.copy(bbox_csv, moved)
    staged = AnnotationIndex.build_or_open(moved, hierarchy, tmp_path / "cache2")
    assert staged.directory != index.directory  # another path: another cache entry
    assert staged.content_fingerprint == index.content_fingerprint
    moved.write_text("\n".join([HEADER, *ROWS[:-1], ROWS[-1].replace("0.3", "0.35")]) + "\n")
    changed = AnnotationIndex.build_or_open(moved, hierarchy, tmp_path / "cache2")
    assert changed.content_fingerprint != index.content_fingerprint
    labels = tmp_path / "labels.csv"
    labels.write_text("ImageID,Source,LabelName,Confidence\nimg_a,h,C,1\n")
    with_labels = AnnotationIndex.build_or_open(
        bbox_csv, hierarchy, tmp_path / "cache", image_labels_csv=labels
    )
    assert set(with_labels.source_sha256) == {"bbox_csv", "image_labels_csv"}
    assert with_labels.content_fingerprint != index.content_fingerprint


def test_one_reader_gives_the_index_and_the_evaluator_the_same_rows(tmp_path, bbox_csv):
    """read_split_annotations reads a split for both: same rows kept, same reports."""
    from lsdet.data.formats import read_split_annotations
    from lsdet.evaluation import load_ground_truth

    write_a_b_c_hierarchy(tmp_path / "h.json")
    subset = Hierarchy.from_json(tmp_path / "h.json", subset_mids=["C", "A"])
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(
        "ImageID,Source,LabelName,Confidence\nimg_a,h,C,1\nimg_x,h,/m/nope,1\nimg_b,h,B,0\n"
    )
    boxes, labels = read_split_annotations(subset, bbox_csv, labels_csv, strict=False)
    assert len(boxes) == 4 and boxes.report.excluded == 1  # the B box: outside the subset
    assert len(labels) == 1 and labels.report.excluded == 1
    assert labels.report.skipped == {"unknown MID": 1}
    assert read_split_annotations(subset, bbox_csv)[1] is None
    with pytest.raises(DataFormatError, match=r"labels\.csv, line 3: unknown MID"):
        read_split_annotations(subset, bbox_csv, labels_csv)
    index = AnnotationIndex.build_or_open(
        bbox_csv, subset, tmp_path / "cache", image_labels_csv=labels_csv, strict=False
    )
    gt = load_ground_truth(subset, bbox_csv, labels_csv, strict=False)
    assert index.reports == [boxes.report.to_dict(), labels.report.to_dict()]
    assert [r.to_dict() for r in gt.read_reports] == index.reports
