"""Generate the synthetic video dataset (registered as synthetic_vss_{train,val}).

    python datasets/prepare_synthetic.py                # ./datasets/synthetic_vss, seconds
    python datasets/prepare_synthetic.py --frames 40 --height 240 --width 320 --overwrite

The default root is `$DETECTRON2_DATASETS/synthetic_vss`, where the registered datasets
look. Rerunning with the same options does nothing; other options need --overwrite.
"""
import argparse
import os
import sys

from vss.data.datasets.synthetic import SYNTHETIC_DIRNAME
from vss.data.synthetic import generate


def main(argv=None):
    default_root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
                                SYNTHETIC_DIRNAME)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=default_root, help=f"output folder (default {default_root})")
    parser.add_argument("--train-videos", type=int, default=8)
    parser.add_argument("--val-videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20, help="frames per video")
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flow-files", action="store_true",
                        help="also write flow/<t>.flo (Middlebury) and flow_valid/<t>.png: the backward flow "
                             "of each frame t > 0 to frame t - 1")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset generated with different options")
    args = parser.parse_args(argv)
    try:
        summary = generate(args.root, train_videos=args.train_videos, val_videos=args.val_videos,
                           frames=args.frames, height=args.height, width=args.width, seed=args.seed,
                           flow_files=args.flow_files, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:
        sys.exit(f"prepare_synthetic: {e}")
    videos = {split: len(ids) for split, ids in summary["videos"].items()}
    if summary["generated"]:
        print(f"wrote {summary['frames']} frames ({videos['train']} train / {videos['val']} val videos) "
              f"to {summary['root']}")
    else:
        print(f"{summary['root']} is already up to date ({videos['train']} train / {videos['val']} val "
              "videos with these options); nothing to do")


if __name__ == "__main__":
    main()
