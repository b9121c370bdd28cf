"""A run's progress file (``RunFolder.progress``): where a run stands, for a watcher such as
the demo driver."""

from __future__ import annotations

import json
from pathlib import Path

from lsdet.atomic_files import write_text_atomic


def write_progress(
    path: str | Path,
    *,
    status: str,
    phase: str,
    global_step: int,
    fraction: float,
    images_per_s: float = 0.0,
    error: str | None = None,
) -> None:
    """Write the progress file ``path`` atomically. ``fraction`` = epochs done (with the current one's
    share) / all epochs of the schedule. ``error``: why a run failed (status "failed")."""
    state = {
        "status": status,
        "phase": phase,
        "global_step": global_step,
        "fraction": min(max(fraction, 0.0), 1.0),
        "images_per_s": round(images_per_s, 2),
    }
    if error is not None:
        state["error"] = error
    write_text_atomic(path, json.dumps(state))
