#!/usr/bin/env python
"""The papers' protocol on synthetic video with ground-truth motion, end to end (issue 10).

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
5. trains the per-frame SegFormer-B0, fine-tunes TV3S from it, evaluates both (TV3S
   streamed frame by frame and as clips).

Writes every number to a JSON (default projects/results/synthetic_benchmark.json; with
--quick OUTPUT/synthetic_benchmark.json, so a smoke test never replaces reported numbers),
a Markdown table and a plot beside it (same name, .md and .png).

The default budgets take at most about an hour on 2 idle CPU cores; --quick runs a few
iterations of each stage on a tiny set (a smoke test of the whole pipeline, not results).
"""
import argparse
import json
import math
import os
import platform
import time
from datetime import datetime, timezone
import warnings

# fvcore and detectron2 apply torch.jit.script at import time, which torch 2.x deprecates
# with a FutureWarning on every command; nothing here scripts anything.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from vss.data.datasets import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, register_flow_pairs, register_vspw_layout
from vss.data.datasets.flow_pairs import MAX_GAP
from vss.data.synthetic import generate
from vss.engine import METRICS, Trainer, evaluate, load_model, train_once, video_gflops
from vss.evaluation.flow_diagnostics import flow_diagnostics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "synthetic")
# the paper's Table 3b names -> configs/synthetic/mpvss_<name>.yaml
VARIANTS = {
    "Copy": "copy",
    "Optical flow": "optical_flow",
    "Query-random": "query_random",
    "Query-learned": "query_learned",
    "Query-for-PF": "query_for_pf",
    "Query-based flow": "query_flow",
}
KEY_INTERVALS = (2, 5, 10)
# training iterations per stage: default (about an hour on 2 idle cores in all) and --quick
BUDGETS = {"flownets": 600, "mask2former": 1600, "mpvss": 400, "segformer": 1600, "tv3s": 1600}
QUICK_BUDGETS = {"flownets": 6, "mask2former": 6, "mpvss": 3, "segformer": 4, "tv3s": 3}
# the set: 30-frame videos give 14 windows of 16 frames each for mVC16
DATA = {"train_videos": 8, "val_videos": 4, "frames": 30, "height": 120, "width": 160}
QUICK_DATA = {"train_videos": 2, "val_videos": 2, "frames": 18, "height": 64, "width": 96}
TRAIN, VAL = "synthetic_benchmark_train", "synthetic_benchmark_val"
FLOW_TRAIN, FLOW_VAL = "synthetic_benchmark_flow_train", "synthetic_benchmark_flow_val"


class Progress:
    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = {}

    def log(self, message):
        elapsed = time.perf_counter() - self.start
        print(f"[benchmark {int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {message}", flush=True)

    def stage(self, name, run):
        """run() timed under `name` in self.seconds."""
        start = time.perf_counter()
        result = run()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        self.log(f"{name}: done in {self.seconds[name]:.0f} s")
        return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("clean", "effects"), default="clean",
                        help="the synthetic set: clean, or with the video effects preset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated set and of training")
    parser.add_argument("--quick", action="store_true", help="tiny set and budgets: a smoke test")
    for stage in BUDGETS:
        parser.add_argument(f"--{stage}-iters", type=int, default=None,
                            help=f"training iterations of {stage} (default {BUDGETS[stage]}, "
                                 f"--quick {QUICK_BUDGETS[stage]})")
    for key in DATA:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"of the generated set (default {DATA[key]}, --quick {QUICK_DATA[key]})")
    parser.add_argument("--output", default=os.path.join(REPO, "output", "synthetic_benchmark"),
                        help="folder of the data and the checkpoints (reused when they exist)")
    parser.add_argument("--json", default=None,
                        help="results file (default projects/results/synthetic_benchmark.json, "
                             "--quick OUTPUT/synthetic_benchmark.json); .md and .png beside it")
    args = parser.parse_args(argv)
    budgets, data = (QUICK_BUDGETS, QUICK_DATA) if args.quick else (BUDGETS, DATA)
    args.iters = {s: getattr(args, f"{s}_iters") or budgets[s] for s in BUDGETS}
    args.set = {k: getattr(args, k) or data[k] for k in DATA}
    if args.json is None:
        args.json = os.path.join(args.output if args.quick else os.path.join(REPO, "projects", "results"),
                                 "synthetic_benchmark.json")
    return args


def register(root):
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        register_vspw_layout(name, root, split, SYNTHETIC_CLASSES, SYNTHETIC_COLORS)
    for name, split, both in ((FLOW_TRAIN, "train", True), (FLOW_VAL, "val", False)):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        register_flow_pairs(name, root, split, MAX_GAP, both_directions=both)


def flow_schedule(iters):
    """FlowNet's recipe: the rate halved at 1/3, 1/2 and 2/3 of the schedule."""
    steps = sorted({max(1, min(iters - 1, round(iters * f))) for f in (1 / 3, 1 / 2, 2 / 3)})
    return ["SOLVER.MAX_ITER", iters, "SOLVER.STEPS", tuple(steps)]


