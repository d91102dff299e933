"""Model analysis helpers shared by the tools."""
from .flops import count_parameters, flop_analysis, video_flops, video_frames

__all__ = ["count_parameters", "flop_analysis", "video_flops", "video_frames"]
