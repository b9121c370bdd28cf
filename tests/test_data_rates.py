"""Concurrent rates: worked out by hand on tiny CSVs, and against a per-box loop."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lsdet.boxes import box_iou
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.index import AnnotationIndex
from lsdet.data.rates import (
    concurrent_rates_from_boxes,
    concurrent_rates_from_index,
    count_coincidences,
    estimate_concurrent_rates,
)

# root > A > (a1, a2); root > B; root > C. Column order (depth first): A a1 a2 B C.
TREE = {
    "LabelName": "/m/root",
    "Subcategory": [
        {"LabelName": "/m/A", "Subcategory": [{"LabelName": "/m/a1"}, {"LabelName": "/m/a2"}]},
        {"LabelName": "/m/B"},
        {"LabelName": "/m/C"},
    ],
}
# (image, class, xmin, ymin, xmax, ymax)
ROWS = [
    ("img1", "/m/a1", 0.0, 0.0, 0.5, 0.5),
    ("img1", "/m/B", 0.0, 0.0, 0.5, 0.5),
    ("img1", "/m/a2", 0.0, 0.0, 0.5, 0.48),  # IoU 0.96 with the two above
    ("img1", "/m/C", 0.5, 0.5, 1.0, 1.0),
    ("img2", "/m/a1", 0.1, 0.1, 0.3, 0.3),
    ("img2", "/m/A", 0.1, 0.1, 0.3, 0.3),  # a parent box: takes no part
    ("img2", "/m/a1", 0.5, 0.5, 0.9, 0.9),
    ("img2", "/m/B", 0.5, 0.5, 0.9, 0.9),
    ("img2", "/m/B", 0.5, 0.5, 0.9, 0.89),  # IoU 0.975 with the two above
    ("img3", "/m/B", 0.0, 0.0, 1.0, 1.0),
    ("img3", "/m/C", 0.0, 0.0, 1.0, 1.0),
    ("img3", "/m/A", 0.0, 0.0, 1.0, 1.0),  # parent box coinciding with B and C: no part
    ("img4", "/m/a1", 0.0, 0.0, 1.0, 1.0),  # same box as img3's, other image: no coincidence
]
A, A1, A2, B, C = range(5)


def write_inputs(tmp_path, rows=ROWS):
    hierarchy_json = tmp_path / "hierarchy.json"
    hierarchy_json.write_text(json.dumps(TREE))
    lines = [
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
        "IsGroupOf,IsDepiction,IsInside"
    ]
    for image, mid, x0, y0, x1, y1 in rows:
        lines.append(f"{image},xclick,{mid},1,{x0},{x1},{y0},{y1},0,0,0,0,0")
    bbox_csv = tmp_path / "boxes.csv"
    bbox_csv.write_text("\n".join(lines) + "\n")
    return bbox_csv, hierarchy_json


def test_rates_by_hand(tmp_path):
    bbox_csv, hierarchy_json = write_inputs(tmp_path)
    rates, mids = estimate_concurrent_rates(bbox_csv, hierarchy_json, prior_count=0, progress=False)
    assert mids == ["/m/A", "/m/a1", "/m/a2", "/m/B", "/m/C"]
    assert rates.dtype == np.float32 and rates.shape == (6, 6)
    expected = np.zeros((5, 5))
    expected[A1, B] = 2 / 4  # a1 has 4 boxes; img1's and img2's second coincide with B
    expected[A1, A2] = 1 / 4
    expected[B, A1] = 3 / 4  # B has 4 boxes; img2's two both coincide with one a1 box
    expected[B, A2] = 1 / 4
    expected[B, C] = 1 / 4
    expected[A2, A1] = expected[A2, B] = 1.0
    expected[C, B] = 1 / 2
    for i, j in [(A, A1), (A, A2)]:  # ancestor/descendant pairs: hierarchy_rate
        expected[i, j] = expected[j, i] = 1.0
    np.testing.assert_allclose(rates[1:, 1:], expected, rtol=1e-6)
    assert not rates[0].any() and not rates[:, 0].any()


def test_floor_threshold_and_hierarchy_rate(tmp_path):
    bbox_csv, hierarchy_json = write_inputs(tmp_path)
    rates, _ = estimate_concurrent_rates(
        bbox_csv, hierarchy_json, floor=0.3, hierarchy_rate=0.0, prior_count=0, progress=False
    )
    r = rates[1:, 1:]
    assert r[A1, A2] == 0 and r[B, C] == 0  # 0.25 < floor
    assert r[A1, B] == pytest.approx(0.5) and r[C, B] == pytest.approx(0.5)
    assert r[A, A1] == 0 and r[A1, A] == 0  # the literal reading of the paper

    strict_iou, _ = estimate_concurrent_rates(
        bbox_csv, hierarchy_json, iou_threshold=0.97, prior_count=0, progress=False
    )
    r = strict_iou[1:, 1:]
    assert r[A1, A2] == 0 and r[A2, A1] == 0  # IoU 0.96 no longer counts
    assert r[B, A1] == pytest.approx(3 / 4)  # IoU 0.975 still does
    with pytest.raises(ValueError, match="hierarchy_rate"):
        estimate_concurrent_rates(bbox_csv, hierarchy_json, hierarchy_rate=2.0, progress=False)


def test_unknown_class_names_the_file(tmp_path):
    bbox_csv, hierarchy_json = write_inputs(tmp_path, [*ROWS, ("img5", "/m/zzz", 0, 0, 1, 1)])
    with pytest.raises(ValueError, match="boxes.csv"):
        estimate_concurrent_rates(bbox_csv, hierarchy_json, progress=False)
    rates, _ = estimate_concurrent_rates(
        bbox_csv, hierarchy_json, strict=False, prior_count=0, progress=False
    )
    assert rates[1 + A1, 1 + B] == pytest.approx(0.5)


def reference_counts(image, label, boxes, num_classes, tau):
    """Per-box loop with the pairwise IoU: an independent statement of the definition."""
    pair_counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    for k in range(len(label)):
        same_image = np.flatnonzero(image == image[k])
        iou = box_iou(boxes[k : k + 1], boxes[same_image])[0]
        coinciding = {label[m] for m, v in zip(same_image, iou, strict=True) if v >= tau}
        for j in coinciding - {label[k]}:
            pair_counts[label[k], j] += 1
    return pair_counts


@pytest.mark.parametrize(
    ("pairs_per_chunk", "tau", "scale", "seed"),
    [
        (1, 0.9, 1.0, 0),
        (7, 0.9, 1.0, 1),
        (10_000, 0.9, 640.0, 2),
        (50, 0.5, 1.0, 3),
        (50, 1.0, 1.0, 4),
    ],
)
def test_counts_match_a_per_box_loop(pairs_per_chunk, tau, scale, seed):
    rng = np.random.default_rng(seed)
    num_boxes, num_classes = 400, 6
    image = rng.integers(0, 40, size=num_boxes)
    label = rng.integers(0, num_classes, size=num_boxes)
    xy = rng.uniform(0, 0.5, size=(num_boxes, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.1, 0.5, size=(num_boxes, 2))], axis=1)
    # Make a third of the boxes near-copies of an earlier box of the same image.
    for k in rng.choice(np.arange(1, num_boxes), size=num_boxes // 3, replace=False):
        donors = np.flatnonzero(image[:k] == image[k])
        if len(donors):
            jitter = rng.normal(0, 0.01, size=4) if tau < 1 else 0.0
            boxes[k] = boxes[rng.choice(donors)] + jitter
    boxes[::17, 0] = 0.25  # ties in xmin
    boxes = boxes * scale  # pixels work as well as normalised coordinates
    counts = count_coincidences(
        image,
        label,
        boxes,
        num_classes,
        iou_threshold=tau,
        pairs_per_chunk=pairs_per_chunk,
        progress=False,
    )
    expected = reference_counts(image, label, boxes, num_classes, tau)
    assert expected.sum() > 50  # the case is not trivial
    np.testing.assert_array_equal(counts.pair_counts, expected)
    np.testing.assert_array_equal(counts.box_counts, np.bincount(label, minlength=num_classes))
    # The per-box coincidences: input rows (original order) and the classes they meet.
    by_box = np.zeros((num_boxes, num_classes), dtype=np.int64)
    np.add.at(by_box, (counts.coinciding_rows, counts.coinciding_classes), 1)
    assert by_box.max() <= 1
    for k in rng.choice(num_boxes, size=30, replace=False):
        same_image = np.flatnonzero(image == image[k])
        iou = box_iou(boxes[k : k + 1], boxes[same_image])[0]
        meets = {label[m] for m, v in zip(same_image, iou, strict=True) if v >= tau} - {label[k]}
        assert set(np.flatnonzero(by_box[k])) == meets
    # The sweep window scores far fewer pairs than all within-image pairs.
    all_pairs = sum(n * (n - 1) // 2 for n in np.bincount(image))
    assert counts.num_pairs_scored < (all_pairs if tau < 0.6 else all_pairs / 2)


def test_array_entry_point_equals_csv_entry_point(tmp_path):
    bbox_csv, hierarchy_json = write_inputs(tmp_path)
    hierarchy = Hierarchy.from_json(hierarchy_json)
    from_csv, _ = estimate_concurrent_rates(bbox_csv, hierarchy_json, progress=False)
    image = np.array([row[0] for row in ROWS])
    label = hierarchy.indices([row[1] for row in ROWS])
    boxes = np.array([row[2:] for row in ROWS], dtype=np.float32)
    from_arrays = concurrent_rates_from_boxes(image, label, boxes, hierarchy, progress=False)
    np.testing.assert_array_equal(from_arrays, from_csv)
    with pytest.raises(ValueError, match="differ in length"):
        count_coincidences(image[:-1], label, boxes, 5)
    with pytest.raises(ValueError, match="iou_threshold"):
        count_coincidences(image, label, boxes, 5, iou_threshold=0.0)


def test_index_entry_point_equals_csv_entry_point(tmp_path):
    bbox_csv, hierarchy_json = write_inputs(tmp_path)
    hierarchy = Hierarchy.from_json(hierarchy_json)
    index = AnnotationIndex.build_or_open(bbox_csv, hierarchy, tmp_path / "cache")
    from_csv, _ = estimate_concurrent_rates(bbox_csv, hierarchy_json, progress=False)
    from_index = concurrent_rates_from_index(index, hierarchy, progress=False)
    np.testing.assert_array_equal(from_index, from_csv)
    other = Hierarchy.from_json(hierarchy_json, subset_mids=["/m/a1", "/m/B"])
    with pytest.raises(ValueError, match="other classes"):
        concurrent_rates_from_index(index, other)


def test_real_open_images_rows(openimages_dir):
    """Real V4 rows (six human-part classes) under the real 600-class hierarchy."""
    bbox_csv = openimages_dir / "samples" / "v4-humanparts-train-annotations-bbox.csv"
    hierarchy_json = openimages_dir / "bbox_labels_600_hierarchy.json"
    rates, mids = estimate_concurrent_rates(
        bbox_csv, hierarchy_json, iou_threshold=0.5, floor=0.0, prior_count=0, progress=False
    )
    hierarchy = Hierarchy.from_json(hierarchy_json)
    assert mids == hierarchy.mids and rates.shape == (602, 602)
    table = pd.read_csv(bbox_csv)
    label = hierarchy.indices(table["LabelName"])
    boxes = table[["XMin", "YMin", "XMax", "YMax"]].to_numpy()
    expected = reference_counts(table["ImageID"].to_numpy(), label, boxes, 601, 0.5)
    assert expected.sum() > 0
    box_counts = np.bincount(label, minlength=601)
    expected_rates = expected / np.maximum(box_counts, 1)[:, None]
    related = hierarchy.ancestors | hierarchy.descendants
    expected_rates[related] = 1.0
    np.fill_diagonal(expected_rates, 0.0)
    np.testing.assert_allclose(rates[1:, 1:], expected_rates, atol=1e-6)


def test_prior_count_shrinks_by_hand(tmp_path):
    """r_ij = c_ij / (n_i + k): the by-hand counts of test_rates_by_hand with k = 2."""
    bbox_csv, hierarchy_json = write_inputs(tmp_path)
    rates, _ = estimate_concurrent_rates(bbox_csv, hierarchy_json, prior_count=2, progress=False)
    r = rates[1:, 1:]
    assert r[A1, B] == pytest.approx(2 / 6)  # a1: 4 boxes, 2 coincide with B
    assert r[B, A1] == pytest.approx(3 / 6)
    assert r[C, B] == pytest.approx(1 / 4)  # C: 2 boxes, 1 coincides with B
    assert r[A2, A1] == pytest.approx(1 / 3)  # a2: a single box
    assert r[A, A1] == 1.0  # hierarchy pairs are not shrunk
    with pytest.raises(ValueError, match="prior_count"):
        estimate_concurrent_rates(bbox_csv, hierarchy_json, prior_count=-1, progress=False)


# root > F (frequent leaf), P (its partner), R (rare leaf), Q (its partner).
SHRINK_TREE = {
    "LabelName": "/m/root",
    "Subcategory": [{"LabelName": mid} for mid in ("/m/F", "/m/P", "/m/R", "/m/Q")],
}


def shrink_rows() -> list[tuple]:
    """F: 1,000 boxes, 300 of them also boxed as P; R: 2 boxes, 1 also boxed as Q."""
    rows = []
    for k in range(1000):
        rows.append((f"f{k:04d}", "/m/F", 0.1, 0.1, 0.6, 0.6))
        if k < 300:
            rows.append((f"f{k:04d}", "/m/P", 0.1, 0.1, 0.6, 0.6))
    rows += [("r0", "/m/R", 0.2, 0.2, 0.4, 0.4), ("r0", "/m/Q", 0.2, 0.2, 0.4, 0.4)]
    rows += [("r1", "/m/R", 0.2, 0.2, 0.4, 0.4)]
    return rows


def test_default_prior_count_meets_the_rare_and_frequent_bounds_in_every_entry_point(tmp_path):
    """With the defaults: 1 of 2 boxes -> r <= 0.1; 300 of 1,000 -> r within 0.01 of 0.3."""
    rows = shrink_rows()
    bbox_csv, _ = write_inputs(tmp_path, rows)
    hierarchy_json = tmp_path / "shrink.json"
    hierarchy_json.write_text(json.dumps(SHRINK_TREE))
    hierarchy = Hierarchy.from_json(hierarchy_json)
    f, p, r, q = (1 + hierarchy.index(mid) for mid in ("/m/F", "/m/P", "/m/R", "/m/Q"))
    from_csv, _ = estimate_concurrent_rates(bbox_csv, hierarchy_json, progress=False)
    from_boxes = concurrent_rates_from_boxes(
        np.array([row[0] for row in rows]),
        hierarchy.indices([row[1] for row in rows]),
        np.array([row[2:] for row in rows], dtype=np.float32),
        hierarchy,
        progress=False,
    )
    index = AnnotationIndex.build_or_open(bbox_csv, hierarchy, tmp_path / "cache")
    from_index = concurrent_rates_from_index(index, hierarchy, progress=False)
    for rates in (from_csv, from_boxes, from_index):
        assert 0 < rates[r, q] <= 0.1
        assert rates[r, q] == pytest.approx(1 / 10)
        assert abs(rates[f, p] - 0.3) <= 0.01
        assert rates[f, p] == pytest.approx(300 / 1008)
        assert rates[p, f] == pytest.approx(300 / 308)  # every P box coincides with an F box
    unshrunk, _ = estimate_concurrent_rates(bbox_csv, hierarchy_json, prior_count=0, progress=False)
    assert unshrunk[r, q] == pytest.approx(0.5) and unshrunk[f, p] == pytest.approx(0.3)
