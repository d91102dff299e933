"""Cityscapes video: 30-frame snippets, labels only on the annotated (20th) frame.

Layout::

    <root>/leftImg8bit_sequence/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
"""
import logging
import os
from collections import defaultdict

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..frames import number_frames, warn_incomplete_video
from ..io import image_size
from .root import root_hint

logger = logging.getLogger(__name__)

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]
CITYSCAPES_COLORS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
]
SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"


def load_cityscapes_video(root, split):
    """One record per sequence frame; a video is one (city, sequence) snippet."""
    seq_root = os.path.join(root, "leftImg8bit_sequence", split)
    gt_root = os.path.join(root, "gtFine", split)
    for d in (seq_root, gt_root):
        if not os.path.isdir(d):
            raise FileNotFoundError(
                f"Cityscapes video folder {os.path.abspath(d)} does not exist: download "
                f"leftImg8bit_sequence_trainvaltest.zip and gtFine_trainvaltest.zip from the Cityscapes site, "
                f"unzip both into {root}, then run datasets/prepare_cityscapes_video.py (see datasets/README.md)"
                f"{root_hint(d)}")
    snippets = defaultdict(list)
    for city in sorted(os.listdir(seq_root)):
        for name in os.listdir(os.path.join(seq_root, city)):
            if not name.endswith(SUFFIX):
                continue
            parts = name[: -len(SUFFIX)].split("_")
            if len(parts) != 3 or not parts[2].isdigit():
                raise ValueError(f"unexpected Cityscapes frame name {name} in {city} "
                                 f"(expected <city>_<seq>_<frame number>{SUFFIX})")
            snippets[f"{parts[0]}_{parts[1]}"].append((city, name))
    if not snippets:
        raise ValueError(f"no frames found under {seq_root}")

    records, labelled, labels_used = [], 0, set()
    for video in sorted(snippets):
        city = snippets[video][0][0]  # the city is part of the snippet's name
        # Numbered by their stems: the suffix's "8" (leftImg8bit) is no frame number.
        frames = number_frames([name[: -len(SUFFIX)] for _, name in snippets[video]], os.path.join(seq_root, city))
        height, width = image_size(os.path.join(seq_root, city, frames[0][1] + SUFFIX))
        for idx, stem in frames:
            name = stem + SUFFIX
            label = os.path.join(gt_root, city, stem + LABEL_SUFFIX)
            if os.path.isfile(label):
                labelled += 1
                labels_used.add(label)
            else:
                label = None
            records.append(
                {
                    "file_name": os.path.join(seq_root, city, name),
                    "sem_seg_file_name": label,
                    "height": height,
                    "width": width,
                    "video_id": video,
                    "frame_idx": idx,
                    "image_id": stem,
                }
            )
        warn_incomplete_video(video, os.path.join(seq_root, city), [idx for idx, _ in frames])
    orphans = [os.path.join(gt_root, city, name) for city in sorted(os.listdir(gt_root))
               if os.path.isdir(os.path.join(gt_root, city))
               for name in sorted(os.listdir(os.path.join(gt_root, city))) if name.endswith(LABEL_SUFFIX)]
    orphans = [p for p in orphans if p not in labels_used]
    if orphans:
        logger.warning("%d Cityscapes label(s) under %s have no sequence frame and are ignored: %s%s",
                       len(orphans), gt_root, ", ".join(orphans[:10]), ", ..." if len(orphans) > 10 else "")
    if labelled == 0:
        raise ValueError(f"no *{LABEL_SUFFIX} files under {gt_root}: run "
                         "datasets/prepare_cityscapes_video.py to create them")
    logger.info("loaded %d frames (%d labelled) of %d snippets from %s",
                len(records), labelled, len(snippets), seq_root)
    return records


def register_all_cityscapes_video(datasets_root):
    root = os.path.join(datasets_root, "cityscapes")
    for split in ("train", "val"):
        name = f"cityscapes_video_{split}"
        DatasetCatalog.register(name, lambda split=split: load_cityscapes_video(root, split))
        MetadataCatalog.get(name).set(
            stuff_classes=CITYSCAPES_CLASSES,
            stuff_colors=[list(c) for c in CITYSCAPES_COLORS],
            ignore_label=255,
            label_offset=0,
            evaluator_type="vss",
            dataset_root=root,
            split=split,
        )
