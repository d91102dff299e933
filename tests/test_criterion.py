import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vss.modeling.mask2former.criterion import SetCriterion, build_criterion, dice_loss, sigmoid_ce_loss
from vss.modeling.mask2former.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost
from vss.modeling.mask2former.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

BIG = 20.0


def _bilinear(image, x, y):
    """Reference bilinear sample of a 2-D list-of-lists image at normalised (x, y), zeros outside."""
    height, width = len(image), len(image[0])
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    ax, ay = px - x0, py - y0

    def pixel(r, c):
        return image[r][c] if 0 <= r < height and 0 <= c < width else 0.0

    return (
        pixel(y0, x0) * (1 - ax) * (1 - ay)
        + pixel(y0, x0 + 1) * ax * (1 - ay)
        + pixel(y0 + 1, x0) * (1 - ax) * ay
        + pixel(y0 + 1, x0 + 1) * ax * ay
    )


def _criterion(num_classes=3, matcher=None, num_points=64, eos_coef=0.1, ratio=0.75, losses=("labels", "masks")):
    return SetCriterion(
        num_classes=num_classes,
        matcher=matcher or HungarianMatcher(cost_class=1, cost_mask=1, cost_dice=1, num_points=0),
        weight_dict={},
        eos_coef=eos_coef,
        losses=list(losses),
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=ratio,
    )


def _expected_cost(logits, masks, labels, target_masks, points, weights=(1.0, 1.0, 1.0)):
    """(Q, N) matching cost computed pair by pair from the definitions."""
    probs = logits.softmax(-1)
    pred = [[_bilinear(m.tolist(), float(x), float(y)) for x, y in points] for m in masks]
    tgt = [[_bilinear(t.float().tolist(), float(x), float(y)) for x, y in points] for t in target_masks]
    cost = torch.zeros(len(pred), len(tgt), dtype=torch.float64)
    for i, p in enumerate(pred):
        p = torch.tensor(p, dtype=torch.float64)
        for j, t in enumerate(tgt):
            t = torch.tensor(t, dtype=torch.float64)
            bce = F.binary_cross_entropy_with_logits(p, t).item()
            s = p.sigmoid()
            dice = 1 - (2 * (s * t).sum() + 1) / (s.sum() + t.sum() + 1)
            cost[i, j] = -weights[0] * probs[i, labels[j]] + weights[1] * bce + weights[2] * dice
    return cost


def _min_total(cost):
    num_queries, num_targets = cost.shape
    return min(
        sum(cost[q, j].item() for j, q in enumerate(perm))
        for perm in itertools.permutations(range(num_queries), num_targets)
    )


# ---------------------------------------------------------------- point sampling


def test_point_sample_matches_manual_bilinear():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 5, 7)
    coords = torch.rand(2, 11, 2)
    coords[0, 0] = torch.tensor([0.02, 0.97])  # near the border: zero padding outside
    out = point_sample(image, coords)
    assert out.shape == (2, 3, 11)
    for n in range(2):
        for c in range(3):
            expected = [_bilinear(image[n, c].tolist(), float(x), float(y)) for x, y in coords[n]]
            assert torch.allclose(out[n, c], torch.tensor(expected), atol=1e-5)


def test_point_sample_at_pixel_centres_is_exact():
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    coords = torch.tensor([[[(2 + 0.5) / 4, (1 + 0.5) / 3], [(0 + 0.5) / 4, (2 + 0.5) / 3]]])
    assert point_sample(image, coords).flatten().tolist() == [6.0, 8.0]
    grid = coords[:, None]  # (N, 1, P, 2) keeps the grid shape
    assert point_sample(image, grid).shape == (1, 1, 1, 2)


def test_uncertainty_is_negative_abs_logit():
    logits = torch.tensor([[[-2.0, 0.0, 3.0]]])
    assert calculate_uncertainty(logits).flatten().tolist() == [-2.0, 0.0, -3.0]
    with pytest.raises(ValueError, match="1-channel"):
        calculate_uncertainty(torch.zeros(1, 2, 3))


def test_importance_sampling_keeps_most_uncertain_candidates():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 6, 6) * 5
    num_points, ratio, beta = 20, 3.0, 0.75
    torch.manual_seed(1)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, num_points, ratio, beta)
    # Replay the same draws: 60 candidates, then 5 random fill-ins.
    torch.manual_seed(1)
    candidates = torch.rand(2, 60, 2)
    fill = torch.rand(2, 5, 2)
    assert coords.shape == (2, 20, 2)
    uncertainty = -point_sample(logits, candidates).abs()[:, 0]
    for n in range(2):
        top = set(uncertainty[n].topk(15).indices.tolist())
        chosen = {int((candidates[n] == c).all(-1).nonzero()) for c in coords[n, :15]}
        assert chosen == top
    assert torch.equal(coords[:, 15:], fill)


