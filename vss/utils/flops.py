"""Parameter and FLOP counts the way the MPVSS and TV3S papers report them.

FLOPs: fvcore's FlopCountAnalysis of the model in eval mode, without autograd, on one
frame of zeros, batch 1; one fused multiply-add is one FLOP. fvcore's default handles
apply, with one addition: `aten::baddbmm`, which recent torch emits for masked attention
where older torch emitted `bmm`, counts as a batched matmul. The deformable attention's
grid_sample counts 4 FLOPs per sampled value (fvcore's bilinear rule), like upstream
Mask2Former's pure-PyTorch path: that is what the published 110.6G (R50) includes.

`count="hooks"` counts instead as the TV3S release did (hook_flops.py), to compare with its
published numbers.

Video models cost differently on different frames, but only a few kinds of frames exist
(`frame_plan`): tracing one frame of each kind gives the per-frame cost of any video.
"""
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from detectron2.layers import FrozenBatchNorm2d
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import bmm_flop_jit
from torch import nn
from tqdm import tqdm

from ..data.clips import release_test_clip
from ..modeling.mpvss.propagation import MaskPropagation
from ..modeling.tv3s.head import StateSpaceSharing
from .hook_flops import hook_flops

COUNTS = ("fvcore", "hooks")
DEFAULT_HEIGHT = 480
DEFAULT_WIDTH = 853
DEFAULT_FRAMES = 15


