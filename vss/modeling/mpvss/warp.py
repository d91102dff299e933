"""Backward warping of key-frame mask logits with per-query flow (MPVSS mask propagation).

Convention: `flow[b, q, :, y, x]` = (dx, dy) in pixels of the flow grid says where the
current frame's pixel (x, y) was in the key frame, so the warped mask at p samples the
key frame's mask at p + flow(p) (bilinear, border padding: pixels whose source lies
outside the key frame take the nearest border value).

Deviation from the official release (OFFICIAL_CODE_FACTS 1.5): it normalises the
sampling grid by W while sampling with align_corners=True, which moves every sample by
up to a pixel even at zero flow. Here samples are taken in pixel coordinates, so zero
flow returns the key frame's masks exactly and an integer flow is an exact shift.
"""
import torch
from torch.nn import functional as F

__all__ = ["upsample_flow", "warp_masks"]


def upsample_flow(flow, size):
    """Flow (N, 2, hf, wf) in pixels of its grid -> (N, 2, *size) in pixels of the new grid.

    Bilinear resize (align_corners False, like the official flow upsampling) then the
    displacements are scaled by the size ratio: dx by w / wf, dy by h / hf.
    """
    h, w = size
    hf, wf = flow.shape[-2:]
    if (hf, wf) == (h, w):
        return flow
    flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
    scale = flow.new_tensor([w / wf, h / hf]).view(1, 2, 1, 1)
    return flow * scale


def warp_masks(mask_logits, flow):
    """Warp key-frame mask logits to the current frame, one flow map per query.

    Args:
        mask_logits: (B, Q, h, w) key-frame mask logits, or (B, Q, P, h, w) for P
            predictions of the same queries (Mask2Former's deep-supervision outputs),
            all moved by their query's flow.
        flow: (B, Q, 2, hf, wf) backward flow (channel 0 = dx, 1 = dy) in pixels of its
            own grid, or (B, 1, 2, hf, wf) for one flow shared by every query (pixel-wise
            optical flow); any grid size (it is resized to h x w, see `upsample_flow`).
    Returns:
        the warped logits, shaped like `mask_logits`.
    """
    if mask_logits.dim() not in (4, 5):
        raise ValueError(f"warp_masks: mask_logits must be (B, Q, h, w) or (B, Q, P, h, w), "
                         f"got {tuple(mask_logits.shape)}")
    b, q = mask_logits.shape[:2]
    h, w = mask_logits.shape[-2:]
    if flow.dim() != 5 or flow.shape[0] != b or flow.shape[1] not in (1, q) or flow.shape[2] != 2:
        raise ValueError(f"warp_masks: flow must be (B={b}, Q={q} or 1, 2, hf, wf) to match mask_logits "
                         f"{tuple(mask_logits.shape)}, got {tuple(flow.shape)}")
    if flow.shape[1] > 1 and flow.stride(1) == 0:
        flow = flow[:, :1]  # one map expanded over the queries (pixel flow): warp with it once
    # at least float32 even under AMP: half precision cannot address pixels of a wide frame
    flow = upsample_flow(flow.flatten(0, 1).to(torch.promote_types(flow.dtype, torch.float32)), (h, w))
    source = mask_logits.reshape(flow.shape[0], -1, h * w)
    warped = _bilinear_gather(source, flow, h, w)
    return warped.to(mask_logits.dtype).reshape(mask_logits.shape)


def _bilinear_gather(source, flow, h, w):
    """Sample `source` (N, C, h*w) at (x, y) + flow (N, 2, h, w), bilinear, coordinates clamped.

    Written out in pixel coordinates rather than through grid_sample: grid_sample's
    [-1, 1] normalisation round-trip moves samples by ~1e-5 pixel, which perturbs large
    logits by ~1e-3 even at zero flow. Here a zero (or integer) flow gives interpolation
    weights of exactly 0 and 1, hence an exact copy (shift).
    """
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, h, 1)
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, w)
    # border padding = clamping the sample position into the frame
    px = (xs + flow[:, 0]).clamp(0, w - 1)
    py = (ys + flow[:, 1]).clamp(0, h - 1)
    x0, y0 = px.detach().floor(), py.detach().floor()
    ax, ay = (px - x0).flatten(1).unsqueeze(1), (py - y0).flatten(1).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    source = source.to(torch.promote_types(source.dtype, flow.dtype))

    def at(y, x):
        index = (y * w + x).flatten(1).unsqueeze(1).expand(-1, source.shape[1], -1)
        return source.gather(2, index)

    top = at(y0, x0) * (1 - ax) + at(y0, x1) * ax
    bottom = at(y1, x0) * (1 - ax) + at(y1, x1) * ax
    return top * (1 - ay) + bottom * ay
