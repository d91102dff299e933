"""Mask2Former's set criterion: Hungarian matching, then class and mask losses.

For each prediction set (the final one and, with deep supervision, every auxiliary
one) queries are matched to targets, then:
- "labels": cross-entropy over K + 1 classes, unmatched queries supervised as
  no-object, the no-object class down-weighted by `eos_coef`;
- "masks": sigmoid BCE and dice on importance-sampled points of the matched pairs,
  each normalised by the number of target masks in the batch.

The criterion returns UNWEIGHTED losses. The model multiplies each by
`criterion.weight_dict[name]` and drops names missing from it (upstream's
convention; `SetCriterion.weigh`), which is also how DEEP_SUPERVISION = False
discards auxiliary losses.
The criterion only looks at the output tensors, so it applies to any mask logits
(MPVSS feeds it masks warped from a key frame).
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn

from .matcher import HungarianMatcher
from .point_sampling import calculate_uncertainty, get_uncertain_point_coords_with_randomness, point_sample

__all__ = ["SetCriterion", "build_criterion", "sigmoid_ce_loss", "dice_loss"]


def sigmoid_ce_loss(inputs, targets, num_masks):
    """Sigmoid BCE averaged over points, summed over masks, divided by `num_masks`.

    Args:
        inputs: (M, P) mask logits at the sampled points.
        targets: (M, P) target values in [0, 1] at the same points.
        num_masks: normaliser (number of target masks in the batch).
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs, targets, num_masks):
    """Dice loss 1 - (2 p.t + 1) / (sum p + sum t + 1) per mask, summed, divided by `num_masks`.

    Args:
        inputs: (M, P) mask logits at the sampled points (p = sigmoid(inputs)).
        targets: (M, P) target values in [0, 1] at the same points.
        num_masks: normaliser (number of target masks in the batch).
    """
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def _check_targets(targets, batch_size, num_classes):
    if len(targets) != batch_size:
        raise ValueError(f"SetCriterion: {len(targets)} targets for a batch of {batch_size} predictions")
    for i, target in enumerate(targets):
        labels, masks = target["labels"], target["masks"]
        if labels.dim() != 1 or masks.dim() != 3 or masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"SetCriterion: target {i} needs labels (N,) and masks (N, H, W), "
                f"got labels {tuple(labels.shape)} and masks {tuple(masks.shape)}"
            )
        if masks.shape[-2:] != targets[0]["masks"].shape[-2:]:
            raise ValueError(
                f"SetCriterion: target {i} masks are {tuple(masks.shape[-2:])} but target 0 masks are "
                f"{tuple(targets[0]['masks'].shape[-2:])}; pad every target to the padded input size"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"SetCriterion: target {i} has labels {labels.unique().tolist()}, "
                f"expected values in [0, {num_classes})"
            )


def _average_num_masks(targets, device):
    """Target masks per process, averaged over processes so every rank normalises alike; >= 1."""
    num_masks = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world_size = comm.get_world_size()
    if world_size > 1:
        dist.all_reduce(num_masks)
    return torch.clamp(num_masks / world_size, min=1).item()


