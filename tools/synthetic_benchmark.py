#!/usr/bin/env python
"""The papers' protocol on synthetic video with ground-truth motion, end to end.

Stages, each logged with the elapsed time; a stage whose `model_final.pth` exists in the
output folder is not retrained (delete the folder, or use another --output, to start over):

1. writes the synthetic set (clean or with video effects) into OUTPUT/data;
2. pretrains FlowNetS (the MPVSS motion encoder + FlowNetS decoder) on its exact flow;
   FlowEvaluator EPE and the flow diagnostics (moving / static pixels) on the validation videos;
3. trains the per-frame Mask2Former;
4. MPVSS: Copy evaluates the per-frame weights; Optical flow, Query-random, Query-learned,
   Query-for-PF and Query-based flow are fine-tuned from the per-frame checkpoint
   (MODEL.WEIGHTS) with the pretrained motion weights (MODEL.MOTION.WEIGHTS); each is
   evaluated at K = 2, 5, 10 (mIoU, WIoU, mVC8, mVC16), its GFLOPs per frame counted at the
   set's frame size, and its per-query flow EPE measured (vss/evaluation/flow_diagnostics.py);
5. on a second set of the same videos at TV3S_SCALE times the frame size (TV3S classifies a
   map of 1/8 of the frame where SegFormer classifies 1/4; see TV3S_SCALE): trains the
   per-frame SegFormer-B0, evaluates it at its own and at TV3S's scan resolution
   (vss/evaluation/scan_resolution.py), then fine-tunes TV3S from it
   (configs/synthetic/tv3s_finetune.yaml) and, as the control, the SegFormer itself with the
   same rates and iterations, both evaluated every few iterations (learning curves); TV3S is
   evaluated streamed frame by frame, as clips, and with its state reset at every frame (the
   temporal contribution: streamed minus reset).

Writes every number to a JSON (default projects/results/synthetic_benchmark_<data>_seed<seed>.json;
with --quick OUTPUT/synthetic_benchmark.json, so a smoke test never replaces reported numbers),
a Markdown table and a plot beside it (same name, .md and .png).

The default budgets take under an hour on 2 idle CPU cores (53 min measured on the vspw set); --quick runs a few
iterations of each stage on a tiny set (a smoke test of the whole pipeline, not results).
"""
import argparse
import json
import os
import sys

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from detectron2.utils.logger import setup_logger

from vss.benchmark import REPO
from vss.benchmark.calibration import of_benchmark
from vss.benchmark.synthetic import (BUDGETS, DATA, DATA_SETS, PARTS, QUICK_BUDGETS, QUICK_DATA, TV3S_SCALE,
                                     VARIANT_KEYS, finite_or_none, run)
from vss.benchmark.synthetic_report import markdown, plot
from vss.engine.cli import add_debug_argument, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=list(DATA_SETS), default="vspw",
                        help="the synthetic set: calibrated to VSPW (the vspw preset, default), clean, with the "
                             "video effects preset, or the context task (classes shown in one frame of every 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated set and of training")
    parser.add_argument("--quick", action="store_true", help="tiny set and budgets: a smoke test")
    for stage in BUDGETS:
        parser.add_argument(f"--{stage}-iters", type=int, default=None,
                            help=f"training iterations of {stage} (default {BUDGETS[stage]}, "
                                 f"--quick {QUICK_BUDGETS[stage]})")
    for key in DATA:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"of the generated set (default {DATA[key]}, --quick {QUICK_DATA[key]})")
    parser.add_argument("--tv3s-scale", type=int, default=TV3S_SCALE,
                        help=f"frame size of TV3S's set over the MPVSS set's (default {TV3S_SCALE})")
    parser.add_argument("--only", choices=PARTS, default=None,
                        help="run one part: mpvss (FlowNetS, Mask2Former, the MPVSS variants) or tv3s "
                             "(SegFormer-B0, TV3S and the control); default both")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANT_KEYS), metavar="VARIANT",
                        help=f"the MPVSS variants to run, by name: {', '.join(VARIANT_KEYS)} (default all)")
    parser.add_argument("--output", default=os.path.join(REPO, "output", "synthetic_benchmark"),
                        help="folder of the data and the checkpoints, reused when they exist "
                             "(default output/synthetic_benchmark in the repository)")
    parser.add_argument("--json", default=None,
                        help="results file (default projects/results/synthetic_benchmark_<data>_seed<seed>.json, "
                             "--quick OUTPUT/synthetic_benchmark.json); .md and .png beside it")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    budgets, data = (QUICK_BUDGETS, QUICK_DATA) if args.quick else (BUDGETS, DATA)
    args.iters = {s: getattr(args, f"{s}_iters") or budgets[s] for s in BUDGETS}
    args.parts = (args.only,) if args.only else PARTS
    args.variants = [name for key, name in VARIANT_KEYS.items() if args.variants is None or key in args.variants]
    args.set = {k: getattr(args, k) or data[k] for k in DATA}
    if args.json is None:
        args.json = (os.path.join(args.output, "synthetic_benchmark.json") if args.quick else
                     os.path.join(REPO, "projects", "results", f"synthetic_benchmark_{args.data}_seed{args.seed}.json"))
    return args


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="vss")
    setup_logger()
    res = run(args)
    if not DATA_SETS[args.data]["context"]:  # the context task has no calibration targets
        res["calibration"] = of_benchmark(res, DATA_SETS[args.data]["effects"], args.seed, args.set)
    res = finite_or_none(res)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    stem = os.path.splitext(args.json)[0]
    table = markdown(res)
    with open(stem + ".md", "w") as f:
        f.write(table)
    plot(res, stem + ".png")
    print("\n" + table)
    print(f"[benchmark] results: {args.json}, {stem}.md, {stem}.png")


if __name__ == "__main__":
    run_main(main, "synthetic_benchmark.py", debug="--debug" in sys.argv[1:])
