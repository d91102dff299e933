"""SegFormer's all-MLP decode head (Xie et al. 2021), the per-frame decoder TV3S builds on.

Every backbone level is projected to `embed_dim` channels per pixel, upsampled to the finest
level (1/4 of the image for MiT), concatenated coarsest first and fused by a 1x1 conv + norm
+ ReLU; a 1x1 conv classifies the fused map. Parameter names equal the official release's
decode head (`linear_c1.proj`, `linear_fuse.conv`, `linear_fuse.bn`, `linear_pred`), so its
`decode_head.*` weights load under `sem_seg_head.*`. The official head also carries a
`conv_seg` classifier from its base class that its forward never uses; it is left out.

The temporal TV3S head consumes `forward_features` (the fused map) and reuses `predict`
for its per-frame auxiliary prediction; `forward` is detectron2's semantic-head contract, so
`SemanticSegmentor` with this head is the per-frame SegFormer baseline.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from .finite import LOGITS_CAUSE, check_finite

__all__ = ["SegFormerHead", "LevelEmbed", "FuseConv", "cross_entropy", "init_predictor"]

LOSS_AVERAGES = ("valid", "all")
PREDICTOR_INITS = ("normal", "pytorch")


def check_choice(value, choices, key):
    if value not in choices:
        raise ValueError(f"{key} must be one of {choices}, got {value!r}")
    return value


def cross_entropy(logits, targets, ignore_value, average="valid"):
    """Cross-entropy of `logits` upsampled (bilinear) to the size of `targets` (N, H, W), summed
    over the non-ignored pixels and divided by their number ("valid"; 0 when there are none)
    or by the number of all pixels, ignored and padded ones included ("all": mmseg 0.11's mean,
    `avg_non_ignore` did not exist yet)."""
    # at least float32: half-precision upsampling and cross-entropy lose too much under AMP.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="sum")
    if average == "all":
        return total / targets.numel()
    return total / (targets != ignore_value).sum().clamp(min=1)


def init_predictor(conv, init):
    """Initialise a 1x1 classifier: "normal" draws N(0, 0.01) weights and zeroes the bias (every
    class starts near-equally likely); "pytorch" keeps nn.Conv2d's own init."""
    if init == "normal":
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)


class LevelEmbed(nn.Module):
    """Per-pixel linear projection of one backbone level: (N, C, h, w) -> (N, E, h, w)."""

    def __init__(self, in_channels, embed_dim):
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x):
        n, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)


class FuseConv(nn.Module):
    """1x1 conv -> norm -> ReLU. The norm is called `bn` whatever its type, as in the
    official checkpoints; without a norm the conv gets a bias instead."""

    def __init__(self, in_channels, out_channels, norm):
        super().__init__()
        bn = get_norm(norm, out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=bn is None)
        self.bn = bn
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x)


@SEM_SEG_HEADS_REGISTRY.register()
class SegFormerHead(nn.Module):
    @configurable
    def __init__(self, input_shape, *, num_classes, embed_dim=256, norm="BN", dropout=0.1,
                 loss_weight=1.0, ignore_value=255, loss_average="valid", predictor_init="normal"):
        """
        Args:
            input_shape: {name: ShapeSpec} of the levels to fuse; the finest (smallest
                stride) becomes `linear_c1`, the next `linear_c2`, ...
            num_classes: classifier outputs.
            embed_dim: channels of every projected level and of the fused map.
            norm: detectron2 norm name of the fusion conv ("BN", "SyncBN", "naiveSyncBN", "GN",
                "" for none).
            dropout: Dropout2d probability before the classifier.
            loss_weight: factor on the cross-entropy loss.
            ignore_value: label value excluded from the loss.
            loss_average: "valid" or "all", see `cross_entropy`.
            predictor_init: "normal" or "pytorch", see `init_predictor`.
        """
        super().__init__()
        if not input_shape:
            raise ValueError("SegFormerHead needs at least one input feature (MODEL.SEM_SEG_HEAD.IN_FEATURES)")
        levels = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in levels]
        self.common_stride = levels[0][1].stride
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value
        self.loss_average = check_choice(loss_average, LOSS_AVERAGES, "MODEL.SEM_SEG_HEAD.LOSS_AVERAGE")
        for i, (_, shape) in enumerate(levels):
            self.add_module(f"linear_c{i + 1}", LevelEmbed(shape.channels, embed_dim))
        self.linear_fuse = FuseConv(len(levels) * embed_dim, embed_dim, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)
        init_predictor(self.linear_pred, check_choice(predictor_init, PREDICTOR_INITS,
                                                      "MODEL.SEM_SEG_HEAD.PREDICTOR_INIT"))

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not backbone outputs "
                             f"{sorted(input_shape)}")
        return {
            "input_shape": {name: input_shape[name] for name in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "embed_dim": head.EMBED_DIM,
            "norm": head.NORM,
            "loss_weight": head.LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
            "loss_average": head.LOSS_AVERAGE,
            "predictor_init": head.PREDICTOR_INIT,
        }

    def forward_features(self, features):
        """{name: (N, C_i, h_i, w_i)} -> fused map (N, embed_dim, h_1, w_1) at the finest
        level's size."""
        size = features[self.in_features[0]].shape[-2:]
        levels = []
        for i, name in enumerate(self.in_features):
            x = getattr(self, f"linear_c{i + 1}")(features[name])
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            levels.append(x)
        # Coarsest first: the channel order the official fusion weights expect.
        return self.linear_fuse(torch.cat(levels[::-1], dim=1))

    def predict(self, fused):
        """Fused map -> class logits (N, num_classes, h_1, w_1)."""
        return self.linear_pred(self.dropout(fused))

    def forward(self, features, targets=None):
        """Training: (None, {"loss_sem_seg"}) against `targets` (N, H, W) long. Inference:
        (logits upsampled by the finest stride, i.e. to the padded image size, {})."""
        logits = self.predict(self.forward_features(features))
        # detectron2's SemanticSegmentor passes no inputs down: the rows are named by index
        check_finite(logits, "the class logits", None, LOGITS_CAUSE)
        if self.training:
            if targets is None:
                raise ValueError("SegFormerHead needs targets (the batch's 'sem_seg') in training")
            return None, self.losses(logits, targets)
        logits = F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        return logits, {}

    def losses(self, logits, targets):
        loss = cross_entropy(logits, targets, self.ignore_value, self.loss_average)
        return {"loss_sem_seg": loss * self.loss_weight}
