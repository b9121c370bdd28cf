"""The loss zoo against values worked out by hand, class weighting, build_loss and the
conf/loss/*.yaml configs."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import compose_train

from lsdet import ops
from lsdet.losses import (
    LOSSES,
    build_loss,
    class_weights,
    effective_number_weights,
    loss_class,
    loss_from_config,
)

CONF_LOSS = Path(__file__).resolve().parents[1] / "conf" / "loss"


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_registry_names():
    assert set(LOSSES) == {
        "softmax",
        "concurrent_softmax",
        "bce",
        "focal",
        "co_bce",
        "dist_ce",
        "seesaw",
        "eqlv2",
        "federated",
    }
    sigmoid = {n for n, cls in LOSSES.items() if cls.sigmoid_classifier}
    assert sigmoid == {"bce", "focal", "co_bce", "eqlv2", "federated"}
    assert {n: cls.default_scoring for n, cls in LOSSES.items()} == {
        "softmax": "softmax",
        "concurrent_softmax": "concurrent_softmax",
        "bce": "sigmoid",
        "focal": "sigmoid",
        "co_bce": "sigmoid",
        "dist_ce": "softmax",
        "seesaw": "softmax_objectness",
        "eqlv2": "sigmoid_objectness",
        "federated": "sigmoid",
    }


def test_softmax_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    multi = torch.nn.functional.one_hot(labels, 3).float()
    weights = torch.tensor([1.0, 2.0, 0.5])
    loss_fn = build_loss("softmax", num_classes=3, class_weights=weights)
    row0 = -math.log(math.exp(2) / (math.exp(1) + math.exp(2) + 1))
    row1 = math.log(3)
    assert loss_fn(logits, multi, labels).item() == pytest.approx((2 * row0 + row1) / 2, rel=1e-6)


def test_concurrent_softmax_by_hand():
    # Positives 1 and 2, negative 0, r_10 = 0.5, all logits 0:
    # D_1 = 0.5 + 1 (s* = 2/3), D_2 = 1 + 1 (s* = 1/2).
    rates = torch.zeros(3, 3)
    rates[1, 0] = 0.5
    logits = torch.zeros(1, 3)
    multi = torch.tensor([[0.0, 1.0, 1.0]])
    labels = torch.tensor([2])
    loss_fn = build_loss("concurrent_softmax", num_classes=3, rates=rates)
    assert loss_fn(logits, multi, labels).item() == pytest.approx(math.log(3), rel=1e-6)
    weighted = build_loss(
        "concurrent_softmax", num_classes=3, rates=rates, class_weights=torch.tensor([1, 2, 1.0])
    )
    expected = 2 * math.log(1.5) + math.log(2)
    assert weighted(logits, multi, labels).item() == pytest.approx(expected, rel=1e-6)


def test_bce_by_hand_ignores_background_column():
    logits = torch.tensor([[5.0, 0.0, math.log(3)]])
    multi = torch.tensor([[0.0, 1.0, 0.0]])
    labels = torch.tensor([1])
    # bce(0, 1) = log 2; bce(log 3, 0) = -log(1 - 3/4) = log 4; column 0 gets no loss.
    loss_fn = build_loss("bce", num_classes=3, class_weights=torch.tensor([1.0, 3.0, 1.0]))
    assert loss_fn(logits, multi, labels).item() == pytest.approx(3 * math.log(8), rel=1e-6)
    background = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    value = loss_fn(*background, torch.tensor([0])).item()
    assert value == pytest.approx(2 * math.log(2), rel=1e-6)


def test_focal_by_hand():
    logits = torch.tensor([[0.0, 0.0, math.log(3)]])
    multi = torch.tensor([[0.0, 1.0, 0.0]])
    labels = torch.tensor([1])
    loss_fn = build_loss("focal", num_classes=3, gamma=2.0, alpha=0.25)
    # positive: p = 1/2, alpha (1 - p)^2 (-log p); negative: p = 3/4, p_t = 1/4.
    positive = 0.25 * 0.5**2 * math.log(2)
    negative = 0.75 * 0.75**2 * math.log(4)
    assert loss_fn(logits, multi, labels).item() == pytest.approx(positive + negative, rel=1e-6)
    # gamma = 0 and alpha off is BCE.
    plain = build_loss("focal", num_classes=3, gamma=0.0, alpha=-1)
    bce = build_loss("bce", num_classes=3)
    assert plain(logits, multi, labels).item() == pytest.approx(
        bce(logits, multi, labels).item(), rel=1e-6
    )


def test_co_bce_ignores_descendants_of_parent_only_labels_and_partners():
    # Hierarchy over classes 0..4 (columns 1..5): 0 is the parent of 1 and 2; 3, 4 are leaves.
    # Leaf 1 co-occurs with leaf 3 (rate 0.5) and with leaf 4 (0.05); the rates matrix also
    # carries hierarchy_rate 1 for the pairs (0, 1) and (0, 2), which must not count.
    ancestors = np.zeros((5, 5), dtype=bool)
    ancestors[1, 0] = ancestors[2, 0] = True
    rates = torch.zeros(6, 6)
    rates[2, 4] = 0.5
    rates[2, 5] = 0.05
    rates[1, 2] = rates[2, 1] = rates[1, 3] = rates[3, 1] = 1.0
    logits = torch.zeros(3, 6)
    multi = torch.tensor(
        [
            [0.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # parent-only box: 1 and 2 may be present
            [0.0, 1.0, 1.0, 0.0, 0.0, 0.0],  # leaf 1 with its expanded parent 0
            [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # leaf 3 alone
        ]
    )
    labels = torch.tensor([1, 2, 4])
    loss_fn = build_loss("co_bce", num_classes=6, rates=rates, ancestors=ancestors)
    ignored = loss_fn.ignore_mask(multi)
    expected = torch.zeros(3, 5, dtype=torch.bool)
    expected[0, 1] = expected[0, 2] = True  # descendants of the parent-only label
    expected[1, 3] = True  # partner of leaf 1 (0.5 >= 0.1); leaf 2, its sibling, stays negative
    assert torch.equal(ignored, expected)
    # every term of a zero logit is log 2: rows keep 3, 4 and 5 of their 5 terms
    value = loss_fn(logits, multi, labels).item()
    assert value == pytest.approx((3 + 4 + 5) * math.log(2) / 3, rel=1e-6)

    descendants_only = build_loss(
        "co_bce", num_classes=6, rates=rates, ancestors=ancestors, cooccur_threshold=None
    )
    assert descendants_only.ignore_mask(multi).sum() == 2
    partners_only = build_loss(
        "co_bce", num_classes=6, rates=rates, ancestors=ancestors, ignore_descendants=False
    )
    only_partner = torch.zeros(3, 5, dtype=torch.bool)
    only_partner[1, 3] = True
    assert torch.equal(partners_only.ignore_mask(multi), only_partner)
    lenient = build_loss(
        "co_bce", num_classes=6, rates=rates, ancestors=ancestors, cooccur_threshold=0.04
    )
    assert bool(lenient.ignore_mask(multi)[1, 4])  # rate 0.05 now counts
    no_rules = build_loss(
        "co_bce",
        num_classes=6,
        ancestors=ancestors,
        ignore_descendants=False,
        cooccur_threshold=None,
    )
    bce = build_loss("bce", num_classes=6)
    torch.testing.assert_close(no_rules(logits, multi, labels), bce(logits, multi, labels))


def test_dist_ce_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    multi = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    labels = torch.tensor([3])
    log_z = math.log(sum(math.exp(v) for v in (0, 1, 2, 3)))
    expected = -(0.5 * (1 - log_z) + 0.5 * (3 - log_z))
    loss_fn = build_loss("dist_ce", num_classes=4)
    assert loss_fn(logits, multi, labels).item() == pytest.approx(expected, rel=1e-6)
    weighted = build_loss("dist_ce", num_classes=4, class_weights=torch.tensor([1, 2, 1, 4.0]))
    expected = -(0.5 * 2 * (1 - log_z) + 0.5 * 4 * (3 - log_z))
    assert weighted(logits, multi, labels).item() == pytest.approx(expected, rel=1e-6)


def test_single_label_softmax_family_agrees():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=gen)
    labels = torch.randint(0, 5, (7,), generator=gen)
    multi = torch.nn.functional.one_hot(labels, 5).float()
    weights = torch.rand(5, generator=gen) + 0.5
    values = [
        build_loss(name, num_classes=5, rates=torch.zeros(5, 5), class_weights=weights)(
            logits, multi, labels
        )
        for name in ("softmax", "concurrent_softmax", "dist_ce")
    ]
    torch.testing.assert_close(values[1], values[0])
    torch.testing.assert_close(values[2], values[0])


def test_class_weights():
    image_counts = np.array([1, 4, 16])
    np.testing.assert_array_equal(class_weights("none", image_counts=image_counts).numpy(), 1.0)
    soft = class_weights("soft_balance", image_counts=image_counts, lam=0.5)
    assert soft.shape == (4,) and soft[0] == 1.0
    np.testing.assert_allclose(
        soft[1:].numpy(), ops.soft_balance_weights(image_counts, 0.5).numpy()
    )
    # beta = 0.5: (1 - b) / (1 - b^n) = 1 for n = 1, 2/3 for n = 2; box-weighted mean
    # (1 x 1 + 2 x 2/3) / 3 = 7/9 -> 9/7, 6/7; the class without boxes keeps 1.
    effective = class_weights(
        "effective_number", image_counts=[9, 9, 9], box_counts=[1, 2, 0], beta=0.5
    )
    np.testing.assert_allclose(effective.numpy(), [1.0, 9 / 7, 6 / 7, 1.0], rtol=1e-6)
    # beta close to 1 is exact (no cancellation) and tends to 1/n: w ~ (1, 0.1), mean over
    # the 11 boxes (1 + 10 x 0.1) / 11 = 2/11.
    close = effective_number_weights([1, 10], beta=1 - 1e-9)
    np.testing.assert_allclose(close.numpy(), np.array([1, 0.1]) * 11 / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        class_weights("inverse", image_counts=image_counts)
    with pytest.raises(ValueError, match="beta"):
        effective_number_weights([1, 2], beta=1.0)


def test_effective_number_weights_keep_the_foreground_share():
    # A long tail: with weights of mean 1 over the classes, the mean foreground box would get
    # a small fraction of the background's weight 1; normalised over boxes it gets 1, like the
    # soft-balance weights.
    rng = np.random.default_rng(0)
    boxes = np.round(5000 * np.arange(1, 201, dtype=float) ** -1.5) + 1
    images = np.maximum(boxes // 2, 1)
    effective = class_weights(
        "effective_number", image_counts=images, box_counts=boxes, beta=0.999
    ).numpy()[1:]
    soft = class_weights("soft_balance", image_counts=images, box_counts=boxes, lam=0.7)
    for weights in (effective, soft.numpy()[1:]):
        assert (boxes * weights).sum() / boxes.sum() == pytest.approx(1.0, rel=1e-6)
    assert effective[0] < 1 < effective[-1]  # the frequent class down, the rare class up
    shuffled = rng.permutation(len(boxes))
    np.testing.assert_allclose(
        effective_number_weights(boxes[shuffled], beta=0.999).numpy(), effective[shuffled]
    )


def test_build_loss_errors():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge", num_classes=3)
    with pytest.raises(ValueError, match="no option"):
        build_loss("softmax", num_classes=3, gamma=2.0)
    with pytest.raises(ValueError, match="rates"):
        build_loss("concurrent_softmax", num_classes=3)
    with pytest.raises(ValueError, match="rates must be"):
        build_loss("concurrent_softmax", num_classes=3, rates=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="ancestors"):
        build_loss("co_bce", num_classes=3, rates=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="no option"):  # the removed, ineffective option
        build_loss("co_bce", num_classes=3, ignore_ancestors=True)
    with pytest.raises(ValueError, match="image counts"):
        build_loss("federated", num_classes=3)
    with pytest.raises(ValueError, match="class_weights"):
        build_loss("bce", num_classes=3, class_weights=torch.ones(2))
    loss_fn = build_loss("softmax", num_classes=3)
    with pytest.raises(ValueError, match="logits must be"):
        loss_fn(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("config", sorted(CONF_LOSS.glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("weighting", ["none", "soft_balance", "effective_number"])
def test_every_config_builds_and_trains(config, weighting):
    # Composed by Hydra (its defaults hold the shared weighting keys), as the trainer gets it.
    cfg = compose_train([f"loss={config.stem}"]).loss
    assert cfg.name == config.stem
    cfg.weighting = weighting
    num_classes = 5
    gen = torch.Generator().manual_seed(1)
    rates = torch.rand(num_classes, num_classes, generator=gen) * 0.3
    rates[0], rates[:, 0] = 0.0, 0.0
    ancestors = np.zeros((4, 4), dtype=bool)
    ancestors[0, 1] = True
    loss_fn = loss_from_config(
        cfg,
        num_classes=num_classes,
        image_counts=[5, 1, 3, 9],
        box_counts=[7, 1, 3, 20],
        rates=rates,
        ancestors=ancestors,
    )
    logits = torch.randn(6, loss_fn.num_logits, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    multi = torch.nn.functional.one_hot(labels, num_classes).float()
    multi[1, 2] = 1.0
    loss = loss_fn(logits, multi, labels)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_each_loss_states_its_head_contract():
    """num_logits, the scorer of model.scoring=auto, and whether the rates are needed."""
    rates = torch.zeros(4, 4)
    ancestors = torch.zeros(3, 3, dtype=torch.bool)
    counts = torch.ones(3)
    logits_columns = {}
    for name, cls in LOSSES.items():
        loss_fn = build_loss(
            name, num_classes=4, rates=rates, ancestors=ancestors, image_counts=counts
        )
        logits_columns[name] = loss_fn.num_logits
        assert cls.scoring_for("auto") == cls.default_scoring
        assert cls.scoring_for("sigmoid") == "sigmoid"  # a test-time override selects it
        assert cls.needs_rates("concurrent_softmax")
        assert cls.needs_rates("auto") == (name in ("concurrent_softmax", "co_bce"))
    assert logits_columns == {name: 5 if name == "seesaw" else 4 for name in LOSSES}
    with pytest.raises(ValueError, match="model.scoring='argmax'"):
        LOSSES["softmax"].scoring_for("argmax")
    with pytest.raises(ValueError, match="unknown loss"):
        loss_class("hinge")
    logits = torch.randn(5, 4)
    torch.testing.assert_close(LOSSES["dist_ce"].scores(logits), logits.softmax(dim=1))
    torch.testing.assert_close(LOSSES["focal"].scores(logits), logits.sigmoid())
    torch.testing.assert_close(
        LOSSES["concurrent_softmax"].scores(logits, rates=rates), logits.softmax(dim=1)
    )
