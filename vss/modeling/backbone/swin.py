"""Swin Transformer backbone (Liu et al. 2021) as upstream Mask2Former's `D2SwinTransformer`.

Module structure and state-dict names/shapes equal upstream's, so its converted ImageNet
weights and Mask2Former checkpoints load unchanged. The numerics follow upstream's
detection/segmentation variant too (see `SwinBlock.forward`), which those checkpoints
were trained with.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import checkpoint

from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..layers import drop_path

__all__ = [
    "D2SwinTransformer",
    "PatchEmbed",
    "PatchMerging",
    "SwinBlock",
    "SwinStage",
    "WindowAttention",
    "relative_position_index",
    "shifted_window_mask",
]

# Attention logit between tokens of different shifted-window regions. Upstream's value,
# kept (rather than -inf) so outputs match its checkpoints exactly.
MASKED_LOGIT = -100.0


def window_partition(x, size):
    """(B, H, W, C), H and W multiples of `size` -> (B * windows, size * size, C);
    windows in row-major order, tokens row-major inside a window."""
    b, h, w, c = x.shape
    x = x.view(b, h // size, size, w // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, c)


def window_merge(windows, size, height, width):
    """Inverse of `window_partition`: (B * windows, size * size, C) -> (B, H, W, C)."""
    b = windows.shape[0] // ((height // size) * (width // size))
    x = windows.view(b, height // size, width // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, -1)


def relative_position_index(size):
    """(N, N) index into the (2 * size - 1)^2-row bias table for every (query, key) pair of
    a size x size window: the query-minus-key offset, row offset major, each shifted by
    size - 1 to be non-negative. Pretrained bias tables are laid out this way."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + size - 1
    dx = xs[:, None] - xs[None, :] + size - 1
    return dy * (2 * size - 1) + dx