def count_parameters(model):
    """{"total", "trainable"} parameter counts.

    "total" also holds the affine weight and bias of frozen batch norms: detectron2 stores
    them as buffers, but they are parameters of the published models (44.0M for R50).
    """
    frozen_affine = sum(
        m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, FrozenBatchNorm2d)
    )
    return {
        "total": sum(p.numel() for p in model.parameters()) + frozen_affine,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def video_frames(height, width, frames, video_id="video", fill=0, seed=None):
    """`frames` input dicts of one video, frame_idx 0..frames-1, in the models' test format.

    fill: the value of every pixel, or None for uniform random uint8 frames (from `seed`).
    """
    if frames < 1:
        raise ValueError(f"video_frames: need at least one frame, got frames={frames}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    out = []
    for i in range(frames):
        if fill is None:
            image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        else:
            image = torch.full((3, height, width), fill, dtype=torch.uint8)
        out.append({"image": image, "height": height, "width": width, "video_id": video_id, "frame_idx": i})
    return out


class _FrameCall(nn.Module):
    """Calls the model on one frame dict given its image: fvcore traces tensors in, tensors out."""

    def __init__(self, model, frame):
        super().__init__()
        self.model = model
        self.keys = {k: v for k, v in frame.items() if k != "image"}

    def forward(self, image):
        # without autograd, frozen batch norms run as batch_norm ops, which fvcore counts
        with torch.no_grad():
            return tuple(_tensors(self.model([dict(self.keys, image=image)])))


def _tensors(outputs):
    """Every tensor in nested dicts, lists and tuples: fvcore's tracer takes only tensors out."""
    if isinstance(outputs, torch.Tensor):
        yield outputs
    elif isinstance(outputs, dict):
        for v in outputs.values():
            yield from _tensors(v)
    elif isinstance(outputs, (list, tuple)):
        for v in outputs:
            yield from _tensors(v)


def _baddbmm_flop(inputs, outputs):
    # baddbmm(bias, a, b): the products of a @ b, as the bmm older torch traced
    return bmm_flop_jit(inputs[1:3], outputs)


def flop_analysis(model, frame):
    """A configured fvcore FlopCountAnalysis of `model([frame])`; read it with .total() etc.

    The trace runs the model once, when a count is first asked for. Module names in the
    result start with "model." (the traced wrapper's child).
    """
    analysis = FlopCountAnalysis(_FrameCall(model, frame), (frame["image"],))
    analysis.set_op_handle(**{"aten::baddbmm": _baddbmm_flop})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def frame_flops(model, frame, count="fvcore"):
    """FLOPs of `model([frame])`: a Counter with "" -> the whole model and each direct child of
    the model (e.g. "backbone", "sem_seg_head") -> its share.

    count: "fvcore" (flop_analysis) or "hooks" (hook_flops, the TV3S release's convention).
    """
    names = [name for name, _ in model.named_children()]
    if count == "fvcore":
        by_module = flop_analysis(model, frame).by_module()
        # the traced wrapper holds the model as its child "model"
        return Counter({"": by_module["model"], **{name: by_module[f"model.{name}"] for name in names}})
    if count == "hooks":
        out = Counter({name: 0 for name in names})
        out[""] = 0
        for name, flops in hook_flops(model, lambda: model([frame])).items():
            out[name.split(".")[0]] += flops
            out[""] += flops
        return out
    raise ValueError(f"unknown FLOP count {count!r}; expected one of {COUNTS}")


def count_frames(model, height, width, counted, count="fvcore", progress=False):
    """FLOPs of some frames of one video of zero frames, {frame_idx: frame_flops Counter}.

    Frames 0..max(counted) run in order, in eval mode, so that each counted frame sees the
    video state its predecessors left; the others are not counted. The model's train/eval mode
    is restored. progress: show a progress bar (on stderr).
    """
    if count not in COUNTS:
        raise ValueError(f"unknown FLOP count {count!r}; expected one of {COUNTS}")
    counted = set(counted)
    if not counted or min(counted) < 0:
        raise ValueError(f"count_frames: frames to count must be >= 0, got {sorted(counted)}")
    frames = video_frames(height, width, max(counted) + 1, video_id="flops")
    was_training = model.training
    model.eval()
    try:
        out = {}
        bar = tqdm(frames, desc=f"{count} count", unit="frame", disable=not progress, leave=False)
        for frame in bar:
            i = frame["frame_idx"]
            if i in counted:
                bar.set_postfix_str(f"counting frame {i}")
                out[i] = frame_flops(model, frame, count)
            else:
                bar.set_postfix_str(f"running frame {i} (for the state it leaves)")
                with torch.no_grad():
                    model([frame])
        return out
    finally:
        model.train(was_training)


def video_flops(model, height=DEFAULT_HEIGHT, width=DEFAULT_WIDTH, frames=DEFAULT_FRAMES, count="fvcore"):
    """FLOPs of every frame of a video of `frames` zero frames, in order: one frame_flops Counter
    per frame. The mean of the "" entries is the per-frame cost the papers report for video
    models (e.g. MPVSS averages key and propagated frames); a per-frame model gives equal frames.
    """
    per_frame = count_frames(model, height, width, range(frames), count)
    return [per_frame[i] for i in range(frames)]


@dataclass(frozen=True)
class FramePlan:
    """The kinds of frames a model's video inference has, so that one of each is counted.

    Attributes:
        kinds: {frame_idx: name} the frames to count, one per kind, in a video from frame 0.
        same_as: frame_idx -> the counted frame of its kind (None: a frame of no counted kind,
            e.g. a streaming model's first frame).
        period: frames whose mean cost is the model's cost per frame (the steady state).
        summary: what was counted and why, for the tools' output.
    """

    kinds: dict
    same_as: Callable[[int], Optional[int]]
    period: tuple
    summary: str


def frame_plan(model):
    """The FramePlan of `model`: per-frame models (no temporal head) one frame; MPVSS one key
    and one propagated frame; TV3S streaming one step after a first frame; TV3S clip mode the
    first frame with a whole clip (every later frame scans a clip of the same length)."""
    temporal = getattr(model, "temporal", None)
    if isinstance(temporal, MaskPropagation) and temporal.policy.interval > 1:
        k = temporal.policy.interval
        adaptive = temporal.policy.adaptive
        summary = (f"one key frame and one propagated frame counted; per frame: the mean with a key frame every "
                   f"K={k} frames (MODEL.MPVSS.KEY_INTERVAL)")
        if adaptive:
            summary += ("; KEY_POLICY adaptive: key frames come at least that often, so this is the least the "
                        "policy costs")
        return FramePlan({0: "key frame", 1: "propagated frame"}, lambda i: 0 if i % k == 0 else 1,
                         tuple(range(k)), summary)
    if isinstance(temporal, StateSpaceSharing) and temporal.inference == "stream":
        return FramePlan({1: "streaming step"}, lambda i: 1 if i > 0 else None, (1,),
                         "one streaming step counted (frame 1, after a first frame that starts the carried "
                         "states): every later frame costs the same")
    if isinstance(temporal, StateSpaceSharing):
        offsets = temporal.clip_offsets
        k = next(p for p in range(-offsets[0] + 1) if release_test_clip(p, offsets, list(range(p + 1)), 0))
        return FramePlan({k: "clip frame"}, lambda i: k if i >= k else None, (k,),
                         f"one frame counted (frame {k}, the first with a whole clip: every later frame scans a "
                         f"clip of the same length; frames 0..{k - 1} of the release's clip test use the per-frame "
                         "head alone and cost less)")
    if temporal is None:
        why = "a per-frame model: every frame costs the same"
    elif isinstance(temporal, MaskPropagation):
        why = "MODEL.MPVSS.KEY_INTERVAL 1: every frame is a key frame"
    else:
        raise ValueError(f"frame_plan: no plan for the temporal head {type(temporal).__name__}; count every "
                         "frame instead (tools/analyze_model.py --frames N)")
    return FramePlan({0: "frame"}, lambda i: 0, (0,), f"one frame counted ({why})")


def plan_mismatches(plan, per_frame):
    """Frames of a full count {frame_idx: Counter} whose counts differ from the counted frame of
    their kind: [(frame_idx, kind's frame_idx)]; empty when the plan's shortcut holds."""
    return [(i, plan.same_as(i)) for i, c in sorted(per_frame.items())
            if plan.same_as(i) is not None and c != per_frame[plan.same_as(i)]]