class SetCriterion(nn.Module):
    """Mask2Former training loss.

    Args:
        num_classes: K, the number of real classes (logits have K + 1, the last no-object).
        matcher: callable (outputs, targets) -> per-image (query_idx, target_idx).
        weight_dict: {loss name: weight}, stored for the model to apply (see module doc).
        eos_coef: cross-entropy weight of the no-object class.
        losses: subset of ("labels", "masks") to compute.
        num_points: points sampled per matched mask.
        oversample_ratio: candidate points drawn per kept point (>= 1).
        importance_sample_ratio: share of the kept points chosen by uncertainty.
    """

    # Made from the config (eos_coef), so any checkpoint may lack it (vss.engine.checkpoint):
    # MPVSS evaluated with per-frame weights has a temporal criterion they never had.
    weights_from_config = ("empty_weight",)

    def __init__(
        self,
        num_classes,
        matcher,
        weight_dict,
        eos_coef,
        losses,
        num_points,
        oversample_ratio,
        importance_sample_ratio,
    ):
        super().__init__()
        unknown = set(losses) - {"labels", "masks"}
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {sorted(unknown)}, expected 'labels' and/or 'masks'")
        if num_points <= 0:
            raise ValueError(f"SetCriterion: num_points must be > 0, got {num_points}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # A persistent buffer: upstream checkpoints carry it as `criterion.empty_weight`.
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs, targets, indices, num_masks):
        """{"loss_ce"}: weighted cross-entropy over all queries (num_masks unused)."""
        logits = outputs["pred_logits"].float()
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (target, (query_idx, target_idx)) in enumerate(zip(targets, indices)):
            target_classes[b, query_idx.to(logits.device)] = target["labels"][target_idx].to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss}

    def loss_masks(self, outputs, targets, indices, num_masks):
        """{"loss_mask", "loss_dice"} on importance-sampled points of the matched pairs."""
        pred_masks = outputs["pred_masks"]
        device = pred_masks.device
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([q for q, _ in indices]).to(device)
        pred = pred_masks[batch_idx, query_idx].float()[:, None]
        target = torch.cat(
            [t["masks"][j.to(t["masks"].device)].to(device, torch.float32) for t, (_, j) in zip(targets, indices)]
        )[:, None]
        with torch.no_grad():
            # Points follow the prediction's uncertainty, not the loss: no gradient.
            point_coords = get_uncertain_point_coords_with_randomness(
                pred,
                calculate_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = point_sample(target, point_coords).squeeze(1)
        point_logits = point_sample(pred, point_coords).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def weigh(self, losses):
        """Each loss times its weight_dict weight; losses without one dropped (aux losses without
        deep supervision)."""
        return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}

    def _losses_of(self, outputs, targets, num_masks):
        indices = self.matcher(outputs, targets)
        losses = {}
        for name in self.losses:
            compute = self.loss_labels if name == "labels" else self.loss_masks
            losses.update(compute(outputs, targets, indices, num_masks))
        return losses

    def forward(self, outputs, targets):
        """Unweighted losses of the final predictions and of each auxiliary set.

        Args:
            outputs: {"pred_logits": (B, Q, K + 1), "pred_masks": (B, Q, h, w),
                "aux_outputs": optional list of dicts with the same two keys}.
            targets: B dicts {"labels": (N,) int64 in [0, K), "masks": (N, H, W) bool or
                float}; N may be 0. H, W is the padded input size, the same for every
                image (the model pads targets as it pads images); it may differ from h, w
                since masks are compared at normalised points.

        Returns:
            {"loss_ce", "loss_mask", "loss_dice"} plus "loss_ce_{i}" etc. for
            aux_outputs[i]. Images without targets contribute only no-object terms.
        """
        _check_targets(targets, outputs["pred_logits"].shape[0], self.num_classes)
        num_masks = _average_num_masks(targets, outputs["pred_logits"].device)
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = self._losses_of(final, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._losses_of(aux, targets, num_masks)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses


def build_criterion(cfg):
    """SetCriterion (with its matcher and weight_dict) from MODEL.MASK_FORMER.* keys.

    weight_dict holds CLASS/MASK/DICE_WEIGHT for the final predictions and, with
    DEEP_SUPERVISION, the same for the DEC_LAYERS - 1 auxiliary sets ("loss_ce_{i}", ...).
    The model applies it: loss = sum(losses[k] * weight_dict[k] for k in weight_dict).
    """
    mf = cfg.MODEL.MASK_FORMER
    matcher = HungarianMatcher(
        cost_class=mf.CLASS_WEIGHT,
        cost_mask=mf.MASK_WEIGHT,
        cost_dice=mf.DICE_WEIGHT,
        num_points=mf.TRAIN_NUM_POINTS,
    )
    weight_dict = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
    if mf.DEEP_SUPERVISION:
        base = dict(weight_dict)
        for i in range(mf.DEC_LAYERS - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    return SetCriterion(
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=mf.NO_OBJECT_WEIGHT,
        losses=["labels", "masks"],
        num_points=mf.TRAIN_NUM_POINTS,
        oversample_ratio=mf.OVERSAMPLE_RATIO,
        importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
    )
