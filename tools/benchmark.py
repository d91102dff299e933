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
import os
import statistics
import threading
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
from vss.utils.flops import DEFAULT_HEIGHT, DEFAULT_WIDTH, video_frames

QUICK = {"frames": 5, "warmup": 1, "repeats": 1}
FULL = {"frames": 50, "warmup": 5, "repeats": 3}


def build(config_file, opts, device):
    cfg = setup_cfg(config_file, [*opts, "MODEL.DEVICE", device])
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        VSSCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


class _RssPeak:
    """Samples the resident set size in a thread; .growth = peak minus the size at the start."""

    INTERVAL_S = 0.002

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.INTERVAL_S):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.growth = self.peak - self.start


def _rss():
    # Linux: the second field of /proc/self/statm is the resident size in pages
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_video(model, frames, video_id, half, done=None):
    """Seconds to segment `frames` one by one as the video `video_id`, and the peak memory in bytes.

    done: called after each frame (a progress bar's update).
    """
    device = frames[0]["image"].device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with _RssPeak() as rss, torch.no_grad(), torch.autocast(device.type, torch.float16, enabled=half):
        start = time.perf_counter()
        for frame in frames:
            model([dict(frame, video_id=video_id)])
            if done is not None:
                done()
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated(device) if cuda else rss.growth


def benchmark(models, frames, warmup, repeats, half=False, progress=False):
    """{name: {"fps": [per repeat], "peak_bytes": max over runs}} for the dict of models.

    Every model first segments a `warmup`-frame video; then the models take turns, one
    run of `frames` each, `repeats` times. progress: a progress bar with the time left (stderr).
    """
    results = {name: {"fps": [], "peak_bytes": 0} for name in models}
    total = len(models) * (warmup + repeats * len(frames))
    with tqdm(total=total, unit="frame", disable=not progress, leave=False) as bar:
        for name, model in models.items():
            if warmup:
                bar.set_description(f"{name} warm-up")
                run_video(model, frames[:warmup], f"{name}/warmup", half, bar.update)
        for r in range(repeats):
            for name, model in models.items():
                bar.set_description(f"{name} run {r + 1}/{repeats}")
                seconds, peak = run_video(model, frames, f"{name}/run{r}", half, bar.update)
                results[name]["fps"].append(len(frames) / seconds)
                results[name]["peak_bytes"] = max(results[name]["peak_bytes"], peak)
    return results


def format_table(labels, results, device):
    memory = "peak allocated (MiB)" if device == "cuda" else "peak RSS growth (MiB)"
    rows = []
    for name, r in results.items():
        fps = statistics.mean(r["fps"])
        rows.append(
            [
                labels[name],
                f"{fps:.3f} [{min(r['fps']):.3f}, {max(r['fps']):.3f}]",
                f"{1000 / fps:.1f}",
                f"{r['peak_bytes'] / 2**20:.0f}",
            ]
        )
    return tabulate(rows, headers=["config", "frames/s mean [min, max]", "ms/frame", memory], tablefmt="simple")


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
    args = parser.parse_args(argv)
    quick = not args.full and args.device == "cpu"
    for key, value in (QUICK if quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
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
        + (" (the quick CPU default; --full for 50 frames x 3 runs)" if quick else "")
    )
    print(format_table(labels, results, args.device))
    if args.vs:
        ratio = statistics.mean(results["config"]["fps"]) / statistics.mean(results["vs"]["fps"])
        print(f"speed ratio {args.config_file} / {args.vs}: {ratio:.2f}x frames/s")


if __name__ == "__main__":
    main()
