"""MODEL.WEIGHTS checked before a model is built, with what to run when it is missing.

Video models start from other checkpoints (MPVSS from a trained per-frame Mask2Former, TV3S
from a pretrained encoder), the per-frame Mask2Former from an ImageNet backbone, and evaluation
needs trained weights; detectron2 alone reports only "Checkpoint ... not found!" or silently
trains or evaluates random weights. Training from random weights (MODEL.WEIGHTS "") is allowed
only where MODEL.ALLOW_RANDOM_INIT is True (the synthetic configs; the VSPW and Cityscapes
configs set it False).

What a model starts from is declared by the class that knows it (`declaring_class`: the temporal
head of a video model, else the meta-architecture), found through the registries from the config
without building the model:

- `weights_start`: the sentence that says what training starts from;
- `weights_start_from_base` (default False): that start is the trained model of the nearest base
  config of another meta-architecture, whose training command the hints name;
- `start_evaluates(cfg)` (default False): that start evaluates the model as it is.

Every hint names commands that run as written: a training command carries the OUTPUT_DIR the
hint then points into.
"""
import os

import yaml
from detectron2.modeling import META_ARCH_REGISTRY

from ..modeling import TEMPORAL_HEAD_REGISTRY, VideoSegmentor
from .setup import load_cfg

TRAIN = ".venv/bin/python train_net.py --config-file"
RANDOM_START = 'MODEL.WEIGHTS "" MODEL.ALLOW_RANDOM_INIT True'
GENERIC = "set MODEL.WEIGHTS to a local checkpoint"


def declaring_class(cfg):
    """The class whose declarations describe the model `cfg` builds: the temporal head of a video
    model, else the meta-architecture."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if issubclass(arch, VideoSegmentor):
        return TEMPORAL_HEAD_REGISTRY.get(cfg.MODEL.VIDEO.TEMPORAL_HEAD)
    return arch


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


def _base_config(chain):
    """The nearest base config of another meta-architecture: where a `weights_start_from_base` model starts."""
    own = load_cfg(chain[0]).MODEL.META_ARCHITECTURE
    return next((c for c in chain[1:] if load_cfg(c).MODEL.META_ARCHITECTURE != own), None)


def _training(config_file, cfg):
    """(command training `config_file` into cfg.OUTPUT_DIR, the checkpoint it writes)."""
    command = f"{TRAIN} {config_file}"
    if os.path.abspath(cfg.OUTPUT_DIR) != os.path.abspath(load_cfg(config_file).OUTPUT_DIR):
        command += f" OUTPUT_DIR {cfg.OUTPUT_DIR}"
    return command, os.path.join(cfg.OUTPUT_DIR, "model_final.pth")


def _start_hint(model, chain):
    """What training `model` starts from and how to make it, or None when the model declares nothing."""
    start = getattr(model, "weights_start", None)
    if start is None or not getattr(model, "weights_start_from_base", False):
        return start
    base = _base_config(chain)
    if base is None:
        return f"{start} checkpoint of the same backbone"
    command, output = _training(base, load_cfg(base))
    return f"{start}: train it first with `{command}`, then pass MODEL.WEIGHTS {output}"


def _own_training_hint(cfg, config_file, model, chain):
    """How to make a trained checkpoint of `config_file` itself, for an evaluation: the commands in order."""
    command, output = _training(config_file, cfg)
    base = _base_config(chain) if getattr(model, "weights_start_from_base", False) else None
    if base is None:
        return f"train it first with `{command}`, then pass MODEL.WEIGHTS {output}"
    return (f"{model.weights_start}: train that first with `{_training(base, load_cfg(base))[0]}`, then this config "
            f"with `{command}`, then pass MODEL.WEIGHTS {output}")


def check_weights(cfg, config_file, training):
    """Raise when MODEL.WEIGHTS cannot give the model it should, saying what to run first.

    An existing file passes, except the start of a `weights_start_from_base` model given for its
    evaluation when that start does not evaluate it (MPVSS with a flow module from the per-frame
    checkpoint). A missing file is an error; so is an empty MODEL.WEIGHTS for evaluation
    (`training` False: trained weights are needed, unless MODEL.MOTION.WEIGHTS gives them, see
    vss.engine.loading), for training a model that starts from a base config with a frozen part
    (MODEL.VIDEO.TRAINABLE set: a random frozen part would stay random) and for any training
    unless MODEL.ALLOW_RANDOM_INIT is True.
    """
    weights = cfg.MODEL.WEIGHTS
    model = declaring_class(cfg)
    from_base = getattr(model, "weights_start_from_base", False)
    chain = _config_chain(config_file)
    # an evaluation of a model its training start leaves incomplete needs a checkpoint of its own
    needs_own = not training and from_base and not getattr(model, "start_evaluates", lambda cfg: False)(cfg)
    if weights and os.path.isfile(weights):
        if needs_own and _producer(weights, chain) not in (None, config_file):
            raise ValueError(f"MODEL.WEIGHTS {weights} is the checkpoint training {config_file} starts from, "
                             f"not a trained one: {_own_training_hint(cfg, config_file, model, chain)}")
        return
    if not weights:
        # FlowNetS pretraining evaluates the motion weights alone (MODEL.MOTION.WEIGHTS)
        if not training and not cfg.MODEL.MOTION.WEIGHTS:
            raise ValueError(f"MODEL.WEIGHTS is empty, so the model would have random weights: "
                             f"{_own_training_hint(cfg, config_file, model, chain)}")
        if from_base and cfg.MODEL.VIDEO.TRAINABLE:
            scratch = "MODEL.VIDEO.TRAINABLE \"[]\"" + ("" if cfg.MODEL.ALLOW_RANDOM_INIT else
                                                        " MODEL.ALLOW_RANDOM_INIT True")
            raise ValueError(f"MODEL.WEIGHTS is empty but {config_file} trains only "
                             f"{list(cfg.MODEL.VIDEO.TRAINABLE)} and freezes the rest. {_start_hint(model, chain)} "
                             f"(or set {scratch} to train everything from scratch)")
        if training and not cfg.MODEL.ALLOW_RANDOM_INIT:
            raise ValueError(f"MODEL.WEIGHTS is empty and {config_file} sets MODEL.ALLOW_RANDOM_INIT False, so "
                             f"training would start from random weights: {_start_hint(model, chain) or GENERIC}. "
                             f"To start from random weights on purpose, pass {RANDOM_START}")
        return
    producer = _producer(weights, chain)
    if needs_own and producer != config_file:
        hint = f"evaluation needs a trained checkpoint of {config_file}: {_own_training_hint(cfg, config_file, model, chain)}"
    elif from_base and producer != config_file:  # its own checkpoint aside, it is the base config's
        hint = _start_hint(model, chain)
    elif producer is not None:
        command, _ = _training(producer, load_cfg(producer))
        hint = f"train {producer} first: `{command}` writes it"
    elif not training and getattr(model, "weights_start", None):  # the config's own names its training start
        command, output = _training(config_file, cfg)
        hint = f"evaluation needs trained weights: train first with `{command}`, then pass MODEL.WEIGHTS {output}"
    else:
        hint = _start_hint(model, chain) or f"{GENERIC} (nothing is downloaded)"
        if training and getattr(model, "weights_start", None):
            hint += f"; to start from random weights instead, pass {RANDOM_START}"
    raise FileNotFoundError(f"MODEL.WEIGHTS {weights} does not exist: {hint}")
