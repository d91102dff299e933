"""Streaming cost of a video model over a long video: time and memory per frame, the carried
state's size, and whether they stay flat, plus clip-against-stream inference
(tools/benchmark_streaming.py is its command line; its help says what each number is).
"""
import dataclasses
import statistics
import time

import torch
from tabulate import tabulate

from .speed import rss_bytes


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
        out["memory_bytes"].append(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss_bytes())
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
