"""The video meta-architecture: a backbone, a per-frame head and a temporal head.

One class serves every video model of the project. The temporal head
(`MODEL.VIDEO.TEMPORAL_HEAD`, from TEMPORAL_HEAD_REGISTRY) decides how frames relate:
MPVSS propagates key-frame masks, TV3S scans features over time. Temporal heads are
pure with respect to videos: they take a video's state and return the next one, and
this class keeps those states (see `VideoStates`), so training and streaming inference
call the same heads.

Parameter names stay flat (`backbone.*`, `sem_seg_head.*`) so per-frame checkpoints
load directly; the temporal head's are under `temporal.*`.
"""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.structures import ImageList
from detectron2.utils.registry import Registry
from torch import nn

from .video_state import VideoStates

FROZEN_MODES = ("eval", "train")

TEMPORAL_HEAD_REGISTRY = Registry("TEMPORAL_HEAD")
TEMPORAL_HEAD_REGISTRY.__doc__ = """
Temporal heads of VideoSegmentor. A head is built as `head(cfg, backbone_shape)` and has

- `losses(model, batched_inputs) -> dict` for a training batch (pairs, clips, ...);
- `infer(model, frame, state) -> (output, state)` for one frame dict of a video, where
  `state` is what it returned for the previous frame of the same video (None at the
  first frame) and `output` is {"sem_seg": K x height x width} (from
  `postprocess.sem_seg_output`: {"sem_seg_labels": height x width} inside `labels_only()`);
- `frame_plan() -> FramePlan` (vss.modeling.frame_plan): the kinds of frames its inference has;
- `frame_kind(frame_idx, previous, state) -> str`: the kind of frame `frame_idx`, which `infer`
  took from the video's state `previous` (None at its first frame) to `state`;
- optionally `infer_clip(model, frames) -> list of outputs`, one forward over a clip.
`model` is the VideoSegmentor, giving access to its backbone, head and preprocessing. A head
without `frame_plan` / `frame_kind` runs, but its frames cannot be counted by kind (FLOPs per
kind, the evaluator's compute report).
"""


@META_ARCH_REGISTRY.register()
class VideoSegmentor(nn.Module):
    # What training may start without (vss.engine.checkpoint): the temporal head, from a
    # per-frame checkpoint; every head, from an ImageNet backbone. A per-frame Mask2Former
    # checkpoint's criterion buffer is not needed (the temporal head makes its own from the config).
    weights_may_miss = ("sem_seg_head.", "temporal.")
    weights_ignored = ("criterion.",)

    @configurable
    def __init__(self, *, backbone, sem_seg_head, temporal, pixel_mean, pixel_std,
                 size_divisibility=32, max_open_videos=2, trainable=(), frozen_mode="eval"):
        """
        Args:
            temporal: the temporal head (see TEMPORAL_HEAD_REGISTRY).
            size_divisibility: pad inputs to a multiple of this; < 0 uses the backbone's.
            max_open_videos: videos whose state is kept at once during inference.
            trainable: name prefixes of the parameters to train; the others are frozen.
                Empty: train all.
            frozen_mode: "eval" keeps the frozen modules in eval mode during training (BN
                running statistics, no dropout or drop path); "train" leaves them in the
                model's mode, as the MPVSS release (its frozen SyncBN normalises with batch
                statistics and updates its running statistics).
        """
        if frozen_mode not in FROZEN_MODES:
            raise ValueError(f"MODEL.VIDEO.FROZEN_MODE is {frozen_mode!r}; expected one of {FROZEN_MODES}")
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.temporal = temporal
        self.size_divisibility = backbone.size_divisibility if size_divisibility < 0 else size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.states = VideoStates(max_open_videos)
        # the kind of each frame of the latest inference call (the head's frame_kind), or None
        # for a head that declares no kinds; the evaluator counts them
        self.frame_kinds = None
        frozen = self._freeze(tuple(trainable)) if trainable else []
        self._frozen_modules = frozen if frozen_mode == "eval" else []

    def _freeze(self, prefixes):
        names = [n for n, _ in self.named_parameters()]
        unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unknown:
            raise ValueError(f"MODEL.VIDEO.TRAINABLE prefixes {unknown} match no parameter of the model")
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith(prefixes))
        # Whole frozen subtrees go to eval mode, parameter-free children (dropout, drop
        # path) included, so frozen parts behave as at inference.
        return [m for m in self.modules()
                if any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())]

    def train(self, mode=True):
        # Every mode change starts all videos afresh: an evaluation replays videos from their
        # first frame, and states left by an earlier one belong to other weights.
        self.reset()
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "temporal": TEMPORAL_HEAD_REGISTRY.get(cfg.MODEL.VIDEO.TEMPORAL_HEAD)(cfg, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "max_open_videos": cfg.MODEL.VIDEO.MAX_OPEN_VIDEOS,
            "trainable": cfg.MODEL.VIDEO.TRAINABLE,
            "frozen_mode": cfg.MODEL.VIDEO.FROZEN_MODE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, images):
        """Normalise a list of (3, H, W) images and pad them (bottom/right, zeros) into a batch."""
        channels = self.pixel_mean.shape[0]
        for x in images:
            if x.dim() != 3 or x.shape[0] != channels:
                raise ValueError(f"expected ({channels}, H, W) images (MODEL.PIXEL_MEAN has {channels} "
                                 f"values), got an image of shape {tuple(x.shape)}")
        images = [(x.to(self.device) - self.pixel_mean) / self.pixel_std for x in images]
        return ImageList.from_tensors(images, self.size_divisibility)

    def reset(self):
        """Drop every video's state: the next frame starts a new video."""
        self.states.reset()

    def forward(self, batched_inputs):
        if self.training:
            return self.temporal.losses(self, batched_inputs)
        outputs, kinds = [], []
        declares_kinds = hasattr(self.temporal, "frame_kind")
        for frame in batched_inputs:
            for key in ("video_id", "frame_idx"):
                if key not in frame:
                    raise ValueError(f"video inference needs '{key}' in every input "
                                     f"(got keys {sorted(frame)} for {frame.get('file_name', 'a frame')})")
            previous = self.states.get(frame["video_id"], frame["frame_idx"])
            output, state = self.temporal.infer(self, frame, previous)
            self.states.put(frame["video_id"], frame["frame_idx"], state)
            if declares_kinds:
                kinds.append(self.temporal.frame_kind(frame["frame_idx"], previous, state))
            outputs.append(output)
        self.frame_kinds = kinds if declares_kinds else None
        return outputs
