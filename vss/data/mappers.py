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
                 label_offset=0, size_divisibility=-1):
        if is_train and num_classes is None:
            raise ValueError("a training mapper needs num_classes to decode labels")
        self.is_train = is_train
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.label_offset = label_offset
        self.size_divisibility = size_divisibility

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
        """CxHxW uint8 images and HxW long labels (all-ignore where None), padded to size_divisibility."""
        h, w = images[0].shape[:2]
        pad_h = pad_w = 0
        if self.size_divisibility > 0:
            pad_h = -h % self.size_divisibility
            pad_w = -w % self.size_divisibility
        image_ts, label_ts = [], []
        for img, label in zip(images, labels):
            img_t = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))
            label_t = (torch.full((h, w), IGNORE_LABEL, dtype=torch.long) if label is None
                       else torch.as_tensor(label.astype(np.int64)))
            image_ts.append(F.pad(img_t, (0, pad_w, 0, pad_h), value=0))
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


class PairMapper(_VideoMapper):
    """A labelled frame t and its key frame t - r, r uniform over the gaps 1..max_gap
    that exist in the video (a missing frame is never a key frame).

    The earlier frame is the key frame, whose prediction is propagated to t; only
    t's label is read.
    """

    @configurable
    def __init__(self, *, videos, max_gap, **kwargs):
        super().__init__(videos=videos, **kwargs)
        if max_gap < 1:
            raise ValueError(f"INPUT.VIDEO.PAIR_MAX_GAP must be >= 1, got {max_gap}")
        self.max_gap = max_gap

    @classmethod
    def from_config(cls, cfg, is_train=True, videos=None):
        ret = super().from_config(cfg, is_train, videos)
        ret["max_gap"] = cfg.INPUT.VIDEO.PAIR_MAX_GAP
        return ret

    def __call__(self, record):
        frames = self.video_frames(record)
        t = record["frame_idx"]
        keys = [k for k in range(t - self.max_gap, t) if k in frames]
        if not keys:
            raise ValueError(f"frame {record['file_name']} (video {record['video_id']!r}) has no earlier frame "
                             f"within INPUT.VIDEO.PAIR_MAX_GAP={self.max_gap}: a pair needs an earlier key frame")
        # keys[-r], r uniform in 1..len(keys): t - r when no frame is missing.
        key_record = frames[keys[-np.random.randint(1, len(keys) + 1)]]
        image, label = self.read_labelled(record)
        key_image = self.read_image(key_record)
        images, labels, _ = augment_frames(self.augmentations, [key_image, image], [None, label], anchor=1)
        (key_image, image), (_, sem_seg) = self.to_tensors(images, labels)
        out = self.frame_dict(record, image, sem_seg)
        out.update(key_image=key_image, key_frame_idx=key_record["frame_idx"])
        return out


def check_clip_offsets(offsets):
    """INPUT.VIDEO.CLIP_OFFSETS as ints: frames in time order, the target (0) last."""
    offsets = [int(o) for o in offsets]
    if not offsets or offsets[-1] != 0 or any(a >= b for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"INPUT.VIDEO.CLIP_OFFSETS must increase strictly and end with the target frame's 0 "
                         f"(the scan reads a clip in time order), got {offsets}")
    return offsets


class ClipMapper(_VideoMapper):
    """Frames t + offset for each of `offsets` (target offset 0 last).

    With probability `reverse_prob` the video plays backwards: offsets are negated,
    so the context comes from later frames and the target stays last. Indices past
    either end of the video are clamped to its first/last frame, and a missing frame
    (a gap in frame_idx) is replaced by the nearest frame further from the target, as
    the streaming TV3S head picks "the latest frame at or before t + offset" at
    inference (logged once per video): an existing frame is repeated rather than the
    sample dropped.
    """

    @configurable
    def __init__(self, *, videos, offsets, reverse_prob=0.0, **kwargs):
        super().__init__(videos=videos, **kwargs)
        offsets = check_clip_offsets(offsets)
        if not 0.0 <= reverse_prob <= 1.0:
            raise ValueError(f"INPUT.VIDEO.REVERSE_PROB must be in [0, 1], got {reverse_prob}")
        self.offsets = offsets
        self.reverse_prob = reverse_prob
        self._clamped_videos = set()

    @classmethod
    def from_config(cls, cfg, is_train=True, videos=None):
        ret = super().from_config(cfg, is_train, videos)
        ret["offsets"] = list(cfg.INPUT.VIDEO.CLIP_OFFSETS)
        ret["reverse_prob"] = cfg.INPUT.VIDEO.REVERSE_PROB
        return ret

    def frame_indices(self, record, frames):
        """The clip's frame_idx values; `frames` is the video's {frame_idx: record}."""
        t = record["frame_idx"]
        sign = -1 if np.random.rand() < self.reverse_prob else 1
        wanted = [t + sign * o for o in self.offsets]
        first, last = min(frames), max(frames)
        indices = []
        for i in wanted:
            i = min(max(i, first), last)
            step = -1 if i < t else 1
            while i not in frames:  # ends at the first or last frame at the latest
                i += step
            indices.append(i)
        if indices != wanted and record["video_id"] not in self._clamped_videos:
            self._clamped_videos.add(record["video_id"])
            logger.warning("video %s (frames %d..%d, %d present): clip frames %s fall outside it or are missing "
                           "and are clamped to %s; further clamps in this video are not logged",
                           record["video_id"], first, last, len(frames), wanted, indices)
        return indices

    def __call__(self, record):
        frames = self.video_frames(record)
        indices = self.frame_indices(record, frames)
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
