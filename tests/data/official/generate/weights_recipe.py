"""The weight recipe of the official-output fixtures (as shared/reference/fixtures/official's
mpvss_flow_official.pt): drawn from a seed, independently of any constructor's draw order."""
import math

import torch


def recipe_weights(shapes, seed):
    """{name: shape} -> {name: float32 tensor}: names sorted, one generator; >= 2-D: randn *
    sqrt(2 / fan_in) (fan_in = numel / shape[0]); 1-D `*weight`: 1 + 0.1 randn; other 1-D: 0.1 randn."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        w = torch.randn(shape, generator=g, dtype=torch.float32)
        if len(shape) >= 2:
            w = w * math.sqrt(2.0 / (math.prod(shape) // shape[0]))
        elif name.endswith("weight"):
            w = 1.0 + 0.1 * w
        else:
            w = 0.1 * w
        out[name] = w
    return out
