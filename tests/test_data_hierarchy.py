"""Tests of lsdet.data.hierarchy on hand-made trees and on the real Open Images files."""

import json
from collections import defaultdict

import numpy as np
import pytest

from lsdet.data.hierarchy import Hierarchy, HierarchyError, load_hierarchy

# root
#   A
#     B -> D
#     C -> D, E
#   F  (Part: E, not a hierarchy edge)
#   E  (E has two parents: C and the root)
SMALL_TREE = {
    "LabelName": "/m/root",
    "Subcategory": [
        {
            "LabelName": "A",
            "Subcategory": [
                {"LabelName": "B", "Subcategory": [{"LabelName": "D"}]},
                {"LabelName": "C", "Subcategory": [{"LabelName": "D"}, {"LabelName": "E"}]},
            ],
        },
        {"LabelName": "F", "Part": [{"LabelName": "E"}]},
        {"LabelName": "E"},
    ],
}


@pytest.fixture()
def small(tmp_path):
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps(SMALL_TREE))
    return Hierarchy.from_json(path), path


def _ancestor_names(h, mid):
    return {h.mids[j] for j in np.flatnonzero(h.ancestors[h.index(mid)])}


def test_small_tree_structure(small):
    h, _ = small
    assert h.excluded_mids == []
    assert h.mids == ["A", "B", "D", "C", "E", "F"]
    assert h.num_classes == 6
    assert _ancestor_names(h, "D") == {"A", "B", "C"}
    assert _ancestor_names(h, "E") == {"A", "C"}
    assert _ancestor_names(h, "B") == {"A"}
    assert _ancestor_names(h, "A") == set()
    assert _ancestor_names(h, "F") == set()  # the Part edge F -> E is ignored
    np.testing.assert_array_equal(h.descendants, h.ancestors.T)
    assert [m for m in h.mids if h.is_leaf(m)] == ["D", "E", "F"]
    np.testing.assert_array_equal(h.leaf_mask, [False, False, True, False, True, True])
    # longest path from the root; E is top-level too but also at depth 3 under A/C
    np.testing.assert_array_equal(h.depth, [1, 2, 3, 2, 3, 1])
    assert h.num_levels == 3
    assert h.index("C") == 3
    with pytest.raises(KeyError, match="'Z'"):
        h.index("Z")


def test_expand_box_labels(small):
    h, _ = small
    rows, classes = h.expand_to_ancestors(np.array([h.index("D"), h.index("F")]))
    np.testing.assert_array_equal(rows, [0, 0, 0, 0, 1])
    # own class first, then the ancestors A, B, C (index order)
    np.testing.assert_array_equal(classes, [2, 0, 1, 3, 5])


def test_expand_image_labels_positive_up_negative_down(small):
    h, _ = small
    c = h.index("C")
    rows, classes, conf = h.expand_image_labels(np.array([c, c]), np.array([1, 0]))
    np.testing.assert_array_equal(rows, [0, 0, 1, 1, 1])
    assert [h.mids[k] for k in classes] == ["C", "A", "C", "D", "E"]
    np.testing.assert_array_equal(conf, [1, 1, 0, 0, 0])


def test_expand_multihot(small):
    h, _ = small
    multihot = np.zeros((2, 6), dtype=np.float32)
    multihot[0, h.index("E")] = 1
    multihot[1, h.index("F")] = 1
    expanded = h.expand_multihot(multihot)
    assert expanded.dtype == np.float32
    assert {h.mids[k] for k in np.flatnonzero(expanded[0])} == {"E", "C", "A"}
    assert {h.mids[k] for k in np.flatnonzero(expanded[1])} == {"F"}


def test_subset_lifts_children_of_dropped_nodes(small):
    _, path = small
    h = Hierarchy.from_json(path, subset_mids=["E", "D", "A"])
    assert h.mids == ["E", "D", "A"]
    assert h.excluded_mids == ["B", "C", "F"]
    assert _ancestor_names(h, "D") == {"A"}  # B and C dropped: lifted to A
    assert _ancestor_names(h, "E") == {"A"}
    assert h.children["A"] == ["D", "E"]
    assert h.top_level == ["A", "E"]
    np.testing.assert_array_equal(h.depth, [2, 2, 1])
    np.testing.assert_array_equal(h.leaf_mask, [True, True, False])


