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
   evaluated streamed frame by frame and as clips.

Writes every number to a JSON (default projects/results/synthetic_benchmark.json; with
--quick OUTPUT/synthetic_benchmark.json, so a smoke test never replaces reported numbers),
a Markdown table and a plot beside it (same name, .md and .png).

The default budgets take under an hour on 2 idle CPU cores (54 min measured); --quick runs a few
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
from vss.engine import METRICS, Trainer, evaluate, learning_curve, load_cfg, load_model, train_once, video_gflops
from vss.engine.trainer import EVALUATIONS
from vss.evaluation.flow_diagnostics import flow_diagnostics
from vss.evaluation.scan_resolution import at_scan_resolution

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "synthetic")
# the paper's Table 3b names -> (configs/synthetic/mpvss_<name>.yaml, its output folder, options);
# the last row measures the fusion conv's start: the official (weight 0, bias 1) against one
# that passes the pretrained pixel flow through
VARIANTS = {
    "Copy": ("copy", "mpvss_copy", []),
    "Optical flow": ("optical_flow", "mpvss_optical_flow", []),
    "Query-random": ("query_random", "mpvss_query_random", []),
    "Query-learned": ("query_learned", "mpvss_query_learned", []),
    "Query-for-PF": ("query_for_pf", "mpvss_query_for_pf", []),
    "Query-based flow": ("query_flow", "mpvss_query_flow", []),
    "Query-based flow, pass-through fusion start": (
        "query_flow", "mpvss_query_flow_pass_through", ["MODEL.MOTION.FUSION_INIT", "pass_through"]),
}
# --variants names a variant by its output folder without "mpvss_"
VARIANT_KEYS = {folder[len("mpvss_"):]: name for name, (_, folder, _) in VARIANTS.items()}
KEY_INTERVALS = (2, 5, 10)
# training iterations per stage: default (54 min on 2 idle cores in all, measured) and --quick
# (tv3s: the fine-tuning from the per-frame SegFormer, and the control's)
BUDGETS = {"flownets": 600, "mask2former": 1600, "mpvss": 400, "segformer": 1600, "tv3s": 400}
QUICK_BUDGETS = {"flownets": 6, "mask2former": 6, "mpvss": 3, "segformer": 4, "tv3s": 4}
# TV3S and its control are evaluated this many times during their fine-tuning, the last time
# after it (the learning curves; the final point is the reported streaming result). Few:
# streaming TV3S over the validation videos at 240x320 takes minutes on 2 cores.
CURVE_POINTS = 2
# the MPVSS variants likewise, at their configs' test key interval (K = 5): cheap at 120x160
MPVSS_CURVE_POINTS = 4
PARTS = ("mpvss", "tv3s")
# the set: 30-frame videos give 14 windows of 16 frames each for mVC16
DATA = {"train_videos": 8, "val_videos": 4, "frames": 30, "height": 120, "width": 160}
QUICK_DATA = {"train_videos": 2, "val_videos": 2, "frames": 18, "height": 64, "width": 96}
# TV3S's set: the same videos with frames this many times larger. TV3S classifies the map its
# Mamba layers scan, 1/8 of the frame, where SegFormer classifies 1/4; at 120x160 that alone
# takes the per-frame SegFormer from 87.0 to 72.5 mIoU (measured with at_scan_resolution), so
# the comparison would measure resolution, not temporal modelling. The generator scales the
# content with the frame; training crops keep their size, so training costs the same.
TV3S_SCALE = 2
TRAIN, VAL = "synthetic_benchmark_train", "synthetic_benchmark_val"
TV3S_TRAIN, TV3S_VAL = "synthetic_benchmark_tv3s_train", "synthetic_benchmark_tv3s_val"
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
    parser.add_argument("--tv3s-scale", type=int, default=TV3S_SCALE,
                        help=f"frame size of TV3S's set over the MPVSS set's (default {TV3S_SCALE})")
    parser.add_argument("--only", choices=PARTS, default=None,
                        help="run one part: mpvss (FlowNetS, Mask2Former, the MPVSS variants) or tv3s "
                             "(SegFormer-B0, TV3S and the control); default both")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANT_KEYS),
                        help="the MPVSS variants to run, by output folder name (default all)")
    parser.add_argument("--output", default=os.path.join(REPO, "output", "synthetic_benchmark"),
                        help="folder of the data and the checkpoints (reused when they exist)")
    parser.add_argument("--json", default=None,
                        help="results file (default projects/results/synthetic_benchmark.json, "
                             "--quick OUTPUT/synthetic_benchmark.json); .md and .png beside it")
    args = parser.parse_args(argv)
    budgets, data = (QUICK_BUDGETS, QUICK_DATA) if args.quick else (BUDGETS, DATA)
    args.iters = {s: getattr(args, f"{s}_iters") or budgets[s] for s in BUDGETS}
    args.parts = (args.only,) if args.only else PARTS
    args.variants = [name for key, name in VARIANT_KEYS.items() if args.variants is None or key in args.variants]
    args.set = {k: getattr(args, k) or data[k] for k in DATA}
    if args.json is None:
        args.json = os.path.join(args.output if args.quick else os.path.join(REPO, "projects", "results"),
                                 "synthetic_benchmark.json")
    return args


