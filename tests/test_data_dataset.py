"""Tests of the training dataset: decoding, pixel boxes, merging, flips, bad images."""

import json
import logging

import numpy as np
import pytest
import torch
from data_helpers import write_a_b_c_hierarchy
from PIL import Image

from lsdet.data.dataset import (
    ImageLoadError,
    OpenImagesDetection,
    collate_fn,
    merge_coincident_boxes,
)
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import AnnotationIndex

HEADER = "ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf"
# classes (mids order): A, B (child of A), C
ROWS = [
    "img1,B,0.10,0.50,0.20,0.60,0",  # these two are one object labelled B and C
    "img1,C,0.10,0.50,0.20,0.61,0",
    "img1,C,0.60,0.90,0.60,0.90,1",  # a separate group-of object
    "img2,A,0.0,1.0,0.0,1.0,0",
]


@pytest.fixture()
def setup(tmp_path):
    write_a_b_c_hierarchy(tmp_path / "h.json")
    hierarchy = Hierarchy.from_json(tmp_path / "h.json")
    (tmp_path / "boxes.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    (tmp_path / "labels.csv").write_text("ImageID,Source,LabelName,Confidence\nimg3,h,A,0\n")
    index = AnnotationIndex.build_or_open(
        tmp_path / "boxes.csv",
        hierarchy,
        tmp_path / "cache",
        image_labels_csv=tmp_path / "labels.csv",
    )
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    pixels = {}
    for name in ("img1", "img2", "img3"):
        array = rng.integers(0, 255, size=(40, 100, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / f"{name}.png")  # lossless, to compare pixels
        pixels[name] = array
    return hierarchy, index, root, pixels


def test_item_targets(setup):
    hierarchy, index, root, pixels = setup
    dataset = OpenImagesDetection(index, hierarchy, root, image_suffix=".png")
    assert len(dataset) == 3
    image, target = dataset[0]
    assert image.shape == (3, 40, 100) and image.dtype == torch.float32
    expected = torch.from_numpy(pixels["img1"]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected)
    assert target["image_id"] == "img1"
    # object 1: mean of the two coincident boxes, in pixels (width 100, height 40)
    torch.testing.assert_close(
        target["boxes"],
        torch.tensor([[10.0, 8.0 * 1.0, 50.0, 40 * 0.605], [60.0, 24.0, 90.0, 36.0]]),
    )
    a, b, c = (hierarchy.index(m) for m in "ABC")
    # primary = the deepest annotated label (B, depth 2) + 1
    assert target["labels"].tolist() == [b + 1, c + 1]
    assert target["labels"].dtype == torch.int64
    multilabels = torch.zeros(2, 3)
    multilabels[0, [a, b, c]] = 1  # B and C annotated, A added as B's ancestor
    multilabels[1, c] = 1
    torch.testing.assert_close(target["multilabels"], multilabels)
    assert target["is_group_of"].tolist() == [False, True]


def test_image_without_boxes(setup):
    hierarchy, index, root, _ = setup
    dataset = OpenImagesDetection(index, hierarchy, root, image_suffix=".png")
    image, target = dataset[list(index.image_ids).index("img3")]
    assert image.shape == (3, 40, 100)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["multilabels"].shape == (0, 3) and target["is_group_of"].shape == (0,)


def test_resize_and_flip(setup):
    hierarchy, index, root, _ = setup
    plain = OpenImagesDetection(index, hierarchy, root, image_suffix=".png", image_size=(20, 50))
    flipped = OpenImagesDetection(
        index, hierarchy, root, image_suffix=".png", image_size=(20, 50), hflip_prob=1.0
    )
    image, target = plain[0]
    assert image.shape == (3, 20, 50)
    torch.testing.assert_close(target["boxes"][1], torch.tensor([30.0, 12.0, 45.0, 18.0]))
    flipped_image, flipped_target = flipped[0]
    torch.testing.assert_close(flipped_image, image.flip(-1))
    torch.testing.assert_close(flipped_target["boxes"][1], torch.tensor([5.0, 12.0, 20.0, 18.0]))


def test_missing_and_corrupt_images(setup, caplog):
    hierarchy, index, root, _ = setup
    (root / "img1.png").unlink()
    with pytest.raises(ImageLoadError, match=r"1 of the 3 images .* no file .*img1\.png") as err:
        OpenImagesDetection(index, hierarchy, root, image_suffix=".png")
    assert "data.strict=false" in str(err.value)
    (root / "img2.png").write_bytes(b"not an image at all")
    unchecked = OpenImagesDetection(index, hierarchy, root, image_suffix=".png", check_files=False)
    with pytest.raises(ImageLoadError, match=r"image img1: file not found: .*img1\.png"):
        unchecked[0]
    with pytest.raises(ImageLoadError, match=r"image img2: cannot decode .*img2\.png"):
        unchecked[1]
    with caplog.at_level(logging.WARNING):
        lenient = OpenImagesDetection(index, hierarchy, root, image_suffix=".png", strict=False)
        assert lenient.skipped_images.image_ids == ["img1"]  # found when built
        _, target = lenient[0]
    assert target["image_id"] == "img3"  # the next loadable image
    assert [image_id for image_id, _ in lenient.bad_images] == ["img1", "img2"]
    assert lenient.skipped_images.image_ids == ["img1", "img2"]
    assert "img1" in caplog.text and "img2" in caplog.text


def test_unreadable_images_of_an_evaluation_set_are_counted_skips(setup):
    """replace_unreadable=False: placeholders that tell the process running the model, even
    through DataLoader workers; the counts are ready for metrics.json."""
    hierarchy, index, root, _ = setup
    (root / "img1.png").unlink()
    (root / "img3.png").write_bytes(b"truncated")
    dataset = OpenImagesDetection(
        index, hierarchy, root, image_suffix=".png", strict=False, replace_unreadable=False
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, collate_fn=collate_fn, num_workers=1
    )
    images, targets = next(iter(loader))
    assert [t["image_id"] for t in targets] == ["img1", "img2", "img3"]
    assert "file not found" in targets[0]["skipped"] and "cannot decode" in targets[2]["skipped"]
    assert "skipped" not in targets[1] and images[1].shape == (3, 40, 100)
    assert targets[0]["boxes"].shape == (0, 4) and not images[0].any()
    report = dataset.skipped_images  # built in this process: the missing file is known
    for target in targets:  # the corrupt one came through the batch
        if "skipped" in target:
            report.add(target["image_id"], target["skipped"], target["skipped_reason"])
    assert report.count == 2
    summary = report.to_dict()
    assert summary["count"] == 2
    assert [e["image_id"] for e in summary["examples"]] == ["img1", "img3"]


def test_collate_fn(setup):
    hierarchy, index, root, _ = setup
    dataset = OpenImagesDetection(index, hierarchy, root, image_suffix=".png")
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert len(images) == 2 and [t["image_id"] for t in targets] == ["img1", "img2"]


def test_classes_must_match(setup, tmp_path):
    _, index, root, _ = setup
    (tmp_path / "other.json").write_text(json.dumps({"LabelName": "r", "Subcategory": []}))
    with pytest.raises(ValueError, match="other classes"):
        OpenImagesDetection(index, Hierarchy.from_json(tmp_path / "other.json"), root)


def test_merge_is_transitive_and_respects_group_of():
    depth = np.array([1, 2, 1])
    boxes = np.array(
        [
            [0.0, 0.0, 1.00, 1.0],
            [0.0, 0.0, 0.96, 1.0],  # IoU 0.96 with box 0
            [0.0, 0.0, 0.92, 1.0],  # IoU 0.958 with box 1, 0.92 with box 0: chained
            [0.0, 0.0, 1.00, 1.0],  # same box as 0 but group-of: separate
        ],
        dtype=np.float32,
    )
    merged = merge_coincident_boxes(
        boxes, np.array([2, 0, 2, 1]), np.array([0, 0, 0, 1], bool), depth=depth, merge_iou=0.95
    )
    np.testing.assert_allclose(merged.boxes, [[0, 0, 0.96, 1], [0, 0, 1, 1]], rtol=1e-6)
    np.testing.assert_array_equal(merged.labels, [[True, False, True], [False, True, False]])
    np.testing.assert_array_equal(merged.primary, [2, 1])  # tie at depth 1: earliest box
    np.testing.assert_array_equal(merged.is_group_of, [False, True])


def test_thin_boxes_widened_to_one_pixel(tmp_path):
    tree = {"LabelName": "r", "Subcategory": [{"LabelName": "A"}]}
    (tmp_path / "h.json").write_text(json.dumps(tree))
    hierarchy = Hierarchy.from_json(tmp_path / "h.json")
    (tmp_path / "b.csv").write_text(HEADER + "\nimg,A,1.0,1.0,0.5,0.5,0\n")
    index = AnnotationIndex.build_or_open(tmp_path / "b.csv", hierarchy, tmp_path / "cache")
    Image.new("RGB", (10, 4)).save(tmp_path / "img.jpg")
    _, target = OpenImagesDetection(index, hierarchy, tmp_path)[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[9.0, 1.5, 10.0, 2.5]]))


