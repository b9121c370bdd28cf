"""Open Images data layer: hierarchy, file readers, annotation index, training dataset."""

from lsdet.data.hierarchy import Hierarchy, HierarchyError

__all__ = ["Hierarchy", "HierarchyError"]
