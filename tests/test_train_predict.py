"""After a tiny run: the submission CSV of lsdet.predict, scored by the evaluator from the
files, and `lsdet.evaluate checkpoint=...` give the mAP the trainer computed in memory."""

import json
from pathlib import Path

import pytest
import torch
from train_helpers import (
    compose_evaluate,
    compose_predict,
    compose_train,
    tiny_overrides,
    train_evaluated_run,
)

from lsdet.data import load_hierarchy
from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.trainer import run_training
from lsdet.evaluate import evaluate_checkpoint
from lsdet.evaluation import oid_challenge_map, read_predictions_csv
from lsdet.inference import load_detector
from lsdet.predict import write_submission


def test_submission_scores_like_the_trainers_evaluation(tmp_path):
    data_root = tmp_path / "synth"
    cfg, summary = train_evaluated_run(data_root, tmp_path / "run")
    trained_map = summary["history"][-1]["map"]

    predict_cfg = compose_predict(
        tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "submission.csv"
    )
    path = write_submission(predict_cfg)
    hierarchy = load_hierarchy(cfg.data.hierarchy_json, cfg.data.class_descriptions_csv)
    table = read_predictions_csv(path, hierarchy.mids)
    # every validation image has a row (4 images), at most 30 detections each
    assert path.read_text().splitlines()[0] == "ImageId,PredictionString"
    assert len(path.read_text().splitlines()) == 1 + 4
    assert 0 < len(table) <= 4 * 30
    result = oid_challenge_map(
        hierarchy, cfg.data.val.bbox_csv, cfg.data.val.image_labels_csv, path
    )
    assert result.map == pytest.approx(trained_map, abs=1e-4)

    # python -m lsdet.evaluate checkpoint=... gives the same number from memory
    # the image size is the checkpoint's (64)
    eval_cfg = compose_evaluate(
        data_root, tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "eval"
    )
    result, paths = evaluate_checkpoint(eval_cfg)
    assert result.map == pytest.approx(trained_map, abs=1e-9)
    assert paths["per_class"].is_file() and paths["buckets"].is_file()

    # a validation image without its file: an error naming it, or a counted, reported skip
    image = sorted(Path(cfg.data.val.image_dir).glob("*.jpg"))[0]
    moved = tmp_path / image.name
    image.rename(moved)
    try:
        with pytest.raises(FileNotFoundError, match=image.name):
            evaluate_checkpoint(eval_cfg)
        eval_cfg.strict = False
        _, paths = evaluate_checkpoint(eval_cfg)
        metrics = json.loads(paths["metrics"].read_text())
        assert metrics["missing_images"] == {"count": 1, "examples": [image.name]}
    finally:
        moved.rename(image)

    # a softmax-trained checkpoint scored with eq. 5: the rates are estimated from its
    # training data (the checkpoint holds none), so the scores differ from softmax
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    softmax_model, _, _ = load_detector(checkpoint, torch.device("cpu"))
    cs_model, _, _ = load_detector(checkpoint, torch.device("cpu"), scoring="concurrent_softmax")
    assert not softmax_model.roi_heads.rates.any()
    assert cs_model.roi_heads.rates.any() and cs_model.roi_heads.scoring == "concurrent_softmax"
    logits = torch.randn(5, softmax_model.roi_heads.rates.shape[0])
    assert not torch.allclose(
        cs_model.roi_heads.class_scores(logits), softmax_model.roi_heads.class_scores(logits)
    )


def test_sync_bn_off_cuda_trains_with_batch_norm_and_leaves_the_config(tmp_path):
    """model.backbone.norm=sync_bn on CPU: the detector builder uses plain batch norm; the
    run's config (and so its config file and checkpoints) still says what was asked."""
    cfg = compose_train(
        tiny_overrides(tmp_path / "synth")
        + ["model.backbone.norm=sync_bn", "train.eval_every=never"]
    )
    summary = run_training(cfg, tmp_path / "run")
    assert summary["status"] == "finished"
    assert cfg.model.backbone.norm == "sync_bn"
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["config"]["model"]["backbone"]["norm"] == "sync_bn"
    model, _, _ = load_detector(tmp_path / "run" / "checkpoints" / "last.pt", torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