def test_bad_hierarchy_inputs(tmp_path, small):
    _, path = small
    with pytest.raises(HierarchyError, match="not in the hierarchy.*'Z'"):
        Hierarchy.from_json(path, subset_mids=["A", "Z"])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(HierarchyError, match="broken.json"):
        Hierarchy.from_json(broken)
    nameless = tmp_path / "nameless.json"
    nameless.write_text(json.dumps({"LabelName": "r", "Subcategory": [{"Name": "x"}]}))
    with pytest.raises(HierarchyError, match="without a 'LabelName'"):
        Hierarchy.from_json(nameless)
    with pytest.raises(HierarchyError, match="cycle"):
        Hierarchy(["a", "b"], {"a": ["b"], "b": ["a"]})


def _tf_style_ancestors(tree):
    """Independent reference: ancestors = nodes on the path to any occurrence (TF tools)."""
    ancestors = defaultdict(set)

    def walk(node, path):
        ancestors[node["LabelName"]].update(path)
        for child in node.get("Subcategory", []):
            walk(child, path + [node["LabelName"]])

    for top in tree.get("Subcategory", []):
        walk(top, [])
    return ancestors


def test_real_600_hierarchy(openimages_dir):
    path = openimages_dir / "bbox_labels_600_hierarchy.json"
    h = Hierarchy.from_json(path)
    assert h.num_classes == 601  # 601 MIDs under the root (the file's name says 600)
    assert int(h.leaf_mask.sum()) == 525
    assert int((~h.leaf_mask).sum()) == 76
    assert h.num_levels == 5
    reference = _tf_style_ancestors(json.loads(path.read_text()))
    for mid in h.mids:
        assert _ancestor_names(h, mid) == reference[mid], mid


def test_real_challenge_500_hierarchy(openimages_dir):
    h = Hierarchy.from_json(openimages_dir / "challenge-2019-label500-hierarchy.derived.json")
    assert h.num_classes == 500
    assert int(h.leaf_mask.sum()) == 443
    assert int((~h.leaf_mask).sum()) == 57
    assert h.num_levels == 5
    real = json.loads((openimages_dir / "challenge-2019-leaf-parent-mids.json").read_text())
    assert {m for m in h.mids if h.is_leaf(m)} == set(real["leaf_mids"])
    assert {m for m in h.mids if not h.is_leaf(m)} == set(real["parent_mids"])


def test_subset_of_600_matches_the_derived_500(openimages_dir):
    descriptions = openimages_dir / "challenge-2019-classes-description-500.derived.csv"
    subset = [line.split(",", 1)[0] for line in descriptions.read_text().splitlines()]
    cut = Hierarchy.from_json(openimages_dir / "bbox_labels_600_hierarchy.json", subset)
    assert cut.mids == subset  # label-map order
    derived = Hierarchy.from_json(openimages_dir / "challenge-2019-label500-hierarchy.derived.json")
    order = derived.indices(cut.mids)
    np.testing.assert_array_equal(cut.ancestors, derived.ancestors[np.ix_(order, order)])
    np.testing.assert_array_equal(cut.depth, derived.depth[order])


def test_load_hierarchy_selects_the_described_classes(tmp_path):
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(SMALL_TREE))
    descriptions = tmp_path / "descriptions.csv"
    descriptions.write_text("D,Dee\nA,Ay\n")
    full = load_hierarchy(path)
    assert load_hierarchy(full) is full and len(full.mids) == 6
    subset = load_hierarchy(path, descriptions)
    assert subset.mids == ["D", "A"]
    assert subset.ancestors[subset.index("D"), subset.index("A")]  # B and C looked through
    assert "B" in subset.excluded_mids