def mpvss_rows(results, per_frame):
    rows = [["Mask2Former (per frame)", 1, *[per_frame[m] for m in METRICS], per_frame["GFLOPs"], None, None, None]]
    for name, result in results.items():
        epe = result["flow_epe"]
        for k, r in result["K"].items():
            rows.append([name, k, *[r[m] for m in METRICS], r["GFLOPs"], epe["EPE_objects"], epe["EPE_moving"],
                         epe["EPE"]])
    return rows


def markdown(res):
    per_frame = res["mask2former"]
    lines = [f"# Synthetic benchmark ({res['options']['data']} set, seed {res['options']['seed']}"
             f"{', --quick' if res['options']['quick'] else ''})", "",
             f"{res['date']}, {res['machine']}; {res['dataset']['val_videos']} validation videos of "
             f"{res['dataset']['frames']} frames, {res['dataset']['height']}x{res['dataset']['width']}; "
             f"iterations {res['options']['iters']}.", "",
             "## MPVSS", "",
             "Flow EPE: per-query flow against the ground truth on the validation videos, gaps 1..10, in "
             "frame pixels, on the pixels of the moving object classes, on every pixel that moves more "
             "than 0.5 px (the camera pans) and on every valid pixel (vss/evaluation/flow_diagnostics.py).", ""]
    headers = ["model", "K", *METRICS, "GFLOPs/frame", "EPE objects", "EPE moving", "EPE all"]
    lines.append(tabulate(mpvss_rows(res["mpvss"], per_frame), headers=headers, floatfmt=".2f",
                          tablefmt="github", missingval="-"))
    flow = res["flownets"]
    lines += ["", "## FlowNetS pretraining (pixel flow EPE, frame pixels)", "",
              tabulate([[flow["evaluator"].get("EPE"), flow["evaluator"].get("Fl"), flow["diagnostics"]["EPE"],
                         flow["diagnostics"]["EPE_objects"], flow["diagnostics"]["EPE_moving"],
                         flow["diagnostics"]["EPE_static"], flow["evaluator"].get("EPE_zero")]],
                       headers=["EPE (all pairs)", "Fl %", "EPE (key-frame pairs)", "objects", "moving", "static",
                                "zero flow"], floatfmt=".2f", tablefmt="github", missingval="-"),
              "", "## TV3S against its per-frame SegFormer-B0", ""]
    rows = [["SegFormer-B0 (per frame)", *[res["segformer"][m] for m in METRICS]]]
    rows += [[f"TV3S ({mode})", *[r[m] for m in METRICS]] for mode, r in res["tv3s"].items()]
    lines.append(tabulate(rows, headers=["model", *METRICS], floatfmt=".1f", tablefmt="github"))
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items()), ""]
    return "\n".join(lines)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.axhline(res["mask2former"]["mIoU"], color="k", linestyle="--", label="Mask2Former (per frame)")
    for name, result in res["mpvss"].items():
        ks = sorted(result["K"], key=int)
        left.plot([int(k) for k in ks], [result["K"][k]["mIoU"] for k in ks], marker="o", label=name)
        gaps = sorted(result["flow_epe"]["gaps"], key=int)
        right.plot([int(g) for g in gaps], [result["flow_epe"]["gaps"][g]["EPE_objects"] for g in gaps],
                   marker="o", label=name)
    gaps = sorted(res["flownets"]["diagnostics"]["gaps"], key=int)
    right.plot([int(g) for g in gaps], [res["flownets"]["diagnostics"]["gaps"][g]["EPE_objects"] for g in gaps],
               color="k", linestyle=":", label="FlowNetS (pretrained)")
    left.set(xlabel="key-frame interval K", ylabel="mIoU (%)", title="MPVSS variants", xticks=KEY_INTERVALS)
    right.set(xlabel="frames from the key frame", ylabel="EPE on object pixels (px)",
              title="per-query flow error on moving objects")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def finite_or_none(value):
    """JSON has no NaN: a mean over no pixel is written as null."""
    if isinstance(value, dict):
        return {str(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run(args):
    progress = Progress()
    log = progress.log
    out = os.path.abspath(args.output)
    summary = progress.stage("data", lambda: generate(
        os.path.join(out, "data"), **args.set, seed=args.seed, effects=args.data))
    log(f"data: {summary['root']} ({summary['frames']} frames, "
        f"{'generated' if summary['generated'] else 'already there'})")
    register(summary["root"])
    # every stage: this seed, tested at the set's own frame size (the ground-truth flow's)
    settings = ["SEED", args.seed, "INPUT.MIN_SIZE_TEST", args.set["height"]]
    if args.quick:
        settings += ["DATALOADER.NUM_WORKERS", 0]
    common = ["DATASETS.TRAIN", f"('{TRAIN}',)", "DATASETS.TEST", f"('{VAL}',)"] + settings
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                      f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
           "options": {"data": args.data, "seed": args.seed, "quick": args.quick, "iters": args.iters},
           "dataset": {k: summary["spec"][k] for k in ("train_videos", "val_videos", "frames", "height", "width")}}

    # FlowNetS pretraining
    flow_cfg = os.path.join(CONFIGS, "flownets_pretrain.yaml")
    flow_opts = ["DATASETS.TRAIN", f"('{FLOW_TRAIN}',)", "DATASETS.TEST", f"('{FLOW_VAL}',)"] + settings
    flownets = progress.stage("flownets train", lambda: train_once(
        "FlowNetS", flow_cfg, os.path.join(out, "flownets"), flow_opts + flow_schedule(args.iters["flownets"]),
        log=log))

    def evaluate_flownets():
        cfg, model = load_model(flow_cfg, flownets, flow_opts)
        log("FlowNetS: EPE on the validation pairs and on key-frame pairs")
        return {"evaluator": Trainer.test(cfg, model)["flow"], "diagnostics": flow_diagnostics(model, cfg, VAL)}

    res["flownets"] = progress.stage("flownets eval", evaluate_flownets)

    # per-frame Mask2Former, then the MPVSS variants from it
    m2f_cfg = os.path.join(CONFIGS, "mask2former_tiny.yaml")
    per_frame = progress.stage("mask2former train", lambda: train_once(
        "Mask2Former", m2f_cfg, os.path.join(out, "mask2former"),
        common + ["SOLVER.MAX_ITER", args.iters["mask2former"]], log=log))
    res["mask2former"] = progress.stage("mask2former eval", lambda: {
        **evaluate("Mask2Former", m2f_cfg, per_frame, common, log=log),
        "GFLOPs": video_gflops(m2f_cfg, per_frame, common, frames=1)[0]})
    res["mpvss"] = {}
    for name, variant in VARIANTS.items():
        config = os.path.join(CONFIGS, f"mpvss_{variant}.yaml")
        if variant == "copy":  # as in the paper: the per-frame weights, nothing to train
            weights = per_frame
        else:
            weights = progress.stage(f"{name} train", lambda: train_once(
                name, config, os.path.join(out, f"mpvss_{variant}"),
                common + ["MODEL.WEIGHTS", per_frame, "MODEL.MOTION.WEIGHTS", flownets,
                          "SOLVER.MAX_ITER", args.iters["mpvss"]], log=log))
        res["mpvss"][name] = progress.stage(f"{name} eval", lambda: evaluate_mpvss(name, config, weights, common, log))

    # per-frame SegFormer-B0, then TV3S from it
    seg_cfg = os.path.join(CONFIGS, "segformer_tiny.yaml")
    segformer = progress.stage("segformer train", lambda: train_once(
        "SegFormer-B0", seg_cfg, os.path.join(out, "segformer"),
        common + ["SOLVER.MAX_ITER", args.iters["segformer"]], log=log))
    res["segformer"] = progress.stage("segformer eval", lambda: evaluate("SegFormer-B0", seg_cfg, segformer, common,
                                                                         log=log))
    tv3s_cfg = os.path.join(CONFIGS, "tv3s_tiny.yaml")
    tv3s = progress.stage("tv3s train", lambda: train_once(
        "TV3S", tv3s_cfg, os.path.join(out, "tv3s"),
        common + ["MODEL.WEIGHTS", segformer, "SOLVER.MAX_ITER", args.iters["tv3s"]], log=log))
    res["tv3s"] = progress.stage("tv3s eval", lambda: {
        mode: evaluate(f"TV3S ({mode})", tv3s_cfg, tv3s, common + ["MODEL.TV3S.INFERENCE", mode], log=log)
        for mode in ("stream", "clip")})
    res["seconds"] = progress.seconds
    return res


def evaluate_mpvss(name, config, weights, common, log):
    """Metrics at each K with GFLOPs/frame, and the per-query flow EPE, of one MPVSS variant."""
    key, propagated = video_gflops(config, weights, common + ["MODEL.MPVSS.KEY_INTERVAL", 2], frames=2)
    result = {"K": {}}
    for k in KEY_INTERVALS:
        metrics = evaluate(f"{name}, K={k}", config, weights, common + ["MODEL.MPVSS.KEY_INTERVAL", k], log=log)
        # one key frame and K - 1 propagated frames per interval
        result["K"][k] = {**metrics, "GFLOPs": (key + (k - 1) * propagated) / k}
    cfg, model = load_model(config, weights, common)
    log(f"{name}: per-query flow EPE against the ground truth")
    result["flow_epe"] = flow_diagnostics(model, cfg, VAL)
    return result


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="vss")
    setup_logger()
    res = finite_or_none(run(args))
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
    main()
