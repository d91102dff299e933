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
import dataclasses
import json
import os
import statistics
import time
import warnings

# fvcore and detectron2 apply torch.jit.script at import time, which torch 2.x deprecates
# with a FutureWarning on every command; nothing here scripts anything.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

import torch
from detectron2.modeling import build_model
from tabulate import tabulate
from tqdm import tqdm

from vss.engine import VSSCheckpointer, setup_cfg
from vss.utils.flops import DEFAULT_HEIGHT, DEFAULT_WIDTH

QUICK = {"frames": 200, "window": 50, "warmup": 5, "repeats": 3}
FULL = {"frames": 1000, "window": 100, "warmup": 10, "repeats": 10}


def random_frame(height, width, index, generator, device):
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator).to(device)
    return {"image": image, "height": height, "width": width, "frame_idx": index}


def state_bytes(state):
    """Bytes of every tensor reachable from a carried state (dataclasses, dicts, sequences,
    plain objects)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return sum(state_bytes(getattr(state, f.name)) for f in dataclasses.fields(state))
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    if hasattr(state, "__dict__"):
        return state_bytes(vars(state))
    return 0


def _rss():
    # Linux: the second field of /proc/self/statm is the resident size in pages
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def stream_video(model, height, width, frames, video_id="stream", seed=0, done=None):
    """Segment one video of random frames frame by frame; done() is called after each frame.

    Returns per-frame lists: "ms" (latency), "cpu_ms" (CPU time of this thread), "memory_bytes"
    (CUDA: peak allocated during the frame; CPU: resident set size after it) and "state_bytes"
    (the state carried out of it).
    """
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    out = {"ms": [], "cpu_ms": [], "memory_bytes": [], "state_bytes": []}
    for i in range(frames):
        frame = dict(random_frame(height, width, i, generator, device), video_id=video_id)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start, cpu_start = time.perf_counter(), time.thread_time()
        model([frame])
        _sync(device)
        out["ms"].append(1000 * (time.perf_counter() - start))
        out["cpu_ms"].append(1000 * (time.thread_time() - cpu_start))
        out["memory_bytes"].append(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss())
        # peeking at the state the next frame would get changes nothing
        out["state_bytes"].append(state_bytes(model.states.get(video_id, i + 1)))
        if done is not None:
            done()
    return out


@torch.no_grad()
def clip_vs_stream(model, height, width, clip, repeats, seed=1, done=None):
    """Median ms per frame of `temporal.infer_clip` over `clip` frames and of streaming the same
    frames one by one, each on a fresh video, alternating so that both see the same load.
    done(n) is called after each forward with the frames it segmented."""
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    frames = [dict(random_frame(height, width, i, generator, device), video_id="clip") for i in range(clip)]
    timings = {"clip": [], "stream": []}
    for r in range(repeats):
        _sync(device)
        start = time.perf_counter()
        model.temporal.infer_clip(model, frames)
        _sync(device)
        timings["clip"].append(1000 * (time.perf_counter() - start) / clip)
        if done is not None:
            done(clip)

        start = time.perf_counter()
        for frame in frames:
            model([dict(frame, video_id=f"clip-stream-{r}")])
        _sync(device)
        timings["stream"].append(1000 * (time.perf_counter() - start) / clip)
        if done is not None:
            done(clip)
    return {name: statistics.median(t) for name, t in timings.items()}


def summarize(per_frame, window, tolerance):
    """First vs last `window` frames: means (latency also median) and whether latency is flat."""
    first = {k: v[:window] for k, v in per_frame.items()}
    last = {k: v[-window:] for k, v in per_frame.items()}
    ratio = statistics.mean(last["ms"]) / statistics.mean(first["ms"])
    cpu_ratio = statistics.mean(last["cpu_ms"]) / statistics.mean(first["cpu_ms"])
    return {
        "window": window,
        "first": _stats(first),
        "last": _stats(last),
        "latency_ratio_last_over_first": ratio,
        "cpu_time_ratio_last_over_first": cpu_ratio,
        "flat": abs(ratio - 1) <= tolerance,
        "cpu_time_flat": abs(cpu_ratio - 1) <= tolerance,
        "tolerance": tolerance,
        "max_memory_bytes": max(per_frame["memory_bytes"]),
    }


def _stats(frames):
    return {
        "mean_ms": statistics.mean(frames["ms"]),
        "median_ms": statistics.median(frames["ms"]),
        "mean_cpu_ms": statistics.mean(frames["cpu_ms"]),
        "mean_memory_bytes": statistics.mean(frames["memory_bytes"]),
        "mean_state_bytes": statistics.mean(frames["state_bytes"]),
    }


def format_report(result):
    s = result["summary"]
    mib = 2 ** 20
    memory = "peak allocated / frame (MiB)" if result["device"] == "cuda" else "RSS after frame (MiB)"
    rows = []
    for name in ("first", "last"):
        w = s[name]
        rows.append([f"{name} {s['window']} frames", f"{w['mean_ms']:.2f}", f"{w['median_ms']:.2f}",
                     f"{w['mean_cpu_ms']:.2f}", f"{w['mean_memory_bytes'] / mib:.1f}",
                     f"{w['mean_state_bytes'] / 1024:.1f}"])
    lines = [
        f"{result['config']}: one video of {result['frames']} frames of {result['height']}x{result['width']}, "
        f"device {result['device']}" + (f", {result['threads']} CPU threads" if result["device"] == "cpu" else ""),
        tabulate(rows, headers=["", "mean ms", "median ms", "mean CPU ms", memory, "state (KiB)"],
                 tablefmt="simple"),
        f"mean latency last/first: {s['latency_ratio_last_over_first']:.3f} -> "
        + ("flat" if s["flat"] else "NOT flat") + f" (tolerance {s['tolerance']:.0%}); mean CPU time last/first: "
        f"{s['cpu_time_ratio_last_over_first']:.3f} -> " + ("flat" if s["cpu_time_flat"] else "NOT flat"),
    ]
    if "clip" in result:
        c = result["clip"]
        lines.append(f"{c['frames']}-frame clip in one forward: {c['clip_ms_per_frame']:.2f} ms/frame; the same frames "
                     f"streamed: {c['stream_ms_per_frame']:.2f} ms/frame "
                     f"(stream/clip {c['stream_ms_per_frame'] / c['clip_ms_per_frame']:.2f}x; median of "
                     f"{c['repeats']})")
    return "\n".join(lines)


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
    cfg = setup_cfg(args.config_file, [*args.opts, "MODEL.DEVICE", args.device])
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        VSSCheckpointer(model).load(cfg.MODEL.WEIGHTS)
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
    main()
