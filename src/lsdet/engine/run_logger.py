"""wandb logging, offline by default (no network, no key needed), disabled in tests.

Only the main process logs. ``mode``: online (needs a wandb key), offline (writes
``<run_dir>/wandb/offline-run-*``, upload later with ``wandb sync``), disabled. wandb is
imported only by a logger that logs: the import takes seconds, and a disabled run needs none.

Runs of one Hydra multirun (``python -m lsdet.train -m ...``) share a wandb ``group``, the
sweep folder's name (``hydra.sweep.dir``, e.g. ``2026-12-06_21-13-11``), so that a dashboard
groups them; a single run has none unless ``logger.group`` names one. ``job_type`` says what
the run does (``train`` for lsdet.train).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

MODES = ("online", "offline", "disabled")


def hydra_sweep_group() -> str | None:
    """The name of the Hydra multirun's sweep folder when this process is a job of one
    (``hydra.mode`` MULTIRUN); None for a single run or outside Hydra."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(str(hydra_cfg.sweep.dir)).name or None


class RunLogger:
    def __init__(
        self,
        *,
        mode: str,
        project: str,
        run_dir: str | Path,
        name: str,
        config: dict[str, Any],
        run_id: str | None = None,
        enabled: bool = True,
        tags: list[str] | None = None,
        group: str | None = None,
        job_type: str | None = None,
    ) -> None:
        """``group``: the wandb group (``logger.group``); None takes the Hydra multirun's
        sweep (:func:`hydra_sweep_group`), none for a single run. ``job_type``: the wandb
        job type (``logger.job_type``; lsdet.train passes ``train``)."""
        if mode not in MODES:
            raise ValueError(f"logger.mode={mode!r}; expected one of {MODES}")
        # An environment override (WANDB_MODE=disabled in the test suite) wins.
        mode = os.environ.get("WANDB_MODE", mode)
        self.run = None
        self.run_id = run_id
        if not enabled or mode == "disabled":
            return
        import wandb

        self.run = wandb.init(
            project=project,
            name=name,
            dir=str(run_dir),
            config=config,
            mode=mode,
            id=run_id,
            resume="allow" if run_id else None,
            tags=list(tags or []),
            group=group or hydra_sweep_group(),
            job_type=job_type,
        )
        self.run_id = self.run.id

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