def test_exif_orientation_is_applied_as_displayed(setup):
    """A JPEG stored landscape with EXIF orientation 6 (rotate 90 degrees clockwise to
    display) is read as displayed, the image its boxes were drawn on: img1's first object
    (x 0.10-0.50, y 0.20-0.60 of the displayed image) is where the red square is."""
    hierarchy, index, root, _ = setup
    displayed = np.full((100, 40, 3), 255, dtype=np.uint8)  # 40 wide, 100 high
    displayed[22:58, 6:18] = (255, 0, 0)  # inside the first object's box
    # Stored pixels = displayed rotated 90 degrees counter-clockwise; the tag undoes it.
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(root / "img1.jpg", quality=95, exif=exif)
    for name in ("img2", "img3"):
        Image.open(root / f"{name}.png").save(root / f"{name}.jpg")
    dataset = OpenImagesDetection(index, hierarchy, root)
    image, target = dataset[0]
    assert image.shape == (3, 100, 40)
    x0, y0, x1, y1 = target["boxes"][0].round().int().tolist()
    assert (x0, y0, x1, y1) == (4, 20, 20, 60)
    red = (image[0] > 0.8) & (image[1] < 0.3) & (image[2] < 0.3)
    ys, xs = torch.nonzero(red, as_tuple=True)
    assert len(ys) > 300
    assert x0 <= int(xs.min()) and int(xs.max()) < x1 and y0 <= int(ys.min()) and int(ys.max()) < y1
    # Prediction reads the file the same way (lsdet.predict / lsdet.evaluate).
    from lsdet.inference import read_rgb_image

    torch.testing.assert_close(read_rgb_image(root / "img1.jpg"), dataset.load_image(0))


