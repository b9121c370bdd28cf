"""Suite-wide set-up.

TRITON_INTERPRET must be set before any module holding @triton.jit is imported, so that
the Triton kernels run on CPU tensors (CI has no GPU). Runs are never logged online.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENIMAGES_DIR = REPO_ROOT.parent / "shared" / "data" / "openimages"


@pytest.fixture(scope="session")
def openimages_dir() -> Path:
    """The real Open Images metadata shipped beside the project; skip where absent."""
    if not OPENIMAGES_DIR.is_dir():
        pytest.skip(f"Open Images metadata not found at {OPENIMAGES_DIR}")
    return OPENIMAGES_DIR
