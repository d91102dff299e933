"""Training loader over video datasets.

detectron2's get_detection_dataset_dicts drops records without "annotations",
which frame records never have, so the training records are gathered here and
filtered by what the configured sampler can use as a target.
"""
import logging

from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from .mappers import ClipMapper, FrameMapper, PairMapper, pair_keys
from .train_loader import ResumableTrainLoader
from .video import group_by_video

logger = logging.getLogger(__name__)

SAMPLERS = ("frame", "pair", "clip")


def _check_sampler(cfg):
    sampler = cfg.INPUT.VIDEO.SAMPLER
    if sampler not in SAMPLERS:
        raise ValueError(f"INPUT.VIDEO.SAMPLER is {sampler!r}; expected one of {SAMPLERS}")
    return sampler


def build_mapper(cfg, is_train=True, videos=None):
    """The mapper for INPUT.VIDEO.SAMPLER; test loading is always per frame.

    "pair" and "clip" read other frames of a video, so they need `videos`
    (vss.data.video.group_by_video of the training records).
    """
    sampler = _check_sampler(cfg)
    if not is_train or sampler == "frame":
        return FrameMapper(cfg, is_train)
    if videos is None:
        raise ValueError(f"the {sampler!r} mapper needs `videos`, the video index of the training records")
    cls = PairMapper if sampler == "pair" else ClipMapper
    return cls(cfg, videos=videos)


def usable_targets(records, sampler, max_gap):
    """The records `sampler` can use as a training target, and {reason: count} for the rest.

    A "pair" target needs a key frame (mappers.pair_keys): an earlier frame of its video at most
    `max_gap` frames before it.
    """
    kept, dropped, videos = [], {}, {}
    for rec in records:
        videos.setdefault(rec["video_id"], set()).add(rec["frame_idx"])
    for rec in records:
        frames = videos[rec["video_id"]]
        if rec.get("sem_seg_file_name") is None:
            reason = "unlabelled"
        elif sampler == "pair" and not pair_keys(rec["frame_idx"], frames, max_gap):
            reason = ("first frame of its video (a pair needs an earlier key frame)" if rec["frame_idx"] == min(frames)
                      else f"after missing frames, no earlier frame within INPUT.VIDEO.PAIR_MAX_GAP={max_gap}")
        else:
            kept.append(rec)
            continue
        dropped[reason] = dropped.get(reason, 0) + 1
    return kept, dropped


def build_video_train_loader(cfg, mapper=None):
    """An endless, resumable training loader over the usable target frames of cfg.DATASETS.TRAIN
    (see `resumable_train_loader`)."""
    sampler = _check_sampler(cfg)
    if not cfg.DATASETS.TRAIN:
        raise ValueError("cfg.DATASETS.TRAIN names no dataset")
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported for "
                         "video training (it needs detection annotations); use 'TrainingSampler'")
    records = []
    for name in cfg.DATASETS.TRAIN:
        dataset = DatasetCatalog.get(name)
        if not dataset:
            raise ValueError(f"training dataset {name!r} has no frames")
        records.extend(dataset)
    videos = group_by_video(records)
    targets, dropped = usable_targets(records, sampler, cfg.INPUT.VIDEO.PAIR_MAX_GAP)
    names = ", ".join(cfg.DATASETS.TRAIN)
    if not targets:
        raise ValueError(f"no usable training frames for sampler {sampler!r} in {names}: dropped {dropped}")
    logger.info("training on %d of %d frames (%d videos) of %s with sampler %r, drawn by %s; dropped: %s",
                len(targets), len(records), len(videos), names, sampler, cfg.DATALOADER.SAMPLE_BY,
                ", ".join(f"{n} {reason}" for reason, n in dropped.items()) or "none")
    if mapper is None:
        mapper = build_mapper(cfg, is_train=True, videos=videos)
    return resumable_train_loader(cfg, targets, mapper)


def resumable_train_loader(cfg, records, mapper):
    """This process's endless, resumable loader of mapped `records`, in batches of its share of
    SOLVER.IMS_PER_BATCH, drawn per DATALOADER.SAMPLE_BY; sample order and augmentations follow
    cfg.SEED (a random seed shared by all processes when SEED < 0), and checkpoints store the
    seed and the position.
    """
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by the "
                         f"{world_size} training processes")
    return ResumableTrainLoader(
        records, mapper, cfg.SOLVER.IMS_PER_BATCH // world_size,
        seed=cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed(),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        rank=comm.get_rank(), world_size=world_size, sample_by=cfg.DATALOADER.SAMPLE_BY,
    )
