#!/usr/bin/env python
"""Regenerate tests/data/official/mpvss_init_order.pt: the release's initial flow-module weights per seed.

  python mpvss_init.py --official /path/to/ziplab/MPVSS [--out tests/data/official/mpvss_init_order.pt]

Runs the release's own constructor (`FlowEstimator` = MotionEnc + MotionDec from
mask2former/modeling/motion, built through its registry from its config, as
mask2former/mpvss.py builds `motion`) after `torch.manual_seed(seed)`, on CPU, and stores a
fingerprint of every tensor of its state dict. Nothing of the release is copied: its
modules are imported from --official. What does not import on CPU is replaced:
- mmcv: `ConvModule` with mmcv 1.x's construction (the conv, 'Conv' = Conv2d, 'deconv' =
  ConvTranspose2d, built first and initialised by its own constructor; the activation; then
  mmcv's init_weights: kaiming_normal_, mode fan_out, leaky_relu with a = the slope after a
  LeakyReLU and relu otherwise, bias 0), and `BaseModule` (nn.Module);
- the packages above mask2former/modeling/motion are empty, so only the motion modules and
  transformer_decoder/position_encoding.py are imported (not the compiled pixel decoder).

Config: the release's defaults (its mask2former/config.py) with smaller encoder levels
conv4..conv6 and FFNs, 10 flow queries and MODEL.DECODER_LAYERS 9 (the key its MotionDec
reads); hidden 256 is fixed by the release's hard-coded 386-channel deconvolutions.
Run with the vss venv (torch, detectron2): the checkout's path is all it needs.
"""
import argparse
import importlib
import os
import sys
import types

import torch
from torch import nn

SEEDS = (0, 7)
# release key -> value; the project's FlowEstimator takes the same sizes (see tests/test_mpvss_flow.py)
SETTINGS = {
    "ENCODER_INPLANES": (6, 64, 128, 256, 32, 32),  # conv1..conv6 inputs: conv4/5/6 out 32/32/64
    "IN_CHANNELS": [32, 32, 64],
    "HIDDEN_DIM": 256,
    "NHEADS": 8,
    "DIM_FEEDFORWARD": 16,
    "NUM_FLOW_QUERIES": 10,
    "DECODER_LAYERS": 9,
}


def stub_mmcv():
    def kaiming_init(module, a, nonlinearity):
        nn.init.kaiming_normal_(module.weight, a=a, mode="fan_out", nonlinearity=nonlinearity)
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)

    class ConvModule(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                     conv_cfg=None, act_cfg=dict(type="ReLU")):
            super().__init__()
            conv = {"Conv": nn.Conv2d, "deconv": nn.ConvTranspose2d}[(conv_cfg or {"type": "Conv"})["type"]]
            self.conv = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
            self.act_cfg = act_cfg
            if act_cfg is not None:
                cfg = dict(act_cfg)
                self.activate = getattr(nn, cfg.pop("type"))(inplace=True, **cfg)
            leaky = act_cfg is not None and act_cfg["type"] == "LeakyReLU"
            kaiming_init(self.conv, a=act_cfg.get("negative_slope", 0.01) if leaky else 0,
                         nonlinearity="leaky_relu" if leaky else "relu")

    class BaseModule(nn.Module):
        def __init__(self, init_cfg=None):
            super().__init__()

    mmcv = types.ModuleType("mmcv")
    cnn = types.ModuleType("mmcv.cnn")
    bricks = types.ModuleType("mmcv.cnn.bricks")
    runner = types.ModuleType("mmcv.runner")
    bricks.ConvModule = ConvModule
    runner.BaseModule = BaseModule
    mmcv.cnn, cnn.bricks, mmcv.runner = cnn, bricks, runner
    sys.modules.update({"mmcv": mmcv, "mmcv.cnn": cnn, "mmcv.cnn.bricks": bricks, "mmcv.runner": runner})


def release_modules(official):
    """The release's mask2former.config and mask2former.modeling.motion, imported from the checkout."""
    stub_mmcv()
    root = os.path.join(official, "mask2former")
    for name, path in (("mask2former", root), ("mask2former.modeling", os.path.join(root, "modeling")),
                       ("mask2former.modeling.transformer_decoder",
                        os.path.join(root, "modeling", "transformer_decoder"))):
        package = types.ModuleType(name)
        package.__path__ = [path]
        sys.modules[name] = package
    return importlib.import_module("mask2former.config"), importlib.import_module("mask2former.modeling.motion")


def release_cfg(config):
    from detectron2.config import get_cfg
    cfg = get_cfg()
    config.add_maskformer2_config(cfg)
    for key, value in SETTINGS.items():
        if key == "DECODER_LAYERS":
            cfg.MODEL.DECODER_LAYERS = value  # read by MotionDec.from_config, defined nowhere
        else:
            setattr(cfg.MODEL.MOTION, key, value)
    return cfg


def fingerprint(state):
    """Per tensor: [sum, sum |w|] in float64, and its first and last two values."""
    stats = torch.tensor([[float(v.double().sum()), float(v.double().abs().sum())] for v in state.values()],
                         dtype=torch.float64)
    ends = torch.stack([torch.cat([v.flatten()[:2], v.flatten()[-2:]]).float() for v in state.values()])
    return stats, ends


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="checkout of ziplab/MPVSS (5e19a65)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "mpvss_init_order.pt"))
    args = parser.parse_args()
    from detectron2.layers import ShapeSpec
    config, motion = release_modules(os.path.abspath(args.official))
    cfg = release_cfg(config)
    # the backbone's output shapes are only stored by the motion module
    shapes = {f"res{i}": ShapeSpec(channels=64 * 2 ** i, stride=2 ** i) for i in range(2, 6)}
    fixture = {"settings": dict(SETTINGS), "seeds": list(SEEDS), "stats": {}, "ends": {}}
    for seed in SEEDS:
        torch.manual_seed(seed)
        state = motion.build_motion(cfg, shapes).state_dict()
        fixture["names"] = "\n".join(state)
        fixture["shapes"] = [list(v.shape) for v in state.values()]
        fixture["stats"][seed], fixture["ends"][seed] = fingerprint(state)
    torch.save(fixture, args.out)
    print(f"wrote {os.path.abspath(args.out)}: {len(fixture['shapes'])} tensors, seeds {list(SEEDS)}")


if __name__ == "__main__":
    main()
