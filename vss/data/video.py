"""Per-video views of frame records and ordered per-video test loading.

Video inference carries state from frame to frame (a key-frame cache, a scan
state), so a video must reach one process whole and in frame order. detectron2's
InferenceSampler cuts the record list into equal slices, which would split videos
between ranks; VideoInferenceSampler hands out whole videos instead.
"""
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.utils import comm
from torch.utils.data import Sampler

from .mappers import FrameMapper


def video_spans(records):
    """[(video_id, start, stop)]: each video's records are records[start:stop].

    Validates the record contract: a video's records are consecutive and their
    frame_idx increase; they may skip values, where a frame is missing (a gap).
    """
    spans = []
    seen = set()
    for i, rec in enumerate(records):
        video, idx = rec["video_id"], rec["frame_idx"]
        if not spans or spans[-1][0] != video:
            if video in seen:
                raise ValueError(f"records of video {video!r} are not consecutive: frame {rec['file_name']} "
                                 "comes after another video's frames (two datasets with the same video id?)")
            seen.add(video)
            spans.append([video, i, i])
        elif idx <= records[i - 1]["frame_idx"]:
            prev = records[i - 1]
            same = [r for r in records[spans[-1][1]:i] if r["frame_idx"] == idx]
            if same:
                raise ValueError(f"video {video!r} has frame_idx {idx} twice: {same[0]['file_name']} and "
                                 f"{rec['file_name']} (two datasets with the same video id?)")
            raise ValueError(f"video {video!r} is out of frame order: {rec['file_name']} has frame_idx {idx} "
                             f"after {prev['file_name']} with frame_idx {prev['frame_idx']} "
                             "(frame_idx must increase within a video)")
        spans[-1][2] = i + 1
    return [tuple(s) for s in spans]


def group_by_video(records):
    """dict video_id -> that video's records in frame order (frame_idx increasing, gaps kept)."""
    return {video: records[start:stop] for video, start, stop in video_spans(records)}


class VideoInferenceSampler(Sampler):
    """Yields this rank's frame indices: whole videos, each in frame order.

    Videos go to ranks longest first, each to the rank with the fewest frames so
    far (ties to the lowest rank), so ranks finish at about the same time. A rank
    yields its videos in dataset order.
    """

    def __init__(self, records, rank=None, world_size=None):
        self._rank = comm.get_rank() if rank is None else rank
        self._world_size = comm.get_world_size() if world_size is None else world_size
        if not 0 <= self._rank < self._world_size:
            raise ValueError(f"rank {self._rank} is outside world size {self._world_size}")
        spans = video_spans(records)
        if not spans:
            raise ValueError("no frames to sample from")
        load = [0] * self._world_size
        owner = {}
        for video, start, stop in sorted(spans, key=lambda s: s[1] - s[2]):
            rank = min(range(self._world_size), key=load.__getitem__)
            owner[video] = rank
            load[rank] += stop - start
        self._indices = [i for video, start, stop in spans if owner[video] == self._rank
                         for i in range(start, stop)]

    def __iter__(self):
        yield from self._indices

    def __len__(self):
        return len(self._indices)


def build_video_test_loader(cfg, dataset_name, mapper=None):
    """A loader yielding [mapped frame] batches of `dataset_name`, video by video in frame order.

    The default mapper is `FrameMapper(cfg, is_train=False)`; each item keeps
    its record's video_id and frame_idx.
    """
    records = DatasetCatalog.get(dataset_name)
    if not records:
        raise ValueError(f"dataset {dataset_name!r} has no frames")
    try:
        sampler = VideoInferenceSampler(records)
    except ValueError as e:
        raise ValueError(f"dataset {dataset_name!r}: {e}") from e
    if mapper is None:
        mapper = FrameMapper(cfg, is_train=False)
    return build_detection_test_loader(records, mapper=mapper, sampler=sampler,
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)
