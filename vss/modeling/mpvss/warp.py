"""Backward warping of key-frame mask logits with per-query flow (MPVSS mask propagation).

Convention: `flow[b, q, :, y, x]` = (dx, dy) in pixels of the flow grid says where the
current frame's pixel (x, y) was in the key frame, so the warped mask at p samples the
key frame's mask at p + flow(p) (bilinear, border padding: pixels whose source lies
outside the key frame take the nearest border value).

Two ways to do it (MODEL.MPVSS.WARP):

- "exact" (default): samples taken in pixel coordinates, so zero flow returns the key
  frame's masks exactly and an integer flow is an exact shift. The flow is resized to
  the masks' grid and its dx, dy scaled by the width and height ratios.
- "release": the official release's warp (mmtrack/core/motion/flow.py `flow_warp_feats`,
  called by O: mask2former/mpvss.py:182-185): the flow is resized by the one factor
  s = mask width / flow width (bilinear, align_corners False) and multiplied by s; the
  grid (x + dx) / W * 2 - 1, (y + dy) / H * 2 - 1 is sampled by grid_sample with
  align_corners=True and border padding. Dividing by W while aligning corners puts
  the sample at (x + dx) * (W - 1) / W: even zero flow moves every mask by up to a
  pixel. An official checkpoint was trained and evaluated with it.
"""
import torch
from torch.nn import functional as F

__all__ = ["WARPS", "shared_flow", "upsample_flow", "warp_masks"]

WARPS = ("exact", "release")


def shared_flow(flow):
    """Flow (B, Q, 2, hf, wf) -> (B, 1, 2, hf, wf) where it is one map expanded over the queries
    (a pixel flow, see FlowEstimator.forward), else unchanged: such a flow is warped with once."""
    return flow[:, :1] if flow.shape[1] > 1 and flow.stride(1) == 0 else flow


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


def warp_masks(mask_logits, flow, mode="exact"):
    """Warp key-frame mask logits to the current frame, one flow map per query.

    Args:
        mask_logits: (B, Q, h, w) key-frame mask logits, or (B, Q, P, h, w) for P
            predictions of the same queries (Mask2Former's deep-supervision outputs),
            all moved by their query's flow.
        flow: (B, Q, 2, hf, wf) backward flow (channel 0 = dx, 1 = dy) in pixels of its
            own grid, or (B, 1, 2, hf, wf) for one flow shared by every query (pixel-wise
            optical flow). "exact": any grid size (resized to h x w, see `upsample_flow`);
            "release": w / wf times the grid must be h x w, as the release requires.
        mode: one of WARPS (see the module docstring).
    Returns:
        the warped logits, shaped like `mask_logits`.
    """
    if mode not in WARPS:
        raise ValueError(f"warp_masks: MODEL.MPVSS.WARP must be one of {WARPS}, got {mode!r}")
    if mask_logits.dim() not in (4, 5):
        raise ValueError(f"warp_masks: mask_logits must be (B, Q, h, w) or (B, Q, P, h, w), "
                         f"got {tuple(mask_logits.shape)}")
    b, q = mask_logits.shape[:2]
    h, w = mask_logits.shape[-2:]
    if flow.dim() != 5 or flow.shape[0] != b or flow.shape[1] not in (1, q) or flow.shape[2] != 2:
        raise ValueError(f"warp_masks: flow must be (B={b}, Q={q} or 1, 2, hf, wf) to match mask_logits "
                         f"{tuple(mask_logits.shape)}, got {tuple(flow.shape)}")
    flow = shared_flow(flow)
    # at least float32 even under AMP: half precision cannot address pixels of a wide frame
    flow = flow.flatten(0, 1).to(torch.promote_types(flow.dtype, torch.float32))
    source = mask_logits.reshape(flow.shape[0], -1, h, w)
    source = source.to(torch.promote_types(source.dtype, flow.dtype))
    if mode == "exact":
        warped = _bilinear_gather(source.flatten(2), upsample_flow(flow, (h, w)), h, w)
    else:
        warped = _release_grid_sample(source, flow)
    return warped.to(mask_logits.dtype).reshape(mask_logits.shape)


def _release_grid_sample(source, flow):
    """The release's warp of `source` (N, C, h, w) by `flow` (N, 2, hf, wf) (module docstring).

    Every channel is sampled with the same grid, as the release warps each prediction
    (channel) separately with one flow.
    """
    h, w = source.shape[-2:]
    scale = float(w) / flow.shape[-1]
    flow = F.interpolate(flow, scale_factor=scale, mode="bilinear", align_corners=False) * scale
    if tuple(flow.shape[-2:]) != (h, w):
        raise ValueError(f"warp_masks (MODEL.MPVSS.WARP 'release'): the flow grid {tuple(flow.shape[-2:])} "
                         f"(resized by the width ratio {scale:g}) does not cover the {h}x{w} masks; the release's "
                         "warp needs flow and masks of one aspect (frames padded to MODEL.MOTION.SIZE_DIVISIBILITY)")
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device), torch.arange(w, device=flow.device), indexing="ij")
    grid = torch.stack((xs, ys)).to(flow)[None] + flow
    grid = torch.stack((grid[:, 0] / w * 2 - 1, grid[:, 1] / h * 2 - 1), dim=-1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)


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

    def at(y, x):
        index = (y * w + x).flatten(1).unsqueeze(1).expand(-1, source.shape[1], -1)
        return source.gather(2, index)

    top = at(y0, x0) * (1 - ax) + at(y0, x1) * ax
    bottom = at(y1, x0) * (1 - ax) + at(y1, x1) * ax
    return top * (1 - ay) + bottom * ay
