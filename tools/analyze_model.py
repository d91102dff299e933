#!/usr/bin/env python
"""Parameters and GFLOPs per frame of a vss model, counted the way the papers count them.

FLOPs are traced with fvcore on frames of zeros of one video (batch 1, eval mode; see
vss/utils/flops.py) and averaged over the clip: video models (key frames and propagated
frames, streamed frames) cost different amounts on different frames. No weights are needed.
Every frame is traced (about 20 s for R50 at 480x853 on one CPU core); a per-frame model
costs the same on every frame, so --frames 1 gives its number sooner.

  python tools/analyze_model.py --config-file configs/vspw/mask2former/R50.yaml
  python tools/analyze_model.py --config-file configs/cityscapes/mask2former/R50.yaml \\
      --height 1024 --width 2048 --frames 1 --json output/r50_cityscapes_flops.json
"""
import argparse
import json
import os

from detectron2.modeling import build_model
from tabulate import tabulate

from vss.engine import setup_cfg
from vss.utils.flops import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, count_parameters, video_flops


def analyze(cfg, height, width, frames):
    """Parameter counts and per-frame GFLOPs of the model `cfg` builds (random weights)."""
    model = build_model(cfg)
    params = count_parameters(model)
    per_frame = video_flops(model, height, width, frames)
    # children that run no counted op (e.g. the criterion at test time) are left out; the
    # model's own ops (e.g. Mask2Former's semantic inference) make up the rest
    modules = [name for name in per_frame[0] if name and any(c[name] for c in per_frame)]
    for c in per_frame:
        c["model itself"] = c[""] - sum(c[name] for name in modules)
    modules.append("model itself")
    return {
        "height": height,
        "width": width,
        "frames": frames,
        "parameters": params["total"],
        "trainable_parameters": params["trainable"],
        "gflops_per_frame": sum(c[""] for c in per_frame) / frames / 1e9,
        "gflops_of_each_frame": [c[""] / 1e9 for c in per_frame],
        "gflops_per_frame_by_module": {m: sum(c[m] for c in per_frame) / frames / 1e9 for m in modules},
    }


def format_table(config_file, result):
    frames = result["frames"]
    each = result["gflops_of_each_frame"]
    same = max(each) - min(each) < 0.005  # equal at the printed precision
    rows = [
        ["config", config_file],
        ["input", f"{result['height']}x{result['width']}, {_plural(frames, 'frame')} of one video"],
        ["parameters", _count(result["parameters"])],
        ["trainable parameters", _count(result["trainable_parameters"])],
        [
            "GFLOPs / frame",
            f"{result['gflops_per_frame']:.2f} (mean over {_plural(frames, 'frame')}"
            + (", all equal)" if same else ")"),
        ],
    ]
    rows += [[f"- {name}", f"{g:.2f}"] for name, g in result["gflops_per_frame_by_module"].items()]
    if not same:
        rows.append(["GFLOPs of each frame", ", ".join(f"{g:.2f}" for g in each)])
    return tabulate(rows, tablefmt="simple")


def _plural(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _count(n):
    return f"{n:,} ({n / 1e6:.2f}M)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="clip length the FLOPs are averaged over")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.height < 1 or args.width < 1 or args.frames < 1:
        parser.error(f"--height, --width and --frames must be positive, got {args.height}, {args.width}, {args.frames}")

    cfg = setup_cfg(args.config_file, args.opts)
    result = analyze(cfg, args.height, args.width, args.frames)
    print(format_table(args.config_file, result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": args.config_file, "opts": args.opts, **result}, f, indent=2)


if __name__ == "__main__":
    main()
