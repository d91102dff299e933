"""Mask2Former's segmentation head: pixel decoder followed by the transformer decoder."""
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .transformer_decoder import build_transformer_decoder


def build_pixel_decoder(cfg, input_shape):
    """The pixel decoder named by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r}: a pixel decoder needs "
            "forward_features(features) -> (mask_features, encoder_features, multi_scale_features)"
        )
    return model


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """Backbone features -> pixel decoder -> masked transformer decoder -> query predictions."""

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        num_classes,
        pixel_decoder,
        loss_weight=1.0,
        ignore_value=-1,
        transformer_predictor,
    ):
        """
        Args:
            input_shape: {name: ShapeSpec} of the backbone features the pixel decoder reads.
            num_classes: K, the number of semantic classes.
            pixel_decoder: module with forward_features (see build_pixel_decoder).
            loss_weight, ignore_value: upstream head attributes, kept for callers; the set
                criterion weighs its own losses.
            transformer_predictor: decoder called as predictor(multi_scale_features, mask_features).
        """
        super().__init__()
        self.in_features = [k for k, _ in sorted(input_shape.items(), key=lambda kv: kv[1].stride)]
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not backbone outputs {sorted(input_shape)}"
            )
        # the multi-scale decoder reads the pixel decoder's levels, which all have CONVS_DIM channels
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if in_feature != "multi_scale_pixel_decoder":
            raise ValueError(
                "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE must be 'multi_scale_pixel_decoder' "
                f"(the only input the masked decoder takes), got {in_feature!r}"
            )
        input_shape = {k: v for k, v in input_shape.items() if k in head.IN_FEATURES}
        return {
            "input_shape": input_shape,
            "num_classes": head.NUM_CLASSES,
            "ignore_value": head.IGNORE_VALUE,
            "loss_weight": head.LOSS_WEIGHT,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": build_transformer_decoder(cfg, head.CONVS_DIM, mask_classification=True),
        }

    def forward(self, features):
        """features: {name: (B, C, H, W)} backbone outputs -> the predictor's output dict."""
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features)
