"""Hungarian matching between Mask2Former's queries and ground-truth masks.

Each image is matched on its own: the cost of giving target j to query i is

    cost_class * (-p_i(c_j)) + cost_mask * BCE(m_i, t_j) + cost_dice * dice(m_i, t_j)

with p_i the softmax class probabilities and the mask terms computed on the same
points for the predictions and the targets of that image (Cheng et al. 2022). The
optimal one-to-one assignment is found with scipy's `linear_sum_assignment`.
"""
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import point_sample

__all__ = ["HungarianMatcher", "batch_sigmoid_ce_cost", "batch_dice_cost"]


def batch_sigmoid_ce_cost(inputs, targets):
    """Pairwise sigmoid BCE, averaged over points.

    Args:
        inputs: (Q, P) mask logits.
        targets: (N, P) target values in [0, 1].

    Returns:
        (Q, N) cost; entry (i, j) = mean over points of BCE(sigmoid(inputs[i]), targets[j]).
    """
    num_points = inputs.shape[1]
    # BCE(x, t) = t * (-log s(x)) + (1 - t) * (-log(1 - s(x))) is linear in t, so all
    # pairs come from two matrix products instead of a (Q, N, P) tensor.
    pos = torch.nn.functional.softplus(-inputs)
    neg = torch.nn.functional.softplus(inputs)
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def batch_dice_cost(inputs, targets):
    """Pairwise dice cost 1 - (2 p.t + 1) / (sum p + sum t + 1), with p = sigmoid(inputs).

    Args:
        inputs: (Q, P) mask logits.
        targets: (N, P) target values in [0, 1].

    Returns:
        (Q, N) cost.
    """
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _pixel_centres(height, width, device):
    """(height * width, 2) normalised (x, y) centres of a height x width grid, row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to queries minimising the matching cost.

    Args:
        cost_class: weight of the classification cost.
        cost_mask: weight of the sigmoid BCE mask cost.
        cost_dice: weight of the dice cost.
        num_points: mask costs use this many points drawn uniformly in [0, 1]^2, a fresh
            draw per image shared by its predictions and targets. 0 uses every pixel
            centre of the prediction grid instead (exact, deterministic; affordable only
            for small masks).
    """

    def __init__(self, cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0, nothing to match on")
        if num_points < 0:
            raise ValueError(f"HungarianMatcher: num_points must be >= 0, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def cost_matrix(self, logits, masks, labels, target_masks, point_coords):
        """(Q, N) matching cost of one image, in float32.

        Args:
            logits: (Q, K + 1) class logits.
            masks: (Q, h, w) mask logits.
            labels: (N,) int64 target classes in [0, K).
            target_masks: (N, H, W) target masks; H, W may differ from h, w.
            point_coords: (P, 2) normalised (x, y) points at which masks are compared.
        """
        with torch.autocast(device_type=masks.device.type, enabled=False):
            cost_class = -logits.float().softmax(-1)[:, labels]
            pred = self._sample(masks.float(), point_coords)
            target = self._sample(target_masks.float(), point_coords)
            cost_mask = batch_sigmoid_ce_cost(pred, target)
            cost_dice = batch_dice_cost(pred, target)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice

    @staticmethod
    def _sample(masks, point_coords):
        """(M, h, w) masks at (P, 2) points -> (M, P)."""
        coords = point_coords[None].expand(masks.shape[0], -1, -1)
        return point_sample(masks[:, None], coords).squeeze(1)

    @torch.no_grad()
    def forward(self, outputs, targets):
        """Match each image's queries to its targets.

        Args:
            outputs: {"pred_logits": (B, Q, K + 1), "pred_masks": (B, Q, h, w), ...}.
            targets: B dicts {"labels": (N,) int64, "masks": (N, H, W) bool or float}.

        Returns:
            B tuples (query_idx, target_idx) of int64 CPU tensors of length min(Q, N):
            query query_idx[k] is assigned target target_idx[k].
        """
        logits = outputs["pred_logits"]
        masks = outputs["pred_masks"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {logits.shape[0]}")
        indices = []
        for b, target in enumerate(targets):
            if self.num_points == 0:
                points = _pixel_centres(masks.shape[-2], masks.shape[-1], masks.device)
            else:
                points = torch.rand(self.num_points, 2, device=masks.device)
            cost = self.cost_matrix(logits[b], masks[b], target["labels"], target["masks"], points)
            query_idx, target_idx = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64))
            )
        return indices
