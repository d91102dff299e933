"""Models. Importing registers the backbones, heads and meta-architectures with detectron2."""
from . import backbone, mask2former, segformer_head  # noqa: F401  (registration side effects)
from .video_segmentor import TEMPORAL_HEAD_REGISTRY, VideoSegmentor
from .video_state import VideoStates

from . import mpvss  # noqa: F401,E402  (temporal heads register into TEMPORAL_HEAD_REGISTRY; FlowNetS)
from . import tv3s  # noqa: F401,E402
