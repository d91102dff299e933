"""Parameter and FLOP counts the way the MPVSS and TV3S papers report them.

FLOPs: fvcore's FlopCountAnalysis of the model in eval mode, without autograd, on one
frame of zeros, batch 1; one fused multiply-add is one FLOP. fvcore's default handles
apply, with one addition: `aten::baddbmm`, which recent torch emits for masked attention
where older torch emitted `bmm`, counts as a batched matmul. The deformable attention's
grid_sample counts 4 FLOPs per sampled value (fvcore's bilinear rule), like upstream
Mask2Former's pure-PyTorch path: that is what the published 110.6G (R50) includes.
"""
from collections import Counter

import torch
from detectron2.layers import FrozenBatchNorm2d
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import bmm_flop_jit
from torch import nn

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


def video_flops(model, height=DEFAULT_HEIGHT, width=DEFAULT_WIDTH, frames=DEFAULT_FRAMES):
    """FLOPs of each frame of a video of zero frames, in order; the model keeps its video state.

    Returns one Counter per frame: "" -> the whole model, and each direct child of the model
    (e.g. "backbone", "sem_seg_head") -> its share. The mean of the "" entries is the
    per-frame cost the papers report for video models (e.g. MPVSS averages key and
    propagated frames); a per-frame model gives equal frames.
    """
    names = [""] + [name for name, _ in model.named_children()]
    was_training = model.training
    model.eval()
    try:
        counts = []
        for frame in video_frames(height, width, frames, video_id="flops"):
            by_module = flop_analysis(model, frame).by_module()
            # the traced wrapper holds the model as its child "model"
            counts.append(Counter({name: by_module[f"model.{name}" if name else "model"] for name in names}))
        return counts
    finally:
        model.train(was_training)
