"""COCO / LVIS JSON reader and its annotation index (lsdet.data.coco_format)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lsdet.data import DataFormatError, concurrent_rates_from_index
from lsdet.data.coco_format import build_or_open_coco_index, flat_hierarchy, read_coco_json


def lvis_file(tmp_path, **changes):
    """A small LVIS v1-style file: 3 images, 3 categories (r, c, f), one crowd box, two
    synonym-like categories boxing the same object."""
    data = {
        "images": [
            {
                "id": 7,
                "width": 200,
                "height": 100,
                "file_name": "a.jpg",
                "neg_category_ids": [3],
                "not_exhaustive_category_ids": [2],
            },
            {"id": 8, "width": 100, "height": 100, "file_name": "b.jpg", "neg_category_ids": []},
            {
                "id": 9,
                "width": 50,
                "height": 50,
                "neg_category_ids": [1],
                "coco_url": "http://images.cocodataset.org/val2017/000000000009.jpg",
            },
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [20, 10, 100, 50], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [20, 10, 100, 50], "iscrowd": 0},
            {"id": 3, "image_id": 8, "category_id": 3, "bbox": [0, 0, 100.5, 40], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        ],
        "categories": [
            {"id": 1, "name": "mug", "frequency": "r", "image_count": 3, "instance_count": 4},
            {"id": 2, "name": "cup", "frequency": "c", "image_count": 30, "instance_count": 50},
            {
                "id": 3,
                "name": "person",
                "frequency": "f",
                "image_count": 900,
                "instance_count": 5000,
            },
        ],
    }
    for key, value in changes.items():
        data[key] = value
    path = tmp_path / "lvis_v1_train.json"
    path.write_text(json.dumps(data))
    return path, data


def test_reader_gives_the_open_images_tables(tmp_path):
    path, _ = lvis_file(tmp_path)
    read = read_coco_json(path)
    assert read.categories.mids == ["1", "2", "3"]
    assert read.categories.frequency == ["r", "c", "f"]
    assert read.categories.image_count.tolist() == [3, 30, 900]
    boxes = read.boxes
    assert list(boxes.image_ids) == ["7", "7", "8", "7"]
    assert list(boxes.mids) == ["1", "2", "3", "2"]
    # pixels [x, y, w, h] -> normalised xmin, ymin, xmax, ymax; 100.5 overruns by 0.5: clipped
    np.testing.assert_allclose(boxes.boxes[0], [0.1, 0.1, 0.6, 0.6], rtol=1e-6)
    np.testing.assert_allclose(boxes.boxes[2], [0.0, 0.0, 1.0, 0.4], rtol=1e-6)
    assert boxes.is_group_of.tolist() == [False, False, True, False]
    labels = read.image_labels
    pairs = sorted(zip(labels.image_ids, labels.mids, labels.confidence.tolist(), strict=True))
    assert pairs == [("7", "1", 1), ("7", "2", 1), ("7", "3", 0), ("8", "3", 1), ("9", "1", 0)]
    assert read.not_exhaustive == {7: [2]}
    assert read.file_names == ["a.jpg", "b.jpg", "val2017/000000000009.jpg"]
    assert flat_hierarchy(read.categories).leaf_mask.all()


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ({"category_id": 99}, "category_id not in 'categories'"),
        ({"image_id": 12345}, "image_id not in 'images'"),
        ({"bbox": [150, 10, 60, 20]}, "bbox outside the image"),
        ({"bbox": [10, 10, 0, 20]}, "empty bbox"),
        ({"bbox": [10, 10, 20]}, "bbox is not 4 numbers"),
    ],
)
def test_bad_annotation_names_file_and_id_or_is_counted(tmp_path, annotation, reason):
    _, data = lvis_file(tmp_path)
    bad = {"id": 77, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5], **annotation}
    path, _ = lvis_file(tmp_path, annotations=data["annotations"] + [bad])
    with pytest.raises(DataFormatError) as error:
        read_coco_json(path)
    assert str(path) in str(error.value) and "annotation id 77" in str(error.value)
    assert reason in str(error.value) and "data.strict=false" in str(error.value)

    read = read_coco_json(path, strict=False)
    assert len(read.boxes.image_codes) == 4
    assert read.report.rows_skipped == 1
    assert next(iter(read.report.skipped)).startswith(reason)
    assert read.report.examples[0][0] == 77


def test_unknown_negative_category_and_duplicate_ids_are_errors(tmp_path):
    _, data = lvis_file(tmp_path)
    data["images"][1]["neg_category_ids"] = [42]
    path, _ = lvis_file(tmp_path, images=data["images"])
    with pytest.raises(DataFormatError, match=r"image id 8: neg_category_ids .*\[42\]"):
        read_coco_json(path, strict=False)
    _, data = lvis_file(tmp_path)
    path, _ = lvis_file(tmp_path, images=data["images"] + [data["images"][0]])
    with pytest.raises(DataFormatError, match=r"image ids occur more than once: \[7\]"):
        read_coco_json(path)


def test_index_is_built_once_and_rebuilt_when_the_file_changes(tmp_path):
    path, data = lvis_file(tmp_path)
    cache = tmp_path / "cache"
    built = build_or_open_coco_index(path, cache)
    index = built.index
    assert index.mids == ["1", "2", "3"]
    assert index.num_images == 3 and index.num_boxes == 4  # image 9 has only a negative label
    position = list(index.image_ids).index("7")
    annotations = index.annotations(position)
    assert sorted(index.mids[k] for k in annotations.class_ids) == ["1", "2", "2"]
    nine = list(index.image_ids).index("9")
    start, stop = index.label_offsets[nine], index.label_offsets[nine + 1]
    labels, confidence = index.label_class_ids[start:stop], index.label_confidence[start:stop]
    assert [index.mids[k] for k in labels] == ["1"] and confidence.tolist() == [0]
    assert index.class_image_counts().tolist() == [1, 1, 1]
    first_manifest = (index.directory / "manifest.json").stat().st_mtime_ns

    reopened = build_or_open_coco_index(path, cache)
    assert (reopened.index.directory / "manifest.json").stat().st_mtime_ns == first_manifest

    data["annotations"].append(
        {"id": 5, "image_id": 9, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0}
    )
    path.write_text(json.dumps(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    rebuilt = build_or_open_coco_index(path, cache)
    assert rebuilt.index.num_boxes == 5


def test_skips_are_kept_with_the_cached_index(tmp_path):
    _, data = lvis_file(tmp_path)
    bad = {"id": 50, "image_id": 7, "category_id": 99, "bbox": [1, 1, 5, 5]}
    path, _ = lvis_file(tmp_path, annotations=data["annotations"] + [bad])
    with pytest.raises(DataFormatError, match="annotation id 50"):
        build_or_open_coco_index(path, tmp_path / "cache")
    built = build_or_open_coco_index(path, tmp_path / "cache", strict=False)
    again = build_or_open_coco_index(path, tmp_path / "cache", strict=False)
    for result in (built, again):
        assert result.read_report["skipped"] == {"category_id not in 'categories'": 1}
        assert result.index.num_boxes == 4


def test_concurrent_rates_come_from_coinciding_boxes(tmp_path):
    """mug and cup box the same object in image 7: the flat hierarchy's rates see it."""
    path, _ = lvis_file(tmp_path)
    built = build_or_open_coco_index(path, tmp_path / "cache")
    rates = concurrent_rates_from_index(built.index, built.hierarchy, prior_count=0, progress=False)
    # row/column 0 is the background; mug = 1, cup = 2, person = 3
    assert rates[1, 2] == 1.0 and rates[2, 1] == 0.5  # cup has a second, lone box
    assert rates[1, 3] == 0 and rates[3, 1] == 0


