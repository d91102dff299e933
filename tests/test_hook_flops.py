import pytest
import torch
from detectron2.layers import Conv2d as D2Conv2d
from torch import nn
from torch.nn import functional as F

from vss.modeling.backbone.mit import EfficientSelfAttention
from vss.modeling.tv3s.mamba import Mamba
from vss.utils.hook_flops import hook_flops


class Layers(nn.Module):
    """One layer of each counted kind, and products no hook sees (a matmul, F.linear, GELU,
    F.interpolate)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.depthwise = D2Conv2d(4, 4, 3, padding=1, groups=4, bias=False)  # a subclass of nn.Conv2d
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4, 5)
        self.norm = nn.LayerNorm(5, elementwise_affine=False)
        self.up = nn.Upsample(scale_factor=2)
        self.act = nn.GELU()
        self.weight = nn.Parameter(torch.randn(5, 7))

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.depthwise(self.conv(x)))))  # (1, 4, 2, 3)
        tokens = self.norm(self.fc(x.flatten(2).transpose(1, 2)))  # (1, 6, 5)
        hidden = self.act(tokens @ self.weight)  # bare matmul: invisible to hooks
        hidden = F.linear(hidden, self.weight)  # functional: invisible too
        up = self.up(tokens.transpose(1, 2).reshape(1, 5, 2, 3))  # (1, 5, 4, 6)
        return hidden.sum() + F.interpolate(up, scale_factor=2).sum()


def test_layer_rules_by_hand():
    model = Layers().eval()
    counts = hook_flops(model, lambda: model(torch.randn(1, 3, 4, 6)))
    positions = 4 * 6
    assert counts == {
        "conv": positions * 4 * 3 * 9 + positions * 4,  # multiply-adds + one bias add per output
        "depthwise": positions * 4 * 1 * 9,  # each output channel sees one input channel
        "bn": 2 * positions * 4,  # affine: scale and shift
        "relu": positions * 4,
        "pool": positions * 4,  # one per input value
        "fc": 6 * 4 * 5,  # no bias term, as mmcv
        "norm": 6 * 5,  # without affine: one per value
        "up": 5 * 4 * 6,  # one per output value
    }  # nothing for the matmul, F.linear, GELU (not a counted kind) and F.interpolate


def test_calls_add_up_and_hooks_are_removed():
    fc = nn.Linear(3, 2)
    model = nn.Sequential(fc)

    def twice():
        model(torch.zeros(4, 3))
        fc(torch.zeros(1, 5, 3))

    assert hook_flops(model, twice) == {"0": 4 * 3 * 2 + 5 * 3 * 2}
    assert not fc._forward_hooks
    with pytest.raises(RuntimeError, match="boom"):
        hook_flops(model, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not fc._forward_hooks


def test_mit_attention_adds_segformers_term():
    # SegFormer's get_flops adds 2 * N * N_kv * C for the two attention products per layer
    dim, height, width, sr = 8, 4, 6, 2
    attn = EfficientSelfAttention(dim, num_heads=2, sr_ratio=sr).eval()
    n, n_kv = height * width, (height // sr) * (width // sr)
    counts = hook_flops(attn, lambda: attn(torch.randn(1, n, dim), height, width))
    assert counts == {
        "": 2 * n * n_kv * dim,
        "q": n * dim * dim,
        "kv": n_kv * dim * 2 * dim,
        "proj": n * dim * dim,
        "sr": n_kv * dim * dim * sr * sr + n_kv * dim,
        "norm": 2 * n_kv * dim,
    }


def test_mamba_counts_what_the_release_hooks_see():
    # mamba-ssm's slow path: conv1d (on L + d_conv - 1 padded positions), x_proj and out_proj
    # are module calls; in_proj and dt_proj are `weight @ x` and count nothing
    d_model, d_state, d_conv, batch, length = 8, 4, 3, 2, 7
    mamba = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=2).eval()
    d_inner, dt_rank = 16, 1
    model = nn.ModuleDict({"mixer": mamba})
    counts = hook_flops(model, lambda: mamba(torch.randn(batch, length, d_model)))
    conv = batch * (length + d_conv - 1) * d_inner * (d_conv + 1)
    x_proj = batch * length * d_inner * (dt_rank + 2 * d_state)
    out_proj = batch * length * d_inner * d_model
    # nothing under "mixer.in_proj", which our Mamba does call as a module
    assert counts == {"mixer": conv + x_proj + out_proj}
    assert hook_flops(mamba, lambda: mamba(torch.randn(batch, length, d_model))) == {"": conv + x_proj + out_proj}
