"""Decoupled classifier re-training (lsdet.crt) on a tiny benchmark and a tiny checkpoint:
cache -> train -> evaluate end to end; the cached RoIs are those training samples, with the
targets the training RoI heads build; only the class-score layer changes; a seed fixes the
classifier; the checkpoint's own classifier put back evaluates as the checkpoint does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from train_helpers import compose_config, compose_evaluate, compose_train, tiny_overrides

from lsdet import crt
from lsdet.data.dataset import collate_fn
from lsdet.engine.checkpoint import load_checkpoint
from lsdet.engine.random_state import seed_everything
from lsdet.engine.trainer import run_training
from lsdet.evaluate import evaluate_checkpoint
from lsdet.inference import load_detector

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny softmax run (64-px images, 6 training images); returns (data root, checkpoint)."""
    tmp_path = tmp_path_factory.mktemp("crt")
    data_root = tmp_path / "synth"
    cfg = compose_train(
        tiny_overrides(data_root)
        + [
            "model.roi.score_thresh=0.0",
            "model.roi.detections_per_img=30",
            # fewer proposals at test than in training: the cache must use training's
            "model.rpn.post_nms_top_n_test=10",
        ]
    )
    run_training(cfg, tmp_path / "run")
    return data_root, tmp_path / "run" / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def cached(trained, tmp_path_factory):
    """The RoI cache of the tiny checkpoint (2 passes over its training images)."""
    _, checkpoint = trained
    cache_file = tmp_path_factory.mktemp("cache") / "roi_cache.pt"
    cache = crt.cache_roi_features(
        checkpoint, cache_file, device=CPU, seed=3, passes=2, batch_size=2, progress=False
    )
    return cache_file, cache


@pytest.fixture(scope="module")
def data(cached):
    _, cache = cached
    return crt.open_training_data(OmegaConf.create(cache["train_config"]), None)


def compose_crt(checkpoint: Path, output_dir: Path, *extra: str):
    return compose_config(
        "crt",
        [
            f"checkpoint={checkpoint}",
            f"output_dir={output_dir}",
            "device=cpu",
            "progress=false",
            "cache.num_workers=0",
            "cache.batch_size=2",
            "eval.num_workers=0",
            "eval.batch_size=2",
            "train.epochs=3",
            "train.batch_size=32",
            *extra,
        ],
    )


def test_cache_holds_the_sampled_rois_of_every_training_image(trained, cached, data):
    _, checkpoint = trained
    _, cache = cached
    weights = load_checkpoint(checkpoint)["model"]
    num_rois = len(cache["labels"])
    feature_dim = weights["roi_heads.box_predictor.cls_score.weight"].shape[1]
    num_columns = weights["roi_heads.box_predictor.cls_score.weight"].shape[0]
    assert cache["features"].dtype == torch.float16
    assert tuple(cache["features"].shape) == (num_rois, feature_dim)
    assert tuple(cache["targets"].shape) == (num_rois, num_columns)
    assert cache["checkpoint_sha256"] == crt.file_sha256(checkpoint)
    assert cache["settings"]["passes"] == 2 and cache["settings"]["seed"] == 3
    # every image of both passes, 16 RoIs each (model.roi.batch_size_per_image of the run)
    per_image = np.bincount(cache["image_index"].numpy(), minlength=len(data.train_set))
    assert per_image.tolist() == [2 * 16] * len(data.train_set)
    labels = cache["labels"]
    foreground = labels > 0
    assert 0 < int(foreground.sum()) <= 2 * len(data.train_set) * 4  # positive_fraction 0.25
    # each row holds its primary label; background rows only the background
    assert bool(cache["targets"][torch.arange(num_rois), labels].all())
    assert bool(cache["targets"][~foreground, 1:].any() == 0)
    assert not bool(cache["targets"][foreground, 0].any())


