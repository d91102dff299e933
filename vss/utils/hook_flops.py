"""FLOPs counted the way the TV3S release counted them: forward hooks on layer modules.

The release's `tools/get_flops.py` (SegFormer's) calls mmcv's `get_model_complexity_info`,
which hooks the modules of a fixed list of layer types and adds, per call, a formula of their
input and output shapes (one multiply-add = one FLOP); SegFormer's script then adds the MiT
attention products, which no hook sees. What a layer computes without calling a hooked module
(`weight @ x`, `F.linear`, a matmul, an interpolation) is not counted. See
`../shared/reference/OFFICIAL_CODE_FACTS.md`, section 2.7.

The rules here follow mmcv's formulas; they are matched by kind (isinstance), so that our
subclasses of those layers count too. Two rules stand for the release's code where ours calls
its layers differently:

- `EfficientSelfAttention` (MiT): SegFormer's script adds 2 * N * N_kv * C per layer for the
  two attention products (queries x keys, weights x values).
- `Mamba`: mamba-ssm's non-fused path calls `conv1d` (on L + d_conv - 1 padded positions),
  `x_proj` and `out_proj` as modules but applies `in_proj` and `dt_proj` as `weight @ x`, so a
  hook counter sees only the former three. Our Mamba calls its layers differently (in_proj as
  a module, the conv as a function), so its own children are not hooked and the release's
  three are counted from the input shape.

This is not the cost of the model (fvcore's count in flops.py is): it exists to compare with
the numbers the TV3S paper published.
"""
from collections import Counter

import torch
from torch import nn

from ..modeling.backbone.mit import EfficientSelfAttention
from ..modeling.tv3s.mamba import Mamba

__all__ = ["hook_flops", "HOOK_RULES"]


def _conv(module, inputs, output):
    positions = output.shape[0] * output[0, 0].numel()
    flops = positions * module.in_channels * (module.out_channels // module.groups) * _prod(module.kernel_size)
    return flops + (positions * module.out_channels if module.bias is not None else 0)


def _conv_transpose(module, inputs, output):
    # every input position spreads into kernel x out_channels / groups outputs
    x = inputs[0]
    flops = x.shape[0] * x[0, 0].numel() * module.in_channels * (module.out_channels // module.groups)
    flops *= _prod(module.kernel_size)
    return flops + (output.numel() if module.bias is not None else 0)


def _activation(module, inputs, output):
    return output.numel()


def _pool(module, inputs, output):
    return inputs[0].numel()


def _norm(module, inputs, output):
    affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
    return inputs[0].numel() * (2 if affine else 1)


def _linear(module, inputs, output):
    return inputs[0].numel() * module.out_features


def _upsample(module, inputs, output):
    return output.numel()


def _mit_attention(module, inputs, output):
    # keys/values come from the map shrunk by sr_ratio in each direction
    batch, tokens, channels = inputs[0].shape
    height, width = inputs[1], inputs[2]
    kv_tokens = (height // module.sr_ratio) * (width // module.sr_ratio)
    return 2 * batch * tokens * kv_tokens * channels


def _mamba_release(module, inputs, output):
    batch, length, _ = inputs[0].shape
    d_inner = module.d_inner
    conv = batch * (length + module.d_conv - 1) * d_inner * (module.d_conv + 1)  # depthwise, with bias
    x_proj = batch * length * d_inner * (module.dt_rank + 2 * module.d_state)
    out_proj = batch * length * d_inner * module.d_model
    return conv + x_proj + out_proj


# Layer kind -> FLOPs of one call from (module, inputs, output); the most specific class wins.
HOOK_RULES = {
    nn.modules.conv._ConvNd: _conv,
    nn.modules.conv._ConvTransposeNd: _conv_transpose,
    nn.ReLU: _activation,
    nn.PReLU: _activation,
    nn.ELU: _activation,
    nn.LeakyReLU: _activation,
    nn.ReLU6: _activation,
    nn.modules.pooling._MaxPoolNd: _pool,
    nn.modules.pooling._AvgPoolNd: _pool,
    nn.modules.pooling._AdaptiveMaxPoolNd: _pool,
    nn.modules.pooling._AdaptiveAvgPoolNd: _pool,
    nn.modules.batchnorm._NormBase: _norm,  # batch and instance norms
    nn.GroupNorm: _norm,
    nn.LayerNorm: _norm,
    nn.Linear: _linear,
    nn.Upsample: _upsample,
    EfficientSelfAttention: _mit_attention,
    Mamba: _mamba_release,
}
# Rules that stand for a whole module: its children are not hooked.
_WHOLE = (Mamba,)


def _rule(module):
    for cls in type(module).__mro__:
        if cls in HOOK_RULES:
            return HOOK_RULES[cls]
    return None


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


def hook_flops(model, run):
    """FLOPs of `run()` (which calls `model`) as the release's hook counter sees them.

    Returns a Counter {qualified module name: FLOPs} over the modules a rule matched, summed
    over their calls ("" is not included: sum the values for the total).
    """
    counts = Counter()
    handles = []
    whole = []
    try:
        for name, module in model.named_modules():
            if any(prefix == "" or name.startswith(prefix + ".") for prefix in whole):
                continue
            rule = _rule(module)
            if rule is None:
                continue
            if isinstance(module, _WHOLE):
                whole.append(name)

            def hook(module, inputs, output, name=name, rule=rule):
                counts[name] += int(rule(module, inputs, output))

            handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return counts
