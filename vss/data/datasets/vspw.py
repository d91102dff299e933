"""VSPW (VSPW_480p layout) and the loader every VSPW-layout dataset shares.

Layout::

    <root>/{train,val,test}.txt          one video id per line
    <root>/data/<video>/origin/<frame>.jpg
    <root>/data/<video>/mask/<frame>.png  raw ids: 0 others, 1..124 classes, 255 void
"""
import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..frames import natural_key, number_frames, warn_incomplete_video
from ..io import image_size
from .root import root_hint

logger = logging.getLogger(__name__)

FRAME_EXTS = (".jpg", ".jpeg", ".png")


def _read_classes():
    with open(os.path.join(os.path.dirname(__file__), "vspw_classes.json")) as f:
        classes = json.load(f)["classes"]
    return [c["name"] for c in classes], [tuple(c["color"]) for c in classes]


VSPW_CLASSES, VSPW_COLORS = _read_classes()


def load_vspw_layout(root, split, how_to_get="see datasets/README.md"):
    """One record per frame of every video listed in `<root>/<split>.txt`.

    Frames are ordered and numbered by the numbers in their names (vss.data.frames):
    frame_idx keeps the gaps of missing frames, which are logged once per video together
    with any mask that has no frame. A frame without a mask PNG is unlabelled
    (`sem_seg_file_name` None; logged per video). All frames of a video are taken to
    share the first frame's size; the mappers check it when they read a frame. A video with a
    `context` folder (the synthetic context task) gives each frame its `context_file_name`.
    `how_to_get` ends the error for a missing dataset: where to get it.
    """
    split_file = os.path.join(root, f"{split}.txt")
    if not os.path.isfile(split_file):
        found = "" if os.path.isdir(root) else f"; the folder {os.path.abspath(root)} itself does not exist"
        raise FileNotFoundError(f"split file {os.path.abspath(split_file)} does not exist (expected one video id per "
                                f"line{found}): {how_to_get}{root_hint(split_file)}")
    with open(split_file) as f:
        videos = [line.strip() for line in f if line.strip()]
    if not videos:
        raise ValueError(f"split file {split_file} lists no videos")

    records = []
    for video in videos:
        frame_dir = os.path.join(root, "data", video, "origin")
        mask_dir = os.path.join(root, "data", video, "mask")
        if not os.path.isdir(frame_dir):
            raise FileNotFoundError(
                f"video {video!r} listed in {split_file} has no frame folder {frame_dir}"
            )
        names = [n for n in os.listdir(frame_dir) if n.lower().endswith(FRAME_EXTS)]
        if not names:
            raise ValueError(f"video {video!r} has no frames in {frame_dir} (expected {FRAME_EXTS} files)")
        frames = number_frames(names, frame_dir)
        masks = set(os.listdir(mask_dir)) if os.path.isdir(mask_dir) else set()
        context_dir = os.path.join(root, "data", video, "context")
        context = os.path.isdir(context_dir)
        height, width = image_size(os.path.join(frame_dir, frames[0][1]))
        unlabelled = 0
        for idx, name in frames:
            stem = os.path.splitext(name)[0]
            mask = stem + ".png"
            if mask in masks:
                masks.discard(mask)
                mask = os.path.join(mask_dir, mask)
            else:
                mask, unlabelled = None, unlabelled + 1
            record = {
                "file_name": os.path.join(frame_dir, name),
                "sem_seg_file_name": mask,
                "height": height,
                "width": width,
                "video_id": video,
                "frame_idx": idx,
                "image_id": f"{video}/{stem}",
            }
            if context:
                record["context_file_name"] = os.path.join(context_dir, stem + ".png")
            records.append(record)
        if unlabelled and os.path.isdir(mask_dir):
            logger.warning("video %s: %d of %d frames have no mask in %s; they are unlabelled",
                           video, unlabelled, len(frames), mask_dir)
        orphans = sorted((m for m in masks if m.lower().endswith(".png")), key=natural_key)
        warn_incomplete_video(video, frame_dir, [idx for idx, _ in frames],
                              [os.path.join(mask_dir, m) for m in orphans])
    logger.info("loaded %d frames of %d videos from %s (%s)", len(records), len(videos), root, split)
    return records


def register_vspw_layout(name, root, split, classes, colors, label_offset=1, how_to_get="see datasets/README.md",
                         **extra_meta):
    """Register a dataset in VSPW layout under `name` (`how_to_get`: as for `load_vspw_layout`)."""
    DatasetCatalog.register(name, lambda: load_vspw_layout(root, split, how_to_get))
    MetadataCatalog.get(name).set(
        stuff_classes=list(classes),
        stuff_colors=[list(c) for c in colors],
        ignore_label=255,
        label_offset=label_offset,
        evaluator_type="vss",
        dataset_root=root,
        split=split,
        **extra_meta,
    )


def register_all_vspw(datasets_root):
    root = os.path.join(datasets_root, "VSPW_480p")
    how_to_get = (f"download VSPW_480p from the VSPW site and unpack it as {root} "
                  "($DETECTRON2_DATASETS/VSPW_480p; see datasets/README.md)")
    for split in ("train", "val", "test"):
        register_vspw_layout(f"vspw_{split}", root, split, VSPW_CLASSES, VSPW_COLORS, how_to_get=how_to_get)
