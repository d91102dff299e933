"""Window partitions of a clip's feature maps into the independent sequences TV3S scans.

A map (B, T, H, W, C) is cut into rectangles; one rectangle over all T frames is one sequence
of T * h * w tokens in (t, y, x) order: frame by frame in clip order, raster order inside the
rectangle. Sequences never mix: each has its own scan (and, when streaming, its own state).

Unshifted partition: size x size windows from (0, 0).
Shifted partition (by s): along each axis the boundaries are {0, s, s + size, s + 2 size, ...,
N}, i.e. an s-wide border piece, size-wide pieces, and the remainder (size - s) at the far
border; every rectangle of that grid is its own sequence. Pieces are not merged across the
map's wrap-around (this is not Swin's cyclic shift with masks). The official release gets the
same rectangles, with the same token order, by rolling the map by -s and cutting the last rows
and columns into "edge groups"; here the grid is cut directly in original coordinates.

Rectangles of one shape form a `WindowGroup` and are scanned as one batch: since the grid is a
product of row pieces and column pieces, a group is (row pieces of one height) x (column
pieces of one width). Windows of a group are ordered row-major, as batch b, window row, window
column in the sequences' batch dimension.
"""
import functools
from dataclasses import dataclass

import torch

__all__ = ["WindowGroup", "window_groups", "partition", "merge"]


@dataclass(frozen=True)
class WindowGroup:
    """Windows of one shape: top rows x left columns, each window height x width."""

    rows: tuple
    cols: tuple
    height: int
    width: int

    @property
    def num_windows(self):
        return len(self.rows) * len(self.cols)

    def rectangles(self):
        """[(top, left, height, width)] in batch order."""
        return [(y, x, self.height, self.width) for y in self.rows for x in self.cols]


def _pieces(length, size, shift):
    """{piece length: [piece starts]} of one axis, in order of first appearance."""
    bounds = sorted({0, length, *range(shift, length, size)})
    pieces = {}
    for start, stop in zip(bounds[:-1], bounds[1:]):
        pieces.setdefault(stop - start, []).append(start)
    return pieces


@functools.lru_cache(maxsize=None)
def window_groups(height, width, size, shift=0):
    """The partition of a height x width map into windows of `size`, shifted by `shift` (0: the
    regular tiling), as a tuple of WindowGroups."""
    if size < 1 or not 0 <= shift < size:
        raise ValueError(f"TV3S windows need size >= 1 and 0 <= shift < size, got size {size}, shift {shift}")
    if height % size or width % size:
        raise ValueError(f"TV3S windows: the map {height}x{width} is not a multiple of the window size {size}")
    rows, cols = _pieces(height, size, shift), _pieces(width, size, shift)
    return tuple(
        WindowGroup(tuple(ys), tuple(xs), h, w) for h, ys in rows.items() for w, xs in cols.items()
    )


# Cached per device: every layer of every forward reuses them, without host-to-device copies.
@functools.lru_cache(maxsize=None)
def _token_index(group, map_width, device):
    """Flat (y * map_width + x) positions of the group's tokens within a frame, window by window,
    raster order inside a window."""
    ys = torch.tensor(group.rows)[:, None] + torch.arange(group.height)  # (rows, height)
    xs = torch.tensor(group.cols)[:, None] + torch.arange(group.width)  # (cols, width)
    index = ys[:, None, :, None] * map_width + xs[None, :, None, :]  # (rows, cols, height, width)
    return index.flatten().to(device)


@functools.lru_cache(maxsize=None)
def _inverse_index(groups, map_width, device):
    """Where each map position sits among the groups' concatenated tokens."""
    order = torch.cat([_token_index(g, map_width, device) for g in groups])
    return torch.argsort(order)


def partition(x, groups):
    """(B, T, H, W, C) -> one (B * windows, T * h * w, C) sequence batch per group."""
    b, t, height, width, c = x.shape
    flat = x.reshape(b, t, height * width, c)
    sequences = []
    for g in groups:
        tokens = flat[:, :, _token_index(g, width, x.device)]  # (B, T, windows * h * w, C)
        tokens = tokens.view(b, t, g.num_windows, g.height * g.width, c).transpose(1, 2)
        sequences.append(tokens.reshape(b * g.num_windows, t * g.height * g.width, c))
    return sequences


def merge(sequences, groups, height, width):
    """Inverse of `partition`: the groups' sequence batches -> (B, T, H, W, C)."""
    parts = []
    for seq, g in zip(sequences, groups):
        b = seq.shape[0] // g.num_windows
        t = seq.shape[1] // (g.height * g.width)
        part = seq.view(b, g.num_windows, t, g.height * g.width, seq.shape[-1]).transpose(1, 2)
        parts.append(part.reshape(b, t, g.num_windows * g.height * g.width, seq.shape[-1]))
    tokens = torch.cat(parts, dim=2)
    tokens = tokens[:, :, _inverse_index(tuple(groups), width, tokens.device)]
    return tokens.view(tokens.shape[0], tokens.shape[1], height, width, tokens.shape[-1])
