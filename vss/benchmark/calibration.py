"""The numbers a synthetic preset is calibrated on, measured with baselines only (no video model):

- Copy of the ground truth at K = 5: the labels of each key frame (every 5th) stand for the next
  4 frames, scored against their own labels on the benchmark's validation videos (the MPVSS set).
  100 minus its mIoU is what motion alone costs a key-frame method that does nothing between key
  frames; on VSPW, Copy of a model's predictions loses 7-9% of the per-frame mIoU (MPVSS Table 3a);
- the per-frame SegFormer-B0 trained on the benchmark's TV3S set: its mIoU and mVC8 (VSPW's
  per-frame models reach mVC8 81-88: they flicker), and its mIoU at TV3S's scan resolution
  (vss/evaluation/scan_resolution.py), the ceiling the 1/8 map puts on TV3S.

tools/calibrate_synthetic.py is its command line; the vspw preset's numbers are written beside
it (vss/data/video_effects.py).
"""
import os

import numpy as np

from ..data.datasets import SYNTHETIC_CLASSES
from ..data.synthetic import LABEL_OFFSET, generate, render_video
from ..data.video_effects import resolve_effects
from ..engine import evaluate, load_cfg, train_once
from ..evaluation.scan_resolution import at_scan_resolution
from ..evaluation.vss_evaluator import confusion_scores
from .synthetic import CONFIGS, DATA, TV3S_SCALE, register, sizes

__all__ = ["TARGETS", "copy_loss", "per_frame", "calibrate", "of_benchmark"]

VAL_SPLIT = 1  # the generator's split code of the validation videos (vss.data.synthetic.SPLITS)
# Each calibration number -> its target, set from VSPW's ((low, high), None where open).
COPY, MVC8, CEILING = ("copy of the ground truth, K=5: mIoU loss", "per-frame mVC8",
                       "scan-resolution ceiling: SegFormer mIoU loss")
TARGETS = {COPY: (5, 10), MVC8: (80, 90), CEILING: (None, 2)}
CAL_TRAIN, CAL_VAL = "synthetic_calibration_train", "synthetic_calibration_val"


def copy_loss(effects, seed=0, key_interval=5, data=DATA):
    """100 - mIoU of the ground truth copied from key frames every `key_interval` frames, over the
    validation videos of the benchmark's set (`data`, seed `seed`) with `effects`."""
    effects = resolve_effects(effects)
    n = len(SYNTHETIC_CLASSES)
    conf = np.zeros((n, n), np.int64)
    for index in range(data["val_videos"]):
        # the validation videos `generate` writes
        rng = np.random.default_rng([seed, VAL_SPLIT, index])
        labels = render_video(rng, data["frames"], data["height"], data["width"], effects)["labels"]
        labels = labels.astype(np.int64) - LABEL_OFFSET
        for t in range(len(labels)):
            key = labels[t - t % key_interval]
            conf += np.bincount(labels[t].ravel() * n + key.ravel(), minlength=n * n).reshape(n, n)
    return 100 - float(confusion_scores(conf)["mIoU"])


def per_frame(effects, output, iters, scale=TV3S_SCALE, seed=0, log=print, data=DATA):
    """The per-frame SegFormer-B0 trained `iters` iterations on the benchmark's TV3S set (frames
    `scale` times the MPVSS set's, `data`) with `effects`: {"full resolution": metrics, "scan
    resolution": metrics}. A SegFormer already trained in `output` is reused."""
    size = {**data, "height": data["height"] * scale, "width": data["width"] * scale}
    summary = generate(os.path.join(output, "data"), **size, seed=seed, effects=resolve_effects(effects))
    register(summary["root"], CAL_TRAIN, CAL_VAL, flow_pairs=False)
    opts = ["DATASETS.TRAIN", f"('{CAL_TRAIN}',)", "DATASETS.TEST", f"('{CAL_VAL}',)", "SEED", seed,
            "TEST.VSS.REPORT_COMPUTE", False] + sizes(size["height"])
    config = os.path.join(CONFIGS, "segformer_tiny.yaml")
    weights = train_once("SegFormer-B0", config, os.path.join(output, "segformer"),
                         opts + ["SOLVER.MAX_ITER", iters], log=log)
    window = load_cfg(os.path.join(CONFIGS, "tv3s_finetune.yaml")).MODEL.TV3S.WINDOW_SIZE
    return {"full resolution": evaluate("SegFormer-B0", config, weights, opts, log=log),
            "scan resolution": evaluate("SegFormer-B0 at TV3S's scan resolution", config, weights, opts, log=log,
                                        model_fn=lambda m: at_scan_resolution(m, window))}


def calibrate(effects, output, iters, scale=TV3S_SCALE, seed=0, log=print, data=DATA):
    """Every calibration number of `effects` (module doc) with the targets' quantities derived."""
    seg = per_frame(effects, output, iters, scale, seed, log, data)
    return {"effects": resolve_effects(effects), "seed": seed, "segformer_iters": iters, "tv3s_scale": scale,
            "segformer": seg, **of_benchmark({"segformer": seg}, effects, seed, data)}


def of_benchmark(res, effects, seed, data):
    """The calibration numbers of a synthetic benchmark run (`res`, on the set of `effects`,
    `seed` and sizes `data`): Copy of the ground truth measured on its validation videos, and the
    per-frame SegFormer's from its TV3S part when it ran."""
    numbers = {COPY: copy_loss(effects, seed, data=data)}
    if "segformer" in res:
        full, scan = res["segformer"]["full resolution"], res["segformer"]["scan resolution"]
        numbers.update({MVC8: full["mVC8"], CEILING: full["mIoU"] - scan["mIoU"]})
    return numbers
