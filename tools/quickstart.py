#!/usr/bin/env python
"""The quickstart behind `make demo`: generated video data -> train -> evaluate -> table.

1. writes the synthetic video set (datasets/prepare_synthetic.py defaults) if missing;
2. trains each model below on CPU (or GPU when present), skipping a model whose
   `model_final.pth` already exists (delete output/quickstart to start over);
3. evaluates every model on synthetic_vss_val with the VSS evaluator and prints one table
   (mIoU, WIoU, mVC8, mVC16, frames/s of the evaluation pass).
"""
import argparse
import json
import os
import time

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from vss.data.synthetic import generate
from vss.engine import Trainer, setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (row name, config): the models the quickstart trains and compares.
MODELS = [
    ("Mask2Former (per frame)", "configs/synthetic/mask2former_tiny.yaml"),
]
METRICS = ["mIoU", "WIoU", "mVC8", "mVC16"]


def train_and_evaluate(name, config, output_dir, extra_opts):
    opts = ["OUTPUT_DIR", output_dir] + list(extra_opts)
    cfg = setup_cfg(os.path.join(REPO, config), opts)
    final = os.path.join(output_dir, "model_final.pth")
    if os.path.isfile(final):
        print(f"[quickstart] {name}: using the trained {final}")
    else:
        print(f"[quickstart] {name}: training {cfg.SOLVER.MAX_ITER} iterations ({config})")
        os.makedirs(output_dir, exist_ok=True)
        # No evaluation inside training: the timed evaluation below is the one reported.
        trainer = Trainer(setup_cfg(os.path.join(REPO, config), opts + ["DATASETS.TEST", "()"]))
        trainer.resume_or_load(resume=False)
        trainer.train()
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(final)
    print(f"[quickstart] {name}: evaluating on {cfg.DATASETS.TEST[0]}")
    loader = Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
    start = time.perf_counter()
    results = Trainer.test(cfg, model)
    seconds = time.perf_counter() - start
    metrics = results["sem_seg"]  # one test dataset: detectron2 returns its results directly
    return {**{m: metrics[m] for m in METRICS}, "frames/s": len(loader.dataset) / seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "quickstart"))
    parser.add_argument("--iters", type=int, default=None, help="override SOLVER.MAX_ITER of every model")
    args = parser.parse_args()
    setup_logger(name="vss")
    setup_logger()

    # Where the registered synthetic datasets look ($DETECTRON2_DATASETS, default ./datasets).
    summary = generate(MetadataCatalog.get("synthetic_vss_train").dataset_root)
    print(f"[quickstart] synthetic data: {summary['root']} ({summary['frames']} frames"
          f"{', generated' if summary['generated'] else ', already there'})")

    extra = ["SOLVER.MAX_ITER", str(args.iters)] if args.iters else []
    rows = []
    for name, config in MODELS:
        out = os.path.join(args.output, os.path.splitext(os.path.basename(config))[0])
        rows.append({"model": name, **train_and_evaluate(name, config, out, extra)})

    table = tabulate([[r["model"]] + [r[m] for m in METRICS + ["frames/s"]] for r in rows],
                     headers=["model"] + METRICS + ["frames/s"], floatfmt=".1f", tablefmt="github")
    print("\n" + table)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"\n[quickstart] results in {args.output}/results.json")


if __name__ == "__main__":
    main()