def test_index_keeps_each_images_file_name(tmp_path):
    """file_name by image id, also for an image named by its COCO URL only (LVIS v1) and for
    one with no box (9: a negative label only); a cache of the tables without them is rebuilt
    (the conversion version is part of the cache key)."""
    path, _ = lvis_file(tmp_path)
    built = build_or_open_coco_index(path, tmp_path / "cache")
    assert built.file_names == {"7": "a.jpg", "8": "b.jpg", "9": "val2017/000000000009.jpg"}
    assert all(built.index.image_id(k) in built.file_names for k in range(built.index.num_images))
    assert (built.tables_dir / "file_names.json").is_file()


def test_dataset_opens_each_images_file_name(tmp_path):
    """OpenImagesDetection over a COCO/LVIS index reads <image_dir>/<file_name> (also in a
    subfolder, as LVIS v1's train2017/ and val2017/), and a missing one is an error naming
    its path."""
    from PIL import Image

    from lsdet.data.dataset import ImageLoadError, OpenImagesDetection

    path, _ = lvis_file(tmp_path)
    built = build_or_open_coco_index(path, tmp_path / "cache")
    image_dir = tmp_path / "images"
    (image_dir / "val2017").mkdir(parents=True)
    sizes = {"a.jpg": (200, 100), "b.jpg": (100, 100), "val2017/000000000009.jpg": (50, 50)}
    for name, size in sizes.items():
        Image.new("RGB", size, (10, 20, 30)).save(image_dir / name)
    dataset = OpenImagesDetection(
        built.index, built.hierarchy, image_dir, file_names=built.file_names
    )
    image, target = dataset[list(built.index.image_ids).index("9")]
    assert tuple(image.shape) == (3, 50, 50) and target["image_id"] == "9"
    image, target = dataset[list(built.index.image_ids).index("7")]
    assert tuple(image.shape) == (3, 100, 200)
    assert target["boxes"][0].tolist() == pytest.approx([20, 10, 120, 60])

    (image_dir / "val2017" / "000000000009.jpg").unlink()
    with pytest.raises(ImageLoadError, match="val2017/000000000009.jpg"):
        OpenImagesDetection(built.index, built.hierarchy, image_dir, file_names=built.file_names)
