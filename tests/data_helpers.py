"""A small class hierarchy shared by the data-layer tests."""

from __future__ import annotations

import json
from pathlib import Path

# root: A (parent of B), C; mids order A, B, C
A_B_C_TREE = {
    "LabelName": "root",
    "Subcategory": [
        {"LabelName": "A", "Subcategory": [{"LabelName": "B"}]},
        {"LabelName": "C"},
    ],
}


def write_a_b_c_hierarchy(path: Path) -> Path:
    """Write :data:`A_B_C_TREE` as a hierarchy JSON file at ``path``; returns ``path``."""
    path.write_text(json.dumps(A_B_C_TREE))
    return path
