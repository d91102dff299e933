"""MODEL.WEIGHTS checked before a model is built, with what to run when it is missing.

Video models start from other checkpoints (MPVSS from a trained per-frame Mask2Former, TV3S
from a pretrained encoder), and evaluation needs trained weights; detectron2 alone reports
only "Checkpoint ... not found!" or silently evaluates random weights.
"""
import os

import yaml

from .setup import load_cfg

TRAIN = ".venv/bin/python train_net.py --config-file"


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
    if cfg.MODEL.META_ARCHITECTURE != "VideoSegmentor":
        return None
    return {"MaskPropagation": "MPVSS", "StateSpaceSharing": "TV3S"}.get(cfg.MODEL.VIDEO.TEMPORAL_HEAD)


def check_weights(cfg, config_file, training):
    """Raise when MODEL.WEIGHTS cannot give the model it should, saying what to run first.

    An existing file always passes. A missing file is an error; so is an empty MODEL.WEIGHTS
    for evaluation (`training` False: trained weights are needed, unless MODEL.MOTION.WEIGHTS
    gives them) and for training MPVSS with a frozen segmentor (MODEL.VIDEO.TRAINABLE set: a
    random frozen Mask2Former would stay random).
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
            raise ValueError(f"MODEL.WEIGHTS is empty but {config_file} trains only "
                             f"{list(cfg.MODEL.VIDEO.TRAINABLE)} and freezes the rest. {_mpvss_hint(chain)} "
                             "(or set MODEL.VIDEO.TRAINABLE \"[]\" to train everything from scratch)")
        return
    producer = _producer(weights, chain)
    if model == "MPVSS" and producer != config_file:  # MPVSS's own checkpoint aside, it is the per-frame one
        hint = _mpvss_hint(chain)
    elif producer is not None:
        hint = f"train {producer} first: `{TRAIN} {producer}` writes it"
    elif model == "TV3S":
        hint = ("TV3S starts from an ImageNet-pretrained encoder converted with `tools/convert_tv3s.py --encoder` "
                "or from a TV3S checkpoint (see projects/TV3S/README.md)")
    else:
        hint = "set MODEL.WEIGHTS to a local checkpoint (nothing is downloaded)"
    raise FileNotFoundError(f"MODEL.WEIGHTS {weights} does not exist: {hint}")
