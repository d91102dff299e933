"""Mask2Former's multi-scale masked-attention transformer decoder.

Learnable queries attend to one pixel-decoder level per layer (cycling 1/32, 1/16, 1/8),
each cross-attention restricted to the foreground of the previous layer's mask prediction.
Parameter names follow upstream Mask2Former so its checkpoints load unchanged.
"""
import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

from .position_encoding import PositionEmbeddingSine

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for Mask2Former transformer decoders, called as
`decoder(cfg, in_channels, mask_classification)`.
"""


def build_transformer_decoder(cfg, in_channels, mask_classification=True):
    """The decoder named by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)


def _xavier_init(module):
    # upstream initialises every matrix of the decoder layers this way
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _with_pos(x, pos):
    return x if pos is None else x + pos


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries with a residual and LayerNorm (post-norm unless normalize_before)."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt, tgt_mask=None, tgt_key_padding_mask=None, query_pos=None):
        """tgt, query_pos: (Q, B, C) sequence-first."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = _with_pos(x, query_pos)
        out = self.self_attn(q, k, value=x, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)[0]
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Queries attend to flattened image features, optionally masked; residual and LayerNorm."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt, memory, memory_mask=None, memory_key_padding_mask=None, pos=None, query_pos=None):
        """tgt: (Q, B, C); memory, pos: (HW, B, C); memory_mask: (B * heads, Q, HW) bool, True = blocked."""
        x = self.norm(tgt) if self.normalize_before else tgt
        out = self.multihead_attn(
            query=_with_pos(x, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_key_padding_mask,
        )[0]
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block with a residual and LayerNorm."""

    def __init__(self, d_model, dim_feedforward=2048, dropout=0.0, normalize_before=False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt):
        x = self.norm(tgt) if self.normalize_before else tgt
        out = self.linear2(self.dropout(F.relu(self.linear1(x))))
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's decoder: `dec_layers` blocks of masked cross-attention, self-attention, FFN.

    Makes dec_layers + 1 predictions: one from the learnable queries, then one after each
    block; the last is the output, the others are auxiliary (deep supervision).
    """

    num_feature_levels = 3

    @configurable
    def __init__(
        self,
        in_channels,
        mask_classification=True,
        *,
        num_classes,
        hidden_dim,
        num_queries,
        nheads,
        dim_feedforward,
        dec_layers,
        pre_norm,
        mask_dim,
        enforce_input_project,
        dropout=0.0,
    ):
        """
        Args:
            in_channels: channels of each multi-scale feature level.
            mask_classification: must be True (class logits are needed for semantic inference).
            num_classes: K; the class head predicts K + 1 logits (the last is "no object").
            dec_layers: number of decoder blocks (the config's DEC_LAYERS minus one).
            mask_dim: channels of the per-pixel mask features.
            enforce_input_project: project the levels by a 1x1 conv even when
                in_channels == hidden_dim.
            dropout: dropout inside the decoder blocks. Upstream Mask2Former fixes it to 0
                and ignores MODEL.MASK_FORMER.DROPOUT here, so from_config does too.
        """
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder: mask_classification=False is not supported")
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)

        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=dropout, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=dropout, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=dropout, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # initial query content
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # query positional embedding
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)

        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # the first of the DEC_LAYERS predictions comes from the learnable queries alone
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
        }

    def forward(self, x, mask_features):
        """
        Args:
            x: list of 3 feature maps (B, in_channels, Hi, Wi), coarsest (1/32) first.
            mask_features: (B, mask_dim, H, W) per-pixel embeddings (1/4 of the input).

        Returns:
            dict with
            "pred_logits": (B, Q, K + 1) class logits of the last prediction;
            "pred_masks": (B, Q, H, W) mask logits of the last prediction;
            "aux_outputs": list of dec_layers dicts with the earlier predictions, in order;
            "queries": (B, Q, C) batch-first final queries after decoder_norm (what
                `predict` maps to logits; MPVSS starts its flow queries from them);
            "mask_features": the input mask_features.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(
                f"MultiScaleMaskedTransformerDecoder: expected {self.num_feature_levels} levels, got {len(x)}"
            )
        src, pos, sizes = [], [], []
        for i, feat in enumerate(x):
            sizes.append(feat.shape[-2:])
            # sequence-first (HW, B, C), as nn.MultiheadAttention expects
            pos.append(self.pe_layer(feat).flatten(2).permute(2, 0, 1))
            level = self.input_proj[i](feat).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.permute(2, 0, 1))

        batch = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        queries, class_logits, mask_logits = self._predict(output, mask_features)
        predictions = [(class_logits, mask_logits)]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            attn_mask = self.attention_mask(mask_logits, sizes[level])
            output = self.transformer_cross_attention_layers[i](
                output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_embed
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
            output = self.transformer_ffn_layers[i](output)
            queries, class_logits, mask_logits = self._predict(output, mask_features)
            predictions.append((class_logits, mask_logits))

        return {
            "pred_logits": class_logits,
            "pred_masks": mask_logits,
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]],
            "queries": queries,
            "mask_features": mask_features,
        }

    def _predict(self, output, mask_features):
        queries = self.decoder_norm(output).transpose(0, 1)
        return (queries, *self.predict(queries, mask_features))

    def predict(self, queries, mask_features):
        """Class and mask logits of normalised queries.

        Args:
            queries: (B, Q, C) decoder output after decoder_norm.
            mask_features: (B, mask_dim, H, W).
        Returns:
            class logits (B, Q, K + 1) and mask logits (B, Q, H, W).
        """
        class_logits = self.class_embed(queries)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), mask_features)
        return class_logits, mask_logits

    def attention_mask(self, mask_logits, size):
        """Cross-attention mask of the next block: (B * heads, Q, h * w) bool, True = blocked.

        A query may only attend where its previous mask, resized to the level, has
        probability >= 0.5. A query whose mask is empty there attends everywhere instead
        (a fully blocked row would make the softmax undefined). No gradient flows through it.
        """
        resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
        blocked = resized.sigmoid().flatten(2) < 0.5
        blocked = blocked.unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
        blocked[blocked.all(-1)] = False
        return blocked.detach()
