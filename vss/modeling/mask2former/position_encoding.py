"""Sine positional encoding of a feature map (DETR / Mask2Former form)."""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Encodes each pixel's (y, x) position with sines and cosines of several frequencies.

    Maps (B, C, H, W) to (B, 2 * num_pos_feats, H, W): the first num_pos_feats channels
    encode y, the last num_pos_feats encode x. Within each half, even channels are sines
    and odd channels cosines, and channels 2k and 2k+1 share the frequency
    temperature ** (2k / num_pos_feats). Only the shape (and mask) of the input matters.
    """

    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=2 * math.pi):
        super().__init__()
        if num_pos_feats % 2:
            # sines and cosines come in pairs sharing one frequency
            raise ValueError(f"PositionEmbeddingSine: num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale  # positions span [0, scale] when normalize=True

    def forward(self, x, mask=None):
        """mask: optional (B, H, W) bool, True at padded pixels, which do not advance positions."""
        if mask is None:
            mask = torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
