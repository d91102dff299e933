#!/usr/bin/env python
"""Parameters and GFLOPs per frame of a vss model, counted the way the papers count them.

FLOPs are counted on frames of zeros of one video (batch 1, eval mode, random weights; see
vss/utils/flops.py). A video model costs differently on different frames, but has only a few
kinds of frames, so one frame of each kind is counted (vss.utils.flops.frame_plan):

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
import sys
import json
import os
from collections import Counter

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from detectron2.modeling import build_model
from tabulate import tabulate

from vss.engine import setup_cfg
from vss.utils.flops import (
    COUNTS,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    count_frames,
    count_parameters,
    frame_plan,
    mean_cost,
    plan_mismatches,
)
from vss.engine.cli import add_debug_argument, run_main

COUNT_NAMES = {"fvcore": "fvcore", "hooks": "hooks, the TV3S release's counter"}


def analyze(cfg, height, width, counts=("fvcore",), frames=None, intervals=(), progress=False):
    """Parameter counts and per-frame GFLOPs of the model `cfg` builds (random weights).

    frames: None counts one frame of each kind (frame_plan); N counts every frame of an
    N-frame video and reports whether the shortcut holds. intervals: key-frame intervals whose
    mean cost per frame is also given, besides the model's own (key-frame models: MPVSS).
    """
    model = build_model(cfg)
    plan = frame_plan(model)
    if plan.key is not None:
        intervals = sorted(set(intervals) | {len(plan.period)})
    if frames is not None and frames <= max(plan.kinds):
        raise ValueError(f"--frames {frames}: the video must reach frame {max(plan.kinds)} ({plan.summary})")
    params = count_parameters(model)
    result = {
        "height": height,
        "width": width,
        "parameters": params["total"],
        "trainable_parameters": params["trainable"],
        "plan": plan.summary,
        "frames_counted": "every frame" if frames else {str(i): kind for i, kind in plan.kinds.items()},
    }
    for count in counts:
        counted = range(frames) if frames else plan.kinds
        per_frame = count_frames(model, height, width, counted, count, progress)
        result[count] = _summarize(per_frame, plan, intervals)
        if frames:
            result[count]["gflops_of_each_frame"] = [per_frame[i][""] / 1e9 for i in range(frames)]
            result[count]["shortcut_mismatches"] = plan_mismatches(plan, per_frame)
    return result


def _summarize(per_frame, plan, intervals):
    """GFLOPs per frame (the plan's period), by module and by kind of frame."""
    steady = [per_frame[plan.same_as(i)] for i in plan.period]
    mean = sum(steady, Counter())
    # children that run no counted op (e.g. the criterion at test time) are left out; the
    # model's own ops (e.g. Mask2Former's semantic inference) make up the rest
    modules = [name for name in mean if name and any(c[name] for c in per_frame.values())]
    by_module = {name: mean[name] / len(steady) / 1e9 for name in modules}
    by_module["model itself"] = (mean[""] - sum(mean[name] for name in modules)) / len(steady) / 1e9
    out = {
        "gflops_per_frame": mean[""] / len(steady) / 1e9,
        "gflops_per_frame_by_module": by_module,
        "gflops_of_each_kind": {kind: per_frame[i][""] / 1e9 for i, kind in plan.kinds.items()},
    }
    costs = out["gflops_of_each_kind"]
    if plan.key is not None and len(costs) == 2:  # a key frame, then propagated frames up to the next
        (other,) = set(costs) - {plan.key}
        out["gflops_per_frame_with_key_interval"] = {
            str(k): mean_cost(costs, {plan.key: 1, other: k - 1}) for k in intervals}
    return out


def format_table(config_file, result):
    rows = [
        ["config", config_file],
        ["input", f"{result['height']}x{result['width']}, zero frames of one video"],
        ["parameters", _count(result["parameters"])],
        ["trainable parameters", _count(result["trainable_parameters"])],
        ["frames counted", "every frame" if result["frames_counted"] == "every frame" else result["plan"]],
    ]
    for count, name in COUNT_NAMES.items():
        if count not in result:
            continue
        r = result[count]
        rows.append([f"GFLOPs / frame ({name})", f"{r['gflops_per_frame']:.2f}"])
        rows += [[f"- {module}", f"{g:.2f}"] for module, g in r["gflops_per_frame_by_module"].items()]
        if len(r["gflops_of_each_kind"]) > 1:
            rows += [[f"  {kind}", f"{g:.2f}"] for kind, g in r["gflops_of_each_kind"].items()]
        for k, g in r.get("gflops_per_frame_with_key_interval", {}).items():
            rows.append([f"  mean, a key frame every {k}", f"{g:.2f}"])
        if "gflops_of_each_frame" in r:
            each = r["gflops_of_each_frame"]
            rows.append(["  each frame", ", ".join(f"{g:.2f}" for g in each)])
            rows.append(["  mean over the frames", f"{sum(each) / len(each):.2f}"])
            mismatches = r["shortcut_mismatches"]
            rows.append(["  shortcut (one frame of each kind)",
                         "holds: every frame costs what its kind's frame costs" if not mismatches else
                         "FAILS: " + ", ".join(f"frame {i} differs from frame {j}" for i, j in mismatches)])
    return tabulate(rows, tablefmt="simple")


def _count(n):
    return f"{n:,} ({n / 1e6:.2f}M)"


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
