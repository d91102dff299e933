"""MPVSS: mask propagation with query-based flow."""
from .flow import FLOW_TYPES, FlowEstimator
from .motion_decoder import MotionDecoder
from .motion_encoder import MotionEncoder
from .keyframes import KeyFrameCache, KeyFramePolicy
from .propagation import MaskPropagation
from .warp import warp_masks
