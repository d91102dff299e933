"""TV3S temporal head: windowed Mamba scans whose state is carried from frame to frame."""
from .head import ClipState, ShiftedWindowMamba, StateSpaceSharing, StreamState, mamba_map_size
from .mamba import Mamba, MambaBlock, MambaState, RMSNorm
from .windows import WindowGroup, merge, partition, window_groups
