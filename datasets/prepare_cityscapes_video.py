#!/usr/bin/env python
"""Prepare Cityscapes video for vss: write *_gtFine_labelTrainIds.png and check the layout.

    python datasets/prepare_cityscapes_video.py [--root $DETECTRON2_DATASETS/cityscapes]

Needs leftImg8bit_sequence/ and gtFine/ (with *_gtFine_labelIds.png) under the root.
Existing train-id files are kept. The check reports every annotated frame whose 30-frame
sequence snippet is missing.
"""
import argparse
import glob
import os

import numpy as np
from PIL import Image

# Cityscapes label id -> train id for the 19 evaluated classes; every other id is ignored.
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                  24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def train_id_lut():
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def convert(gt_root):
    lut, written = train_id_lut(), 0
    for path in sorted(glob.glob(os.path.join(gt_root, "*", "*", "*_gtFine_labelIds.png"))):
        out = path.replace("_labelIds.png", "_labelTrainIds.png")
        if os.path.exists(out):
            continue
        Image.fromarray(lut[np.asarray(Image.open(path))]).save(out)
        written += 1
    return written


def check(root):
    missing = []
    for split in ("train", "val"):
        for label in glob.glob(os.path.join(root, "gtFine", split, "*", "*_gtFine_labelTrainIds.png")):
            stem = os.path.basename(label)[: -len("_gtFine_labelTrainIds.png")]
            city = stem.split("_")[0]
            frame = os.path.join(root, "leftImg8bit_sequence", split, city, stem + "_leftImg8bit.png")
            if not os.path.isfile(frame):
                missing.append(frame)
    return missing


def main():
    default = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "cityscapes")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=default)
    args = parser.parse_args()
    for sub in ("leftImg8bit_sequence", "gtFine"):
        if not os.path.isdir(os.path.join(args.root, sub)):
            parser.error(f"{os.path.join(args.root, sub)} does not exist: download it from the Cityscapes site "
                         "(leftImg8bit_sequence_trainvaltest.zip, gtFine_trainvaltest.zip) and unzip it there")
    print(f"wrote {convert(os.path.join(args.root, 'gtFine'))} train-id label files")
    missing = check(args.root)
    if missing:
        parser.error(f"{len(missing)} annotated frames have no sequence frame, e.g. {missing[0]}")
    print("layout OK")


if __name__ == "__main__":
    main()
