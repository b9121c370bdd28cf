"""lsdet: large-scale object detection from imbalanced multi-label data."""

__version__ = "0.1.0"
