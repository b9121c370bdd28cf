"""The Open Images Challenge detection metric (TF Object Detection API semantics), fast.

``oid_challenge_map`` evaluates CSV files; ``load_ground_truth`` (from the CSVs) or
``load_ground_truth_from_index`` (from the annotation index a loader uses) + ``evaluate`` is
the in-memory path (ground truth read once, detections as arrays).
"""

from lsdet.evaluation.challenge import (
    evaluate_predictions_csv,
    load_ground_truth,
    load_ground_truth_from_index,
    oid_challenge_map,
)
from lsdet.evaluation.core import (
    ChallengeResult,
    EvaluationGroundTruth,
    EvaluationReport,
    average_precision,
    evaluate,
    expand_rows,
)
from lsdet.evaluation.predictions import (
    PredictionFormatError,
    PredictionTable,
    detect_layout,
    read_predictions_csv,
    write_predictions_csv,
)

__all__ = [
    "ChallengeResult",
    "EvaluationGroundTruth",
    "EvaluationReport",
    "PredictionFormatError",
    "PredictionTable",
    "average_precision",
    "detect_layout",
    "evaluate",
    "evaluate_predictions_csv",
    "expand_rows",
    "load_ground_truth",
    "load_ground_truth_from_index",
    "oid_challenge_map",
    "read_predictions_csv",
    "write_predictions_csv",
]
