#!/usr/bin/env python
"""The quickstart behind `make demo`: generated video -> train -> evaluate -> table, video, plot.

1. writes the synthetic video set if missing: by default the preset calibrated to VSPW
   (`datasets/prepare_synthetic.py --effects vspw`, registered as synthetic_vss_vspw_{train,val});
   `--data clean` the clean set (synthetic_vss_{train,val});
2. trains tiny models on CPU (or GPU when present) in the papers' protocol, shortened: the
   motion encoder pretrained as FlowNetS on the set's exact flow; a per-frame Mask2Former, then
   MPVSS (query-based flow) fine-tuned from it with the pretrained motion weights; a per-frame
   SegFormer-B0, then TV3S fine-tuned from it. A model whose `model_final.pth` exists is not
   retrained (delete output/quickstart to start over);
3. evaluates the four segmentation models on the set's validation videos with the VSS evaluator, and TV3S's
   weights once more with its state reset at every frame (what its carried states add), and
   prints one table (mIoU, WIoU, mVC8, mVC16); OUTPUT/results.json holds it with the seed, the
   thread count and the torch version (demo/quickstart_results.json is the README's copy). The
   full protocol, with the ablations and longer schedules, is tools/synthetic_benchmark.py;
4. segments a validation video with MPVSS into an overlay video (demo/demo.py);
5. evaluates MPVSS and its Copy variant at key-frame intervals K = 2, 5, 10 and plots mIoU and
   the tiny model's GFLOPs per frame against K (tools/plot_keyframe_tradeoff.py).
"""
import argparse
import json
import os
import subprocess
import sys

import vss  # noqa: F401  (first: its warnings filter quiets fvcore's torch.jit deprecation)

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

from vss.benchmark import REPO
from vss.benchmark.quickstart import (COPY, DATA, FLOWNETS, FLOWNETS_SCHEDULE, KEY_INTERVALS, MPVSS, PER_FRAME,
                                      SEED, SEGFORMER, TV3S, TV3S_ITERS, claim_output, config_path, data_opts,
                                      results_table, run_environment)
from vss.data.datasets.synthetic import SYNTHETIC_SETS
from vss.data.synthetic import generate
from vss.engine import evaluate, load_cfg, single_frame_opts, train_once, video_gflops
from vss.engine.cli import add_debug_argument, run_main


def log(message):
    print(f"[quickstart] {message}")


def train(name, path, output_dir, opts, seed):
    return train_once(name, config_path(path), output_dir, list(opts) + ["SEED", seed], log=log)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "quickstart"),
                        help="folder of the models, results, video and plot (`make demo OUT=...`)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"SEED of every training (default {SEED}, the README's table); the data stay the same")
    parser.add_argument("--data", choices=list(DATA), default="vspw",
                        help="the synthetic set: the preset calibrated to VSPW (default) or the clean set")
    add_debug_argument(parser)
    args = parser.parse_args()
    setup_logger(name="vss")
    setup_logger()
    out = args.output

    # Where the registered synthetic datasets look ($DETECTRON2_DATASETS, default ./datasets).
    prefix = DATA[args.data]
    claim_output(out, prefix)
    summary = generate(MetadataCatalog.get(f"{prefix}_train").dataset_root, **SYNTHETIC_SETS[prefix])
    print(f"[quickstart] synthetic data: {summary['root']} ({summary['frames']} frames"
          f"{', generated' if summary['generated'] else ', already there'})")
    data = data_opts(prefix)

    def run_eval(name, path, weights, opts=()):
        return evaluate(name, config_path(path), weights, data + list(opts), log=log)

    flownets = train("FlowNetS", FLOWNETS, os.path.join(out, "flownets"),
                     data_opts(prefix, flow=True) + FLOWNETS_SCHEDULE, args.seed)
    per_frame = train("Mask2Former", PER_FRAME, os.path.join(out, "mask2former"), data, args.seed)
    mpvss = train("MPVSS", MPVSS, os.path.join(out, "mpvss"),
                  data + ["MODEL.WEIGHTS", per_frame, "MODEL.MOTION.WEIGHTS", flownets], args.seed)
    segformer = train("SegFormer-B0", SEGFORMER, os.path.join(out, "segformer"), data, args.seed)
    tv3s = train("TV3S", TV3S, os.path.join(out, "tv3s"),
                 data + ["MODEL.WEIGHTS", segformer, "SOLVER.MAX_ITER", TV3S_ITERS], args.seed)

    rows = [
        {"model": "Mask2Former (per frame)", **run_eval("Mask2Former", PER_FRAME, per_frame)},
        {"model": "MPVSS (query flow, K=5)", **run_eval("MPVSS", MPVSS, mpvss)},
        {"model": "SegFormer-B0 (per frame)", **run_eval("SegFormer-B0", SEGFORMER, segformer)},
        {"model": "TV3S (streaming)", **run_eval("TV3S", TV3S, tv3s)},
        {"model": "TV3S (reset per frame)", **run_eval("TV3S, reset per frame", TV3S, tv3s,
                                                       single_frame_opts(load_cfg(config_path(TV3S))))},
    ]

    video = os.path.join(summary["root"], "data", summary["videos"]["val"][0], "origin", "*.jpg")
    print(f"[quickstart] segmenting {video} with MPVSS")
    subprocess.run([sys.executable, os.path.join(REPO, "demo", "demo.py"), "--config-file",
                    config_path(MPVSS), "--input", video,
                    "--output-video", os.path.join(out, "demo.mp4"), "--opts", "MODEL.WEIGHTS", mpvss, *data],
                   check=True)

    runs, tradeoff = [], {}
    for name, path, weights in [("copy", COPY, per_frame), ("query flow", MPVSS, mpvss)]:
        files, tradeoff[name] = [], {}
        for k in KEY_INTERVALS:
            result = run_eval(f"{name}, K={k}", path, weights, ["MODEL.MPVSS.KEY_INTERVAL", str(k)])
            tradeoff[name][f"K={k}"] = result["mIoU"]
            files.append(os.path.join(out, f"tradeoff_{name.replace(' ', '_')}_k{k}.json"))
            with open(files[-1], "w") as f:
                json.dump({"K": k, "sem_seg": result}, f)
        runs += ["--runs", f"{name}=" + ",".join(files)]
    key, nonkey = video_gflops(config_path(MPVSS), mpvss, data + ["MODEL.MPVSS.KEY_INTERVAL", "2"])
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "plot_keyframe_tradeoff.py"), *runs,
                    "--flops", f"KEY={key:.3f},NONKEY={nonkey:.3f}",
                    "--flops-label", "tiny MPVSS (query flow), synthetic frames",
                    "--output", os.path.join(out, "tradeoff.png")], check=True)

    results = {**run_environment(args.seed), "data": prefix, "models": rows, "tradeoff_mIoU": tradeoff}
    print("\n" + results_table(results))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\n[quickstart] results: {out}/results.json, overlay video: {out}/demo.mp4, "
          f"trade-off plot: {out}/tradeoff.png")


if __name__ == "__main__":
    run_main(main, "quickstart.py", debug="--debug" in sys.argv[1:])
