"""Backbones; importing this package registers them in detectron2's BACKBONE_REGISTRY."""
from .mit import MiT
from .swin import D2SwinTransformer

__all__ = ["D2SwinTransformer", "MiT"]
