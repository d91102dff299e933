"""How much of TV3S's carried scan state a streamed video uses, layer by layer.

Streaming (MODEL.TV3S.INFERENCE "stream"), every Mamba layer scans a frame's tokens of a window
from the state that window reached at the end of the previous frame. At every frame after a
video's first, for every layer:

- retained: the weight of the carried scan state in the state after k of the frame's tokens,
  R[window, d, n] = exp(A[d, n] * sum of the steps softplus(delta_t[d] + bias[d]) of those
  tokens): h_k = R * h_0 + what the frame's own tokens wrote. At k = 1/4, 1/2, 3/4 and all of a
  window's tokens per frame (FRACTIONS): how far into the frame the old state reaches. Per frame
  the median R and the shares of (window, channel, state) with R above each of THRESHOLDS;
- output share: ||y_carried - y_fresh|| / ||y_carried|| over the frame's tokens, y_fresh the same
  layer on the same input from a zero state (conv and scan): the state's effect on that layer's
  output alone (that it also changed the layer's input is not counted here).

A frame's statistics cover all windows of the layer (every window group); the reported values
are their means over the measured frames.
"""
import contextlib
import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from tabulate import tabulate

from ..data.mappers import FrameMapper
from ..data.video import group_by_video
from ..modeling.postprocess import labels_only
from ..modeling.tv3s.head import StateSpaceSharing
from ..modeling.tv3s.mamba import at_least_float32

__all__ = ["FRACTIONS", "THRESHOLDS", "retained", "recording", "state_carry", "learned", "markdown", "comparison"]

# where in a window's tokens of a frame the carried state's weight is read
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
# R above these: the state still holds half of what it carried / is not yet gone
THRESHOLDS = (0.5, 0.01)


def retained(mamba, hidden, state, fractions=FRACTIONS):
    """The carried scan state's weight R (len(fractions), windows, d_inner, d_state) in the state
    of `mamba` after each fraction of the tokens `hidden` (windows, L, d_model), scanned from
    `state` (a MambaState: its conv state changes the steps of the first tokens)."""
    _, _, delta, _, _, _ = mamba.scan_inputs(hidden, state)
    steps = F.softplus(at_least_float32(delta) + at_least_float32(mamba.dt_proj.bias)[:, None])
    length = steps.shape[-1]
    ends = [max(1, round(f * length)) - 1 for f in fractions]
    summed = steps.cumsum(-1)[..., ends]  # (windows, d_inner, positions)
    return torch.exp(mamba.decays()[None, :, :, None] * summed[:, :, None]).permute(3, 0, 1, 2)


def _inputs(args, kwargs):
    """Mamba.forward's (hidden, state) from a hook's arguments."""
    hidden = args[0] if args else kwargs["hidden"]
    state = args[1] if len(args) > 1 else kwargs.get("state")
    return hidden, state


@contextlib.contextmanager
def recording(layers):
    """Forward hooks on the Mamba mixers of `layers` (ShiftedWindowMamba.layers), removed on exit.

    Yields {layer index: [(R of `retained`, squared norm of y_carried - y_fresh, of y_carried,
    tokens per window), ...]}, one entry per call with a carried state (a window group of a frame
    after the video's first).
    """
    calls = defaultdict(list)

    def hook(index):
        def measure(module, args, kwargs, output):
            hidden, state = _inputs(args, kwargs)
            if state is None:  # a video's first frame: nothing carried
                return
            carried = at_least_float32(output[0])
            fresh = at_least_float32(module.forward(hidden)[0])  # .forward: no hooks, no recursion
            calls[index].append((retained(module, hidden, state), (carried - fresh).square().sum().item(),
                                 carried.square().sum().item(), hidden.shape[1]))
        return measure

    handles = [layer.mixer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _frame_stats(calls):
    """One frame's statistics of one layer from its `recording` entries."""
    r = torch.cat([r.flatten(1) for r, _, _, _ in calls], dim=1)  # (positions, windows * d_inner * d_state)
    changed, total = sum(c[1] for c in calls), sum(c[2] for c in calls)
    stats = {"median": r.median(dim=1).values.tolist()}
    stats.update({f"> {t}": (r > t).double().mean(dim=1).tolist() for t in THRESHOLDS})
    stats["output share"] = math.sqrt(changed / total) if total > 0 else 0.0
    return stats


def _videos(dataset_name, videos):
    """The first `videos` videos (None: all) of a registered dataset, as lists of records in frame order."""
    grouped = list(group_by_video(DatasetCatalog.get(dataset_name)).values())
    if not grouped:
        raise ValueError(f"dataset {dataset_name!r} has no frames")
    if videos is not None:
        if not 1 <= videos <= len(grouped):
            raise ValueError(f"dataset {dataset_name!r} has {len(grouped)} videos, asked for {videos}")
        grouped = grouped[:videos]
    return grouped


def state_carry(cfg, model, dataset_name, videos=None):
    """Stream the first `videos` videos (None: all) of `dataset_name` through `model` (a
    VideoSegmentor with TV3S's StateSpaceSharing head, MODEL.TV3S.INFERENCE "stream"), frames
    mapped as the test loader maps them, and measure its Mamba layers' use of the carried state.

    Returns {"videos", "frames" (measured: all but each video's first), "fractions",
    "thresholds", "layers": [{"layer", "shifted", "tokens per frame" (of the layer's windows),
    "median", "> t" per threshold (each a value per fraction), "output share"}]}, frame means.
    """
    head = getattr(model, "temporal", None)
    if not isinstance(head, StateSpaceSharing):
        raise ValueError(f"the state-carry diagnostic measures TV3S (MODEL.VIDEO.TEMPORAL_HEAD StateSpaceSharing), "
                         f"got {type(model).__name__} with temporal head {type(head).__name__}")
    if head.inference != "stream":
        raise ValueError(f"the state-carry diagnostic measures the carried states of MODEL.TV3S.INFERENCE 'stream', "
                         f"got {head.inference!r}")
    mapper = FrameMapper(cfg, is_train=False)
    layers = head.vs.layers
    chosen = _videos(dataset_name, videos)
    per_frame, tokens = defaultdict(list), defaultdict(set)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), labels_only(), recording(layers) as calls:
            for records in chosen:
                model.reset()
                for record in records:
                    model([mapper(record)])
                    for i, layer_calls in calls.items():
                        per_frame[i].append(_frame_stats(layer_calls))
                        tokens[i].update(c[3] for c in layer_calls)
                    calls.clear()
    finally:
        model.reset()
        model.train(was_training)
    frames = len(per_frame[0])
    if frames == 0:
        raise ValueError(f"dataset {dataset_name!r}: the chosen videos have no frame after their first to measure")
    return {
        "videos": len(chosen),
        "frames": frames,
        "fractions": list(FRACTIONS),
        "thresholds": list(THRESHOLDS),
        "layers": [{"layer": i, "shifted": head.vs.layer_shift(i) > 0, "tokens per frame": sorted(tokens[i]),
                    **{key: _mean([f[key] for f in per_frame[i]]) for key in per_frame[i][0]},
                    **learned(layer.mixer)}
                   for i, layer in enumerate(layers)],
    }


