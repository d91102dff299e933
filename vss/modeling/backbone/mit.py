"""Mix Transformer (MiT, Xie et al. 2021), the SegFormer encoder, as a detectron2 backbone.

Four stages, each: an overlapping strided conv patch embedding, transformer blocks whose
self-attention reads keys/values from a spatially reduced map, and a LayerNorm. Module and
parameter names equal the official mmseg-layout release (`patch_embed1.proj`,
`block1.0.attn.kv`, `norm4`, ...), so its checkpoints load with only the `backbone.` prefix.
"""
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..layers import drop_path

__all__ = ["MiT", "MIT_VARIANTS", "OverlapPatchEmbed", "EfficientSelfAttention", "MixFFN", "MiTBlock"]

# Published variants: per-stage widths and depths. Heads, spatial-reduction ratios and the
# MLP ratio are the same for all of them (MiT.__init__ defaults).
MIT_VARIANTS = {
    "B0": {"embed_dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2)},
    "B1": {"embed_dims": (64, 128, 320, 512), "depths": (2, 2, 2, 2)},
    "B2": {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 6, 3)},
    "B3": {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 18, 3)},
    "B4": {"embed_dims": (64, 128, 320, 512), "depths": (3, 8, 27, 3)},
    "B5": {"embed_dims": (64, 128, 320, 512), "depths": (3, 6, 40, 3)},
}

# The transformer blocks and stage outputs use eps 1e-6; the patch-embedding and
# spatial-reduction norms keep PyTorch's 1e-5, as the released checkpoints were trained.
BLOCK_NORM_EPS = 1e-6


class OverlapPatchEmbed(nn.Module):
    """Strided conv with kernel > stride (padding k // 2), so neighbouring patches overlap,
    then LayerNorm over channels."""

    def __init__(self, in_chans, embed_dim, patch_size, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        """(B, C, H, W) -> tokens (B, h * w, embed_dim), h = ceil(H / stride) (same for w)."""
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the map shrunk by
    `sr_ratio` (a sr_ratio x sr_ratio strided conv + LayerNorm): cost N * N / sr_ratio^2."""

    def __init__(self, dim, num_heads, sr_ratio):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MiT stage width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        # Output channels [keys of all heads, values of all heads]: the checkpoint layout.
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, height, width):
        """x: (B, H * W, C) row-major tokens -> (B, H * W, C)."""
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).view(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            if height < self.sr_ratio or width < self.sr_ratio:
                raise ValueError(
                    f"MiT stage map {height}x{width} is smaller than its spatial-reduction ratio "
                    f"{self.sr_ratio}: the input image is too small (the published MiT variants "
                    "need at least 29x29 pixels)"
                )
            x = x.transpose(1, 2).reshape(b, c, height, width)
            x = self.norm(self.sr(x).flatten(2).transpose(1, 2))
        k, v = self.kv(x).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    """3x3 depthwise conv over the token map; the only place MiT sees positions (it has no
    positional embedding), which is why any input size works."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x, height, width):
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, height, width))
        return x.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc1 -> 3x3 depthwise conv -> GELU -> fc2."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x, height, width):
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class MiTBlock(nn.Module):
    """Pre-norm efficient self-attention and Mix-FFN, each a residual with stochastic depth."""

    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio, drop_path):
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x, height, width):
        x = x + drop_path(self.attn(self.norm1(x), height, width), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x), height, width), self.drop_path, self.training)


@BACKBONE_REGISTRY.register()
class MiT(Backbone):
    """Mix Transformer with outputs res2..res5 (strides 4, 8, 16, 32; channels `embed_dims`),
    returned as B x C x h x w with h = ceil(H / stride).

    Any input of at least 29x29 pixels works (the stride-4 map must cover the first stage's
    8x8 spatial reduction). `size_divisibility` is 32 nonetheless: on a padded multiple of 32
    every level is an exact downsample of the input, so the decode head's upsampling by 4
    lands exactly on the (padded) image grid.
    """

    @configurable
    def __init__(self, *, in_chans=3, embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2),
                 num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), mlp_ratio=4.0,
                 drop_path_rate=0.1, out_features=("res2", "res3", "res4", "res5")):
        super().__init__()
        if not len(embed_dims) == len(depths) == len(num_heads) == len(sr_ratios) == 4:
            raise ValueError(
                f"MiT needs 4 stages: got embed_dims {list(embed_dims)}, depths {list(depths)}, "
                f"num_heads {list(num_heads)}, sr_ratios {list(sr_ratios)}"
            )
        names = ["res2", "res3", "res4", "res5"]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"MODEL.MIT.OUT_FEATURES {unknown} not among {names}")
        self.in_chans = in_chans
        self._out_features = list(out_features)
        self._out_feature_strides = {n: 4 * 2 ** i for i, n in enumerate(names)}
        self._out_feature_channels = dict(zip(names, embed_dims))

        # On the CPU explicitly so the model can also be built under a meta-device context.
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        # All patch embeddings first, then each stage's blocks and norm: the official
        # registration order, so state-dict listings line up key for key.
        for i in range(4):
            # Stage 1 turns pixels into stride-4 tokens; later stages halve the resolution.
            patch, stride = (7, 4) if i == 0 else (3, 2)
            dim_in = in_chans if i == 0 else embed_dims[i - 1]
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(dim_in, embed_dims[i], patch, stride))
        for i in range(4):
            first = sum(depths[:i])
            self.add_module(f"block{i + 1}", nn.ModuleList(
                MiTBlock(embed_dims[i], num_heads[i], sr_ratios[i], mlp_ratio, rates[first + j])
                for j in range(depths[i])
            ))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=BLOCK_NORM_EPS))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            # He init over the fan-out (per group): GELU/attention follow every conv.
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, std=(2.0 / fan_out) ** 0.5)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        mit = cfg.MODEL.MIT
        if mit.VARIANT not in MIT_VARIANTS:
            raise ValueError(f"MODEL.MIT.VARIANT is {mit.VARIANT!r}; expected one of {sorted(MIT_VARIANTS)}")
        return {
            "in_chans": input_shape.channels,
            **MIT_VARIANTS[mit.VARIANT],
            "drop_path_rate": mit.DROP_PATH_RATE,
            "out_features": mit.OUT_FEATURES,
        }

    @property
    def size_divisibility(self):
        return 32

    def forward(self, x):
        """x: normalised (B, in_chans, H, W) -> {name: (B, C, ceil(H / s), ceil(W / s))}."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"MiT expects a B x {self.in_chans} x H x W tensor, got shape {tuple(x.shape)}")
        outputs = {}
        for i in range(4):
            x, h, w = getattr(self, f"patch_embed{i + 1}")(x)
            for block in getattr(self, f"block{i + 1}"):
                x = block(x, h, w)
            x = getattr(self, f"norm{i + 1}")(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            if f"res{i + 2}" in self._out_features:
                outputs[f"res{i + 2}"] = x
        return outputs
