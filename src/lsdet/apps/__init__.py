"""Applications over training runs: the demo driver (``python -m lsdet.apps.demo``, ``make
demo``), the side-by-side report of finished runs (``python -m lsdet.apps.report``) and the
command lines that start training and evaluation runs (``launch``)."""
