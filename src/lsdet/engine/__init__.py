"""The training application: the loop (trainer), data/loader set-up, checkpoints,
distributed set-up, inference and evaluation of checkpoints, logging, run reports and the
demo driver. Entry points: ``python -m lsdet.train``, ``lsdet.predict``, ``lsdet.evaluate
checkpoint=...``, ``lsdet.engine.demo`` (``make demo``), ``lsdet.engine.report``."""