def register(root, train=TRAIN, val=VAL, flow_pairs=True):
    """(Re-)register the set written at `root` as `train`/`val`, and its frame pairs with exact
    flow as FLOW_TRAIN/FLOW_VAL if `flow_pairs`."""
    names = [(train, "train", None), (val, "val", None)]
    if flow_pairs:
        names += [(FLOW_TRAIN, "train", True), (FLOW_VAL, "val", False)]
    for name, split, both_directions in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if both_directions is None:
            register_vspw_layout(name, root, split, SYNTHETIC_CLASSES, SYNTHETIC_COLORS)
        else:
            register_flow_pairs(name, root, split, MAX_GAP, both_directions=both_directions)


def sizes(height):
    """Options that test at the set's frame height and train at the synthetic configs' sizes scaled
    to it (they all train at 96..144 around a test height of 120)."""
    base = load_cfg(os.path.join(CONFIGS, "segformer_tiny.yaml")).INPUT
    train = tuple(round(s * height / base.MIN_SIZE_TEST) for s in base.MIN_SIZE_TRAIN)
    return ["INPUT.MIN_SIZE_TRAIN", train, "INPUT.MIN_SIZE_TEST", height]


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


def propagation_tables(results):
    """Markdown lines: each variant's propagated frames scored with its own flow and with the true flow,
    per class, and its flow error per class (flow_diagnostics)."""
    classes = list(next(iter(results.values()))["flow_epe"]["EPE_classes"])
    rows, epe_rows = [], []
    for name, result in results.items():
        epe = result["flow_epe"]
        own, true = epe["propagation"]["flow"], epe["propagation"]["true flow"]
        rows.append([name, own["mIoU"], true["mIoU"], *[own[f"IoU-{c}"] for c in classes]])
        epe_rows.append([name, *[epe["EPE_classes"][c] for c in classes]])
    return ["", "Propagated frames (key frames every 10 frames, gaps 1..10): mIoU with the variant's own flow "
            "and with the ground-truth flow (the same key-frame masks), and IoU per class with its own flow:", "",
            tabulate(rows, headers=["model", "mIoU", "mIoU, true flow", *classes], floatfmt=".1f",
                     tablefmt="github", missingval="-"),
            "", "Flow EPE per class of the frame's label (frame pixels, gaps 1..10):", "",
            tabulate(epe_rows, headers=["model", *classes], floatfmt=".2f", tablefmt="github", missingval="-")]


def markdown(res):
    lines = [f"# Synthetic benchmark ({res['options']['data']} set, seed {res['options']['seed']}"
             f"{', --quick' if res['options']['quick'] else ''})", "",
             f"{res['date']}, {res['machine']}; iterations {res['options']['iters']}.", ""]
    if "mpvss" in res:
        lines += mpvss_markdown(res)
    if "tv3s" in res:
        lines += tv3s_markdown(res)
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items()), ""]
    return "\n".join(lines)


