"""SIGTERM / SIGINT / SIGUSR2: finish the step in flight, checkpoint, stop.

Slurm, systemd and Ctrl-C signal the whole process group, DataLoader workers included. A
worker that dies of the signal makes the loader raise in the main process before it can
checkpoint, so workers ignore these signals (``ignore_stop_signals``, the loaders'
``worker_init_fn``) and the main process alone decides when to stop; the workers end with
their loader. SIGUSR2 is what Slurm sends before a job's time limit (``--signal``) and what
the submitit launcher requeues on: after the checkpoint it is raised again, so that the
launcher's own handler (restored by then) requeues the job, which resumes with
``train.resume=auto``.
"""

from __future__ import annotations

import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class StopRequested:
    """Set by SIGTERM/SIGINT while installed; the loop checkpoints and stops after the step."""

    def __init__(self) -> None:
        self.flag = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True
        self.signal_name = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequested:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
        if self.signal_name == "SIGUSR2":  # hand it on to the launcher (requeue)
            signal.raise_signal(signal.SIGUSR2)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: this worker ignores the stop signals."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