def shifted_window_mask(height, width, window_size, shift, device=None, dtype=torch.float32):
    """Additive (windows, N, N) attention mask for the shifted windows of a height x width
    map padded to multiples of `window_size`.

    After the cyclic shift by `shift`, the last row/column of windows holds pieces of the
    map that were not adjacent (they wrapped around); a token may attend only to tokens
    of its own piece. Pieces are the 3 x 3 regions cut at `window_size` and `shift` from
    the bottom/right edge of the padded map.
    """
    padded_h = math.ceil(height / window_size) * window_size
    padded_w = math.ceil(width / window_size) * window_size

    def pieces(n):
        pos = torch.arange(n, device=device)
        return (pos >= n - window_size).long() + (pos >= n - shift).long()

    region = pieces(padded_h)[:, None] * 3 + pieces(padded_w)[None, :]
    region = window_partition(region[None, :, :, None], window_size).squeeze(-1)
    same = region[:, :, None] == region[:, None, :]
    return torch.zeros(same.shape, device=device, dtype=dtype).masked_fill(~same, MASKED_LOGIT)


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size patches -> tokens, optionally LayerNorm-ed."""

    def __init__(self, patch_size, in_chans, embed_dim, norm):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x):
        """(B, C, H, W) -> tokens (B, h * w, embed_dim) and (h, w) = ceil((H, W) / patch)."""
        p = self.patch_size
        # Zero-pad bottom/right so any image size gives whole patches.
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))
        x = self.proj(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, h, w


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned bias per relative
    position and head."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5 if qk_scale is None else qk_scale
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Persistent: upstream checkpoints carry it, so it is part of the state dict.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        """x: (B * windows, N, C); mask: additive (windows, N, N), the same for every image."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(bw // windows, windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each a residual with stochastic depth."""

    def __init__(self, dim, num_heads, window_size=7, shift=0, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        if not 0 <= shift < window_size:
            raise ValueError(f"Swin shift {shift} must be in [0, window size {window_size})")
        self.window_size = window_size
        self.shift = shift
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, height, width, attn_mask):
        """x: (B, H * W, C) row-major tokens; attn_mask: `shifted_window_mask` of the map,
        used only when this block shifts."""
        b, n, c = x.shape
        size = self.window_size
        y = self.norm1(x).view(b, height, width, c)
        # Zero-pad (after the norm) to whole windows. As upstream, the window stays fixed
        # and is shifted even on maps smaller than it, and padded tokens take part in
        # attention: its checkpoints were trained so.
        pad_h, pad_w = (-height) % size, (-width) % size
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, size), attn_mask if self.shift else None)
        y = window_merge(y, size, height + pad_h, width + pad_w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        y = y[:, :height, :width].reshape(b, n, c)
        x = x + drop_path(y, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchMerging(nn.Module):
    """Halves the resolution: concatenates each 2 x 2 neighbourhood (4C) and projects to 2C."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x, height, width):
        """(B, H * W, C) -> (B, ceil(H / 2) * ceil(W / 2), 2C); odd sizes are zero-padded."""
        b, _, c = x.shape
        x = x.view(b, height, width, c)
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # Concatenation order (row, col) = (0,0), (1,0), (0,1), (1,1): the one pretrained
        # reduction weights expect.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """`depth` blocks alternating regular and shifted windows, then optional patch merging."""

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                 drop, attn_drop, drop_paths, downsample, use_checkpoint=False):
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else self.shift, mlp_ratio,
                      qkv_bias, qk_scale, drop, attn_drop, drop_paths[j])
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x, height, width):
        """Returns the stage output (B, H * W, C) and the next stage's input with its size:
        the merged tokens, or the output itself when this stage does not merge."""
        mask = shifted_window_mask(height, width, self.window_size, self.shift, x.device, x.dtype)
        for block in self.blocks:
            if self.use_checkpoint:
                x = checkpoint.checkpoint(block, x, height, width, mask, use_reentrant=False)
            else:
                x = block(x, height, width, mask)
        if self.downsample is None:
            return x, x, height, width
        return x, self.downsample(x, height, width), (height + 1) // 2, (width + 1) // 2


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(Backbone):
    """Swin Transformer with outputs res2.. res{stages+1} (strides patch_size * 2^i,
    channels embed_dim * 2^i), each LayerNorm-ed (`norm{i}`) and returned as B x C x h x w.
    Any input size works (padded internally); `size_divisibility` is the coarsest stride."""

    # ImageNet Swin checkpoints have no output norms: a training start may lack them
    # (vss.engine.checkpoint).
    weights_may_miss = ("norm0.", "norm1.", "norm2.", "norm3.")

    @configurable
    def __init__(self, *, in_chans=3, pretrain_img_size=224, patch_size=4, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.3, ape=False, patch_norm=True,
                 out_features=("res2", "res3", "res4", "res5"), use_checkpoint=False):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"MODEL.SWIN.DEPTHS {list(depths)} and MODEL.SWIN.NUM_HEADS {list(num_heads)} "
                "must have one entry per stage"
            )
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        for dim, heads in zip(dims, num_heads):
            if dim % heads:
                raise ValueError(
                    f"Swin stage width {dim} (MODEL.SWIN.EMBED_DIM {embed_dim} x 2^stage) is not "
                    f"divisible by its MODEL.SWIN.NUM_HEADS entry {heads}"
                )
        names = [f"res{i + 2}" for i in range(len(depths))]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES {unknown} not among {names}")
        self.in_chans = in_chans
        self._out_features = list(out_features)
        self._out_feature_strides = {n: patch_size * 2 ** i for i, n in enumerate(names)}
        self._out_feature_channels = dict(zip(names, dims))
        self._size_divisibility = patch_size * 2 ** (len(depths) - 1)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)
        # On the CPU explicitly so the model can also be built under a meta-device context.
        drop_paths = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            SwinStage(
                dims[i], depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, qk_scale,
                drop_rate, attn_drop_rate, drop_paths[sum(depths[:i]):sum(depths[: i + 1])],
                downsample=i < len(depths) - 1, use_checkpoint=use_checkpoint,
            )
            for i in range(len(depths))
        )
        # Every stage has its output norm whatever OUT_FEATURES says, as upstream.
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        swin = cfg.MODEL.SWIN
        return {
            "in_chans": input_shape.channels,
            "pretrain_img_size": swin.PRETRAIN_IMG_SIZE,
            "patch_size": swin.PATCH_SIZE,
            "embed_dim": swin.EMBED_DIM,
            "depths": swin.DEPTHS,
            "num_heads": swin.NUM_HEADS,
            "window_size": swin.WINDOW_SIZE,
            "mlp_ratio": swin.MLP_RATIO,
            "qkv_bias": swin.QKV_BIAS,
            "qk_scale": swin.QK_SCALE,
            "drop_rate": swin.DROP_RATE,
            "attn_drop_rate": swin.ATTN_DROP_RATE,
            "drop_path_rate": swin.DROP_PATH_RATE,
            "ape": swin.APE,
            "patch_norm": swin.PATCH_NORM,
            "out_features": swin.OUT_FEATURES,
            "use_checkpoint": swin.USE_CHECKPOINT,
        }

    @property
    def size_divisibility(self):
        return self._size_divisibility

    def forward(self, x):
        """x: normalised (B, in_chans, H, W) -> {name: (B, C, ceil(H / s), ceil(W / s))}."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"D2SwinTransformer expects a B x {self.in_chans} x H x W tensor, "
                f"got shape {tuple(x.shape)}"
            )
        x, h, w = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            pos = F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
            x = x + pos.flatten(2).transpose(1, 2)
        x = self.pos_drop(x)
        outputs = {}
        for i, stage in enumerate(self.layers):
            out, x, next_h, next_w = stage(x, h, w)
            name = f"res{i + 2}"
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(out)
                outputs[name] = out.view(-1, h, w, out.shape[-1]).permute(0, 3, 1, 2).contiguous()
            h, w = next_h, next_w
        return outputs
