#!/usr/bin/env python
"""What the releases' training recipes cost or gain on the synthetic set, switch by switch.

The VSPW/Cityscapes configs follow the releases (projects/*/README.md, "Recipe"); the synthetic
configs keep the code defaults. This tool fine-tunes the two video models on the clean synthetic
set (synthetic_vss) with the quickstart's schedules (MPVSS 200 iterations, TV3S 100), once with the
synthetic configs as they are and once per release switch, over several seeds, and prints the
mIoU / mVC8 of each with its mean and spread:

- MPVSS (query flow, K = 5): frozen modules in train mode (MODEL.VIDEO.FROZEN_MODE), the
  release's per-video pair draw (DATALOADER.SAMPLE_BY video + INPUT.VIDEO.PAIR_DRAW window),
  and both;
- TV3S (streamed): per-frame colour jitter (INPUT.VIDEO.COLOR_AUG_PER_FRAME), mmseg 0.11's loss
  averaging over every pixel (MODEL.SEM_SEG_HEAD.LOSS_AVERAGE all), the release's clip targets
  with per-video sampling (INPUT.VIDEO.CLIP_TARGETS full_context + DATALOADER.SAMPLE_BY video),
  and all three.

    .venv/bin/python tools/recipe_ablation.py [--seeds 0 1 2] [--only mpvss|tv3s] [--output DIR] [--json FILE]

The per-frame models (and FlowNetS) are trained once, with the quickstart's SEED, and shared by
every run; a stage whose model_final.pth exists is reused.
"""
import argparse
import json
import os
import sys
import time

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from vss.benchmark import REPO
from vss.benchmark.quickstart import (FLOWNETS, FLOWNETS_SCHEDULE, MPVSS, PER_FRAME, SEED, SEGFORMER, TV3S, TV3S_ITERS,
                                      config_path)
from vss.benchmark.recipe_ablation import MPVSS_SWITCHES, TV3S_SWITCHES, summary, with_all
from vss.data.synthetic import generate
from vss.engine import evaluate, train_once
from vss.engine.cli import add_debug_argument, run_main


def log(message):
    print(f"[recipe_ablation {time.strftime('%H:%M:%S')}] {message}", flush=True)


def slug(name):
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="SEED of each fine-tuning")
    parser.add_argument("--mpvss-iters", type=int, default=200, help="MPVSS fine-tuning iterations")
    parser.add_argument("--tv3s-iters", type=int, default=TV3S_ITERS, help="TV3S fine-tuning iterations")
    parser.add_argument("--only", choices=("mpvss", "tv3s"), help="run one model's switches")
    parser.add_argument("--output", default=os.path.join(REPO, "output", "recipe_ablation"),
                        help="folder of the models")
    parser.add_argument("--json", default=None, help="results file (default: OUTPUT/recipe_ablation.json)")
    add_debug_argument(parser)
    args = parser.parse_args()
    setup_logger(name="vss")
    out = args.output
    summary_file = args.json or os.path.join(out, "recipe_ablation.json")

    data = generate(MetadataCatalog.get("synthetic_vss_train").dataset_root)
    log(f"synthetic data: {data['root']}")
    base = ["SEED", SEED]
    results = {"seeds": args.seeds, "iterations": {"MPVSS": args.mpvss_iters, "TV3S": args.tv3s_iters}}
    models = []
    if args.only in (None, "mpvss"):
        flownets = train_once("FlowNetS", config_path(FLOWNETS), os.path.join(out, "flownets"),
                              FLOWNETS_SCHEDULE + base, log=log)
        per_frame = train_once("Mask2Former", config_path(PER_FRAME), os.path.join(out, "mask2former"),
                               base, log=log)
        models.append(("MPVSS", MPVSS, with_all(MPVSS_SWITCHES),
                       ["MODEL.WEIGHTS", per_frame, "MODEL.MOTION.WEIGHTS", flownets,
                        "SOLVER.MAX_ITER", args.mpvss_iters]))
    if args.only in (None, "tv3s"):
        segformer = train_once("SegFormer-B0", config_path(SEGFORMER), os.path.join(out, "segformer"),
                               base, log=log)
        models.append(("TV3S", TV3S, with_all(TV3S_SWITCHES),
                       ["MODEL.WEIGHTS", segformer, "SOLVER.MAX_ITER", args.tv3s_iters]))

    for model, config, switches, start in models:
        results[model] = {}
        for name, opts in switches.items():
            runs = {}
            for seed in args.seeds:
                run_dir = os.path.join(out, model.lower(), slug(name), f"seed{seed}")
                weights = train_once(f"{model} / {name} / seed {seed}", config_path(config), run_dir,
                                     start + list(opts) + ["SEED", seed], log=log)
                metrics = evaluate(f"{model} / {name} / seed {seed}", config_path(config), weights,
                                   list(opts), log=log)
                runs[seed] = {m: metrics[m] for m in ("mIoU", "mVC8")}
                log(f"{model} / {name} / seed {seed}: mIoU {runs[seed]['mIoU']:.2f}, mVC8 {runs[seed]['mVC8']:.2f}")
            results[model][name] = {"opts": [str(o) for o in opts], "runs": runs, **summary(runs)}
        os.makedirs(os.path.dirname(os.path.abspath(summary_file)), exist_ok=True)
        with open(summary_file, "w") as f:
            json.dump(results, f, indent=2)

    tables = []
    for model, _, switches, _ in models:
        reference = results[model]["synthetic config (code defaults)"]
        rows = []
        for name in switches:
            r = results[model][name]
            rows.append([name] + [f"{r['runs'][s]['mIoU']:.1f}" for s in args.seeds]
                        + [f"{r['mIoU']['mean']:.1f} ± {r['mIoU']['std']:.1f}",
                           f"{r['mIoU']['mean'] - reference['mIoU']['mean']:+.1f}",
                           f"{r['mVC8']['mean']:.1f} ± {r['mVC8']['std']:.1f}",
                           f"{r['mVC8']['mean'] - reference['mVC8']['mean']:+.1f}"])
        headers = [model] + [f"mIoU seed {s}" for s in args.seeds] + ["mIoU", "Δ", "mVC8", "Δ"]
        tables.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
        print("\n" + tables[-1])
    markdown = os.path.splitext(summary_file)[0] + ".md"
    with open(markdown, "w") as f:
        f.write(f"# tools/recipe_ablation.py: {', '.join(f'{m} {n} iterations' for m, n in results['iterations'].items())}"
                f", seeds {' '.join(map(str, args.seeds))}; mean ± sample standard deviation over seeds, "
                "Δ against the synthetic config\n\n" + "\n\n".join(tables) + "\n")
    log(f"results: {summary_file}, {markdown}")


if __name__ == "__main__":
    run_main(main, "recipe_ablation.py", debug="--debug" in sys.argv[1:])
