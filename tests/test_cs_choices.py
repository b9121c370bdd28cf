"""The choices of lsdet's concurrent softmax that the paper (Peng et al., CVPR 2020, section
3.1, eq. 3 and 5) leaves open, each a setting: ``loss.positive_targets`` (expanded |
annotated), ``loss.positive_reduction`` (sum | mean), ``rates.hierarchy_rate``,
``rates.prior_count`` and the parent scoring at test.

The "m = 0" tests pin, term by term, how concurrent softmax differs from softmax on a batch
without multi-label objects (every object has one leaf label, expanded to its ancestors as the
dataset does), on a small hierarchy: 2 families > 2 shapes each > 2 leaves each.
Columns: 0 background, 1-2 families, 3-6 shapes, 7-14 leaves.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_helpers import compose_train

from lsdet import ops
from lsdet.data.hierarchy import Hierarchy
from lsdet.data.rates import concurrent_rates_from_boxes
from lsdet.losses import build_loss, loss_from_config
from lsdet.losses.scoring import raise_parents_to_descendants, score_logits, sum_subtrees

CONF_LOSS = Path(__file__).resolve().parents[1] / "conf" / "loss"

MIDS = ["A", "B", "A1", "A2", "B1", "B2", "a1x", "a1y", "a2x", "a2y", "b1x", "b1y", "b2x", "b2y"]
CHILDREN = {
    "root": ["A", "B"],
    "A": ["A1", "A2"],
    "B": ["B1", "B2"],
    "A1": ["a1x", "a1y"],
    "A2": ["a2x", "a2y"],
    "B1": ["b1x", "b1y"],
    "B2": ["b2x", "b2y"],
}
HIERARCHY = Hierarchy(MIDS, CHILDREN, root="root")
NUM_COLUMNS = len(MIDS) + 1


def col(mid: str) -> int:
    return HIERARCHY.index(mid) + 1


def expanded_rows(leaf_mids: list[str]) -> torch.Tensor:
    """Multi-hot [R, C+1] of one-leaf objects expanded to their ancestors as the dataset does
    (``Hierarchy.expand_multihot``); a None entry is a background RoI."""
    rows = torch.zeros(len(leaf_mids), NUM_COLUMNS, dtype=torch.float64)
    for r, mid in enumerate(leaf_mids):
        if mid is None:
            rows[r, 0] = 1.0
            continue
        annotated = np.zeros((1, len(MIDS)), dtype=bool)
        annotated[0, HIERARCHY.index(mid)] = True
        rows[r, 1:] = torch.from_numpy(HIERARCHY.expand_multihot(annotated).astype(np.float64))
    return rows


def m0_rates(hierarchy_rate: float, prior_count: float) -> torch.Tensor:
    """lsdet's rate estimate on boxes of which no two coincide (no multi-label object)."""
    leaves = [k for k, mid in enumerate(MIDS) if HIERARCHY.is_leaf(mid)]
    counts = [40, 20, 10, 6, 5, 3, 2, 1]  # a long tail over the leaves
    class_idx = np.repeat(leaves, counts)
    images = np.arange(len(class_idx))  # one box per image
    boxes = np.tile([0.1, 0.1, 0.5, 0.5], (len(class_idx), 1))
    rates = concurrent_rates_from_boxes(
        images,
        class_idx,
        boxes,
        HIERARCHY,
        hierarchy_rate=hierarchy_rate,
        prior_count=prior_count,
        progress=False,
    )
    return torch.as_tensor(rates, dtype=torch.float64)


def cs_loss(logits, multilabels, rates, **options):
    ancestors = torch.as_tensor(HIERARCHY.ancestors)
    loss_fn = build_loss(
        "concurrent_softmax", num_classes=NUM_COLUMNS, rates=rates, ancestors=ancestors, **options
    )
    labels = multilabels.argmax(dim=1)  # unused by the loss
    return loss_fn(logits, multilabels, labels)


def cs_row_losses(logits, multilabels, rates, **options):
    """The loss of each RoI alone [R] (the loss averages over the RoIs it is given)."""
    rows = [
        cs_loss(logits[r : r + 1], multilabels[r : r + 1], rates, **options)
        for r in range(len(logits))
    ]
    return torch.stack(rows)


