"""FlowNet's multi-scale end-point-error (EPE) loss, leaving out pixels without ground truth.

FlowNet's recipe (FlowNetPytorch's `multiscaleEPE`): at each output scale the target flow
is area-downsampled to the output's size, its values NOT rescaled (every scale predicts in
the same units); the EPE, the L2 norm of the 2-vector difference, is summed over the
output's pixels and divided by the batch size; the scales are weighted.

With a validity mask, a coarse cell's target is the mean of the valid target vectors it
covers, and its EPE counts with the share of its pixels that are valid. With every pixel
valid and cells tiling the target exactly, this is FlowNet's loss.
"""
import torch
from torch.nn import functional as F

__all__ = ["downsample_flow", "multiscale_epe"]


def downsample_flow(flow, valid, cell, size):
    """Area-downsample a target flow over `cell` x `cell` pixel cells, ignoring invalid pixels.

    Args:
        flow: (B, 2, H, W) target flow; valid: (B, H, W) bool.
        cell: target pixels per side of one output cell (cells start at the top-left pixel).
        size: (h, w) output size; cells beyond the target's extent count as invalid.
    Returns:
        (flow (B, 2, h, w) mean of the valid vectors of each cell (0 where none),
         weight (B, h, w) share of each cell's pixels that are valid).
    """
    h, w = size
    if -(-flow.shape[-2] // cell) != h or -(-flow.shape[-1] // cell) != w:
        raise ValueError(f"downsample_flow: a {flow.shape[-2]}x{flow.shape[-1]} target in {cell}x{cell} cells "
                         f"does not give the {h}x{w} output grid")
    pad = (0, w * cell - flow.shape[-1], 0, h * cell - flow.shape[-2])
    weight = F.pad(valid.unsqueeze(1).to(flow.dtype), pad)
    total = F.avg_pool2d(F.pad(flow, pad) * weight, cell)
    weight = F.avg_pool2d(weight, cell)
    return total / weight.clamp(min=torch.finfo(flow.dtype).tiny), weight.squeeze(1)


def multiscale_epe(flows, target, valid, weights, cell):
    """FlowNet's per-scale EPE terms, weighted.

    Args:
        flows: predictions finest first, (B, 2, h_i, w_i), each level half the previous
            (sizes rounded up), in the target's units.
        target: (B, 2, H, W) ground-truth flow; valid: (B, H, W) bool, False where there is none.
        weights: one weight per level.
        cell: target pixels per side of a cell of flows[0]; level i's cells are cell * 2**i wide.
    Returns:
        the weighted terms, one (scalar tensor) per level: weight_i * sum over cells of
        (valid share x EPE) / B.
    """
    if len(flows) != len(weights):
        raise ValueError(f"multiscale_epe: {len(flows)} flow levels but {len(weights)} loss weights "
                         "(MODEL.FLOWNETS.LOSS_WEIGHTS)")
    if target.dim() != 4 or target.shape[1] != 2 or valid.shape != (target.shape[0], *target.shape[2:]):
        raise ValueError(f"multiscale_epe: target must be (B, 2, H, W) and valid (B, H, W), "
                         f"got {tuple(target.shape)} and {tuple(valid.shape)}")
    terms = []
    for i, (flow, weight) in enumerate(zip(flows, weights)):
        scaled, share = downsample_flow(target, valid, cell * 2**i, flow.shape[-2:])
        epe = torch.linalg.vector_norm(flow - scaled, dim=1)
        terms.append(weight * (epe * share).sum() / flow.shape[0])
    return terms
