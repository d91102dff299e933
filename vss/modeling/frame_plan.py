"""The kinds of frames a video model's inference has, declared by its temporal head.

A video model costs differently on different frames (MPVSS: key and propagated frames), but
has only a few kinds of frames. Each temporal head says which (`frame_plan()`) and which kind
each frame it ran was (`frame_kind(...)`, see TEMPORAL_HEAD_REGISTRY), so that the code shared
by every model (FLOP counts, the evaluator's compute report, the demo) asks the head instead of
knowing each paper's schedule. A per-frame model has one kind, FRAME.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

FRAME = "frame"


@dataclass(frozen=True)
class FramePlan:
    """
    Attributes:
        kinds: {frame_idx: name} one frame of each kind of the steady state, in a video from
            frame 0: counting these gives the cost of any frame past the video's start.
        same_as: frame_idx -> the frame of `kinds` that costs the same (None: a frame of a
            kind in `start_kinds`, e.g. a streaming model's first frame).
        period: frames whose mean cost is the model's cost per frame (the steady state).
        summary: what is counted and why, for the tools' output.
        key: the kind of frame a key-frame model runs its whole segmentor on (None: a model
            without key frames).
        start_kinds: {frame_idx: name} one frame of each kind that occurs only at a video's
            start: with `kinds`, every kind of frame the model runs.
    """

    kinds: dict
    same_as: Callable[[int], Optional[int]]
    period: tuple
    summary: str
    key: Optional[str] = None
    start_kinds: dict = field(default_factory=dict)

    def frames_of_each_kind(self):
        """{name: frame_idx} a frame of every kind, those of the video's start included."""
        return {name: i for i, name in {**self.start_kinds, **self.kinds}.items()}


def per_frame_plan(why, key=None):
    """The plan of a model whose frames all cost the same: one kind, FRAME."""
    return FramePlan({0: FRAME}, lambda i: 0, (0,), f"one frame counted ({why})", key=key)
