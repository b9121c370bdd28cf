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
from lsdet.data.hierarchy import Hierarchy, HierarchyError, load_hierarchy
from lsdet.data.index import AnnotationIndex, ImageAnnotations
from lsdet.data.rates import (
    concurrent_rates_from_boxes,
    concurrent_rates_from_index,
    estimate_concurrent_rates,
)
from lsdet.data.synth import ensure_synthetic_benchmark, generate_synthetic_benchmark

__all__ = [
    "AnnotationIndex",
    "ImageAnnotations",
    "ImageLoadError",
    "MergedObjects",
    "OpenImagesDetection",
    "SkippedImages",
    "collate_fn",
    "merge_coincident_boxes",
    "BoxTable",
    "DataFormatError",
    "Hierarchy",
    "HierarchyError",
    "load_hierarchy",
    "ImageLabelTable",
    "ReadReport",
    "read_bbox_csv",
    "read_class_descriptions",
    "read_image_labels_csv",
    "concurrent_rates_from_boxes",
    "concurrent_rates_from_index",
    "estimate_concurrent_rates",
    "ensure_synthetic_benchmark",
    "generate_synthetic_benchmark",
]

# The dataset needs torch (seconds to import): its names load on first use, so that the
# readers, the index, the rates and the generator stay light for what needs no torch (the
# CSV modes of lsdet.evaluate).
_DATASET_NAMES = {
    "ImageLoadError",
    "MergedObjects",
    "OpenImagesDetection",
    "SkippedImages",
    "collate_fn",
    "merge_coincident_boxes",
}


def __getattr__(name: str):
    if name in _DATASET_NAMES:
        from lsdet.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'lsdet.data' has no attribute {name!r}")
