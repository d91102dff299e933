"""Which frames of a video form the clip of a target frame: the one rule that training clips
(vss.data's ClipMapper) and TV3S's clip test (StateSpaceSharing, MODEL.TV3S.INFERENCE "clip") share.

A clip holds the frames t + offset for INPUT.VIDEO.CLIP_OFFSETS (increasing, the target's 0
last), or t - offset when the video plays backwards, so the target always comes last. Frames
are named by frame_idx, which may skip values where a frame is missing; such a gap is real
time, never closed up. Plain python on frame numbers: the data side calls it with its records'
frame numbers, the head with the frames it has seen.
"""
import bisect

# Clip-target rules of INPUT.VIDEO.CLIP_TARGETS.
CLIP_TARGETS = ("all", "full_context")

# The release's test clips for offsets (-9, -6, -3, 0) while the target is the 4th..9th frame of
# its video, by the target's position (O: utils/datasets/custom.py:2080-2092).
RELEASE_EARLY_CLIPS = {
    3: (0, 1, 2, 3),
    4: (0, 2, 3, 4),
    5: (0, 2, 4, 5),
    6: (0, 2, 4, 6),
    7: (0, 3, 5, 7),
    8: (0, 3, 6, 8),
}
RELEASE_OFFSETS = (-9, -6, -3, 0)


def check_clip_offsets(offsets):
    """INPUT.VIDEO.CLIP_OFFSETS as ints: frames in time order, the target (0) last."""
    offsets = [int(o) for o in offsets]
    if not offsets or offsets[-1] != 0 or any(a >= b for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"INPUT.VIDEO.CLIP_OFFSETS must increase strictly and end with the target frame's 0 "
                         f"(the scan reads a clip in time order), got {offsets}")
    return offsets


def _present(i, frames):
    k = bisect.bisect_left(frames, i)
    return k < len(frames) and frames[k] == i


def _nearest_away(i, target, frames):
    """Frame i, or where it is missing the nearest existing frame further from `target`,
    clamped to the video's first/last frame."""
    if i < target:
        return frames[max(bisect.bisect_right(frames, i) - 1, 0)]
    return frames[min(bisect.bisect_left(frames, i), len(frames) - 1)]


def clip_frames(target, offsets, frames, reverse=False, full_context=False):
    """The frame_idx values of `target`'s clip, the target last.

    Args:
        target: frame_idx of the target frame (one of `frames`).
        offsets: checked CLIP_OFFSETS.
        frames: the video's frame_idx values, an increasing list.
        reverse: the video plays backwards: context from later frames.
        full_context: the release's training rule (O: utils/datasets/custom.py:1954-1963): the
            clip exists only if every wanted frame does; None otherwise. Without it, wanted
            frames outside the video are clamped to its first/last frame and a missing one is
            replaced by the nearest frame further from the target, as streaming inference picks
            "the latest frame at or before t + offset".
    """
    sign = -1 if reverse else 1
    wanted = [target + sign * o for o in offsets]
    if full_context:
        return wanted if all(_present(i, frames) for i in wanted) else None
    return [_nearest_away(i, target, frames) for i in wanted]


def release_test_clip(target, offsets, frames, first):
    """The frames of the release's test clip of `target` (`tools/test.py --mode 0`), or None
    where the release predicts the frame with the per-frame head alone.

    `frames` (increasing) must hold every frame the clip may pick: the frames after
    target + min(offsets) and the latest one at or before it. `first` is the video's first
    frame_idx.

    The release takes, by the target's position p in its video, the frames p + offset that exist
    (O: utils/datasets/custom.py:2073-2078) and, for offsets (-9, -6, -3, 0) and p = 3..8, fixed
    lists such as (0, 1, 2, 3) (:2080-2092); a clip with fewer frames than offsets, i.e. p < 3
    there, skips the temporal module and returns the per-frame head's prediction
    (O: utils/models/tv3s_head.py:980-982). The position is target - first, the release's index
    in the video's file list when no frame is missing; a wanted frame that is missing (a gap)
    is replaced as in `clip_frames`.
    """
    position = target - first
    if tuple(offsets) == RELEASE_OFFSETS and position in RELEASE_EARLY_CLIPS:
        wanted = [first + p for p in RELEASE_EARLY_CLIPS[position]]
    else:
        wanted = [target + o for o in offsets if target + o >= first]
    if len(wanted) < len(offsets):
        return None
    return [_nearest_away(i, target, frames) for i in wanted]
