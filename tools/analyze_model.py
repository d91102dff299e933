#!/usr/bin/env python
"""Parameters and GFLOPs per frame of a vss model, counted the way the papers count them.

FLOPs are counted on frames of zeros of one video (batch 1, eval mode, random weights; see
vss/utils/flops.py; the counting and the table: vss/utils/model_analysis.py). A video model
costs differently on different frames, but has only a few kinds of frames, so one frame of
each kind is counted (vss.utils.flops.frame_plan):

  per-frame models   one frame;
  MPVSS              one key frame and one propagated frame; the cost per frame is their mean
                     with a key frame every K frames, printed for the config's K and --intervals;
  TV3S streaming     one step after a first frame (every later frame costs the same).

--frames N counts every frame of an N-frame video instead and checks that each frame costs
what the shortcut says (slower: one trace per frame).

--count chooses the counter: "fvcore" (default; every product the model computes) or "hooks"
(the TV3S release's counter: module hooks of mmcv's layer types plus SegFormer's attention term;
it misses Mamba's `weight @ x` products, see vss/utils/hook_flops.py), or "both". A fvcore trace
of a 480x853 frame takes 20-50 s on one CPU core; the hook count a plain forward.

  python tools/analyze_model.py --config-file configs/vspw/mask2former/R50.yaml
  python tools/analyze_model.py --config-file configs/vspw/tv3s/MiT-B1.yaml --count both
  python tools/analyze_model.py --config-file configs/cityscapes/mask2former/R50.yaml \\
      --height 1024 --width 2048 --json output/r50_cityscapes_flops.json
"""
import argparse
import json
import os
import sys

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from vss.engine import setup_cfg
from vss.engine.cli import add_debug_argument, run_main
from vss.utils.flops import COUNTS, DEFAULT_HEIGHT, DEFAULT_WIDTH
from vss.utils.model_analysis import analyze, format_table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--count", choices=[*COUNTS, "both"], default="fvcore", help="FLOP counter (see above)")
    parser.add_argument("--frames", type=int, metavar="N",
                        help="count every frame of an N-frame video (a check of the one-frame-per-kind shortcut)")
    parser.add_argument("--intervals", default="1,2,5,10", metavar="K,K,...",
                        help="MPVSS: key-frame intervals to give the mean cost per frame for (and the config's)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.height < 1 or args.width < 1 or (args.frames is not None and args.frames < 1):
        parser.error(f"--height, --width and --frames must be positive, got {args.height}, {args.width}, "
                     f"{args.frames}")
    try:
        intervals = sorted({int(k) for k in args.intervals.split(",")})
    except ValueError:
        parser.error(f"--intervals {args.intervals!r}: expected comma-separated integers")
    if intervals[0] < 1:
        parser.error(f"--intervals {args.intervals!r}: intervals must be >= 1")

    cfg = setup_cfg(args.config_file, args.opts)
    counts = COUNTS if args.count == "both" else (args.count,)
    try:
        result = analyze(cfg, args.height, args.width, counts, args.frames, intervals, progress=True)
    except ValueError as e:
        parser.error(str(e))
    print(format_table(args.config_file, result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": args.config_file, "opts": args.opts, **result}, f, indent=2)


if __name__ == "__main__":
    run_main(main, "analyze_model.py", debug="--debug" in sys.argv[1:])