def test_importance_sampling_concentrates_on_uncertain_band():
    # Logit 0 in the band 0.4 <= x < 0.6, +-10 elsewhere: the beta share lands in the band.
    logits = torch.full((1, 1, 10, 10), 10.0)
    logits[..., :, :4] = -10.0
    logits[..., :, 4:6] = 0.0
    torch.manual_seed(0)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 200, 3.0, 0.25)
    x = coords[0, :50, 0]
    # Bilinear blending makes |logit| < 10 only strictly between the flanking pixel centres.
    assert ((x > 0.35) & (x < 0.65)).all()
    rest = coords[0, 50:, 0]
    assert ((rest < 0.35) | (rest > 0.65)).float().mean() > 0.5  # the random share is uniform


def test_importance_sampling_rejects_bad_ratios():
    logits = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="oversample_ratio"):
        get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 8, 0.5, 0.75)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 8, 3.0, 1.5)


# ---------------------------------------------------------------- matcher


def test_batch_costs_hand_computed():
    inputs = torch.tensor([[0.0, math.log(3.0)]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # BCE(0, 1) = ln 2, BCE(ln 3, 0) = ln 4, BCE(0, 0) = ln 2.
    expected_bce = torch.tensor([[1.5 * math.log(2.0), 1.5 * math.log(2.0)]])
    assert torch.allclose(batch_sigmoid_ce_cost(inputs, targets), expected_bce)
    # p = (0.5, 0.75): dice with t=(1,0) is 1 - 2/3.25; with t=(0,0) it is 1 - 1/2.25.
    expected_dice = torch.tensor([[1 - 2 / 3.25, 1 - 1 / 2.25]])
    assert torch.allclose(batch_dice_cost(inputs, targets), expected_dice)


def test_cost_matrix_matches_definition_on_pixel_grid():
    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    masks = torch.randn(4, 3, 3) * 3
    labels = torch.tensor([2, 0, 2])
    target_masks = torch.rand(3, 6, 6) > 0.5
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=3.0, num_points=0)
    ys, xs = torch.meshgrid((torch.arange(3) + 0.5) / 3, (torch.arange(3) + 0.5) / 3, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], -1)
    cost = matcher.cost_matrix(logits, masks, labels, target_masks, points)
    expected = _expected_cost(logits, masks, labels, target_masks, points, weights=(2.0, 5.0, 3.0))
    assert cost.dtype == torch.float32
    assert torch.allclose(cost.double(), expected, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_matcher_total_cost_is_brute_force_minimum(seed):
    torch.manual_seed(seed)
    num_queries, num_targets = 5, 3
    outputs = {"pred_logits": torch.randn(2, num_queries, 4), "pred_masks": torch.randn(2, num_queries, 4, 4) * 2}
    targets = [
        {"labels": torch.randint(0, 3, (num_targets,)), "masks": torch.rand(num_targets, 8, 8) > 0.5}
        for _ in range(2)
    ]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=2.0, cost_dice=1.0, num_points=0)
    indices = matcher(outputs, targets)
    ys, xs = torch.meshgrid((torch.arange(4) + 0.5) / 4, (torch.arange(4) + 0.5) / 4, indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], -1)
    for b, (query_idx, target_idx) in enumerate(indices):
        assert query_idx.dtype == torch.int64 and target_idx.dtype == torch.int64
        assert len(set(query_idx.tolist())) == num_targets and sorted(target_idx.tolist()) == [0, 1, 2]
        cost = _expected_cost(
            outputs["pred_logits"][b], outputs["pred_masks"][b], targets[b]["labels"], targets[b]["masks"],
            grid, weights=(1.0, 2.0, 1.0),
        )
        total = sum(cost[q, t].item() for q, t in zip(query_idx.tolist(), target_idx.tolist()))
        assert total == pytest.approx(_min_total(cost), abs=1e-5)


