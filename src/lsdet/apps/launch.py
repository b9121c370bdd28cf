"""The command lines that start a training run (``python -m lsdet.train``) or an evaluation of a
checkpoint (``python -m lsdet.evaluate``), for the drivers that run them as subprocesses: the
demo, experiments/run_all.py and the GPU check."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

TRAIN_MODULE = "lsdet.train"
EVALUATE_MODULE = "lsdet.evaluate"


def train_command(
    overrides: Sequence[str], *, python: str = sys.executable, processes: int | None = None
) -> list[str]:
    """``python -m lsdet.train OVERRIDES``; with ``processes``, launched by torchrun on this
    machine (``--standalone --nproc_per_node processes``)."""
    if processes is None:
        return [python, "-m", TRAIN_MODULE, *overrides]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [python, *torchrun, "-m", TRAIN_MODULE, *overrides]


def evaluate_command(
    checkpoint: str | Path, overrides: Sequence[str], *, python: str = sys.executable
) -> list[str]:
    """``python -m lsdet.evaluate checkpoint=CHECKPOINT OVERRIDES``."""
    return [python, "-m", EVALUATE_MODULE, f"checkpoint={checkpoint}", *overrides]
