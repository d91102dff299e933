"""Mask2Former (semantic segmentation), parameter names as upstream.

Importing registers MSDeformAttnPixelDecoder and MaskFormerHead (SEM_SEG_HEADS_REGISTRY),
MultiScaleMaskedTransformerDecoder (TRANSFORMER_DECODER_REGISTRY) and MaskFormer
(META_ARCH_REGISTRY).
"""
from .criterion import SetCriterion, build_criterion
from .head import MaskFormerHead, build_pixel_decoder
from .maskformer import MaskFormer
from .pixel_decoder import MSDeformAttnPixelDecoder
from .semantic import semantic_inference, semantic_outputs, semantic_postprocess, upsample_masks
from .transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    MultiScaleMaskedTransformerDecoder,
    build_transformer_decoder,
)

__all__ = [
    "SetCriterion",
    "build_criterion",
    "MaskFormerHead",
    "build_pixel_decoder",
    "MaskFormer",
    "MSDeformAttnPixelDecoder",
    "semantic_inference",
    "semantic_outputs",
    "semantic_postprocess",
    "upsample_masks",
    "TRANSFORMER_DECODER_REGISTRY",
    "MultiScaleMaskedTransformerDecoder",
    "build_transformer_decoder",
]
