"""Model analysis helpers shared by the tools."""
from .flops import (count_frames, count_parameters, flop_analysis, frame_flops, frame_plan, interval_cost, kind_flops,
                    mean_cost, video_flops, video_frames)
from .hook_flops import hook_flops

__all__ = [
    "count_frames",
    "count_parameters",
    "flop_analysis",
    "frame_flops",
    "frame_plan",
    "hook_flops",
    "interval_cost",
    "kind_flops",
    "mean_cost",
    "video_flops",
    "video_frames",
]