def test_cached_targets_are_what_the_training_roi_heads_build(trained, cached, data):
    """The first batch of the cache again: the training RoI heads (train mode, a loss that
    records what it is given) on the same proposals with the same random state receive
    the cached targets and primary labels, and their logits are the class-score layer of
    the cached features."""
    _, checkpoint = trained
    _, cache = cached
    model, _, _ = load_detector(checkpoint, CPU)
    images, targets = collate_fn([data.train_set[0], data.train_set[1]])  # cache order, pass 1

    class Recorder(nn.Module):
        def forward(self, logits, multilabels, labels):
            self.seen = (logits.detach(), multilabels, labels)
            return logits.sum() * 0

    seed_everything(3)
    image_list, targets_t = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    model.rpn.train()
    proposals, _ = model.rpn(image_list, features, targets_t)
    model.rpn.eval()
    heads = model.roi_heads
    heads.loss_fn = Recorder()
    heads.train()
    with torch.no_grad():
        heads(features, proposals, image_list.image_sizes, targets_t)
    logits, multilabels, labels = heads.loss_fn.seen

    rows = len(labels)
    assert torch.equal(cache["targets"][:rows], multilabels.bool())
    assert torch.equal(cache["labels"][:rows], labels)
    cls_score = heads.box_predictor.cls_score
    with torch.no_grad():
        from_cache = cls_score(cache["features"][:rows].float())
    torch.testing.assert_close(from_cache, logits, atol=2e-2, rtol=1e-2)  # float16 features


def test_cache_is_deterministic_and_never_overwritten(trained, cached, tmp_path):
    _, checkpoint = trained
    cache_file, cache = cached
    again = crt.cache_roi_features(
        checkpoint, tmp_path / "c.pt", device=CPU, seed=3, passes=2, batch_size=2, progress=False
    )
    for key in ("features", "targets", "labels", "image_index"):
        assert torch.equal(again[key], cache[key]), key
    before = cache_file.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=true"):
        crt.cache_roi_features(checkpoint, cache_file, device=CPU, progress=False)
    assert cache_file.read_bytes() == before
    with pytest.raises(ValueError, match=r"cache.passes=0"):
        crt.cache_roi_features(checkpoint, tmp_path / "d.pt", device=CPU, passes=0)


def train(cache, checkpoint, data, seed, loss="softmax", **settings):
    loss_cfg = OmegaConf.to_container(compose_config("crt", [f"loss={loss}"]).loss)
    return crt.train_classifier(
        cache,
        loss_cfg,
        checkpoint_weights=load_checkpoint(checkpoint)["model"],
        seed=seed,
        device=CPU,
        epochs=settings.pop("epochs", 3),
        batch_size=settings.pop("batch_size", 32),
        data=data,
        progress=False,
        **settings,
    )


def test_training_changes_only_the_class_score_layer(trained, cached, data):
    _, checkpoint = trained
    _, cache = cached
    predictor, record = train(cache, checkpoint, data, seed=0)
    assert record["history"][-1]["loss"] < record["history"][0]["loss"]
    model, _ = crt.detector_with_predictor(
        checkpoint, predictor, scoring="softmax", parent_scores="subtree_sum", device=CPU
    )
    weights = load_checkpoint(checkpoint)["model"]
    state = model.state_dict()
    changed = sorted(k for k in weights if not torch.equal(state[k], weights[k]))
    assert changed == [
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.cls_score.weight",
    ]
    assert set(state) == set(weights)


def test_the_same_seed_gives_the_same_classifier(trained, cached, data):
    _, checkpoint = trained
    _, cache = cached
    first = crt.classifier_state(train(cache, checkpoint, data, seed=5)[0])
    again = crt.classifier_state(train(cache, checkpoint, data, seed=5)[0])
    other = crt.classifier_state(train(cache, checkpoint, data, seed=6)[0])
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["cls_score.weight"], other["cls_score.weight"])


