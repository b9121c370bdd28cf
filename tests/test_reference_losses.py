"""The long-tail and baseline losses against float64 transcriptions of their public reference
implementations, on the same inputs over several steps of accumulated statistics.

Each ``*_reference`` function below restates, in its own words, what the named file of the
named repository computes, in that repository's layout: the background is the LAST column /
label there, while lsdet puts it in column 0 (label 0). ``to_reference_layout`` moves the
column and remaps the labels. Where lsdet deliberately differs, a test pins the difference
and the loss's docstring says why.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsdet.losses import build_loss
from lsdet.losses.scoring import score_logits
from lsdet.models.roi_heads import MultiLabelBoxPredictor

# Loss values agree to this relative tolerance, gradients to it plus a small absolute floor
# (lsdet computes in float32, the references here in float64).
RTOL = 1e-5
ATOL = 1e-7


def one_hot_rows(labels, num_classes):
    return F.one_hot(torch.as_tensor(labels), num_classes).float()


def to_reference_layout(logits, labels, num_foreground):
    """lsdet logits [R, C+1] (column 0 background) and labels [R] (0 background) as the
    reference layout: columns (1..C, 0) and labels (label - 1, background -> C)."""
    order = [*range(1, num_foreground + 1), 0]
    reference_labels = torch.where(labels == 0, num_foreground, labels - 1)
    return logits[:, order], reference_labels


def assert_grad_close(actual, expected):
    np.testing.assert_allclose(
        actual.detach().double().numpy(), expected.detach().numpy(), rtol=RTOL, atol=ATOL
    )


# --- Seesaw: open-mmlab/mmdetection mmdet/models/losses/seesaw_loss.py -----------------------
# (with mmdet/models/utils/normed_predictor.py ``NormedLinear``, temperature 20)


def mmdet_normed_linear(x, weight, bias, temperature=20.0, eps=1e-6):
    """NormedLinear: rows of x and of the weight divided by (their norm + eps), the product
    times the temperature, plus the bias."""
    x_unit = x / (x.norm(dim=1, keepdim=True) + eps)
    w_unit = weight / (weight.norm(dim=1, keepdim=True) + eps)
    return temperature * x_unit @ w_unit.T + bias


def mmdet_seesaw_reference(cls_score, labels, cum_samples, p=0.8, q=2.0, eps=1e-2):
    """SeesawLoss.forward with label weights 1 and avg_factor = the number of RoIs (what
    mmdetection's bbox head passes). cls_score [R, C+2]: the C classes, then the objectness
    pair (positive, negative); labels in 0..C, C = background. cum_samples [C+1] is updated in
    place with this batch's labels BEFORE the loss is computed. Returns the loss (objectness +
    classes, each summed and divided by R)."""
    num_rois, width = cls_score.shape
    num_classes = width - 2
    cum_samples += torch.bincount(labels, minlength=num_classes + 1).double()
    classes, objectness = cls_score[:, :num_classes], cls_score[:, num_classes:]
    objectness_target = (labels == num_classes).long()  # 0 = object, 1 = background
    loss_objectness = F.cross_entropy(objectness, objectness_target, reduction="sum")

    positive = labels < num_classes
    scores, targets = classes[positive], labels[positive]
    counts = cum_samples[:num_classes]
    one_hot = F.one_hot(targets, num_classes).double()
    factors = torch.ones_like(scores)
    # mitigation: (N_j / N_i)^p where N_j < N_i, counts clamped at 1
    sample_ratio = counts[None, :].clamp(min=1) / counts[:, None].clamp(min=1)
    below = (sample_ratio < 1.0).double()
    factors = factors * (sample_ratio.pow(p) * below + (1 - below))[targets]
    # compensation: (s_j / s_i)^q where s_j > s_i, s = softmax of the detached scores
    probs = F.softmax(scores.detach(), dim=1)
    own = probs[torch.arange(len(targets)), targets].clamp(min=eps)
    score_ratio = probs / own[:, None]
    above = (score_ratio > 1.0).double()
    factors = factors * (score_ratio.pow(q) * above + (1 - above))
    shifted = scores + factors.log() * (1 - one_hot)
    loss_classes = F.cross_entropy(shifted, targets, reduction="sum")
    return (loss_objectness + loss_classes) / num_rois


def mmdet_seesaw_scores(cls_score):
    """SeesawLoss.get_activation: softmax over the classes times the objectness pair's
    positive probability; the pair's negative probability as the last column."""
    num_classes = cls_score.shape[1] - 2
    classes = F.softmax(cls_score[:, :num_classes], dim=1)
    objectness = F.softmax(cls_score[:, num_classes:], dim=1)
    return torch.cat([classes * objectness[:, :1], objectness[:, 1:]], dim=1)


