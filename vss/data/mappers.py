"""Dataset mappers: one labelled frame, a (key frame, labelled frame) pair, or a clip.

Every frame of a sample shares one augmentation draw (see augment.py). Training
targets follow Mask2Former's semantic mapper: `sem_seg` plus `instances` holding
one binary mask per class present. "height"/"width" stay the record's (original)
frame size, the size predictions are resized back to.
"""
import logging

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.structures import Instances

from ..modeling.tv3s.clips import CLIP_TARGETS, check_clip_offsets, clip_frames
from .augment import augment_frames, build_augmentations
from .io import IGNORE_LABEL, read_frame, read_label

logger = logging.getLogger(__name__)


def label_metadata(dataset_names):
    """(num_classes, label_offset) shared by all `dataset_names`; an error if they disagree."""
    found = {}
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        classes = meta.get("stuff_classes")
        if not classes:
            raise ValueError(f"dataset {name!r} has no stuff_classes metadata; "
                             "register it with its class list")
        found[name] = (len(classes), meta.get("label_offset", 0))
    if not found:
        raise ValueError("no training dataset named (cfg.DATASETS.TRAIN is empty)")
    if len(set(found.values())) > 1:
        raise ValueError(f"training datasets disagree on (num_classes, label_offset): {found}; "
                         "one mapper decodes every label the same way")
    return next(iter(found.values()))


PAD_VALUES = ("black", "mean")
# INPUT.VIDEO.PAIR_DRAW values (PairMapper).
PAIR_DRAWS = ("target", "window")


def pad_value(cfg):
    """FrameMapper's pad_value for INPUT.PAD_VALUE."""
    if cfg.INPUT.PAD_VALUE not in PAD_VALUES:
        raise ValueError(f"INPUT.PAD_VALUE must be one of {PAD_VALUES}, got {cfg.INPUT.PAD_VALUE!r}")
    if cfg.INPUT.PAD_VALUE == "black":
        return None
    if len(cfg.MODEL.PIXEL_MEAN) != 3:
        raise ValueError(f"INPUT.PAD_VALUE 'mean' pads 3-channel frames with MODEL.PIXEL_MEAN, which has "
                         f"{len(cfg.MODEL.PIXEL_MEAN)} values")
    return list(cfg.MODEL.PIXEL_MEAN)


def pad_size(cfg):
    """FrameMapper's pad_size: INPUT.CROP.SIZE with INPUT.PAD_TO_CROP, else None."""
    if not cfg.INPUT.PAD_TO_CROP:
        return None
    if not cfg.INPUT.CROP.ENABLED or cfg.INPUT.CROP.TYPE != "absolute":
        raise ValueError(f"INPUT.PAD_TO_CROP pads to an absolute crop size, but INPUT.CROP is ENABLED="
                         f"{cfg.INPUT.CROP.ENABLED}, TYPE={cfg.INPUT.CROP.TYPE!r}")
    return tuple(int(s) for s in cfg.INPUT.CROP.SIZE)


def mask2former_targets(sem_seg):
    """Instances with one binary mask per class present in `sem_seg` (HxW long), ignore excluded."""
    classes = torch.unique(sem_seg)
    classes = classes[classes != IGNORE_LABEL]
    instances = Instances(tuple(sem_seg.shape))
    instances.gt_classes = classes.to(torch.int64)
    instances.gt_masks = sem_seg[None] == classes[:, None, None]
    return instances


