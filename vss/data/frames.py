"""The order and numbering of a video's frame files.

File systems list names in arbitrary order and plain string sorting puts frame10 before
frame2, so frames are ordered by the numbers in their names. A frame's number also gives
its `frame_idx`, so that a deleted frame leaves a gap that the evaluator (VC windows) and
the video models (key-frame distance, clip offsets) see, instead of its neighbours being
silently taken as consecutive.
"""
import logging
import math
import os
import re

logger = logging.getLogger(__name__)

_DIGITS = re.compile(r"(\d+)")


def natural_key(name):
    """Sort key putting frame2 before frame10 (digit runs compare as numbers).

    Names with the same key ("f1", "f01") fall back to plain string order, so the order
    never depends on the listing.
    """
    parts = _DIGITS.split(name)
    # re.split alternates text and digit runs starting with text, so positions compare like with like.
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], name


def frame_numbers(names):
    """The frame number in each file name (extension left out), or None when a name has none.

    It is the last number that changes from name to name, so that a constant number after
    it ("frame12_rgb8.jpg") is not taken for it; the last number when the names hold
    different counts of numbers.
    """
    runs = [[int(d) for d in _DIGITS.findall(os.path.splitext(os.path.basename(n))[0])] for n in names]
    if any(not r for r in runs):
        return [None] * len(names)
    if len({len(r) for r in runs}) == 1:
        changing = [j for j in range(len(runs[0])) if len({r[j] for r in runs}) > 1]
        if changing:
            return [r[changing[-1]] for r in runs]
    return [r[-1] for r in runs]


def number_frames(names, folder):
    """[(frame_idx, name)] for the frame files `names` of one video, in frame order.

    When every name holds a number (`frame_numbers`), frames go in number order and
    frame_idx counts from the first frame's number in steps of the numbering's stride (the
    greatest common divisor of the differences, so that names taken every 5th frame of a
    source video are consecutive): a missing frame leaves a gap in frame_idx. Numbers
    that leave more gaps than there are frames (timestamps, say) are not a frame count:
    frames then go in number order with frame_idx their position, and a warning says so.
    Names without numbers go in natural name order with frame_idx their position. Two
    frames with the same number or the same name stem (`folder`, for the message, is
    where they are) are an error: their order, and which label belongs to which, would
    be a guess.
    """
    names = sorted(names, key=natural_key)
    stems = {}
    for name in names:
        stem = os.path.splitext(name)[0]
        if stem in stems:
            raise ValueError(f"{folder} has two frames named {stems[stem]} and {name}: "
                             "expected one frame file per name")
        stems[stem] = name
    numbers = frame_numbers(names)
    if None in numbers:
        return list(enumerate(names))
    numbered = sorted(zip(numbers, names), key=lambda p: (p[0], natural_key(p[1])))
    for (a, first), (b, second) in zip(numbered, numbered[1:]):
        if a == b:
            raise ValueError(f"{folder}: frames {first} and {second} both have frame number {a}: "
                             "expected one frame per number")
    start = numbered[0][0]
    stride = math.gcd(*(n - start for n, _ in numbered)) or 1
    span = (numbered[-1][0] - start) // stride + 1
    if span - len(numbered) > len(numbered):
        logger.warning("%s: the numbers in the frame names (%d frames numbered %d..%d) leave more gaps than "
                       "frames, so they are not taken as frame numbers: frames are consecutive in number order",
                       folder, len(numbered), start, numbered[-1][0])
        return [(i, name) for i, (_, name) in enumerate(numbered)]
    return [((n - start) // stride, name) for n, name in numbered]


def _missing(indices):
    """The frame_idx values absent between the first and the last of `indices` (increasing)."""
    missing = []
    for a, b in zip(indices, indices[1:]):
        missing.extend(range(a + 1, b))
    return missing


def _ranges(values):
    """'3, 7-9' for [3, 7, 8, 9]."""
    runs = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def warn_incomplete_video(video, frame_dir, indices, orphan_labels=()):
    """One warning for a video with frames missing from its numbering or labels without a frame.

    `indices` are the video's frame_idx values in order; `orphan_labels` are label files
    that no frame has, which are not evaluated or trained on.
    """
    missing = _missing(indices)
    problems = []
    if missing:
        problems.append(f"{len(missing)} frame(s) missing from the numbering (frame_idx {_ranges(missing)}); "
                        "they stay gaps: no VC window or clip spans them as if consecutive")
    if orphan_labels:
        shown = ", ".join(orphan_labels[:10]) + (", ..." if len(orphan_labels) > 10 else "")
        problems.append(f"{len(orphan_labels)} label(s) without a frame, ignored: {shown}")
    if problems:
        logger.warning("video %s (%s): %s", video, frame_dir, "; ".join(problems))
