"""RunFolder: the one place that names a run's files, and reads its results back."""

import json

import pytest

from lsdet.engine.run_folder import EvaluationFolder, RunFolder


def test_run_folder_names_the_files_a_run_writes(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.config == tmp_path / "run" / "config.yaml"
    assert folder.last_checkpoint == tmp_path / "run" / "checkpoints" / "last.pt"
    assert folder.previous_checkpoint.parent == folder.checkpoint_dir
    assert folder.phase_checkpoint("main").name == "phase_main.pt"
    assert folder.evaluation("main_epoch2").path == tmp_path / "run" / "eval" / "main_epoch2"
    assert folder.evaluation("x").per_class.name == "per_class.csv"
    assert folder.sampler_plot("main", 1).name == "main_epoch1.png"


def test_final_metrics_reads_the_last_evaluation_of_the_summary(tmp_path):
    folder = RunFolder(tmp_path)
    history = [
        {"epoch": 1, "map": 0.1, "eval_dir": RunFolder.evaluation_name("main_epoch1")},
        {"epoch": 2, "eval_error": "OSError: ..."},
        {"epoch": 3, "map": 0.3, "eval_dir": RunFolder.evaluation_name("main_epoch3")},
    ]
    folder.summary.write_text(json.dumps({"status": "finished", "seconds": 9, "history": history}))
    assert folder.finished()
    metrics = folder.final_metrics()
    assert metrics["map"] == 0.3 and metrics["status"] == "finished" and metrics["seconds"] == 9
    assert folder.final_evaluation().path == folder.evaluation("main_epoch3").path
    folder.summary.write_text(json.dumps({"status": "stopped", "history": history[1:2]}))
    assert not folder.finished()
    with pytest.raises(ValueError, match="no evaluation"):
        folder.final_metrics()


def test_progress_reads_none_while_absent_or_half_written(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_progress() is None
    folder.progress.write_text('{"status": "train')
    assert folder.read_progress() is None
    folder.progress.write_text('{"status": "training"}')
    assert folder.read_progress() == {"status": "training"}
    evaluation = EvaluationFolder(tmp_path / "out")
    evaluation.path.mkdir()
    evaluation.metrics.write_text('{"map": 0.5}')
    assert evaluation.read_metrics()["map"] == 0.5


def test_evaluation_folder_names_the_files_the_evaluator_writes(tmp_path):
    """EvaluationFolder's paths are where write_evaluation_outputs writes (one owner of the
    names: lsdet.evaluation.outputs)."""
    import numpy as np

    from lsdet.evaluation import EvaluationGroundTruth, evaluate
    from lsdet.evaluation.outputs import write_evaluation_outputs

    gt = EvaluationGroundTruth.from_arrays(
        ["c0"], np.array(["a"]), np.array([0]), np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([False])
    )
    result = evaluate(gt, ["a"], [0], [0.9], [[0.0, 0.0, 1.0, 1.0]])
    folder = EvaluationFolder(tmp_path / "eval" / "x")
    paths = write_evaluation_outputs(result, folder.path, train_image_counts=np.array([1]))
    assert paths == {
        "per_class": folder.per_class,
        "metrics": folder.metrics,
        "buckets": folder.frequency_buckets,
        "plot": folder.ap_vs_frequency,
    }
    assert all(path.is_file() for path in paths.values())
    assert folder.read_metrics()["map"] == 1.0
