"""Mask2Former's pixel decoder: a deformable-attention encoder over the coarse levels plus an FPN."""
import math
from typing import Callable, Dict, List, Optional, Union

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from vss.modeling.mask2former.ms_deform_attn import MSDeformAttn
from vss.modeling.mask2former.position_encoding import PositionEmbeddingSine


class MSDeformAttnEncoderLayer(nn.Module):
    """Deformable self-attention then a ReLU FFN, each followed by residual add and LayerNorm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        # positions enter the queries (where to look, how much) but not the values (what is read)
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """A stack of encoder layers sharing one set of reference points (the pixel centres)."""

    def __init__(self, layers: List[MSDeformAttnEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes, valid_ratios, device):
        """Pixel centres of every level, as (B, sum H*W, n_levels, 2) (x, y) fractions of each level.

        Centres are normalised by the valid (unpadded) extent of their own level, then scaled
        by each level's valid ratio, so a point keeps its place in the content across levels.
        """
        points = []
        for level, (h, w) in enumerate(spatial_shapes.tolist()):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * w)
            points.append(torch.stack((ref_x, ref_y), -1))
        points = torch.cat(points, 1)
        return points[:, :, None] * valid_ratios[:, None]

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos, padding_mask=None):
        reference_points = self.reference_points(spatial_shapes, valid_ratios, src.device)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return out


class MSDeformAttnTransformer(nn.Module):
    """Flattens the levels into one sequence, adds a learned per-level embedding, runs the encoder."""

    def __init__(
        self, d_model=256, nhead=8, num_encoder_layers=6, dim_feedforward=1024, dropout=0.1,
        num_feature_levels=4, enc_n_points=4,
    ):
        super().__init__()
        self.d_model = d_model
        self.encoder = MSDeformAttnEncoder(
            [
                MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points)
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # the attention layers' own init (offset pattern, zero weights) overrides the blanket xavier
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def valid_ratio(mask):
        """(B, H, W) padding mask (True = padded) -> (B, 2) unpadded fraction as (w, h)."""
        _, h, w = mask.shape
        valid_h = torch.sum(~mask[:, :, 0], 1)
        valid_w = torch.sum(~mask[:, 0, :], 1)
        return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)

    def forward(self, srcs, pos_embeds, masks=None):
        """
        srcs, pos_embeds: per level (B, d_model, H_l, W_l).
        masks: optional per level (B, H_l, W_l) bool, True at padding (bottom/right padding);
            None means every pixel is content, as Mask2Former uses it.
        Returns (memory (B, sum H*W, d_model), spatial_shapes (L, 2) long, level_start_index (L,)).
        """
        if len(srcs) != self.level_embed.shape[0]:
            raise ValueError(
                f"MSDeformAttnTransformer: built for {self.level_embed.shape[0]} levels, got {len(srcs)}"
            )
        if masks is None:
            masks = [torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool) for x in srcs]
        src_flat, mask_flat, pos_flat, shapes = [], [], [], []
        for level, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append(src.shape[-2:])
            src_flat.append(src.flatten(2).transpose(1, 2))
            mask_flat.append(mask.flatten(1))
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        src_flat = torch.cat(src_flat, 1)
        mask_flat = torch.cat(mask_flat, 1)
        pos_flat = torch.cat(pos_flat, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flat.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self.valid_ratio(m) for m in masks], 1)
        memory = self.encoder(src_flat, spatial_shapes, level_start_index, valid_ratios, pos_flat, mask_flat)
        return memory, spatial_shapes, level_start_index


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Per-pixel embeddings and a feature pyramid for Mask2Former's transformer decoder.

    The coarse levels (transformer_in_features, e.g. res3-res5) are projected to conv_dim and
    refined jointly by deformable self-attention; the finer levels down to common_stride
    (e.g. res2) are added FPN-style on top. forward_features returns
    (mask_features at common_stride with mask_dim channels,
     the encoder output of the coarsest level,
     the 3 coarsest outputs from coarse to fine, for the decoder's cross-attention).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
        transformer_in_features: List[str],
        common_stride: int,
        transformer_n_points: int = 4,
    ):
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: transformer_in_features {missing} are not among the "
                f"input features {sorted(input_shape)}"
            )
        if conv_dim % 32:
            raise ValueError(f"MSDeformAttnPixelDecoder: conv_dim ({conv_dim}) must be divisible by 32 for GroupNorm(32)")

        # all inputs, finest first (res2 ... res5)
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]
        feature_channels = [v.channels for _, v in ordered]
        # the encoder's inputs, finest first
        transformer_ordered = [(k, v) for k, v in ordered if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in transformer_ordered]
        self.transformer_num_feature_levels = len(transformer_ordered)

        # one projection per encoder level, coarsest first (the order everything below uses)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for _, v in reversed(transformer_ordered)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        self.transformer = MSDeformAttnTransformer(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1, stride=1, padding=0)
        weight_init.c2_xavier_fill(self.mask_features)

        # the transformer decoder cross-attends to the 3 coarsest outputs
        self.maskformer_num_feature_levels = 3
        self.common_stride = common_stride

        finest_stride = transformer_ordered[0][1].stride
        ratio = finest_stride // common_stride
        if finest_stride % common_stride or ratio & (ratio - 1):
            raise ValueError(
                f"MSDeformAttnPixelDecoder: the finest encoder stride ({finest_stride}) must be a power-of-two "
                f"multiple of COMMON_STRIDE ({common_stride})"
            )
        self.num_fpn_levels = int(math.log2(ratio))

        # FPN convs for the levels finer than the encoder's, named from the finest (adapter_1 = res2)
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(feature_channels[: self.num_fpn_levels]):
            lateral_conv = Conv2d(
                in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            output_conv = Conv2d(
                conv_dim, conv_dim, kernel_size=3, stride=1, padding=1, bias=use_bias,
                norm=get_norm(norm, conv_dim), activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral_conv)
            weight_init.c2_xavier_fill(output_conv)
            self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # coarse-to-fine, the order of the top-down pass
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            # Upstream takes the encoder's heads from MASK_FORMER.NHEADS (the decoder's), not from
            # DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS, and fixes its FFN width at 1024 whatever
            # MASK_FORMER.DIM_FEEDFORWARD says; official checkpoints have these shapes.
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(self, features: Dict[str, torch.Tensor]):
        # deformable sampling is not reliable in half precision: run the whole decoder in float32
        device_type = features[self.in_features[0]].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_float(features)

    def _forward_float(self, features):
        srcs, pos = [], []
        for idx, name in enumerate(self.transformer_in_features[::-1]):
            x = features[name].float()
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes, _ = self.transformer(srcs, pos)

        batch = memory.shape[0]
        sizes = spatial_shapes.prod(1).tolist()
        out = [
            z.transpose(1, 2).reshape(batch, -1, h, w)
            for z, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes.tolist())
        ]

        # top-down over the finer levels: lateral + upsampled coarser output, then a 3x3 conv
        for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
            lateral = self.lateral_convs[idx](features[name].float())
            up = F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.output_convs[idx](lateral + up))

        multi_scale_features = out[: self.maskformer_num_feature_levels]
        return self.mask_features(out[-1]), out[0], multi_scale_features
