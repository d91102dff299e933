"""MODEL.WEIGHTS checked before a model is built, with what to run when it is missing.

Video models start from other checkpoints (MPVSS from a trained per-frame Mask2Former, TV3S
from a pretrained encoder), the per-frame Mask2Former from an ImageNet backbone, and evaluation
needs trained weights; detectron2 alone reports only "Checkpoint ... not found!" or silently
trains or evaluates random weights. Training from random weights (MODEL.WEIGHTS "") is allowed
only where MODEL.ALLOW_RANDOM_INIT is True (the synthetic configs; the VSPW and Cityscapes
configs set it False).
"""
import os

import yaml

from .setup import load_cfg

TRAIN = ".venv/bin/python train_net.py --config-file"
RANDOM_START = 'MODEL.WEIGHTS "" MODEL.ALLOW_RANDOM_INIT True'


def _config_chain(config_file):
    """`config_file` and its _BASE_ files, nearest first."""
    chain = []
    while config_file:
        chain.append(config_file)
        with open(config_file) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        config_file = os.path.normpath(os.path.join(os.path.dirname(config_file), base)) if base else None
    return chain


def _producer(weights, chain):
    """The config of `chain` whose OUTPUT_DIR holds `weights` (training it writes them), or None."""
    folder = os.path.abspath(os.path.dirname(weights))
    for config_file in chain:
        if os.path.abspath(load_cfg(config_file).OUTPUT_DIR) == folder:
            return config_file
    return None


def _per_frame_config(chain):
    """The nearest base config that is not a video model: MPVSS's key-frame segmentor."""
    for config_file in chain:
        if load_cfg(config_file).MODEL.META_ARCHITECTURE != "VideoSegmentor":
            return config_file
    return None


def _mpvss_hint(chain):
    per_frame = _per_frame_config(chain)
    if per_frame is None:
        return "MPVSS starts from a trained per-frame Mask2Former checkpoint of the same backbone"
    output = os.path.join(load_cfg(per_frame).OUTPUT_DIR, "model_final.pth")
    return (f"MPVSS starts from a trained per-frame Mask2Former: train it first with `{TRAIN} {per_frame}`, "
            f"then pass MODEL.WEIGHTS {output}")


def _model(cfg):
    if cfg.MODEL.META_ARCHITECTURE == "MaskFormer":
        return "Mask2Former"
    if cfg.MODEL.META_ARCHITECTURE != "VideoSegmentor":
        return None
    return {"MaskPropagation": "MPVSS", "StateSpaceSharing": "TV3S"}.get(cfg.MODEL.VIDEO.TEMPORAL_HEAD)


def _imagenet_hint(model):
    """How to make the ImageNet checkpoint a training of `model` starts from, or None."""
    if model == "TV3S":
        return ("TV3S starts from an ImageNet-pretrained encoder converted with `tools/convert_tv3s.py --encoder` "
                "or from a TV3S checkpoint (see projects/TV3S/README.md)")
    if model == "Mask2Former":
        return ("the per-frame Mask2Former starts from an ImageNet backbone: detectron2's R-50.pkl / R-101.pkl or "
                "Swin weights converted to detectron2's format (see projects/MPVSS/README.md, \"Initial weights\")")
    return None


def check_weights(cfg, config_file, training):
    """Raise when MODEL.WEIGHTS cannot give the model it should, saying what to run first.

    An existing file always passes. A missing file is an error; so is an empty MODEL.WEIGHTS
    for evaluation (`training` False: trained weights are needed, unless MODEL.MOTION.WEIGHTS
    gives them), for training MPVSS with a frozen segmentor (MODEL.VIDEO.TRAINABLE set: a
    random frozen Mask2Former would stay random) and for any training unless
    MODEL.ALLOW_RANDOM_INIT is True.
    """
    weights = cfg.MODEL.WEIGHTS
    if weights and os.path.isfile(weights):
        return
    chain = _config_chain(config_file)
    model = _model(cfg)
    if not weights:
        # FlowNetS pretraining evaluates the motion weights alone (MODEL.MOTION.WEIGHTS)
        if not training and not cfg.MODEL.MOTION.WEIGHTS:
            raise ValueError(f"MODEL.WEIGHTS is empty, so the model would have random weights: train it first "
                             f"with `{TRAIN} {config_file}`, then pass MODEL.WEIGHTS "
                             f"{os.path.join(cfg.OUTPUT_DIR, 'model_final.pth')}")
        if model == "MPVSS" and cfg.MODEL.VIDEO.TRAINABLE:
            scratch = "MODEL.VIDEO.TRAINABLE \"[]\"" + ("" if cfg.MODEL.ALLOW_RANDOM_INIT else
                                                        " MODEL.ALLOW_RANDOM_INIT True")
            raise ValueError(f"MODEL.WEIGHTS is empty but {config_file} trains only "
                             f"{list(cfg.MODEL.VIDEO.TRAINABLE)} and freezes the rest. {_mpvss_hint(chain)} "
                             f"(or set {scratch} to train everything from scratch)")
        if training and not cfg.MODEL.ALLOW_RANDOM_INIT:
            hint = _imagenet_hint(model) or "set MODEL.WEIGHTS to a local checkpoint"
            raise ValueError(f"MODEL.WEIGHTS is empty and {config_file} sets MODEL.ALLOW_RANDOM_INIT False, so "
                             f"training would start from random weights: {hint}. To start from random weights "
                             f"on purpose, pass {RANDOM_START}")
        return
    producer = _producer(weights, chain)
    if model == "MPVSS" and producer != config_file:  # MPVSS's own checkpoint aside, it is the per-frame one
        hint = _mpvss_hint(chain)
    elif producer is not None:
        hint = f"train {producer} first: `{TRAIN} {producer}` writes it"
    elif not training and model in ("Mask2Former", "TV3S"):  # the config's own names its training start
        hint = (f"evaluation needs trained weights: train first with `{TRAIN} {config_file}`, then pass "
                f"MODEL.WEIGHTS {os.path.join(cfg.OUTPUT_DIR, 'model_final.pth')}")
    else:
        hint = _imagenet_hint(model) or "set MODEL.WEIGHTS to a local checkpoint (nothing is downloaded)"
        if training and model in ("Mask2Former", "TV3S"):
            hint += f"; to start from random weights instead, pass {RANDOM_START}"
    raise FileNotFoundError(f"MODEL.WEIGHTS {weights} does not exist: {hint}")
