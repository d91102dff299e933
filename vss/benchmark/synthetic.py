"""The papers' protocol on synthetic video with ground-truth motion: its stages, budgets and
variants (tools/synthetic_benchmark.py is its command line; its help lists the stages).

`run(args)` takes the tool's parsed options and returns every number as a JSON-ready dict.
"""
import math
import os
import platform
import time
from datetime import datetime, timezone

import torch
from detectron2.data import DatasetCatalog

from ..data.datasets import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, register_flow_pairs, register_vspw_layout
from ..data.datasets.flow_pairs import MAX_GAP
from ..data.synthetic import generate
from ..engine import (Trainer, evaluate, learning_curve, load_cfg, load_model, single_frame_opts, train_once,
                      video_gflops)
from ..engine.temporal_contribution import RESET
from ..engine.trainer import EVALUATIONS
from ..evaluation.flow_diagnostics import flow_diagnostics
from ..evaluation.scan_resolution import at_scan_resolution
from ..utils.flops import interval_cost
from . import REPO

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
# --variants names a variant by its output folder without "mpvss_" (copy, query_flow, ...)
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
# --data: the generator's options of each set: the video effects preset (vss.data.video_effects)
# and the context task's period (vss.data.synthetic; 0: none)
DATA_SETS = {"clean": {"effects": "clean", "context": 0}, "effects": {"effects": "effects", "context": 0},
             "vspw": {"effects": "vspw", "context": 0}, "context": {"effects": "clean", "context": 3}}
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
    # every stage: this seed; no compute report per evaluation (the GFLOPs come from one count per
    # model, video_gflops, and tracing at each of the many evaluations would double a --quick run)
    settings = ["SEED", args.seed, "TEST.VSS.REPORT_COMPUTE", False]
    settings += ["DATALOADER.NUM_WORKERS", 0] if args.quick else []
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
        os.path.join(out, "data"), **args.set, seed=args.seed, **DATA_SETS[args.data]))
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
        os.path.join(out, "tv3s_data"), **size, seed=args.seed, **DATA_SETS[args.data]))
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
    # the same weights without time: what the carried states add (the paper's single-frame protocol)
    reset = progress.stage("tv3s reset eval", lambda: evaluate(
        f"TV3S ({RESET})", tv3s_cfg, tv3s, common + single_frame_opts(tv3s_defaults), log=log))
    results = {"stream": stream, "clip": clip, RESET: reset}
    return {k: summary["spec"][k] for k in ("height", "width")}, per_frame, results


def final_of(curve):
    """The metrics of a run's last evaluation (its final weights), with the whole curve."""
    return {**{m: v for m, v in curve[-1].items() if m != "iter"}, "curve": curve}


def evaluate_mpvss(name, config, weights, common, log):
    """Metrics at each K with GFLOPs/frame, and the per-query flow EPE, of one MPVSS variant."""
    key, propagated = video_gflops(config, weights, common + ["MODEL.MPVSS.KEY_INTERVAL", 2], frames=2)
    costs = {"key": key, "propagated": propagated}
    result = {"K": {}}
    for k in KEY_INTERVALS:
        metrics = evaluate(f"{name}, K={k}", config, weights, common + ["MODEL.MPVSS.KEY_INTERVAL", k], log=log)
        result["K"][k] = {**metrics, "GFLOPs": interval_cost(costs, "key", k)}
    cfg, model = load_model(config, weights, common)
    log(f"{name}: per-query flow EPE against the ground truth")
    result["flow_epe"] = flow_diagnostics(model, cfg, VAL)
    return result