def lsdet_to_mmdet_weights(predictor):
    """The rows of lsdet's two normalised layers in mmdetection's order: classes 1..C, the
    foreground objectness (lsdet's extra row), the background objectness (lsdet's row 0)."""
    cls, obj = predictor.cls_score, predictor.objectness_score
    weight = torch.cat([cls.weight[1:], obj.weight, cls.weight[:1]]).detach().double()
    bias = torch.cat([cls.bias[1:], obj.bias, cls.bias[:1]]).detach().double()
    return weight.requires_grad_(), bias.requires_grad_()


def test_seesaw_matches_mmdetection_over_steps():
    num_fg, dim, rois = 6, 64, 24
    gen = torch.Generator().manual_seed(0)
    loss_fn = build_loss("seesaw", num_classes=num_fg + 1)
    torch.manual_seed(0)
    predictor = MultiLabelBoxPredictor(
        dim, num_fg + 1, temperature=loss_fn.classifier_temperature, objectness_logit=True
    )
    with torch.no_grad():  # trained-like weights: norms well above the eps of either layer
        predictor.cls_score.weight.normal_(generator=gen)
        predictor.objectness_score.weight.normal_(generator=gen)
        predictor.cls_score.bias.normal_(0.0, 0.1, generator=gen)
        predictor.objectness_score.bias.normal_(0.0, 0.1, generator=gen)
    weight, bias = lsdet_to_mmdet_weights(predictor)
    cum_samples = torch.zeros(num_fg + 1, dtype=torch.float64)
    # a long tail: class 1 frequent, class 6 rare, many background RoIs
    label_probs = torch.tensor([10.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    lr = 0.5
    for _ in range(6):
        labels = torch.multinomial(label_probs, rois, replacement=True, generator=gen)
        features = torch.randn(rois, dim, generator=gen) * 3
        ref_features = features.double().requires_grad_()
        features.requires_grad_()

        logits, _ = predictor(features)
        value = loss_fn(logits, one_hot_rows(labels, num_fg + 1), labels)
        predictor.zero_grad()
        value.backward()

        ref_logits = mmdet_normed_linear(ref_features, weight, bias)
        ref_labels = torch.where(labels == 0, num_fg, labels - 1)
        reference = mmdet_seesaw_reference(ref_logits, ref_labels, cum_samples)
        weight.grad = bias.grad = None
        reference.backward()

        assert value.item() == pytest.approx(reference.item(), rel=RTOL)
        assert_grad_close(features.grad, ref_features.grad)
        ref_weight_grad, ref_bias_grad = weight.grad, bias.grad
        lsdet_weight_grad = torch.cat(
            [
                predictor.cls_score.weight.grad[1:],
                predictor.objectness_score.weight.grad,
                predictor.cls_score.weight.grad[:1],
            ]
        )
        assert_grad_close(lsdet_weight_grad, ref_weight_grad)
        lsdet_bias_grad = torch.cat(
            [
                predictor.cls_score.bias.grad[1:],
                predictor.objectness_score.bias.grad,
                predictor.cls_score.bias.grad[:1],
            ]
        )
        assert_grad_close(lsdet_bias_grad, ref_bias_grad)
        # the accumulated counts (mmdetection: background last)
        np.testing.assert_array_equal(
            loss_fn.class_counts.numpy(), torch.cat([cum_samples[-1:], cum_samples[:-1]])
        )
        # scores at inference
        scores = score_logits(logits.detach(), "softmax_objectness")
        ref_scores = mmdet_seesaw_scores(ref_logits.detach())
        np.testing.assert_allclose(
            scores[:, [*range(1, num_fg + 1), 0]].double().numpy(),
            ref_scores.numpy(),
            rtol=RTOL,
            atol=ATOL,
        )
        # one SGD step on both, so the next step sees new weights and larger counts
        with torch.no_grad():
            for layer in (predictor.cls_score, predictor.objectness_score):
                layer.weight -= lr * layer.weight.grad
                layer.bias -= lr * layer.bias.grad
            weight -= lr * ref_weight_grad
            bias -= lr * ref_bias_grad
    assert cum_samples[:-1].min() >= 1 and cum_samples.max() > 5 * cum_samples[:-1].min()


def test_normalised_classifier_eps_convention_is_pinned():
    # lsdet's NormalizedLinear divides by max(norm, 1e-6) (F.normalize); mmdetection's
    # NormedLinear by (norm + 1e-6). For a row of norm n the cosines differ by the factor
    # (n + 1e-6) / n: 1 + 3e-6 at the initial norm of a 1024-wide row of std 0.01 (0.32),
    # negligible for trained weights. Pinned so that a change of either side is seen.
    predictor = MultiLabelBoxPredictor(4, 2, temperature=20.0)
    row = torch.tensor([[1e-3, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    with torch.no_grad():
        predictor.cls_score.weight.copy_(row)
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        logits, _ = predictor(x.float())
    reference = mmdet_normed_linear(x, row.double(), torch.zeros(2, dtype=torch.float64))
    ratio = logits.double() / reference
    norms = torch.tensor([1e-3, 2.0], dtype=torch.float64)
    expected = (norms + 1e-6) / norms * (math.sqrt(2) + 1e-6) / math.sqrt(2)
    np.testing.assert_allclose(ratio[0].numpy(), expected.numpy(), rtol=1e-6)


# --- EQLv2: tztztztztz/eqlv2 mmdet/models/losses/eqlv2.py -------------------------------------


class EQLv2Reference:
    """The authors' EQLv2 in float64. Layout: cls_score [R, C+1], column C the objectness
    (background) sigmoid; targets one-hot of the label (C = background). State: accumulated
    positive and negative gradient magnitudes per class and their ratio, which starts at 100
    ("so that the weight for pos gradients and neg gradients are 1")."""

    def __init__(self, num_foreground, gamma=12.0, mu=0.8, alpha=4.0):
        self.gamma, self.mu, self.alpha = gamma, mu, alpha
        self.pos_grad = torch.zeros(num_foreground, dtype=torch.float64)
        self.neg_grad = torch.zeros(num_foreground, dtype=torch.float64)
        self.pos_neg = torch.full((num_foreground,), 100.0, dtype=torch.float64)

    def weights(self):
        """(positive, negative) weights per column; the objectness column's are 1."""
        negative = 1 / (1 + torch.exp(-self.gamma * (self.pos_neg - self.mu)))
        negative = torch.cat([negative, torch.ones(1, dtype=torch.float64)])
        return 1 + self.alpha * (1 - negative), negative

    def __call__(self, cls_score, labels):
        rows, width = cls_score.shape
        target = F.one_hot(labels, width).double()
        positive_w, negative_w = self.weights()
        weight = positive_w * target + negative_w * (1 - target)
        bce = F.binary_cross_entropy_with_logits(cls_score, target, reduction="none")
        loss = (bce * weight).sum() / rows
        # the magnitude of d bce / d z = |p - y|, re-weighted; objectness not collected
        magnitude = (torch.sigmoid(cls_score.detach()) - target).abs()
        self.pos_grad += (magnitude * target * weight).sum(dim=0)[:-1]
        self.neg_grad += (magnitude * (1 - target) * weight).sum(dim=0)[:-1]
        self.pos_neg = self.pos_grad / (self.neg_grad + 1e-10)
        return loss

    @staticmethod
    def scores(cls_score):
        """test_with_obj: class sigmoids times (1 - the objectness sigmoid); objectness last."""
        probs = torch.sigmoid(cls_score)
        return torch.cat([probs[:, :-1] * (1 - probs[:, -1:]), probs[:, -1:]], dim=1)


def test_eqlv2_first_step_weights_are_one_like_the_authors_code():
    loss_fn = build_loss("eqlv2", num_classes=5)
    reference = EQLv2Reference(4)
    positive_w, negative_w = reference.weights()
    assert torch.equal(positive_w, torch.ones(5, dtype=torch.float64))
    assert torch.equal(negative_w, torch.ones(5, dtype=torch.float64))
    q, r = loss_fn.class_term_weights()
    assert torch.equal(q, positive_w[:-1]) and torch.equal(r, negative_w[:-1])
    # so the first step is plain BCE over every column (the background's included)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 5, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    value = loss_fn(logits, one_hot_rows(labels, 5), labels)
    plain = F.binary_cross_entropy_with_logits(logits, one_hot_rows(labels, 5), reduction="sum")
    assert value.item() == pytest.approx(plain.item() / 7, rel=RTOL)


def test_eqlv2_matches_the_authors_code_over_steps():
    num_fg, rois = 8, 32
    gen = torch.Generator().manual_seed(1)
    loss_fn = build_loss("eqlv2", num_classes=num_fg + 1)
    reference = EQLv2Reference(num_fg)
    label_probs = torch.tensor([20.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1])
    for step in range(6):
        labels = torch.multinomial(label_probs, rois, replacement=True, generator=gen)
        logits = (torch.randn(rois, num_fg + 1, generator=gen) * 2 - 2).requires_grad_()
        value = loss_fn(logits, one_hot_rows(labels, num_fg + 1), labels)
        value.backward()
        ref_logits, ref_labels = to_reference_layout(logits.detach().double(), labels, num_fg)
        ref_logits.requires_grad_()
        ref_value = reference(ref_logits, ref_labels)
        ref_value.backward()

        assert value.item() == pytest.approx(ref_value.item(), rel=RTOL), step
        grad, _ = to_reference_layout(logits.grad, labels, num_fg)
        assert_grad_close(grad, ref_logits.grad)
        np.testing.assert_allclose(loss_fn.pos_grad.numpy(), reference.pos_grad, rtol=RTOL)
        np.testing.assert_allclose(loss_fn.neg_grad.numpy(), reference.neg_grad, rtol=RTOL)
        np.testing.assert_allclose(
            loss_fn.pos_neg_ratio.numpy(), reference.pos_neg, rtol=RTOL, atol=1e-12
        )
        scores = score_logits(logits.detach(), "sigmoid_objectness")
        ref_scores = EQLv2Reference.scores(ref_logits.detach())
        np.testing.assert_allclose(
            to_reference_layout(scores, labels, num_fg)[0].double().numpy(),
            ref_scores.numpy(),
            rtol=RTOL,
            atol=ATOL,
        )
    # the statistics did re-weight: some class is far from weight 1 by the end
    q, r = loss_fn.class_term_weights()
    assert float(r.min()) < 0.5 and float(q.max()) > 2.0


def test_eqlv2_ratio_start_of_one_would_differ_from_the_reference():
    # The start lsdet used before (ratio 1) re-weights the first step: r = sigmoid(2.4).
    loss_fn = build_loss("eqlv2", num_classes=3)
    loss_fn.pos_neg_ratio.fill_(1.0)
    q, r = loss_fn.class_term_weights()
    assert r[0].item() == pytest.approx(1 / (1 + math.exp(-2.4)), rel=1e-12)
    assert q[0].item() == pytest.approx(1 + 4 * (1 - r[0].item()), rel=1e-12)
    fresh_q, fresh_r = build_loss("eqlv2", num_classes=3).class_term_weights()
    assert not torch.equal(fresh_r, r) and torch.equal(fresh_r, torch.ones(2, dtype=torch.float64))


# --- Federated: facebookresearch/detectron2 detectron2/modeling/roi_heads/fast_rcnn.py -------
# (``get_fed_loss_classes`` and ``sigmoid_cross_entropy_loss``, from xingyizhou/CenterNet2's
# fed_loss.py; the class weights of detectron2/data/detection_utils.py
# ``get_fed_loss_cls_weights``: image_count ** freq_weight_power)


def detectron2_fed_classes(gt_classes, num_fed_classes, num_foreground, weight):
    """The unique labels of the batch (the background label K among them when a RoI is
    background) and, when fewer than num_fed_classes, draws without replacement with
    probability ~ weight among the other foreground classes (never the background) to make
    num_fed_classes in all. Returns the [K] foreground mask."""
    unique = torch.unique(gt_classes)
    prob = torch.ones(num_foreground + 1)
    prob[-1] = 0.0
    if len(unique) < num_fed_classes:
        prob[:num_foreground] = weight.float().clone()
        prob[unique] = 0.0
        drawn = torch.multinomial(prob, num_fed_classes - len(unique), replacement=False)
        unique = torch.cat([unique, drawn])
    mask = torch.zeros(num_foreground + 1)
    mask[unique] = 1.0
    return mask[:num_foreground]


def detectron2_sigmoid_ce(logits, gt_classes, mask):
    """Sigmoid CE over the K foreground columns of one-hot targets, masked, summed, / R."""
    rows, width = logits.shape
    target = F.one_hot(gt_classes, width).double()[:, :-1]
    bce = F.binary_cross_entropy_with_logits(logits[:, :-1], target, reduction="none")
    return (bce * mask.double()).sum() / rows


def test_federated_class_count_with_and_without_background_rois():
    num_fg = 80
    counts = torch.arange(1, num_fg + 1).float() * 3
    loss_fn = build_loss("federated", num_classes=num_fg + 1, image_counts=counts)
    assert loss_fn.num_classes_per_batch == 50
    with_background = torch.tensor([0, 0, 0, 5, 5, 17, 0, 42])
    without_background = torch.tensor([5, 5, 17, 42])
    for labels, foreground_kept in ((with_background, 49), (without_background, 50)):
        ref_labels = torch.where(labels == 0, num_fg, labels - 1)
        for seed in range(5):
            torch.manual_seed(seed)
            chosen = loss_fn.batch_classes(one_hot_rows(labels, num_fg + 1))
            torch.manual_seed(seed)
            reference = detectron2_fed_classes(ref_labels, 50, num_fg, counts**0.5)
            assert int(chosen.sum()) == foreground_kept
            # the same draws: torch's multinomial over the [K] weights and detectron2's [K+1]
            # (background weight 0) consume the random stream alike
            assert torch.equal(chosen.float(), reference)
            assert bool(chosen[[4, 16, 41]].all())  # the present classes 5, 17, 42
    # more present classes than places: all are kept, nothing is drawn
    many = torch.arange(0, 61)
    torch.manual_seed(0)
    chosen = loss_fn.batch_classes(one_hot_rows(many, num_fg + 1))
    assert int(chosen.sum()) == 60


def test_federated_matches_detectron2_over_steps():
    num_fg, rois, per_batch = 30, 40, 12
    gen = torch.Generator().manual_seed(4)
    counts = torch.randint(1, 500, (num_fg,), generator=gen).float()
    loss_fn = build_loss(
        "federated", num_classes=num_fg + 1, image_counts=counts, num_classes_per_batch=per_batch
    )
    # the draw weights: detectron2's image_count ** 0.5
    assert torch.equal(loss_fn.draw_weights, counts.float() ** 0.5)
    label_probs = torch.cat([torch.tensor([30.0]), 1.0 / torch.arange(1, num_fg + 1)])
    for step in range(6):
        labels = torch.multinomial(label_probs, rois, replacement=True, generator=gen)
        if step == 3:
            labels[labels == 0] = 1  # a batch without background RoIs
        logits = (torch.randn(rois, num_fg + 1, generator=gen) * 2 - 2).requires_grad_()
        torch.manual_seed(100 + step)
        value = loss_fn(logits, one_hot_rows(labels, num_fg + 1), labels)
        value.backward()
        ref_logits, ref_labels = to_reference_layout(logits.detach().double(), labels, num_fg)
        ref_logits.requires_grad_()
        torch.manual_seed(100 + step)
        mask = detectron2_fed_classes(ref_labels, per_batch, num_fg, counts**0.5)
        ref_value = detectron2_sigmoid_ce(ref_logits, ref_labels, mask)
        ref_value.backward()
        assert value.item() == pytest.approx(ref_value.item(), rel=RTOL), step
        grad, _ = to_reference_layout(logits.grad, labels, num_fg)
        assert_grad_close(grad, ref_logits.grad)
        has_background = bool((labels == 0).any())
        assert int(mask.sum()) == per_batch - int(has_background)


def test_federated_conventions_are_pinned():
    # power 0: detectron2's weights are image_count ** 0 = 1 for every class, a class without
    # training images included (torch: 0 ** 0 = 1); lsdet never draws such a class.
    counts = torch.tensor([0.0, 3.0, 5.0, 0.0])
    loss_fn = build_loss(
        "federated", num_classes=5, image_counts=counts, num_classes_per_batch=4, power=0.0
    )
    assert (counts**0.0).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert loss_fn.draw_weights.tolist() == [0.0, 1.0, 1.0, 0.0]
    torch.manual_seed(0)
    chosen = loss_fn.batch_classes(one_hot_rows([0], 5))
    # 3 places after the background, only 2 drawable classes: the draw stops there
    assert chosen.tolist() == [False, True, True, False]
    # the present classes are those of the multi-hot labels (a parent of the primary label
    # included), where detectron2 has the primary label only
    multi = one_hot_rows([2], 5)
    multi[0, 1] = 1.0  # class 1 is class 2's parent
    wide = build_loss(
        "federated", num_classes=5, image_counts=[4, 3, 5, 2], num_classes_per_batch=2
    )
    assert wide.batch_classes(multi).tolist() == [True, True, False, False]


# --- Focal: pytorch/vision torchvision/ops/focal_loss.py (sigmoid_focal_loss) ----------------


def torchvision_focal_reference(logits, targets, alpha, gamma):
    """Per element: BCE times (1 - p_t)^gamma, p_t = p y + (1 - p)(1 - y), times
    alpha_t = alpha y + (1 - alpha)(1 - y) when alpha >= 0."""
    p = torch.sigmoid(logits)
    bce = -(targets * torch.log(p) + (1 - targets) * torch.log1p(-p))
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, 0.25), (0.0, -1.0), (1.5, 0.75)])
def test_focal_matches_torchvision_formula(gamma, alpha):
    num_fg, rois = 7, 20
    gen = torch.Generator().manual_seed(5)
    loss_fn = build_loss("focal", num_classes=num_fg + 1, gamma=gamma, alpha=alpha)
    labels = torch.randint(0, num_fg + 1, (rois,), generator=gen)
    multi = one_hot_rows(labels, num_fg + 1)
    multi[labels == 3, 2] = 1.0  # a parent positive
    logits = (torch.randn(rois, num_fg + 1, generator=gen) * 3).requires_grad_()
    value = loss_fn(logits, multi, labels)
    value.backward()
    ref_logits = logits.detach().double().requires_grad_()
    terms = torchvision_focal_reference(ref_logits[:, 1:], multi[:, 1:].double(), alpha, gamma)
    reference = terms.sum() / rois
    reference.backward()
    assert value.item() == pytest.approx(reference.item(), rel=RTOL)
    assert_grad_close(logits.grad, ref_logits.grad)


# --- Softmax CE and sigmoid BCE: detectron2 fast_rcnn.py (softmax cross-entropy with mean
# reduction; sigmoid_cross_entropy_loss without the federated mask) ---------------------------


def test_softmax_and_bce_match_detectron2():
    num_fg, rois = 9, 25
    gen = torch.Generator().manual_seed(6)
    labels = torch.randint(0, num_fg + 1, (rois,), generator=gen)
    logits = (torch.randn(rois, num_fg + 1, generator=gen) * 3).requires_grad_()
    multi = one_hot_rows(labels, num_fg + 1)
    for name in ("softmax", "bce"):
        logits.grad = None
        value = build_loss(name, num_classes=num_fg + 1)(logits, multi, labels)
        value.backward()
        ref_logits, ref_labels = to_reference_layout(logits.detach().double(), labels, num_fg)
        ref_logits.requires_grad_()
        if name == "softmax":
            # -log softmax of the label's logit, averaged over the RoIs
            log_probs = ref_logits - torch.logsumexp(ref_logits, dim=1, keepdim=True)
            reference = -log_probs[torch.arange(rois), ref_labels].mean()
        else:
            reference = detectron2_sigmoid_ce(ref_logits, ref_labels, torch.ones(num_fg))
        reference.backward()
        assert value.item() == pytest.approx(reference.item(), rel=RTOL), name
        grad, _ = to_reference_layout(logits.grad, labels, num_fg)
        assert_grad_close(grad, ref_logits.grad)