def mpvss_markdown(res):
    data = res["dataset"]
    lines = ["## MPVSS", "",
             f"{data['val_videos']} validation videos of {data['frames']} frames, {data['height']}x{data['width']}. "
             "Flow EPE: per-query flow against the ground truth on the validation videos, gaps 1..10, in "
             "frame pixels, on the pixels of the moving object classes, on every pixel that moves more "
             "than 0.5 px (the camera pans) and on every valid pixel (vss/evaluation/flow_diagnostics.py).", ""]
    headers = ["model", "K", *METRICS, "GFLOPs/frame", "EPE objects", "EPE moving", "EPE all"]
    lines.append(tabulate(mpvss_rows(res["mpvss"], res["mask2former"]), headers=headers, floatfmt=".2f",
                          tablefmt="github", missingval="-"))
    lines += propagation_tables(res["mpvss"])
    curves = {name: {p["iter"]: p["mIoU"] for p in r.get("curve", [])} for name, r in res["mpvss"].items()}
    curves = {name: c for name, c in curves.items() if c}
    if curves:
        iters = sorted({i for c in curves.values() for i in c})
        lines += ["", "Learning curves of the fine-tuning (mIoU at K = 5, validation set):", "",
                  tabulate([[name, *[c.get(i) for i in iters]] for name, c in curves.items()],
                           headers=["model", *[f"iter {i}" for i in iters]], floatfmt=".1f", tablefmt="github",
                           missingval="-")]
    flow = res["flownets"]
    lines += ["", "## FlowNetS pretraining (pixel flow EPE, frame pixels)", "",
              tabulate([[flow["evaluator"].get("EPE"), flow["evaluator"].get("Fl"), flow["diagnostics"]["EPE"],
                         flow["diagnostics"]["EPE_objects"], flow["diagnostics"]["EPE_moving"],
                         flow["diagnostics"]["EPE_static"], flow["evaluator"].get("EPE_zero")]],
                       headers=["EPE (all pairs)", "Fl %", "EPE (key-frame pairs)", "objects", "moving", "static",
                                "zero flow"], floatfmt=".2f", tablefmt="github", missingval="-"), ""]
    return lines