def test_matcher_random_points_shared_per_image():
    torch.manual_seed(0)
    outputs = {"pred_logits": torch.randn(1, 4, 3), "pred_masks": torch.randn(1, 4, 5, 5) * 2}
    targets = [{"labels": torch.tensor([1, 0, 1]), "masks": torch.rand(3, 10, 10) > 0.5}]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=7)
    torch.manual_seed(3)
    ((query_idx, target_idx),) = matcher(outputs, targets)
    torch.manual_seed(3)
    points = torch.rand(7, 2)
    cost = _expected_cost(outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]["labels"],
                          targets[0]["masks"], points)
    total = sum(cost[q, t].item() for q, t in zip(query_idx.tolist(), target_idx.tolist()))
    assert total == pytest.approx(_min_total(cost), abs=1e-5)


def test_matcher_recovers_permuted_perfect_queries():
    target_masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    target_masks[0, :4] = True
    target_masks[1, 4:, :4] = True
    target_masks[2, 4:, 4:] = True
    labels = torch.tensor([0, 1, 0])
    perm = [3, 0, 2]  # target j is predicted by query perm[j]
    masks = torch.full((1, 4, 8, 8), -BIG)
    logits = torch.zeros(1, 4, 3)
    logits[0, 1, 2] = BIG
    for j, q in enumerate(perm):
        masks[0, q][target_masks[j]] = BIG
        logits[0, q, labels[j]] = BIG
    matcher = HungarianMatcher(num_points=50)
    ((query_idx, target_idx),) = matcher({"pred_logits": logits, "pred_masks": masks},
                                         [{"labels": labels, "masks": target_masks}])
    assert dict(zip(target_idx.tolist(), query_idx.tolist())) == {0: 3, 1: 0, 2: 2}


def test_matcher_handles_image_without_targets():
    outputs = {"pred_logits": torch.randn(2, 3, 4), "pred_masks": torch.randn(2, 3, 4, 4)}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)},
        {"labels": torch.tensor([1]), "masks": torch.ones(1, 8, 8, dtype=torch.bool)},
    ]
    indices = HungarianMatcher(num_points=10)(outputs, targets)
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert indices[1][1].tolist() == [0]


def test_matcher_rejects_bad_arguments():
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0)
    with pytest.raises(ValueError, match="num_points"):
        HungarianMatcher(num_points=-1)
    with pytest.raises(ValueError, match="1 targets for a batch of 2"):
        HungarianMatcher()({"pred_logits": torch.zeros(2, 3, 4), "pred_masks": torch.zeros(2, 3, 4, 4)},
                           [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4)}])


# ---------------------------------------------------------------- criterion


def test_empty_weight_buffer():
    criterion = _criterion(num_classes=4, eos_coef=0.1)
    assert criterion.empty_weight.tolist() == pytest.approx([1, 1, 1, 1, 0.1])
    assert "empty_weight" in criterion.state_dict()


def test_sigmoid_ce_and_dice_hand_computed():
    inputs = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # Mask 0: (ln 2 + ln 4) / 2; mask 1: ln 2; summed and divided by num_masks = 4.
    assert sigmoid_ce_loss(inputs, targets, 4).item() == pytest.approx((1.5 * math.log(2) + math.log(2)) / 4)
    # Mask 0: p = (0.5, 0.75) -> 1 - 2 / 3.25; mask 1: p = (0.5, 0.5) -> 1 - 3 / 4.
    assert dice_loss(inputs, targets, 4).item() == pytest.approx((1 - 2 / 3.25 + 0.25) / 4)


