#!/usr/bin/env python
"""Measure what a synthetic preset is calibrated on, with baselines only (vss/benchmark/calibration.py):
Copy of the ground truth at K = 5, and the per-frame SegFormer-B0's mIoU, mVC8 and its mIoU at
TV3S's scan resolution on the benchmark's TV3S set. No video model is trained: a preset is set
with these numbers and frozen before any video model sees it.

    .venv/bin/python tools/calibrate_synthetic.py --effects vspw                 # about 5 minutes
    .venv/bin/python tools/calibrate_synthetic.py --effects clean --haze 0.7 --speed 0.2

Prints the numbers and writes them to --json (default OUTPUT/calibration.json).
"""
import argparse
import hashlib
import json
import os
import sys

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from detectron2.utils.logger import setup_logger

from vss.benchmark import REPO
from vss.benchmark.calibration import calibrate
from vss.benchmark.synthetic import TV3S_SCALE
from vss.benchmark.synthetic_report import calibration_table
from vss.data.video_effects import CLEAN, PRESETS, resolve_effects
from vss.engine.cli import add_debug_argument, run_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--effects", choices=sorted(PRESETS), default="vspw", help="preset to start from")
    for name in CLEAN:
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None,
                            help=f"replaces the preset's {name}")
    parser.add_argument("--segformer-iters", type=int, default=800, help="training iterations of the SegFormer")
    parser.add_argument("--tv3s-scale", type=int, default=TV3S_SCALE, help="frame size of the TV3S set over 120x160")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None,
                        help="folder of the data and the SegFormer, reused when trained (default: "
                             "output/calibration/<a hash of the effects, iterations, scale and seed>)")
    parser.add_argument("--json", default=None, help="results file (default OUTPUT/calibration.json)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    setup_logger(name="vss")
    overrides = {name: getattr(args, name) for name in CLEAN}
    if overrides["jpeg_quality"] is not None:
        overrides["jpeg_quality"] = int(overrides["jpeg_quality"])
    try:
        effects = resolve_effects(args.effects, **overrides)
    except ValueError as e:
        sys.exit(f"calibrate_synthetic: {e}")
    # one folder per setting: a trained SegFormer is reused only for the setting it was trained with
    key = json.dumps([effects, args.segformer_iters, args.tv3s_scale, args.seed], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    args.output = args.output or os.path.join(REPO, "output", "calibration", digest)
    res = calibrate(effects, args.output, args.segformer_iters, args.tv3s_scale, args.seed)
    path = args.json or os.path.join(args.output, "calibration.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(calibration_table({args.seed: res}))
    print(f"[calibrate] {path}")


if __name__ == "__main__":
    run_main(main, "calibrate_synthetic.py", debug="--debug" in sys.argv[1:])