def learned(mamba):
    """How far training moved what sets the state's reach: the largest change of A_log from its
    initial log(1..d_state) (the same for every channel), and the 10/50/90th percentiles of the
    steps softplus(dt_proj.bias) without input (initialised log-uniform in [dt_min, dt_max])."""
    a_log = at_least_float32(mamba.A_log.detach())
    start = torch.log(torch.arange(1, a_log.shape[1] + 1, dtype=a_log.dtype, device=a_log.device))
    steps = F.softplus(at_least_float32(mamba.dt_proj.bias.detach()))
    return {"A_log moved": (a_log - start).abs().max().item(),
            "step percentiles": torch.quantile(steps, torch.tensor([0.1, 0.5, 0.9], device=steps.device)).tolist()}


def _mean(values):
    """The mean of numbers, or element-wise of equal-length lists of numbers."""
    if isinstance(values[0], list):
        return [sum(v) / len(values) for v in zip(*values)]
    return sum(values) / len(values)


def _layer_name(layer):
    return f"{layer['layer']}{' (shifted)' if layer['shifted'] else ''}"


def _r_cell(result, layer, k):
    """Median / share above each threshold of R at fraction index k."""
    shares = [f"{100 * layer[f'> {t}'][k]:.0f}%" for t in result["thresholds"]]
    return " / ".join([f"{layer['median'][k]:.2f}", *shares])


def markdown(result):
    """A `state_carry` result as a Markdown table, a row per Mamba layer."""
    headers = ["layer", "tokens/frame", *[f"R after {f:g} of the frame" for f in result["fractions"]], "output share",
               "A_log moved", "steps p10 / p50 / p90"]
    rows = [[_layer_name(layer), ", ".join(map(str, layer["tokens per frame"])),
             *[_r_cell(result, layer, k) for k in range(len(result["fractions"]))], f"{layer['output share']:.3f}",
             f"{layer['A_log moved']:.3f}", " / ".join(f"{s:.4f}" for s in layer["step percentiles"])]
            for layer in result["layers"]]
    thresholds = " / ".join(f"share > {t:g}" for t in result["thresholds"])
    text = (f"{result['frames']} frames of {result['videos']} videos; R cells: median / {thresholds}\n\n"
            + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    if "clip gradient" in result:
        grad = result["clip gradient"]
        text += (f"\n\nGradient of the temporal loss reaching each clip frame (offsets {grad['offsets']}), relative to "
                 f"the last, mean over {grad['clips']} training clips: "
                 + " / ".join(f"{share:.3f}" for share in grad["gradient share"]))
    return text


def comparison(results):
    """Markdown table of several `state_carry` results ({name: result}, models of one architecture), a
    row per layer: per model the carried state's weight R after the whole frame (median / shares
    above the thresholds) and its output share."""
    first = next(iter(results.values()))
    headers = ["layer", "tokens/frame"] + [f"{what}, {name}" for name in results
                                           for what in ("R after the frame", "output share")]
    rows = []
    for i, layer in enumerate(first["layers"]):
        row = [_layer_name(layer), ", ".join(map(str, layer["tokens per frame"]))]
        for result in results.values():
            other = result["layers"][i]
            row += [_r_cell(result, other, -1), f"{other['output share']:.2f}"]
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