def test_mask_losses_through_criterion_hand_computed():
    # Logit 0 and an empty target mask are exact at every point, even where sampling
    # blends with the zero padding beyond the border: p = 0.5 and t = 0 everywhere.
    num_points = 16
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 4, 4)}
    targets = [{"labels": torch.tensor([1]), "masks": torch.zeros(1, 8, 8, dtype=torch.bool)}]
    losses = _criterion(num_classes=2, num_points=num_points, losses=["masks"])(outputs, targets)
    assert set(losses) == {"loss_mask", "loss_dice"}
    assert losses["loss_mask"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(1 - 1 / (0.5 * num_points + 1), rel=1e-6)


def test_cross_entropy_uses_matches_and_no_object_weight():
    logits = torch.randn(1, 3, 3)
    masks = torch.full((1, 3, 4, 4), -BIG)
    masks[0, 2] = BIG  # query 2 predicts the only target's (full) mask
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 4, 4)}]
    matcher = HungarianMatcher(cost_class=0, cost_mask=1, cost_dice=1, num_points=0)
    loss = _criterion(num_classes=2, matcher=matcher, eos_coef=0.1, losses=["labels"])(
        {"pred_logits": logits, "pred_masks": masks}, targets)["loss_ce"]
    log_probs = logits[0].log_softmax(-1)
    # Weighted mean: query 2 -> class 1 (weight 1), queries 0 and 1 -> no-object (weight 0.1).
    expected = -(log_probs[2, 1] + 0.1 * log_probs[0, 2] + 0.1 * log_probs[1, 2]) / 1.2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_perfect_prediction_has_near_zero_losses():
    # Two half-image targets per image. Points within half a pixel of the split or of
    # the border see blended values, so the masks are fine-grained (256 px) and points
    # uniform (importance sampling would seek out exactly those points).
    size = 256
    left = torch.zeros(size, size, dtype=torch.bool)
    left[:, : size // 2] = True
    target_masks = torch.stack([left, ~left])
    labels = torch.tensor([0, 2])
    logits = torch.full((2, 4, 4), -BIG)
    logits[..., 3] = BIG  # no-object by default
    masks = torch.full((2, 4, size, size), -BIG)
    for b, (q0, q1) in enumerate([(1, 3), (2, 0)]):
        logits[b, q0], logits[b, q1] = -BIG, -BIG
        logits[b, q0, 0], logits[b, q1, 2] = BIG, BIG
        masks[b, q0][left], masks[b, q1][~left] = BIG, BIG
    targets = [{"labels": labels, "masks": target_masks} for _ in range(2)]
    torch.manual_seed(0)
    criterion = _criterion(num_classes=3, matcher=HungarianMatcher(num_points=100), num_points=100, ratio=0.0)
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, targets)
    assert losses["loss_ce"].item() < 1e-6
    assert losses["loss_mask"].item() < 0.05
    assert losses["loss_dice"].item() < 0.01
    # Predicting empty masks instead costs about BIG / 2 in BCE and 1 in dice.
    bad = criterion({"pred_logits": logits, "pred_masks": torch.full_like(masks, -BIG)}, targets)
    assert bad["loss_mask"].item() > 5 and bad["loss_dice"].item() > 0.9


def test_targets_compared_at_normalised_points_across_resolutions():
    # The same mask given at 8x8 for predictions and 32x32 for targets scores like a match.
    target = torch.zeros(1, 32, 32, dtype=torch.bool)
    target[:, :, 16:] = True
    pred = torch.full((1, 1, 8, 8), -BIG)
    pred[..., 4:] = BIG
    torch.manual_seed(0)
    losses = _criterion(num_classes=1, num_points=200, ratio=0.0)(
        {"pred_logits": torch.zeros(1, 1, 2), "pred_masks": pred}, [{"labels": torch.tensor([0]), "masks": target}])
    flipped = _criterion(num_classes=1, num_points=200, ratio=0.0)(
        {"pred_logits": torch.zeros(1, 1, 2), "pred_masks": pred.flip(-1)},
        [{"labels": torch.tensor([0]), "masks": target}])
    assert losses["loss_dice"].item() < 0.15 < 0.9 < flipped["loss_dice"].item()


def test_empty_targets_are_finite_and_differentiable():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    masks = torch.randn(2, 3, 5, 5, requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}
    losses = _criterion(num_classes=3)({"pred_logits": logits, "pred_masks": masks}, [empty, empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    # Every query is no-object: weighted mean of equal weights is the plain mean.
    expected = F.cross_entropy(logits.detach().reshape(-1, 4), torch.full((6,), 3))
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert torch.isfinite(masks.grad).all() and masks.grad.abs().sum() == 0
    assert logits.grad.abs().sum() > 0


def test_mixed_batch_normalises_by_all_target_masks():
    # Image 1 has no targets: mask losses are those of image 0's masks over num_masks = 2.
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[0, :, :4] = True
    target[1, :, 4:] = True
    masks = torch.zeros(2, 3, 8, 8)
    outputs = {"pred_logits": torch.zeros(2, 3, 3), "pred_masks": masks}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}
    losses = _criterion(num_classes=2, num_points=32, losses=["masks"])(
        outputs, [{"labels": torch.tensor([0, 1]), "masks": target}, empty])
    # Logit 0 everywhere: BCE is ln 2 at every point whatever the target.
    assert losses["loss_mask"].item() == pytest.approx(math.log(2), rel=1e-5)


def test_deep_supervision_keys_and_values():
    torch.manual_seed(0)
    make = lambda: {"pred_logits": torch.randn(1, 3, 3), "pred_masks": torch.randn(1, 3, 4, 4)}  # noqa: E731
    outputs = make()
    outputs["aux_outputs"] = [make(), make()]
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 8, 8) > 0.5}]
    criterion = _criterion(num_classes=2)
    losses = criterion(outputs, targets)
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    for i, aux in enumerate(outputs["aux_outputs"]):
        alone = criterion(aux, targets)
        assert losses[f"loss_ce_{i}"].item() == pytest.approx(alone["loss_ce"].item())
    final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
    assert losses["loss_ce"].item() == pytest.approx(criterion(final, targets)["loss_ce"].item())
    assert len({round(losses[f"loss_ce{s}"].item(), 6) for s in ("", "_0", "_1")}) == 3


