#!/usr/bin/env python
"""Convert the PyTorch FlowNetS checkpoint (FlowNetPytorch, FlyingChairs) to MPVSS's flow module.

The MPVSS paper starts its motion encoder from FlowNetS weights pretrained on FlyingChairs;
the release's input normalisation is that of the FlowNetPytorch port, whose
`flownets_EPE1.951.pth.tar` (a torch.save dict with "arch" "flownets", "state_dict" and
"div_flow" 20) is the likely source. The output is a detectron2 checkpoint
`{"model": ...}` for MODEL.MOTION.WEIGHTS (of an MPVSS model, or of the FlowNetS
meta-architecture to evaluate it on flow pairs), with these keys:

| FlowNetPytorch                    | ours (prefix temporal.flow.)            |
|-----------------------------------|-----------------------------------------|
| conv{k}.0.weight/bias             | encoder.conv{k}.0.conv.weight/bias      |
| conv{k}_1.0.weight/bias           | encoder.conv{k}.1.conv.weight/bias      |
| deconv{k}.0.weight (k = 5..2)     | decoder.deconv{k}.conv.weight           |
| predict_flow{k}.weight (k = 6..3) | decoder.predict_flow{k}.conv.weight     |
| predict_flow2.weight              | decoder.predict_flow.conv.weight        |
| upsampled_flow{k}_to_{k-1}.weight | decoder.upsample_flow{k-1}.conv.weight  |

The decoder keys fit the "pixel" variant ("Optical flow") exactly; the query variants take
the ones whose shapes agree when loaded (vss/modeling/mpvss/motion_weights.py).

Units. FlowNetS predicts flow / div_flow in pixels of its input at every level. Ours
predicts, at every level, pixels of the finest flow grid (4 input pixels: conv1 and conv2
each halve), the unit MPVSS warps with: a FlowNetS output f is f * div_flow / 4 of ours
(5 f for div_flow 20). Since predict and upsample convolutions have no bias, the change
is exact: every predict_flow is multiplied by that factor, and the two flow input
channels of the next level's deconv and predict_flow are divided by it.

Normalisation. The port subtracts [0.45, 0.432, 0.411] from RGB in [0, 1]; the MPVSS
release subtracts [0.411, 0.432, 0.450] (the same numbers in BGR order) from RGB frames,
and that is what the paper's encoder saw. MODEL.MOTION.FLOW_IMG_NORM_MEAN keeps the
release's; set it to [0.45, 0.432, 0.411] to feed FlowNetS exactly as it was trained.
The batch-normalised `flownets_bn` is not supported (MPVSS's encoder has no norm).

    python tools/convert_flownets.py flownets_EPE1.951.pth.tar output/flownets_flyingchairs.pth
"""
import argparse
import os
import sys

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

import torch

from vss.conversion.flownets import GRID_CELL, PREFIX, convert, read_checkpoint
from vss.engine.cli import add_debug_argument, run_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="FlowNetPytorch checkpoint (flownets_EPE1.951.pth.tar)")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pth)")
    args = add_debug_argument(parser).parse_args(argv)
    state_dict, div_flow = read_checkpoint(args.input)
    model = convert(state_dict, div_flow)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": model}, args.output)
    print(f"wrote {len(model)} tensors ({sum(v.numel() for v in model.values()):,} parameters) under {PREFIX} "
          f"to {args.output}; flow units x{div_flow / GRID_CELL:g} (div_flow {div_flow:g} / {GRID_CELL})")


if __name__ == "__main__":
    run_main(main, "convert_flownets.py", debug="--debug" in sys.argv[1:])