def test_unreadable_training_images_found_in_workers_are_counted_per_reason(setup, caplog):
    """Training (replace_unreadable=True) through DataLoader workers: the images the workers
    could not decode are counted in the dataset of the main process, per reason, with the
    stand-ins served; each is logged once, not on every draw."""
    hierarchy, index, root, _ = setup
    (root / "img1.png").unlink()  # missing: found when the dataset is built
    data = (root / "img2.png").read_bytes()
    (root / "img2.png").write_bytes(data[: len(data) // 3])  # truncated
    dataset = OpenImagesDetection(index, hierarchy, root, image_suffix=".png", strict=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, collate_fn=collate_fn, num_workers=1
    )
    for _ in range(2):  # two epochs
        _, targets = next(iter(loader))
        assert [t["image_id"] for t in targets] == ["img3", "img3", "img3"]
    report = dataset.skipped_images.to_dict()
    assert report["count"] == 2
    assert report["by_reason"] == {"file_not_found": 1, "cannot_decode": 1}
    assert report["stand_ins"] == 4  # img1 and img2, in each of two epochs
    assert {e["image_id"]: e["reason"] for e in report["examples"]} == {
        "img1": "file_not_found",
        "img2": "cannot_decode",
    }
    in_process = OpenImagesDetection(index, hierarchy, root, image_suffix=".png", strict=False)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert in_process[1][1]["image_id"] == "img3"
    assert caplog.text.count("img2.png") == 1
    assert in_process.skipped_images.stand_ins == 3
