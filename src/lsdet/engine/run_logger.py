"""wandb logging, offline by default (no network, no key needed), disabled in tests.

Only the main process logs. ``mode``: online (needs a wandb key), offline (writes
``<run_dir>/wandb/offline-run-*``, upload later with ``wandb sync``), disabled. wandb is
imported only by a logger that logs: the import takes seconds, and a disabled run needs none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MODES = ("online", "offline", "disabled")


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
    ) -> None:
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
