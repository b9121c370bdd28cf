"""Inference: the detector of a checkpoint (``detector``), its detections of a data set or of
image files (``detections``, ``images``) and their Open Images Challenge metric (``metric``).
Validation during training (``validation``), ``lsdet.evaluate`` and ``lsdet.predict`` use
this one flow."""

from lsdet.inference.detections import Detections, gather_detections, predict, predict_images
from lsdet.inference.detector import (
    FROM_CHECKPOINT,
    InputSettings,
    apply_input_settings,
    load_detector,
    load_detector_from_config,
    resolve_input_settings,
)
from lsdet.inference.images import (
    CORRUPT,
    EMPTY_FILE,
    TOO_LARGE,
    UNIDENTIFIED,
    UNREADABLE,
    FolderListing,
    ImageDecodeError,
    ImageFiles,
    image_suffixes,
    list_image_folder,
    read_rgb_image,
    skipped_by_reason,
)
from lsdet.inference.metric import detect_and_evaluate, evaluate_detections

__all__ = [
    "CORRUPT",
    "EMPTY_FILE",
    "FROM_CHECKPOINT",
    "TOO_LARGE",
    "UNIDENTIFIED",
    "UNREADABLE",
    "Detections",
    "FolderListing",
    "ImageDecodeError",
    "ImageFiles",
    "InputSettings",
    "apply_input_settings",
    "detect_and_evaluate",
    "evaluate_detections",
    "gather_detections",
    "image_suffixes",
    "list_image_folder",
    "load_detector",
    "load_detector_from_config",
    "predict",
    "predict_images",
    "read_rgb_image",
    "resolve_input_settings",
    "skipped_by_reason",
]
