"""Inference speed (frames/s) and peak memory of models segmenting a video frame by frame, the way
a streaming video model sees it (tools/benchmark.py is its command line; its help says what is
timed and how memory is sampled).
"""
import os
import statistics
import threading
import time

import torch
from detectron2.modeling import build_model
from tabulate import tabulate
from tqdm import tqdm

from ..engine import load_weights, setup_cfg


def build(config_file, opts, device):
    """The model of `config_file` with `opts` on `device`, in eval mode, with its MODEL.WEIGHTS
    loaded as every entry point loads them ("" keeps the initialisation)."""
    cfg = setup_cfg(config_file, [*opts, "MODEL.DEVICE", device])
    model = build_model(cfg).eval()
    load_weights(model, cfg, training=False)
    return model


class _RssPeak:
    """Samples the resident set size in a thread; .growth = peak minus the size at the start."""

    INTERVAL_S = 0.002

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.INTERVAL_S):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth = self.peak - self.start


def rss_bytes():
    """The process's resident memory in bytes (Linux)."""
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