@pytest.mark.parametrize("loss", ["bce", "seesaw", "eqlv2", "concurrent_softmax"])
def test_every_kind_of_classifier_trains(trained, cached, data, loss):
    """Sigmoid losses start from the prior bias, Seesaw gets its normalised classifier and
    objectness logit; each trains to a finite, falling loss on the cache."""
    _, checkpoint = trained
    _, cache = cached
    predictor, record = train(cache, checkpoint, data, seed=0, loss=loss, epochs=2)
    losses = [h["loss"] for h in record["history"]]
    assert all(np.isfinite(losses))
    assert predictor.objectness_logit == (loss == "seesaw")
    state = crt.classifier_state(predictor)
    assert ("objectness_score.weight" in state) == (loss == "seesaw")


def test_class_balanced_roi_draws_keep_the_background_share():
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    cache = {"labels": labels, "image_index": torch.zeros(10, dtype=torch.int32)}
    probs = crt.roi_draw_probabilities(cache, "class_balanced")
    assert probs[labels == 0].sum() == pytest.approx(0.6)
    assert probs[labels == 1].sum() == pytest.approx(0.2)
    assert probs[labels == 2].sum() == pytest.approx(0.2)
    assert probs[6] == pytest.approx(0.2 / 3)
    assert crt.roi_draw_probabilities(cache, "uniform") is None
    with pytest.raises(ValueError, match="train.roi_sampling='balanced'"):
        crt.roi_draw_probabilities(cache, "balanced")


def test_run_sampler_draws_follow_the_runs_image_sampler(cached, data):
    _, cache = cached
    # the tiny run used the sequential sampler: every image once, so every RoI equally
    probs = crt.roi_draw_probabilities(cache, "run_sampler", data)
    np.testing.assert_allclose(probs, np.full(len(probs), 1 / len(probs)))


