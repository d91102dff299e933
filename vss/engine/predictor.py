"""Streaming inference on raw frames, the video counterpart of detectron2's DefaultPredictor.

Frames go through the test-time path of the evaluation (FrameMapper in test mode:
same augmentation builder, CHW uint8 tensor in INPUT.FORMAT), so a video run through
the predictor gives the evaluation's predictions. Video models keep a state per video
(MPVSS key-frame cache, TV3S scan states) keyed by video_id and frame_idx; the
predictor supplies both, so state carries across calls until `reset()`.
"""
import itertools

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from ..data.augment import augment_frames, build_augmentations
from ..modeling import postprocess
from .loading import load_weights

# Ids only have to differ between the videos of one model's state store; a process-wide
# counter also keeps two predictors sharing a model apart.
_video_counter = itertools.count()


class VideoPredictor:
    """Run a model over the frames of one video at a time, one frame per call.

    Examples::

        predictor = VideoPredictor(cfg)
        for output in predictor.run(bgr_frames):   # a new video
            labels = output["sem_seg"].argmax(0)

    Attributes:
        model: the built model, in eval mode.
        metadata: metadata of cfg.DATASETS.TEST[0] (None when no test set is named).
    """

    def __init__(self, cfg, half=False, labels_only=False):
        """
        Args:
            cfg: a config as from `setup_cfg`; its weights are loaded by `load_weights` (an empty
                MODEL.WEIGHTS keeps the initialisation).
            half: run under float16 autocast; only on CUDA devices.
            labels_only: return {"sem_seg_labels": (H, W)} instead of the (K, H, W) scores, computed
                without the full-size score map (see vss.modeling.postprocess).
        """
        self.cfg = cfg.clone()  # the model may edit its config
        device = torch.device(self.cfg.MODEL.DEVICE)
        if half and device.type != "cuda":
            raise ValueError(f"half precision needs a CUDA device, but MODEL.DEVICE is {self.cfg.MODEL.DEVICE!r}")
        if self.cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.cfg.INPUT.FORMAT!r}")
        self.half = half
        self.labels_only = labels_only
        self.input_format = self.cfg.INPUT.FORMAT
        self.augmentations = build_augmentations(self.cfg, is_train=False)
        self.model = build_model(self.cfg)
        self.model.eval()
        load_weights(self.model, self.cfg, training=False)
        self.metadata = MetadataCatalog.get(self.cfg.DATASETS.TEST[0]) if self.cfg.DATASETS.TEST else None
        self.reset()

    def reset(self):
        """Start a new video: the next frame is its frame 0. Frees the model's video states."""
        self.video_id = f"predictor_video_{next(_video_counter)}"
        self.frame_idx = 0
        if hasattr(self.model, "reset"):
            self.model.reset()

    def __call__(self, frame):
        """
        Args:
            frame: the next frame of the current video, an HxWx3 uint8 numpy array in BGR
                order (as cv2.imread gives).

        Returns:
            {"sem_seg": (K, H, W) class scores} at the frame's size, or {"sem_seg_labels": (H, W)
            int64} with labels_only (models not from this package give scores either way).
        """
        if not isinstance(frame, np.ndarray):
            raise TypeError(f"expected a frame as an HxWx3 uint8 numpy array (BGR), got {type(frame).__name__}")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise ValueError(f"expected a frame as an HxWx3 uint8 numpy array (BGR) with H, W > 0, "
                             f"got {frame.dtype} array of shape {frame.shape}")
        if self.input_format == "RGB":
            frame = frame[:, :, ::-1]
        height, width = frame.shape[:2]
        (image,), _, _ = augment_frames(self.augmentations, [np.ascontiguousarray(frame)], [None], anchor=0)
        inputs = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
            "video_id": self.video_id,
            "frame_idx": self.frame_idx,
        }
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=self.half), \
                postprocess.labels_only(self.labels_only):
            output = self.model([inputs])[0]
        # Only after success: a failed frame can be retried (or skipped) without a gap.
        self.frame_idx += 1
        return output

    def run(self, frames):
        """Yield the output of each frame of `frames` (an iterable of BGR frames) in order.

        A new video starts when iteration starts; run one video at a time.
        """
        self.reset()
        for frame in frames:
            yield self(frame)
