"""The detector: backbone options, multi-label RoI targets, scoring, parents, a tiny overfit."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchvision.ops import batched_nms
from torchvision.ops.misc import FrozenBatchNorm2d

from lsdet.bench.postprocess import main as postprocess_benchmark
from lsdet.bench.postprocess import synthetic_candidates
from lsdet.losses import LOSSES
from lsdet.losses.scoring import raise_parents_to_descendants, score_logits, sum_subtrees
from lsdet.models import (
    MultiLabelBoxPredictor,
    TimmFPNBackbone,
    best_after_nms,
    build_detector,
    prior_bias,
)
from lsdet.models.detector import anchor_sizes_for

MODEL_YAML = "conf/model/resnet18_fpn.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is as fast, and does not stall when other work busies a core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class PrimaryCrossEntropy(torch.nn.Module):
    """Plain softmax CE on the primary label, records what the head passed in."""

    def forward(self, logits, multilabels, labels):
        self.seen = (logits.detach(), multilabels.clone(), labels.clone())
        return F.cross_entropy(logits, labels)


def tiny_cfg(**overrides):
    cfg = OmegaConf.load(MODEL_YAML)
    cfg.min_size = 64
    cfg.max_size = 64
    cfg.parent_scores = "max_descendants"  # the file follows ${loss.parent_scores}
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def tiny_targets(num_fg: int):
    return [
        {
            "boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0], [30.0, 20.0, 60.0, 50.0]]),
            "labels": torch.tensor([2, 4]),
            "multilabels": torch.tensor(
                [[1.0, 1.0] + [0.0] * (num_fg - 2), [0.0, 0.0, 0.0, 1.0] + [0.0] * (num_fg - 4)]
            ),
        },
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "multilabels": torch.zeros(0, num_fg),
        },
    ]


def test_resolve_scoring_follows_loss_unless_explicit():
    assert LOSSES["softmax"].scoring_for("auto") == "softmax"
    assert LOSSES["concurrent_softmax"].scoring_for("auto") == "concurrent_softmax"
    assert LOSSES["focal"].scoring_for("auto") == "sigmoid"
    assert LOSSES["dist_ce"].scoring_for("auto") == "softmax"
    assert LOSSES["softmax"].scoring_for("concurrent_softmax") == "concurrent_softmax"


def test_prior_bias_gives_prior_probability():
    assert torch.sigmoid(torch.tensor(prior_bias(0.01))).item() == pytest.approx(0.01)
    assert prior_bias(0.5) == 0.0
    with pytest.raises(ValueError, match="prior_prob"):
        prior_bias(1.0)
    head = MultiLabelBoxPredictor(8, 4, prior_prob=0.01)
    assert torch.allclose(head.cls_score.bias, torch.full((4,), -math.log(99.0)))


def test_score_logits_softmax_sigmoid_and_errors():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    expected = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    assert torch.allclose(score_logits(logits, "softmax"), expected)
    assert torch.allclose(score_logits(logits, "sigmoid"), 1 / (1 + torch.exp(-logits)))
    with pytest.raises(ValueError, match="rates"):
        score_logits(logits, "concurrent_softmax")
    with pytest.raises(ValueError, match="scoring"):
        score_logits(logits, "argmax")


def test_concurrent_softmax_scoring_is_eq5():
    logits = torch.tensor([[0.5, 1.0, 2.0, -1.0]])
    rates = torch.zeros(4, 4)
    rates[1, 2] = 1.0  # class 2 never suppresses class 1
    rates[3, 1] = 0.5
    scores = score_logits(logits, "concurrent_softmax", rates)
    e = torch.exp(logits[0])
    assert scores[0, 1].item() == pytest.approx((e[1] / (e[0] + e[1] + e[3])).item(), rel=1e-5)
    assert scores[0, 3].item() == pytest.approx(
        (e[3] / (e[0] + 0.5 * e[1] + e[2] + e[3])).item(), rel=1e-5
    )
    # with R = 0 it is the plain softmax
    assert torch.allclose(
        score_logits(logits, "concurrent_softmax", torch.zeros(4, 4)), logits.softmax(1), atol=1e-6
    )


def test_parents_raised_to_best_descendant():
    # classes: 0 = parent of 1 and 2; 2 = parent of 3 (so 0 is also above 3)
    descendants = torch.zeros(4, 4, dtype=torch.bool)
    descendants[0, 1] = descendants[0, 2] = descendants[0, 3] = descendants[2, 3] = True
    scores = torch.tensor([[0.5, 0.1, 0.2, 0.05, 0.6], [0.1, 0.7, 0.0, 0.0, 0.2]])
    out = raise_parents_to_descendants(scores, descendants)
    assert torch.allclose(out[0], torch.tensor([0.5, 0.6, 0.2, 0.6, 0.6]))
    assert torch.allclose(out[1], torch.tensor([0.1, 0.7, 0.0, 0.2, 0.2]))


@pytest.mark.parametrize("max_kept", [0, 1, 7, 50, 300, 10_000])
def test_best_after_nms_is_batched_nms_cut_to_max_kept(max_kept):
    boxes, scores, labels = synthetic_candidates(400, 30, seed=max_kept)
    expected = batched_nms(boxes, scores, labels, 0.5)[:max_kept]
    assert torch.equal(best_after_nms(boxes, scores, labels, 0.5, max_kept), expected)


def test_best_after_nms_looks_further_when_the_best_candidates_are_duplicates():
    # The 40 best candidates are one box of class 0, so NMS over the first 4 x 5 of them keeps
    # one: the candidates must grow until 5 survive.
    boxes, scores, labels = synthetic_candidates(100, 10, seed=1)
    boxes[:40] = torch.tensor([10.0, 10.0, 30.0, 30.0])
    labels[:40] = 0
    scores[:40] = 2.0 + torch.arange(40.0)
    kept = best_after_nms(boxes, scores, labels, 0.5, 5)
    assert len(kept) == 5 and kept[0] == 39
    assert torch.equal(kept, batched_nms(boxes, scores, labels, 0.5)[:5])
    assert len(best_after_nms(boxes[:0], scores[:0], labels[:0], 0.5, 5)) == 0


def test_postprocess_benchmark_compares_both_on_the_same_candidates():
    rows = postprocess_benchmark(["--proposals", "200", "--classes", "20"])
    assert [(r["score_thresh"], r["cap"]) for r in rows] == [(1e-4, 1000), (0.0, 10_000)]
    assert all(r["same"] and r["candidates"] > 0 for r in rows)
    assert rows[1]["candidates"] == 200 * 20


def test_anchor_sizes_follow_levels():
    cfg = tiny_cfg()
    assert anchor_sizes_for(cfg, [8, 16, 32], 3) == [(16,), (32,), (64,)]
    assert anchor_sizes_for(cfg, [8, 16, 32], 4) == [(16,), (32,), (64,), (128,)]
    cfg.anchor_sizes = [[10, 20], [40]]
    with pytest.raises(ValueError, match="3"):
        anchor_sizes_for(cfg, [8, 16, 32], 3)


def test_backbone_norm_modes_and_local_checkpoint(tmp_path):
    frozen = TimmFPNBackbone("resnet18", out_indices=(3, 4), fpn_channels=16, norm="frozen_bn")
    assert isinstance(frozen.body.bn1, FrozenBatchNorm2d)
    synced = TimmFPNBackbone("resnet18", out_indices=(3, 4), fpn_channels=16, norm="sync_bn")
    assert isinstance(synced.body.bn1, torch.nn.SyncBatchNorm)
    with pytest.raises(ValueError, match="norm"):
        TimmFPNBackbone("resnet18", norm="group")
    with pytest.raises(ValueError, match="not a timm model"):
        TimmFPNBackbone("resnet_does_not_exist")

    reference = timm.create_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    loaded = TimmFPNBackbone(
        "resnet18", out_indices=(2, 3, 4), extra_pool_level=False, checkpoint_path=str(path)
    )
    assert torch.equal(loaded.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert loaded.strides == [8, 16, 32] and loaded.num_levels == 3
    features = loaded(torch.rand(1, 3, 64, 64))
    assert list(features) == ["0", "1", "2"] and features["2"].shape == (1, 256, 2, 2)
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        TimmFPNBackbone("resnet18", checkpoint_path=str(tmp_path / "missing.pth"))


def test_multilabel_targets_per_proposal():
    torch.manual_seed(0)
    loss = PrimaryCrossEntropy()
    model = build_detector(tiny_cfg(), num_classes=6, loss_fn=loss)
    heads = model.roi_heads
    targets = tiny_targets(5)
    matched = [torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0])]
    labels = [torch.tensor([2, 4, 0, 0]), torch.tensor([0, 0])]
    multi = heads.multilabel_targets(matched, labels, targets)
    expected = torch.tensor(
        [
            [0, 1, 1, 0, 0, 0],  # object 0: labels {1, 2}, primary 2
            [0, 0, 0, 0, 1, 0],  # object 1: label 4
            [1, 0, 0, 0, 0, 0],  # background rows (whatever they were matched to)
            [1, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0],  # image without objects
            [1, 0, 0, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(multi, expected)


def test_class_agnostic_box_loss_by_hand():
    model = build_detector(tiny_cfg(), num_classes=6, loss_fn=PrimaryCrossEntropy())
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    labels = torch.tensor([3, 2, 0])
    targets = torch.zeros(3, 4)
    # smooth-L1 (beta 1/9) of 1.0 is 1 - 1/18, summed over foreground, over 3 sampled rows
    loss = model.roi_heads.box_regression_loss(deltas, labels, targets)
    assert loss.item() == pytest.approx((1 - 1 / 18) / 3)


def test_detector_trains_and_predicts_every_class_with_parents():
    torch.manual_seed(0)
    loss = PrimaryCrossEntropy()
    descendants = torch.zeros(5, 5, dtype=torch.bool)
    descendants[0, 1] = True  # class index 0 (label 1) is the parent of index 1 (label 2)
    model = build_detector(
        tiny_cfg(**{"roi.score_thresh": 0.0}),
        num_classes=6,
        loss_fn=loss,
        descendants=descendants,
    )
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    model.train()
    losses = model(images, tiny_targets(5))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    _, multi, labels = loss.seen
    assert multi.shape == (len(labels), 6)
    assert torch.equal(multi[labels == 0, 0], torch.ones(int((labels == 0).sum())))
    assert bool((multi[labels == 2, 1] == 1).all())  # the parent rides along with label 2
    sum(losses.values()).backward()

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det in detections:
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"])
        assert int(det["labels"].min()) >= 1 and int(det["labels"].max()) <= 5
    # the parent (label 1) scores at least as high as its child (label 2) on every RoI
    logits = torch.randn(50, 6)
    scores = model.roi_heads.class_scores(logits)
    softmax = logits.softmax(dim=1)
    assert torch.allclose(scores[:, 1], torch.maximum(softmax[:, 1], softmax[:, 2]))
    assert torch.allclose(scores[:, 2:], softmax[:, 2:])


def test_sigmoid_loss_gets_prior_bias():
    from lsdet.losses import build_loss

    loss = build_loss("bce", num_classes=4)
    model = build_detector(tiny_cfg(), num_classes=4, loss_fn=loss, loss_name="bce")
    assert model.roi_heads.scoring == "sigmoid"
    bias = model.roi_heads.box_predictor.cls_score.bias
    assert torch.allclose(bias, torch.full_like(bias, prior_bias(0.01)))


def test_tiny_detector_overfits_one_image():
    """Same image, same box: the classifier learns it (the loss falls well below its start)."""
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(), num_classes=4, loss_fn=PrimaryCrossEntropy())
    image = torch.zeros(3, 64, 64)
    image[0, 10:40, 12:44] = 1.0
    target = {
        "boxes": torch.tensor([[12.0, 10.0, 44.0, 40.0]]),
        "labels": torch.tensor([3]),
        "multilabels": torch.tensor([[0.0, 0.0, 1.0]]),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    first = None
    for _ in range(25):
        losses = model([image], [target])
        total = sum(losses.values())
        first = first if first is not None else losses["loss_classifier"].item()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert losses["loss_classifier"].item() < 0.3 * first


@pytest.mark.parametrize("model_name", ["resnet50_fpn", "resnext50_32x4d_fpn", "efficientnet_fpn"])
def test_model_configs_build_and_train_a_step(model_name):
    """The shipped model configs: levels, anchors and pooler fit together (64-px image)."""
    from hydra import compose, initialize_config_dir
    from train_helpers import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}"]).model
    cfg.min_size = cfg.max_size = 64
    cfg.rpn.pre_nms_top_n_train = cfg.rpn.post_nms_top_n_train = 50
    cfg.roi.batch_size_per_image = 16
    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=6, loss_fn=PrimaryCrossEntropy())
    backbone = model.backbone
    assert len(model.rpn.anchor_generator.sizes) == backbone.num_levels
    assert model.roi_heads.box_roi_pool.featmap_names == backbone.level_names
    model.train()
    losses = model([torch.rand(3, 64, 64)], tiny_targets(5)[:1])
    assert all(torch.isfinite(v) for v in losses.values())


def test_detector_benchmark_smoke():
    from lsdet.bench.detector import main

    rows = main(
        ["--device", "cpu", "--size", "64", "--iters", "1", "--warmup", "0", "--batch", "1"]
    )
    assert [r["model"] for r in rows] == [
        "lsdet resnet50_fpn",
        "torchvision fasterrcnn_resnet50_fpn",
    ]
    assert all(r["images_per_s"] > 0 for r in rows)


def test_subtree_sum_adds_descendants_once_and_caps_at_one():
    # 0 is the parent of 1 and 2; 2 is the parent of 3 (so 3 is below 0 too)
    descendants = torch.zeros(4, 4, dtype=torch.bool)
    descendants[0, 1] = descendants[0, 2] = descendants[0, 3] = descendants[2, 3] = True
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25], [0.0, 0.5, 0.4, 0.3, 0.0]])
    out = sum_subtrees(scores, descendants)
    expected = torch.tensor(
        [[0.1, 0.2 + 0.3 + 0.15 + 0.25, 0.3, 0.15 + 0.25, 0.25], [0.0, 1.0, 0.4, 0.3, 0.0]]
    )
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("loss_name", "parent_scores"),
    [
        ("softmax", "subtree_sum"),
        ("dist_ce", "subtree_sum"),
        ("seesaw", "subtree_sum"),
        ("concurrent_softmax", "own"),
        ("bce", "own"),
        ("focal", "own"),
        ("co_bce", "own"),
        ("eqlv2", "own"),
        ("federated", "own"),
    ],
)
def test_parent_scores_default_follows_the_loss(loss_name, parent_scores):
    from hydra import compose, initialize_config_dir
    from train_helpers import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"loss={loss_name}"])
        assert cfg.model.parent_scores == parent_scores
        override = [f"loss={loss_name}", "model.parent_scores=max_descendants"]
        assert compose("train", overrides=override).model.parent_scores == "max_descendants"


def test_parent_scores_setting_reaches_the_scores():
    descendants = torch.zeros(5, 5, dtype=torch.bool)
    descendants[0, 1] = descendants[0, 2] = True
    logits = torch.randn(20, 6)
    softmax = logits.softmax(dim=1)
    results = {}
    for mode in ("own", "max_descendants", "subtree_sum"):
        cfg = tiny_cfg(parent_scores=mode)
        model = build_detector(
            cfg, num_classes=6, loss_fn=PrimaryCrossEntropy(), descendants=descendants
        )
        results[mode] = model.roi_heads.class_scores(logits)
    torch.testing.assert_close(results["own"], softmax)
    torch.testing.assert_close(results["max_descendants"][:, 1], softmax[:, 1:4].amax(dim=1))
    torch.testing.assert_close(results["subtree_sum"][:, 1], softmax[:, 1:4].sum(dim=1))
    for scores in results.values():
        torch.testing.assert_close(scores[:, 2:], softmax[:, 2:])
    with pytest.raises(ValueError, match="parent_scores"):
        build_detector(tiny_cfg(parent_scores="sum"), num_classes=6, loss_fn=PrimaryCrossEntropy())


def test_objectness_scorings_by_hand():
    # Seesaw: [bg objectness, classes..., fg objectness]
    logits = torch.tensor([[0.0, 0.0, math.log(3), math.log(3)]])
    scores = score_logits(logits, "softmax_objectness")
    # objectness softmax(0, log 3) = (1/4, 3/4); classes softmax (1/4, 3/4)
    torch.testing.assert_close(scores, torch.tensor([[0.25, 0.75 / 4, 0.75 * 3 / 4]]))
    # EQLv2: sigmoid x (1 - background sigmoid)
    logits = torch.tensor([[math.log(3), 0.0, math.log(4)]])
    scores = score_logits(logits, "sigmoid_objectness")
    torch.testing.assert_close(scores, torch.tensor([[0.75, 0.5 * 0.25, 0.8 * 0.25]]))


def test_seesaw_detector_normalised_classifier_objectness_and_reload():
    from lsdet.losses import build_loss
    from lsdet.models.roi_heads import NormalizedLinear

    torch.manual_seed(0)
    loss = build_loss("seesaw", num_classes=6, temperature=10.0)
    model = build_detector(tiny_cfg(), num_classes=6, loss_fn=loss, loss_name="seesaw")
    predictor = model.roi_heads.box_predictor
    assert isinstance(predictor.cls_score, NormalizedLinear)
    assert isinstance(predictor.objectness_score, NormalizedLinear)
    assert model.roi_heads.scoring == "softmax_objectness"
    features = torch.randn(5, tiny_cfg().roi.representation_size)
    logits, _ = predictor(features)
    assert logits.shape == (5, 7)
    # temperature x cosine: |logit - bias| <= temperature
    assert bool(logits.abs().le(10.0 + 1e-5).all())  # biases start at 0
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    model.train()
    losses = model(images, tiny_targets(5))
    sum(losses.values()).backward()
    assert loss.class_counts.sum() == 2 * 64  # 64 RoIs sampled per image
    state = model.state_dict()
    assert "roi_heads.loss_fn.class_counts" in state  # saved with the model (checkpoints)

    # inference builds the detector with a placeholder loss and the checkpoint's weights
    weights = {k: v for k, v in state.items() if not k.startswith("roi_heads.loss_fn.")}
    reloaded = build_detector(
        tiny_cfg(**{"roi.score_thresh": 0.0}),
        num_classes=6,
        loss_fn=torch.nn.Identity(),
        loss_name="seesaw",
    )
    reloaded.load_state_dict(weights)
    assert reloaded.roi_heads.box_predictor.cls_score.temperature.item() == 10.0
    reloaded.eval()
    with torch.no_grad():
        detections = reloaded(images)
    for det in detections:
        assert len(det["labels"]) > 0 and set(det["labels"].tolist()) <= {1, 2, 3, 4, 5}
    scores = reloaded.roi_heads.class_scores(logits.detach())
    assert scores.shape == (5, 6)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(5))  # background + classes
    reloaded.roi_heads.scoring = "softmax"
    with pytest.raises(ValueError, match="softmax_objectness"):
        reloaded.roi_heads.class_scores(logits.detach())
    with pytest.raises(ValueError, match="objectness logit"):
        build_detector(
            tiny_cfg(scoring="softmax_objectness"), num_classes=6, loss_fn=PrimaryCrossEntropy()
        )


def test_eqlv2_detector_scores_with_its_background_sigmoid():
    from lsdet.losses import build_loss

    loss = build_loss("eqlv2", num_classes=4)
    model = build_detector(tiny_cfg(), num_classes=4, loss_fn=loss, loss_name="eqlv2")
    assert model.roi_heads.scoring == "sigmoid_objectness"
    bias = model.roi_heads.box_predictor.cls_score.bias
    assert torch.allclose(bias, torch.full_like(bias, prior_bias(0.01)))
    assert model.roi_heads.box_predictor.objectness_score is None


def test_detector_from_checkpoint_has_plain_bn_no_pretrained_weights_and_keeps_the_config():
    cfg = tiny_cfg(**{"backbone.norm": "sync_bn", "backbone.pretrained": True})
    before = OmegaConf.to_yaml(cfg)
    model = build_detector(cfg, num_classes=4, loss_fn=torch.nn.Identity(), from_checkpoint=True)
    norms = [
        m for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    assert norms and not any(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert OmegaConf.to_yaml(cfg) == before  # the training config is not changed
    # training off CUDA: plain batch norm too; on the training device the config's choice
    cpu = build_detector(
        tiny_cfg(**{"backbone.norm": "sync_bn"}),
        num_classes=4,
        loss_fn=PrimaryCrossEntropy(),
        device=torch.device("cpu"),
    )
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in cpu.modules())
    synced = build_detector(
        tiny_cfg(**{"backbone.norm": "sync_bn"}), num_classes=4, loss_fn=PrimaryCrossEntropy()
    )
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())


def test_the_head_scores_through_its_loss_class():
    from lsdet.losses import build_loss

    descendants = torch.zeros(3, 3, dtype=torch.bool)
    descendants[0, 1] = True
    model = build_detector(
        tiny_cfg(parent_scores="subtree_sum"),
        num_classes=4,
        loss_fn=build_loss("bce", num_classes=4),
        descendants=descendants,
    )
    assert model.roi_heads.head_contract is LOSSES["bce"]
    logits = torch.randn(7, 4)
    expected = LOSSES["bce"].scores(
        logits, scoring="auto", descendants=descendants, parent_scores="subtree_sum"
    )
    torch.testing.assert_close(model.roi_heads.class_scores(logits), expected)
    sigmoid = logits.sigmoid()
    torch.testing.assert_close(expected[:, 1], (sigmoid[:, 1] + sigmoid[:, 2]).clamp(max=1.0))