def test_the_checkpoints_classifier_put_back_evaluates_as_the_checkpoint(
    trained, cached, data, tmp_path
):
    data_root, checkpoint = trained
    _, cache = cached
    weights = load_checkpoint(checkpoint)["model"]
    loss_fn = crt.build_arm_loss(
        {"name": "softmax"}, OmegaConf.create(cache["train_config"]), data, CPU
    )
    predictor = crt.new_box_predictor(loss_fn, OmegaConf.create(cache["train_config"]), weights, 9)
    prefix = "roi_heads.box_predictor."
    predictor.load_state_dict(
        {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    )
    parent_scores = cache["train_config"]["model"]["parent_scores"]
    metrics = crt.evaluate_predictor(
        checkpoint,
        predictor,
        tmp_path / "crt",
        scoring="softmax",
        parent_scores=parent_scores,
        device=CPU,
        data=data,
        progress=False,
    )
    cfg = compose_evaluate(data_root, checkpoint, tmp_path / "direct")
    direct, _ = evaluate_checkpoint(cfg)
    assert metrics["map"] == direct.map
    ours = pd.read_csv(tmp_path / "crt" / "per_class.csv")
    theirs = pd.read_csv(tmp_path / "direct" / "per_class.csv")
    columns = ["mid", "ap", "num_detections", "num_true_positives", "num_false_positives"]
    pd.testing.assert_frame_equal(ours[columns], theirs[columns])
    assert ours["num_detections"].sum() > 0


def test_cli_cache_train_evaluate_end_to_end(trained, tmp_path):
    """stage=all with concurrent softmax: the cache is made once, each seed's classifier is
    trained and scored with eq. 5, and the result folders read as evaluation results of
    experiments/aggregate.py; a second training of the same (arm, seed) is refused."""
    _, checkpoint = trained
    out = tmp_path / "crt"
    cfg = compose_crt(checkpoint, out, "loss=concurrent_softmax", "seeds=[0,1]")
    results = crt.run(cfg)
    assert set(results) == {0, 1}
    assert (out / "roi_cache.pt").is_file()
    sys.path.insert(0, str(EXPERIMENTS))
    import aggregate

    for seed in (0, 1):
        folder = out / "runs" / "concurrent_softmax" / "val-as_train" / f"seed{seed}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["scoring"] == "concurrent_softmax"
        assert metrics["parent_scores"] == "own"
        assert metrics["crt"]["seed"] == seed
        assert metrics["map"] == pytest.approx(results[seed]["map"])
        row = aggregate.read_result(folder)
        assert row["run"] == "concurrent_softmax" and row["seed"] == seed
        assert row["kind"] == "evaluation" and row["map"] == metrics["map"]
        assert (folder / "per_class.csv").is_file() and (folder / "classifier.pt").is_file()

    before = out / "runs" / "concurrent_softmax" / "val-as_train" / "seed0" / "classifier.pt"
    before_bytes = before.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=true"):
        crt.run(compose_crt(checkpoint, out, "loss=concurrent_softmax", "stage=train"))
    assert before.read_bytes() == before_bytes
    with pytest.raises(FileExistsError, match="metrics.json already exists"):
        crt.run(compose_crt(checkpoint, out, "loss=concurrent_softmax", "stage=evaluate"))
    # evaluate alone re-reads the saved classifier and gives the same mAP
    again = crt.run(
        compose_crt(
            checkpoint,
            out,
            "loss=concurrent_softmax",
            "stage=evaluate",
            "seeds=[1]",
            "overwrite=true",
        )
    )
    assert again[1]["map"] == results[1]["map"]


def test_a_cache_of_another_checkpoint_is_refused(trained, cached, tmp_path):
    _, checkpoint = trained
    cache_file, _ = cached
    other = tmp_path / "other.pt"
    state = load_checkpoint(checkpoint)
    state["model"]["roi_heads.box_predictor.cls_score.bias"] += 1.0
    torch.save(state, other)
    cfg = compose_crt(other, tmp_path / "out", f"cache_file={cache_file}", "stage=train")
    with pytest.raises(ValueError, match="another checkpoint"):
        crt.run(cfg)


def test_data_root_moves_the_checkpoints_data_paths():
    train_cfg = OmegaConf.create(
        {
            "data": {
                "root": "old/synth",
                "hierarchy_json": "old/synth/hierarchy.json",
                "train": {"bbox_csv": "old/synth/train.csv", "image_dir": "old/synthetic"},
                "image_size": 64,
            }
        }
    )
    moved = crt.data_config(train_cfg, "/new/place/")
    assert moved.root == "/new/place"
    assert moved.hierarchy_json == "/new/place/hierarchy.json"
    assert moved.train.bbox_csv == "/new/place/train.csv"
    assert moved.train.image_dir == "old/synthetic"  # not under the old root
    assert moved.image_size == 64
    assert crt.data_config(train_cfg, None).train.bbox_csv == "old/synth/train.csv"


def test_arm_rates_overrides_replace_the_checkpoint_runs_rates(cached, data):
    """rates.hierarchy_rate=0 / rates.prior_count=0 (the registered cRT arms) change the
    rates the arm's loss is built with; null entries keep the checkpoint run's."""
    _, cache = cached
    train_cfg = OmegaConf.create(cache["train_config"])
    assert crt.arm_rates_overrides({"hierarchy_rate": None, "prior_count": None}) == {}
    overrides = crt.arm_rates_overrides({"hierarchy_rate": 0, "prior_count": None})
    assert overrides == {"hierarchy_rate": 0.0}
    settings = crt.arm_rates_settings(train_cfg, overrides)
    assert settings.hierarchy_rate == 0.0
    assert settings.prior_count == train_cfg.rates.prior_count
    run_rates = crt.arm_rates(train_cfg, data)
    flipped = crt.arm_rates(train_cfg, data, overrides)
    ancestors = torch.as_tensor(data.hierarchy.ancestors, dtype=torch.bool)
    pairs = torch.zeros_like(run_rates, dtype=torch.bool)
    pairs[1:, 1:] = ancestors | ancestors.T
    assert bool((run_rates[pairs] == 1.0).all()) and bool((flipped[pairs] == 0.0).all())
    loss = crt.build_arm_loss({"name": "concurrent_softmax"}, train_cfg, data, CPU, overrides)
    assert torch.equal(loss.rates.cpu(), flipped)


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        ({"hierarchy_rate": 1.5}, r"rates.hierarchy_rate=1.5: expected a number from 0 to 1"),
        ({"prior_count": -1}, r"rates.prior_count=-1: expected a number >= 0"),
        ({"floor": "low"}, r"rates.floor='low'"),
        ({"iou_threshold": 0.5}, r"rates.iou_threshold: an arm can set only"),
    ],
)
def test_bad_arm_rates_are_refused_naming_the_key(rates, message):
    with pytest.raises(ValueError, match=message):
        crt.arm_rates_overrides(rates)