class FrameMapper:
    """One frame per sample. Training: augmented image, label and Mask2Former targets.
    Test: the image resized to INPUT.MIN_SIZE_TEST and the record's keys; no label read."""

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, num_classes=None,
                 label_offset=0, size_divisibility=-1, pad_size=None, pad_value=None):
        """
        Args:
            size_divisibility: training frames are padded to a multiple of this (<= 0: not).
            pad_size: (h, w): training frames are padded to at least this size.
            pad_value: None pads images with 0 (uint8); per-channel values (the pixel mean) give
                float32 images, so that the padding is 0 after the model's normalisation.
        """
        if is_train and num_classes is None:
            raise ValueError("a training mapper needs num_classes to decode labels")
        self.is_train = is_train
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.label_offset = label_offset
        self.size_divisibility = size_divisibility
        self.pad_size = pad_size
        self.pad_value = None if pad_value is None else torch.tensor(pad_value, dtype=torch.float32)

    @classmethod
    def from_config(cls, cfg, is_train=True):
        ret = {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY if is_train else -1,
        }
        if is_train:
            ret["num_classes"], ret["label_offset"] = label_metadata(cfg.DATASETS.TRAIN)
            ret["pad_value"] = pad_value(cfg)
            ret["pad_size"] = pad_size(cfg)
        return ret

    def read_image(self, record):
        image = read_frame(record["file_name"], self.image_format)
        expected = (record["height"], record["width"])
        if image.shape[:2] != expected:
            raise ValueError(f"frame {record['file_name']} is {image.shape[0]}x{image.shape[1]} but its "
                             f"record says {expected[0]}x{expected[1]} (the size of the video's first frame)")
        return image

    def read_label(self, record, image):
        """The record's label, or None for an unlabelled frame."""
        if record.get("sem_seg_file_name") is None:
            return None
        label = read_label(record["sem_seg_file_name"], self.num_classes, self.label_offset)
        if label.shape != image.shape[:2]:
            raise ValueError(f"label {record['sem_seg_file_name']} is {label.shape[0]}x{label.shape[1]} "
                             f"but frame {record['file_name']} is {image.shape[0]}x{image.shape[1]}")
        return label

    def read_labelled(self, record):
        image = self.read_image(record)
        label = self.read_label(record, image)
        if label is None:
            raise ValueError(f"frame {record['file_name']} (video {record['video_id']!r}) has no label "
                             "but a training sample needs a labelled target frame")
        return image, label

    def to_tensors(self, images, labels):
        """CxHxW images and HxW long labels (all-ignore where None), padded to size_divisibility
        and pad_size with `pad_value` and the ignore label."""
        h, w = images[0].shape[:2]
        pad_h = pad_w = 0
        if self.size_divisibility > 0:
            pad_h = -h % self.size_divisibility
            pad_w = -w % self.size_divisibility
        if self.pad_size is not None:
            pad_h = max(pad_h, self.pad_size[0] - h)
            pad_w = max(pad_w, self.pad_size[1] - w)
        image_ts, label_ts = [], []
        for img, label in zip(images, labels):
            img_t = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))
            label_t = (torch.full((h, w), IGNORE_LABEL, dtype=torch.long) if label is None
                       else torch.as_tensor(label.astype(np.int64)))
            if self.pad_value is None:
                image_ts.append(F.pad(img_t, (0, pad_w, 0, pad_h), value=0))
            else:
                padded = self.pad_value[:, None, None].repeat(1, h + pad_h, w + pad_w)
                padded[:, :h, :w] = img_t
                image_ts.append(padded)
            label_ts.append(F.pad(label_t, (0, pad_w, 0, pad_h), value=IGNORE_LABEL))
        return image_ts, label_ts

    def frame_dict(self, record, image, sem_seg):
        out = dict(record)
        out.update(image=image, sem_seg=sem_seg, instances=mask2former_targets(sem_seg))
        return out

    def __call__(self, record):
        if not self.is_train:
            image = self.read_image(record)
            (image,), _, _ = augment_frames(self.augmentations, [image], [None], anchor=0)
            out = dict(record)
            out["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            return out
        image, label = self.read_labelled(record)
        images, labels, _ = augment_frames(self.augmentations, [image], [label], anchor=0)
        (image,), (sem_seg,) = self.to_tensors(images, labels)
        return self.frame_dict(record, image, sem_seg)


class _VideoMapper(FrameMapper):
    """A training mapper that reads other frames of the target's video from `videos`
    (video_id -> records in frame order, from vss.data.video.group_by_video).

    Frames are found by frame_idx, which may skip values where a frame is missing."""

    def __init__(self, *, videos, **kwargs):
        super().__init__(is_train=True, **kwargs)
        self.videos = {video: {r["frame_idx"]: r for r in frames} for video, frames in videos.items()}

    @classmethod
    def from_config(cls, cfg, is_train=True, videos=None):
        if not is_train:
            raise ValueError(f"{cls.__name__} builds training samples; "
                             "test loading is per frame (FrameMapper)")
        ret = super().from_config(cfg, is_train=True)
        del ret["is_train"]
        ret["videos"] = videos
        return ret

    def video_frames(self, record):
        """The target's video as {frame_idx: record}."""
        frames = self.videos.get(record["video_id"], {})
        t = record["frame_idx"]
        if t not in frames or frames[t]["file_name"] != record["file_name"]:
            raise ValueError(f"frame {record['file_name']} (video {record['video_id']!r}, frame {t}) is not "
                             "in the mapper's video index: build `videos` from the same records")
        return frames


def pair_keys(target, frames, max_gap):
    """The frame_idx values that may be the key frame of a pair whose target is frame `target`:
    the video's `frames` (a set or dict of frame_idx) 1..max_gap frames before it, oldest first."""
    return [k for k in range(target - max_gap, target) if k in frames]


class PairMapper(_VideoMapper):
    """A labelled target frame t and an earlier key frame, whose prediction is propagated
    to t; only t's label is read. Two draws (INPUT.VIDEO.PAIR_DRAW):

    "target": the record is t; the key frame is t - r, r uniform over the gaps 1..max_gap
    that exist in the video (a missing frame is never a key frame).

    "window" (the MPVSS release, O: mask2former/data/dataset_mappers/
    mask_former_video_semantic_dataset_mapper.py:137-145): the record stands for its video.
    A frame is drawn uniformly among its labelled frames, a second one uniformly among the
    labelled frames at most max_gap away on either side; the later of the two is the target.
    Near a video's ends this draws other targets and gaps than "target" (e.g. the first
    frame is never a target, the last more often); the two agree in the middle of the video.
    """

    @configurable
    def __init__(self, *, videos, max_gap, draw="target", **kwargs):
        super().__init__(videos=videos, **kwargs)
        if max_gap < 1:
            raise ValueError(f"INPUT.VIDEO.PAIR_MAX_GAP must be >= 1, got {max_gap}")
        if draw not in PAIR_DRAWS:
            raise ValueError(f"INPUT.VIDEO.PAIR_DRAW must be one of {PAIR_DRAWS}, got {draw!r}")
        self.max_gap = max_gap
        self.draw = draw
        self.labelled = {}
        if draw == "window":
            self.labelled = {video: sorted(t for t, r in frames.items() if r.get("sem_seg_file_name") is not None)
                             for video, frames in self.videos.items()}
            alone = [v for v, ts in self.labelled.items() if not self._has_partner(ts)]
            if alone:
                raise ValueError(
                    f"INPUT.VIDEO.PAIR_DRAW 'window': {len(alone)} training video(s) have no two labelled frames "
                    f"within INPUT.VIDEO.PAIR_MAX_GAP={max_gap}: {', '.join(alone[:10])}"
                    f"{', ...' if len(alone) > 10 else ''}; leave them out or use PAIR_DRAW 'target'")

    @classmethod
    def from_config(cls, cfg, is_train=True, videos=None):
        ret = super().from_config(cfg, is_train, videos)
        ret["max_gap"] = cfg.INPUT.VIDEO.PAIR_MAX_GAP
        ret["draw"] = cfg.INPUT.VIDEO.PAIR_DRAW
        return ret

    def _has_partner(self, labelled):
        return any(b - a <= self.max_gap for a, b in zip(labelled, labelled[1:]))

    def draw_pair(self, record):
        """(the target's record, the key frame's record) for a sampled `record`."""
        frames = self.video_frames(record)
        if self.draw == "window":
            labelled = self.labelled[record["video_id"]]
            while True:  # a frame without a partner is redrawn (only where labels are sparse)
                cur = labelled[np.random.randint(len(labelled))]
                near = [t for t in labelled if 0 < abs(t - cur) <= self.max_gap]
                if near:
                    break
            other = near[np.random.randint(len(near))]
            return frames[max(cur, other)], frames[min(cur, other)]
        t = record["frame_idx"]
        keys = pair_keys(t, frames, self.max_gap)
        if not keys:
            raise ValueError(f"frame {record['file_name']} (video {record['video_id']!r}) has no earlier frame "
                             f"within INPUT.VIDEO.PAIR_MAX_GAP={self.max_gap}: a pair needs an earlier key frame")
        # keys[-r], r uniform in 1..len(keys): t - r when no frame is missing.
        return record, frames[keys[-np.random.randint(1, len(keys) + 1)]]

    def __call__(self, record):
        record, key_record = self.draw_pair(record)
        image, label = self.read_labelled(record)
        key_image = self.read_image(key_record)
        images, labels, _ = augment_frames(self.augmentations, [key_image, image], [None, label], anchor=1)
        (key_image, image), (_, sem_seg) = self.to_tensors(images, labels)
        out = self.frame_dict(record, image, sem_seg)
        out.update(key_image=key_image, key_frame_idx=key_record["frame_idx"])
        return out


class ClipMapper(_VideoMapper):
    """Frames t + offset for each of `offsets` (target offset 0 last), chosen by
    vss.modeling.tv3s.clips.clip_frames.

    With probability `reverse_prob` the video plays backwards: offsets are negated,
    so the context comes from later frames and the target stays last.

    targets "all": the record is the target. Indices past either end of the video are
    clamped to its first/last frame, and a missing frame (a gap in frame_idx) is replaced
    by the nearest frame further from the target, as the streaming TV3S head picks "the
    latest frame at or before t + offset" at inference (a gap is logged once per video): an
    existing frame is repeated rather than the sample dropped.

    targets "full_context" (the TV3S release, O: utils/datasets/custom.py:1954-1963): the
    record stands for its video. The direction is drawn first, then the target uniformly
    among the video's labelled frames whose clip frames all exist in that direction, so no
    frame is ever clamped or repeated and the first (last, backwards) frames of a video are
    never targets. With a per-video sampler this is the release's draw. A direction
    without such a target (possible only with unlabelled frames) gives way to the other;
    a video without any is an error at construction.
    """

    @configurable
    def __init__(self, *, videos, offsets, reverse_prob=0.0, targets="all", **kwargs):
        super().__init__(videos=videos, **kwargs)
        offsets = check_clip_offsets(offsets)
        if not 0.0 <= reverse_prob <= 1.0:
            raise ValueError(f"INPUT.VIDEO.REVERSE_PROB must be in [0, 1], got {reverse_prob}")
        if targets not in CLIP_TARGETS:
            raise ValueError(f"INPUT.VIDEO.CLIP_TARGETS must be one of {CLIP_TARGETS}, got {targets!r}")
        self.offsets = offsets
        self.reverse_prob = reverse_prob
        self.targets = targets
        self.frame_lists = {video: sorted(frames) for video, frames in self.videos.items()}
        self.full_context = {}
        if targets == "full_context":
            self.full_context = {video: self._full_context_targets(video) for video in self.videos}
            directions = [d for d, p in ((0, 1.0 - reverse_prob), (1, reverse_prob)) if p > 0]
            empty = [v for v, found in self.full_context.items() if not any(found[d] for d in directions)]
            if empty:
                raise ValueError(
                    f"INPUT.VIDEO.CLIP_TARGETS 'full_context': {len(empty)} training video(s) have no labelled "
                    f"frame whose clip frames (offsets {offsets}, reverse_prob {reverse_prob}) all exist: "
                    f"{', '.join(empty[:10])}{', ...' if len(empty) > 10 else ''}; leave them out of the "
                    "training set or use CLIP_TARGETS 'all' (clamped clips)")
        self._clamped_videos = set()

    @classmethod
    def from_config(cls, cfg, is_train=True, videos=None):
        ret = super().from_config(cfg, is_train, videos)
        ret["offsets"] = list(cfg.INPUT.VIDEO.CLIP_OFFSETS)
        ret["reverse_prob"] = cfg.INPUT.VIDEO.REVERSE_PROB
        ret["targets"] = cfg.INPUT.VIDEO.CLIP_TARGETS
        return ret

    def _full_context_targets(self, video):
        """(forward, backward): the labelled frame_idx with a full clip in each direction."""
        frames, order = self.videos[video], self.frame_lists[video]
        labelled = [t for t in order if frames[t].get("sem_seg_file_name") is not None]
        return tuple([t for t in labelled if clip_frames(t, self.offsets, order, reverse, full_context=True)]
                     for reverse in (False, True))

    def draw_clip(self, record):
        """(the target's record, the clip's frame_idx values) for a sampled `record`."""
        frames = self.video_frames(record)
        video = record["video_id"]
        reverse = bool(np.random.rand() < self.reverse_prob)
        if self.targets == "full_context":
            found = self.full_context[video]
            if not found[reverse]:
                reverse = not reverse
            candidates = found[reverse]
            t = candidates[np.random.randint(len(candidates))]
            return frames[t], clip_frames(t, self.offsets, self.frame_lists[video], reverse, full_context=True)
        t = record["frame_idx"]
        indices = clip_frames(t, self.offsets, self.frame_lists[video], reverse)
        wanted = [t + (-o if reverse else o) for o in self.offsets]
        order = self.frame_lists[video]
        gaps = [w for w in wanted if order[0] <= w <= order[-1] and w not in frames]
        # Clamping at a video's ends is what CLIP_TARGETS "all" means; a frame missing inside
        # the video is a gap in the data, worth a line once per video.
        if gaps and video not in self._clamped_videos:
            self._clamped_videos.add(video)
            logger.warning("video %s (frames %d..%d, %d present): clip frames %s are missing and are replaced: "
                           "clip frames %s -> %s; further replacements in this video are not logged",
                           video, order[0], order[-1], len(order), gaps, wanted, indices)
        return record, indices

    def __call__(self, record):
        record, indices = self.draw_clip(record)
        frames = self.video_frames(record)
        images, labels = [], []
        for i in indices[:-1]:
            image = self.read_image(frames[i])
            images.append(image)
            labels.append(self.read_label(frames[i], image))
        image, label = self.read_labelled(record)
        images, labels, _ = augment_frames(self.augmentations, images + [image], labels + [label],
                                           anchor=len(indices) - 1)
        images, sem_segs = self.to_tensors(images, labels)
        out = self.frame_dict(record, images[-1], sem_segs[-1])
        out.update(images=images, sem_segs=sem_segs, frame_indices=indices)
        return out
