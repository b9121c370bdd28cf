"""The Open Images class hierarchy: class ids, leaves, depth, ancestor sets and label expansion.

The hierarchy JSON is a tree of ``{"LabelName": mid, "Subcategory": [...], "Part": [...]}``
nodes under a root (``/m/0bl9f`` in Open Images). A class may occur under several parents.
Only ``Subcategory`` edges are hierarchy edges; ``Part`` edges (a wheel is part of a car, not a
kind of car) are ignored, as the Open Images tools do.

Ancestor sets follow the TF Object Detection API (``oid_hierarchical_labels_expansion``):
``j`` is an ancestor of ``i`` iff ``i`` occurs somewhere in the subtree of an occurrence of
``j``. Box labels and verified-positive image-level labels expand to all ancestors,
verified-negative image-level labels to all descendants. The root itself is not a class.
Where a class occurs several times with different children listed, the union of those
children is used (the Open Images files list each subtree the same way at every occurrence;
tested against an occurrence-by-occurrence walk on the 600-class file).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lsdet.data.formats import read_class_descriptions


class HierarchyError(ValueError):
    """A hierarchy file that cannot be read as a class tree."""


class Hierarchy:
    """Class ids and ancestor relations of a label hierarchy.

    Class index ``k`` (0..C-1) is the position of the MID in ``mids``; detectors use ``k + 1``
    (0 = background). All ``[C, C]`` matrices are over ``mids`` order.
    """

    def __init__(
        self,
        mids: list[str],
        children: dict[str, list[str]],
        root: str | None = None,
        excluded_mids: Iterable[str] = (),
    ):
        """``children`` maps each node (and the root, if any) to its direct children;
        ``excluded_mids`` lists classes of the source file left out of a subset."""
        self.mids: list[str] = list(mids)
        self.root = root
        self.excluded_mids: list[str] = list(excluded_mids)
        self._index = {mid: k for k, mid in enumerate(self.mids)}
        if len(self._index) != len(self.mids):
            raise HierarchyError("duplicate MIDs in the class list")
        num_classes = len(self.mids)
        self.children: dict[str, list[str]] = {
            mid: list(dict.fromkeys(children.get(mid, []))) for mid in self.mids
        }
        self.top_level: list[str] = list(dict.fromkeys(children.get(root, []))) if root else []

        parent_matrix = np.zeros((num_classes, num_classes), dtype=bool)  # [child, parent]
        for parent, kids in self.children.items():
            for kid in kids:
                if kid not in self._index:
                    raise HierarchyError(f"child {kid!r} of {parent!r} is not a class")
                parent_matrix[self._index[kid], self._index[parent]] = True
        ancestors = parent_matrix.copy()
        parent_float = parent_matrix.astype(np.float32)
        while True:  # transitive closure by repeated composition (depth <= a handful)
            grown = ancestors | ((ancestors.astype(np.float32) @ parent_float) > 0)
            if np.array_equal(grown, ancestors):
                break
            ancestors = grown
        if np.any(np.diag(ancestors)):
            cyclic = [self.mids[k] for k in np.flatnonzero(np.diag(ancestors))]
            raise HierarchyError(f"the hierarchy has a cycle through {cyclic[:5]}")
        self.ancestors: np.ndarray = ancestors
        self.descendants: np.ndarray = ancestors.T.copy()
        self.parents: np.ndarray = parent_matrix
        self.leaf_mask: np.ndarray = ~parent_matrix.any(axis=0)
        # Depth = length of the longest path from the root (top-level classes have depth 1).
        depth = np.ones(num_classes, dtype=np.int64)
        for _ in range(num_classes):
            parent_depth = np.where(parent_matrix, depth[None, :], 0).max(axis=1, initial=0)
            new_depth = parent_depth + 1
            if np.array_equal(new_depth, depth):
                break
            depth = new_depth
        self.depth: np.ndarray = depth

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_json(cls, path: str | Path, subset_mids: Iterable[str] | None = None) -> Hierarchy:
        """Read an Open Images hierarchy JSON.

        ``subset_mids`` (e.g. the keys of the 500-class Challenge descriptions file) keeps only
        those classes, in that order; the kept descendants of a dropped node are lifted to its
        nearest kept ancestor (or the root), and the classes left out are listed in
        ``excluded_mids`` (readers can drop their rows with ``ignore_mids=``). Without it,
        ``mids`` lists every non-root MID in the order of first appearance in the file.
        """
        path = Path(path)
        try:
            tree = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HierarchyError(f"{path}: cannot read hierarchy JSON: {exc}") from exc
        if not isinstance(tree, dict) or "LabelName" not in tree:
            raise HierarchyError(f"{path}: top level must be an object with a 'LabelName'")
        root = tree["LabelName"]

        order: list[str] = []
        children: dict[str, list[str]] = {}

        def walk(node: dict, trail: str) -> None:
            if not isinstance(node, dict) or not isinstance(node.get("LabelName"), str):
                raise HierarchyError(f"{path}: node without a 'LabelName' string under {trail}")
            mid = node["LabelName"]
            if mid != root and mid not in children:
                order.append(mid)
            kids = children.setdefault(mid, [])
            for child in node.get("Subcategory", []):
                walk(child, mid)
                kids.append(child["LabelName"])

        walk(tree, "the root")
        if root in order:
            raise HierarchyError(f"{path}: the root {root} occurs below itself")
        if subset_mids is None:
            return cls(order, children, root)

        subset = list(dict.fromkeys(subset_mids))
        unknown = [mid for mid in subset if mid not in children]
        if unknown:
            raise HierarchyError(
                f"{path}: {len(unknown)} subset MIDs are not in the hierarchy, e.g. {unknown[:5]}"
            )
        keep = set(subset)
        lifted: dict[str, list[str]] = {}

        def kept_below(mid: str) -> list[str]:
            """The nearest kept nodes under ``mid`` (dropped nodes are looked through)."""
            found: list[str] = []
            for child in children.get(mid, []):
                found.extend([child] if child in keep else kept_below(child))
            return found

        for mid in [root, *subset]:
            lifted[mid] = kept_below(mid)
        return cls(subset, lifted, root, excluded_mids=[mid for mid in order if mid not in keep])

    # ------------------------------------------------------------------ queries
    @property
    def num_classes(self) -> int:
        return len(self.mids)

    @property
    def num_levels(self) -> int:
        return int(self.depth.max(initial=0))

    def index(self, mid: str) -> int:
        try:
            return self._index[mid]
        except KeyError:
            raise KeyError(f"MID {mid!r} is not a class of this hierarchy") from None

    def __contains__(self, mid: str) -> bool:
        return mid in self._index

    def is_leaf(self, mid: str) -> bool:
        return bool(self.leaf_mask[self.index(mid)])

    def indices(self, mids: Iterable[str]) -> np.ndarray:
        """Class indices of ``mids`` (int64); KeyError naming the first unknown MID."""
        return np.array([self.index(mid) for mid in mids], dtype=np.int64)

    # ------------------------------------------------------------------ expansion
    def expand_to_ancestors(self, class_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expand box labels to their ancestors, as the Open Images tools expand box rows.

        Returns ``(source_rows, classes)``: each input row ``r`` yields itself and one row per
        ancestor of ``class_idx[r]``; ``source_rows`` indexes the input (so other columns can be
        gathered), rows come in input order, each row's own class first.
        """
        class_idx = np.asarray(class_idx, dtype=np.int64)
        return self._expand(class_idx, self.ancestors[class_idx])

    def expand_image_labels(
        self, class_idx: np.ndarray, confidence: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expand image-level labels: positives (confidence 1) up, negatives (0) down.

        Returns ``(source_rows, classes, confidence)`` with the same conventions as
        ``expand_to_ancestors``. Like the Open Images tools, duplicates are kept (an image
        labelled Apple and Fruit yields Fruit twice); deduplicate downstream if needed.
        """
        class_idx = np.asarray(class_idx, dtype=np.int64)
        confidence = np.asarray(confidence)
        positive = confidence == 1
        related = np.where(
            positive[:, None], self.ancestors[class_idx], self.descendants[class_idx]
        )
        source_rows, classes = self._expand(class_idx, related)
        return source_rows, classes, confidence[source_rows]

    def expand_multihot(self, multihot: np.ndarray) -> np.ndarray:
        """Add the ancestors of every set class to a ``[M, C]`` multi-hot (same dtype)."""
        multihot = np.asarray(multihot)
        present = multihot.astype(bool)
        expanded = present | ((present.astype(np.float32) @ self.ancestors.astype(np.float32)) > 0)
        return expanded.astype(multihot.dtype)

    @staticmethod
    def _expand(class_idx: np.ndarray, related: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        extra_rows, extra_classes = np.nonzero(related)
        source_rows = np.concatenate([np.arange(len(class_idx)), extra_rows])
        classes = np.concatenate([class_idx, extra_classes])
        order = np.argsort(source_rows, kind="stable")
        return source_rows[order], classes[order]

    def __repr__(self) -> str:
        return (
            f"Hierarchy({self.num_classes} classes, {int(self.leaf_mask.sum())} leaves, "
            f"{self.num_levels} levels)"
        )


def load_hierarchy(
    hierarchy: str | Path | Hierarchy, class_descriptions_csv: str | Path | None = None
) -> Hierarchy:
    """A Hierarchy from a JSON path, restricted to the classes of a descriptions CSV (e.g. the
    500 Challenge classes) when one is given; a Hierarchy is returned as it is."""
    if isinstance(hierarchy, Hierarchy):
        return hierarchy
    subset = None
    if class_descriptions_csv is not None:
        subset = list(read_class_descriptions(class_descriptions_csv))
    return Hierarchy.from_json(hierarchy, subset_mids=subset)