def ce_without(logits_row: torch.Tensor, target: int, dropped: list[int]) -> torch.Tensor:
    """Softmax cross-entropy of one row with the ``dropped`` columns taken out."""
    kept = [j for j in range(len(logits_row)) if j not in dropped]
    return F.cross_entropy(logits_row[kept][None], torch.tensor([kept.index(target)]))


# ------------------------------------------------------------------------------------------
# Identities every variant keeps
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("positive_targets", ["expanded", "annotated"])
@pytest.mark.parametrize("positive_reduction", ["sum", "mean"])
def test_one_label_per_box_and_zero_rates_is_softmax(impl, positive_targets, positive_reduction):
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 7, 9, 0, 14, 3, 1, 12])  # leaves, a shape, a family, background
    logits = (torch.randn(len(labels), NUM_COLUMNS, generator=gen) * 3).requires_grad_(True)
    multilabels = F.one_hot(labels, NUM_COLUMNS).float()
    loss_fn = build_loss(
        "concurrent_softmax",
        num_classes=NUM_COLUMNS,
        rates=torch.zeros(NUM_COLUMNS, NUM_COLUMNS),
        # A flat label set: with a hierarchy, "annotated" leaves a label's ancestors out of the
        # denominator (see test_m0_annotated_ignoring_makes_hierarchy_rate_irrelevant...).
        ancestors=torch.zeros(NUM_COLUMNS - 1, NUM_COLUMNS - 1, dtype=torch.bool),
        impl=impl,
        positive_targets=positive_targets,
        positive_reduction=positive_reduction,
    )
    loss = loss_fn(logits, multilabels, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = F.cross_entropy(logits, labels)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_mean_equals_sum_with_one_positive(impl):
    gen = torch.Generator().manual_seed(1)
    n, c = 9, 11
    logits = torch.randn(n, c, generator=gen) * 2
    labels = torch.randint(0, c, (n,), generator=gen)
    targets = F.one_hot(labels, c).bool()
    rates = torch.rand(c, c, generator=gen) * (torch.rand(c, c, generator=gen) < 0.5)
    weights = torch.rand(c, generator=gen) + 0.5
    results = []
    for positive_reduction in ("sum", "mean"):
        z = logits.clone().requires_grad_(True)
        loss = ops.concurrent_softmax_loss(
            z, targets, rates, weights, impl=impl, positive_reduction=positive_reduction
        )
        results.append((loss, torch.autograd.grad(loss, z)[0]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# positive_targets=annotated: which columns are positive, which ignored
# ------------------------------------------------------------------------------------------


def test_annotated_targets_are_the_most_specific_labels_and_their_ancestors_are_ignored():
    loss_fn = build_loss(
        "concurrent_softmax",
        num_classes=NUM_COLUMNS,
        rates=torch.zeros(NUM_COLUMNS, NUM_COLUMNS),
        ancestors=torch.as_tensor(HIERARCHY.ancestors),
        positive_targets="annotated",
    )
    multilabels = expanded_rows(["a1x", None, "b2y"]).float()
    # A parent-only object (shape A2, expanded to family A) and an object with two leaves of
    # different families.
    multilabels = torch.cat([multilabels, torch.zeros(2, NUM_COLUMNS)])
    multilabels[3, [col("A2"), col("A")]] = 1
    multilabels[4, [col("a1y"), col("A1"), col("A"), col("b1x"), col("B1"), col("B")]] = 1
    targets, ignored = loss_fn.targets_and_ignored(multilabels)
    assert targets[0].nonzero().flatten().tolist() == [col("a1x")]
    assert ignored[0].nonzero().flatten().tolist() == [col("A"), col("A1")]
    assert targets[1].nonzero().flatten().tolist() == [0] and not ignored[1].any()
    assert targets[2].nonzero().flatten().tolist() == [col("b2y")]
    assert targets[3].nonzero().flatten().tolist() == [col("A2")]
    # The shape's leaves stay negatives (rates.hierarchy_rate says how much they suppress it).
    assert ignored[3].nonzero().flatten().tolist() == [col("A")]
    assert targets[4].nonzero().flatten().tolist() == [col("a1y"), col("b1x")]
    assert set(ignored[4].nonzero().flatten().tolist()) == {
        col("A"),
        col("B"),
        col("A1"),
        col("B1"),
    }
    # The documented limit: a parent annotated on the same object as its leaf looks like an
    # expanded one after the dataset's expansion, and is ignored too.
    both = expanded_rows(["a1x"]).float()
    targets, ignored = loss_fn.targets_and_ignored(both)
    assert targets[0].nonzero().flatten().tolist() == [col("a1x")]


def test_settings_are_checked_and_documented():
    rates = torch.zeros(NUM_COLUMNS, NUM_COLUMNS)
    with pytest.raises(ValueError, match="loss.positive_targets='leaves'"):
        build_loss(
            "concurrent_softmax", num_classes=3, rates=torch.zeros(3, 3), positive_targets="leaves"
        )
    with pytest.raises(ValueError, match="loss.positive_reduction='max'"):
        build_loss(
            "concurrent_softmax", num_classes=3, rates=torch.zeros(3, 3), positive_reduction="max"
        )
    with pytest.raises(ValueError, match="annotated needs the class hierarchy"):
        build_loss(
            "concurrent_softmax", num_classes=NUM_COLUMNS, rates=rates, positive_targets="annotated"
        )
    cfg = compose_train(["loss=concurrent_softmax"]).loss
    # The defaults are lsdet's behaviour before these settings existed.
    assert cfg.positive_targets == "expanded" and cfg.positive_reduction == "sum"
    loss_fn = loss_from_config(
        cfg, num_classes=NUM_COLUMNS, rates=rates, ancestors=HIERARCHY.ancestors
    )
    assert (loss_fn.positive_targets, loss_fn.positive_reduction) == ("expanded", "sum")
    # Nor do the default weights change anything: weighting=none gives every class weight 1.
    assert cfg.weighting == "none" and torch.all(loss_fn.class_weights == 1)
    cfg.positive_targets, cfg.positive_reduction = "annotated", "mean"
    loss_fn = loss_from_config(
        cfg, num_classes=NUM_COLUMNS, rates=rates, ancestors=HIERARCHY.ancestors
    )
    assert (loss_fn.positive_targets, loss_fn.positive_reduction) == ("annotated", "mean")


# ------------------------------------------------------------------------------------------
# m = 0: no multi-label object. How concurrent softmax differs from softmax, term by term.
# ------------------------------------------------------------------------------------------


def test_m0_rates_are_the_hierarchy_pairs_only_whatever_the_prior_count():
    for hierarchy_rate in (1.0, 0.0):
        shrunk = m0_rates(hierarchy_rate, prior_count=8)
        plain = m0_rates(hierarchy_rate, prior_count=0)
        torch.testing.assert_close(shrunk, plain, rtol=0, atol=0)  # prior_count: no effect
        related = torch.zeros(NUM_COLUMNS, NUM_COLUMNS, dtype=torch.bool)
        related[1:, 1:] = torch.as_tensor(HIERARCHY.ancestors | HIERARCHY.descendants)
        assert torch.all(shrunk[related] == hierarchy_rate)
        assert torch.all(shrunk[~related] == 0)


def test_m0_softmax_is_concurrent_softmax_with_the_leaf_alone_positive_and_ancestors_negative():
    # Softmax on the primary label (the leaf) is eq. 3 with K = {leaf}, the ancestors as
    # negatives (y_j = 0) and R = 0 (or hierarchy_rate = 0, the paper's literal text).
    gen = torch.Generator().manual_seed(2)
    leaves = [None, "a1x", "b2y", None, "a2x"]
    logits = torch.randn(len(leaves), NUM_COLUMNS, generator=gen, dtype=torch.float64)
    multilabels = expanded_rows(leaves)
    labels = torch.tensor([0 if m is None else col(m) for m in leaves])
    leaf_only = F.one_hot(labels, NUM_COLUMNS).double()
    expected = F.cross_entropy(logits, labels, reduction="none")
    for rates in (torch.zeros(NUM_COLUMNS, NUM_COLUMNS), m0_rates(0.0, 8)):
        got = cs_row_losses(logits, leaf_only, rates)
        torch.testing.assert_close(got, expected)
    # What lsdet's default (expanded, hierarchy_rate 1) adds to that, term by term.
    rates = m0_rates(1.0, 8)
    got = cs_row_losses(logits, multilabels, rates)
    for r, mid in enumerate(leaves):
        if mid is None:  # a background RoI: one positive, nothing in the hierarchy
            torch.testing.assert_close(got[r], expected[r])
            continue
        leaf = col(mid)
        positives = multilabels[r].nonzero().flatten().tolist()
        ancestors = [k for k in positives if k != leaf]
        # (1) the leaf's term: softmax with its ancestors taken out of the denominator.
        terms = [ce_without(logits[r], leaf, ancestors)]
        # (2) one more term per ancestor: softmax of the ancestor against the classes outside
        # its subtree and its own ancestors (the other positives and the r = 1 pairs drop out).
        for a in ancestors:
            subtree = [k + 1 for k in np.flatnonzero(HIERARCHY.descendants[a - 1])]
            terms.append(ce_without(logits[r], a, [k for k in positives if k != a] + subtree))
        assert len(terms) == 3  # leaf, shape, family
        torch.testing.assert_close(got[r], torch.stack(terms).sum())


M0_PUSH_ZERO_LOGITS = {
    # d loss / d z_k at all-zero logits for one box of leaf a1x, k = a leaf of the other
    # family (b2y), a sibling (a1y), a cousin (a2x) and the background, worked out by hand:
    # the leaf's denominator has the 12 non-positive columns + itself = 13, the shape A1's
    # 11 + 1 = 12 (its other leaf a1y leaves: r = 1), the family A's 8 + 1 = 9.
    "softmax": {"b2y": 1 / 15, "a1y": 1 / 15, "a2x": 1 / 15, "background": 1 / 15},
    "expanded sum": {
        "b2y": 1 / 13 + 1 / 12 + 1 / 9,
        "a1y": 1 / 13,
        "a2x": 1 / 13 + 1 / 12,
        "background": 1 / 13 + 1 / 12 + 1 / 9,
    },
    "expanded mean": {
        "b2y": (1 / 13 + 1 / 12 + 1 / 9) / 3,
        "a1y": 1 / 13 / 3,
        "a2x": (1 / 13 + 1 / 12) / 3,
        "background": (1 / 13 + 1 / 12 + 1 / 9) / 3,
    },
    "annotated sum": {"b2y": 1 / 13, "a1y": 1 / 13, "a2x": 1 / 13, "background": 1 / 13},
}


@pytest.mark.parametrize("variant", sorted(M0_PUSH_ZERO_LOGITS))
def test_m0_how_hard_one_leaf_box_pushes_each_negative(variant):
    multilabels = expanded_rows(["a1x"])
    logits = torch.zeros(1, NUM_COLUMNS, dtype=torch.float64, requires_grad=True)
    if variant == "softmax":
        loss = F.cross_entropy(logits, torch.tensor([col("a1x")]))
    else:
        positive_targets, positive_reduction = variant.split()
        loss = cs_loss(
            logits,
            multilabels,
            m0_rates(1.0, 8),
            positive_targets=positive_targets,
            positive_reduction=positive_reduction,
        )
    (grad,) = torch.autograd.grad(loss, logits)
    columns = {"b2y": col("b2y"), "a1y": col("a1y"), "a2x": col("a2x"), "background": 0}
    for name, expected in M0_PUSH_ZERO_LOGITS[variant].items():
        assert grad[0, columns[name]].item() == pytest.approx(expected, rel=1e-12), name
    # The ancestors: pushed down by softmax, pulled up as positives by expanded, left alone by
    # annotated.
    for ancestor in ("A1", "A"):
        value = grad[0, col(ancestor)].item()
        if variant == "softmax":
            assert value == pytest.approx(1 / 15)
        elif variant.startswith("expanded"):
            assert value < 0
        else:
            assert value == 0


def test_m0_push_on_other_families_is_about_depth_times_softmax_at_zero_logits():
    # The figure the report quotes: 4.07x softmax's push on the other family's classes and
    # the background from one leaf box (1.36x with the positives' mean, 1.15x annotated).
    push = M0_PUSH_ZERO_LOGITS
    ratio = push["expanded sum"]["b2y"] / push["softmax"]["b2y"]
    assert ratio == pytest.approx(4.0705, abs=1e-4)
    assert push["expanded mean"]["b2y"] / push["softmax"]["b2y"] == pytest.approx(1.3568, abs=1e-4)
    assert push["annotated sum"]["b2y"] / push["softmax"]["b2y"] == pytest.approx(15 / 13)
    # A sibling leaf (the confused pairs of the benchmark are siblings) is pushed by the
    # leaf's term alone: about as hard as softmax with the sum (15/13x), 0.38x with the mean.
    assert push["expanded sum"]["a1y"] / push["softmax"]["a1y"] == pytest.approx(15 / 13)
    assert push["expanded mean"]["a1y"] / push["softmax"]["a1y"] == pytest.approx(15 / 39)


def test_m0_annotated_ignoring_makes_hierarchy_rate_irrelevant_for_one_leaf_boxes():
    gen = torch.Generator().manual_seed(3)
    leaves = ["a1x", "b1y", None, "a2y"]
    logits = torch.randn(len(leaves), NUM_COLUMNS, generator=gen, dtype=torch.float64)
    multilabels = expanded_rows(leaves)
    one = cs_row_losses(logits, multilabels, m0_rates(1.0, 8), positive_targets="annotated")
    zero = cs_row_losses(logits, multilabels, m0_rates(0.0, 8), positive_targets="annotated")
    torch.testing.assert_close(one, zero)
    # ... and each row is softmax without the ancestors' columns.
    for r, mid in enumerate(leaves):
        if mid is not None:
            ancestors = [k for k in multilabels[r].nonzero().flatten().tolist() if k != col(mid)]
            torch.testing.assert_close(one[r], ce_without(logits[r], col(mid), ancestors))


def test_m0_expanded_hierarchy_rate_zero_lets_the_parents_push_their_own_leaves():
    # With hierarchy_rate 0, the shape's and the family's terms also push the box's sibling
    # leaves (with 1 they do not): at zero logits all 12 non-positive columns compete in each
    # of the three terms (denominator 13), so a1y gets 3/13 instead of 1/13.
    logits = torch.zeros(1, NUM_COLUMNS, dtype=torch.float64, requires_grad=True)
    loss = cs_loss(logits, expanded_rows(["a1x"]), m0_rates(0.0, 8))
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[0, col("a1y")].item() == pytest.approx(3 / 13, rel=1e-12)
    assert grad[0, col("b2y")].item() == pytest.approx(3 / 13, rel=1e-12)


# ------------------------------------------------------------------------------------------
# Eq. 5 at test, with each parent scoring
# ------------------------------------------------------------------------------------------


def test_eq5_scores_and_each_parent_scoring():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, NUM_COLUMNS, generator=gen)
    rates = m0_rates(1.0, 8).float()
    scores = score_logits(logits, "concurrent_softmax", rates)
    # A leaf's eq. 5 denominator leaves out its ancestors (r = 1), a parent's its descendants.
    moved = logits.clone()
    moved[:, [col("A1"), col("A")]] += 5.0
    torch.testing.assert_close(
        score_logits(moved, "concurrent_softmax", rates)[:, col("a1x")], scores[:, col("a1x")]
    )
    moved = logits.clone()
    moved[:, [col("a1x"), col("a1y")]] += 5.0
    torch.testing.assert_close(
        score_logits(moved, "concurrent_softmax", rates)[:, col("A1")], scores[:, col("A1")]
    )
    descendants = torch.as_tensor(HIERARCHY.descendants)
    raised = raise_parents_to_descendants(scores, descendants)
    summed = sum_subtrees(scores, descendants)
    below_a1 = [col("a1x"), col("a1y")]
    a1 = col("A1")
    torch.testing.assert_close(
        raised[:, a1], torch.maximum(scores[:, a1], scores[:, below_a1].amax(1))
    )
    torch.testing.assert_close(
        summed[:, a1], (scores[:, a1] + scores[:, below_a1].sum(1)).clamp(max=1.0)
    )
    leaves = [col(m) for m in MIDS if HIERARCHY.is_leaf(m)]
    torch.testing.assert_close(raised[:, leaves], scores[:, leaves])
    torch.testing.assert_close(summed[:, leaves], scores[:, leaves])


def fit_biases(row_losses, row_shares: torch.Tensor) -> torch.Tensor:
    """The per-class logits b (the same for every box) that minimise the expected loss: what a
    classifier learns from the class frequencies alone."""
    biases = torch.zeros(NUM_COLUMNS, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [biases],
        max_iter=300,
        tolerance_grad=1e-10,
        tolerance_change=1e-13,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = (row_losses(biases.expand(len(row_shares), NUM_COLUMNS)) * row_shares).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return biases.detach()


def test_m0_class_priors_learned_by_a_bias_only_classifier():
    # One row per kind of RoI: background (75% of the RoIs, as model.roi.positive_fraction
    # 0.25) and each leaf with a long-tailed share of the rest. Softmax learns the class
    # frequencies; eq. 5 of the biases concurrent softmax learns shows what its loss does to
    # the scores before any feature helps.
    leaves = ["a1x", "b1x", "a2x", "b2y", "a1y", "b1y", "b2x", "a2y"]  # most frequent first
    shares = torch.tensor([(i + 1) ** -1.88 for i in range(len(leaves))], dtype=torch.float64)
    row_shares = torch.cat([torch.tensor([0.75]), 0.25 * shares / shares.sum()])
    multilabels = expanded_rows([None, *leaves])
    labels = multilabels.argmax(dim=1)
    labels[1:] = torch.tensor([col(m) for m in leaves])
    # Softmax's optimum over constant logits is the class frequencies (its gradient there is
    # 0), so its scores need no fit: softmax[labels] = row_shares.
    softmax = torch.zeros(NUM_COLUMNS, dtype=torch.float64)
    softmax[labels] = row_shares
    logits = torch.log(softmax.clamp(min=1e-300)).requires_grad_(True)
    expected_ce = (
        F.cross_entropy(logits.expand(len(labels), -1), labels, reduction="none") * row_shares
    ).sum()
    (grad,) = torch.autograd.grad(expected_ce, logits)
    assert grad.abs().max() < 1e-12

    def eq5_scores(rates, **options):
        loss_fn = build_loss(
            "concurrent_softmax",
            num_classes=NUM_COLUMNS,
            rates=rates,
            ancestors=torch.as_tensor(HIERARCHY.ancestors),
            **options,
        )
        targets, ignored = loss_fn.targets_and_ignored(multilabels)

        def row_losses(z):
            return ops.concurrent_softmax_loss(
                z,
                targets,
                rates,
                None,
                "none",
                impl="torch",
                ignore=ignored,
                positive_reduction=loss_fn.positive_reduction,
            )

        return ops.concurrent_softmax(fit_biases(row_losses, row_shares)[None], rates)[0]

    rates = m0_rates(1.0, 8)
    leaf_columns = [col(m) for m in leaves]
    # annotated: the leaves' and the background's scores are softmax's.
    annotated = eq5_scores(rates, positive_targets="annotated")
    torch.testing.assert_close(annotated[leaf_columns], softmax[leaf_columns], rtol=1e-4, atol=0)
    torch.testing.assert_close(annotated[0], softmax[0], rtol=1e-4, atol=0)
    # expanded (lsdet's default): three terms per leaf box push the background down (0.43
    # instead of 0.75), and a leaf's score follows its subtree's share, not its own: a rare
    # leaf whose sibling is frequent scores above its frequency, one in a rare subtree below.
    expanded = eq5_scores(rates)
    assert expanded[0].item() == pytest.approx(0.433, abs=0.002)
    ratio = expanded[leaf_columns] / softmax[leaf_columns]
    by_leaf = dict(zip(leaves, ratio.tolist(), strict=True))
    assert by_leaf["a1x"] == pytest.approx(by_leaf["a1y"], rel=1e-3)  # one shape: one ratio
    assert by_leaf["a1y"] > 1.1 and by_leaf["b2x"] < 0.7  # both in the rarest half
    # mean: the background near softmax's (0.73), every leaf about a third of softmax's score.
    mean = eq5_scores(rates, positive_reduction="mean")
    assert mean[0].item() == pytest.approx(0.728, abs=0.002)
    assert torch.all((mean[leaf_columns] / softmax[leaf_columns] - 0.38).abs() < 0.06)
