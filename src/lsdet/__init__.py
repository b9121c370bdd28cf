"""lsdet: large-scale object detection from imbalanced multi-label data."""

__version__ = "0.1.0"

# The structured configs of conf/ (train.*, rates.*), registered before any composition.
from lsdet.config_schema import register_config_schemas  # noqa: E402

register_config_schemas()
