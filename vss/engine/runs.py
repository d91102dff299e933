"""Training and evaluation driven from Python: the quickstart and the synthetic benchmark.

Each step logs one line through `log` (print by default) so that long runs show progress.
"""
import json
import os
import time

from detectron2.data import DatasetCatalog

from ..utils.flops import video_flops
from .checkpoint import VSSCheckpointer
from .setup import setup_cfg
from .trainer import EVALUATIONS, Trainer

__all__ = ["METRICS", "train_once", "learning_curve", "load_model", "evaluate", "video_gflops"]

METRICS = ("mIoU", "WIoU", "mVC8", "mVC16")


def train_once(name, config_file, output_dir, opts=(), log=print, eval_period=0):
    """Train `config_file` into `output_dir` unless its model_final.pth exists; returns that checkpoint.

    eval_period: 0 evaluates nothing during training (the caller's evaluations are the ones
    reported); N > 0 evaluates the config's test sets every N iterations, into the run's
    metrics.json (see `learning_curve`).
    """
    final = os.path.join(output_dir, "model_final.pth")
    if os.path.isfile(final):
        log(f"{name}: using the trained {final}")
        return final
    evaluation = ["TEST.EVAL_PERIOD", eval_period] if eval_period else ["DATASETS.TEST", "()"]
    cfg = setup_cfg(config_file, list(opts) + ["OUTPUT_DIR", output_dir] + evaluation)
    log(f"{name}: training {cfg.SOLVER.MAX_ITER} iterations ({config_file})")
    os.makedirs(output_dir, exist_ok=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return final


def learning_curve(output_dir, metrics=METRICS):
    """[{"iter": iterations done, metric: value, ...}] of the evaluations during a training run
    (TEST.EVAL_PERIOD), in order, from its OUTPUT_DIR/evaluations.jsonl (see Trainer)."""
    curve = []
    with open(os.path.join(output_dir, EVALUATIONS)) as f:
        for line in f:
            record = json.loads(line)
            curve.append({"iter": record["iter"], **{m: record["results"]["sem_seg"][m] for m in metrics}})
    return curve


def load_model(config_file, weights, opts=()):
    """(cfg, model in eval mode) of `config_file` with the checkpoint `weights` ("" keeps the init)."""
    cfg = setup_cfg(config_file, list(opts) + ["MODEL.WEIGHTS", weights])
    model = Trainer.build_model(cfg)
    if weights:
        VSSCheckpointer(model).load(weights)
    model.eval()
    return cfg, model


def evaluate(name, config_file, weights, opts=(), log=print, model_fn=None):
    """{metric: value for METRICS, "frames/s": ...} of `weights` on the config's first test set.

    frames/s is that of the evaluation pass: data loading and metrics included.
    model_fn: evaluates model_fn(model) instead of the loaded model (a diagnostic variant).
    """
    cfg, model = load_model(config_file, weights, opts)
    if model_fn is not None:
        model = model_fn(model)
    dataset = cfg.DATASETS.TEST[0]
    log(f"{name}: evaluating on {dataset}")
    frames = len(Trainer.build_test_loader(cfg, dataset).dataset)
    start = time.perf_counter()
    metrics = Trainer.test(cfg, model)["sem_seg"]  # one test dataset: its results directly
    return {**{m: metrics[m] for m in METRICS}, "frames/s": frames / (time.perf_counter() - start)}


def video_gflops(config_file, weights="", opts=(), frames=2):
    """GFLOPs of each of the first `frames` frames of a video at the test set's frame size.

    For MPVSS with MODEL.MPVSS.KEY_INTERVAL 2: [key frame, propagated frame]. The weights do
    not change the count; they only make the model build as trained.
    """
    cfg, model = load_model(config_file, weights, opts)
    first = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]
    return [c[""] / 1e9 for c in video_flops(model, first["height"], first["width"], frames=frames)]
