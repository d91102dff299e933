"""MPVSS motion decoder and flow head: per-query flow maps from the motion features.

Paper section 3.3 with the official release's exact computation (OFFICIAL_CODE_FACTS
section 1.3). Parameter names, registration order and the order in which the
layers draw their random initial weights are the official ones.

1. Refinement (`refine`): flow queries and the three coarsest motion levels (conv6,
   conv5, conv4, each projected to `hidden_dim`) are concatenated into one sequence per
   layer and updated together by post-norm self-attention + FFN; layer i works on level
   i % 3 (coarsest first).
2. Pixel flow (`pixel_flow`): FlowNetS coarse-to-fine decoding from the (refined)
   levels down to conv2's resolution (1/8 of the frame), one map per frame pair.
3. Query flow (`flow_head`): each normalised flow query -> MLP -> flow embedding, whose
   dot products with a per-pixel MLP projection of conv2 give the query's (dx, dy) maps;
   a 3x3 conv fuses them with the pixel flow, query by query.

The ablations of the paper's Table 3b switch parts off (see `FlowEstimator`).
"""
import fvcore.nn.weight_init as weight_init
import torch
from torch import nn

from ..mask2former.position_encoding import PositionEmbeddingSine
from ..mask2former.transformer_decoder import MLP, FFNLayer, SelfAttentionLayer
from .motion_encoder import ConvBlock

__all__ = ["MotionDecoder", "crop_like"]


def crop_like(x, target):
    """Keep the top-left of x at target's spatial size (deconvolutions overshoot odd sizes)."""
    return x[..., : target.shape[-2], : target.shape[-1]]


FUSION_INITS = ("official", "pass_through")


def init_fusion(conv, how):
    """The fusion conv's start (see MotionDecoder's fusion_init). Pass-through: the centre
    tap maps input channel c to output c, so the pretrained pixel flow is used as it is."""
    nn.init.zeros_(conv.weight)
    if how == "official":
        nn.init.ones_(conv.bias)
        return
    nn.init.zeros_(conv.bias)
    centre = conv.kernel_size[0] // 2
    with torch.no_grad():
        for c in range(conv.out_channels):
            conv.weight[c, c, centre, centre] = 1.0


