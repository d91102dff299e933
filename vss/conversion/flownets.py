"""FlowNetPytorch's `flownets` checkpoint -> the MPVSS flow module's keys (tools/convert_flownets.py
is its command line): names mapped, and the flow predictions rescaled from FlowNet's units
(div_flow) to ours (pixels of the finest flow grid).
"""
import re
from collections import OrderedDict

import torch

__all__ = ["PREFIX", "GRID_CELL", "read_checkpoint", "rename", "convert"]

PREFIX = "temporal.flow."
# input pixels per pixel of the finest flow grid (flow2 / conv2's output)
GRID_CELL = 4

_RULES = (
    (re.compile(r"conv([1-6])\.0\.(weight|bias)"), r"encoder.conv\1.0.conv.\2"),
    (re.compile(r"conv([3-6])_1\.0\.(weight|bias)"), r"encoder.conv\1.1.conv.\2"),
    (re.compile(r"deconv([2-5])\.0\.weight"), r"decoder.deconv\1.conv.weight"),
    (re.compile(r"predict_flow([3-6])\.weight"), r"decoder.predict_flow\1.conv.weight"),
    (re.compile(r"predict_flow2\.weight"), r"decoder.predict_flow.conv.weight"),
    (re.compile(r"upsampled_flow([3-6])_to_[2-5]\.weight"), None),
)


def read_checkpoint(path):
    """(state dict, div_flow) of a FlowNetPytorch `flownets` checkpoint file (flownets_EPE1.951.pth.tar)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a FlowNetPytorch checkpoint (a dict with 'state_dict')")
    arch = checkpoint.get("arch", "flownets")
    if arch != "flownets":
        raise ValueError(f"{path} holds arch {arch!r}; only 'flownets' (FlowNetS without batch norm) converts")
    return checkpoint["state_dict"], float(checkpoint.get("div_flow", 20.0))


def rename(key):
    """Our name of a FlowNetPytorch key (an error for any other key)."""
    for pattern, target in _RULES:
        match = pattern.fullmatch(key)
        if match and target is None:  # upsampled_flow{k}_to_{k-1} -> upsample_flow{k-1}
            return f"decoder.upsample_flow{int(match.group(1)) - 1}.conv.weight"
        if match:
            return match.expand(target)
    raise ValueError(f"unexpected FlowNetS key {key!r}: expected conv*, deconv*, predict_flow*, upsampled_flow* "
                     "of FlowNetPytorch's 'flownets' (batchNorm=False)")


def convert(state_dict, div_flow=20.0):
    """FlowNetPytorch `flownets` state dict -> OrderedDict of our flow-module keys (with PREFIX)."""
    if any(k.endswith(("running_mean", "running_var")) for k in state_dict):
        raise ValueError("this is a batch-normalised FlowNetS (flownets_bn); MPVSS's motion encoder has no "
                         "norm layers: convert the plain 'flownets' checkpoint")
    unit = div_flow / GRID_CELL
    out = OrderedDict()
    for key, value in state_dict.items():
        name = rename(key)
        value = value.detach().clone().float()
        if name.startswith("decoder.predict_flow"):
            value *= unit
        out[name] = value
    # the flow that feeds the next level is `unit` times larger now: its input weights shrink
    for level in (4, 3, 2):
        out[f"decoder.deconv{level}.conv.weight"][-2:] /= unit  # ConvTranspose2d: (in, out, k, k)
    for name in ("predict_flow5", "predict_flow4", "predict_flow3", "predict_flow"):
        out[f"decoder.{name}.conv.weight"][:, -2:] /= unit  # Conv2d: (out, in, k, k)
    return OrderedDict((PREFIX + k, v) for k, v in out.items())
