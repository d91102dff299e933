"""Optical flow files in the Middlebury `.flo` format (also used by FlyingChairs and Sintel).

Layout, little-endian: float32 202021.25 (the bytes "PIEH"), int32 width, int32 height,
then height * width * 2 float32 row by row, u (dx) then v (dy) for each pixel.
"""
import numpy as np

FLO_MAGIC = 202021.25
_HEADER = np.dtype([("magic", "<f4"), ("width", "<i4"), ("height", "<i4")])


def write_flo(path, flow):
    """Write `flow` (H, W, 2), channel 0 = dx, in pixels, to `path`."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2 or 0 in flow.shape:
        raise ValueError(f"{path}: flow must have shape (H, W, 2) with H, W > 0, got {flow.shape}")
    header = np.array([(FLO_MAGIC, flow.shape[1], flow.shape[0])], _HEADER)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(flow, "<f4").tobytes())


def read_flo(path):
    """The flow (H, W, 2) float32 stored in the `.flo` file `path`; a bad file is an error naming it."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER.itemsize:
        raise ValueError(f"{path}: {len(data)} bytes, too short for a .flo header ({_HEADER.itemsize} bytes)")
    magic, width, height = np.frombuffer(data, _HEADER, count=1)[0]
    if magic != np.float32(FLO_MAGIC):
        raise ValueError(f"{path}: not a .flo file (magic number {magic!r}, expected {FLO_MAGIC})")
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: bad .flo size {width}x{height}")
    expected = _HEADER.itemsize + 8 * int(width) * int(height)
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, expected {expected} for a {width}x{height} .flo file "
                         "(truncated or corrupt)")
    flow = np.frombuffer(data, "<f4", offset=_HEADER.itemsize).reshape(int(height), int(width), 2)
    return flow.astype(np.float32)  # native byte order, writable