def test_gradients_reach_logits_and_masks():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    masks = torch.randn(2, 4, 6, 6, requires_grad=True)
    aux_masks = torch.randn(2, 4, 6, 6, requires_grad=True)
    outputs = {"pred_logits": logits, "pred_masks": masks,
               "aux_outputs": [{"pred_logits": logits * 2, "pred_masks": aux_masks}]}
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 12, 12) > 0.5} for _ in range(2)]
    losses = _criterion(num_classes=2, num_points=16)(outputs, targets)
    sum(losses.values()).backward()
    for grad in (logits.grad, masks.grad, aux_masks.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Only matched queries get mask gradients: 2 of 4 per image.
    touched = (masks.grad.abs().flatten(2).sum(-1) > 0).sum(-1)
    assert touched.tolist() == [2, 2]


def test_optimisation_decreases_total_loss():
    torch.manual_seed(0)
    target = torch.zeros(3, 16, 16, dtype=torch.bool)
    target[0, :8] = True
    target[1, 8:, :8] = True
    target[2, 8:, 8:] = True
    targets = [{"labels": torch.tensor([0, 1, 2]), "masks": target}]
    logits = torch.zeros(1, 5, 4, requires_grad=True)
    masks = (0.1 * torch.randn(1, 5, 8, 8)).requires_grad_()
    criterion = _criterion(num_classes=3, matcher=HungarianMatcher(2.0, 5.0, 5.0, num_points=64), num_points=64)
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    optimizer = torch.optim.Adam([logits, masks], lr=0.2)
    totals = []
    for _ in range(40):
        losses = criterion({"pred_logits": logits, "pred_masks": masks}, targets)
        total = sum(weights[k] * v for k, v in losses.items())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert sum(totals[-5:]) / 5 < 0.3 * sum(totals[:5]) / 5


def test_criterion_rejects_bad_targets_and_arguments():
    criterion = _criterion(num_classes=2)
    outputs = {"pred_logits": torch.zeros(2, 3, 3), "pred_masks": torch.zeros(2, 3, 4, 4)}
    good = {"labels": torch.tensor([0]), "masks": torch.ones(1, 8, 8)}
    with pytest.raises(ValueError, match=r"target 1 has labels \[2\]"):
        criterion(outputs, [good, {"labels": torch.tensor([2]), "masks": torch.ones(1, 8, 8)}])
    with pytest.raises(ValueError, match="target 1 needs labels"):
        criterion(outputs, [good, {"labels": torch.tensor([0, 1]), "masks": torch.ones(1, 8, 8)}])
    with pytest.raises(ValueError, match="pad every target"):
        criterion(outputs, [good, {"labels": torch.tensor([0]), "masks": torch.ones(1, 8, 6)}])
    with pytest.raises(ValueError, match="1 targets for a batch of 2"):
        criterion(outputs, [good])
    with pytest.raises(ValueError, match="unknown losses"):
        _criterion(losses=["labels", "boxes"])
    with pytest.raises(ValueError, match="num_points"):
        _criterion(num_points=0)


def test_build_criterion_from_config():
    from detectron2.config import get_cfg

    from vss.config import add_vss_config

    cfg = get_cfg()
    add_vss_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 4.0
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 4
    criterion = build_criterion(cfg)
    assert criterion.num_classes == 5 and criterion.losses == ["labels", "masks"]
    assert criterion.empty_weight.tolist() == pytest.approx([1] * 5 + [0.1])
    assert (criterion.num_points, criterion.oversample_ratio, criterion.importance_sample_ratio) == (12544, 3.0, 0.75)
    matcher = criterion.matcher
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice, matcher.num_points) == (2.0, 5.0, 4.0, 12544)
    expected = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 4.0}
    for i in range(3):
        expected.update({f"loss_ce_{i}": 2.0, f"loss_mask_{i}": 5.0, f"loss_dice_{i}": 4.0})
    assert criterion.weight_dict == expected
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = False
    assert build_criterion(cfg).weight_dict == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 4.0}
