"""MPVSS: mask propagation with query-based flow, and FlowNetS, the pretraining of its motion encoder.

Importing registers MaskPropagation (TEMPORAL_HEAD_REGISTRY) and FlowNetS (META_ARCH_REGISTRY).
"""
from .flow import FLOW_TYPES, FlowEstimator
from .flownets import FlowNetS
from .motion_decoder import MotionDecoder
from .motion_encoder import MotionEncoder
from .keyframes import KeyFrameCache, KeyFramePolicy
from .propagation import MaskPropagation
from .warp import warp_masks
