"""The quickstart's recipe on the synthetic set (`make demo`, tools/quickstart.py): which configs,
how long, which seed, and the table its results file renders to.

tools/recipe_ablation.py fine-tunes the video models with the same recipe on the clean set.
"""
import glob
import json
import os

import torch
from tabulate import tabulate

from ..engine.runs import METRICS
from . import REPO, per_seed

FLOWNETS = "configs/synthetic/flownets_pretrain.yaml"
PER_FRAME = "configs/synthetic/mask2former_tiny.yaml"
MPVSS = "configs/synthetic/mpvss_query_flow.yaml"
COPY = "configs/synthetic/mpvss_copy.yaml"
SEGFORMER = "configs/synthetic/segformer_tiny.yaml"
TV3S = "configs/synthetic/tv3s_finetune.yaml"
# Shorter than the configs' schedules, to keep the quickstart within minutes; FlowNet's rate
# halvings at 1/3, 1/2 and 2/3 of the schedule as in the config.
FLOWNETS_SCHEDULE = ["SOLVER.MAX_ITER", 150, "SOLVER.STEPS", (50, 75, 100)]
TV3S_ITERS = 100
KEY_INTERVALS = (2, 5, 10)
SEED = 0
# --data choice -> the registered synthetic set (vss/data/datasets/synthetic.py) trained and
# evaluated on: by default the preset calibrated to VSPW, where the papers' problem exists.
DATA = {"vspw": "synthetic_vss_vspw", "clean": "synthetic_vss"}


def data_opts(prefix, flow=False):
    """The config options that train and evaluate on the registered synthetic set `prefix` (its
    frame pairs with exact flow with `flow`: FlowNetS's data)."""
    pairs = "_flow" if flow else ""
    return ["DATASETS.TRAIN", f"('{prefix}{pairs}_train',)", "DATASETS.TEST", f"('{prefix}{pairs}_val',)"]


def claim_output(out, prefix):
    """Record in `out` that its models are trained on the registered set `prefix`, so that a rerun reuses
    them only for that set: trained models of another set there are a ValueError (a folder of a
    quickstart from before the choice of set, models and no record, holds the clean set's)."""
    record = os.path.join(out, "data.json")
    if glob.glob(os.path.join(out, "*", "model_final.pth")):
        trained_on = DATA["clean"]
        if os.path.isfile(record):
            with open(record) as f:
                trained_on = json.load(f)["data"]
        if trained_on != prefix:
            raise ValueError(f"{out} holds models trained on {trained_on}, not {prefix}: give another --output "
                             "(make demo OUT=...) or delete the folder")
    os.makedirs(out, exist_ok=True)
    with open(record, "w") as f:
        json.dump({"data": prefix}, f)


def config_path(config):
    """The absolute path of one of the configs above."""
    return os.path.join(REPO, config)


def run_environment(seed=SEED):
    """What a seeded run's numbers still depend on: the thread count (the order of float sums)
    and the torch build (its kernels); the machine's BLAS is behind both."""
    return {"seed": seed, "threads": torch.get_num_threads(), "torch": torch.__version__}


def results_table(results):
    """The Markdown table of a quickstart results file's `models` (as the README shows it)."""
    rows = [[r["model"]] + [r[c] for c in METRICS] for r in results["models"]]
    return tabulate(rows, headers=["model", *METRICS], floatfmt=".1f", tablefmt="github")


def seeds_table(runs, metrics=("mIoU", "mVC8")):
    """The Markdown table of quickstart results files of several seeds (`runs`, a list): per model and
    metric, each seed's value and the spread (largest minus smallest). Models are matched by name, in
    the order they first appear; a seed whose file lacks a model (a run of an older quickstart) shows
    "-", and the spread is over the seeds that have it."""
    seeds = per_seed(str(r["seed"]) for r in runs)
    by_name = [{m["model"]: m for m in r["models"]} for r in runs]
    names = list(dict.fromkeys(name for models in by_name for name in models))
    rows = []
    for name in names:
        row = [name]
        for metric in metrics:
            values = [models[name][metric] if name in models else None for models in by_name]
            present = [v for v in values if v is not None]
            row += [per_seed(values),
                    f"{max(present) - min(present):.1f}"]
        rows.append(row)
    headers = ["model"] + [h for m in metrics for h in (f"{m}, SEED {seeds}", "spread")]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
