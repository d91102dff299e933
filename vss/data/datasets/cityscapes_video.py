"""Cityscapes video: 30-frame snippets, labels only on the annotated (20th) frame.

Layout::

    <root>/leftImg8bit_sequence/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
"""
import logging
import os
from collections import defaultdict

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..io import image_size

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
                f"Cityscapes video folder {d} does not exist: download leftImg8bit_sequence_trainvaltest.zip "
                f"and gtFine_trainvaltest.zip from the Cityscapes site, unzip both into {root}, then run "
                "datasets/prepare_cityscapes_video.py (see datasets/README.md)")
    snippets = defaultdict(list)
    for city in sorted(os.listdir(seq_root)):
        for name in os.listdir(os.path.join(seq_root, city)):
            if not name.endswith(SUFFIX):
                continue
            parts = name[: -len(SUFFIX)].split("_")
            if len(parts) != 3:
                raise ValueError(f"unexpected Cityscapes frame name {name} in {city} "
                                 f"(expected <city>_<seq>_<frame>{SUFFIX})")
            snippets[f"{parts[0]}_{parts[1]}"].append((int(parts[2]), city, name))
    if not snippets:
        raise ValueError(f"no frames found under {seq_root}")

    records, labelled = [], 0
    for video in sorted(snippets):
        frames = sorted(snippets[video])
        city = frames[0][1]
        height, width = image_size(os.path.join(seq_root, city, frames[0][2]))
        for idx, (_, city, name) in enumerate(frames):
            stem = name[: -len(SUFFIX)]
            label = os.path.join(gt_root, city, stem + LABEL_SUFFIX)
            if os.path.isfile(label):
                labelled += 1
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
