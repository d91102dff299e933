"""Key frames: the cache a video carries from its latest key frame, and the policy that
decides which frames are key frames (full Mask2Former) and which are propagated.

Fixed policy (the paper's): a key frame every `interval` frames counted from the video's
first frame, i.e. frame_idx % interval == 0 for a video starting at 0. It is written as
"at least `interval` frames after the last key frame", which is the same schedule for a
video read frame by frame and never propagates further than `interval - 1` frames when
a caller skips frames.

Adaptive policy (ours; the paper only uses the fixed one): propagated masks lose
confidence as the scene drifts from the key frame, so each propagated frame measures
its confidence (`mask_confidence`) and, when it falls below `min_confidence_ratio`
times the key frame's own, the NEXT frame becomes a key frame. Deciding one frame late
means no frame is computed twice; `interval` still bounds the distance to the key frame.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F


def mask_confidence(class_logits, mask_logits):
    """Mean over pixels of the top class share of Mask2Former's semantic scores.

    Args:
        class_logits: (Q, K + 1) class logits ("no object" last).
        mask_logits: (Q, h, w) mask logits (any resolution; 1/4 of the frame is enough).
    Returns:
        a float in [1/K, 1]: 1 when every pixel's score mass is on one class.
    """
    probs = F.softmax(class_logits.float(), dim=-1)[:, :-1]
    scores = torch.einsum("qc,qhw->chw", probs, mask_logits.float().sigmoid())
    share = scores.max(0).values / scores.sum(0).clamp(min=1e-6)
    return float(share.mean())


@dataclass(frozen=True)
class KeyFrameCache:
    """What a video carries from its latest key frame to the frames propagated from it.

    Immutable: the propagation head returns a new cache per frame (`dataclasses.replace`).

    Attributes:
        frame_idx: the key frame's frame_idx (frames since the key = current - this).
        image: (3, Hp, Wp) the key frame as fed to the model (float, 0-255), zero-padded as
            the model pads its input: the flow module's reference image.
        image_size: (h, w) of the key frame inside the padding.
        queries: (Q, C) the key frame's final Mask2Former queries (after decoder_norm).
        class_logits: (Q, K + 1) the key frame's class logits, reused by every propagated frame.
        mask_logits: (Q, hm, wm) the key frame's final mask logits (1/4 of the padded frame).
        key_confidence: `mask_confidence` of the key frame (adaptive policy only, else None).
        last_confidence: `mask_confidence` of the latest propagated frame; None right
            after the key frame or without the adaptive policy.
    """

    frame_idx: int
    image: torch.Tensor
    image_size: tuple
    queries: torch.Tensor
    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    key_confidence: Optional[float] = None
    last_confidence: Optional[float] = None

    @property
    def padded_size(self):
        """(Hp, Wp) of the padded frame, which the masks and the flow cover."""
        return tuple(self.image.shape[-2:])


@dataclass(frozen=True)
class KeyFramePolicy:
    """
    Attributes:
        interval: fixed policy: frames from one key frame to the next; adaptive policy:
            the longest a key frame is propagated (>= 1; 1 makes every frame a key frame).
        adaptive: also start a key frame after a propagated frame of low confidence.
        min_confidence_ratio: adaptive threshold on (propagated confidence) /
            (key-frame confidence), in (0, 1].
    """

    interval: int = 5
    adaptive: bool = False
    min_confidence_ratio: float = 0.9

    def __post_init__(self):
        if self.interval < 1:
            raise ValueError(f"MODEL.MPVSS.KEY_INTERVAL must be >= 1, got {self.interval}")
        if not 0.0 < self.min_confidence_ratio <= 1.0:
            raise ValueError(f"MODEL.MPVSS.KEY_MIN_CONFIDENCE_RATIO must be in (0, 1], "
                             f"got {self.min_confidence_ratio}")

    def is_key(self, frame_idx, cache):
        """Whether frame `frame_idx` is a key frame, given the video's KeyFrameCache (None
        at the video's first frame)."""
        if cache is None or frame_idx - cache.frame_idx >= self.interval:
            return True
        if self.adaptive and cache.last_confidence is not None:
            return cache.last_confidence < self.min_confidence_ratio * cache.key_confidence
        return False
