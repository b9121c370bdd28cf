"""Open Images data layer: hierarchy, file readers, annotation index, training dataset."""

from lsdet.data.formats import (
    BoxTable,
    DataFormatError,
    ImageLabelTable,
    ReadReport,
    read_bbox_csv,
    read_class_descriptions,
    read_image_labels_csv,
)
from lsdet.data.hierarchy import Hierarchy, HierarchyError
from lsdet.data.index import AnnotationIndex, ImageAnnotations

__all__ = [
    "AnnotationIndex",
    "ImageAnnotations",
    "BoxTable",
    "DataFormatError",
    "Hierarchy",
    "HierarchyError",
    "ImageLabelTable",
    "ReadReport",
    "read_bbox_csv",
    "read_class_descriptions",
    "read_image_labels_csv",
]
