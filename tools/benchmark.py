#!/usr/bin/env python
"""Inference speed (frames/s) and peak memory of vss models on a synthetic video.

Each timed run feeds one video of random frames (one video_id, frame_idx 0, 1, ...) to the
model one frame at a time, in eval mode without autograd, the way a streaming video model
sees it; every run is a new video, so video models start from a fresh state. Frames are
on the device beforehand: the time is the model's alone. With --vs the two models take
turns run by run, so that both see the same machine load, and the speed ratio is printed.

Peak memory: on CUDA, torch.cuda.max_memory_allocated (weights included); on the CPU,
the peak growth of the process's resident memory over a run, sampled every few
milliseconds (approximate: the allocator may keep memory from earlier runs).

Weights are random unless the config or the overrides set MODEL.WEIGHTS; the overrides
apply to both configs.

On the CPU the default is a quick run: 5 frames (one key-frame period of MPVSS at K = 5), 1 run,
1 warm-up frame, about a minute for Mask2Former R50 at 480x853 on 2 cores. --full, and the
default on CUDA, is the paper-size run (50 frames x 3 runs, 5 warm-up frames). --frames,
--warmup and --repeats override either.

  python tools/benchmark.py --config-file configs/vspw/mask2former/R50.yaml \\
      --vs configs/vspw/mask2former/Swin-T.yaml --device cuda --half
"""
import argparse
import sys
import statistics

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

import torch

from vss.benchmark.speed import benchmark, build, format_table
from vss.utils.flops import DEFAULT_HEIGHT, DEFAULT_WIDTH, video_frames
from vss.engine.cli import add_debug_argument, run_main

QUICK = {"frames": 5, "warmup": 1, "repeats": 1}
FULL = {"frames": 50, "warmup": 5, "repeats": 3}


def quick_note(defaulted):
    """Which counts came from the quick CPU preset (the others were given)."""
    if len(defaulted) == len(QUICK):
        return "the quick CPU default"
    return f"{', '.join('--' + key for key in defaulted)}: the quick CPU default"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--vs", metavar="FILE", help="a second config, run side by side")
    parser.add_argument("--full", action="store_true", help="the paper-size run on the CPU too (see above)")
    parser.add_argument("--frames", type=int, help="frames per timed run (one video)")
    parser.add_argument("--warmup", type=int, help="frames of the untimed first video")
    parser.add_argument("--repeats", type=int, help="timed runs per model")
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--half", action="store_true", help="float16 autocast (CUDA only)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both configs: KEY VALUE ...")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    quick = not args.full and args.device == "cpu"
    defaulted = [key for key in (QUICK if quick else FULL) if getattr(args, key) is None]
    for key in defaulted:
        setattr(args, key, (QUICK if quick else FULL)[key])
    if min(args.frames, args.repeats, args.height, args.width) < 1 or args.warmup < 0:
        parser.error("--frames, --repeats, --height and --width must be positive and --warmup not negative")
    if args.warmup > args.frames:
        parser.error(f"--warmup ({args.warmup}) cannot exceed --frames ({args.frames})")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.half and args.device != "cuda":
        parser.error("--half needs --device cuda")

    labels = {"config": args.config_file}
    if args.vs:
        labels["vs"] = args.vs
    models = {name: build(path, args.opts, args.device) for name, path in labels.items()}
    frames = video_frames(args.height, args.width, args.frames, fill=None, seed=0)
    for f in frames:
        f["image"] = f["image"].to(args.device)

    results = benchmark(models, frames, args.warmup, args.repeats, args.half, progress=True)
    print(
        f"{args.frames} frames of {args.height}x{args.width} per run, {args.repeats} runs per model, "
        f"{args.warmup} warm-up frames, device {args.device}"
        + (" (float16 autocast)" if args.half else "")
        + (f", CPU threads: {torch.get_num_threads()}" if args.device == "cpu" else "")
        + (f" ({quick_note(defaulted)}; --full for 50 frames x 3 runs)" if quick and defaulted else "")
    )
    print(format_table(labels, results, args.device))
    if args.vs:
        ratio = statistics.mean(results["config"]["fps"]) / statistics.mean(results["vs"]["fps"])
        print(f"speed ratio {args.config_file} / {args.vs}: {ratio:.2f}x frames/s")


if __name__ == "__main__":
    run_main(main, "benchmark.py", debug="--debug" in sys.argv[1:])
