"""The training core: ``trainer.py`` (``run_training``, the loop) and what it is made of: the run
folder, checkpoints, the hooks (checkpointing, evaluation, logging and progress, signals, the
sampler histogram), data and loaders, distributed set-up. Entry point: ``python -m
lsdet.train``."""
