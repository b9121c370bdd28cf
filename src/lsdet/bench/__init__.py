"""Benchmarks, each runnable as `python -m lsdet.bench.NAME` (see each module for its options)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    VmHWM (Linux) starts afresh at exec, unlike ru_maxrss, which keeps the parent's peak from
    before the fork; ru_maxrss is the fallback elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
