#!/usr/bin/env python
"""Per-frame latency and memory of a video model streaming one long video.

A streaming model (TV3S) carries a fixed-size state from frame to frame, so its cost per frame
must not grow with the video: this feeds one video of --frames random frames (default 1,000)
one frame at a time, in eval mode without autograd, and compares the first 100 frames with the
last 100 (mean latency, memory, size of the carried state). "flat" means the last window's mean
latency is within --tolerance of the first's. On the CPU the CPU time of each frame is measured
too (one thread by default, so it is the frame's whole compute): it depends less than the
wall-clock latency on what else the machine runs, though shared cores and caches still slow it.

Memory: on CUDA, the peak allocated during each frame (torch.cuda.max_memory_allocated, weights
included); on the CPU, the process's resident set size after each frame. The carried state's
size (bytes of the tensors the model keeps for the video) is exact on both.

With a temporal head that has `infer_clip` (TV3S), the per-frame cost of streaming is also
compared with one forward over a clip of --clip frames (fresh video each, median of --repeats).

The default is a quick run (200 frames, windows of 50, 3 clip repeats: about a minute for the
tiny TV3S at 120x160 on the CPU); --full is the long one (1,000 frames, windows of 100, 10
repeats). --frames, --window, --warmup and --repeats override either.

  python tools/benchmark_streaming.py --config-file configs/synthetic/tv3s_tiny.yaml \\
      --height 120 --width 160 --full --json output/tv3s_tiny_streaming.json
"""
import argparse
import sys
import json
import os

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

import torch
from tqdm import tqdm

from vss.benchmark.speed import build
from vss.benchmark.streaming import clip_vs_stream, format_report, stream_video, summarize
from vss.utils.flops import DEFAULT_HEIGHT, DEFAULT_WIDTH
from vss.engine.cli import add_debug_argument, run_main

QUICK = {"frames": 200, "window": 50, "warmup": 5, "repeats": 3}
FULL = {"frames": 1000, "window": 100, "warmup": 10, "repeats": 10}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--full", action="store_true", help="the long run (see above)")
    parser.add_argument("--frames", type=int, help="length of the streamed video")
    parser.add_argument("--window", type=int, help="frames compared at the start and the end")
    parser.add_argument("--tolerance", type=float, default=0.1, help="allowed relative change of the mean latency")
    parser.add_argument("--warmup", type=int, help="frames of an untimed video streamed first")
    parser.add_argument("--clip", type=int, default=4, help="clip length of the clip-vs-stream comparison (0: skip)")
    parser.add_argument("--repeats", type=int, help="repeats of the clip-vs-stream comparison")
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers (and every frame's) to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    for key, value in (FULL if args.full else QUICK).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.frames, args.window, args.height, args.width, args.threads, args.repeats) < 1:
        parser.error("--frames, --window, --height, --width, --threads and --repeats must be positive")
    if 2 * args.window > args.frames:
        parser.error(f"--frames ({args.frames}) must hold two windows of --window ({args.window}) frames")
    if args.warmup < 0 or args.clip < 0:
        parser.error("--warmup and --clip must not be negative")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")

    torch.set_num_threads(args.threads)
    model = build(args.config_file, args.opts, args.device)
    if not hasattr(model, "temporal"):
        parser.error(f"{args.config_file}: {type(model).__name__} is not a video model (VideoSegmentor)")
    if args.clip and not hasattr(model.temporal, "infer_clip"):
        parser.error(f"--clip {args.clip}: the temporal head {type(model.temporal).__name__} has no infer_clip "
                     "(pass --clip 0)")

    total = args.warmup + args.frames + 2 * args.repeats * args.clip
    with tqdm(total=total, unit="frame", leave=False) as bar:
        if args.warmup:
            bar.set_description("warm-up")
            stream_video(model, args.height, args.width, args.warmup, video_id="warmup", done=bar.update)
        bar.set_description("streaming")
        per_frame = stream_video(model, args.height, args.width, args.frames, done=bar.update)
        if args.clip:
            bar.set_description("clip vs stream")
            clip = clip_vs_stream(model, args.height, args.width, args.clip, args.repeats, done=bar.update)
    result = {
        "config": args.config_file,
        "opts": args.opts,
        "frames": args.frames,
        "height": args.height,
        "width": args.width,
        "device": args.device,
        "threads": args.threads,
        "summary": summarize(per_frame, args.window, args.tolerance),
    }
    if args.clip:
        result["clip"] = {"frames": args.clip, "repeats": args.repeats, "clip_ms_per_frame": clip["clip"],
                          "stream_ms_per_frame": clip["stream"]}
    print(format_report(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({**result, "per_frame": per_frame}, f, indent=1)


if __name__ == "__main__":
    run_main(main, "benchmark_streaming.py", debug="--debug" in sys.argv[1:])
