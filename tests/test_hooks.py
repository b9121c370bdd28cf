"""The trainer's hooks on their own: what each one asks of the trainer, and its state."""

import signal
from types import SimpleNamespace

from lsdet.engine.distributed import DistInfo
from lsdet.engine.hooks import CheckpointHook, DivergenceHook, StepOutcome, StopHook
from lsdet.engine.run_state import Position
from lsdet.engine.signals import StopRequested


class RecordingTrainer:
    """What a hook sees of the trainer: the run, and the requests it may make."""

    def __init__(self, global_step: int) -> None:
        self.run = SimpleNamespace(
            position=Position(global_step=global_step, iteration=1), dist=DistInfo()
        )
        self.stop_status = None

    def request_stop(self, status: str) -> None:
        self.stop_status = status


def test_stop_hook_stops_at_stop_after_iters_and_on_a_signal():
    step = StepOutcome(losses={"loss": 1.0}, lr=0.1, images=2)
    planned = StopHook(StopRequested(), stop_after_iters=3, name_as_written="run")
    trainer = RecordingTrainer(global_step=2)
    planned.after_step(trainer, step)
    assert trainer.stop_status is None
    trainer.run.position.global_step = 3
    planned.after_step(trainer, step)
    assert trainer.stop_status == "stopped"

    stop = StopRequested()
    stop._handle(signal.SIGTERM, None)  # what the installed handler does on SIGTERM
    trainer = RecordingTrainer(global_step=1)
    StopHook(stop, stop_after_iters=None, name_as_written="run").after_step(trainer, step)
    assert trainer.stop_status == "interrupted"


def test_divergence_hook_keeps_its_flag_through_its_state():
    hook = DivergenceHook(factor=2.0, steps=1)
    trainer = RecordingTrainer(global_step=1)
    hook.after_step(trainer, StepOutcome(losses={"loss": 1.0}, lr=0.1, images=2))
    trainer.run.position.global_step = 2
    hook.after_step(trainer, StepOutcome(losses={"loss": 5.0}, lr=0.1, images=2))
    assert hook.summary()["diverged"]["step"] == 2
    resumed = DivergenceHook(factor=2.0, steps=1)
    resumed.load_state_dict(hook.state_dict())
    assert resumed.summary() == hook.summary() and resumed.state_key == "divergence"


def test_checkpoint_hook_names_the_checkpoint_to_continue_from():
    assert "No checkpoint was written yet" in CheckpointHook(every=0).resume_hint()
    hook = CheckpointHook(every=0, resumed_from=("runs/x/checkpoints/last.pt", 7))
    assert "runs/x/checkpoints/last.pt (step 7)" in hook.resume_hint()
