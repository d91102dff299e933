"""Per-video state of the video models, kept in one place.

A video model's inference state (MPVSS: the key-frame cache; TV3S: scan and conv
states) belongs to one video. `VideoStates` hands each video its own state, creates a
fresh one at a video's first frame, and keeps a bounded number of open videos so that
memory does not grow with the dataset; frames of several videos may be interleaved.
"""
import logging
from collections import OrderedDict

logger = logging.getLogger(__name__)


class VideoStates:
    def __init__(self, max_open=2):
        if max_open < 1:
            raise ValueError(f"MODEL.VIDEO.MAX_OPEN_VIDEOS must be >= 1, got {max_open}")
        self.max_open = max_open
        self.reset()

    def reset(self):
        """Forget every video: the next frame of any video starts it afresh."""
        self._open = OrderedDict()  # video_id -> (last frame_idx, state)
        self._closed = set()

    def get(self, video_id, frame_idx):
        """The state carried into frame `frame_idx` of `video_id` (None at a new video).

        A video must be processed in increasing frame order; a video dropped to bound
        memory cannot be resumed (its state is gone), which is an error rather than a
        silent restart.
        """
        if video_id in self._open:
            last, state = self._open[video_id]
            if frame_idx <= last:
                raise ValueError(
                    f"video {video_id!r}: frame {frame_idx} after frame {last}; frames of a video must "
                    "come in increasing order (call reset() to restart a video)"
                )
            self._open.move_to_end(video_id)
            return state
        if video_id in self._closed:
            raise ValueError(
                f"video {video_id!r} came back after its state was dropped (more than "
                f"MODEL.VIDEO.MAX_OPEN_VIDEOS={self.max_open} videos interleaved); raise that limit, "
                "or call reset() before replaying videos"
            )
        return None

    def put(self, video_id, frame_idx, state):
        self._open[video_id] = (frame_idx, state)
        self._open.move_to_end(video_id)
        while len(self._open) > self.max_open:
            dropped, _ = self._open.popitem(last=False)
            self._closed.add(dropped)
            logger.debug("dropped the state of video %s (least recently used)", dropped)

    def __len__(self):
        return len(self._open)