def test_cli_arms_with_rates_and_loss_overrides(trained, cached, tmp_path):
    """The registered flip arms run through the CLI: the rates and loss overrides reach the
    loss and the eq. 5 scoring and are recorded; a classifier trained with other rates is not
    evaluated as this arm's."""
    _, checkpoint = trained
    cache_file, _ = cached
    out = tmp_path / "crt"
    common = [f"cache_file={cache_file}", "loss=concurrent_softmax", "loss.impl=torch"]
    flip = crt.run(
        compose_crt(checkpoint, out, *common, "arm=cs_hierarchy_rate0", "rates.hierarchy_rate=0")
    )
    default = crt.run(compose_crt(checkpoint, out, *common, "arm=cs_default"))
    folder = out / "runs" / "cs_hierarchy_rate0" / "val-as_train" / "seed0"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["crt"]["rates_overrides"] == {"hierarchy_rate": 0.0}
    assert metrics["crt"]["train"]["rates_overrides"] == {"hierarchy_rate": 0.0}
    default_metrics = out / "runs" / "cs_default" / "val-as_train" / "seed0" / "metrics.json"
    default_history = json.loads(default_metrics.read_text())["crt"]["train"]["history"]
    assert metrics["crt"]["train"]["history"] != default_history  # other rates, other loss
    assert np.isfinite(flip[0]["map"]) and np.isfinite(default[0]["map"])
    with pytest.raises(ValueError, match="rates overrides"):
        crt.run(
            compose_crt(
                checkpoint, out, *common, "arm=cs_hierarchy_rate0", "stage=evaluate",
                "overwrite=true",
            )
        )  # fmt: skip
    annotated = crt.run(
        compose_crt(
            checkpoint, out, *common, "arm=cs_annotated_mean", "loss.positive_targets=annotated",
            "loss.positive_reduction=mean",
        )
    )  # fmt: skip
    folder = out / "runs" / "cs_annotated_mean" / "val-as_train" / "seed0"
    loss = json.loads((folder / "metrics.json").read_text())["crt"]["loss"]
    assert loss["positive_targets"] == "annotated" and loss["positive_reduction"] == "mean"
    assert np.isfinite(annotated[0]["map"])


def test_an_arms_rates_are_the_rates_of_its_eq5_scoring(trained, cached, data):
    _, checkpoint = trained
    _, cache = cached
    train_cfg = OmegaConf.create(cache["train_config"])
    flipped = crt.arm_rates(train_cfg, data, {"hierarchy_rate": 0.0})
    predictor, _ = train(cache, checkpoint, data, seed=0, loss="concurrent_softmax", epochs=1)
    model, _ = crt.detector_with_predictor(
        checkpoint, predictor, scoring="concurrent_softmax", parent_scores="own", device=CPU,
        rates=flipped,
    )  # fmt: skip
    assert torch.equal(model.roi_heads.rates, flipped)
    kept, _ = crt.detector_with_predictor(
        checkpoint, predictor, scoring="concurrent_softmax", parent_scores="own", device=CPU
    )
    assert torch.equal(kept.roi_heads.rates, crt.arm_rates(train_cfg, data))
