"""NaN or infinite model outputs stop the run where they appear, naming the frames.

Left alone they surface far away: a NaN flow becomes the index -2**63 in the warp's gather,
NaN logits a failed Hungarian matching or a NaN loss without a frame. One `isfinite().all()`
per output tensor is the whole cost of a healthy run; the frames are looked up only on failure.
"""
import torch

__all__ = ["FLOW_CAUSE", "LOGITS_CAUSE", "NonFiniteError", "check_finite"]

FLOW_CAUSE = ("a diverged training, or a motion encoder pretrained with other MODEL.MOTION.ENCODER_* settings "
              "than this config's (MODEL.MOTION.WEIGHTS)")
LOGITS_CAUSE = ("a diverged training (try a lower SOLVER.BASE_LR or SOLVER.CLIP_GRADIENTS), or MODEL.WEIGHTS "
                "from a model of another config")


class NonFiniteError(ValueError, FloatingPointError):
    """A model output holds NaN or infinite values. A ValueError as well: the entry points end
    with its one line, which names what to fix (the weights or the training's settings)."""


def frame_name(frame):
    """How an input dict is named in errors: "video V frame F", else its file name."""
    if "video_id" in frame and "frame_idx" in frame:
        return f"video {frame['video_id']!r} frame {frame['frame_idx']}"
    return frame.get("file_name", "a frame without video_id, frame_idx or file_name")


def check_finite(values, what, frames, cause):
    """Raise NonFiniteError unless every value of `values` is finite.

    Args:
        values: a tensor whose first dimension runs over `frames` (one row per input dict).
        what: what the values are, for the message ("the flow", "the class logits").
        frames: the input dicts the rows belong to (see `frame_name`), or None where the caller
            does not see them (a head under detectron2's SemanticSegmentor): rows named by index.
        cause: the likely cause, for the message.
    """
    if bool(torch.isfinite(values).all()):
        return
    rows = (~torch.isfinite(values.detach())).reshape(len(values), -1).any(1).nonzero().flatten().tolist()
    names = ", ".join(f"image {i} of the batch" if frames is None else frame_name(frames[i]) for i in rows)
    raise NonFiniteError(f"{what} of {names} holds NaN or infinite values; likely cause: {cause}")
