"""Smoke test of the evaluator benchmark's generator at a tiny size."""

import numpy as np

from lsdet.bench.evaluator import generate
from lsdet.evaluation import oid_challenge_map


def test_generated_set_evaluates_the_same_in_both_layouts(tmp_path):
    paths = generate(tmp_path, num_images=60, detections_per_image=20)
    results = [
        oid_challenge_map(paths["hierarchy"], paths["boxes"], paths["labels"], paths[layout])
        for layout in ("tf", "submission")
    ]
    np.testing.assert_array_equal(results[0].ap, results[1].ap)
    assert results[0].report.num_predictions == 60 * 20
    assert 0.05 < results[0].map < 0.95
    assert results[0].report.ignored_class_not_verified > 0