def tv3s_markdown(res):
    lines = [f"## TV3S against its per-frame SegFormer-B0 ({res['tv3s_dataset']['height']}x"
             f"{res['tv3s_dataset']['width']} frames)", "",
             "Scan resolution: the per-frame SegFormer predicting on TV3S's 1/8 scan map "
             "(vss/evaluation/scan_resolution.py). Fine-tuned as TV3S: the per-frame SegFormer "
             "trained further with TV3S's rates, iterations and frames (the control).", ""]
    seg, tv3s = res["segformer"], res["tv3s"]
    rows = [["SegFormer-B0 (per frame)", *[seg["full resolution"][m] for m in METRICS]],
            ["SegFormer-B0 at TV3S's scan resolution", *[seg["scan resolution"][m] for m in METRICS]],
            ["SegFormer-B0 fine-tuned as TV3S", *[seg["fine-tuned as TV3S"][m] for m in METRICS]]]
    rows += [[f"TV3S ({mode})", *[r[m] for m in METRICS]] for mode, r in tv3s.items()]
    lines.append(tabulate(rows, headers=["model", *METRICS], floatfmt=".1f", tablefmt="github"))
    lines += ["", "Learning curves of the fine-tuning (validation set):", ""]
    control = {p["iter"]: p for p in seg["fine-tuned as TV3S"]["curve"]}
    rows = [[p["iter"], p["mIoU"], p["mVC8"], control.get(p["iter"], {}).get("mIoU"),
             control.get(p["iter"], {}).get("mVC8")] for p in tv3s["stream"]["curve"]]
    lines.append(tabulate(rows, headers=["iteration", "TV3S mIoU", "TV3S mVC8", "SegFormer mIoU", "SegFormer mVC8"],
                          floatfmt=".1f", tablefmt="github", missingval="-"))
    return lines


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = (2 if "mpvss" in res else 0) + (1 if "tv3s" in res else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.3 * panels, 4), squeeze=False)
    axes = list(axes[0])
    if "mpvss" in res:
        left, right = axes[:2]
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
    if "tv3s" in res:
        curves = axes[-1]
        for name, curve in (("TV3S (stream)", res["tv3s"]["stream"]["curve"]),
                            ("SegFormer-B0 fine-tuned", res["segformer"]["fine-tuned as TV3S"]["curve"])):
            line, = curves.plot([p["iter"] for p in curve], [p["mIoU"] for p in curve], marker="o",
                                label=f"{name} mIoU")
            curves.plot([p["iter"] for p in curve], [p["mVC8"] for p in curve], marker="s", linestyle="--",
                        color=line.get_color(), label=f"{name} mVC8")
        curves.axhline(res["segformer"]["scan resolution"]["mIoU"], color="k", linestyle=":",
                       label="SegFormer-B0 at the scan resolution, mIoU")
        curves.set(xlabel="fine-tuning iteration", ylabel="%", title="TV3S and its per-frame model")
    for a in axes:
        a.legend(fontsize=7)
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
    out = os.path.abspath(args.output)
    # every stage: this seed
    settings = ["SEED", args.seed] + (["DATALOADER.NUM_WORKERS", 0] if args.quick else [])
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                      f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
           "options": {"data": args.data, "seed": args.seed, "quick": args.quick, "iters": args.iters,
                       "parts": list(args.parts), "variants": args.variants}}
    if "mpvss" in args.parts:
        res.update(run_mpvss(args, out, settings, progress))
    if "tv3s" in args.parts:
        res["tv3s_dataset"], res["segformer"], res["tv3s"] = run_tv3s(args, out, settings, progress)
    res["seconds"] = progress.seconds
    return res


