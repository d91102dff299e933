"""Training and evaluation driven from Python: the quickstart and the synthetic benchmark.

Each step logs one line through `log` (print by default) so that long runs show progress.
"""
import json
import os

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.utils.env import seed_all_rng

from ..config import add_vss_config
from ..evaluation.vss_evaluator import CONTEXT_METRICS
from ..utils.flops import video_flops
from .loading import load_weights
from .setup import load_cfg, setup_cfg
from .trainer import EVALUATIONS, Trainer

__all__ = ["METRICS", "metric_names", "train_once", "learning_curve", "load_model", "evaluate", "video_gflops"]


def metric_names(cfg):
    """The metrics `evaluate` reports for `cfg`: mIoU, WIoU and mVC<n> for each TEST.VSS.VC_WINDOWS n
    (and CONTEXT_METRICS on data with context pixels)."""
    return ("mIoU", "WIoU", *(f"mVC{n}" for n in cfg.TEST.VSS.VC_WINDOWS))


def _reported(results, metrics):
    """`metrics` of an evaluator's results, and the context pixels' where the data has them."""
    return {m: results[m] for m in (*metrics, *CONTEXT_METRICS) if m in metrics or m in results}


def _default_cfg():
    cfg = get_cfg()
    add_vss_config(cfg)
    return cfg


# the metrics of the default config (TEST.VSS.VC_WINDOWS [8, 16]): the columns of the quickstart's
# and the synthetic benchmark's tables, whose runs keep the default windows
METRICS = metric_names(_default_cfg())


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
    # What train_net.py's default_setup does: SEED fixes the model's initialisation and every
    # draw during training (the samples' own draws come from it too, see vss.data.train_loader).
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return final


def learning_curve(output_dir, metrics=None):
    """[{"iter": iterations done, metric: value, ...}] of the evaluations during a training run
    (TEST.EVAL_PERIOD), in order, from its OUTPUT_DIR/evaluations.jsonl (see Trainer).

    metrics: default the run's own `metric_names`, from the OUTPUT_DIR/config.yaml train_net.py
    saves; METRICS for a run without one (`train_once`'s).
    """
    if metrics is None:
        saved = os.path.join(output_dir, "config.yaml")
        metrics = metric_names(load_cfg(saved)) if os.path.isfile(saved) else METRICS
    curve = []
    with open(os.path.join(output_dir, EVALUATIONS)) as f:
        for line in f:
            record = json.loads(line)
            curve.append({"iter": record["iter"], **_reported(record["results"]["sem_seg"], metrics)})
    return curve


def load_model(config_file, weights, opts=()):
    """(cfg, model in eval mode) of `config_file` with the checkpoint `weights` ("" keeps the init),
    loaded as every entry point loads (`load_weights`)."""
    cfg = setup_cfg(config_file, list(opts) + ["MODEL.WEIGHTS", weights])
    model = Trainer.build_model(cfg)
    load_weights(model, cfg, training=False)
    model.eval()
    return cfg, model


def evaluate(name, config_file, weights, opts=(), log=print, model_fn=None):
    """The `metric_names(cfg)` of `weights` on the config's test sets, as detectron2's
    DefaultTrainer.test returns results: {metric: value} for one test set, {dataset: {metric:
    value}} in DATASETS.TEST's order for several.

    model_fn: evaluates model_fn(model) instead of the loaded model (a diagnostic variant).
    """
    cfg, model = load_model(config_file, weights, opts)
    if model_fn is not None:
        model = model_fn(model)
    log(f"{name}: evaluating on {', '.join(cfg.DATASETS.TEST)}")
    results = Trainer.test(cfg, model)
    if len(cfg.DATASETS.TEST) == 1:  # detectron2 returns the one dataset's results directly
        results = {cfg.DATASETS.TEST[0]: results}
    per_set = {dataset: _reported(results[dataset]["sem_seg"], metric_names(cfg)) for dataset in cfg.DATASETS.TEST}
    return per_set[cfg.DATASETS.TEST[0]] if len(per_set) == 1 else per_set


def video_gflops(config_file, weights="", opts=(), frames=2):
    """GFLOPs of each of the first `frames` frames of a video at the test set's frame size.

    For MPVSS with MODEL.MPVSS.KEY_INTERVAL 2: [key frame, propagated frame]. The weights do
    not change the count; they only make the model build as trained.
    """
    cfg, model = load_model(config_file, weights, opts)
    first = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]
    return [c[""] / 1e9 for c in video_flops(model, first["height"], first["width"], frames=frames)]
