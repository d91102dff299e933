"""Multi-scale deformable attention (Deformable DETR), sampling done with grid_sample."""
import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights):
    """Bilinearly samples each level at the given locations and sums them with the weights.

    value: (B, Len_in, n_heads, head_dim), the levels flattened one after another.
    spatial_shapes: (n_levels, 2) of (H, W) per level.
    sampling_locations: (B, Len_q, n_heads, n_levels, n_points, 2) as (x, y) in [0, 1],
        0 and 1 being the outer edges of the map (pixel centres at (i + 0.5) / size).
    attention_weights: (B, Len_q, n_heads, n_levels, n_points).
    Returns (B, Len_q, n_heads * head_dim). Locations outside the map read zeros.
    """
    batch, _, n_heads, head_dim = value.shape
    _, len_q, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    values = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants [-1, 1] with align_corners=False, which matches the [0, 1] edge convention
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        value_l = values[level].flatten(2).transpose(1, 2).reshape(batch * n_heads, head_dim, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*heads, Len_q, points, 2)
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*heads, head_dim, Len_q, points)
    weights = attention_weights.transpose(1, 2).reshape(batch * n_heads, 1, len_q, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, n_heads * head_dim, len_q).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Each query attends to n_points sampled locations per head and level around its reference point.

    Offsets and attention weights are predicted from the query; values are projected inputs.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        # Offsets start as a fixed pattern: head h looks along direction 2*pi*h/n_heads (snapped to
        # the square's border), point p at distance p+1 pixels; weights start uniform.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query,
        reference_points,
        input_flatten,
        input_spatial_shapes,
        input_level_start_index,
        input_padding_mask=None,
    ):
        """
        query: (B, Len_q, d_model).
        reference_points: (B, Len_q, n_levels, 2) as (x, y) in [0, 1] (0, 1 = map edges).
        input_flatten: (B, Len_in, d_model), levels flattened and concatenated.
        input_spatial_shapes: (n_levels, 2) long, (H, W) per level.
        input_level_start_index: (n_levels,) start of each level in input_flatten; kept for
            the upstream call signature, the split follows input_spatial_shapes.
        input_padding_mask: (B, Len_in) bool, True at padded positions (they read as zero).
        Returns (B, Len_q, d_model).
        """
        batch, len_q, _ = query.shape
        _, len_in, _ = input_flatten.shape
        if input_spatial_shapes.shape != (self.n_levels, 2):
            raise ValueError(
                f"MSDeformAttn: input_spatial_shapes must be ({self.n_levels}, 2), "
                f"got {tuple(input_spatial_shapes.shape)}"
            )
        if int(input_spatial_shapes.prod(1).sum()) != len_in:
            raise ValueError(
                f"MSDeformAttn: input_flatten has {len_in} positions but input_spatial_shapes "
                f"{input_spatial_shapes.tolist()} sum to {int(input_spatial_shapes.prod(1).sum())}"
            )
        if reference_points.shape[-1] != 2:
            raise ValueError(
                f"MSDeformAttn: reference_points must end in (x, y), got shape {tuple(reference_points.shape)}"
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, len_in, self.n_heads, self.d_model // self.n_heads)

        offsets = self.sampling_offsets(query).view(batch, len_q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, len_q, self.n_heads, self.n_levels * self.n_points)
        # one softmax per head over all levels and points together
        weights = F.softmax(weights, -1).view(batch, len_q, self.n_heads, self.n_levels, self.n_points)

        # offsets are in pixels of each level: divide by that level's (W, H)
        normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
        locations = (
            reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        )
        out = ms_deform_attn_core(value, input_spatial_shapes, locations, weights)
        return self.output_proj(out)
