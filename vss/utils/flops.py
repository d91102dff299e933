"""Parameter and FLOP counts the way the MPVSS and TV3S papers report them.

FLOPs: fvcore's FlopCountAnalysis of the model in eval mode, without autograd, on one
frame of zeros, batch 1; one fused multiply-add is one FLOP. fvcore's default handles
apply, with one addition: `aten::baddbmm`, which recent torch emits for masked attention
where older torch emitted `bmm`, counts as a batched matmul. The deformable attention's
grid_sample counts 4 FLOPs per sampled value (fvcore's bilinear rule), like upstream
Mask2Former's pure-PyTorch path: that is what the published 110.6G (R50) includes.

`count="hooks"` counts instead as the TV3S release did (hook_flops.py), to compare with its
published numbers.

Video models cost differently on different frames, but only a few kinds of frames exist, which
their temporal heads declare (`frame_plan`): tracing one frame of each kind gives the cost of any
video's frames, `mean_cost` their mean per frame (`interval_cost` with a key frame every K).
"""
from collections import Counter

import torch
from detectron2.layers import FrozenBatchNorm2d
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import bmm_flop_jit
from torch import nn
from tqdm import tqdm

from ..modeling.frame_plan import per_frame_plan
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


def video_frames(height, width, frames, video_id="video", fill=0, seed=None, output_size=None):
    """`frames` input dicts of one video, frame_idx 0..frames-1, in the models' test format.

    fill: the value of every pixel, or None for uniform random uint8 frames (from `seed`).
    output_size: the frames' "height" and "width" (the size predictions are resized to);
    default (height, width).
    """
    if frames < 1:
        raise ValueError(f"video_frames: need at least one frame, got frames={frames}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    out_height, out_width = output_size or (height, width)
    out = []
    for i in range(frames):
        if fill is None:
            image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        else:
            image = torch.full((3, height, width), fill, dtype=torch.uint8)
        out.append({"image": image, "height": out_height, "width": out_width, "video_id": video_id, "frame_idx": i})
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


def count_frames(model, height, width, counted, count="fvcore", progress=False, output_size=None):
    """FLOPs of some frames of one video of zero frames, {frame_idx: frame_flops Counter}.

    Frames 0..max(counted) run in order, in eval mode, so that each counted frame sees the
    video state its predecessors left; the others are not counted. The model's train/eval mode
    is restored. progress: show a progress bar (on stderr). output_size: see video_frames.
    """
    if count not in COUNTS:
        raise ValueError(f"unknown FLOP count {count!r}; expected one of {COUNTS}")
    counted = set(counted)
    if not counted or min(counted) < 0:
        raise ValueError(f"count_frames: frames to count must be >= 0, got {sorted(counted)}")
    frames = video_frames(height, width, max(counted) + 1, video_id="flops", output_size=output_size)
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


def frame_plan(model):
    """The FramePlan (vss.modeling.frame_plan) of `model`: its temporal head's, or one kind of
    frame for a per-frame model (no temporal head)."""
    temporal = getattr(model, "temporal", None)
    if temporal is None:
        return per_frame_plan("a per-frame model: every frame costs the same")
    if not hasattr(temporal, "frame_plan"):
        raise ValueError(f"frame_plan: no plan for the temporal head {type(temporal).__name__}; count every "
                         "frame instead (tools/analyze_model.py --frames N)")
    return temporal.frame_plan()


def kind_flops(model, height, width, output_size=None, count="fvcore", on_error=None):
    """{kind: frame_flops Counter} of one frame of every kind of frame `model` runs (its
    frame_plan's, those of a video's start included), on `height` x `width` frames.

    output_size: (height, width) of the predictions, when the model resizes them (the test-time
    resize); default the frames' size.
    on_error: None raises what a count raises; else on_error(kind, exception) is called and the
    kind left out. Each kind is counted in a video of its own, so one that the counter cannot
    trace (custom kernels, new ops) leaves the others' counts as they are.
    """
    out = {}
    for kind, i in frame_plan(model).frames_of_each_kind().items():
        try:
            out[kind] = count_frames(model, height, width, [i], count, output_size=output_size)[i]
        except Exception as e:  # noqa: BLE001  (whatever the counter meets)
            if on_error is None:
                raise
            on_error(kind, e)
    return out


def mean_cost(costs, counts):
    """The mean cost per frame of `counts[kind]` frames of each kind costing `costs[kind]` each,
    e.g. a key frame every K frames: counts {"key frame": 1, "propagated frame": K - 1}."""
    frames = sum(counts.values())
    if frames < 1:
        raise ValueError(f"mean_cost: no frames to average over (counts {dict(counts)})")
    return sum(costs[kind] * n for kind, n in counts.items()) / frames


def interval_cost(costs, key, k):
    """The mean cost per frame with a key frame every `k` frames: one frame of kind `key` and
    k - 1 of the other kind of `costs` (two kinds, e.g. MPVSS's key and propagated frames)."""
    if key not in costs or len(costs) != 2:
        raise ValueError(f"interval_cost: expected the costs of {key!r} and one other kind of frame, got {list(costs)}")
    (other,) = set(costs) - {key}
    return mean_cost(costs, {key: 1, other: k - 1})


def plan_mismatches(plan, per_frame):
    """Frames of a full count {frame_idx: Counter} whose counts differ from the counted frame of
    their kind: [(frame_idx, kind's frame_idx)]; empty when the plan's shortcut holds."""
    return [(i, plan.same_as(i)) for i, c in sorted(per_frame.items())
            if plan.same_as(i) is not None and c != per_frame[plan.same_as(i)]]