class MotionDecoder(nn.Module):
    """Motion decoder + flow head over the encoder outputs [conv2, ..., conv6].

    Parts (all on for the method; the ablations turn some off):
      attend: the query/level transformer (`refine`); off, the pixel flow decodes the raw
          encoder levels (a plain FlowNetS decoder).
      pixel_flow: the coarse-to-fine pixel-flow decoder.
      query_flow: the per-query flow head and the fusion conv.
    """

    num_levels = 3  # conv6, conv5, conv4 take part in the refinement
    # deconv5..deconv2 output channels: the method's decoder on hidden_dim-wide refined
    # levels, and FlowNetS's own widths on the raw encoder levels
    refined_deconv_channels = (128, 128, 128, 64)
    flownets_deconv_channels = (512, 256, 128, 64)

    def __init__(self, *, level_channels, hidden_dim=256, nheads=8, dim_feedforward=2048,
                 num_layers=9, num_queries=100, pre_norm=False, attend=True, pixel_flow=True,
                 query_flow=True, flow_scale=1.0, fusion_init="official"):
        """
        Args:
            level_channels: channels of conv2..conv6 (5 values).
            hidden_dim: transformer width; flow embeddings have hidden_dim channels and the
                motion map 2 * hidden_dim (the MLPs' hidden width is 2 * hidden_dim too).
            nheads, dim_feedforward, pre_norm: transformer layer settings.
            num_layers: transformer layers (paper: S=3 stages x L=3 blocks = 9).
            num_queries: flow queries (= the key frame's Mask2Former queries).
            fusion_init: start of the fusion conv: "official" (weight 0, bias 1: flow (1, 1)
                everywhere, whatever its input) or "pass_through" (its output starts equal to
                its first input: the pixel flow, or the query flow without pixel flow).
            flow_scale: the pixel flow is multiplied by this.
        """
        super().__init__()
        if len(level_channels) != 5:
            raise ValueError(f"MotionDecoder: level_channels must list conv2..conv6 (5 values), "
                             f"got {list(level_channels)}")
        if not (pixel_flow or query_flow):
            raise ValueError("MotionDecoder: at least one of pixel_flow and query_flow is needed")
        if query_flow and not attend:
            raise ValueError("MotionDecoder: query_flow needs attend=True (the flow queries come from it)")
        if fusion_init not in FUSION_INITS:
            raise ValueError(f"MODEL.MOTION.FUSION_INIT must be one of {FUSION_INITS}, got {fusion_init!r}")
        self.attend = attend
        self.use_pixel_flow = pixel_flow
        self.use_query_flow = query_flow
        self.num_queries = num_queries
        self.flow_scale = flow_scale

        c2, c3 = level_channels[:2]
        if pixel_flow:
            coarse = [hidden_dim] * 3 if attend else list(level_channels[2:])
            deconv = self.refined_deconv_channels if attend else self.flownets_deconv_channels
            self._build_pixel_flow([c2, c3, *coarse], deconv)
        if attend:
            self.transformer_self_attention_layers = nn.ModuleList()
            self.transformer_ffn_layers = nn.ModuleList()
            # built layer by layer, as the release does (O: mask2former/modeling/motion/motion_decoder.py:66-83),
            # so that a seed gives the release's initial weights
            for _ in range(num_layers):
                self.transformer_self_attention_layers.append(
                    SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm))
                self.transformer_ffn_layers.append(
                    FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm))
        if query_flow:
            self.decoder_norm = nn.LayerNorm(hidden_dim)
            self.output_head = MLP(hidden_dim, 2 * hidden_dim, hidden_dim, 3)
            self.scale_layer = MLP(c2, 2 * hidden_dim, 2 * hidden_dim, 3)
        if attend:
            self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if query_flow:
            # input: [pixel (dx, dy)] + [query (dx, dy)]
            self.fuse_layer = ConvBlock(4 if pixel_flow else 2, 2, 3, leaky=False)
            init_fusion(self.fuse_layer.conv, fusion_init)
        if attend:
            self.level_embed = nn.Embedding(self.num_levels, hidden_dim)
            self.input_proj = nn.ModuleList()
            for channels in reversed(level_channels[2:]):
                proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)

    def _build_pixel_flow(self, channels, deconv_channels):
        """FlowNetS decoder layers, official names: level k (5..2) upsamples level k+1.

        channels: conv2..conv6 (or refined) level channels; deconv_channels: deconv5..2.
        """
        x = channels[4]
        for level, out in zip((5, 4, 3, 2), deconv_channels):
            self.add_module(f"deconv{level}", ConvBlock(x, out, bias=False, transposed=True))
            self.add_module(f"predict_flow{level + 1}", ConvBlock(x, 2, 3, bias=False, leaky=False))
            self.add_module(f"upsample_flow{level}",
                            ConvBlock(2, 2, bias=False, leaky=False, transposed=True))
            x = channels[level - 2] + out + 2
        self.predict_flow = ConvBlock(x, 2, 3, bias=False, leaky=False)

    def forward(self, feats, queries=None):
        """
        Args:
            feats: encoder outputs [conv2, ..., conv6], (B, Ci, Hi, Wi), conv2 at 1/8 of the frame.
            queries: (Q, B, hidden_dim) sequence-first initial flow queries (needed when attend).
        Returns:
            (B, Q, 2, h, w) per-query flow with query_flow, else the pixel flow as
            (B, 1, 2, h, w); (h, w) = conv2's size; channel 0 = dx, 1 = dy.
        """
        if len(feats) != 5:
            raise ValueError(f"MotionDecoder: expected the 5 levels conv2..conv6, got {len(feats)}")
        c2, c3, c4, c5, c6 = feats
        if self.attend:
            queries, (c4, c5, c6) = self.refine(queries, [c4, c5, c6])
        pixel = self.pixel_flow([c2, c3, c4, c5, c6]) if self.use_pixel_flow else None
        if not self.use_query_flow:
            return pixel.unsqueeze(1)
        return self.flow_head(queries, c2, pixel)

    def refine(self, queries, levels):
        """Joint self-attention over flow queries and motion tokens.

        Args:
            queries: (Q, B, C) initial flow queries.
            levels: [conv4, conv5, conv6] encoder outputs.
        Returns:
            the final queries (Q, B, C) (before decoder_norm) and the refined levels
            [r4, r5, r6], each (B, C, h, w).
        """
        if queries is None or queries.shape[0] != self.num_queries:
            got = None if queries is None else tuple(queries.shape)
            raise ValueError(f"MotionDecoder: expected initial flow queries ({self.num_queries}, B, C), got {got}")
        src, pos, sizes = [], [], []
        for i, x in enumerate(reversed(levels)):  # coarsest (conv6) first
            sizes.append(x.shape[-2:])
            level = self.input_proj[i](x) + self.level_embed.weight[i][None, :, None, None]
            src.append(level.flatten(2).permute(2, 0, 1))  # (HW, B, C) sequence-first
            pos.append(self.pe_layer(level).flatten(2).permute(2, 0, 1))
        query_embed = self.query_embed.weight.unsqueeze(1).expand(-1, queries.shape[1], -1)
        n = queries.shape[0]
        for i, (attn, ffn) in enumerate(zip(self.transformer_self_attention_layers, self.transformer_ffn_layers)):
            lvl = i % self.num_levels
            # as officially: both embeddings are added into the stream, and the stream with
            # them is what is kept, so they accumulate over the visits of a level
            x = torch.cat([queries + query_embed, src[lvl] + pos[lvl]])
            x = ffn(attn(x))
            queries, src[lvl] = x[:n], x[n:]
        refined = [s.permute(1, 2, 0).unflatten(2, size) for s, size in zip(src, sizes)]
        return queries, refined[::-1]

    def pixel_flow(self, feats, all_levels=False):
        """Coarse-to-fine pixel flow from [conv2, conv3, x4, x5, x6] -> (B, 2, h2, w2) at conv2's size.

        all_levels: return [flow at conv2's size, then the intermediate predict_flow3..6
        outputs at conv3..conv6's sizes] instead, for FlowNetS's multi-scale training loss.
        """
        x = feats[4]
        coarse = []
        for level in (5, 4, 3, 2):
            skip = feats[level - 2]
            flow = getattr(self, f"predict_flow{level + 1}")(x)
            coarse.append(flow)
            up = crop_like(getattr(self, f"deconv{level}")(x), skip)
            flow = crop_like(getattr(self, f"upsample_flow{level}")(flow), skip)
            x = torch.cat([skip, up, flow], 1)
        flow = self.predict_flow(x) * self.flow_scale
        return [flow, *coarse[::-1]] if all_levels else flow

    def query_flow(self, queries, motion):
        """Per-query flow from final queries (Q, B, C) and conv2 features (B, C2, h, w) -> (B, Q, 2, h, w).

        Each query's map depends only on its own embedding. As officially, dx uses the
        second half of the motion map's channels and dy the first half.
        """
        emb = self.output_head(self.decoder_norm(queries))
        motion = self.scale_layer(motion.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # per pixel
        dim = emb.shape[-1]
        dx = torch.einsum("qbc,bchw->bqhw", emb, motion[:, dim:])
        dy = torch.einsum("qbc,bchw->bqhw", emb, motion[:, :dim])
        return torch.stack([dx, dy], 2)

    def flow_head(self, queries, motion, pixel=None):
        """Final per-query flow (B, Q, 2, h, w): the fusion conv over [pixel flow, query flow].

        pixel: (B, 2, h, w) pixel flow, shared by all queries (None without pixel flow).
        """
        flow = self.query_flow(queries, motion)
        b, n = flow.shape[:2]
        if pixel is not None:
            flow = torch.cat([pixel.unsqueeze(1).expand(-1, n, -1, -1, -1), flow], 2)
        return self.fuse_layer(flow.flatten(0, 1)).unflatten(0, (b, n))