def run_mpvss(args, out, settings, progress):
    """The set, FlowNetS, the per-frame Mask2Former and the MPVSS variants: their results by key."""
    log = progress.log
    summary = progress.stage("data", lambda: generate(
        os.path.join(out, "data"), **args.set, seed=args.seed, effects=args.data))
    log(f"data: {summary['root']} ({summary['frames']} frames, "
        f"{'generated' if summary['generated'] else 'already there'})")
    register(summary["root"])
    # tested at the set's frame size (the ground-truth flow's) and trained at sizes around it
    settings_here = settings + sizes(args.set["height"])
    common = ["DATASETS.TRAIN", f"('{TRAIN}',)", "DATASETS.TEST", f"('{VAL}',)"] + settings_here
    res = {"dataset": {k: summary["spec"][k] for k in ("train_videos", "val_videos", "frames", "height", "width")}}

    # FlowNetS pretraining
    flow_cfg = os.path.join(CONFIGS, "flownets_pretrain.yaml")
    flow_opts = ["DATASETS.TRAIN", f"('{FLOW_TRAIN}',)", "DATASETS.TEST", f"('{FLOW_VAL}',)"] + settings_here
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
    period = max(1, args.iters["mpvss"] // MPVSS_CURVE_POINTS)
    for name in args.variants:
        variant, folder, options = VARIANTS[name]
        config = os.path.join(CONFIGS, f"mpvss_{variant}.yaml")
        if variant == "copy":  # as in the paper: the per-frame weights, nothing to train
            weights, curve = per_frame, []
        else:
            weights = progress.stage(f"{name} train", lambda: train_once(
                name, config, os.path.join(out, folder),
                common + options + ["MODEL.WEIGHTS", per_frame, "MODEL.MOTION.WEIGHTS", flownets,
                                    "SOLVER.MAX_ITER", args.iters["mpvss"]], log=log, eval_period=period))
            # a stage reused from a run that did not evaluate during training has no curve
            recorded = os.path.isfile(os.path.join(out, folder, EVALUATIONS))
            curve = learning_curve(os.path.join(out, folder)) if recorded else []
        res["mpvss"][name] = progress.stage(f"{name} eval", lambda: evaluate_mpvss(
            name, config, weights, common + options, log))
        res["mpvss"][name]["curve"] = curve
    return res


def run_tv3s(args, out, settings, progress):
    """Per-frame SegFormer-B0, then TV3S fine-tuned from it and the same fine-tuning of the
    SegFormer itself (the control), on TV3S's set. Returns (its frame size, SegFormer's
    results, TV3S's)."""
    log = progress.log
    size = {**args.set, "height": args.set["height"] * args.tv3s_scale, "width": args.set["width"] * args.tv3s_scale}
    summary = progress.stage("tv3s data", lambda: generate(
        os.path.join(out, "tv3s_data"), **size, seed=args.seed, effects=args.data))
    log(f"tv3s data: {summary['root']} ({size['height']}x{size['width']}, "
        f"{'generated' if summary['generated'] else 'already there'})")
    register(summary["root"], TV3S_TRAIN, TV3S_VAL, flow_pairs=False)
    seg_cfg = os.path.join(CONFIGS, "segformer_tiny.yaml")
    tv3s_cfg = os.path.join(CONFIGS, "tv3s_finetune.yaml")
    common = ["DATASETS.TRAIN", f"('{TV3S_TRAIN}',)", "DATASETS.TEST", f"('{TV3S_VAL}',)"] + settings
    common += sizes(size["height"])

    segformer = progress.stage("segformer train", lambda: train_once(
        "SegFormer-B0", seg_cfg, os.path.join(out, "segformer"),
        common + ["SOLVER.MAX_ITER", args.iters["segformer"]], log=log))
    tv3s_defaults = load_cfg(tv3s_cfg)
    window = tv3s_defaults.MODEL.TV3S.WINDOW_SIZE
    per_frame = progress.stage("segformer eval", lambda: {
        "full resolution": evaluate("SegFormer-B0", seg_cfg, segformer, common, log=log),
        "scan resolution": evaluate("SegFormer-B0 at TV3S's scan resolution", seg_cfg, segformer, common,
                                    log=log, model_fn=lambda m: at_scan_resolution(m, window))})

    # the control: the per-frame model fine-tuned with TV3S's rates, schedule and frames
    solver = tv3s_defaults.SOLVER
    recipe = ["MODEL.WEIGHTS", segformer, "SOLVER.MAX_ITER", args.iters["tv3s"]]
    recipe += [x for key in ("BASE_LR", "HEAD_MULTIPLIER", "BACKBONE_MULTIPLIER", "WARMUP_ITERS")
               for x in (f"SOLVER.{key}", solver[key])]
    period = max(1, args.iters["tv3s"] // CURVE_POINTS)
    tv3s = progress.stage("tv3s train", lambda: train_once(
        "TV3S", tv3s_cfg, os.path.join(out, "tv3s"), common + recipe, log=log, eval_period=period))
    progress.stage("segformer control train", lambda: train_once(
        "SegFormer-B0 fine-tuned as TV3S", seg_cfg, os.path.join(out, "segformer_control"), common + recipe,
        log=log, eval_period=period))
    per_frame["fine-tuned as TV3S"] = final_of(learning_curve(os.path.join(out, "segformer_control")))
    stream = final_of(learning_curve(os.path.join(out, "tv3s")))
    clip = progress.stage("tv3s clip eval", lambda: evaluate(
        "TV3S (clip)", tv3s_cfg, tv3s, common + ["MODEL.TV3S.INFERENCE", "clip"], log=log))
    results = {"stream": stream, "clip": clip}
    return {k: summary["spec"][k] for k in ("height", "width")}, per_frame, results


def final_of(curve):
    """The metrics of a run's last evaluation (its final weights), with the whole curve."""
    return {**{m: curve[-1][m] for m in METRICS}, "curve": curve}


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
